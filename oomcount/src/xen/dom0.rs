//! dom0's metrics of every guest: where `[metrics]` is on in dom0, each guest's published kill
//! count and verdict become `oomcount_guest_*` series with a `domain` label.
//!
//! The store is read on a thread of its own, with a connection of its own: a stalled xenstored
//! delays the guests' series, never the daemon's runtime thread or its keepalives. It follows
//! the guests through the same watches as `oomcount guests --watch` ([`Watcher`]:
//! `@introduceDomain`, `@releaseDomain` and each domain's `data/oomcount/seq`), not a timer, and
//! keeps a snapshot of at most [`GUESTS_MAX`] domains that a scrape and the textfile render
//! from. Everything a guest wrote was parsed into typed values ([`super::report`]); a guest with
//! any value that did not parse gets only `oomcount_guest_report_valid 0`.
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    client::{Client, XsError},
    guests::{GuestRow, Watcher},
    report::Field,
};
use crate::metrics::GuestSample;

/// The most domains exported: each costs every scrape five series.
pub const GUESTS_MAX: usize = 256;
/// The textfile is rewritten at most this often for the guests' changes.
pub const REWRITE_EVERY: Duration = Duration::from_secs(1);
const STACK: usize = 128 * 1024;

/// The guests now, sorted by domid, shared with the metrics.
pub type Snapshot = Arc<Mutex<Vec<GuestSample>>>;

/// A guest's row as its series say it (`None`: no oomcount there, or dom0 itself).
pub fn sample(row: &GuestRow) -> Option<GuestSample> {
    let p = row.published.as_ref()?;
    if row.domid == 0 {
        return None;
    }
    let report = match (&p.kills, &p.verdict) {
        (Field::Valid(kills), Field::Valid(health)) if p.invalid_keys().is_empty() => {
            Some((*kills, *health))
        }
        _ => None,
    };
    Some(GuestSample {
        domid: row.domid,
        name: row.name.valid().cloned().unwrap_or_default(),
        report,
    })
}

/// The thread that keeps the snapshot (see the module's docs); it ends after its current wait
/// once dropped.
pub struct GuestMetrics {
    snapshot: Snapshot,
    stop: Arc<AtomicBool>,
    /// Set once the thread has read every guest (or failed to) for the first time.
    first_round: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

type Open = Box<dyn Fn() -> Result<Client, XsError> + Send>;

impl GuestMetrics {
    /// Starts the thread on `client`; `open` makes a new connection after a failure, at most
    /// once per `interval` (which also bounds how long the thread takes to see it is dropped).
    /// `changed` is told, at most once per [`REWRITE_EVERY`], that the snapshot changed.
    pub fn start(
        client: Client,
        open: Open,
        interval: Duration,
        changed: Option<Arc<tokio::sync::Notify>>,
    ) -> std::io::Result<GuestMetrics> {
        let snapshot: Snapshot = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let first_round = Arc::default();
        let mut follower = Follower {
            snapshot: snapshot.clone(),
            stop: stop.clone(),
            first_round: Arc::clone(&first_round),
            changed,
            told: None,
            pending: false,
            logged: HashSet::new(),
            interval,
        };
        std::thread::Builder::new()
            .name("xen-guests".into())
            .stack_size(STACK)
            .spawn(move || {
                crate::host::system::ordinary_thread();
                follower.run(client, &*open)
            })?;
        Ok(GuestMetrics {
            snapshot,
            stop,
            first_round,
        })
    }

    /// Waits, up to `timeout`, until the thread has read every guest once (or failed to);
    /// returns whether it has.
    pub fn first_round(&self, timeout: Duration) -> bool {
        let (done, cond) = &*self.first_round;
        let done = done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = cond
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }

    /// The snapshot the metrics render.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.clone()
    }
}

