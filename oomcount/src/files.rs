//! The files and folders the daemon makes as root, safe from the machine's other users.
//!
//! `--socket`, `--stat` and `--pin-dir` may name a folder other users can write, such as /tmp.
//! There a user could plant a symbolic link at a name the daemon is about to create (`<stat>.tmp`,
//! `<socket>.lock`), or a folder of their own on the way, and have root write, chmod or create a
//! file where they chose. So:
//!
//! - every folder on the way, symbolic links followed one by one, must be root's (or the
//!   daemon's user's) and not writable by others, unless it is sticky, where only an entry's
//!   owner may remove or rename it (/tmp): [`check_folder`], and [`ensure_folder`] where the
//!   daemon creates what is missing; a symbolic link on the way must be root's too, which is what
//!   the kernel's `fs.protected_symlinks` asks only in sticky folders;
//! - every file is opened with `O_NOFOLLOW`, a temporary with `O_EXCL` ([`replace_atomic`]), and an
//!   existing lock must be the daemon's own regular file ([`open_lock`]): anything else at its
//!   name is removed (unlinking never follows a link) and the file made anew;
//! - the socket's mode is set through a descriptor of the socket `bind` made, never by path
//!   ([`bind_socket`]); a stale entry is removed only when it is a socket or a link.
use std::{
    ffi::OsString,
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
};

/// `S_ISVTX`: in a sticky folder only an entry's owner (or root) may remove or rename it.
const STICKY: u32 = 0o1000;
/// Symbolic links followed on one path before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Why a folder is not safe for root to make files in.
#[derive(Debug, thiserror::Error)]
pub enum Unsafe {
    #[error("{0} is owned by uid {1}, not root")]
    Owner(PathBuf, u32),
    #[error("{0} is writable by other users (mode {1:04o}) and not sticky")]
    Writable(PathBuf, u32),
    #[error("{0} is writable by other users (mode {1:04o})")]
    Shared(PathBuf, u32),
    #[error("{0} is a symbolic link owned by uid {1}, not root")]
    Link(PathBuf, u32),
    #[error("{0} is not a folder")]
    NotFolder(PathBuf),
    #[error("{0}: too many symbolic links")]
    Loop(PathBuf),
    #[error("{0}")]
    Io(PathBuf, #[source] io::Error),
}

/// Whether `uid` may own what root's files go through: root, or the user the daemon runs as.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Checks that every folder on the way to `dir` (itself included) is safe for root to create
/// files in; returns `dir` with its links resolved.
#[cfg(test)]
pub(crate) fn check_folder(dir: &Path) -> Result<PathBuf, Unsafe> {
    walk(dir, None)
}

/// Checks every folder on the way to `dir` as `check_folder` (in the tests) does, creating the folders that are missing with `mode` (exactly: not subject to
/// the umask).
pub(crate) fn ensure_folder(dir: &Path, mode: u32) -> Result<PathBuf, Unsafe> {
    walk(dir, Some(mode))
}

fn walk(dir: &Path, create: Option<u32>) -> Result<PathBuf, Unsafe> {
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        let cwd = std::env::current_dir().map_err(|err| Unsafe::Io(dir.to_path_buf(), err))?;
        cwd.join(dir)
    };
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, &absolute);
    let mut at = PathBuf::from("/");
    check_dir(
        &at,
        &fs::metadata(&at).map_err(|err| Unsafe::Io(at.clone(), err))?,
    )?;
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let meta = match fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound && create.is_some() => {
                make_dir(&next, create.unwrap_or(0o700))?;
                pending.push(name);
                continue;
            }
            Err(err) => return Err(Unsafe::Io(next, err)),
        };
        if meta.file_type().is_symlink() {
            if !trusted(meta.uid()) {
                return Err(Unsafe::Link(next, meta.uid()));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(Unsafe::Loop(absolute));
            }
            let target = fs::read_link(&next).map_err(|err| Unsafe::Io(next.clone(), err))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
            }
            push_components(&mut pending, &target);
            continue;
        }
        check_dir(&next, &meta)?;
        at = next;
    }
    Ok(at)
}

