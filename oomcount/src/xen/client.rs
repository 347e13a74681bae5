//! A blocking xenstore client with a deadline on every request.
//!
//! It talks to xenstored's unix socket in dom0 (`/var/run/xenstored/socket`, or
//! `$XENSTORED_PATH`) and through the kernel's `/dev/xen/xenbus` in a guest (and in a dom0
//! whose xenstored runs in a stub domain). One request is in flight at a time; its reply is the
//! message with its request id, and watch events that arrive before it are queued (bounded) for
//! [`Client::wait_event`]. The descriptor is non-blocking and every wait is a `poll(2)` with the
//! request's deadline, so a stalled xenstored costs a [`XsError::Timeout`], never a hang.
//!
//! The client blocks its caller: the daemon runs it on a thread of its own
//! ([`super::guest::Publisher`]), never on the runtime thread that sends the keepalives.
use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::{fs::FileTypeExt as _, fs::OpenOptionsExt as _, net::UnixStream},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::wire::{
    self, Decoder, Errno, HEADER_LEN, Message, Op, PAYLOAD_MAX, WatchEvent, WireError,
};

/// xenstored's socket in dom0 (`/run` on current systems; `/var/run` links there).
pub const SOCKET: &str = "/var/run/xenstored/socket";
/// The kernel's xenstore device, in guests and in dom0.
pub const DEVICE: &str = "/dev/xen/xenbus";
/// How long a request may wait for its reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Watch events kept while nobody waits for them; older ones are dropped (and counted).
const EVENTS_MAX: usize = 1024;
/// How many times a transaction is run when xenstored answers `EAGAIN` (a conflict).
pub const TRANSACTION_TRIES: u32 = 16;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    #[error("cannot open xenstore at {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("xenstore refused {op:?} {path}: {errno}")]
    Store { op: Op, path: String, errno: Errno },
    #[error("xenstore did not answer within {0:?}")]
    Timeout(Duration),
    #[error("xenstore closed the connection")]
    Closed,
    #[error("xenstore I/O: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("xenstore answered type {got} to {op:?}")]
    Protocol { op: Op, got: u32 },
}

impl XsError {
    /// The store's errno, where the store refused.
    pub fn errno(&self) -> Option<&Errno> {
        match self {
            XsError::Store { errno, .. } => Some(errno),
            _ => None,
        }
    }

    /// A short name for the kind of failure (one log line per kind, not per failure).
    pub fn kind(&self) -> String {
        match self {
            XsError::Open { .. } => "open".into(),
            XsError::Store { op, errno, .. } => format!("{op:?} {errno}"),
            XsError::Timeout(_) => "timeout".into(),
            XsError::Closed => "closed".into(),
            XsError::Io(e) => format!("io {:?}", e.kind()),
            XsError::Wire(_) => "wire".into(),
            XsError::Protocol { .. } => "protocol".into(),
        }
    }
}

/// A transaction id; [`Tx::NONE`] outside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    pub const NONE: Tx = Tx(0);
}

enum Conn {
    Socket(UnixStream),
    Device(File),
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Socket(s) => s.as_fd(),
            Conn::Device(f) => f.as_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Socket(s) => s.read(buf),
            Conn::Device(f) => f.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Socket(s) => s.write(buf),
            Conn::Device(f) => f.write(buf),
        }
    }
}

/// A connection to xenstored.
pub struct Client {
    conn: Conn,
    path: PathBuf,
    decoder: Decoder,
    next_id: u32,
    events: VecDeque<WatchEvent>,
    events_lost: u64,
    conflicts: u64,
    timeout: Duration,
}

