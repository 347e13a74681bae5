//! The daemon's socket protocol: one JSON object per line each way.
//!
//! A client writes a [`Request`] line and reads one [`Response`] line; a connection may carry
//! several requests. Lines are bounded ([`MAX_LINE`]) so that a misbehaving client cannot make
//! the daemon grow; garbage gets an error response and costs the daemon nothing else. A
//! connection over the daemon's limits ([`crate::daemon::slots`]) gets one error line, before any
//! request, and is closed.
use std::{
    io::{self, BufRead, BufReader, Read as _, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::probe::{counters::Counters, event::VictimEvent};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/oomcount/oomcount.sock";

/// The longest request line accepted, newline included.
pub const MAX_LINE: usize = 4096;
/// The longest response line a client accepts (a full `list`).
pub(crate) const MAX_RESPONSE: usize = 8 << 20;

/// How long a client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The counts since attach, and the kernel's since boot.
    Count,
    /// The last `n` events of the daemon's history, oldest first.
    List { n: usize },
    /// Every event from now on: a [`Response::Watching`] line, then one line per event. The
    /// client sends nothing more: the watch ends when it closes the connection or shuts down
    /// its sending half, or when it does not take a line within the daemon's write deadline.
    Watch,
    /// The watchdog rules' verdict, judged now, and the keepalive's state.
    Verdict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Count(CountReply),
    Events(Vec<VictimEvent>),
    /// The watch has begun: every event after this line will follow.
    Watching(CountReply),
    /// Boxed: an event is the largest reply by far, and watchers get many.
    Event(Box<VictimEvent>),
    /// Events the kernel could not hand over (ring buffer full), or that this watcher fell too
    /// far behind to receive.
    Dropped(Dropped),
    Verdict(VerdictReply),
    Error(String),
}

/// What `oomcount check --json` prints, and the `watchdog` part of `oomcount status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictReply {
    /// `healthy`, `degraded` (recoverable: keepalives go on) or `unrecoverable`.
    pub health: crate::watchdog::rules::Health,
    /// Why, in one line; empty when healthy.
    pub reason: String,
    pub watchdog: crate::watchdog::keeper::KeeperState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// How many events were lost.
    pub count: u64,
    /// Where they were lost.
    pub by: DropOrigin,
}

/// Where events were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropOrigin {
    /// In the kernel: the ring buffer was full (see `events_dropped`).
    Kernel,
    /// On the way to this watcher: it was slow, and its queue full.
    Watcher,
}

impl std::fmt::Display for DropOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropOrigin::Kernel => "kernel",
            DropOrigin::Watcher => "watcher",
        })
    }
}

/// Who answered a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The daemon.
    Daemon,
    /// The pins, read without a daemon (as root).
    Pins,
}

/// What `oomcount count --json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReply {
    /// Victims killed by the OOM killer since the probe was attached.
    pub kills: u64,
    /// `oom/mark_victim` events since attach, kills included.
    pub marked: u64,
    /// Kills by a memory cgroup's limit, and all others (global, cpuset, mempolicy), where the
    /// OOM killer's own record of the constraint could be read.
    pub kills_memcg: u64,
    pub kills_global: u64,
    /// Events lost to a full ring buffer (`kills` and `marked` are exact regardless), and of
    /// them, those of kills.
    pub events_dropped: u64,
    pub kill_events_dropped: u64,
    /// Events this daemon received from the kernel, and of them, kills.
    pub events_received: u64,
    pub kill_events_received: u64,
    /// SIGKILLs the OOM killer sent (`signal_generate` as only the kernel sends it): one per
    /// kill, plus the processes that shared a victim's memory.
    #[serde(default)]
    pub oom_signals: u64,
    /// When the probe was attached (RFC 3339, UTC).
    pub attached_at: String,
    /// `/proc/vmstat` `oom_kill`: the kernel's count since boot; absent before Linux 4.13.
    pub kernel_oom_kill: Option<u64>,
    /// Who answered.
    pub source: Source,
    /// `[hooks]`: hooks started, and kills or verdict changes that ran none because
    /// `max_running` hooks were busy (coalesced into the next). Absent without hooks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hooks_run: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hooks_skipped: Option<u64>,
}

impl CountReply {
    /// The one way a count is made, from the counters the daemon or the pins hold, with the
    /// events and kill events received (0 from the pins).
    pub fn new(
        counters: &Counters,
        attached_at: SystemTime,
        kernel_oom_kill: Option<u64>,
        source: Source,
        (events_received, kill_events_received): (u64, u64),
    ) -> Self {
        Self {
            kills: counters.kills,
            marked: counters.marked,
            kills_memcg: counters.kills_memcg,
            kills_global: counters.kills_global,
            events_dropped: counters.events_dropped,
            kill_events_dropped: counters.kill_events_dropped,
            oom_signals: counters.oom_signals,
            hooks_run: None,
            hooks_skipped: None,
            events_received,
            kill_events_received,
            attached_at: humantime::format_rfc3339_seconds(attached_at).to_string(),
            kernel_oom_kill,
            source,
        }
    }
}

