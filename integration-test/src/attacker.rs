//! What a hostile user does to the daemon's socket, run as uid 65534 by `oomcount-hog nobody`
//! (the tests' side is [`crate::hostile`]). Plain system calls, no tool of the machine's: the VM
//! guests have no python, setpriv or coreutils.
//!
//! - [`hold`]: keep N connections of a [`Kind`] open for a while, reconnecting each one the
//!   daemon closes (at once, for those over the limit: so every kind is also a flood of
//!   connections). Prints `ready N` once all N were tried, and its figures at the end.
//! - [`slots`]: fill this uid's slots with watchers and print the limit and the refusal; close
//!   them; print how long until as many fit again.
//! - [`stall`]: pipeline requests on one connection and never read; print `stalled` once neither
//!   side's buffer takes more, then how long until the daemon let the connection go.
use std::{
    io::{self, BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::Shutdown,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::Path,
    str::FromStr,
    time::{Duration, Instant},
};

const WATCH: &[u8] = b"{\"request\":\"watch\"}\n";
const VERDICT: &[u8] = b"{\"request\":\"verdict\"}\n";
const COUNT: &[u8] = b"{\"request\":\"count\"}\n";

/// How the connections of [`hold`] behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connect and send nothing.
    Idle,
    /// Ask to watch, never read.
    WatchNeverRead,
    /// Ask to watch, shut down the sending half, never read.
    HalfClosed,
    /// Pipeline verdict and count requests as fast as the daemon takes them, and read (and
    /// discard) the answers.
    Pipelining,
    /// Pipeline requests, never read.
    PipeliningNeverRead,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Idle,
        Kind::WatchNeverRead,
        Kind::HalfClosed,
        Kind::Pipelining,
        Kind::PipeliningNeverRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Idle => "idle",
            Kind::WatchNeverRead => "watch-never-read",
            Kind::HalfClosed => "half-closed",
            Kind::Pipelining => "pipelining",
            Kind::PipeliningNeverRead => "pipelining-never-read",
        }
    }

    fn reads(self) -> bool {
        self == Kind::Pipelining
    }

    fn pipelines(self) -> bool {
        matches!(self, Kind::Pipelining | Kind::PipeliningNeverRead)
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(name: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown kind {name:?}: one of {}", names.join(", "))
            })
    }
}

/// What [`hold`] did, printed at its end.
#[derive(Debug, Default)]
pub struct Figures {
    pub connects: u64,
    pub closed_by_daemon: u64,
    pub sent: u64,
    pub read: u64,
}

/// Raises the soft limit of open files to the hard one: 1000 sockets and stdio fit under the
/// usual 1024, but not by much.
fn raise_nofile() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes what the socket takes now; an error (the daemon closed it) is nothing sent.
fn send_some(stream: &UnixStream, bytes: &[u8]) -> usize {
    (&*stream).write(bytes).unwrap_or(0)
}

fn open(socket: &Path, kind: Kind, figures: &mut Figures) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    figures.connects += 1;
    stream.set_nonblocking(true)?;
    if matches!(kind, Kind::WatchNeverRead | Kind::HalfClosed) {
        send_some(&stream, WATCH);
    }
    if kind == Kind::HalfClosed {
        // Refused already, the shutdown may fail: the hang-up is seen below all the same.
        let _ = stream.shutdown(Shutdown::Write);
    }
    Ok(stream)
}

