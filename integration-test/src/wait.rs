//! Deadlines, never fixed sleeps: every wait polls for the condition it needs and, when time
//! runs out, panics saying what it waited for and what it last saw. A fixed sleep is either too
//! short on a slow QEMU (TCG) guest or wasted time on a fast host; a deadline is neither.
//!
//! Deadlines are written for this host and scaled by [`time_scale`] (10x in the VM guests).
use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

/// Whether the tests run inside the VM harness's guest (`OOMCOUNT_VM=1`): only there may a test
/// cause a global OOM, and only there are deadlines stretched for emulation.
pub fn in_vm() -> bool {
    std::env::var("OOMCOUNT_VM").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// How much longer than on this host anything may take: `OOMCOUNT_TIME_SCALE` if set, else 10
/// in the VM guest (QEMU TCG is slow) and 1 elsewhere.
pub fn time_scale() -> u32 {
    std::env::var("OOMCOUNT_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(if in_vm() { 10 } else { 1 })
}

/// The instant `base` (scaled by [`time_scale`]) from now.
pub fn deadline(base: Duration) -> Instant {
    Instant::now() + base * time_scale()
}

/// Polls `probe` until it returns `Ok`, and returns that value. `probe` returns `Err(seen)`
/// while the condition does not hold, where `seen` is what it observed; if `deadline` passes
/// first, panics naming `what` and the last `seen`.
pub fn wait_until<T, S: Debug>(
    deadline: Instant,
    what: &str,
    probe: impl FnMut() -> Result<T, S>,
) -> T {
    poll_until(deadline, what, probe).unwrap_or_else(|message| panic!("{message}"))
}

/// [`wait_until`] that returns the timeout message instead of panicking (for cleanup in `Drop`).
pub fn poll_until<T, S: Debug>(
    deadline: Instant,
    what: &str,
    mut probe: impl FnMut() -> Result<T, S>,
) -> Result<T, String> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let seen = match probe() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "timed out after {:.1?} waiting for {what}; last saw: {seen:?}",
                now - started
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok() {
        let mut n = 0;
        let got = wait_until(deadline(Duration::from_secs(5)), "n to reach 3", || {
            n += 1;
            if n >= 3 { Ok(n) } else { Err(n) }
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible; last saw: \"nope\"")]
    fn panics_with_what_it_saw() {
        wait_until(Instant::now(), "the impossible", || Err::<(), _>("nope"));
    }
}
