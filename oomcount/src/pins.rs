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
//! Whoever can remove the pins blinds the probe once the daemon is gone, and whoever can plant
//! them feeds a daemon their counts. So the pin folder is the daemon's own: made by it with mode
//! 0700, or an existing folder of root's that no other user can write, and every folder above it
//! is root's and not writable by others unless sticky ([`ensure_dir`]). bpffs, where the daemon
//! mounts it, gets `mode=0700` (mounted without a mode it is world-writable and sticky, like /tmp).
//!
//! Replacing pins (an upgrade, or pins left without links by a crash) carries the counts and the
//! latch into the new counter map before it is pinned, and the new maps take the old ones' names
//! by an atomic rename: at every step the folder holds a counter map with the latch.
use std::{
    fs, io,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::links::FdLink,
};
use oomcount_common::{counter, pin};

use crate::{
    files::{self, Unsafe},
    probe::{Counters, PerCpuValuesByIndex, read_counters},
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
    Read(#[source] Box<crate::probe::ProbeError>),
}

/// Makes `dir` ready to pin in: mounts bpffs (mode 0700) at `/sys/fs/bpf` where `dir` is under
/// it and it is not mounted, then makes `dir` the daemon's own folder, or refuses it.
pub fn ensure_dir(dir: &Path) -> Result<(), PinError> {
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

/// What a daemon takes over from pins: the counters, the events, when they were attached (ns).
pub type Adopted = (PerCpuArray<MapData, u64>, RingBuf<MapData>, u64);

/// Pins found in a folder.
pub struct Pinned {
    dir: PathBuf,
    counters: PerCpuArray<MapData, u64>,
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
        let counters = open().map_err(|err| PinError::Open(path.clone(), err))?;
        let slot = |index: u32| -> u64 {
            counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        let (version, attached_ns) = (slot(counter::VERSION), slot(counter::ATTACHED_AT_NS));
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            counters,
            version,
            attached_ns,
        }))
    }

    /// The layout version recorded with the pins (0: none recorded).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the pinned probe was attached (Unix ns).
    pub fn attached_ns(&self) -> u64 {
        self.attached_ns
    }

    /// Whether both links are pinned (a daemon that died while pinning leaves only maps).
    pub fn links_present(&self) -> bool {
        [pin::LINK_SIGNAL, pin::LINK_MARK]
            .iter()
            .all(|name| self.dir.join(name).exists())
    }

    pub fn counters(&self) -> Result<Counters, PinError> {
        read_counters(&self.counters).map_err(|err| PinError::Read(Box::new(err)))
    }

    /// The counts to carry into a new probe: every counter the programs keep, the attach time,
    /// the event sequence and the unrecoverable latch, whose indexes are the same in every layout
    /// version.
    pub fn carry_over(&self) -> Result<PerCpuValuesByIndex, PinError> {
        let mut carried = Vec::new();
        for index in (0..counter::VERSION).chain([
            counter::ATTACHED_AT_NS,
            counter::SEQ,
            counter::DROPS_SEEN,
            counter::UNRECOVERABLE_AT,
            counter::KILL_EVENTS_DROPPED_GLOBAL,
        ]) {
            let value = self
                .counters
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
            carried.push((index, value));
        }
        Ok(carried)
    }

    /// The pinned maps, for a daemon that adopts them.
    pub fn into_parts(self) -> Result<Adopted, PinError> {
        let path = self.dir.join(pin::EVENTS);
        let open = || -> Result<RingBuf<MapData>, aya::maps::MapError> {
            Map::from_map_data(MapData::from_pin(&path)?)?.try_into()
        };
        let events = open().map_err(|err| PinError::Open(path.clone(), err))?;
        Ok((self.counters, events, self.attached_ns))
    }
}

/// The descriptor of a counter map (to pin it, or to keep it).
pub fn map_fd(map: &PerCpuArray<MapData, u64>) -> BorrowedFd<'_> {
    use aya::maps::IterableMap as _;
    map.map().fd().as_fd()
}

/// Pins a freshly loaded probe's maps, each under a temporary name first, then renamed to its
/// own: a rename replaces the map of the pins being replaced at once, so that a crash at any
/// point leaves a counter map in the folder.
pub fn pin_maps(
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

/// Pins the links of a freshly attached probe.
pub fn pin_links(dir: &Path, signal: FdLink, mark: FdLink) -> Result<(), PinError> {
    for (name, link) in [(pin::LINK_SIGNAL, signal), (pin::LINK_MARK, mark)] {
        let path = dir.join(name);
        link.pin(&path)
            .map_err(|err| PinError::Pin(path, io::Error::other(err)))?;
    }
    Ok(())
}

/// Removes the link pins in `dir`: the programs detach unless something else holds them.
pub fn remove_links(dir: &Path) -> Result<(), PinError> {
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
pub fn remove(dir: &Path) -> Result<usize, PinError> {
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

/// `BPF_OBJ_PIN` on a bare descriptor: aya pins only its own map types, and a link only by giving
/// it up.
mod sys {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd as _, BorrowedFd},
            unix::ffi::OsStrExt as _,
        },
        path::Path,
    };

    const BPF_OBJ_PIN: libc::c_long = 6;

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
    pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let path = c_path(path)?;
        let mut attr = ObjAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: fd.as_raw_fd() as u32,
            ..ObjAttr::default()
        };
        bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
    }
}
