//! The file systems oomcount needs, which no one else mounts in this guest: tracefs for the
//! tracepoint formats, bpffs for pins, cgroup2 with the memory controller handed to children so
//! tests can make memory cgroups and OOM them.
use std::ffi::CString;

/// (file system type, mount point), in order: each needs the ones before it.
const MOUNTS: &[(&str, &str)] = &[
    ("proc", "/proc"),
    ("sysfs", "/sys"),
    ("devtmpfs", "/dev"),
    ("tmpfs", "/dev/shm"),
    ("tracefs", "/sys/kernel/tracing"),
    ("bpf", "/sys/fs/bpf"),
    ("cgroup2", "/sys/fs/cgroup"),
];

/// Mounts everything and enables the memory controller; returns what failed, one line each.
pub fn mount_all() -> Vec<String> {
    let mut errors: Vec<String> = MOUNTS
        .iter()
        .filter_map(|&(fstype, target)| mount(fstype, target).err())
        .collect();
    let control = "/sys/fs/cgroup/cgroup.subtree_control";
    if let Err(err) = std::fs::write(control, "+memory") {
        errors.push(format!("write +memory to {control}: {err}"));
    }
    errors
}

/// Brings the loopback interface up, as every system's network setup does (the kernel starts
/// it down): the daemon's metrics port listens on 127.0.0.1.
pub fn loopback_up() -> Result<(), String> {
    let fail = |what: &str| format!("bring lo up: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: a socket only for the ioctls below, closed at the end.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: fd is a socket, ifr a valid ifreq naming an interface, for the flag ioctls.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            Err(fail("SIOCGIFFLAGS"))
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
                Err(fail("SIOCSIFFLAGS"))
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing the socket made above.
    unsafe { libc::close(fd) };
    result
}

/// The user database every Debian system has (root, and nobody for unprivileged work such as
/// the kill hooks' default user); the initramfs has none.
pub fn user_database() -> Vec<String> {
    let files = [
        (
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    let _ = std::fs::create_dir_all("/etc");
    files
        .iter()
        .filter(|(path, _)| !std::path::Path::new(path).exists())
        .filter_map(|(path, text)| {
            std::fs::write(path, text)
                .err()
                .map(|err| format!("write {path}: {err}"))
        })
        .collect()
}

fn mount(fstype: &str, target: &str) -> Result<(), String> {
    // Most mount points exist already (in sysfs); the others are made here.
    let _ = std::fs::create_dir_all(target);
    let c_fstype = CString::new(fstype).expect("no NUL in a constant");
    let c_target = CString::new(target).expect("no NUL in a constant");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; data may be null.
    let rc = unsafe {
        libc::mount(
            c_fstype.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ))
    }
}