/// Pushes `path`'s components so that the first is popped first.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let start = pending.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    pending[start..].reverse();
}

fn check_dir(path: &Path, meta: &fs::Metadata) -> Result<(), Unsafe> {
    if !meta.is_dir() {
        return Err(Unsafe::NotFolder(path.to_path_buf()));
    }
    if !trusted(meta.uid()) {
        return Err(Unsafe::Owner(path.to_path_buf(), meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(Unsafe::Writable(path.to_path_buf(), mode));
    }
    Ok(())
}

/// Creates the folder `path` with exactly `mode`. One that appeared meanwhile is left for the
/// walk to judge.
fn make_dir(path: &Path, mode: u32) -> Result<(), Unsafe> {
    let io_err = |err| Unsafe::Io(path.to_path_buf(), err);
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(io_err(err)),
    }
    // The umask took bits away: put them back on the folder just made, through a descriptor of
    // it (never by path, which another user could have swapped for a link since).
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err)?;
    let meta = dir.metadata().map_err(io_err)?;
    if trusted(meta.uid()) && meta.mode() & 0o7777 != mode {
        fchmod(&dir, mode).map_err(io_err)?;
    }
    Ok(())
}

/// A folder of the daemon's own at `dir`, such as the pin folder: made with `mode` where missing
/// (exactly: not subject to the umask); an existing one must be a folder, not a link, of root's
/// that no other user can write, sticky or not, and is brought to `mode`. The folders above it are
/// for [`check_folder`].
pub(crate) fn own_folder(dir: &Path, mode: u32) -> Result<(), Unsafe> {
    make_dir(dir, mode)?;
    check_own_folder(dir)?;
    let io_err = |err| Unsafe::Io(dir.to_path_buf(), err);
    let folder = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(io_err)?;
    let found = folder.metadata().map_err(io_err)?.mode() & 0o7777;
    if found != mode {
        fchmod(&folder, mode).map_err(io_err)?;
        log::info!("{}: mode {found:04o} -> {mode:04o}", dir.display());
    }
    Ok(())
}

/// Whether `dir` is a folder, not a link, of root's that no other user can write (sticky or
/// not): what a folder of the daemon's own must be before anything in it is trusted.
pub(crate) fn check_own_folder(dir: &Path) -> Result<(), Unsafe> {
    let meta = fs::symlink_metadata(dir).map_err(|err| Unsafe::Io(dir.to_path_buf(), err))?;
    if meta.file_type().is_symlink() {
        return Err(Unsafe::Link(dir.to_path_buf(), meta.uid()));
    }
    if meta.mode() & 0o022 != 0 && meta.is_dir() {
        return Err(Unsafe::Shared(dir.to_path_buf(), meta.mode() & 0o7777));
    }
    check_dir(dir, &meta)
}

fn fchmod(file: &fs::File, mode: u32) -> io::Result<()> {
    nix::sys::stat::fchmod(
        std::os::fd::AsRawFd::as_raw_fd(file),
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )
    .map_err(io::Error::from)
}

/// The folder `path` will be created in ("." for a bare name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` appended to its name (`oomcount.sock` -> `oomcount.sock.lock`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens the lock file `path` (mode 0600), never through a link: an entry at its name that is
/// not the daemon's own regular file (a link, a FIFO, another user's file) is removed first.
pub(crate) fn open_lock(path: &Path) -> io::Result<fs::File> {
    let open = |exclusive: bool| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(exclusive)
            .mode(0o600)
            // Non-blocking: a FIFO at the name would otherwise hold the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
    };
    match open(false) {
        Ok(file) if is_own_file(&file.metadata()?) => return Ok(file),
        Ok(_) => {}
        // A link at the name: ELOOP, or EACCES where the kernel refuses to open another user's
        // entry in a sticky folder. Any other failure is the answer.
        Err(err) => {
            let planted = matches!(err.raw_os_error(), Some(libc::ELOOP | libc::EACCES))
                && fs::symlink_metadata(path).is_ok_and(|meta| !is_own_file(&meta));
            if !planted {
                return Err(err);
            }
        }
    }
    log::warn!(
        "{} was not oomcount's own file (a link, or another user's): replaced",
        path.display()
    );
    remove_entry(path)?;
    open(true)
}

