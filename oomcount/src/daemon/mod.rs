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
//! - every write to a client has a deadline ([`WRITE_DEADLINE`], [`WATCH_DEADLINE`] for a
//!   watcher's events), and a request client that sends nothing for `CLIENT_IDLE` is let go;
//!   a watcher is let go as soon as it closes its end (it sends nothing after its request: its
//!   end reading EOF means it is gone);
//! - the one slow part of a judgement, ranking the likely next victims for `critical_top` (a
//!   scan of /proc), runs on a blocking thread of its own, at most once per [`RANK_EVERY`],
//!   and the verdict uses the last ranking: a flood of verdict requests costs no scan.
pub(crate) mod slots;
pub mod stat;

use slots::{RefusalLog, Slot, Slots};
use std::{
    collections::VecDeque,
    fs,
    io::{self, ErrorKind, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use oomcount_common::{Event, counter};
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};

use crate::{
    config::Config,
    host::system,
    probe::{
        Origin, Probe, ProbeError,
        event::{Clock, Kind, VictimEvent},
    },
    protocol::{
        CountReply, DropOrigin, Dropped, MAX_LINE, Request, Response, Source, VerdictReply,
    },
    watchdog::{
        keeper::Keeper,
        rules::{Kill, Unseen},
    },
};

/// A client that sends nothing for this long is disconnected (watchers excepted).
const CLIENT_IDLE: Duration = Duration::from_secs(30);
/// A client that has not taken a line of its answer within this long is disconnected: one that
/// never reads cannot hold a task, a slot or a buffer for long.
pub(crate) const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// The same for a watcher's events, longer: a watcher may stop reading for a while (a pager, a
/// stopped terminal job) and then be told how many events it missed, since its queue is bounded
/// (and shared) whatever it does.
pub(crate) const WATCH_DEADLINE: Duration = Duration::from_secs(60);
/// A client's read buffer: a request is a few dozen bytes (at most [`MAX_LINE`]).
const READ_BUFFER: usize = 1024;
/// The likely next victims are ranked at most this often.
pub(crate) const RANK_EVERY: Duration = Duration::from_secs(1);
/// Events a watcher may fall behind before it is told it missed some.
const WATCH_QUEUE: usize = 256;
/// Events kept for `list`: about 400 bytes each, so 1024 cost ~0.4 MiB when full.
pub const DEFAULT_HISTORY: usize = 1024;

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

/// What the daemon's tasks share.
struct Shared {
    /// Behind a lock because writing the slots kept with the pins needs `&mut`.
    probe: Mutex<Probe>,
    /// Where the counts are published for `cat`; `None` when disabled.
    stat: Option<PathBuf>,
    history: Mutex<History>,
    /// Serialized response lines for watchers.
    watchers: broadcast::Sender<Arc<[u8]>>,
    keeper: Mutex<Keeper>,
    ranking: Mutex<Ranking>,
}

/// The ranking of the likely next victims, done off the runtime's thread.
#[derive(Default)]
struct Ranking {
    /// When the last ranking finished.
    at: Option<std::time::Instant>,
    /// One is under way.
    running: bool,
}

struct History {
    events: VecDeque<Arc<VictimEvent>>,
    capacity: usize,
    seq: u64,
    received: u64,
    kills_received: u64,
    drops_seen: u64,
    /// Where kills that reach the daemon only as counts are read, and the reading last weighed.
    unseen: UnseenSource,
}

/// Kills the rules weigh without their events, as a (total, memcg, global) triple of kernel
/// counters: while events flow, the lost kill events; once the ring buffer has failed, every
/// kill (no event will come).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnseenSource {
    Dropped([u64; 3]),
    AllKills([u64; 3]),
}

