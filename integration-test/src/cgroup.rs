//! Throwaway memory cgroups, v1 and v2, so that every OOM kill a test makes is a *memcg* OOM in
//! a small group of our own processes, never a global one.
//!
//! Hosts differ: this development host mounts the cgroup v1 memory controller at
//! `/sys/fs/cgroup/memory` (its cgroup2 at `/sys/fs/cgroup/unified` has no memory controller),
//! while the VM guests and most current distributions are pure cgroup2 at `/sys/fs/cgroup`.
//! [`memory_hierarchy`] finds which one holds the controller; [`MemCg`] hides the differences
//! (limit file, oom-kill counter) and removes its group on drop, killing what is left in it:
//! everything in a test's group was started by that test.
//!
//! Groups live under an `oomcount-test` parent. On v1 the parent sits in this process's own
//! memory cgroup, so the tests stay inside whatever confines the session; on v2 it sits at the
//! root, because the no-internal-process rule forbids enabling the memory controller for the
//! children of a populated cgroup.
use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    mounts::{self, is_mount_point},
    unique_name,
    wait::{deadline, in_vm, poll_until, wait_until},
};

/// The cgroup version that holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where the memory controller is mounted and where this crate makes its groups.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub version: Version,
    /// The mount point of the hierarchy.
    pub mount: PathBuf,
    /// The folder of the hierarchy mounted there (`/` unless a bind mount or a namespace).
    pub root: PathBuf,
    /// The folder under which the `oomcount-test` parent is made.
    pub base: PathBuf,
}

/// Finds the memory controller: a cgroup v1 hierarchy mounted with `memory`, else a cgroup2
/// mount whose `cgroup.controllers` lists `memory`. In the VM guest, mounts cgroup2 at
/// `/sys/fs/cgroup` when nothing is mounted there.
pub fn memory_hierarchy() -> Hierarchy {
    if let Some(found) = find_memory_hierarchy() {
        return found;
    }
    if in_vm() && !is_mount_point(Path::new("/sys/fs/cgroup")) {
        fs::create_dir_all("/sys/fs/cgroup").expect("mkdir /sys/fs/cgroup");
        mounts::mount("cgroup2", Path::new("/sys/fs/cgroup"), "cgroup2", None);
        if let Some(found) = find_memory_hierarchy() {
            return found;
        }
    }
    panic!(
        "no memory cgroup controller is mounted (kernel {}); mount cgroup2 or the v1 memory controller",
        crate::kernel_release()
    )
}

fn find_memory_hierarchy() -> Option<Hierarchy> {
    let mounts = mounts::all();
    if let Some(m) = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.has_option("memory"))
    {
        let base = own_v1_group("memory")
            .and_then(|own| own.strip_prefix(&m.root).ok().map(|rel| m.point.join(rel)))
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(|| m.point.clone());
        return Some(Hierarchy {
            version: Version::V1,
            mount: m.point.clone(),
            root: m.root.clone(),
            base,
        });
    }
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .find(|m| {
            fs::read_to_string(m.point.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        })
        .map(|m| Hierarchy {
            version: Version::V2,
            mount: m.point.clone(),
            root: m.root.clone(),
            base: m.point.clone(),
        })
}

/// This process's group in the v1 hierarchy that has `controller`, from `/proc/self/cgroup`.
pub fn own_v1_group(controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| PathBuf::from(path))
    })
}

/// A throwaway memory cgroup; removed on drop after killing what is left in it.
#[derive(Debug)]
pub struct MemCg {
    dir: PathBuf,
    version: Version,
}

