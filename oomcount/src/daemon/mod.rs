//! `oomcount daemon`: holds the probe, serves queries on a unix socket, logs each kill.
//!
//! Built for starved machines: one thread (tokio's current-thread runtime; a second only to rank
//! the likely next victims where `critical_top` asks for them), no timers or polling (it wakes
//! only for a ring-buffer event, a client, a signal or the keepalive), bounded memory (a fixed
//! number of clients, bounded request lines, a bounded history and per-watcher queue), and it
//! never exits because of a client or an event it cannot read: those are logged and dropped. It
//! exits 0 on SIGINT or SIGTERM.
//!
//! The socket is open to every user, and the keepalive and root's `oomcount check` share the
//! one thread with every client; so that no client can hold them up, whatever it sends or fails
//! to read:
//!
//! - connections are limited per uid, with slots of root's own ([`crate::daemon::slots`]);
//! - each client task answers one request per turn, then lets the others (and the keepalive)
//!   run;
//! - every write to a client has a deadline ([`clients::WRITE_DEADLINE`], [`clients::WATCH_DEADLINE`] for a
//!   watcher's events), and a request client that sends nothing for `CLIENT_IDLE` is let go;
//!   a watcher is let go as soon as it closes its end (it sends nothing after its request: its
//!   end reading EOF means it is gone);
//! - the one slow part of a judgement, ranking the likely next victims for `critical_top` (a
//!   scan of /proc), runs on a blocking thread of its own, at most once per [`RANK_EVERY`],
//!   and the verdict uses the last ranking: a flood of verdict requests costs no scan.
//!
//! Its state is one [`State`] behind one lock, never held across an await: the probe, the
//! books ([`state::Ledger`], where every decision between the kernel's records and the clients
//! is made, free of I/O), the keeper and the ranking. The runtime has one thread, so the lock is
//! never contended; it is there for the ranking thread's result and for `Send` tasks.
mod clients;
pub(crate) mod slots;
mod socket;
pub mod stat;
pub(crate) mod state;
mod writer;

use std::{
    fs, io,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use oomcount_common::counter;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};

use crate::metrics::Publisher;
use crate::{
    config::Config,
    host::system,
    notify::{Notice, hooks::Hooks, journal::Journal},
    probe::{
        Origin, Probe, ProbeError,
        event::{Clock, ExactNames, VictimEvent, monotonic},
    },
    protocol::{CountReply, DropOrigin, Dropped, Response},
    watchdog::{
        keeper::Keeper,
        rules::{Kill, Verdict},
    },
};
use slots::{RefusalLog, Slots};
use state::Ledger;

/// The likely next victims are ranked at most this often.
pub(crate) const RANK_EVERY: Duration = Duration::from_secs(1);
/// How long the blocking thread waits for work before it ends (see `run`).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long start-up waits for xenstore's first round (see [`xen_first_round`]).
const XEN_FIRST_ROUND: Duration = Duration::from_millis(500);
/// Events a watcher may fall behind before it is told it missed some.
const WATCH_QUEUE: usize = 256;
/// Events kept for `list`: about 600 bytes each with their strings (cgroup paths, names, time;
/// measured by the bench's heap at the end), so 256 cost ~0.15 MiB when full; 1024 cost 0.6 MiB,
/// a ninth of the daemon's peak then.
pub const DEFAULT_HISTORY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(
        "an oomcount daemon is already running on {0}: stop it first, or give this one another --socket"
    )]
    AlreadyRunning(PathBuf),
    #[error("cannot create socket {path} (choose a writable path with --socket)")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing to make the {what} there (name a folder only root can write with {flag}, such as /run/oomcount)"
    )]
    Folder {
        what: &'static str,
        flag: &'static str,
        #[source]
        source: crate::files::Unsafe,
    },
    #[error("cannot start the runtime")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Watchdog(#[from] crate::watchdog::device::WatchdogError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}: fix [hooks] in the config file")]
    Hooks(#[from] crate::notify::hooks::HookError),
    /// `[xenstore] mode = "on"` without a xenstore (one line, naming the key).
    #[error("{0}")]
    Xenstore(String),
}

pub struct Options {
    pub socket: PathBuf,
    /// Where to pin the probe; `None` for no pins.
    pub pin_dir: Option<PathBuf>,
    /// The stat file; `None` for none.
    pub stat: Option<PathBuf>,
    /// Events kept for `list`.
    pub history: usize,
    /// The watchdog and its rules.
    pub config: Config,
    /// Judge and log, but open no watchdog device.
    pub dry_run: bool,
}