/// A regular file of the daemon's user with no other name (a hard link planted by another
/// user would have two).
fn is_own_file(meta: &fs::Metadata) -> bool {
    meta.file_type().is_file() && meta.uid() == nix::unistd::geteuid().as_raw() && meta.nlink() == 1
}

/// Removes the entry `path` itself (a link is removed, not what it points to).
fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Replaces `path` with `contents`, atomically, mode 0644: written to `<path>.tmp`, created anew
/// (`O_EXCL`, never through a link), then renamed over `path` (a rename replaces a link at
/// `path`, never what it points to). Returns what it replaced (an `O_PATH` descriptor opened
/// before the rename), so that the caller chooses where the replaced file is freed: with its
/// last reference, which may sleep (ext4 mounted with `discard` discards its blocks then).
pub(crate) fn replace_atomic(path: &Path, contents: &str) -> io::Result<Option<fs::File>> {
    let tmp = with_suffix(path, ".tmp");
    let create = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
    };
    let mut file = match create() {
        Ok(file) => file,
        // A leftover of a crash, or an entry another user planted: removed, then made anew.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            remove_entry(&tmp)?;
            create()?
        }
        Err(err) => return Err(err),
    };
    let written = file.write_all(contents.as_bytes()).and_then(|()| {
        // The umask may have taken bits away: the file is this process's own, by descriptor.
        fchmod(&file, 0o644)
    });
    drop(file);
    let replaced = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .ok();
    match written.and_then(|()| fs::rename(&tmp, path)) {
        Ok(()) => Ok(replaced),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// Binds a listening unix socket at `path` with `mode`, removing a stale socket (or a link)
/// there first; any other kind of file at `path` is an error, never removed.
pub(crate) fn bind_socket(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() || meta.file_type().is_symlink() => {
            remove_entry(path)?;
            log::debug!("removed stale socket {}", path.display());
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there, and is left alone",
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    // bind() made the socket with 0777 less the umask and did not follow a link at its name;
    // its mode is set through a descriptor of the entry itself (O_PATH, not following a link),
    // checked to be a socket: a chmod by path would follow a link planted since.
    let entry = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)?;
    if !entry.metadata()?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the socket was replaced as it was made",
        ));
    }
    // An O_PATH descriptor takes no fchmod; its /proc/self/fd entry names the same inode.
    let by_fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&entry));
    fs::set_permissions(by_fd, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(listener)
}

/// A folder of the tests' own (mode 0755), removed with everything in it when dropped.
#[cfg(test)]
pub(crate) struct TempDir(pub(crate) PathBuf);

