//! The bench's phases, in the order `main` runs them. Each adds its rows (oomcount's figure
//! and the baselines measured beside it) and details to the [`Bench`](crate::Bench).
pub mod bpf;
pub mod cpu;
pub mod events;
pub mod memory;
pub mod signals;

use std::time::{Duration, Instant};

use crate::{baselines::Baseline, procfs};

pub fn memory_of(b: &Result<Baseline, String>) -> Result<procfs::Memory, String> {
    procfs::memory(b.as_ref().map_err(Clone::clone)?.pid())
}

pub fn ticks(b: &Result<Baseline, String>) -> Result<u64, String> {
    procfs::cpu_ticks(b.as_ref().map_err(Clone::clone)?.pid())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How many lines a baseline printed so far (0 when absent).
pub fn line_count(b: &Result<Baseline, String>) -> usize {
    b.as_ref().map_or(0, |t| t.lines().len())
}

/// Polls `probe` every 20 ms until it gives a value or `within` has passed.
pub fn wait_for<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