/// What the daemon's tasks share: its state, and the watchers' queue (which has its own).
struct Shared {
    state: Mutex<State>,
    /// Serialized response lines for watchers.
    watchers: broadcast::Sender<Arc<[u8]>>,
    /// Where kills are told beyond the log: the journal's fields (under systemd).
    journal: Option<Journal>,
}

/// Everything the daemon keeps, in one place.
struct State {
    probe: Probe,
    ledger: Ledger,
    keeper: Keeper,
    ranking: Ranking,
    /// Where the counts are published for `cat`; `None` when disabled.
    stat: Option<PathBuf>,
    /// The Prometheus outputs and the per-key tables (`oomcount top`).
    metrics: Publisher,
    /// When a scrape last judged the verdict.
    scraped_at: Option<std::time::Instant>,
    /// `[hooks]`, when any is configured.
    hooks: Option<Hooks>,
    /// Kills of the batch being received, for `on_kill` once the batch is settled: a hook's
    /// spawn and start take a CPU for a while, which the textfile and the stat file do not wait
    /// for.
    kills_for_hooks: Vec<Notice>,
    /// The counts published in xenstore on a Xen guest; `None` when not.
    xen: Option<XenPublishing>,
}

/// What a batch's outputs read from the kernel, read once (see [`State::read`]).
struct Reading {
    counters: crate::probe::counters::Counters,
    kernel_oom_kill: Option<u64>,
}

/// Guest mode's part of the state: the writer (its own thread), and what was last published.
struct XenPublishing {
    publisher: crate::xen::guest::Publisher,
    /// The vitals as last read (at each `[xenstore] interval`).
    vitals: Option<crate::xen::report::Vitals>,
    /// The verdict last published: a change is published at once.
    health: Option<crate::watchdog::rules::Health>,
}