impl Drop for GuestMetrics {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Follower {
    snapshot: Snapshot,
    stop: Arc<AtomicBool>,
    first_round: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    changed: Option<Arc<tokio::sync::Notify>>,
    told: Option<Instant>,
    pending: bool,
    logged: HashSet<String>,
    interval: Duration,
}

impl Follower {
    fn run(&mut self, first: Client, open: &dyn Fn() -> Result<Client, XsError>) {
        let mut client = Some(first);
        while !self.stop.load(Ordering::Relaxed) {
            let c = match client.take().map_or_else(open, Ok) {
                Ok(c) => c,
                Err(err) => {
                    self.failed(&err);
                    std::thread::sleep(self.interval);
                    continue;
                }
            };
            match self.follow(c) {
                Ok(()) => return,
                Err(err) => {
                    self.failed(&err);
                    std::thread::sleep(self.interval);
                }
            }
        }
    }

    /// Once per kind of failure; the series go away until the store answers again (a guest's
    /// count that cannot be read now is not current).
    fn failed(&mut self, err: &XsError) {
        if self.logged.insert(err.kind()) {
            log::warn!(
                "xenstore: cannot read the guests for the metrics: {err} (tried again every {:?}; said once per kind of failure)",
                self.interval
            );
        }
        self.set(Vec::new());
        self.first_round_done();
    }

    fn follow(&mut self, mut c: Client) -> Result<(), XsError> {
        let mut w = Watcher::start(&mut c)?.limit(GUESTS_MAX);
        w.sync(&mut c)?;
        self.set(w.rows().filter_map(sample).collect());
        self.first_round_done();
        while !self.stop.load(Ordering::Relaxed) {
            let wait = match (self.pending, self.told) {
                (true, Some(at)) => (at + REWRITE_EVERY)
                    .saturating_duration_since(Instant::now())
                    .min(self.interval),
                _ => self.interval,
            };
            if !w.next(&mut c, Some(wait))?.is_empty() {
                self.set(w.rows().filter_map(sample).collect());
            }
            self.tell();
        }
        Ok(())
    }

    /// Swaps the snapshot in (built outside the lock) when it changed.
    fn set(&mut self, samples: Vec<GuestSample>) {
        {
            let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            if *s == samples {
                return;
            }
            *s = samples;
        }
        self.pending = true;
        self.tell();
    }

    /// Tells [`GuestMetrics::first_round`]: every guest was read (or could not be) once.
    fn first_round_done(&self) {
        let (done, cond) = &*self.first_round;
        *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
    }

    fn tell(&mut self) {
        let Some(changed) = &self.changed else { return };
        if self.pending && self.told.is_none_or(|at| at.elapsed() >= REWRITE_EVERY) {
            changed.notify_one();
            self.told = Some(Instant::now());
            self.pending = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::report::{Health, Published, Report};

    fn row(domid: u32, kills: &[u8], name: Field<String>) -> GuestRow {
        let report = Report {
            kills: 0,
            kills_memcg: 0,
            kills_global: 0,
            marked: 0,
            events_dropped: 0,
            attached_at: 1,
            verdict: Health::Degraded,
            reason: String::new(),
            last_kill: None,
            vitals: None,
            updated_at: 2,
        };
        let values = report.to_values();
        let published = Published::parse(|k| {
            if k == "kills" {
                return Some(kills);
            }
            values
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_bytes())
        });
        GuestRow {
            domid,
            name,
            published: Some(published),
        }
    }

    #[test]
    fn samples_from_rows() {
        let good = sample(&row(3, b"7", Field::Valid("web".into()))).unwrap();
        assert_eq!(good.report, Some((7, Health::Degraded)));
        assert_eq!(good.name, "web");
        let bad = sample(&row(4, b"7x", Field::Invalid("control characters"))).unwrap();
        assert_eq!((bad.report, bad.name.as_str()), (None, ""));
        // Absent kills (a folder of junk): not a report.
        assert_eq!(sample(&row(5, b"", Field::Absent)).unwrap().report, None);
        assert_eq!(sample(&row(0, b"1", Field::Absent)), None, "dom0 itself");
        let mut none = row(6, b"1", Field::Absent);
        none.published = None;
        assert_eq!(sample(&none), None, "no oomcount there");
    }
}
