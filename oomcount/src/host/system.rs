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
pub(crate) fn may_load_bpf() -> bool {
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
pub(crate) fn lift_memlock_limit() {
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

/// Makes the OOM killer leave this process alone and keeps its pages in memory: the pages it
/// uses from now on, not those that only loading needed (see [`release_loading_pages`]).
pub(crate) fn protect_self() {
    release_loading_pages();
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

/// Makes every thread allocate from glibc's one main arena. By default each thread that
/// allocates gets an arena of its own (64 MiB reserved, and what it touched stays resident: the
/// ranking's, the xenstore writer's, the dom0 reader's), which a daemon that allocates little,
/// and rarely at once on two threads, pays for in resident and locked memory for nothing.
pub(crate) fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs this process at SCHED_FIFO priority 1 (the lowest real-time one, as watchdog(8) does);
/// where it may not, says so in one line and goes on.
pub(crate) fn realtime() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on this process with a parameter we own.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        log::info!("running at real-time priority (SCHED_FIFO 1)");
    } else {
        let err = std::io::Error::last_os_error();
        log::warn!(
            "cannot run at real-time priority ({err}; needs CAP_SYS_NICE, or an RTPRIO limit of 1: LimitRTPRIO=1 in a unit, without RestrictRealtime=): realtime is off"
        );
    }
}

/// Runs the calling thread at the ordinary policy (SCHED_OTHER), whatever the process runs at:
/// for a helper thread whose work must never hold up the real-time one (a helper at the same
/// SCHED_FIFO priority would run until it blocks, ahead of the keepalive, on a single CPU).
pub(crate) fn ordinary_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a parameter we own.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) } != 0 {
        let err = std::io::Error::last_os_error();
        log::debug!("cannot lower a helper thread to SCHED_OTHER ({err})");
    }
}

/// Gives back what loading the probe left mapped, before memory is locked.
///
/// Loading reads the whole embedded eBPF object (about 0.5 MB with its BTF and debug info) and
/// runs code the daemon never runs again (ELF and BTF parsing, relocation, clap); `mlockall`
/// would then pin all of it for good. Here every clean page of a read-only private file mapping
/// (code and read-only data of the binary and its libraries) is unmapped with `MADV_DONTNEED`:
/// the page cache keeps the pages, and the next access maps one again (a minor fault), so only
/// what the daemon touches from now on comes back and gets locked. Mappings holding private
/// copies (RELRO after relocation: `Anonymous` above 0) are left alone, since dropping those
/// would lose the relocations. Freed heap goes back to the kernel too.
///
/// Measured on 6.18 (`cargo xtask bench`): VmRSS after start-up 4.8 -> 3.3 MB; the read-only
/// data (the eBPF object) 0.66 -> 0.26 MB, libc 1.4 -> 0.9 MB, ld.so 0.2 -> 0 MB. The code
/// comes back nearly whole: each fault maps the 64 KiB around it (the kernel's fault-around),
/// and the daemon's code is spread across the binary, so the binary's code size is what is left.
pub(crate) fn release_loading_pages() {
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the kernel.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut released = 0;
    for mapping in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of this process, private, read-only and backed
        // by a file with no private copy of any page: dropping its pages loses nothing, and
        // any later access maps the file's page again.
        let rc =
            unsafe { libc::madvise(mapping.start as *mut _, mapping.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += mapping.rss_kb;
        }
    }
    log::debug!("released {released} kB that loading had mapped");
}

/// A mapping of `/proc/self/smaps` that [`release_loading_pages`] may drop.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    len: usize,
    rss_kb: u64,
}

