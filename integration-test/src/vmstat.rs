//! `/proc/vmstat` `oom_kill`: the kernel's own machine-wide count of OOM kills (Linux 4.13+),
//! bumped once per victim in `__oom_kill_process()`. It is the first oracle of every test.
use std::fs;

/// The kernel's `oom_kill` counter, or `None` before Linux 4.13.
pub fn try_oom_kill() -> Option<u64> {
    parse(&fs::read_to_string("/proc/vmstat").ok()?)
}

/// The kernel's `oom_kill` counter; panics where the kernel has none (before 4.13).
pub fn oom_kill() -> u64 {
    try_oom_kill().unwrap_or_else(|| {
        panic!(
            "/proc/vmstat has no oom_kill on kernel {} (it appeared in 4.13)",
            crate::kernel_release()
        )
    })
}

fn parse(vmstat: &str) -> Option<u64> {
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_oom_kill_among_others() {
        let text = "pgfault 12\noom_kill 7\nnr_foo 3\n";
        assert_eq!(super::parse(text), Some(7));
        assert_eq!(super::parse("pgfault 12\n"), None);
    }
}
