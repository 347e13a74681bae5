//! The probe's pins in bpffs: what lets the kernel keep counting, and the counts survive, while
//! no daemon runs.
//!
//! A daemon pins the counter map, the event ring buffer and the two programs' links under
//! `/sys/fs/bpf/oomcount/`. A daemon started later adopts them: the programs never stopped, so
//! nothing was missed, and the events produced meanwhile wait in the ring buffer (up to its size;
//! beyond, they are counted as dropped). The counter map also holds, in slots the programs never
//! touch, the pins' layout version, when they were attached and the watchdog's unrecoverable
//! latch, so that a newer oomcount can recognise older pins and replace them without losing their
//! counts or the latch.
//!
//! The pins are a security boundary: whoever can remove them blinds the probe once the daemon
//! is gone, and whoever can plant them feeds a daemon their counts. So:
//!
//! - the pin folder is the daemon's own: made by it with mode 0700, or an existing folder of
//!   root's that no other user can write; every folder above it is root's and not writable by
//!   others (unless sticky): [`ensure_dir`]. bpffs, where the daemon mounts it, gets `mode=0700`
//!   (mounted without a mode it is world-writable and sticky, like /tmp);
//! - a running daemon holds its own descriptor of each pinned object ([`Held`]), so that removing
//!   the pins does not detach its probe (a BPF link cannot be detached from outside: it lasts
//!   while a pin or a descriptor holds it). It watches the folder with inotify ([`Watch`]): pins
//!   removed under it are pinned again at once, pins that are not its own any more are reported;
//! - replacing pins (an upgrade, or pins left without links by a crash) carries the counts and
//!   the latch into the new counter map before it is pinned, and the new maps take the old ones'
//!   names by an atomic rename: at every step the folder holds a counter map with the latch.
use std::{
    fs, io,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::links::FdLink,
};
use oomcount_common::{counter, pin};

use crate::{
    files::{self, Unsafe},
    probe::counters::{CounterMap, Counters, ValuesByIndex},
};

/// Where the pins live unless told otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/oomcount";

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The pin folder's mode, and bpffs's where the daemon mounts it.
const MODE: u32 = 0o700;
/// What a map is pinned as until it takes its name (by rename, atomically). Not a dot: bpffs
/// refuses names with one (EPERM), keeping them for itself.
const NEW: &str = "_new";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed (mount it with `mount -t bpf -o mode=0700 bpf /sys/fs/bpf`, or run with --no-pin)"
    )]
    Mount(#[source] nix::Error),
    #[error(
        "refusing the pin folder {0}: oomcount pins only in a folder of its own, root's with mode 0700 under folders only root can write (remove it after checking what it holds, choose another with --pin-dir, or run with --no-pin)"
    )]
    Unsafe(PathBuf, #[source] Unsafe),
    #[error("cannot open the pinned {0} (remove the pins with `oomcount detach`)")]
    Open(PathBuf, #[source] aya::maps::MapError),
    #[error("cannot pin {0} (run with --no-pin to go without pins)")]
    Pin(PathBuf, #[source] io::Error),
    #[error("cannot remove the pin {0}")]
    Remove(PathBuf, #[source] io::Error),
    #[error("cannot read the pinned counters")]
    Read(#[source] aya::maps::MapError),
    #[error(
        "the probe pinned in {dir} is held by {holders}: stop that daemon first (`systemctl stop oomcount`), then detach (a running daemon pins its probe again)"
    )]
    Held { dir: PathBuf, holders: String },
}

/// Makes `dir` ready to pin in: mounts bpffs (mode 0700) at `/sys/fs/bpf` where `dir` is under
/// it and it is not mounted, then makes `dir` the daemon's own folder, or refuses it.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PinError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some(format!("mode={MODE:o}").as_str()),
        )
        .map_err(PinError::Mount)?;
        log::info!("mounted bpffs at {} (mode {MODE:04o})", root.display());
    }
    let refuse = |err| PinError::Unsafe(dir.to_path_buf(), err);
    files::ensure_folder(files::parent(dir), MODE).map_err(refuse)?;
    files::own_folder(dir, MODE).map_err(refuse)?;
    remove_leftovers(dir)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Maps pinned under a temporary name by a daemon that died before renaming them.