#[cfg(test)]
impl CountReply {
    /// The tests' count: 3 kills (2 memcg, 1 global) in 5 marks, all received, since
    /// 2026-11-26T05:00:00Z; the kernel counted 9 since boot.
    pub(crate) fn sample() -> Self {
        let counters = Counters {
            kills: 3,
            marked: 5,
            kills_memcg: 2,
            kills_global: 1,
            ..Counters::default()
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_669_200);
        CountReply::new(&counters, at, Some(9), Source::Daemon, (5, 3))
    }
}

/// Parses one request line as the daemon reads it (its newline included or not); the error is
/// the [`Response::Error`] to answer, which says what a request looks like.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|err| {
        format!(
            "bad request ({err}): send one JSON object per line, such as {{\"request\":\"count\"}}"
        )
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no oomcount daemon is running on {0}: start one with `oomcount daemon` (as root), or name its socket with --socket"
    )]
    NotRunning(PathBuf),
    #[error("cannot reach the daemon at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// EOF, EPIPE or ECONNRESET before an answer: the daemon hung up on this request (over its
    /// limit of clients, or stopping). Never a closed stdout: that is the CLI's own error.
    #[error(
        "the daemon at {0} closed the connection without an answer (busy with other clients, or stopping): try again"
    )]
    Closed(PathBuf),
    #[error("the daemon at {path} did not answer within {}s", CLIENT_TIMEOUT.as_secs())]
    Timeout { path: PathBuf },
    #[error("the daemon at {path} did not answer")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon at {path} answered garbage (is it an oomcount daemon of this version?)")]
    Garbage {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the daemon at {0} refused the request: {1}")]
    Refused(PathBuf, String),
}

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the daemon at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_path_buf())
            }
            _ => ClientError::Connect {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let client = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        };
        let stream = client.reader.get_ref();
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| client.io(e))?;
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| client.io(e))?;
        Ok(client)
    }

    fn io(&self, source: io::Error) -> ClientError {
        let path = self.path.clone();
        match source.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof => ClientError::Closed(path),
            // What a socket timeout reads as.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout { path },
            _ => ClientError::Io { path, source },
        }
    }

    /// Sends one request and reads its answer; a connection closed before the answer is an
    /// error ([`ClientError::Closed`]).
    ///
    /// A daemon that refuses a connection (too many from this user) writes why and closes it,
    /// possibly before the request could be sent (the send fails with EPIPE): what it wrote is
    /// read all the same, and the refusal ([`ClientError::Refused`]) is the error, which says
    /// what to do, never a hang-up without an answer.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if let Err(err) = self.send(request) {
            return match (err, self.receive()) {
                (ClientError::Closed(_), Err(refused @ ClientError::Refused(..))) => Err(refused),
                (err, _) => Err(err),
            };
        }
        self.receive()?
            .ok_or_else(|| ClientError::Closed(self.path.clone()))
    }

    /// Sends a request.
    pub(crate) fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(request).expect("requests always serialize");
        line.push(b'\n');
        self.reader
            .get_ref()
            .write_all(&line)
            .map_err(|e| self.io(e))
    }

    /// Reads the next response; `None` when the daemon closed the connection.
    pub fn receive(&mut self) -> Result<Option<Response>, ClientError> {
        let mut answer = Vec::new();
        (&mut self.reader)
            .take(MAX_RESPONSE as u64)
            .read_until(b'\n', &mut answer)
            .map_err(|e| self.io(e))?;
        if answer.is_empty() {
            return Ok(None);
        }
        let response = serde_json::from_slice(&answer).map_err(|source| ClientError::Garbage {
            path: self.path.clone(),
            source,
        })?;
        match response {
            Response::Error(message) => Err(ClientError::Refused(self.path.clone(), message)),
            other => Ok(Some(other)),
        }
    }

    /// Waits for responses without a deadline (a watch can be quiet for days).
    pub fn wait_forever(&mut self) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|e| self.io(e))
    }
}

/// Sends one request to the daemon at `path` and reads its answer.
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    Client::connect(path)?.call(request)
}

impl Response {
    /// Its kind as on the wire, to name an answer that does not fit the request (its contents can
    /// be a whole history: not for an error line).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Count(_) => "count",
            Response::Events(_) => "events",
            Response::Watching(_) => "watching",
            Response::Event(_) => "event",
            Response::Dropped(_) => "dropped",
            Response::Verdict(_) => "verdict",
            Response::Error(_) => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::event::{Constraint, Kind};

