//! `GET /metrics` over HTTP/1.1, on the daemon's one thread.
//!
//! Hand-written rather than with hyper: Prometheus asks for one path with one method, and the
//! answer is one buffer; a handler of this size cost the daemon ~50 kB of resident set where
//! hyper cost ~220 kB (FACTS.md), against a goal of 3 MiB in all.
//!
//! The thread that serves the port also sends the watchdog's keepalives, so nothing a client
//! does may hold it, and the port may be open to more than root:
//!
//! - a request whose head has arrived when its connection is accepted (a scraper's: it sends it
//!   with the connection) is answered then and there, without a task, so a flood of connections
//!   cannot keep a scraper out;
//! - at most [`Limits::clients`] connections wait for the rest of their head at once; past them,
//!   the oldest one is closed;
//! - connections are accepted `ACCEPTS_PER_TURN` (32) at a time, then the thread goes to the other
//!   tasks (the keepalive first of all) before the next ones;
//! - a request's head (request line and headers) is at most [`Limits::request`] bytes (431
//!   past it) and must arrive whole within [`Limits::read`] of the connection, however slowly a
//!   client sends it byte by byte; the answer must be taken within [`Limits::write`];
//! - one connection, one request, one answer (`Connection: close`): nothing held between
//!   scrapes; the answer is written in one write (two writes cost 0.65 ms per scrape);
//! - a body, a second request or anything after the head is never read.
//!
//! `GET` and `HEAD` of `/metrics` answer 200 with the exposition, text format 0.0.4; other paths
//! 404; other methods on `/metrics` 405 with `Allow`; a head that is not HTTP/1.x 400.
use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::unix::AsyncFd,
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::{AbortHandle, JoinSet},
};

/// The content type of text format 0.0.4, which Prometheus 2 accepts as is.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The one path served.
pub const PATH: &str = "/metrics";

/// How much the port gives any client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections held at once.
    pub clients: usize,
    /// The longest request head, in bytes.
    pub request: usize,
    /// From the connection to the end of the request head.
    pub read: Duration,
    /// For the answer to be taken.
    pub write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            clients: 16,
            // Prometheus's head is ~300 bytes; a browser's or curl's well under 2 KiB.
            request: 4096,
            read: Duration::from_secs(5),
            write: Duration::from_secs(5),
        }
    }
}

/// Why the address of `listen` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "{0}: the port is in use (by another program, or by an oomcount daemon already running): choose another port, or stop it"
    )]
    InUse(SocketAddr),
    #[error("{0}: no interface of this machine has this address")]
    NotLocal(SocketAddr),
    #[error("{0}: {1}")]
    Io(SocketAddr, #[source] io::Error),
}

/// Binds the listening socket, before the daemon attaches: a port in use is said then.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|err| match err.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse(addr),
        io::ErrorKind::AddrNotAvailable => ListenError::NotLocal(addr),
        _ => ListenError::Io(addr, err),
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|err| ListenError::Io(addr, err))?;
    Ok(listener)
}

/// What renders the exposition for each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Connections accepted in one turn before the thread is given to other tasks.
const ACCEPTS_PER_TURN: usize = 32;

/// Serves `listener` (from [`bind`]) until the task is dropped. Call from the daemon's runtime
/// (`tokio::spawn`).
///
/// A request whose head has arrived by the time its connection is accepted (a scraper's, which
/// sends it with the connection) is answered then and there, without a task; only the others
/// wait in a task, and those are the ones a flood of connections pushes out.
pub async fn serve(listener: std::net::TcpListener, render: Render, limits: Limits) {
    // SAFETY: the AsyncFd owns the listener, hence its descriptor, until it is dropped.
    let listener = match unsafe { AsyncFd::register(listener) } {
        Ok(listener) => listener,
        Err(err) => {
            let err = err.into_parts().1;
            log::error!("metrics port: cannot watch the listening socket ({err}): not served");
            return;
        }
    };
    let mut clients: JoinSet<()> = JoinSet::new();
    // Oldest first.
    let mut held: VecDeque<AbortHandle> = VecDeque::with_capacity(limits.clients);
    let mut failing = AcceptErrors::default();
    loop {
        tokio::select! {
            ready = listener.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(err) => {
                        failing.failed(err).await;
                        continue;
                    }
                };
                for _ in 0..ACCEPTS_PER_TURN {
                    match guard.try_io(|listener| listener.get_ref().accept()) {
                        Ok(Ok((stream, _))) => {
                            let Some(waiting) = answer_at_once(stream, &render, limits) else {
                                continue;
                            };
                            if held.len() >= limits.clients.max(1)
                                && let Some(oldest) = held.pop_front()
                            {
                                oldest.abort();
                            }
                            let render = render.clone();
                            held.push_back(clients.spawn(async move {
                                if let Err(err) = waiting.finish(&render, limits).await {
                                    log::debug!("metrics client: {err}");
                                }
                            }));
                        }
                        Ok(Err(err)) => {
                            failing.failed(err).await;
                            break;
                        }
                        // Nothing more to accept: readiness cleared.
                        Err(_would_block) => break,
                    }
                }
                // A flood of connections must not hold the thread: the keepalives go first.
                tokio::task::yield_now().await;
            }
            Some(done) = clients.join_next_with_id(), if !clients.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => err.id(),
                };
                held.retain(|handle| handle.id() != id);
            }
        }
    }
}

