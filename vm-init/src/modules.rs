//! Kernel modules the host packed from the kernel's own package (softdog, for the watchdog
//! tests), already decompressed and listed in dependency order in `/lib/modules/load`: there is
//! no modprobe here, and `finit_module` is all it takes.
use std::os::fd::AsRawFd as _;

const LIST: &str = "/lib/modules/load";

/// Loads every listed module; returns what failed, one line each. A module already loaded (or
/// built in) is fine.
pub fn load_all() -> Vec<String> {
    let Ok(list) = std::fs::read_to_string(LIST) else {
        return Vec::new();
    };
    list.split_whitespace()
        .filter_map(|name| load(name).err())
        .collect()
}

fn load(name: &str) -> Result<(), String> {
    let path = format!("/lib/modules/{name}.ko");
    let file = std::fs::File::open(&path).map_err(|err| format!("open {path}: {err}"))?;
    let params = c"";
    // SAFETY: finit_module reads the open file and the NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    let err = std::io::Error::last_os_error();
    if rc == 0 || err.raw_os_error() == Some(libc::EEXIST) {
        println!("oomcount-vm: loaded module {name}");
        Ok(())
    } else {
        Err(format!("load module {path}: {err}"))
    }
}