/// The ranking of the likely next victims, done off the runtime's thread.
#[derive(Default)]
struct Ranking {
    /// When the last ranking finished.
    at: Option<std::time::Instant>,
    /// One is under way.
    running: bool,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), DaemonError> {
    system::one_malloc_arena();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // For the ranking of likely victims and the hooks' spawns (one at a time). Started
        // before start-up's pages are given back where the config needs it (see `serve`), and
        // kept: a thread created later maps a new stack, and the dynamic loader's code for its
        // TLS, for good (the bench found 0.17 MB of ld.so code mapped after start-up). It never
        // runs at the real-time priority the daemon may have, which it would otherwise inherit.
        .max_blocking_threads(1)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .on_thread_start(system::ordinary_thread)
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> Result<(), DaemonError> {
    // First of all: a SIGTERM that came while loading, or between the `serving on` line and the
    // loop, would otherwise kill the daemon outright (the default action), with the watchdog
    // armed and the socket left behind. Caught from here, it ends the daemon cleanly at the loop.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let socket = options.socket;
    let lock = socket::lock_socket(&socket)?;
    if let Some(stat) = &options.stat {
        crate::files::ensure_folder(crate::files::parent(stat), 0o755).map_err(|source| {
            DaemonError::Folder {
                what: "stat file",
                flag: "--stat",
                source,
            }
        })?;
    }
    // The metrics' port and textfile folder: a port in use stops the daemon here, before it
    // attaches, naming the key as `config check` does.
    let metrics_port = options.config.bind_metrics()?;
    // Before the probe is attached: `mode = "on"` without a xenstore stops the daemon here.
    let xen =
        crate::xen::start_publisher(&options.config.xenstore).map_err(DaemonError::Xenstore)?;
    let xen_interval = options.config.xenstore.interval;
    // In dom0 with [metrics] on: every guest's count, followed on a thread of its own.
    let metrics_settings = &options.config.metrics;
    let guests_changed = metrics_settings
        .textfile
        .is_some()
        .then(|| Arc::new(tokio::sync::Notify::new()));
    let guest_metrics = crate::xen::start_guest_metrics(
        &options.config.xenstore,
        metrics_settings.textfile.is_some() || metrics_settings.listen.is_some(),
        guests_changed.clone(),
    );
    let guests_changed = guest_metrics.as_ref().and(guests_changed);
    let mut metrics = Publisher::new(options.config.metrics.clone());
    if let Some(guests) = &guest_metrics {
        metrics.set_guests(guests.snapshot());
    }
    // Checked with the config already; built before anything is attached or armed.
    let hooks = options.config.hooks.build()?;
    let journal = Journal::from_env();
    // Loading is start-up's largest step and makes the daemon's peak: what parsing the command
    // line and the config mapped (their code, the heap they freed) is given back first.
    system::release_loading_pages();
    let mut probe = Probe::attach(options.pin_dir.as_deref())?;
    let listener = socket::bind(&socket)?;
    // Armed from here, the last step that can fail: an error after it would leave the
    // watchdog armed. The first keepalive goes out as the loop starts.
    // An unrecoverable verdict an earlier daemon kept with the pins still holds.
    let latched = probe
        .slot(counter::UNRECOVERABLE_AT)
        .ok()
        .and_then(state::latched_at);
    let keeper = Keeper::new(&options.config, options.dry_run, latched)?;
    let events = probe.take_events().expect("a fresh probe has its events");
    let origin = probe.origin();
    // The sequence and the drops already reported go on where the previous daemon left them.
    let ledger = Ledger::new(
        options.history,
        probe.slot(counter::SEQ).unwrap_or(0),
        probe.slot(counter::DROPS_SEEN).unwrap_or(0),
        probe.counters().ok().as_ref(),
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            probe,
            ledger,
            keeper,
            ranking: Ranking::default(),
            stat: options.stat,
            metrics,
            scraped_at: None,
            hooks,
            kills_for_hooks: Vec::new(),
            xen: xen.map(|publisher| XenPublishing {
                publisher,
                vitals: None,
                health: None,
            }),
        }),
        watchers: broadcast::channel(WATCH_QUEUE).0,
        journal,
    });
    shared.lock().publish_stat();
    shared.lock().publish_metrics();
    xen_first_round(&shared, guest_metrics.as_ref());
    let how = match (origin, &options.pin_dir) {
        (Origin::Adopted, Some(dir)) => format!("adopted the probe pinned in {}", dir.display()),
        (Origin::Upgraded, Some(dir)) => format!("replaced older pins in {}", dir.display()),
        (Origin::Attached, Some(dir)) => format!("attached, pinned in {}", dir.display()),
        _ => "attached, not pinned".to_owned(),
    };
    log::info!(
        "{how}: oom/mark_victim on Linux {}, counting since {}; serving on {}",
        crate::probe::tracefs::kernel_release(),
        humantime::format_rfc3339_seconds(shared.lock().probe.attached_at()),
        socket.display()
    );

    if let Some(port) = metrics_port {
        let addr = port.local_addr().ok();
        let scraped = shared.clone();
        let render: crate::metrics::http::Render = Arc::new(move || scraped.scrape());
        tokio::spawn(crate::metrics::http::serve(
            port,
            render,
            crate::metrics::http::Limits::default(),
        ));
        if let Some(addr) = addr {
            log::info!("metrics served on http://{addr}/metrics");
        }
    }
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
    let registered =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) };
    let mut events = match registered {
        Ok(events) => Some(events),
        Err(err) => {
            shared
                .lock()
                .ring_failed(&format!("cannot watch the event ring buffer ({err})"));
            None
        }
    };
    // Pins removed or replaced under the daemon are noticed as it happens (inotify).
    let mut pin_watch = shared.lock().probe.pin_dir().and_then(|dir| {
        crate::probe::pins::Watch::new(dir)
            .inspect_err(|err| {
                log::warn!(
                    "cannot watch {} ({err}): pins removed while the daemon runs are not pinned again",
                    dir.display()
                )
            })
            .ok()
    });
    let slots = Slots::new();
    let mut refusals = RefusalLog::default();
    shared.rank_likely();
    // Only when something is pinged: otherwise the daemon judges when asked, and sleeps.
    let mut keepalive = shared.lock().keeper.interval().map(|period| {
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    // The vitals in xenstore, at their own interval (kills and verdicts go as they happen).
    let mut xen_vitals = shared.lock().xen.is_some().then(|| {
        let mut timer = tokio::time::interval(xen_interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    // The hooks' thread, which also frees the files the daemon replaces (the ranking's, where
    // the rules rank, was started just above).
    let blocking_work = {
        let state = shared.lock();
        state.hooks.is_some() || state.stat.is_some() || state.metrics.settings().textfile.is_some()
    };
    if blocking_work {
        let _ = tokio::task::spawn_blocking(|| ()).await;
    }
    // Last, once everything that runs once has run: what start-up mapped is given back, and
    // only what the loop touches from here on is locked.
    system::protect_self();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick(&mut keepalive) => {
                shared.rank_likely();
                shared.lock().tick();
            }
            _ = notified(&guests_changed) => shared.lock().publish_metrics(),
            _ = tick(&mut xen_vitals) => {
                // Judged first: a verdict that changed with time alone (quiet again) goes too.
                let mut state = shared.lock();
                state.judge();
                state.publish_xen(true, None);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => clients::admit(stream, &shared, &slots, &mut refusals),
                Err(err) => log::warn!("accept: {err}"),
            },
            changed = pins_changed(&mut pin_watch) => {
                shared.lock().probe.check_pins();
                if let Some(watch) = &mut pin_watch
                    && let Err(err) = changed.and_then(|()| watch.rewatch())
                {
                    log::warn!("watching the pins: {err}; pins removed from now on are not pinned again");
                    pin_watch = None;
                }
            }
            _ = clients::refusals_due(&refusals) => {
                if let Some(line) = refusals.flush(std::time::Instant::now()) {
                    log::warn!("{line}");
                }
            },
            ready = readable(&mut events) => match ready {
                Ok(mut guard) => {
                    let seen = shared.drain(guard.get_inner_mut());
                    guard.clear_ready();
                    if seen {
                        // The watchers' lines are queued: let them go out before the
                        // bookkeeping (counters, verdict, textfile).
                        tokio::task::yield_now().await;
                        let reading = shared.settle();
                        // A scrape or a request that came meanwhile is answered before the
                        // rest (pins' slots, stat file, xenstore, hooks): it waited for the
                        // whole batch, twice the textfile's time.
                        tokio::task::yield_now().await;
                        shared.lock().settle_rest(reading);
                    }
                }
                Err(err) => {
                    shared.lock().ring_failed(&format!("event ring buffer: {err}"));
                    events = None;
                }
            },
        }
    }
    log::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let mut state = shared.lock();
    state.keeper.stop();
    let _ = fs::remove_file(&socket);
    if let Some(stat) = &state.stat {
        let _ = fs::remove_file(stat);
    }
    state.metrics.remove_textfile();
    drop(state);
    drop(guest_metrics);
    drop(lock);
    Ok(())
}

/// Xenstore's first round, as part of start-up: the report written (with the vitals) and, in
/// dom0, every guest read, waited for at most [`XEN_FIRST_ROUND`]. Code that runs once at start
/// on the xenstore threads is then start-up's, given back with it; run after the release, it
/// was mapped again with the 64 KiB around it (0.1-0.4 MB of start-up's code, measured with
/// /proc/PID/pagemap against a daemon without xenstore).
fn xen_first_round(shared: &Shared, guests: Option<&crate::xen::dom0::GuestMetrics>) {
    // Before the loop: nothing else waits for the state yet.
    let mut state = shared.lock();
    state.publish_xen(true, None);
    if let Some(xen) = &state.xen
        && !xen.publisher.flush(XEN_FIRST_ROUND)
    {
        log::debug!("xenstore: the first report is not written yet; the daemon goes on");
    }
    drop(state);
    if let Some(guests) = guests
        && !guests.first_round(XEN_FIRST_ROUND)
    {
        log::debug!("xenstore: the guests are not read yet; the daemon goes on");
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every event waiting in the ring buffer: tells watchers, logs kills, keeps them,
    /// hands them to the rules. Returns whether there was any.
    fn drain(&self, ring: &mut RingBuf<MapData>) -> bool {
        let clock = Clock::now();
        let mut state = self.lock();
        let mut seen = false;
        while let Some(item) = ring.next() {
            seen = true;
            let Some((event, kill)) = state.ledger.receive(&item, &clock) else {
                log::warn!("short event record ({} bytes) ignored", item.len());
                continue;
            };
            if self.watchers.receiver_count() > 0 {
                let _ = self
                    .watchers
                    .send(clients::line(&Response::Event(Box::new((*event).clone()))));
            }
            match kill {
                Some(kill) => {
                    state.metrics.kill(
                        clock.wall(kill.at.as_nanos() as u64),
                        kill.pid,
                        kill.comm.as_deref(),
                        kill.cgroup.as_deref(),
                        kill.constraint,
                    );
                    if let Some(notice) = self.tell_kill(&event, &item, state.hooks.is_some()) {
                        state.kills_for_hooks.push(notice);
                    }
                    state.keeper.kill(kill);
                }
                None => log::debug!("{}", event.line()),
            }
        }
        seen
    }

    /// The answer to a scrape of the metrics port: the counts now, with the verdict judged at
    /// most once a second for it (a flood of scrapes costs no judgement each).
    fn scrape(&self) -> String {
        let mut state = self.lock();
        if state
            .scraped_at
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            state.scraped_at = Some(std::time::Instant::now());
            state.weigh_unseen();
            state.judge();
        }
        state.metrics_text().unwrap_or_default()
    }

    /// A kill is logged (as a journal entry with fields under systemd, else as a line), with the
    /// names exactly as the kernel had them (`record`); returns the notice for `on_kill` where
    /// there are `hooks`.
    fn tell_kill(&self, event: &VictimEvent, record: &[u8], hooks: bool) -> Option<Notice> {
        let line = event.line();
        if self.journal.is_none() && !hooks {
            log::info!("{line}");
            return None;
        }
        let exact = ExactNames::of(record).unwrap_or_default();
        let notice = Notice::new(event)
            .exact("comm", exact.comm.as_deref())
            .exact("cgroup", exact.cgroup.as_deref())
            .exact("oom_cgroup", exact.oom_cgroup.as_deref())
            .exact("trigger_comm", Some(&exact.trigger_comm));
        let journaled = self
            .journal
            .as_ref()
            .is_some_and(|journal| journal.kill(&notice, &line));
        if !journaled {
            log::info!("{line}");
        }
        hooks.then_some(notice)
    }

    /// After a batch of events: see [`State::settle`]; the watchers are told of drops. Returns
    /// the batch's reading for [`State::settle_rest`].
    fn settle(&self) -> Option<Reading> {
        let (dropped, reading) = self.lock().settle();
        if let Some(count) = dropped {
            log::warn!("{count} events dropped (ring buffer full); the counts stay exact");
            let dropped = Response::Dropped(Dropped {
                count,
                by: DropOrigin::Kernel,
            });
            let _ = self.watchers.send(clients::line(&dropped));
        }
        reading
    }

    /// Ranks the likely next victims on a blocking thread, when the rules need them and the last
    /// ranking is older than [`RANK_EVERY`]; the judgements use it once done. Never waits.
    fn rank_likely(self: &Arc<Self>) {
        let n = {
            let mut state = self.lock();
            let n = state.keeper.likely_needed();
            let ranking = &mut state.ranking;
            if n == 0 || ranking.running || ranking.at.is_some_and(|at| at.elapsed() < RANK_EVERY) {
                return;
            }
            ranking.running = true;
            n
        };
        let scan = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let ranked = crate::host::victims::rank(n);
            (ranked, started.elapsed())
        });
        let shared = self.clone();
        tokio::spawn(async move {
            let likely = match scan.await {
                Ok((Ok(ranking), took)) => {
                    log::debug!(
                        "ranked the likely next victims in {took:.1?}: {} processes unreadable",
                        ranking.unreadable
                    );
                    ranking.likely.into_iter().map(|c| c.comm).collect()
                }
                Ok((Err(err), _)) => {
                    log::debug!("ranking likely victims: {err}");
                    Vec::new()
                }
                Err(err) => {
                    log::warn!("ranking likely victims: {err}");
                    Vec::new()
                }
            };
            let mut state = shared.lock();
            state.keeper.set_likely(likely);
            state.ranking.running = false;
            state.ranking.at = Some(std::time::Instant::now());
        });
    }
}

