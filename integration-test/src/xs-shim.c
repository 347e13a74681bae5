/* LD_PRELOAD shim so that Debian's oxenstored runs on a host without Xen, for oomcount's
 * xenstore tests (integration-test/src/xenstored.rs):
 * - clamp RLIMIT_NOFILE raises to the hard limit (oxenstored asks for 1M; the tests may lack
 *   CAP_SYS_RESOURCE);
 * - make Xen event-channel ioctls (type 'E') on the fake /dev/xen/evtchn FIFO succeed, as port 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/resource.h>

int setrlimit(__rlimit_resource_t res, const struct rlimit *rl)
{
	int (*real)(__rlimit_resource_t, const struct rlimit *) = dlsym(RTLD_NEXT, "setrlimit");
	struct rlimit cur, want = *rl;
	if (res == RLIMIT_NOFILE && getrlimit(res, &cur) == 0 && want.rlim_max > cur.rlim_max)
		want.rlim_cur = want.rlim_max = cur.rlim_max;
	return real(res, &want);
}

int ioctl(int fd, unsigned long req, ...)
{
	int (*real)(int, unsigned long, void *) = dlsym(RTLD_NEXT, "ioctl");
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	int rc = real(fd, req, arg);
	if (rc < 0 && errno == ENOTTY && _IOC_TYPE(req) == 'E')
		return 1;
	return rc;
}