#[cfg(test)]
impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("oomcount-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn folders_writable_by_others_are_refused_unless_sticky() {
        let tmp = TempDir::new("writable");
        let open = tmp.0.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            matches!(check_folder(&open), Err(Unsafe::Writable(p, 0o777)) if p == open),
            "{:?}",
            check_folder(&open)
        );
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_folder(&open).unwrap(), open);
        // What is under a folder writable by others cannot be trusted either.
        let under = open.join("x");
        fs::create_dir(&under).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check_folder(&under), Err(Unsafe::Writable(..))));
        assert!(matches!(
            check_folder(&tmp.0.join("file")),
            Err(Unsafe::Io(..))
        ));
        fs::write(tmp.0.join("file"), "").unwrap();
        assert!(matches!(
            check_folder(&tmp.0.join("file")),
            Err(Unsafe::NotFolder(..))
        ));
    }

    #[test]
    fn links_on_the_way_are_followed_and_resolved() {
        let tmp = TempDir::new("links");
        let real = tmp.0.join("real");
        fs::create_dir(&real).unwrap();
        symlink("real", tmp.0.join("rel")).unwrap();
        symlink(&real, tmp.0.join("abs")).unwrap();
        assert_eq!(check_folder(&tmp.0.join("rel")).unwrap(), real);
        assert_eq!(check_folder(&tmp.0.join("abs/../real")).unwrap(), real);
        symlink("loop", tmp.0.join("loop")).unwrap();
        assert!(matches!(
            check_folder(&tmp.0.join("loop")),
            Err(Unsafe::Loop(..))
        ));
    }

    #[test]
    fn missing_folders_are_made_with_the_exact_mode() {
        let tmp = TempDir::new("make");
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let dir = tmp.0.join("a/b");
        let made = ensure_folder(&dir, 0o755);
        nix::sys::stat::umask(old);
        assert_eq!(made.unwrap(), dir);
        assert_eq!(mode(&tmp.0.join("a")), 0o755);
        assert_eq!(mode(&dir), 0o755);
    }

    #[test]
    fn a_folder_of_its_own_is_made_tightened_or_refused() {
        let tmp = TempDir::new("own");
        let dir = tmp.0.join("pins");
        own_folder(&dir, 0o700).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // An older oomcount's folder (root's, 0755): no one else could write in it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        own_folder(&dir, 0o700).unwrap();
        assert_eq!(mode(&dir), 0o700);
        for refused in [0o777, 0o1777, 0o770] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(refused)).unwrap();
            assert!(
                matches!(own_folder(&dir, 0o700), Err(Unsafe::Shared(_, m)) if m == refused),
                "{refused:o}"
            );
            assert_eq!(mode(&dir), refused, "left as it was");
        }
        let link = tmp.0.join("link");
        symlink(&dir, &link).unwrap();
        assert!(matches!(own_folder(&link, 0o700), Err(Unsafe::Link(..))));
        assert!(matches!(check_own_folder(&link), Err(Unsafe::Link(..))));
    }

    #[test]
    fn the_temporary_and_the_lock_never_go_through_links() {
        let tmp = TempDir::new("nofollow");
        let target = tmp.0.join("target");
        fs::write(&target, "precious").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let stat = tmp.0.join("stat");
        symlink(&target, tmp.0.join("stat.tmp")).unwrap();
        symlink(&target, &stat).unwrap();
        replace_atomic(&stat, "oom_kill 1\n").unwrap();
        assert_eq!(fs::read_to_string(&stat).unwrap(), "oom_kill 1\n");
        assert!(
            !fs::symlink_metadata(&stat)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(mode(&stat), 0o644);
        assert!(!tmp.0.join("stat.tmp").exists());

        let lock = tmp.0.join("sock.lock");
        symlink(&target, &lock).unwrap();
        let file = open_lock(&lock).unwrap();
        assert!(file.metadata().unwrap().is_file());
        assert!(
            !fs::symlink_metadata(&lock)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(mode(&lock), 0o600);
        // A second open keeps the file (a running daemon's lock is never replaced).
        let ino = file.metadata().unwrap().ino();
        assert_eq!(open_lock(&lock).unwrap().metadata().unwrap().ino(), ino);
        // A hard link to another file is not the daemon's own.
        drop(file);
        fs::remove_file(&lock).unwrap();
        fs::hard_link(&target, &lock).unwrap();
        open_lock(&lock).unwrap();
        assert_eq!(fs::metadata(&target).unwrap().nlink(), 1);

        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(mode(&target), 0o600);
    }

    #[test]
    fn the_socket_gets_its_mode_and_only_sockets_and_links_are_replaced() {
        let tmp = TempDir::new("socket");
        let target = tmp.0.join("target");
        fs::write(&target, "precious").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let socket = tmp.0.join("s.sock");
        symlink(&target, &socket).unwrap();
        let listener = bind_socket(&socket, 0o666).unwrap();
        assert_eq!(mode(&socket), 0o666);
        drop(listener);
        // Stale: replaced.
        bind_socket(&socket, 0o666).unwrap();
        assert_eq!(mode(&target), 0o600);
        let file = tmp.0.join("f");
        fs::write(&file, "x").unwrap();
        assert!(bind_socket(&file, 0o666).is_err());
        assert_eq!(fs::read_to_string(&file).unwrap(), "x");
    }
}