fn remove_leftovers(dir: &Path) -> Result<(), PinError> {
    for name in [pin::COUNTERS, pin::EVENTS] {
        let path = files::with_suffix(&dir.join(name), NEW);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(PinError::Remove(path, err));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a daemon takes over from pins: the counters, the events, when they were attached (ns),
/// and its own descriptors of them all.
pub(crate) type Adopted = (CounterMap, RingBuf<MapData>, u64, Held);

/// Pins found in a folder.
pub struct Pinned {
    dir: PathBuf,
    counters: CounterMap,
    version: u64,
    attached_ns: u64,
}

impl Pinned {
    /// The pins in `dir`; `None` when there are none. A folder another user could have put
    /// them in is refused.
    pub fn open(dir: &Path) -> Result<Option<Self>, PinError> {
        let path = dir.join(pin::COUNTERS);
        if !path.exists() {
            return Ok(None);
        }
        files::check_own_folder(dir).map_err(|err| PinError::Unsafe(dir.to_path_buf(), err))?;
        let open = || -> Result<PerCpuArray<MapData, u64>, aya::maps::MapError> {
            Map::from_map_data(MapData::from_pin(&path)?)?.try_into()
        };
        let counters = CounterMap::new(open().map_err(|err| PinError::Open(path.clone(), err))?);
        let slot = |index: u32| -> u64 { counters.get(index).unwrap_or(0) };
        let (version, attached_ns) = (slot(counter::VERSION), slot(counter::ATTACHED_AT_NS));
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            counters,
            version,
            attached_ns,
        }))
    }

    /// The layout version recorded with the pins (0: none recorded).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// When the pinned probe was attached (Unix ns).
    pub fn attached_ns(&self) -> u64 {
        self.attached_ns
    }

    /// Whether both links are pinned (a daemon that died while pinning leaves only maps).
    pub(crate) fn links_present(&self) -> bool {
        [pin::LINK_SIGNAL, pin::LINK_MARK]
            .iter()
            .all(|name| self.dir.join(name).exists())
    }

    pub fn counters(&self) -> Result<Counters, PinError> {
        self.counters.counters().map_err(PinError::Read)
    }

    /// The counts to carry into a new probe: every counter the programs keep, the attach time,
    /// the event sequence and the unrecoverable latch, whose indexes are the same in every layout
    /// version.
    pub(crate) fn carry_over(&self) -> Result<ValuesByIndex, PinError> {
        let mut carried = Vec::new();
        for index in (0..counter::VERSION).chain([
            counter::ATTACHED_AT_NS,
            counter::SEQ,
            counter::DROPS_SEEN,
            counter::UNRECOVERABLE_AT,
            counter::KILL_EVENTS_DROPPED_GLOBAL,
        ]) {
            let value = self.counters.get(index).unwrap_or(0);
            carried.push((index, value));
        }
        Ok(carried)
    }

    /// The pinned maps and links, for a daemon that adopts them.
    pub(crate) fn into_parts(self) -> Result<Adopted, PinError> {
        let path = self.dir.join(pin::EVENTS);
        let open = || -> Result<RingBuf<MapData>, aya::maps::MapError> {
            Map::from_map_data(MapData::from_pin(&path)?)?.try_into()
        };
        let events = open().map_err(|err| PinError::Open(path.clone(), err))?;
        let dup = |fd: BorrowedFd<'_>, name: &str| {
            fd.try_clone_to_owned()
                .map_err(|err| PinError::Pin(self.dir.join(name), err))
        };
        let maps = [
            (pin::COUNTERS, dup(self.counters.fd(), pin::COUNTERS)?),
            (pin::EVENTS, dup(events.as_fd(), pin::EVENTS)?),
        ];
        let mut links = Vec::new();
        for name in [pin::LINK_SIGNAL, pin::LINK_MARK] {
            let path = self.dir.join(name);
            links.push((
                name,
                sys::get(&path).map_err(|err| PinError::Pin(path, err))?,
            ));
        }
        let held = Held::new(&self.dir, maps.into_iter().chain(links))?;
        Ok((self.counters, events, self.attached_ns, held))
    }
}

/// Pins a freshly loaded probe's maps, each under a temporary name first, then renamed to its
/// own: a rename replaces the map of the pins being replaced at once, so that a crash at any
/// point leaves a counter map in the folder.
pub(crate) fn pin_maps(
    dir: &Path,
    counters: BorrowedFd<'_>,
    events: BorrowedFd<'_>,
) -> Result<(), PinError> {
    for (name, fd) in [(pin::COUNTERS, counters), (pin::EVENTS, events)] {
        let path = dir.join(name);
        let new = files::with_suffix(&path, NEW);
        sys::pin(fd, &new)
            .and_then(|()| fs::rename(&new, &path))
            .map_err(|err| PinError::Pin(path, err))?;
    }
    Ok(())
}