impl UnseenSource {
    fn read(self, c: &crate::probe::counters::Counters) -> [u64; 3] {
        match self {
            UnseenSource::Dropped(_) => [
                c.kill_events_dropped,
                c.kill_events_dropped_memcg,
                c.kill_events_dropped_global,
            ],
            UnseenSource::AllKills(_) => [c.kills, c.kills_memcg, c.kills_global],
        }
    }

    /// The kills counted since the last look, and the source moved past them.
    fn take(&mut self, c: &crate::probe::counters::Counters) -> Unseen {
        let now = self.read(c);
        let (UnseenSource::Dropped(last) | UnseenSource::AllKills(last)) = self;
        let unseen = Unseen::between(*last, now);
        *last = now;
        unseen
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        // For the ranking of likely victims only (one at a time): the thread is started for the
        // first and ends after a while without one. It never runs at the real-time priority
        // the daemon may have, which it would otherwise inherit.
        .max_blocking_threads(1)
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
    let lock = lock_socket(&socket)?;
    if let Some(stat) = &options.stat {
        crate::files::ensure_folder(crate::files::parent(stat), 0o755).map_err(|source| {
            DaemonError::Folder {
                what: "stat file",
                flag: "--stat",
                source,
            }
        })?;
    }
    let mut probe = Probe::attach(options.pin_dir.as_deref())?;
    system::protect_self();
    let listener = bind(&socket)?;
    // Armed from here, the last step that can fail: an error after it would leave the
    // watchdog armed. The first keepalive goes out as the loop starts.
    // An unrecoverable verdict an earlier daemon kept with the pins still holds.
    let latched = probe
        .slot(counter::UNRECOVERABLE_AT)
        .ok()
        .filter(|&ns| ns != 0)
        .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns));
    let keeper = Keeper::new(&options.config, options.dry_run, latched)?;
    let start = probe.counters().ok();
    let unseen = UnseenSource::Dropped([0; 3]);
    let unseen = match &start {
        Some(c) => UnseenSource::Dropped(unseen.read(c)),
        None => unseen,
    };
    let events = probe.take_events().expect("a fresh probe has its events");
    let origin = probe.origin();
    // The sequence and the drops already reported go on where the previous daemon left them.
    let seq = probe.slot(counter::SEQ).unwrap_or(0);
    let drops_seen = probe.slot(counter::DROPS_SEEN).unwrap_or(0);
    let shared = Arc::new(Shared {
        probe: Mutex::new(probe),
        stat: options.stat,
        history: Mutex::new(History {
            events: VecDeque::with_capacity(options.history.min(64)),
            capacity: options.history,
            seq,
            received: 0,
            kills_received: 0,
            drops_seen,
            unseen,
        }),
        watchers: broadcast::channel(WATCH_QUEUE).0,
        keeper: Mutex::new(keeper),
        ranking: Mutex::new(Ranking::default()),
    });
    publish_stat(&shared);
    let how = match (origin, &options.pin_dir) {
        (Origin::Adopted, Some(dir)) => format!("adopted the probe pinned in {}", dir.display()),
        (Origin::Upgraded, Some(dir)) => format!("replaced older pins in {}", dir.display()),
        (Origin::Attached, Some(dir)) => format!("attached, pinned in {}", dir.display()),
        _ => "attached, not pinned".to_owned(),
    };
    log::info!(
        "{how}: oom/mark_victim on Linux {}, counting since {}; serving on {}",
        crate::probe::tracefs::kernel_release(),
        humantime::format_rfc3339_seconds(lock_probe(&shared).attached_at()),
        socket.display()
    );

    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
    let registered =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) };
    let mut events = match registered {
        Ok(events) => Some(events),
        Err(err) => {
            ring_failed(
                &shared,
                &format!("cannot watch the event ring buffer ({err})"),
            );
            None
        }
    };
    // Pins removed or replaced under the daemon are noticed as it happens (inotify).
    let mut pin_watch = lock_probe(&shared).pin_dir().and_then(|dir| {
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
    rank_likely(&shared);
    // Only when something is pinged: otherwise the daemon judges when asked, and sleeps.
    let mut keepalive = lock_keeper(&shared).interval().map(|period| {
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick(&mut keepalive) => {
                weigh_unseen(&shared);
                rank_likely(&shared);
                let mut keeper = lock_keeper(&shared);
                keeper.tick();
                keep_latch(&shared, &mut keeper);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => admit(stream, &shared, &slots, &mut refusals),
                Err(err) => log::warn!("accept: {err}"),
            },
            changed = pins_changed(&mut pin_watch) => {
                lock_probe(&shared).check_pins();
                if let Some(watch) = &mut pin_watch
                    && let Err(err) = changed.and_then(|()| watch.rewatch())
                {
                    log::warn!("watching the pins: {err}; pins removed from now on are not pinned again");
                    pin_watch = None;
                }
            }
            _ = refusals_due(&refusals) => {
                if let Some(line) = refusals.flush(std::time::Instant::now()) {
                    log::warn!("{line}");
                }
            },
            ready = readable(&mut events) => match ready {
                Ok(mut guard) => {
                    let seen = drain(guard.get_inner_mut(), &shared);
                    guard.clear_ready();
                    if seen {
                        // The watchers' lines are queued: let them go out before the
                        // bookkeeping (counters, verdict, pins' slots, stat file).
                        tokio::task::yield_now().await;
                        settle(&shared);
                    }
                }
                Err(err) => {
                    ring_failed(&shared, &format!("event ring buffer: {err}"));
                    events = None;
                }
            },
        }
    }
    log::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    lock_keeper(&shared).stop();
    let _ = fs::remove_file(&socket);
    if let Some(stat) = &shared.stat {
        let _ = fs::remove_file(stat);
    }
    drop(lock);
    Ok(())
}

/// Serves a new connection in a slot of its uid's, or refuses it with one line that says why.
fn admit(stream: UnixStream, shared: &Arc<Shared>, slots: &Slots, refusals: &mut RefusalLog) {
    // A credential the kernel cannot give (it always can for a unix socket) counts as a user's.
    let uid = stream.peer_cred().map_or(u32::MAX, |cred| cred.uid());
    match slots.take(uid) {
        Ok(slot) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(err) = serve_client(stream, &shared, slot).await {
                    log::debug!("client: {err}");
                }
            });
        }
        Err(refusal) => {
            // The uid is known only once accepted: the connection is told why and closed at
            // once, so that its slot in the listen backlog goes to the next one (root's
            // `check` among them). The socket is new and its buffer empty: the write cannot
            // block.
            if let Ok(stream) = stream.into_std() {
                let _ = (&stream).write(&line(&Response::Error(refusal.to_string())));
            }
            if let Some(line) = refusals.refused(std::time::Instant::now(), refusal) {
                log::warn!("{line}");
            }
        }
    }
}