impl MemCg {
    /// Makes a new group under `oomcount-test` with a memory limit of `limit` bytes.
    pub fn new(label: &str, limit: u64) -> MemCg {
        let hierarchy = memory_hierarchy();
        let parent = hierarchy.base.join("oomcount-test");
        let name = unique_name(label);
        let group = wait_until(
            deadline(Duration::from_secs(5)),
            "the oomcount-test parent group",
            || {
                if hierarchy.version == Version::V2 {
                    enable_memory(&hierarchy.base)
                        .map_err(|e| format!("{}: {e}", hierarchy.base.display()))?;
                }
                mkdir_ok_if_exists(&parent)
                    .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
                if hierarchy.version == Version::V2 {
                    enable_memory(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                // The parent may vanish between the two mkdirs when another test process removes it.
                let dir = parent.join(&name);
                fs::create_dir(&dir)
                    .map(|()| dir)
                    .map_err(|e| format!("mkdir {}: {e}", parent.join(&name).display()))
            },
        );
        let cg = MemCg {
            dir: group,
            version: hierarchy.version,
        };
        cg.set_limit(limit);
        cg
    }

    /// Makes a nested group inside this one, with its own limit if `limit` is given (on v2 this
    /// group then may hold no process itself).
    pub fn child(&self, label: &str, limit: Option<u64>) -> MemCg {
        if self.version == Version::V2 {
            enable_memory(&self.dir).unwrap_or_else(|err| {
                panic!("enable +memory for the children of {}: {err} (a v2 group with members cannot have children with controllers)", self.dir.display())
            });
        }
        let dir = self.dir.join(unique_name(label));
        fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let cg = MemCg {
            dir,
            version: self.version,
        };
        if let Some(limit) = limit {
            cg.set_limit(limit);
        }
        cg
    }

    /// [`MemCg::child`] with exactly `name` (a name shaped like a container's scope or a pod's
    /// slice); the caller makes it unique by its parent.
    pub fn child_named(&self, name: &str, limit: Option<u64>) -> MemCg {
        if self.version == Version::V2 {
            enable_memory(&self.dir).unwrap_or_else(|err| {
                panic!(
                    "enable +memory for the children of {}: {err}",
                    self.dir.display()
                )
            });
        }
        let dir = self.dir.join(name);
        fs::create_dir(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let cg = MemCg {
            dir,
            version: self.version,
        };
        if let Some(limit) = limit {
            cg.set_limit(limit);
        }
        cg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// This group's path in the memory controller's hierarchy, as the kernel names it (in its
    /// `oom-kill:` lines, and as oomcount's `cgroup`): `/` is the hierarchy's root, whatever
    /// folder this process's group is in (on v1 hosts the `oomcount-test` parent sits in it).
    pub fn path(&self) -> String {
        hierarchy_path(&self.dir)
    }

    /// The group's id as the kernel numbers it: its kernfs node id, the folder's inode number.
    pub fn id(&self) -> u64 {
        inode(&self.dir)
    }

    /// cgroup v1 before 5.16: makes the limits of this group apply to the groups made in it
    /// (`memory.use_hierarchy`, which must be set before it has children). A no-op where
    /// hierarchy is always on (cgroup2, v1 since 5.16).
    pub fn use_hierarchy(&self) {
        let file = self.dir.join("memory.use_hierarchy");
        if self.version == Version::V1 && fs::read_to_string(&file).is_ok_and(|v| v.trim() == "0") {
            self.write("memory.use_hierarchy", "1");
        }
    }

    /// Sets the memory limit; on v2 also forbids swap so that the limit is hit, not swapped past.
    pub fn set_limit(&self, bytes: u64) {
        match self.version {
            Version::V1 => self.write("memory.limit_in_bytes", &bytes.to_string()),
            Version::V2 => {
                self.write("memory.max", &bytes.to_string());
                if self.dir.join("memory.swap.max").exists() {
                    self.write("memory.swap.max", "0");
                }
            }
        }
    }

    /// cgroup2's `memory.oom.group`: the OOM killer kills every member of the group together.
    /// Panics on v1, which has no such thing.
    pub fn set_oom_group(&self) {
        assert_eq!(
            self.version,
            Version::V2,
            "memory.oom.group exists only in cgroup2"
        );
        self.write("memory.oom.group", "1");
    }

    /// Moves process `pid` (all its threads) into this group.
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    /// The processes in this group (not in its children).
    pub fn pids(&self) -> Vec<u32> {
        read_pids(&self.dir)
    }

    /// The OOM kills of this group, from the kernel: v1 `memory.oom_control` `oom_kill` (this
    /// group only, not its children), v2 `memory.events` `oom_kill` (children included).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = self.read(file);
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no oom_kill line in {}: {text:?}",
                    self.dir.join(file).display()
                )
            })
    }

    /// The memory charged to this group now, in bytes.
    pub fn usage(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        let text = self.read(file);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{file} is not a number: {text:?}"))
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        fs::write(&path, value)
            .unwrap_or_else(|err| panic!("write {value:?} to {}: {err}", path.display()));
    }

    fn read(&self, file: &str) -> String {
        let path = self.dir.join(file);
        fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
    }
}

impl Drop for MemCg {
    fn drop(&mut self) {
        if let Err(err) = remove_tree(&self.dir) {
            if std::thread::panicking() {
                eprintln!("cleanup: {err}");
            } else {
                panic!("cleanup: {err}");
            }
        }
        // The shared parent goes when the last test process leaves it; busy means another
        // process still uses it.
        if let Some(parent) = self.dir.parent().filter(|p| p.ends_with("oomcount-test")) {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Kills every process in `dir` and its descendant groups (all ours) and removes the groups,
/// deepest first, polling until the kernel lets go of each.
fn remove_tree(dir: &Path) -> Result<(), String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // already gone
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let what = format!("{} to empty and go", dir.display());
    poll_until(deadline(Duration::from_secs(10)), &what, || {
        for pid in read_pids(dir) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        match fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(format!("rmdir: {err}; members {:?}", read_pids(dir))),
        }
    })
}

/// The path of the cgroup folder `dir` in its memory hierarchy (see [`MemCg::path`]).
pub fn hierarchy_path(dir: &Path) -> String {
    let hierarchy = memory_hierarchy();
    let relative = dir.strip_prefix(&hierarchy.mount).unwrap_or_else(|_| {
        panic!(
            "{} is not in the memory hierarchy at {}",
            dir.display(),
            hierarchy.mount.display()
        )
    });
    let path = Path::new("/").join(&hierarchy.root).join(relative);
    path.to_str().expect("cgroup paths are UTF-8").to_owned()
}

/// The inode number of `path` (a cgroup folder's is its kernfs id).
pub fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("stat {}: {err}", path.display()))
        .ino()
}

/// The memory cgroup of process `pid` as a path in the memory hierarchy (`/proc/PID/cgroup`:
/// the v1 line with `memory`, else the cgroup2 line `0::PATH`).
pub fn memcg_of(pid: u32) -> String {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).unwrap_or_else(|err| panic!("read {file}: {err}"));
    let field = |want: &dyn Fn(&str, &str) -> bool| {
        text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            want(id, controllers).then(|| path.to_owned())
        })
    };
    let path = match memory_hierarchy().version {
        Version::V1 => field(&|_, c| c.split(',').any(|c| c == "memory")),
        Version::V2 => field(&|id, c| id == "0" && c.is_empty()),
    };
    path.unwrap_or_else(|| panic!("no memory cgroup in {file}: {text:?}"))
}

fn read_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn mkdir_ok_if_exists(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Adds `memory` to the controllers that `dir`'s children get (cgroup2).
fn enable_memory(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    if fs::read_to_string(&control)?
        .split_whitespace()
        .any(|c| c == "memory")
    {
        return Ok(());
    }
    fs::write(&control, "+memory")
}
