//! The daemon's clients: admitted by uid into slots, answered one request per turn, every
//! write under a deadline; watchers streamed the events (see the module docs of [`super`]).
use std::{
    io::{self, ErrorKind, Write as _},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::broadcast,
};

use super::{
    Shared,
    slots::{RefusalLog, Slot, Slots},
};
use crate::protocol::{DropOrigin, Dropped, MAX_LINE, Request, Response, VerdictReply};

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

/// Serves a new connection in a slot of its uid's, or refuses it with one line that says why.
pub(super) fn admit(
    stream: UnixStream,
    shared: &Arc<Shared>,
    slots: &Slots,
    refusals: &mut RefusalLog,
) {
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
pub(super) async fn refusals_due(refusals: &RefusalLog) {
    match refusals.due() {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A response as one JSON line.
pub(super) fn line(response: &Response) -> Arc<[u8]> {
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
    let watching = line(&Response::Watching(shared.lock().count_reply()?));
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
        Request::Count => match shared.lock().count_reply() {
            Ok(reply) => Response::Count(reply),
            Err(err) => Response::Error(format!("cannot read counters: {err}")),
        },
        Request::List { n } => Response::Events(shared.lock().ledger.recent(*n)),
        Request::Watch => Response::Error("watch is answered by a stream".to_owned()),
        Request::Verdict => {
            shared.rank_likely();
            let mut state = shared.lock();
            state.weigh_unseen();
            let verdict = state.judge();
            Response::Verdict(VerdictReply {
                health: verdict.health,
                reason: verdict.reason,
                watchdog: state.keeper.state(),
            })
        }
    }
}