/// When the refusals counted so far are due to be logged.
async fn refusals_due(refusals: &RefusalLog) {
    match refusals.due() {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Ranks the likely next victims on a blocking thread, when the rules need them and the last
/// ranking is older than [`RANK_EVERY`]; the judgements use it once done. Never waits.
fn rank_likely(shared: &Arc<Shared>) {
    let n = lock_keeper(shared).likely_needed();
    if n == 0 {
        return;
    }
    {
        let mut ranking = shared.ranking.lock().unwrap_or_else(|e| e.into_inner());
        if ranking.running || ranking.at.is_some_and(|at| at.elapsed() < RANK_EVERY) {
            return;
        }
        ranking.running = true;
    }
    let scan = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let ranked = crate::host::victims::rank(n);
        (ranked, started.elapsed())
    });
    let shared = shared.clone();
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
        lock_keeper(&shared).set_likely(likely);
        let mut ranking = shared.ranking.lock().unwrap_or_else(|e| e.into_inner());
        ranking.running = false;
        ranking.at = Some(std::time::Instant::now());
    });
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
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

/// Takes every event waiting in the ring buffer: tells watchers, logs kills, keeps them, hands
/// them to the rules. Returns whether there was any.
fn drain(ring: &mut RingBuf<MapData>, shared: &Shared) -> bool {
    let clock = Clock::now();
    let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = false;
    while let Some(item) = ring.next() {
        seen = true;
        let Some(raw) = Event::from_bytes(&item) else {
            log::warn!("short event record ({} bytes) ignored", item.len());
            continue;
        };
        history.seq += 1;
        history.received += 1;
        let event = Arc::new(VictimEvent::decode(&raw, history.seq, &clock));
        if shared.watchers.receiver_count() > 0 {
            let _ = shared
                .watchers
                .send(line(&Response::Event((*event).clone())));
        }
        if event.kind == Kind::Kill {
            history.kills_received += 1;
            log::info!("{}", event.line());
            lock_keeper(shared).kill(Kill {
                at: Duration::from_nanos(raw.ktime_ns),
                pid: event.pid,
                comm: event.comm.clone(),
                constraint: event.constraint,
                cgroup: event.cgroup.clone(),
            });
        } else {
            log::debug!("{}", event.line());
        }
        if history.capacity > 0 {
            if history.events.len() == history.capacity {
                history.events.pop_front();
            }
            history.events.push_back(event);
        }
    }
    seen
}

