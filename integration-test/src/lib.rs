//! Support for oomcount's privileged tests: they start the real daemon, make the kernel's OOM
//! killer kill real processes inside throwaway memory cgroups, and hold the daemon's counts
//! against the kernel's own (`/proc/vmstat`, the memory cgroup's counter, `oom/mark_victim`
//! events in a private tracefs instance).
//!
//! Nothing here may cause a global OOM: every allocation without a bound happens inside a memory
//! cgroup with a small limit, except in the VM guest's global-OOM test (`OOMCOUNT_VM=1`).
//! The library panics with a message instead of returning errors: its callers are tests.
pub mod attacker;
pub mod cgroup;
pub mod daemon;
pub mod events;
pub mod fake_daemon;
pub mod hook_probe;
pub mod hostile;
pub mod kmsg;
pub mod locate;
pub mod mounts;
pub mod producer;
pub mod storm;
pub mod trace;
pub mod victim;
pub mod vmstat;
pub mod wait;
pub mod watch;
pub mod watchdog;
pub mod xenstored;

pub use cgroup::{MemCg, Version};
pub use daemon::{Counts, Daemon};
pub use events::{Event, EventCounts, Layout, WatchClient};
pub use kmsg::Kmsg;
pub use wait::{deadline, in_vm, wait_until};
pub use watch::{Delta, Watch};

/// The running kernel's release (`uname -r`), for skip messages and summaries.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|err| format!("(unknown: {err})"))
}

/// Panics unless the tests run as root: they need cgroups, tracefs and BPF.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "oomcount's integration tests make real OOM kills in memory cgroups and load BPF: run them as root"
    );
}

/// A name that no other group, instance or folder of this or another test process has.
/// BPF perf links, which keep a tracepoint attached without a process, came in Linux 5.15;
/// before, oomcount pins raw tracepoints, which need the kernel's BTF.
pub fn pins_possible() -> bool {
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return true;
    }
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (5, 15) {
        eprintln!(
            "SKIPPED on Linux {release}: no BPF perf links before 5.15 and no BTF for raw tracepoints: oomcount cannot pin its probe here"
        );
        return false;
    }
    true
}

pub(crate) fn unique_name(label: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{label}-{}-{n}", std::process::id())
}