/// Accept errors (out of file descriptors, most likely): logged at most once a minute, and
/// waited out a little, since the next accept would fail the same way at once.
#[derive(Default)]
struct AcceptErrors {
    logged: Option<Instant>,
    since: u64,
}

impl AcceptErrors {
    async fn failed(&mut self, err: io::Error) {
        self.since += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            log::warn!(
                "metrics port: accept failed ({err}), {} times since the last line; trying again in 100 ms",
                self.since
            );
            self.logged = Some(Instant::now());
            self.since = 0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics { head: bool },
    NotFound,
    Method,
    Bad,
}

/// Reads the head of the request line and what it asks for.
fn parse(head: &[u8]) -> Asked {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Bad;
    };
    if !version.starts_with(b"HTTP/1.") || method.is_empty() || target.is_empty() {
        return Asked::Bad;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path != PATH.as_bytes() {
        return Asked::NotFound;
    }
    match method {
        b"GET" => Asked::Metrics { head: false },
        b"HEAD" => Asked::Metrics { head: true },
        _ => Asked::Method,
    }
}

/// The head parser on any bytes, for the fuzz target: it ends, and what it finds is in the bytes.
#[doc(hidden)]
pub fn fuzz_head(bytes: &[u8]) {
    if let Some(end) = head_end(bytes) {
        assert!(end <= bytes.len());
        let asked = parse(&bytes[..end]);
        if matches!(asked, Asked::Metrics { .. }) {
            assert!(bytes.windows(PATH.len()).any(|w| w == PATH.as_bytes()));
        }
    }
}

/// Where the head ends (after its blank line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// One answer, head and body in one buffer.
fn answer(status: &str, extra: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn plain(status: &str, extra: &str, body: &str) -> Vec<u8> {
    answer(status, extra, "text/plain; charset=utf-8", body, false)
}

/// How far reading a head got.
enum Head {
    /// It ends here (its length).
    Whole(usize),
    TooLarge,
    /// More to come.
    More,
}

/// Reads what has arrived, without waiting (the socket is non-blocking).
fn read_ready(
    mut stream: &std::net::TcpStream,
    buf: &mut [u8],
    len: &mut usize,
) -> io::Result<Head> {
    use std::io::Read as _;
    loop {
        if *len == buf.len() {
            return Ok(Head::TooLarge);
        }
        match stream.read(&mut buf[*len..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => {
                // The blank line may straddle two reads.
                let from = len.saturating_sub(3);
                *len += n;
                if let Some(end) = head_end(&buf[from..*len]) {
                    return Ok(Head::Whole(from + end));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Head::More),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// The answer to a head read whole, or too large.
fn reply(head: &Head, buf: &[u8], render: &Render, limits: Limits) -> Vec<u8> {
    let Head::Whole(end) = *head else {
        return plain(
            "431 Request Header Fields Too Large",
            "",
            &format!("the request head is longer than {} bytes\n", limits.request),
        );
    };
    match parse(&buf[..end]) {
        Asked::Metrics { head } => answer("200 OK", "", CONTENT_TYPE, &render(), head),
        Asked::NotFound => plain("404 Not Found", "", "only /metrics is served here\n"),
        Asked::Method => plain(
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "/metrics answers GET and HEAD only\n",
        ),
        Asked::Bad => plain("400 Bad Request", "", "not an HTTP/1.x request\n"),
    }
}

/// A connection that needs a task: its head has not arrived whole, or its answer did not fit in
/// the socket's buffer at once.
struct Waiting {
    stream: std::net::TcpStream,
    /// The head so far (`len` bytes of it), or the answer's rest.
    buf: Vec<u8>,
    len: usize,
    answering: bool,
    accepted: tokio::time::Instant,
}

/// Answers a new connection if its head is there, writing as much as the socket takes; what is
/// left to do comes back as a [`Waiting`].
fn answer_at_once(stream: std::net::TcpStream, render: &Render, limits: Limits) -> Option<Waiting> {
    let accepted = tokio::time::Instant::now();
    stream.set_nonblocking(true).ok()?;
    let mut buf = vec![0u8; limits.request];
    let mut len = 0;
    match read_ready(&stream, &mut buf, &mut len) {
        Ok(Head::More) => Some(Waiting {
            stream,
            buf,
            len,
            answering: false,
            accepted,
        }),
        Ok(head) => {
            let reply = reply(&head, &buf, render, limits);
            write_ready(stream, reply, accepted)
        }
        Err(_) => None,
    }
}

/// Writes `reply` as far as the socket takes it now; the rest comes back as a [`Waiting`].
fn write_ready(
    mut stream: std::net::TcpStream,
    reply: Vec<u8>,
    accepted: tokio::time::Instant,
) -> Option<Waiting> {
    use std::io::Write as _;
    let written = loop {
        match stream.write(&reply) {
            Ok(n) => break n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break 0,
            Err(_) => return None,
        }
    };
    if written == reply.len() {
        // Closed on drop, after the answer: the kernel sends what it holds, then the FIN.
        return None;
    }
    Some(Waiting {
        stream,
        len: 0,
        buf: reply[written..].to_vec(),
        answering: true,
        accepted,
    })
}

impl Waiting {
    /// Reads the rest of the head by the read deadline and answers it by the write deadline.
    async fn finish(self, render: &Render, limits: Limits) -> io::Result<()> {
        let Waiting {
            stream,
            mut buf,
            mut len,
            answering,
            accepted,
        } = self;
        let mut stream = TcpStream::from_std(stream)?;
        let reply = if answering {
            buf
        } else {
            let read = async {
                loop {
                    if len == buf.len() {
                        return Ok(Head::TooLarge);
                    }
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    // The blank line may straddle two reads.
                    let from = len.saturating_sub(3);
                    len += n;
                    if let Some(end) = head_end(&buf[from..len]) {
                        return Ok(Head::Whole(from + end));
                    }
                }
            };
            match tokio::time::timeout_at(accepted + limits.read, read).await {
                Err(_) => {
                    let _ = stream.try_write(&plain(
                        "408 Request Timeout",
                        "",
                        "the request did not arrive in time\n",
                    ));
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not read in time",
                    ));
                }
                Ok(Err(err)) => return Err(err),
                Ok(Ok(head)) => reply(&head, &buf, render, limits),
            }
        };
        match tokio::time::timeout(limits.write, stream.write_all(&reply)).await {
            Ok(written) => written?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the answer was not taken in time",
                ));
            }
        }
        let _ = tokio::time::timeout(limits.write, stream.shutdown()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    #[test]
    fn what_a_head_asks() {
        let cases: &[(&[u8], Asked)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Asked::Metrics { head: false },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\n\n",
                Asked::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Asked::Metrics { head: true },
            ),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Asked::Method),
            (b"GET / HTTP/1.1\r\n\r\n", Asked::NotFound),
            (b"POST /other HTTP/1.1\r\n\r\n", Asked::NotFound),
            (b"GET /metrics\r\n\r\n", Asked::Bad),
            (b"GET /metrics HTTP/2\r\n\r\n", Asked::Bad),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Asked::Bad),
            (b"\r\n\r\n", Asked::Bad),
        ];
        for (head, asked) in cases {
            assert_eq!(&parse(head), asked, "{}", String::from_utf8_lossy(head));
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    /// A server on a loopback port of its own, in a thread with its own current-thread runtime
    /// (as the daemon's), and a ticker on the same runtime whose longest gap tells whether
    /// anything held the thread.
    struct Server {
        addr: SocketAddr,
        gaps: Arc<std::sync::Mutex<Duration>>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    const TICK: Duration = Duration::from_millis(20);

    impl Server {
        fn start(limits: Limits) -> Self {
            Self::serving(limits, Arc::new(|| "a_total 1\n".to_owned()))
        }

        fn serving(limits: Limits, render: Render) -> Self {
            let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            let gaps = Arc::new(std::sync::Mutex::new(Duration::ZERO));
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let longest = gaps.clone();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let server = tokio::spawn(serve(listener, render, limits));
                    let mut ticker = tokio::time::interval(TICK);
                    ticker.tick().await;
                    let mut last = Instant::now();
                    let mut stopped = stopped;
                    loop {
                        tokio::select! {
                            _ = ticker.tick() => {
                                let gap = last.elapsed();
                                last = Instant::now();
                                let mut longest = longest.lock().unwrap();
                                *longest = (*longest).max(gap);
                            }
                            _ = &mut stopped => break,
                        }
                    }
                    server.abort();
                });
            });
            Self {
                addr,
                gaps,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        fn ask(&self, request: &[u8]) -> String {
            let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(request).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            String::from_utf8(answer).unwrap()
        }

        fn longest_gap(&self) -> Duration {
            *self.gaps.lock().unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.thread.take().unwrap().join().unwrap();
        }
    }

    #[test]
    fn answers_metrics_and_refuses_the_rest() {
        let server = Server::start(Limits::default());
        let ok = server.ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.contains("\r\nContent-Length: 10\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na_total 1\n"), "{ok}");
        let head = server.ask(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let other = server.ask(b"GET /secrets HTTP/1.1\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        let post = server.ask(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
        let bad = server.ask(b"hello\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    }

    /// An answer larger than the socket takes at once is finished by a task.
    #[test]
    fn a_large_answer_arrives_whole() {
        let body = "x".repeat(8 << 20) + "\n";
        let expected = body.clone();
        let server = Server::serving(Limits::default(), Arc::new(move || body.clone()));
        let answer = server.ask(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with(&expected), "{} bytes", answer.len());
    }

    /// A head in pieces, within the deadline, is answered.
    #[test]
    fn a_head_in_pieces_is_answered() {
        let server = Server::start(Limits::default());
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        for piece in [&b"GET /met"[..], b"rics HTTP/1.1\r", b"\n\r", b"\n"] {
            stream.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("\r\n\r\na_total 1\n"), "{answer}");
    }

    #[test]
    fn a_huge_head_is_cut_short() {
        let server = Server::start(Limits::default());
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        request.extend(std::iter::repeat_n(b'x', 3000));
        request.extend_from_slice(b": y\r\n");
        request.extend(std::iter::repeat_n(b'z', 3000));
        request.extend_from_slice(b": y\r\n\r\n");
        let answer = server.ask(&request);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[test]
    fn a_slow_sender_is_closed_at_the_deadline_and_holds_nobody() {
        let limits = Limits {
            read: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = Server::start(limits);
        let started = Instant::now();
        let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // A byte at a time, never a whole head; a scraper is answered meanwhile.
        let mut answer = Vec::new();
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " {
            if slow.write_all(&[*byte]).is_err() {
                break;
            }
            let ok = server.ask(b"GET /metrics HTTP/1.1\r\n\r\n");
            assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
            if started.elapsed() > limits.read * 2 {
                break;
            }
        }
        let _ = slow.read_to_end(&mut answer);
        let held = started.elapsed();
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(held < Duration::from_secs(5), "closed after {held:?}");
        assert!(
            server.longest_gap() < TICK + Duration::from_millis(100),
            "{:?}",
            server.longest_gap()
        );
    }

    #[test]
    fn a_flood_of_idle_connections_keeps_no_scraper_out() {
        let limits = Limits {
            clients: 4,
            ..Limits::default()
        };
        let server = Server::start(limits);
        let mut idle = Vec::new();
        for round in 0..50 {
            for _ in 0..20 {
                if let Ok(stream) = std::net::TcpStream::connect(server.addr) {
                    idle.push(stream);
                }
            }
            let ok = server.ask(b"GET /metrics HTTP/1.1\r\n\r\n");
            assert!(ok.starts_with("HTTP/1.1 200 "), "round {round}: {ok}");
        }
        // The idle connections past the limit were closed by the daemon: all but the last few
        // read an end of file at once.
        let mut closed = 0;
        for stream in &mut idle {
            stream
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            let mut byte = [0u8; 1];
            if matches!(stream.read(&mut byte), Ok(0))
                || matches!(stream.read(&mut byte), Err(ref e) if e.kind() == io::ErrorKind::ConnectionReset)
            {
                closed += 1;
            }
        }
        assert!(
            closed >= idle.len() - limits.clients,
            "{closed} of {} closed",
            idle.len()
        );
        assert!(
            server.longest_gap() < TICK + Duration::from_millis(100),
            "{:?}",
            server.longest_gap()
        );
    }
}
