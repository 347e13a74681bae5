//! Guest mode: the daemon's counts, verdict, last kill and vitals in the guest's own xenstore
//! home, `data/oomcount/` (which libxl makes writable by the guest), for dom0 to read.
//!
//! xenstored is one shared resource of dom0: a guest that floods it slows every domain. So the
//! writes are coalesced: [`Publisher::publish`] only replaces the report waiting to be written
//! and returns at once, and a thread of its own writes the newest report at most once per
//! `min_interval` (a kill storm makes at most a few transactions a second). Each write is one
//! transaction holding only the values that changed since the last one, then `seq`; it is run
//! again on a conflict. The thread owns the blocking [`Client`]: a stalled xenstored delays
//! the next publication, never the daemon's runtime thread or its keepalives.
//!
//! A store that refuses (a quota, permissions, a timeout) is logged once per kind of failure;
//! counting and keepalives go on, and the next report is written whole.
use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    client::{Client, Tx, XsError},
    report::{Report, parse_u64},
};

/// The folder written, relative to the domain's home (`/local/domain/<domid>/`).
pub const BASE: &str = "data/oomcount";
/// The least time between two transactions.
pub const MIN_INTERVAL: Duration = Duration::from_millis(300);
/// The vitals' default interval (the daemon publishes on this timer besides its events).
pub const VITALS_INTERVAL: Duration = Duration::from_secs(10);

/// The writer thread's stack: a message buffer of 4 KiB and a few paths.
const STACK: usize = 128 * 1024;

#[derive(Default)]
struct Shared {
    pending: Option<Report>,
    stop: bool,
    /// A report is being written.
    busy: bool,
    /// Transactions committed, and failures, for tests and `status`.
    written: u64,
    failed: u64,
}

/// Writes reports into xenstore from a thread of its own (see the module's docs).
pub struct Publisher {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts the writer thread on `client`, writing under `base` (relative to the domain's
    /// home, or absolute).
    pub fn start(client: Client, base: &str, min_interval: Duration) -> std::io::Result<Publisher> {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let writer = Writer {
            client,
            base: base.trim_end_matches('/').to_owned(),
            written: BTreeMap::new(),
            seq: 0,
            logged: HashSet::new(),
        };
        let s = shared.clone();
        // A small stack (the daemon locks its memory) and ordinary priority: the daemon may run
        // at real-time priority, which this thread must not take to a store that stalls.
        let thread = std::thread::Builder::new()
            .name("xenstore".into())
            .stack_size(STACK)
            .spawn(move || {
                crate::host::system::ordinary_thread();
                writer.run(&s, min_interval)
            })?;
        Ok(Publisher {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands over the newest report; never waits for xenstore.
    pub fn publish(&self, report: Report) {
        let (lock, cond) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.pending = Some(report);
        cond.notify_all();
    }

    /// Transactions committed and failed so far.
    pub fn stats(&self) -> (u64, u64) {
        let s = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        (s.written, s.failed)
    }

    /// Waits until the last report handed over is written (or failed), up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        while s.pending.is_some() || s.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = cond
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let (lock, cond) = &*self.shared;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cond.notify_all();
        // The thread ends after its current request (bounded by the client's timeout); it is not
        // joined, so that a stalled store never holds up the daemon's exit.
        drop(self.thread.take());
    }
}

struct Writer {
    client: Client,
    base: String,
    /// What the store holds from us, key by key; emptied after a failure.
    written: BTreeMap<&'static str, String>,
    seq: u64,
    logged: HashSet<String>,
}

impl Writer {
    fn run(mut self, shared: &(Mutex<Shared>, Condvar), min_interval: Duration) {
        let (lock, cond) = shared;
        let mut last: Option<Instant> = None;
        loop {
            {
                let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.pending.is_none() && !s.stop {
                    s = cond.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.stop {
                    return;
                }
            }
            // Coalesce: reports that come within the interval replace each other.
            if let Some(at) = last {
                let next = at + min_interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
            let report = {
                let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                if s.stop {
                    return;
                }
                s.busy = s.pending.is_some();
                s.pending.take()
            };
            let Some(report) = report else { continue };
            last = Some(Instant::now());
            let ok = match self.write(&report) {
                Ok(()) => true,
                Err(err) => {
                    self.written.clear();
                    if self.logged.insert(err.kind()) {
                        log::warn!(
                            "xenstore: cannot publish under {}: {err} (counting goes on; said once per kind of failure)",
                            self.base
                        );
                    }
                    false
                }
            };
            let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
            if ok {
                s.written += 1;
            } else {
                s.failed += 1;
            }
            s.busy = false;
            cond.notify_all();
        }
    }

    fn write(&mut self, report: &Report) -> Result<(), XsError> {
        let values = report.to_values();
        let changed: Vec<(&'static str, String)> = values
            .into_iter()
            .filter(|(k, v)| self.written.get(k) != Some(v))
            .collect();
        let base = self.base.clone();
        let first = self.written.is_empty();
        let mut seq = self.seq + 1;
        self.client.transaction(|c, tx: Tx| {
            if first {
                // Go on from what an earlier daemon wrote, so that seq only grows.
                let old = c.read_opt(tx, &format!("{base}/seq"))?;
                let old = parse_u64(old.as_deref()).valid().copied().unwrap_or(0);
                seq = seq.max(old.saturating_add(1));
            }
            for (k, v) in &changed {
                c.write(tx, &format!("{base}/{k}"), v.as_bytes())?;
            }
            c.write(tx, &format!("{base}/seq"), seq.to_string().as_bytes())
        })?;
        self.seq = seq;
        self.written.extend(changed);
        Ok(())
    }
}