    #[test]
    fn enums_are_written_as_the_words_users_match_on() {
        let word = |v: serde_json::Value| v.as_str().unwrap().to_owned();
        let to = |v: &dyn erased::Ser| word(v.json());
        assert_eq!(to(&Source::Daemon), "daemon");
        assert_eq!(to(&Source::Pins), "pins");
        assert_eq!(to(&DropOrigin::Kernel), "kernel");
        assert_eq!(to(&DropOrigin::Watcher), "watcher");
        assert_eq!(to(&Kind::Kill), "kill");
        assert_eq!(to(&Kind::Mark), "mark");
        for constraint in Constraint::ALL {
            assert_eq!(to(&constraint), constraint.name());
            let back: Constraint = serde_json::from_str(&format!("\"{constraint}\"")).unwrap();
            assert_eq!(back, constraint);
        }
        assert_eq!(
            ["global", "memcg", "cpuset", "mempolicy"],
            Constraint::ALL.map(Constraint::name)
        );
    }

    /// `serde_json::to_value` for the test's table of different types.
    mod erased {
        pub(super) trait Ser {
            fn json(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }

    #[test]
    fn requests_are_one_json_line() {
        assert_eq!(
            serde_json::to_string(&Request::Count).unwrap(),
            r#"{"request":"count"}"#
        );
        let parsed: Request = serde_json::from_str(r#"{"request":"count"}"#).unwrap();
        assert_eq!(parsed, Request::Count);
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
        let list: Request = serde_json::from_str(r#"{"request":"list","n":5}"#).unwrap();
        assert_eq!(list, Request::List { n: 5 });
    }

    /// A listener in the test stands for a daemon that misbehaves: each way it hangs up is
    /// [`ClientError::Closed`] (an EPIPE here is the socket's, never a closed stdout), and what
    /// it says instead of an answer is garbage or a refusal.
    #[test]
    fn a_daemon_that_hangs_up_or_talks_nonsense_is_an_error() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("oomcount-proto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let (hung_up, wait_hung_up) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let next = || listener.accept().unwrap().0;
            // Accepts and closes before the request comes: its write fails with EPIPE.
            drop(next());
            hung_up.send(()).unwrap();
            // Reads the request, closes without an answer: EOF.
            let mut stream = BufReader::new(next());
            stream.read_until(b'\n', &mut Vec::new()).unwrap();
            drop(stream);
            // Garbage, then an error response.
            for answer in [
                &b"HTTP/1.1 400 Bad Request\r\n"[..],
                b"{\"error\":\"no\"}\n",
            ] {
                let mut stream = BufReader::new(next());
                stream.read_until(b'\n', &mut Vec::new()).unwrap();
                stream.get_mut().write_all(answer).unwrap();
            }
        });
        let mut client = Client::connect(&path).unwrap();
        wait_hung_up.recv().unwrap();
        let err = client.send(&Request::Count).unwrap_err();
        assert!(matches!(err, ClientError::Closed(_)), "EPIPE: {err:?}");
        assert!(
            err.to_string()
                .contains("closed the connection without an answer")
        );
        let err = call(&path, &Request::Count).unwrap_err();
        assert!(matches!(err, ClientError::Closed(_)), "EOF: {err:?}");
        let err = call(&path, &Request::Verdict).unwrap_err();
        assert!(matches!(err, ClientError::Garbage { .. }), "{err:?}");
        let err = call(&path, &Request::Verdict).unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(_, m) if m == "no"),
            "{err:?}"
        );
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_line_is_answered_with_what_a_request_looks_like() {
        assert_eq!(
            parse_request(b"{\"request\":\"verdict\"}\n"),
            Ok(Request::Verdict)
        );
        let message = parse_request(b"{\"request\":\"reboot\"}\n").unwrap_err();
        assert!(
            message.starts_with("bad request (unknown variant"),
            "{message}"
        );
        assert!(
            message.ends_with(r#"such as {"request":"count"}"#),
            "{message}"
        );
    }

    #[test]
    fn a_refusal_written_before_the_request_could_be_sent_is_read() {
        let (daemon, client) = UnixStream::pair().unwrap();
        // The daemon side: why, then gone, without reading (the client's send fails: EPIPE).
        daemon.shutdown(std::net::Shutdown::Read).unwrap();
        (&daemon)
            .write_all(b"{\"error\":\"uid 65534 already holds 8 connections\"}\n")
            .unwrap();
        drop(daemon);
        let mut client = Client {
            path: PathBuf::from("test.sock"),
            reader: BufReader::new(client),
        };
        match client.call(&Request::Verdict) {
            Err(ClientError::Refused(_, why)) => {
                assert_eq!(why, "uid 65534 already holds 8 connections")
            }
            other => panic!("{other:?}"),
        }
        // Without anything written, the failed send is the error: a hang-up.
        let (daemon, client) = UnixStream::pair().unwrap();
        drop(daemon);
        let mut client = Client {
            path: PathBuf::from("test.sock"),
            reader: BufReader::new(client),
        };
        let err = client.call(&Request::Verdict).unwrap_err();
        assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    }

    #[test]
    fn responses_round_trip() {
        let reply = Response::Count(CountReply::sample());
        let text = serde_json::to_string(&reply).unwrap();
        assert!(text.starts_with(r#"{"count":{"kills":3,"#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), reply);
    }
}
