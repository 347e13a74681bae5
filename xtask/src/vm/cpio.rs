//! A writer of `newc` cpio archives, the initramfs format the kernel unpacks.
//!
//! Uncompressed on purpose: every kernel reads it, it needs no tool on the host, and the kernel
//! frees the archive once it is unpacked. Two archives written one after the other form one
//! initramfs (the kernel reads on past each trailer), which is how the per-kernel modules join
//! the binaries shared by every kernel.

/// One archive being written; `finish` adds the trailer.
pub struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

const S_IFLNK: u32 = 0o120_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

impl Cpio {
    /// `first_ino` keeps inode numbers apart between archives joined into one initramfs.
    pub fn new(first_ino: u32) -> Cpio {
        Cpio {
            bytes: Vec::new(),
            next_ino: first_ino,
        }
    }

    /// A folder; `path` is relative to the root (`lib/modules`).
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, (0, 0), data);
    }

    /// A symbolic link at `path` to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, (rdev_major, rdev_minor): (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let size = u32::try_from(data.len()).expect("initramfs files stay under 4 GiB");
        let name_size = u32::try_from(path.len() + 1).expect("short paths");
        // magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        // namesize check, each as 8 hex digits.
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_and_aligned() {
        let mut cpio = Cpio::new(1);
        cpio.file("init", 0o755, b"hello");
        let bytes = cpio.finish();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&header[..6], "070701");
        let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
        assert_eq!(field(0), 1, "ino");
        assert_eq!(field(1), 0o100_755, "mode");
        assert_eq!(field(6), 5, "filesize");
        assert_eq!(field(11), 5, "namesize counts the NUL");
        // 110 + "init\0" = 115, padded to 116; the data ends at 121, padded to 124.
        assert_eq!(&bytes[110..116], b"init\0\0");
        assert_eq!(&bytes[116..121], b"hello");
        assert_eq!(&bytes[124..130], b"070701");
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0"));
        assert_eq!(bytes.len() % 4, 0);
    }
}