/// Polls `fds` for up to `timeout`; EINTR is no events.
fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll on a slice of pollfd we own, its length given.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// Holds `n` connections of `kind` to `socket` for `hold` after all were tried, reconnecting each
/// one the daemon closes.
pub fn hold(socket: &Path, n: usize, kind: Kind, hold: Duration) -> io::Result<Figures> {
    raise_nofile()?;
    let mut figures = Figures::default();
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(open(socket, kind, &mut figures)?);
    }
    println!("ready {}", streams.len());
    io::stdout().flush()?;
    let flood = [VERDICT.repeat(40), COUNT.repeat(10)].concat();
    let mut buffer = vec![0; 64 << 10];
    let mut events = libc::POLLRDHUP;
    if kind.reads() {
        events |= libc::POLLIN;
    }
    if kind.pipelines() {
        events |= libc::POLLOUT;
    }
    let until = Instant::now() + hold;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(n);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(figures);
        }
        fds.clear();
        fds.extend(streams.iter().map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events,
            revents: 0,
        }));
        poll(&mut fds, left)?;
        for (pfd, stream) in fds.iter().zip(streams.iter_mut()) {
            let got = pfd.revents;
            let mut gone = got & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP) != 0;
            if kind.reads() && got & libc::POLLIN != 0 {
                match (&*stream).read(&mut buffer) {
                    Ok(0) => gone = true,
                    Ok(n) => figures.read += n as u64,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => gone = true,
                }
            }
            if kind.pipelines() && got & libc::POLLOUT != 0 && !gone {
                figures.sent += send_some(stream, &flood) as u64;
            }
            if gone {
                figures.closed_by_daemon += 1;
                *stream = open(socket, kind, &mut figures)?;
            }
        }
    }
}

/// A watcher: connected, asked, and the first line it got (or what went wrong).
fn watcher(socket: &Path) -> io::Result<(UnixStream, String)> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // Closed at once (refused), the request fails: what the daemon wrote is there to read.
    let _ = (&stream).write_all(WATCH);
    let mut line = String::new();
    if let Err(err) = BufReader::new(&stream).read_line(&mut line) {
        line = format!("({err} after {line:?})");
    }
    Ok((stream, line.trim_end().to_owned()))
}

/// Fills this uid's slots with watchers, then closes them and times how long until as many fit
/// again; prints `limit N REFUSAL` and `again N SECONDS`.
pub fn slots(socket: &Path) -> io::Result<()> {
    let mut held = Vec::new();
    let mut refusal = String::from("(none within 100)");
    for _ in 0..100 {
        let (stream, line) = watcher(socket)?;
        if line.starts_with("{\"watching\"") {
            held.push(stream);
        } else {
            refusal = line;
            break;
        }
    }
    let n = held.len();
    println!("limit {n} {refusal}");
    io::stdout().flush()?;
    drop(held);
    let closed = Instant::now();
    let mut again = Vec::new();
    while again.len() < n && closed.elapsed() < Duration::from_secs(5) {
        let (stream, line) = watcher(socket)?;
        if line.starts_with("{\"watching\"") {
            again.push(stream);
        }
    }
    println!(
        "again {} {:.3}",
        again.len(),
        closed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Pipelines requests on one connection and never reads: prints `stalled` once the socket has
/// taken nothing for 0.5 s (neither the daemon nor the buffers take more), then `closed true
/// SECONDS` when the daemon lets the connection go, `closed false 60.000` if it has not in 60 s.
pub fn stall(socket: &Path) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    stream.set_nonblocking(true)?;
    let requests = VERDICT.repeat(100);
    let wait = |events, timeout| -> io::Result<libc::c_short> {
        let mut fds = [libc::pollfd {
            fd: stream.as_raw_fd(),
            events,
            revents: 0,
        }];
        poll(&mut fds, timeout)?;
        Ok(fds[0].revents)
    };
    let hung_up = libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP;
    loop {
        let got = wait(libc::POLLOUT | libc::POLLRDHUP, Duration::from_millis(500))?;
        if got == 0 {
            break;
        }
        if got & hung_up != 0 {
            return Err(io::Error::other(
                "the daemon closed the connection before its buffers filled",
            ));
        }
        send_some(&stream, &requests);
    }
    println!("stalled");
    io::stdout().flush()?;
    let began = Instant::now();
    let closed = wait(libc::POLLRDHUP, Duration::from_secs(60))? != 0;
    println!("closed {closed} {:.3}", began.elapsed().as_secs_f64());
    Ok(())
}
