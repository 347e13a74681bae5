//! Kills as structured journal entries, where the daemon's log goes to journald.
//!
//! Under systemd the daemon's stderr is a stream to journald, which makes each line an entry
//! with `MESSAGE` only. A kill sent over journald's native protocol instead carries fields a log
//! pipeline can filter on: `journalctl MESSAGE_ID=8d5b51a9187549ed90180a1c807cfa78` lists the
//! kills, `journalctl OOMCOUNT_COMM=postgres` one program's. The fields are those of the hook's
//! environment (`OOMCOUNT_PID`, `OOMCOUNT_COMM`, `OOMCOUNT_CGROUP`, `OOMCOUNT_SEQ`, ...).
//!
//! The protocol (systemd's `JOURNAL_NATIVE_PROTOCOL`) is a datagram of `NAME=value\n` fields, a
//! value holding a newline written as `NAME\n`, its length as 64-bit little-endian, the bytes and
//! `\n`; an entry too large for a datagram goes as a sealed memfd passed with `SCM_RIGHTS`. That
//! is sixty lines here; the crates that speak it are loggers (a `log` backend with its own
//! dependencies) rather than a way to send one entry with our fields.
//!
//! The socket is non-blocking: a journald that cannot keep up loses entries (counted), it never
//! stalls the daemon's thread.
use std::{
    fs::File,
    io::{self, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::UnixDatagram,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use super::Notice;

/// The `MESSAGE_ID` of every kill entry (generated once for oomcount; `journalctl
/// MESSAGE_ID=...` finds them all).
pub const MESSAGE_ID: &str = "8d5b51a9187549ed90180a1c807cfa78";
/// journald's native socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// A connection to journald's native socket.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    lost: AtomicU64,
    failing: AtomicBool,
}

impl Journal {
    /// The journal, when the daemon's stderr is journald's stream (`JOURNAL_STREAM` names the
    /// device and inode of stderr: set by systemd, and inherited, wrongly, by a child whose
    /// stderr went elsewhere, which is why it is compared).
    pub fn from_env() -> Option<Self> {
        // The tests' journald: a socket of their own (this machine runs no journald).
        if let Some(path) = std::env::var_os("OOMCOUNT_TEST_JOURNAL_SOCKET") {
            return Self::at(path).ok();
        }
        let stream = std::env::var("JOURNAL_STREAM").ok()?;
        let stderr = std::io::stderr();
        if !stream_is(&stream, &stderr) {
            return None;
        }
        Self::at(SOCKET).ok()
    }

    /// A journal listening at `path` (journald's is [`SOCKET`]).
    pub fn at(path: impl Into<PathBuf>) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            path: path.into(),
            lost: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    /// Sends one kill as an entry: `message` (the line the daemon would log) and the notice's
    /// fields. An entry journald cannot take is counted and, the first time in a row, logged;
    /// returns whether it was sent (if not, the caller logs the line).
    pub fn kill(&self, notice: &Notice, message: &str) -> bool {
        let mut entry = Vec::with_capacity(1024);
        field(&mut entry, "MESSAGE", message.as_bytes());
        field(&mut entry, "MESSAGE_ID", MESSAGE_ID.as_bytes());
        field(&mut entry, "PRIORITY", b"4");
        field(&mut entry, "SYSLOG_IDENTIFIER", b"oomcount");
        for (name, value) in notice.fields() {
            field(&mut entry, name, value);
        }
        match self.send(&entry) {
            Ok(()) => {
                self.failing.store(false, Ordering::Relaxed);
                true
            }
            Err(err) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "cannot send a kill to the journal at {} ({err}): kills go to the log as lines",
                        self.path.display()
                    );
                }
                false
            }
        }
    }

    /// Entries journald did not take.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn send(&self, entry: &[u8]) -> io::Result<()> {
        match self.socket.send_to(entry, &self.path) {
            Ok(_) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => self.send_memfd(entry),
            Err(err) => Err(err),
        }
    }

    /// An entry larger than a datagram: in a sealed memfd, passed with `SCM_RIGHTS`.
    fn send_memfd(&self, entry: &[u8]) -> io::Result<()> {
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned at once.
        let fd = unsafe {
            libc::memfd_create(
                c"oomcount-journal".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.write_all(entry)?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor this function owns.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let fds = [file.as_raw_fd()];
        let address = nix::sys::socket::UnixAddr::new(self.path.as_path())?;
        nix::sys::socket::sendmsg(
            self.socket.as_raw_fd(),
            &[],
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            Some(&address),
        )?;
        Ok(())
    }
}

/// Appends one field in the native protocol's encoding.
pub fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Whether `JOURNAL_STREAM`'s `device:inode` is the file `fd` is open on.
fn stream_is(stream: &str, fd: &impl std::os::fd::AsFd) -> bool {
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(fd.as_fd().as_raw_fd())
        .is_ok_and(|stat| stat.st_dev == dev && stat.st_ino == ino)
}

#[doc(hidden)]
/// Parses an entry in the native protocol: the fields in order (what journald does with it).
pub fn parse(mut entry: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !entry.is_empty() {
        let end = entry.iter().position(|&b| b == b'\n' || b == b'=')?;
        let name = String::from_utf8(entry[..end].to_vec()).ok()?;
        if entry[end] == b'=' {
            let rest = &entry[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n')?;
            fields.push((name, rest[..stop].to_vec()));
            entry = &rest[stop + 1..];
        } else {
            let rest = &entry[end + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8usize.checked_add(len)?)?;
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((name, value.to_vec()));
            entry = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

#[doc(hidden)]
/// Receives one entry from a socket speaking journald's protocol (a test's stand-in for
/// journald): the datagram, or the memfd it carries.
pub fn receive(socket: &UnixDatagram) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = vec![0u8; 1 << 20];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let message = nix::sys::socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let bytes = message.bytes;
    let mut passed = None;
    for cmsg in message.cmsgs()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            passed = fds.first().copied();
        }
    }
    if let Some(fd) = passed {
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // From the start, as journald maps it: the sender's writes left the shared offset at
        // the end.
        let mut entry = Vec::new();
        std::io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
        file.read_to_end(&mut entry)?;
        return Ok(entry);
    }
    buf.truncate(bytes);
    Ok(buf)
}

#[doc(hidden)]
/// Where journald would listen, for a stand-in: `dir/socket`.
pub fn stand_in(dir: &Path) -> io::Result<(UnixDatagram, PathBuf)> {
    let path = dir.join("socket");
    Ok((UnixDatagram::bind(&path)?, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("oomcount-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn notice(comm: &[u8], cgroup: &str) -> Notice {
        let event = serde_json::json!({
            "kind": "kill", "seq": 42, "pid": 1234, "uid": 1000, "comm": "lossy",
            "constraint": "memcg", "cgroup": cgroup, "anon_rss_kb": 51200,
        });
        Notice::new(&event).exact("comm", Some(comm))
    }

    /// This machine has no running journald: the entry goes to a socket bound here and is
    /// parsed as journald parses it (fields, binary-safe values, memfd).
    #[test]
    fn fields_parse_back_equal_to_the_events() {
        let dir = tempdir("fields");
        let (server, path) = stand_in(&dir).unwrap();
        let journal = Journal::at(&path).unwrap();
        let notice = notice(b"evil\nMESSAGE_ID=forged\xff", "/system.slice/a\nb.service");
        assert!(journal.kill(&notice, "a kill"));
        let fields = parse(&receive(&server).unwrap()).expect("a well-formed entry");
        let get = |name: &str| {
            let values: Vec<&[u8]> = fields
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(values.len(), 1, "{name} once in {fields:?}");
            values[0]
        };
        assert_eq!(get("MESSAGE_ID"), MESSAGE_ID.as_bytes());
        assert_eq!(get("MESSAGE"), b"a kill");
        for (name, value) in notice.fields() {
            assert_eq!(get(name), value, "{name}");
        }
        assert_eq!(get("OOMCOUNT_COMM"), b"evil\nMESSAGE_ID=forged\xff");
        assert_eq!(get("OOMCOUNT_SEQ"), b"42");
        assert_eq!(fields.len(), 4 + notice.fields().count());
        assert_eq!(journal.lost(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_entry_larger_than_a_datagram_goes_in_a_memfd() {
        let dir = tempdir("memfd");
        let (server, path) = stand_in(&dir).unwrap();
        let journal = Journal::at(&path).unwrap();
        let cgroup = format!("/{}", "x/".repeat(300_000));
        let notice = notice(b"big", &cgroup);
        assert!(journal.kill(&notice, "a large kill"));
        let entry = receive(&server).unwrap();
        assert!(entry.len() > 600_000, "{} bytes", entry.len());
        let fields = parse(&entry).expect("a well-formed entry");
        let value = fields.iter().find(|(n, _)| n == "OOMCOUNT_CGROUP").unwrap();
        assert_eq!(value.1, cgroup.as_bytes());
        assert_eq!(journal.lost(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_journal_is_counted_not_fatal() {
        let journal = Journal::at("/nonexistent/oomcount/socket").unwrap();
        assert!(!journal.kill(&notice(b"x", "/"), "x"));
        assert!(!journal.kill(&notice(b"x", "/"), "x"));
        assert_eq!(journal.lost(), 2);
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        let file = File::open("/proc/self/status").unwrap();
        let stat = nix::sys::stat::fstat(file.as_raw_fd()).unwrap();
        assert!(stream_is(
            &format!("{}:{}", stat.st_dev, stat.st_ino),
            &file
        ));
        assert!(!stream_is(
            &format!("{}:{}", stat.st_dev, stat.st_ino + 1),
            &file
        ));
        assert!(!stream_is("garbage", &file));
        assert!(!stream_is("1:", &file));
    }

    #[test]
    fn parse_refuses_truncated_entries() {
        let mut entry = Vec::new();
        field(&mut entry, "A", b"1\n2");
        assert_eq!(parse(&entry).unwrap(), vec![("A".into(), b"1\n2".to_vec())]);
        assert!(parse(&entry[..entry.len() - 1]).is_none());
        assert!(parse(b"A=1").is_none());
    }
}