impl Client {
    /// Opens `path`: a unix socket (xenstored's) or a character device (`/dev/xen/xenbus`).
    pub fn open(path: &Path) -> Result<Client, XsError> {
        let err = |source| XsError::Open {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        let conn = if meta.file_type().is_socket() {
            let s = UnixStream::connect(path).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            Conn::Socket(s)
        } else {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
                .map_err(err)?;
            Conn::Device(f)
        };
        Ok(Client {
            conn,
            path: path.to_owned(),
            decoder: Decoder::new(),
            next_id: 1,
            events: VecDeque::new(),
            events_lost: 0,
            conflicts: 0,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// dom0: `$XENSTORED_PATH`, else xenstored's socket, else the device.
    pub fn open_dom0() -> Result<Client, XsError> {
        if let Some(p) = std::env::var_os("XENSTORED_PATH") {
            return Client::open(Path::new(&p));
        }
        Client::open(Path::new(SOCKET))
            .or_else(|socket_err| Client::open(Path::new(DEVICE)).map_err(|_| socket_err))
    }

    /// A guest: the device (or `$XENSTORED_PATH`, for tests against a store on the host).
    pub fn open_guest() -> Result<Client, XsError> {
        match std::env::var_os("XENSTORED_PATH") {
            Some(p) => Client::open(Path::new(&p)),
            None => Client::open(Path::new(DEVICE)),
        }
    }

    /// Whether this is xenstored's unix socket (reachable only in the domain that runs it, dom0):
    /// relative paths are then dom0's, `/local/domain/0`.
    pub fn is_socket(&self) -> bool {
        matches!(self.conn, Conn::Socket(_))
    }

    /// What was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets how long each request may wait for its reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Transactions run again because of a conflict (`EAGAIN`), since the client was opened.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    /// Watch events received and not yet taken by [`Client::wait_event`].
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Watch events dropped because more than 1024 waited unread.
    pub fn events_lost(&self) -> u64 {
        self.events_lost
    }

    fn wait(&self, flags: PollFlags, deadline: Instant) -> Result<(), XsError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(XsError::Timeout(self.timeout));
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.conn.fd(), flags)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(XsError::Io(e.into())),
            }
        }
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), XsError> {
        let mut done = 0;
        while done < bytes.len() {
            match self.conn.write(&bytes[done..]) {
                Ok(0) => return Err(XsError::Closed),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLOUT, deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn receive(&mut self, deadline: Instant) -> Result<Message, XsError> {
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_MAX];
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(m);
            }
            match self.conn.read(&mut buf) {
                Ok(0) => return Err(XsError::Closed),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLIN, deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn queue_event(&mut self, m: &Message) {
        if let Some(ev) = WatchEvent::parse(&m.payload) {
            if self.events.len() >= EVENTS_MAX {
                self.events.pop_front();
                self.events_lost += 1;
            }
            self.events.push_back(ev);
        }
    }

    /// Sends one request and waits for its reply; watch events that come first are queued.
    /// `path` only names the request in an error.
    pub fn request(
        &mut self,
        op: Op,
        tx: Tx,
        payload: &[u8],
        path: &str,
    ) -> Result<Vec<u8>, XsError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let bytes = wire::encode(op, id, tx.0, payload)?;
        let deadline = Instant::now() + self.timeout;
        self.send(&bytes, deadline)?;
        loop {
            let m = self.receive(deadline)?;
            if m.op() == Some(Op::WatchEvent) {
                self.queue_event(&m);
                continue;
            }
            if m.header.req_id != id {
                // The late reply of a request that timed out: nobody waits for it any more.
                continue;
            }
            return match m.op() {
                Some(Op::Error) => Err(XsError::Store {
                    op,
                    path: path.to_owned(),
                    errno: Errno::parse(&m.payload),
                }),
                Some(got) if got == op => Ok(m.payload),
                _ => Err(XsError::Protocol {
                    op,
                    got: m.header.kind,
                }),
            };
        }
    }

    fn simple(&mut self, op: Op, tx: Tx, parts: &[&str]) -> Result<Vec<u8>, XsError> {
        let payload = wire::strings(parts)?;
        self.request(op, tx, &payload, parts.first().copied().unwrap_or(""))
    }

    /// The value at `path` (at most 4096 bytes, as the protocol bounds it).
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Vec<u8>, XsError> {
        self.simple(Op::Read, tx, &[path])
    }

    /// The value at `path`, `None` where there is no such node.
    pub fn read_opt(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        match self.read(tx, path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.errno() == Some(&Errno::NoEnt) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `path`, creating the nodes above it.
    pub fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<(), XsError> {
        let payload = wire::write_payload(path, value)?;
        self.request(Op::Write, tx, &payload, path).map(drop)
    }

    pub fn mkdir(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        self.simple(Op::Mkdir, tx, &[path]).map(drop)
    }

    /// Removes `path` and everything under it.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        self.simple(Op::Rm, tx, &[path]).map(drop)
    }

    /// The names of `path`'s children.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsError> {
        Ok(wire::split_strings(&self.simple(
            Op::Directory,
            tx,
            &[path],
        )?))
    }

    pub fn get_perms(&mut self, tx: Tx, path: &str) -> Result<Vec<wire::Perm>, XsError> {
        let reply = self.simple(Op::GetPerms, tx, &[path])?;
        wire::parse_perms(&reply).ok_or(XsError::Protocol {
            op: Op::GetPerms,
            got: Op::GetPerms as u32,
        })
    }

    /// The home path of domain `domid` (`/local/domain/<domid>`).
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String, XsError> {
        let id = domid.to_string();
        Ok(wire::reply_string(&self.simple(
            Op::GetDomainPath,
            Tx::NONE,
            &[&id],
        )?))
    }

    /// Watches `path` (and what is under it); xenstored sends one event at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.simple(Op::Watch, Tx::NONE, &[path, token]).map(drop)
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.simple(Op::Unwatch, Tx::NONE, &[path, token]).map(drop)
    }

    pub fn transaction_start(&mut self) -> Result<Tx, XsError> {
        let reply = self.simple(Op::TransactionStart, Tx::NONE, &[""])?;
        let id = wire::reply_string(&reply);
        id.parse().map(Tx).map_err(|_| XsError::Protocol {
            op: Op::TransactionStart,
            got: Op::TransactionStart as u32,
        })
    }

    /// Commits (`commit`) or abandons the transaction; `EAGAIN` means it conflicted.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<(), XsError> {
        self.simple(Op::TransactionEnd, tx, &[if commit { "T" } else { "F" }])
            .map(drop)
    }