impl State {
    /// After a batch of events: the books settled with the counters read now (see
    /// [`Ledger::settle`]), the verdict judged at once (an unrecoverable kill stops the very next
    /// keepalive), the metrics' textfile rewritten. Returns the events dropped since the last
    /// batch, for the watchers, and the reading, for [`State::settle_rest`].
    fn settle(&mut self) -> (Option<u64>, Option<Reading>) {
        let mut dropped = None;
        // The kernel's counts, read once for the books and every output.
        let reading = self.read();
        if let Ok(reading) = &reading {
            let settled = self.ledger.settle(&reading.counters, monotonic());
            self.weigh(settled.unseen);
            dropped = settled.dropped;
        }
        // Judged and published once: the textfile first (with the new verdict), then, in
        // `settle_rest`, the pins' slots and the stat file.
        self.keeper.judge();
        self.keep_latch();
        self.tell_verdict();
        if let Ok(reading) = &reading {
            self.publish_metrics_of(reading);
        }
        (dropped, reading.ok())
    }

    /// The rest of a batch, after [`State::settle`]: the books' slots kept with the pins, the
    /// stat file rewritten, the report handed to xenstore's writer, the kills' hooks started.
    fn settle_rest(&mut self, reading: Option<Reading>) {
        for (slot, value) in self.ledger.slots() {
            let _ = self.probe.set_slot(slot, value);
        }
        if let Some(reading) = &reading {
            self.publish_stat_of(reading);
        }
        self.publish_xen(false, reading.as_ref());
        // Spawned here, they start once the daemon's thread has nothing more to do.
        let kills = std::mem::take(&mut self.kills_for_hooks);
        if let Some(hooks) = &self.hooks {
            kills.into_iter().for_each(|notice| hooks.kill(notice));
        }
    }

