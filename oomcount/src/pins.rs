//! The probe's pins in bpffs: what lets the kernel keep counting, and the counts survive, while
//! no daemon runs.
//!
//! A daemon pins the counter map, the event ring buffer and the two programs' links under
//! `/sys/fs/bpf/oomcount/`. A daemon started later adopts them: the programs never stopped, so
//! nothing was missed, and the events produced meanwhile wait in the ring buffer (up to its size;
//! beyond, they are counted as dropped). The counter map also holds, in slots the programs never
//! touch, the pins' layout version and when they were attached, so that a newer oomcount can
//! recognise older pins and replace them without losing their counts.
//!
//! Whoever can remove the pins blinds the probe once the daemon is gone, and whoever can plant
//! them feeds a daemon their counts. So the pin folder is the daemon's own: made by it with mode
//! 0700, or an existing folder of root's that no other user can write, and every folder above it
//! is root's and not writable by others unless sticky ([`ensure_dir`]). bpffs, where the daemon
//! mounts it, gets `mode=0700` (mounted without a mode it is world-writable and sticky, like /tmp).
use std::{
    fs, io,
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
    Pin(PathBuf, #[source] aya::pin::PinError),
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
    files::own_folder(dir, MODE).map_err(refuse)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
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

    /// The counts to carry into a new probe: every counter the programs keep, the attach time
    /// and the event sequence, whose indexes are the same in every layout version.
    pub fn carry_over(&self) -> Result<PerCpuValuesByIndex, PinError> {
        let mut carried = Vec::new();
        for index in (0..counter::VERSION).chain([
            counter::ATTACHED_AT_NS,
            counter::SEQ,
            counter::DROPS_SEEN,
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

/// Pins the maps and links of a freshly attached probe.
pub fn pin_maps(dir: &Path, counters: &Map, events: &Map) -> Result<(), PinError> {
    for (name, map) in [(pin::COUNTERS, counters), (pin::EVENTS, events)] {
        let path = dir.join(name);
        map.pin(&path).map_err(|err| PinError::Pin(path, err))?;
    }
    Ok(())
}

pub fn pin_links(dir: &Path, signal: FdLink, mark: FdLink) -> Result<(), PinError> {
    for (name, link) in [(pin::LINK_SIGNAL, signal), (pin::LINK_MARK, mark)] {
        let path = dir.join(name);
        link.pin(&path).map_err(|err| PinError::Pin(path, err))?;
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
