//! Before-and-after bookkeeping: what the daemon counted during a test, next to what the kernel
//! counted (`/proc/vmstat`, and `mark_victim` events in a private trace instance when tracefs is
//! there). Counts are asynchronous, so [`Watch::settle`] waits (deadline) until the daemon has
//! caught up with the kernel instead of reading once.
use std::time::{Duration, SystemTime};

use crate::{
    daemon::{Counts, Daemon},
    trace::MarkTrace,
    vmstat,
    wait::{deadline, wait_until},
};

/// Counters at the start of a test step.
#[derive(Debug)]
pub struct Watch<'a> {
    daemon: Option<&'a Daemon>,
    trace: Option<MarkTrace>,
    counts: Option<Counts>,
    vmstat: u64,
}

/// What changed since [`Watch::new`]. The daemon's fields are `None` when watching without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The daemon's `kills`.
    pub kills: Option<u64>,
    /// The daemon's `marked`.
    pub marked: Option<u64>,
    /// The daemon's `events_dropped`.
    pub dropped: Option<u64>,
    /// `/proc/vmstat` `oom_kill`.
    pub vmstat: u64,
    /// `mark_victim` events in the trace instance, if tracefs was there.
    pub traced: Option<u64>,
}

impl Delta {
    pub fn kills(&self) -> u64 {
        self.kills.expect("watching without a daemon")
    }

    pub fn marked(&self) -> u64 {
        self.marked.expect("watching without a daemon")
    }

    /// The one-line summary a test prints: `NAME: kills K marked M vmstat V memcg C ...`.
    pub fn summary(&self, name: &str, memcg: Option<u64>) -> String {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        format!(
            "{name}: kills {} marked {} vmstat {} memcg {} traced {} dropped {}",
            opt(self.kills),
            opt(self.marked),
            self.vmstat,
            opt(memcg),
            opt(self.traced),
            opt(self.dropped)
        )
    }

    /// Whether the daemon agrees with the kernel: kills with vmstat, marks with the trace.
    pub fn agrees(&self) -> bool {
        self.kills.is_none_or(|k| k == self.vmstat)
            && (self.marked.is_none() || self.traced.is_none() || self.marked == self.traced)
    }
}

impl<'a> Watch<'a> {
    /// Snapshots the counters (and starts a trace instance, or says loudly why there is none).
    pub fn new(daemon: Option<&'a Daemon>) -> Watch<'a> {
        let trace = MarkTrace::start()
            .inspect_err(|why| {
                eprintln!("NOTE: no mark_victim trace to check `marked` against: {why}")
            })
            .ok();
        let counts = daemon.map(Daemon::count);
        Watch {
            daemon,
            trace,
            counts,
            vmstat: vmstat::oom_kill(),
        }
    }

    /// The changes so far, read once.
    pub fn delta(&self) -> Delta {
        let now = self.daemon.map(Daemon::count);
        let diff = |f: fn(&Counts) -> u64| {
            Some(
                f(now.as_ref()?)
                    .checked_sub(f(self.counts.as_ref()?))
                    .expect("daemon counters never go down"),
            )
        };
        Delta {
            kills: diff(|c| c.kills),
            marked: diff(|c| c.marked),
            dropped: diff(|c| c.events_dropped),
            vmstat: vmstat::oom_kill() - self.vmstat,
            traced: self.trace.as_ref().map(MarkTrace::count),
        }
    }

    /// Waits until the daemon agrees with the kernel (see [`Delta::agrees`]) and `done` holds;
    /// panics with the last counts otherwise. Called once the kills are over (the kernel's
    /// counters are final), so 5 s (scaled) is ample for the daemon to catch up.
    pub fn settle(&self, what: &str, done: impl Fn(&Delta) -> bool) -> Delta {
        wait_until(deadline(Duration::from_secs(5)), what, || {
            let d = self.delta();
            if d.agrees() && done(&d) {
                Ok(d)
            } else {
                Err(d)
            }
        })
    }

    /// The `oom` trace events since the start, if tracing (to explain a failure).
    pub fn trace_text(&self) -> Option<String> {
        self.trace.as_ref().map(MarkTrace::text)
    }

    /// The pids of the victims marked since the start, if tracing.
    pub fn marked_pids(&self) -> Option<Vec<u32>> {
        self.trace.as_ref().map(MarkTrace::pids)
    }
}

/// Checks the fields of `oomcount count --json` that are not deltas: `kernel_oom_kill` is
/// `/proc/vmstat` at that moment, `attached_at` is an RFC 3339 time between the daemon's start
/// and now. Returns the counts read.
pub fn check_count_fields(daemon: &Daemon) -> Counts {
    let before = vmstat::oom_kill();
    let counts = daemon.count();
    let after = vmstat::oom_kill();
    let kernel = counts
        .kernel_oom_kill
        .expect("kernel_oom_kill is there on Linux 4.13+");
    assert!(
        (before..=after).contains(&kernel),
        "kernel_oom_kill {kernel} is not /proc/vmstat oom_kill (read {before} before and {after} after)"
    );
    let at = humantime::parse_rfc3339(&counts.attached_at)
        .ok()
        .unwrap_or_else(|| panic!("attached_at {:?} is not RFC 3339", counts.attached_at));
    let slack = Duration::from_secs(2);
    assert!(
        at + slack >= daemon.started_at() && at <= SystemTime::now() + slack,
        "attached_at {} is not between the daemon's start and now",
        counts.attached_at
    );
    counts
}