/// After a batch of events: lost events accounted, the verdict judged, the sequence kept with
/// the pins, the stat file rewritten.
fn settle(shared: &Shared) {
    let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    // Drops happen in the kernel while the buffer is full; they are noticed here, after it
    // has been emptied, and numbered into the sequence so that gaps show.
    let mut probe = lock_probe(shared);
    let counters = probe.counters().ok();
    let mut keeper = lock_keeper(shared);
    if let Some(counters) = &counters {
        feed_unseen(&mut history, &mut keeper, counters);
    }
    // Judged at once: an unrecoverable kill stops the very next keepalive.
    keeper.judge();
    if let Some(at) = keeper.take_newly_latched() {
        latch_in(&mut probe, at);
    }
    drop(keeper);
    if let Some(counters) = &counters
        && counters.events_dropped > history.drops_seen
    {
        let count = counters.events_dropped - history.drops_seen;
        history.drops_seen = counters.events_dropped;
        history.seq += count;
        log::warn!("{count} events dropped (ring buffer full); the counts stay exact");
        let dropped = Response::Dropped(Dropped {
            count,
            by: DropOrigin::Kernel,
        });
        let _ = shared.watchers.send(line(&dropped));
    }
    // Kept with the pins, for the next daemon.
    let _ = probe.set_slot(counter::SEQ, history.seq);
    let _ = probe.set_slot(counter::DROPS_SEEN, history.drops_seen);
    drop(probe);
    drop(history);
    publish_stat(shared);
}

/// Hands the rules the kills the kernel counted that reached the daemon only as counts (their
/// events lost), with the constraint the kernel's split gives them.
fn feed_unseen(
    history: &mut History,
    keeper: &mut Keeper,
    counters: &crate::probe::counters::Counters,
) {
    let unseen = history.unseen.take(counters);
    if unseen != Unseen::default() {
        log::debug!("kills weighed without their events: {unseen:?}");
        for kill in unseen.kills(crate::probe::event::monotonic()) {
            keeper.kill(kill);
        }
    }
}

/// Reads the counters and weighs the kills that came only as counts: where events flow, settle
/// does this after each batch; once the ring buffer has failed, at each keepalive and verdict.
fn weigh_unseen(shared: &Shared) {
    let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(history.unseen, UnseenSource::AllKills(_)) {
        return;
    }
    let Ok(counters) = lock_probe(shared).counters() else {
        return;
    };
    feed_unseen(&mut history, &mut lock_keeper(shared), &counters);
}

