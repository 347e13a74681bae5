//! The daemon's socket: a lock beside it, so that a second daemon refuses, and the socket bound
//! for every user in a folder only root can write.
use std::{fs, io, path::Path};

use tokio::net::UnixListener;

use super::DaemonError;

/// Takes the daemon's lock beside the socket: a second daemon on the same socket refuses.
pub(super) fn lock_socket(socket: &Path) -> Result<nix::fcntl::Flock<fs::File>, DaemonError> {
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

/// How many connections may wait to be accepted. A user flooding the socket fills the queue with
/// connections the daemon refuses one at a time, and root's `check` waits behind all of them:
/// behind std's default (`somaxconn`, 4096 here) that was 0.1-0.15 s on this machine's debug build
/// and over a second once on a slower one. A full queue makes a blocking connect sleep until a
/// place is free, and then the woken command at real-time priority (watchdog(8)'s) takes it
/// before the attacker's next connect. Root's few commands and the tests' need no more.
const BACKLOG: i32 = 32;

/// Binds the socket (replacing a stale one: the lock says no daemon owns it) for everyone to
/// query: the daemon only answers read-only questions.
pub(super) fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let socket_err = |source| DaemonError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let listener = crate::files::bind_socket(socket, 0o666).map_err(socket_err)?;
    // listen() again, on the listening socket, only shortens its queue.
    nix::sys::socket::listen(
        &listener,
        nix::sys::socket::Backlog::new(BACKLOG).expect("in range"),
    )
    .map_err(|errno| socket_err(io::Error::from(errno)))?;
    listener.set_nonblocking(true).map_err(socket_err)?;
    UnixListener::from_std(listener).map_err(socket_err)
}
