//! A daemon that misbehaves, played by the test: a unix socket the test serves itself, which
//! accepts clients and then does one wrong thing each time.
//!
//! The real daemon does none of these on purpose. They stand for what a client meets when the
//! daemon is overloaded (its client slots full: accepted and closed at once), wedged (it never
//! answers), or not an oomcount daemon of this version (it answers garbage, an error, or another
//! kind of answer). `count`, `status` and `check` must turn each into a non-zero exit and one
//! line, never a quiet 0; [`Behaviour::Answer`] is the control, answering as the daemon does.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::unique_name;

/// What the stand-in does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepts and closes at once, reading nothing (the daemon over its client limit): the
    /// client's request meets EPIPE, or its read ECONNRESET or EOF, as timing has it.
    HangUp,
    /// Reads the request, then closes without an answer.
    HangUpAfterRequest,
    /// Answers each request with a line that is not JSON.
    Garbage,
    /// Answers each request with an error response.
    Error,
    /// Answers each request with a list of events, whatever it asked.
    WrongAnswer,
    /// Answers `count` as the daemon does, anything else with garbage.
    CountOnly,
    /// Reads the request and never answers (the connection stays open).
    Silent,
    /// Answers `count` and `verdict` as the daemon does.
    Answer,
}

/// A `count` answer as the daemon gives it.
pub const COUNT: &str = r#"{"count":{"kills":0,"marked":0,"kills_memcg":0,"kills_global":0,"events_dropped":0,"kill_events_dropped":0,"events_received":0,"kill_events_received":0,"attached_at":"2026-11-26T05:00:00Z","kernel_oom_kill":0,"source":"daemon"}}"#;
/// A `verdict` answer as the daemon gives it (healthy, nothing pinged).
pub const VERDICT: &str = r#"{"verdict":{"health":"healthy","reason":"","watchdog":{"device":null,"dry_run":false,"systemd":false,"pinging":false,"keepalives":0}}}"#;

/// How long a connection's thread waits for a request before giving up on it.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// The stand-in, serving until dropped.
pub struct FakeDaemon {
    dir: PathBuf,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
    /// Connections kept open without an answer ([`Behaviour::Silent`]).
    held: Arc<Mutex<Vec<UnixStream>>>,
}

impl FakeDaemon {
    pub fn start(behaviour: Behaviour) -> FakeDaemon {
        let dir = std::env::temp_dir().join(unique_name("oomcount-fake-daemon"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let socket = dir.join("oomcount.sock");
        let listener = UnixListener::bind(&socket)
            .unwrap_or_else(|err| panic!("bind {}: {err}", socket.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let accepting = {
            let (stop, held) = (stop.clone(), held.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match stream {
                        // At once, before anything else can happen on it.
                        Ok(stream) if behaviour == Behaviour::HangUp => drop(stream),
                        Ok(stream) => {
                            let held = held.clone();
                            std::thread::spawn(move || serve(stream, behaviour, &held));
                        }
                        Err(err) => panic!("accept: {err}"),
                    }
                }
            })
        };
        FakeDaemon {
            dir,
            socket,
            stop,
            accepting: Some(accepting),
            held,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// One connection: each request line gets what `behaviour` says.
fn serve(stream: UnixStream, behaviour: Behaviour, held: &Mutex<Vec<UnixStream>>) {
    let _ = stream.set_read_timeout(Some(READ_LIMIT));
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let request = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["request"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let answer = match (behaviour, request.as_str()) {
            (Behaviour::HangUp | Behaviour::HangUpAfterRequest, _) => return,
            (Behaviour::Silent, _) => {
                held.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(reader.into_inner());
                return;
            }
            (Behaviour::Answer | Behaviour::CountOnly, "count") => COUNT,
            (Behaviour::Answer, "verdict") => VERDICT,
            (Behaviour::Garbage | Behaviour::CountOnly, _) => "HTTP/1.1 400 Bad Request\r",
            (Behaviour::Error | Behaviour::Answer, _) => {
                r#"{"error":"the stand-in refuses (a daemon that misbehaves)"}"#
            }
            (Behaviour::WrongAnswer, _) => r#"{"events":[]}"#,
        };
        let out = reader.get_mut();
        if out.write_all(format!("{answer}\n").as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.accepting.take() {
            let _ = thread.join();
        }
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