/// Pins the links of a freshly attached probe; returns this process's own descriptors of them.
pub(crate) fn pin_links(
    dir: &Path,
    signal: FdLink,
    mark: FdLink,
) -> Result<[(&'static str, OwnedFd); 2], PinError> {
    let pin = |name: &'static str, link: FdLink| -> Result<(&'static str, OwnedFd), PinError> {
        let path = dir.join(name);
        let error = |err| PinError::Pin(path.clone(), err);
        let id = link
            .info()
            .map_err(|err| error(io::Error::other(err)))?
            .id();
        // aya keeps the link's descriptor to itself: the pin gives this process one of its own.
        let pinned = link
            .pin(&path)
            .map_err(|err| error(io::Error::other(err)))?;
        let fd = sys::get(&path).map_err(error)?;
        if sys::id(fd.as_fd()).map_err(error)? != id {
            return Err(error(io::Error::other(
                "the pin was replaced as it was made",
            )));
        }
        drop(pinned);
        Ok((name, fd))
    };
    Ok([pin(pin::LINK_SIGNAL, signal)?, pin(pin::LINK_MARK, mark)?])
}

/// Removes the link pins in `dir`: the programs detach unless something else holds them.
pub(crate) fn remove_links(dir: &Path) -> Result<(), PinError> {
    for name in [pin::LINK_MARK, pin::LINK_SIGNAL] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(PinError::Remove(path, err));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes every pin in `dir` (the programs detach once nothing else holds them). Returns how
/// many pins there were.
pub(crate) fn remove(dir: &Path) -> Result<usize, PinError> {
    let mut removed = 0;
    // Links first, so that the programs stop before their maps go.
    for name in [pin::LINK_MARK, pin::LINK_SIGNAL, pin::EVENTS, pin::COUNTERS] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(PinError::Remove(path, err)),
        }
    }
    Ok(removed)
}

/// One pinned object a daemon holds.
struct Object {
    name: &'static str,
    fd: OwnedFd,
    /// The kernel's id of the object, which a pin of it gives back.
    id: u32,
}

/// A running daemon's own descriptors of its pinned objects, maps first: while it holds them
/// its probe stays attached whatever happens to the pins, and it can pin them again.
pub(crate) struct Held {
    dir: PathBuf,
    objects: Vec<Object>,
    /// What was last reported about pins that are not this daemon's, so as to say it once.
    reported: Option<String>,
}