    /// Hands the xenstore writer a report (it writes on its own thread, coalesced): after each
    /// batch of events, each change of verdict, and with fresh vitals at each `[xenstore]
    /// interval` (`read_vitals`).
    fn publish_xen(&mut self, read_vitals: bool, reading: Option<&Reading>) {
        let Some(xen) = &mut self.xen else { return };
        if read_vitals {
            match crate::host::vitals::read() {
                Ok(v) => xen.vitals = Some(crate::xen::vitals(&v)),
                Err(err) => log::debug!("xenstore: vitals: {err}"),
            }
        }
        let counts = match reading {
            Some(reading) => self.count_reply_of(reading),
            None => match self.count_reply() {
                Ok(counts) => counts,
                Err(_) => return,
            },
        };
        let Some(xen) = &mut self.xen else { return };
        let verdict = self.keeper.verdict();
        xen.health = Some(verdict.health);
        let last = self.ledger.last_kill();
        xen.publisher.publish(crate::xen::report_from(
            &counts,
            verdict.health,
            &verdict.reason,
            last.as_ref(),
            xen.vitals.clone(),
        ));
    }

    /// Hands the rules kills the kernel counted that reached the daemon only as counts.
    fn weigh(&mut self, kills: Vec<Kill>) {
        if !kills.is_empty() {
            log::debug!("{} kills weighed without their events", kills.len());
        }
        for kill in kills {
            self.keeper.kill(kill);
        }
    }