/// The private, read-only, file-backed mappings with resident pages and no private copies.
fn clean_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut found = Vec::new();
    // The mapping being read: its range if it qualifies so far, its Rss, its Anonymous.
    let mut current: Option<(usize, usize)> = None;
    let (mut rss, mut anonymous) = (0u64, 0u64);
    let mut finish = |current: Option<(usize, usize)>, rss: u64, anonymous: u64| {
        if let Some((start, end)) = current
            && rss > 0
            && anonymous == 0
        {
            found.push(CleanMapping {
                start,
                len: end - start,
                rss_kb: rss,
            });
        }
    };
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            finish(current.take(), rss, anonymous);
            (rss, anonymous) = (0, 0);
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).unwrap_or("");
            let read_only_private =
                perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p');
            if read_only_private && path.starts_with('/') && end > start {
                current = Some((start, end));
            }
            continue;
        }
        let mut kb = || {
            words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => rss = kb(),
            "Anonymous:" => anonymous = kb(),
            _ => {}
        }
    }
    finish(current, rss, anonymous);
    found
}

/// `/proc/vmstat` `oom_kill`: the kernel's own count of OOM kills since boot (Linux 4.13+).
pub fn kernel_oom_kill() -> Option<u64> {
    use std::io::Read as _;
    thread_local! {
        /// One buffer per thread for the whole file, kept: every read(2) of /proc/vmstat sums
        /// each counter over the CPUs again (vmstat_start), so it is read in as few reads as
        /// possible (`read_to_string`'s small first reads did that eight times per call: 27% of
        /// a metrics scrape's CPU), and a buffer allocated per call churned the heap of a daemon
        /// answering a flood of `count` requests.
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 16 << 10]);
    }
    let mut file = fs::File::open("/proc/vmstat").ok()?;
    BUFFER.with_borrow_mut(|buf| {
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(len * 2, 0);
            }
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        std::str::from_utf8(&buf[..len])
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Runs `f` with `/sys/kernel/btf` hidden, in a private mount namespace, then returns to ours.
///
/// aya's `EbpfLoader::new()` reads and parses the kernel's BTF (5.5 MB on 6.18) even when the
/// loader is then told to use none, which costs ~17 MB of peak RSS. oomcount's programs need no
/// kernel BTF, so the loader is created where there is none to read. If any step fails (no
/// CAP_SYS_ADMIN, a kernel without BTF), `f` simply runs as it is.
pub(crate) fn without_kernel_btf<T>(f: impl FnOnce() -> T) -> T {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5648f7d6f000-5648f7e81000 r--p 00000000 fe:00 123 /usr/bin/oomcount
Rss:                 644 kB
Anonymous:             0 kB
5648f7e81000-5648f802c000 r-xp 00112000 fe:00 123 /usr/bin/oomcount
Rss:                1708 kB
Anonymous:             0 kB
5648f802c000-5648f803f000 r--p 002bd000 fe:00 123 /usr/bin/oomcount
Rss:                  76 kB
Anonymous:            76 kB
5648f803f000-5648f8040000 rw-p 002d0000 fe:00 123 /usr/bin/oomcount
Rss:                   4 kB
Anonymous:             4 kB
56490f6ef000-56490f742000 rw-p 00000000 00:00 0 [heap]
Rss:                 324 kB
Anonymous:           324 kB
7f8392d1e000-7f8392d5f000 r--s 00000000 00:0f 1038 anon_inode:bpf-map
Rss:                 260 kB
Anonymous:             0 kB
7f8392d88000-7f8392ede000 r-xp 00026000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 984 kB
Anonymous:             0 kB
7f8392f75000-7f8392f77000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7f8392f77000-7f8392f78000 r--p 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let found = clean_file_mappings(SMAPS);
        let starts: Vec<usize> = found.iter().map(|m| m.start).collect();
        assert_eq!(starts, [0x5648f7d6f000, 0x5648f7e81000, 0x7f8392d88000]);
        assert_eq!(found[1].len, 0x5648f802c000 - 0x5648f7e81000);
        assert_eq!(found[1].rss_kb, 1708);
    }

    #[test]
    fn releasing_keeps_this_process_working() {
        release_loading_pages();
        // Code, read-only data and relocated pointers (a trait object's vtable) still work.
        let items: Vec<Box<dyn std::fmt::Display>> = vec![Box::new(1), Box::new("two")];
        let text: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        assert_eq!(text, ["1", "two"]);
    }
}