    /// Runs `body` in a transaction, again (up to [`TRANSACTION_TRIES`] times) while xenstored
    /// answers `EAGAIN`, at commit or inside.
    pub fn transaction<T>(
        &mut self,
        mut body: impl FnMut(&mut Client, Tx) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        let mut last = None;
        for _ in 0..TRANSACTION_TRIES {
            let tx = self.transaction_start()?;
            let result = body(self, tx);
            let err = match result {
                Ok(v) => match self.transaction_end(tx, true) {
                    Ok(()) => return Ok(v),
                    Err(e) => e,
                },
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    e
                }
            };
            if err.errno() != Some(&Errno::Again) {
                return Err(err);
            }
            self.conflicts += 1;
            last = Some(err);
        }
        Err(last.expect("at least one try"))
    }

    /// The next watch event, waiting up to `timeout` (`None`: for ever); `Ok(None)` when the
    /// time ran out.
    pub fn wait_event(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>, XsError> {
        let far = Duration::from_secs(86400 * 365);
        let deadline = Instant::now() + timeout.unwrap_or(far);
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            match self.receive(deadline) {
                Ok(m) if m.op() == Some(Op::WatchEvent) => self.queue_event(&m),
                Ok(_) => {} // a late reply nobody waits for
                Err(XsError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake store on a socket pair: replies scripted per request, to test the client's
    /// matching without xenstored (the real one is in the integration tests).
    fn pair() -> (Client, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let c = Client {
            conn: Conn::Socket(a),
            path: "pair".into(),
            decoder: Decoder::new(),
            next_id: 1,
            events: VecDeque::new(),
            events_lost: 0,
            conflicts: 0,
            timeout: Duration::from_secs(5),
        };
        (c, b)
    }

    fn read_request(s: &mut UnixStream) -> Message {
        let mut dec = Decoder::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(m) = dec.next_message().unwrap() {
                return m;
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            dec.push(&buf[..n]);
        }
    }

    fn reply(s: &mut UnixStream, op: Op, id: u32, payload: &[u8]) {
        s.write_all(&wire::encode(op, id, 0, payload).unwrap())
            .unwrap();
    }

    #[test]
    fn watch_event_between_request_and_reply_is_queued() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || {
            let m = read_request(&mut s);
            assert_eq!(m.op(), Some(Op::Read));
            reply(&mut s, Op::WatchEvent, 0, b"/x\0tok\0");
            // A stale reply of another id, then ours, cut in two writes.
            reply(&mut s, Op::Read, m.header.req_id + 100, b"stale");
            let mut r = wire::encode(Op::Read, m.header.req_id, 0, b"7").unwrap();
            let tail = r.split_off(5);
            s.write_all(&r).unwrap();
            s.write_all(&tail).unwrap();
            s
        });
        assert_eq!(c.read(Tx::NONE, "/a").unwrap(), b"7");
        let _s = t.join().unwrap();
        let ev = c.wait_event(Some(Duration::ZERO)).unwrap().unwrap();
        assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/x", "tok"));
    }

    #[test]
    fn transaction_is_run_again_on_eagain() {
        let (mut c, mut s) = pair();
        let t = std::thread::spawn(move || {
            for round in 0..2 {
                let m = read_request(&mut s);
                assert_eq!(m.op(), Some(Op::TransactionStart));
                reply(&mut s, Op::TransactionStart, m.header.req_id, b"9\0");
                let m = read_request(&mut s);
                assert_eq!((m.op(), m.header.tx_id), (Some(Op::Write), 9));
                reply(&mut s, Op::Write, m.header.req_id, b"OK\0");
                let m = read_request(&mut s);
                assert_eq!(m.payload, b"T\0");
                if round == 0 {
                    reply(&mut s, Op::Error, m.header.req_id, b"EAGAIN\0");
                } else {
                    reply(&mut s, Op::TransactionEnd, m.header.req_id, b"OK\0");
                }
            }
        });
        let mut runs = 0;
        c.transaction(|c, tx| {
            runs += 1;
            c.write(tx, "/a", b"1")
        })
        .unwrap();
        t.join().unwrap();
        assert_eq!((runs, c.conflicts()), (2, 1));
    }

    #[test]
    fn errors_and_timeouts() {
        let (mut c, mut s) = pair();
        c.set_timeout(Duration::from_millis(200));
        let t = std::thread::spawn(move || {
            let m = read_request(&mut s);
            reply(&mut s, Op::Error, m.header.req_id, b"ENOENT\0");
            let _silent = read_request(&mut s);
            s
        });
        assert_eq!(c.read_opt(Tx::NONE, "/nope").unwrap(), None);
        assert!(matches!(
            c.read(Tx::NONE, "/slow"),
            Err(XsError::Timeout(_))
        ));
        let _s = t.join().unwrap();
    }

    #[test]
    fn open_says_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("oomcount-xs-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let sock = dir.join("s");
        let _ = std::fs::remove_file(&sock);
        let _l = UnixListener::bind(&sock).unwrap();
        assert!(Client::open(&sock).is_ok());
        let err = Client::open(&dir.join("none")).err().unwrap();
        assert!(err.to_string().contains("cannot open xenstore"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
