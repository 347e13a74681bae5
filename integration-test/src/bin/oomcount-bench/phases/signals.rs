//! The cost on the signal path: oomcount's signal program runs on every signal the kernel
//! generates (`signal_generate`), not only the OOM killer's, so every process pays it.
//!
//! Measured as the time per signal of a loop that sends this process 1,000,000 signals it
//! ignores (the tracepoint fires for ignored signals too: the kernel reports them as
//! `TRACE_SIGNAL_IGNORED`), with nothing attached, with oomcount's daemon, and with bpftrace's
//! bare counter on `signal:signal_generate`. The three are interleaved over a few rounds and
//! each figure is the median, so that a busy machine's drift falls on all of them alike.
use std::time::Instant;

use nix::sys::signal::{SigHandler, Signal, signal};
use serde_json::json;

use crate::{baselines, oomd::Oomd, progress, report::Row};

const SIGNALS: u32 = 1_000_000;
const ROUNDS: usize = 5;
/// A bare counter on the signal tracepoint: the least a BPF program can cost there.
const BPFTRACE_SIGNALS: &str =
    "BEGIN { printf(\"ready\\n\"); } tracepoint:signal:signal_generate { @signals = count(); }";

/// Nanoseconds per ignored signal this process sends itself.
fn ns_per_signal() -> f64 {
    let me = nix::unistd::getpid().as_raw();
    let started = Instant::now();
    for _ in 0..SIGNALS {
        // SAFETY: kill(2) on this process with a signal it ignores.
        unsafe { libc::kill(me, libc::SIGUSR2) };
    }
    started.elapsed().as_nanos() as f64 / f64::from(SIGNALS)
}

/// Runs after the other phases, with the bench's daemon stopped: "nothing attached" must mean
/// no oomcount probe (the bench's daemons run unpinned, so a stopped daemon is detached).
pub fn signal_cost(
    rows: &mut Vec<Row>,
    details: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    progress(&format!(
        "signal path: {ROUNDS} rounds of {SIGNALS} ignored signals, bare / oomcount / bpftrace"
    ));
    // SAFETY: ignoring a signal nothing else in this process uses.
    unsafe { signal(Signal::SIGUSR2, SigHandler::SigIgn) }
        .map_err(|err| format!("ignore SIGUSR2: {err}"))?;
    let (mut bare, mut with, mut bpftrace) = (Vec::new(), Vec::new(), Vec::new());
    let mut bpftrace_absent = None;
    for _ in 0..ROUNDS {
        bare.push(ns_per_signal());
        let daemon = Oomd::start("signals")?;
        with.push(ns_per_signal());
        daemon.stop()?;
        match baselines::bpftrace(BPFTRACE_SIGNALS) {
            Ok(counter) => {
                bpftrace.push(ns_per_signal());
                drop(counter);
            }
            Err(why) => bpftrace_absent = Some(why),
        }
    }
    let median = |v: &[f64]| crate::report::percentile(v, 50.0).unwrap_or(f64::NAN);
    let base = median(&bare);
    let bpftrace_cost = match bpftrace_absent {
        Some(why) => Err(why),
        None => Ok(median(&bpftrace) - base),
    };
    rows.push(
        Row::new(
            "signal_cost",
            "cost on the signal path (per signal, over nothing attached)",
            "ns",
        )
        .value(Ok(median(&with) - base))
        .baseline("bpftrace bare counter on signal_generate", bpftrace_cost)
        .note(format!(
            "median of {ROUNDS} interleaved rounds of {SIGNALS} ignored signals sent to itself: \
             {base:.0} ns per signal with nothing attached"
        )),
    );
    details.insert(
        "signal_ns".into(),
        json!({"bare": bare, "oomcount": with, "bpftrace": bpftrace}),
    );
    Ok(())
}
