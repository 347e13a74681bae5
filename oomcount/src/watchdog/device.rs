//! The watchdog device: open (which arms it), identify, set its timeout, keep it alive, and close
//! it with or without the magic 'V'.
//!
//! The kernel's watchdog API (Documentation/watchdog/watchdog-api.rst): any write pings, so does
//! the KEEPALIVE ioctl; writing 'V' just before close disarms a driver with MAGICCLOSE; only one
//! opener at a time (a second gets EBUSY). Where the ioctls do not apply (a FIFO or a regular
//! file standing in for a device in tests, or a driver without them) a one-byte write pings.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::FileTypeExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::errno::Errno;

/// `struct watchdog_info` from `<linux/watchdog.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WatchdogInfo {
    pub options: u32,
    pub firmware_version: u32,
    pub identity: [u8; 32],
}

const _: () = assert!(size_of::<WatchdogInfo>() == 40);

/// `WDIOF_MAGICCLOSE`: the driver disarms on 'V' then close.
pub(crate) const WDIOF_MAGICCLOSE: u32 = 0x0100;
/// `WDIOF_KEEPALIVEPING`: the KEEPALIVE ioctl works.
pub(crate) const WDIOF_KEEPALIVEPING: u32 = 0x8000;

mod ioctl {
    use super::WatchdogInfo;
    nix::ioctl_read!(get_support, b'W', 0, WatchdogInfo);
    nix::ioctl_read!(keepalive, b'W', 5, libc::c_int);
    nix::ioctl_readwrite!(set_timeout, b'W', 6, libc::c_int);
    nix::ioctl_read!(get_timeout, b'W', 7, libc::c_int);
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error(
        "{0} is busy: another program holds it (systemd's RuntimeWatchdogSec, watchdog(8), or another oomcount); stop it, or set device = \"\" under [watchdog]"
    )]
    Busy(PathBuf),
    #[error(
        "no watchdog device at {0}: load a driver (`modprobe softdog`), name another device, or set device = \"\" under [watchdog]"
    )]
    Missing(PathBuf),
    #[error("cannot open the watchdog {path} (run the daemon as root)")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The keepalive interval is not below the timeout the driver reports: found at start,
    /// before the first keepalive, and said as a config error (file, line, keys).
    #[error(transparent)]
    Interval(#[from] crate::config::ConfigError),
    #[error("the watchdog {path} refused the timeout {timeout}s")]
    Timeout {
        path: PathBuf,
        timeout: u64,
        #[source]
        source: Errno,
    },
}

/// An open, armed watchdog.
#[derive(Debug)]
pub(crate) struct Device {
    file: File,
    path: PathBuf,
    /// Whether the ioctls apply (a character device that answered GETSUPPORT).
    ioctls: bool,
    info: WatchdogInfo,
    timeout: Option<Duration>,
}

impl Device {
    /// Opens (arms) `path` and sets its timeout when asked.
    pub(crate) fn open(path: &Path, timeout: Option<Duration>) -> Result<Device, WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EBUSY) => WatchdogError::Busy(path.to_owned()),
                Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => {
                    WatchdogError::Missing(path.to_owned())
                }
                _ => WatchdogError::Open {
                    path: path.to_owned(),
                    source,
                },
            })?;
        let is_char = file
            .metadata()
            .map(|m| m.file_type().is_char_device())
            .unwrap_or(false);
        let mut info = WatchdogInfo::default();
        // SAFETY: GETSUPPORT fills a struct watchdog_info we own, on our descriptor.
        let ioctls = is_char && unsafe { ioctl::get_support(file.as_raw_fd(), &mut info) }.is_ok();
        let mut device = Device {
            file,
            path: path.to_owned(),
            ioctls,
            info,
            timeout: None,
        };
        if let Some(timeout) = timeout
            && device.ioctls
        {
            // The config refuses what does not fit; never let a cast cut it to its low bits.
            let set = libc::c_int::try_from(timeout.as_secs())
                .map_err(|_| Errno::EINVAL)
                .and_then(|mut secs| {
                    // SAFETY: SETTIMEOUT reads and writes one int we own.
                    unsafe { ioctl::set_timeout(device.file.as_raw_fd(), &mut secs) }
                });
            set.map_err(|source| {
                // Opened is armed: disarm before giving up, where the driver lets us.
                let _ = device.file.write_all(b"V");
                WatchdogError::Timeout {
                    path: path.to_owned(),
                    timeout: timeout.as_secs(),
                    source,
                }
            })?;
        }
        if device.ioctls {
            let mut secs: libc::c_int = 0;
            // SAFETY: GETTIMEOUT writes one int we own.
            if unsafe { ioctl::get_timeout(device.file.as_raw_fd(), &mut secs) }.is_ok() {
                device.timeout = Some(Duration::from_secs(secs.max(0) as u64));
            }
        }
        Ok(device)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The driver's name (`Software Watchdog` for softdog), or "" without the ioctls.
    pub(crate) fn identity(&self) -> String {
        String::from_utf8_lossy(oomcount_common::c_str(&self.info.identity)).into_owned()
    }

    /// WDIOF_* bits from GETSUPPORT (0 without the ioctls).
    pub(crate) fn options(&self) -> u32 {
        self.info.options
    }

    /// The timeout the driver uses, where it says.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether ioctls apply (false for a file or FIFO standing in for a device).
    pub(crate) fn has_ioctls(&self) -> bool {
        self.ioctls
    }

    /// One ping.
    pub(crate) fn keepalive(&mut self) -> io::Result<()> {
        if self.ioctls && self.info.options & WDIOF_KEEPALIVEPING != 0 {
            let mut dummy: libc::c_int = 0;
            // SAFETY: KEEPALIVE writes at most one int we own.
            return unsafe { ioctl::keepalive(self.file.as_raw_fd(), &mut dummy) }
                .map(drop)
                .map_err(io::Error::from);
        }
        self.file.write_all(b"\0")
    }

    /// Closes with the magic 'V': the driver disarms (where it has MAGICCLOSE and was loaded
    /// without nowayout). Returns whether the driver claims MAGICCLOSE.
    pub(crate) fn disarm(mut self) -> io::Result<bool> {
        self.file.write_all(b"V")?;
        Ok(!self.ioctls || self.info.options & WDIOF_MAGICCLOSE != 0)
    }

    /// Closes without the magic: the watchdog stays armed and fires after its timeout.
    pub(crate) fn leave_armed(self) {
        drop(self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_stands_in_with_writes() {
        let dir = std::env::temp_dir().join(format!("oomcount-wd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("watchdog");
        std::fs::write(&path, b"").unwrap();
        let mut device = Device::open(&path, Some(Duration::from_secs(5))).unwrap();
        assert!(!device.has_ioctls());
        assert_eq!(device.timeout(), None);
        device.keepalive().unwrap();
        device.keepalive().unwrap();
        assert!(device.disarm().unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_busy_are_one_line_errors() {
        let err = Device::open(Path::new("/nonexistent/watchdog"), None).unwrap_err();
        assert!(matches!(err, WatchdogError::Missing(_)), "{err:?}");
        assert!(err.to_string().contains("modprobe softdog"));
        let busy = WatchdogError::Busy(PathBuf::from("/dev/watchdog")).to_string();
        assert!(busy.starts_with("/dev/watchdog is busy"));
        assert!(!busy.contains('\n'));
    }
}
