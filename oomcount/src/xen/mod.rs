//! Xen: each guest publishes its OOM count, verdict and vitals in xenstore, and dom0 lists
//! every guest's (issue 15).
//!
//! No existing tool carries an OOM count through xenstore, and the Rust xenstore crates are
//! GPL, so the protocol is our own: [`wire`] (the codec of `xs_wire.h`, pure), [`client`] (a
//! blocking client with deadlines, for a thread of its own or the CLI), [`report`] (the keys a
//! guest writes, and their typed, distrustful parsing), [`guest`] (the coalescing writer) and
//! [`guests`] (dom0's listing and watch).
pub mod client;
pub mod guest;
pub mod guests;
pub mod report;
pub mod wire;

use std::path::Path;

/// What this machine is to Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not under Xen (or xenfs and the xenbus device are both missing).
    None,
    /// A guest (domU): publishes its own report.
    Guest,
    /// The control domain (`/proc/xen/capabilities` says `control_d`).
    Dom0,
}

/// Looks at `/proc/xen` and `/dev/xen/xenbus` under `root` (`/` outside tests).
pub fn role(root: &Path) -> Role {
    let caps = root.join("proc/xen/capabilities");
    if let Ok(c) = std::fs::read_to_string(&caps)
        && c.split(',').any(|w| w.trim() == "control_d")
    {
        return Role::Dom0;
    }
    if root.join("proc/xen").is_dir() || root.join("dev/xen/xenbus").exists() {
        // /proc/xen exists in guests too (xenfs may not be mounted there: the device is enough).
        return Role::Guest;
    }
    Role::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let d = std::env::temp_dir().join(format!("oomcount-xenrole-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(role(&d), Role::None);
        std::fs::create_dir_all(d.join("dev/xen")).unwrap();
        std::fs::write(d.join("dev/xen/xenbus"), "").unwrap();
        assert_eq!(role(&d), Role::Guest);
        std::fs::create_dir_all(d.join("proc/xen")).unwrap();
        std::fs::write(d.join("proc/xen/capabilities"), "control_d\n").unwrap();
        assert_eq!(role(&d), Role::Dom0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