/// The ring buffer cannot be read: kills still count, and from now on reach the rules from the
/// kernel's counters (with their constraint, without names); the verdict says so, never healthy.
fn ring_failed(shared: &Shared, why: &str) {
    log::error!(
        "{why}; counting goes on and the rules weigh kills from the kernel's counters, but kills are no longer logged"
    );
    let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(counters) = lock_probe(shared).counters() {
        // The lost events seen so far are weighed; from here every kill is read as a count.
        feed_unseen(&mut history, &mut lock_keeper(shared), &counters);
        history.unseen =
            UnseenSource::AllKills([counters.kills, counters.kills_memcg, counters.kills_global]);
    }
    lock_keeper(shared).fault(format!(
        "{why}: kills are weighed from the kernel's counters, without names (restart the daemon)"
    ));
}

/// Keeps an unrecoverable verdict the keeper just reached with the pins, for any later daemon.
fn keep_latch(shared: &Shared, keeper: &mut Keeper) {
    if let Some(at) = keeper.take_newly_latched() {
        latch_in(&mut lock_probe(shared), at);
    }
}

fn latch_in(probe: &mut Probe, at: std::time::SystemTime) {
    let ns = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    if let Err(err) = probe.set_slot(counter::UNRECOVERABLE_AT, ns.max(1)) {
        log::warn!(
            "cannot keep the verdict with the pins ({err}): a restarted daemon would start healthy"
        );
    }
}

fn lock_probe(shared: &Shared) -> std::sync::MutexGuard<'_, Probe> {
    shared.probe.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_keeper(shared: &Shared) -> std::sync::MutexGuard<'_, Keeper> {
    shared.keeper.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rewrites the stat file; a failure is logged, never fatal.
fn publish_stat(shared: &Shared) {
    let Some(path) = &shared.stat else { return };
    let written = count_reply(shared).and_then(|counts| {
        crate::daemon::stat::write_atomic(path, &crate::daemon::stat::render(&counts))
    });
    if let Err(err) = written {
        log::warn!("cannot write {} ({err})", path.display());
    }
}

/// A response as one JSON line.
fn line(response: &Response) -> Arc<[u8]> {
    let mut out = serde_json::to_vec(response).unwrap_or_default();
    out.push(b'\n');
    out.into()
}

/// Writes `bytes` to a client within `deadline`.
async fn send(write: &mut OwnedWriteHalf, bytes: &[u8], deadline: Duration) -> io::Result<()> {
    match tokio::time::timeout(deadline, write.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            ErrorKind::TimedOut,
            format!(
                "took no line within {}",
                humantime::format_duration(deadline)
            ),
        )),
    }
}

/// Serves one client's requests until it closes, idles or misbehaves; its slot is given back
/// at the end.
async fn serve_client(stream: UnixStream, shared: &Arc<Shared>, _slot: Slot) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, read);
    let mut request = Vec::with_capacity(128);
    loop {
        request.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        let read = limited.read_until(b'\n', &mut request);
        let n = match tokio::time::timeout(CLIENT_IDLE, read).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if !request.ends_with(b"\n") && n >= MAX_LINE {
            let error = Response::Error(format!("request longer than {MAX_LINE} bytes"));
            return send(&mut write, &line(&error), WRITE_DEADLINE).await;
        }
        match crate::protocol::parse_request(&request) {
            Ok(Request::Watch) => return watch(reader, write, shared).await,
            Ok(request) => {
                send(&mut write, &line(&answer(&request, shared)), WRITE_DEADLINE).await?
            }
            Err(error) => send(&mut write, &line(&Response::Error(error)), WRITE_DEADLINE).await?,
        }
        // One request per turn: a client pipelining requests as fast as it can gets its
        // share of the thread, no more; the keepalive and the other clients get theirs.
        tokio::task::yield_now().await;
    }
}