    /// Once the ring buffer has failed: the kills counted since the last look, at each
    /// keepalive and verdict (nothing while events flow).
    fn weigh_unseen(&mut self) {
        if let Ok(counters) = self.probe.counters() {
            let kills = self.ledger.weigh(&counters, monotonic());
            self.weigh(kills);
        }
    }

    /// A keepalive is due: judged, and sent or not.
    fn tick(&mut self) {
        self.weigh_unseen();
        self.keeper.tick();
        self.keep_latch();
        self.verdict_published();
        if let Some(xen) = &self.xen
            && xen.health != Some(self.keeper.verdict().health)
        {
            self.publish_xen(false, None);
        }
        self.tell_verdict();
    }

    /// Judges now; an unrecoverable verdict is kept with the pins.
    fn judge(&mut self) -> Verdict {
        let verdict = self.keeper.judge();
        self.keep_latch();
        self.verdict_published();
        self.tell_verdict();
        verdict
    }

    /// Rewrites the textfile when the verdict changed since it was last written.
    fn verdict_published(&mut self) {
        if self.metrics.verdict_changed(Some(self.keeper.health())) {
            self.publish_metrics();
        }
    }

    /// The kernel's counts now: the probe's counters and `/proc/vmstat`'s `oom_kill`.
    fn read(&self) -> io::Result<Reading> {
        Ok(Reading {
            counters: self.probe.counters().map_err(io::Error::other)?,
            kernel_oom_kill: system::kernel_oom_kill(),
        })
    }

    /// The exposition of the counts now; `None` when the counters cannot be read.
    fn metrics_text(&self) -> Option<String> {
        self.read()
            .ok()
            .map(|reading| self.metrics_text_of(&reading))
    }

