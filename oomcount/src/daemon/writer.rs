//! The files the daemon rewrites after events (the stat file, the metrics' textfile): written at
//! once on the runtime's thread, the replaced file freed on the blocking thread.
//!
//! The rename that replaces a file drops the old one, and freeing it can sleep: ext4 mounted
//! with `discard` discards its blocks there, 0.3-0.5 ms per file and two files per batch of
//! events (measured here with the daemon's off-CPU stacks), time in which the runtime answered
//! no scrape and no client. The write itself stays on the runtime's thread, which is running
//! anyway after events: handed to the blocking thread, the textfile waited for that thread to be
//! scheduled, up to 2.5 ms on a CPU still busy with the kill (the kernel printing its report).
use std::path::Path;

/// Replaces `path` with `contents` (`files::replace_atomic`); a failure is logged, never fatal.
pub(crate) fn write(path: &Path, contents: &str) {
    match crate::files::replace_atomic(path, contents) {
        Ok(Some(replaced)) => free(replaced),
        Ok(None) => {}
        Err(err) => log::warn!("cannot write {} ({err})", path.display()),
    }
}

/// Drops the last reference to a replaced file on the blocking thread (at once outside a
/// runtime).
fn free(replaced: std::fs::File) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(replaced))),
        Err(_) => drop(replaced),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::files::TempDir;

    #[test]
    fn the_replaced_file_lives_until_its_descriptor_is_dropped() {
        let dir = TempDir::new("writer");
        let path = dir.0.join("stat");
        assert!(
            crate::files::replace_atomic(&path, "1\n")
                .unwrap()
                .is_none()
        );
        let first = std::fs::metadata(&path).unwrap().ino();
        let replaced = crate::files::replace_atomic(&path, "2\n").unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
        // Renamed over, and still referenced: no name left, the same inode.
        let held = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&replaced)
        ))
        .unwrap();
        assert_eq!((held.ino(), held.nlink()), (first, 0));
        write(&path, "3\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3\n");
    }
}