impl Held {
    pub(crate) fn new(
        dir: &Path,
        objects: impl IntoIterator<Item = (&'static str, OwnedFd)>,
    ) -> Result<Held, PinError> {
        let objects = objects
            .into_iter()
            .map(|(name, fd)| {
                let id = sys::id(fd.as_fd()).map_err(|err| PinError::Pin(dir.join(name), err))?;
                Ok(Object { name, fd, id })
            })
            .collect::<Result<_, PinError>>()?;
        Ok(Held {
            dir: dir.to_path_buf(),
            objects,
            reported: None,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Looks at the pins: pins again those that were removed (the folder too); reports, once,
    /// pins that are not this daemon's objects any more and leaves them alone.
    pub(crate) fn check(&mut self) {
        let mut missing = Vec::new();
        let mut foreign = Vec::new();
        for object in &self.objects {
            match sys::pinned_id(&self.dir.join(object.name)) {
                Ok(id) if id == object.id => {}
                Ok(_) => foreign.push(object.name.to_owned()),
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT)) => {
                    missing.push(object)
                }
                Err(err) => foreign.push(format!("{} ({err})", object.name)),
            }
        }
        if !foreign.is_empty() {
            let report = format!(
                "the pins {} in {} are not this daemon's probe any more (replaced by another oomcount, or by hand): it goes on counting with its own, which stops with it, and its counts and verdict are no longer kept with the pins",
                foreign.join(", "),
                self.dir.display()
            );
            if self.reported.as_ref() != Some(&report) {
                log::error!("{report}");
                self.reported = Some(report);
            }
            return;
        }
        if self.reported.take().is_some() {
            log::info!("the pins in {} are this daemon's again", self.dir.display());
        }
        if missing.is_empty() {
            return;
        }
        // `oomcount detach` removes the folder when it is empty.
        if let Err(err) = files::own_folder(&self.dir, MODE) {
            log::error!(
                "pins removed from {} cannot be pinned again ({err}): the probe stops with this daemon",
                self.dir.display()
            );
            return;
        }
        let mut pinned = Vec::new();
        for object in missing {
            match sys::pin(object.fd.as_fd(), &self.dir.join(object.name)) {
                Ok(()) => pinned.push(object.name),
                // Pinned meanwhile (by whom, the next look says).
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => log::error!(
                    "cannot pin {} again in {} ({err}): the probe stops with this daemon",
                    object.name,
                    self.dir.display()
                ),
            }
        }
        if !pinned.is_empty() {
            log::warn!(
                "{} removed from {} while this daemon ran: pinned again, so that the counts and the verdict outlive it (stop the daemon before `oomcount detach`)",
                pinned.join(", "),
                self.dir.display()
            );
        }
    }
}

/// Changes in a pin folder, as inotify reports them: the daemon's cue to [`Held::check`], with
/// no polling.
pub(crate) struct Watch {
    inotify: tokio::io::unix::AsyncFd<InotifyFd>,
    dir: PathBuf,
    watch: Option<nix::sys::inotify::WatchDescriptor>,
    /// The folder watched went (or moved away): its path is to be watched again.
    stale: bool,
}

/// An inotify instance as tokio's `AsyncFd` takes it.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Watch {
    /// Watches `dir` (inside a tokio runtime).
    pub(crate) fn new(dir: &Path) -> io::Result<Watch> {
        use nix::sys::inotify::{InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the inotify instance owns its descriptor for as long as the AsyncFd owns it.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                InotifyFd(inotify),
                tokio::io::Interest::READABLE,
            )
        };
        let mut watch = Watch {
            inotify: registered.map_err(io::Error::from)?,
            dir: dir.to_path_buf(),
            watch: None,
            stale: true,
        };
        watch.rewatch()?;
        Ok(watch)
    }

    /// Waits for the next change (a pin made, removed or renamed; the folder removed).
    pub(crate) async fn changed(&mut self) -> io::Result<()> {
        use nix::sys::inotify::AddWatchFlags as F;
        loop {
            let mut ready = self.inotify.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(events)) => {
                    // The folder watched went (or moved): its path is to be watched again. Only
                    // the current watch's events count: removing an old watch reports one too,
                    // and taking that for the current one would loop.
                    let gone = F::IN_DELETE_SELF | F::IN_IGNORED | F::IN_MOVE_SELF;
                    if events
                        .iter()
                        .any(|e| e.mask.intersects(gone) && Some(e.wd) == self.watch)
                    {
                        self.stale = true;
                    }
                    return Ok(());
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }

    /// Watches the folder's path again when the folder watched went (once it is made again).
    pub(crate) fn rewatch(&mut self) -> io::Result<()> {
        use nix::sys::inotify::AddWatchFlags as F;
        if !self.stale {
            return Ok(());
        }
        let inotify = &self.inotify.get_ref().0;
        if let Some(old) = self.watch.take() {
            // Gone already where the folder was removed.
            let _ = inotify.rm_watch(old);
        }
        let mask = F::IN_CREATE
            | F::IN_DELETE
            | F::IN_MOVED_FROM
            | F::IN_MOVED_TO
            | F::IN_DELETE_SELF
            | F::IN_MOVE_SELF
            | F::IN_ONLYDIR
            | F::IN_DONT_FOLLOW;
        self.watch = Some(inotify.add_watch(&self.dir, mask)?);
        self.stale = false;
        Ok(())
    }
}

/// What `oomcount detach` did.
pub struct Detached {
    pub removed: usize,
    /// The processes that hold the probe's links, which stay attached (empty: detached).
    pub held_by: Vec<String>,
}

/// Removes the pins in `dir`, unless a process (a running daemon) holds the probe's links: it
/// would keep them attached, and pin them again.
pub fn detach(dir: &Path) -> Result<Detached, PinError> {
    match fs::symlink_metadata(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(Detached {
                removed: 0,
                held_by: Vec::new(),
            });
        }
        _ => {
            files::check_own_folder(dir).map_err(|err| PinError::Unsafe(dir.to_path_buf(), err))?
        }
    }
    let links: Vec<u32> = [pin::LINK_SIGNAL, pin::LINK_MARK]
        .iter()
        .filter_map(|name| sys::pinned_id(&dir.join(name)).ok())
        .collect();
    let holders = link_holders(&links);
    if !holders.is_empty() {
        return Err(PinError::Held {
            dir: dir.to_path_buf(),
            holders: holders.join(", "),
        });
    }
    let removed = remove(dir)?;
    // The folder goes too when nothing else is in it.
    let _ = fs::remove_dir(dir);
    // bpffs lets go of a pin's object only after an RCU grace period: a link outlives its pin
    // by a moment (seen on 5.10). Wait for that, briefly, before saying it stays.
    let attached = || links.iter().any(|&id| sys::link_exists(id));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while attached() && link_holders(&links).is_empty() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Attached still if a process took hold of a link meanwhile (a daemon that just started).
    let held_by = if attached() {
        let holders = link_holders(&links);
        if holders.is_empty() {
            vec!["a process that could not be found".to_owned()]
        } else {
            holders
        }
    } else {
        Vec::new()
    };
    Ok(Detached { removed, held_by })
}