    fn metrics_text_of(&self, reading: &Reading) -> String {
        self.metrics.render(&crate::metrics::publish::Readings {
            counters: &reading.counters,
            attached_at: self.probe.attached_at(),
            kernel_oom_kill: reading.kernel_oom_kill,
            health: Some(self.keeper.health()),
            keepalives: self.keeper.keepalives(),
        })
    }

    /// Rewrites the textfile, where there is one; a failure is logged, never fatal.
    fn publish_metrics(&mut self) {
        if self.metrics.settings().textfile.is_some()
            && let Ok(reading) = self.read()
        {
            self.publish_metrics_of(&reading);
        }
    }

    fn publish_metrics_of(&mut self, reading: &Reading) {
        if self.metrics.settings().textfile.is_none() {
            return;
        }
        let text = self.metrics_text_of(reading);
        let health = Some(self.keeper.health());
        if let Some(path) = self.metrics.textfile_published(health) {
            writer::write(path, &text);
        }
    }

    /// Hands a change of health the keeper just judged to `on_verdict`.
    fn tell_verdict(&mut self) {
        let Some((before, verdict)) = self.keeper.take_change() else {
            return;
        };
        if let Some(hooks) = &self.hooks
            && before != verdict.health
        {
            let change = VerdictChange {
                time: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
                health: verdict.health,
                previous: before,
                reason: verdict.reason,
            };
            hooks.verdict(Notice::new(&change));
        }
    }

    /// The ring buffer cannot be read: kills still count, and from now on reach the rules from
    /// the kernel's counters (with their constraint, without names); the verdict says so, never
    /// healthy.
    fn ring_failed(&mut self, why: &str) {
        log::error!(
            "{why}; counting goes on and the rules weigh kills from the kernel's counters, but kills are no longer logged"
        );
        if let Ok(counters) = self.probe.counters() {
            let lost = self.ledger.ring_failed(&counters, monotonic());
            self.weigh(lost);
        }
        self.keeper.fault(format!(
            "{why}: kills are weighed from the kernel's counters, without names (restart the daemon)"
        ));
    }

    /// Keeps an unrecoverable verdict the keeper just reached with the pins, for any later
    /// daemon.
    fn keep_latch(&mut self) {
        let Some(at) = self.keeper.take_newly_latched() else {
            return;
        };
        let kept = self
            .probe
            .set_slot(counter::UNRECOVERABLE_AT, state::latch_ns(at));
        if let Err(err) = kept {
            log::warn!(
                "cannot keep the verdict with the pins ({err}): a restarted daemon would start healthy"
            );
        }
    }

    fn count_reply(&self) -> io::Result<CountReply> {
        self.read().map(|reading| self.count_reply_of(&reading))
    }

    fn count_reply_of(&self, reading: &Reading) -> CountReply {
        let attached_at = self.probe.attached_at();
        let mut reply =
            self.ledger
                .count_reply(&reading.counters, attached_at, reading.kernel_oom_kill);
        if let Some(hooks) = &self.hooks {
            reply.hooks_run = Some(hooks.ran());
            reply.hooks_skipped = Some(hooks.skipped());
        }
        reply
    }

    /// Rewrites the stat file; a failure is logged, never fatal.
    fn publish_stat(&self) {
        let Some(path) = &self.stat else { return };
        match self.read() {
            Ok(reading) => self.publish_stat_of(&reading),
            Err(err) => log::warn!("cannot write {} ({err})", path.display()),
        }
    }

    fn publish_stat_of(&self, reading: &Reading) {
        if let Some(path) = &self.stat {
            writer::write(path, &stat::render(&self.count_reply_of(reading)));
        }
    }
}

/// What `on_verdict` is told: `OOMCOUNT_HEALTH`, `OOMCOUNT_PREVIOUS`, `OOMCOUNT_REASON`, and the
/// whole as JSON in `OOMCOUNT_EVENT`.
#[derive(serde::Serialize)]
struct VerdictChange {
    time: String,
    health: crate::watchdog::rules::Health,
    previous: crate::watchdog::rules::Health,
    reason: String,
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The guests' snapshot changed (dom0, with a textfile): rewrite it.
async fn notified(changed: &Option<Arc<tokio::sync::Notify>>) {
    match changed {
        Some(changed) => changed.notified().await,
        None => std::future::pending().await,
    }
}

async fn pins_changed(watch: &mut Option<crate::probe::pins::Watch>) -> io::Result<()> {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

async fn readable(
    events: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match events {
        Some(events) => events.readable_mut().await,
        None => std::future::pending().await,
    }
}
