//! `oomcount daemon`: holds the probe, serves queries on a unix socket, logs each kill.
//!
//! Built for starved machines: one thread (tokio's current-thread runtime), no timers or polling
//! (it wakes only for a ring-buffer event, a client or a signal), bounded memory (a fixed number of
//! clients, bounded request lines), and it never exits because of a client or an event it cannot
//! read: those are logged and dropped. It exits 0 on SIGINT or SIGTERM.
use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use oomcount_common::{Event, c_str, kind};
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
};

use crate::{
    probe::{Counters, Probe, ProbeError},
    protocol::{CountReply, MAX_LINE, Request, Response},
    system,
};

/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;
/// A client that sends nothing for this long is disconnected.
const CLIENT_IDLE: Duration = Duration::from_secs(30);

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
    #[error("cannot start the runtime")]
    Runtime(#[source] io::Error),
}

pub struct Options {
    pub socket: PathBuf,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), DaemonError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> Result<(), DaemonError> {
    let socket = options.socket;
    let lock = lock_socket(&socket)?;
    let mut probe = Probe::attach()?;
    system::protect_self();
    let events = probe.take_events().expect("a fresh probe has its events");
    let probe = Arc::new(probe);
    let listener = bind(&socket)?;
    log::info!(
        "attached to oom/mark_victim on Linux {} at {}; serving on {}",
        crate::tracefs::kernel_release(),
        humantime::format_rfc3339_seconds(probe.attached_at()),
        socket.display()
    );

    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
    let registered =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) };
    let mut events = match registered {
        Ok(events) => Some(events),
        Err(err) => {
            log::error!(
                "cannot watch the event ring buffer ({err}); counting goes on, kills are not logged"
            );
            None
        }
    };
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let mut logged_drops = 0;

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match clients.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let probe = probe.clone();
                        tokio::spawn(async move {
                            if let Err(err) = serve_client(stream, &probe).await {
                                log::debug!("client: {err}");
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => log::warn!("{MAX_CLIENTS} clients already connected; refusing one"),
                },
                Err(err) => log::warn!("accept: {err}"),
            },
            ready = readable(&mut events) => match ready {
                Ok(mut guard) => {
                    drain(guard.get_inner_mut(), &probe, &mut logged_drops);
                    guard.clear_ready();
                }
                Err(err) => {
                    log::error!("event ring buffer: {err}; counting goes on, kills are no longer logged");
                    events = None;
                }
            },
        }
    }
    log::info!("stopping");
    let _ = fs::remove_file(&socket);
    drop(lock);
    Ok(())
}

async fn readable(
    events: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match events {
        Some(events) => events.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Logs every event waiting in the ring buffer, one line per kill.
fn drain(ring: &mut RingBuf<MapData>, probe: &Probe, logged_drops: &mut u64) {
    let mut seen = false;
    while let Some(item) = ring.next() {
        seen = true;
        match Event::from_bytes(&item) {
            Some(event) => log_event(&event),
            None => log::warn!("short event record ({} bytes) ignored", item.len()),
        }
    }
    if !seen {
        return;
    }
    match probe.counters() {
        Ok(Counters {
            kills,
            marked,
            events_dropped,
            ..
        }) => {
            log::debug!("{kills} kills, {marked} marks since attach");
            if events_dropped > *logged_drops {
                log::warn!(
                    "{} events dropped (ring buffer full); the counts stay exact",
                    events_dropped - *logged_drops
                );
                *logged_drops = events_dropped;
            }
        }
        Err(err) => log::warn!("cannot read counters: {err}"),
    }
}

fn log_event(event: &Event) {
    let comm = String::from_utf8_lossy(c_str(&event.comm));
    let trigger = String::from_utf8_lossy(c_str(&event.trigger_comm));
    let memory = if event.flags & oomcount_common::flags::MEMORY != 0 {
        format!(
            ", uid {}, anon-rss {}kB, oom_score_adj {}",
            event.uid, event.anon_rss_kb, event.oom_score_adj
        )
    } else {
        String::new()
    };
    if event.kind == kind::KILL {
        log::info!(
            "OOM kill: pid {} ({comm}){memory}; invoked by pid {} ({trigger})",
            event.pid,
            event.trigger_pid
        );
    } else {
        log::debug!(
            "OOM mark without a kill: pid {}{memory} (a thread of a victim, or a victim already dying); by pid {} ({trigger})",
            event.pid,
            event.trigger_pid
        );
    }
}

/// Serves one client's requests until it closes, idles or misbehaves.
async fn serve_client(stream: UnixStream, probe: &Probe) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        let read = limited.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(CLIENT_IDLE, read).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let too_long = !line.ends_with(b"\n") && n >= MAX_LINE;
        let response = if too_long {
            Response::Error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => answer(&request, probe),
                Err(err) => Response::Error(format!(
                    "bad request ({err}): send one JSON object per line, such as {{\"request\":\"count\"}}"
                )),
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
        if too_long {
            return Ok(());
        }
    }
}

fn answer(request: &Request, probe: &Probe) -> Response {
    match request {
        Request::Count => match probe.counters() {
            Ok(counters) => Response::Count(CountReply {
                kills: counters.kills,
                marked: counters.marked,
                events_dropped: counters.events_dropped,
                attached_at: humantime::format_rfc3339_seconds(probe.attached_at()).to_string(),
                kernel_oom_kill: system::kernel_oom_kill(),
                source: "daemon".to_owned(),
            }),
            Err(err) => Response::Error(format!("cannot read counters: {err}")),
        },
    }
}

/// Takes the daemon's lock beside the socket: a second daemon on the same socket refuses.
fn lock_socket(socket: &Path) -> Result<nix::fcntl::Flock<fs::File>, DaemonError> {
    let socket_err = |source| DaemonError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(parent) = socket.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        fs::create_dir_all(parent).map_err(socket_err)?;
        let _ = fs::set_permissions(parent, fs::Permissions::from_mode(0o755));
    }
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(socket_err)?;
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
    match fs::remove_file(socket) {
        Ok(()) => log::debug!("removed stale socket {}", socket.display()),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(socket_err(err)),
    }
    let listener = UnixListener::bind(socket).map_err(socket_err)?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o666)).map_err(socket_err)?;
    Ok(listener)
}