/// The processes other than this one with a descriptor of one of the links `ids`, as
/// "pid N (comm)", from /proc (each one's `fdinfo` names the link's id).
fn link_holders(ids: &[u32]) -> Vec<String> {
    let mut found = Vec::new();
    if ids.is_empty() {
        return found;
    }
    let me = std::process::id().to_string();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            let is_link = fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-link");
            is_link
                && fs::read_to_string(entry.path().join("fdinfo").join(fd.file_name()))
                    .ok()
                    .and_then(|info| link_id(&info))
                    .is_some_and(|id| ids.contains(&id))
        });
        if holds {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    found
}

/// The `link_id` of a BPF link's `fdinfo`.
fn link_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("link_id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// The few `bpf()` commands aya does not offer on a bare descriptor: pinning one, opening a pin,
/// asking an object's id, and whether a link id still exists.
mod sys {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
            unix::ffi::OsStrExt as _,
        },
        path::Path,
    };

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

    /// `bpf_attr` for `BPF_OBJ_PIN` and `BPF_OBJ_GET`; the padding is explicit, since the
    /// kernel refuses (EINVAL) any byte past the command's fields that is not zero.
    #[repr(C)]
    #[derive(Default)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _padding: u32,
    }

    /// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// `bpf_attr` for `BPF_LINK_GET_FD_BY_ID`.
    #[repr(C)]
    #[derive(Default)]
    struct IdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a `bpf_attr` prefix of the command's layout, alive for the call;
        // the kernel reads (and for some commands writes) only `size_of::<T>()` bytes of it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    fn c_path(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))
    }

    /// Pins the object `fd` at `path` (which must not exist).
    pub(crate) fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let path = c_path(path)?;
        let mut attr = ObjAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: fd.as_raw_fd() as u32,
            ..ObjAttr::default()
        };
        bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
    }

    /// A descriptor of the object pinned at `path`.
    pub(crate) fn get(path: &Path) -> io::Result<OwnedFd> {
        let path = c_path(path)?;
        let mut attr = ObjAttr {
            pathname: path.as_ptr() as u64,
            ..ObjAttr::default()
        };
        let fd = bpf(BPF_OBJ_GET, &mut attr)?;
        // SAFETY: BPF_OBJ_GET returned a new descriptor, which nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The kernel's id of the map or link `fd` (both infos begin with `type`, then `id`).
    pub(crate) fn id(fd: BorrowedFd<'_>) -> io::Result<u32> {
        let mut info = [0u32; 2];
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&info) as u32,
            info: info.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[1])
    }

    /// The id of the object pinned at `path`.
    pub(crate) fn pinned_id(path: &Path) -> io::Result<u32> {
        id(get(path)?.as_fd())
    }

    /// Whether the link `id` still exists: pinned, or held by a process.
    pub(crate) fn link_exists(id: u32) -> bool {
        let mut attr = IdAttr {
            id,
            ..IdAttr::default()
        };
        match bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => {
                // SAFETY: a new descriptor, closed here.
                drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_links_id_is_read_from_its_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1062\nlink_type:\traw_tracepoint\nlink_id:\t42\nprog_tag:\t0123456789abcdef\nprog_id:\t77\ntp_name:\tmark_victim\n";
        assert_eq!(link_id(fdinfo), Some(42));
        assert_eq!(link_id("pos:\t0\nmap_id:\t3\n"), None);
    }
}
