//! What the daemon checks and sets on the machine before and around loading: privileges, the
//! memlock limit that old kernels charge BPF maps to, and its own protection from the OOM killer
//! it watches (oom_score_adj -1000, memory locked).
//!
//! Protection is best effort: where a capability is missing (a container without
//! CAP_SYS_RESOURCE, say) the daemon says so in one line and goes on.
use std::fs;

/// Capability numbers from `linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `MCL_ONFAULT` (Linux 4.4+): lock pages as they are touched rather than all mapped pages now,
/// so locking does not fault in the whole binary and inflate the resident set.
const MCL_ONFAULT: libc::c_int = 4;

/// Whether this process may load and attach tracing BPF programs: CAP_SYS_ADMIN, or CAP_BPF with
/// CAP_PERFMON (Linux 5.8+).
pub fn may_load_bpf() -> bool {
    let Some(caps) = effective_caps() else {
        return nix::unistd::geteuid().is_root();
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// The `CapEff` mask of this process, from `/proc/self/status`.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Lifts RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps to it, and its default (64 KiB or
/// 8 MiB) is too small for the ring buffer. Newer kernels charge memory cgroups instead.
pub fn lift_memlock_limit() {
    use nix::sys::resource::{Resource::RLIMIT_MEMLOCK, getrlimit, setrlimit};
    let infinity = libc::RLIM_INFINITY;
    if setrlimit(RLIMIT_MEMLOCK, infinity, infinity).is_ok() {
        return;
    }
    // Without CAP_SYS_RESOURCE the hard limit cannot rise; the soft one can rise to it.
    let lifted =
        getrlimit(RLIMIT_MEMLOCK).and_then(|(_, hard)| setrlimit(RLIMIT_MEMLOCK, hard, hard));
    if let Err(err) = lifted {
        log::debug!("cannot lift RLIMIT_MEMLOCK ({err}); fine on Linux 5.11 and newer");
    }
}

/// Makes the OOM killer leave this process alone and keeps its pages in memory.
pub fn protect_self() {
    match fs::write("/proc/self/oom_score_adj", "-1000") {
        Ok(()) => log::debug!("oom_score_adj set to -1000"),
        Err(err) => log::warn!(
            "cannot set oom_score_adj to -1000 ({err}; needs CAP_SYS_RESOURCE): the OOM killer may pick oomcount itself"
        ),
    }
    // SAFETY: mlockall has no memory-safety preconditions.
    let locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | MCL_ONFAULT) };
    if locked != 0 {
        let err = std::io::Error::last_os_error();
        log::warn!(
            "cannot lock memory ({err}; needs CAP_IPC_LOCK): oomcount's pages may be swapped out under pressure"
        );
    } else {
        log::debug!("memory locked (mlockall, on fault)");
    }
}

/// `/proc/vmstat` `oom_kill`: the kernel's own count of OOM kills since boot (Linux 4.13+).
pub fn kernel_oom_kill() -> Option<u64> {
    let vmstat = fs::read_to_string("/proc/vmstat").ok()?;
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `f` with `/sys/kernel/btf` hidden, in a private mount namespace, then returns to ours.
///
/// aya's `EbpfLoader::new()` reads and parses the kernel's BTF (5.5 MB on 6.18) even when the
/// loader is then told to use none, which costs ~17 MB of peak RSS. oomcount's programs need no
/// kernel BTF, so the loader is created where there is none to read. If any step fails (no
/// CAP_SYS_ADMIN, a kernel without BTF), `f` simply runs as it is.
pub fn without_kernel_btf<T>(f: impl FnOnce() -> T) -> T {
    use nix::{
        mount::{MntFlags, MsFlags, mount, umount2},
        sched::{CloneFlags, setns, unshare},
    };
    let btf = std::path::Path::new("/sys/kernel/btf");
    if !btf.join("vmlinux").exists() {
        return f();
    }
    let Ok(ours) = fs::File::open("/proc/self/ns/mnt") else {
        return f();
    };
    if let Err(err) = unshare(CloneFlags::CLONE_NEWNS) {
        log::debug!("cannot unshare the mount namespace ({err}); aya will parse the kernel's BTF");
        return f();
    }
    let hidden = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .and_then(|()| {
        mount(
            Some("none"),
            btf,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    });
    if let Err(err) = &hidden {
        log::debug!(
            "cannot hide {} ({err}); aya will parse the kernel's BTF",
            btf.display()
        );
    }
    let result = f();
    if hidden.is_ok() {
        let _ = umount2(btf, MntFlags::MNT_DETACH);
    }
    if let Err(err) = setns(&ours, CloneFlags::CLONE_NEWNS) {
        log::warn!("cannot return to the original mount namespace ({err})");
    }
    result
}
