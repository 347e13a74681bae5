//! What is mounted where, from `/proc/self/mountinfo`: the tests find the memory controller and
//! tracefs by what the kernel says is mounted, not by assumed paths, because this host (cgroup
//! v1 split over `/sys/fs/cgroup/*`) and the VM guests (cgroup2 at `/sys/fs/cgroup`) differ.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug)]
pub struct Mount {
    /// The folder of the file system mounted here (`/` unless a bind or a cgroup namespace).
    pub root: PathBuf,
    pub point: PathBuf,
    pub fstype: String,
    pub super_options: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?.to_owned();
        let _source = right.next()?;
        Some(Mount {
            root: PathBuf::from(unescape(left.get(3)?)),
            point: PathBuf::from(unescape(left.get(4)?)),
            fstype,
            super_options: right.next().unwrap_or("").to_owned(),
        })
    }

    /// Whether the super options include `option` (a cgroup v1 controller, say).
    pub fn has_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// Everything mounted, in mount order.
pub fn all() -> Vec<Mount> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter_map(Mount::parse)
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    all().iter().any(|m| m.point == path)
}

/// `mount(2)`, panicking with what failed.
pub fn mount(source: &str, target: &Path, fstype: &str, data: Option<&str>) {
    nix::mount::mount(
        Some(source),
        target,
        Some(fstype),
        nix::mount::MsFlags::empty(),
        data,
    )
    .unwrap_or_else(|err| {
        panic!(
            "mount -t {fstype} {source} {} ({data:?}): {err}",
            target.display()
        )
    });
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let v1 = "40 31 0:35 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        let m = Mount::parse(v1).unwrap();
        assert_eq!(
            (m.fstype.as_str(), m.point.as_path()),
            ("cgroup", Path::new("/sys/fs/cgroup/memory"))
        );
        assert!(m.has_option("memory") && !m.has_option("freezer"));
        let v2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate";
        let m = Mount::parse(v2).unwrap();
        assert_eq!(m.fstype, "cgroup2");
        let spaced = "1 2 0:1 / /mnt/a\\040b rw - tmpfs none rw";
        assert_eq!(Mount::parse(spaced).unwrap().point, Path::new("/mnt/a b"));
    }
}