/// Streams events to a watcher until it goes away: until its end reads EOF (it closed the
/// connection, or its sending half: a watcher sends nothing after its request), or it does not
/// take an event within [`WATCH_DEADLINE`]. Anything it sends is read and ignored.
async fn watch(
    mut reader: BufReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    shared: &Shared,
) -> io::Result<()> {
    let mut events = shared.watchers.subscribe();
    let watching = line(&Response::Watching(count_reply(shared)?));
    send(&mut write, &watching, WRITE_DEADLINE).await?;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => send(&mut write, &event, WATCH_DEADLINE).await?,
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    let dropped = Response::Dropped(Dropped {
                        count,
                        by: DropOrigin::Watcher,
                    });
                    send(&mut write, &line(&dropped), WATCH_DEADLINE).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            read = reader.fill_buf() => {
                let n = read?.len();
                if n == 0 {
                    return Ok(());
                }
                reader.consume(n);
                tokio::task::yield_now().await;
            }
        }
    }
}

fn answer(request: &Request, shared: &Arc<Shared>) -> Response {
    match request {
        Request::Count => match count_reply(shared) {
            Ok(reply) => Response::Count(reply),
            Err(err) => Response::Error(format!("cannot read counters: {err}")),
        },
        Request::List { n } => {
            let history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
            let skip = history.events.len().saturating_sub(*n);
            Response::Events(
                history
                    .events
                    .iter()
                    .skip(skip)
                    .map(|e| (**e).clone())
                    .collect(),
            )
        }
        Request::Watch => Response::Error("watch is answered by a stream".to_owned()),
        Request::Verdict => {
            weigh_unseen(shared);
            rank_likely(shared);
            let mut keeper = lock_keeper(shared);
            let verdict = keeper.judge();
            keep_latch(shared, &mut keeper);
            Response::Verdict(VerdictReply {
                health: verdict.health,
                reason: verdict.reason,
                watchdog: keeper.state(),
            })
        }
    }
}

fn count_reply(shared: &Shared) -> io::Result<CountReply> {
    let probe = lock_probe(shared);
    let counters = probe.counters().map_err(io::Error::other)?;
    let attached_at = probe.attached_at();
    drop(probe);
    let history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    Ok(CountReply {
        kills: counters.kills,
        marked: counters.marked,
        kills_memcg: counters.kills_memcg,
        kills_global: counters.kills_global,
        events_dropped: counters.events_dropped,
        kill_events_dropped: counters.kill_events_dropped,
        oom_signals: counters.oom_signals,
        events_received: history.received,
        kill_events_received: history.kills_received,
        attached_at: humantime::format_rfc3339_seconds(attached_at).to_string(),
        kernel_oom_kill: system::kernel_oom_kill(),
        source: Source::Daemon,
    })
}

/// Takes the daemon's lock beside the socket: a second daemon on the same socket refuses.
fn lock_socket(socket: &Path) -> Result<nix::fcntl::Flock<fs::File>, DaemonError> {
    let socket_err = |source| DaemonError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    // World-searchable where it is made, for clients to reach the socket.
    crate::files::ensure_folder(crate::files::parent(socket), 0o755).map_err(|source| {
        DaemonError::Folder {
            what: "socket",
            flag: "--socket",
            source,
        }
    })?;
    let file =
        crate::files::open_lock(&crate::files::with_suffix(socket, ".lock")).map_err(socket_err)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => DaemonError::AlreadyRunning(socket.to_path_buf()),
            other => socket_err(io::Error::from(other)),
        },
    )
}

/// Binds the socket (replacing a stale one: the lock says no daemon owns it) for everyone to
/// query: the daemon only answers read-only questions.
fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let socket_err = |source| DaemonError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let listener = crate::files::bind_socket(socket, 0o666).map_err(socket_err)?;
    listener.set_nonblocking(true).map_err(socket_err)?;
    UnixListener::from_std(listener).map_err(socket_err)
}
