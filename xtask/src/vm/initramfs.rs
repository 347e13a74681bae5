//! The guest's initramfs: oomcount's own static binaries and nothing else (no shell, no
//! busybox), plus, per kernel, the modules the tests need from that kernel's package.
//!
//! ```text
//! /init                  oomcount-vm-init
//! /bin/oomcount          the daemon and CLI
//! /bin/oomcount-hog      the memory hog the tests OOM
//! /tests/NAME            each integration test executable
//! /lib/modules/NAME.ko   decompressed, loaded in the order of /lib/modules/load
//! ```
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use super::build::Guest;
use super::cpio::Cpio;
use super::kernel::Kernel;

/// Modules every guest loads at boot, when the kernel has them as modules (the watchdog tests
/// need softdog). Their dependencies come along.
const MODULES: &[&str] = &["softdog"];

/// The part shared by every kernel.
pub fn common(guest: &Guest) -> anyhow::Result<Vec<u8>> {
    let mut cpio = Cpio::new(1);
    for dir in [
        "bin",
        "tests",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init's output before devtmpfs is mounted.
    cpio.char_device("dev/console", 5, 1);
    let mut add = |dest: &str, src: &Path| -> anyhow::Result<()> {
        let data = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        cpio.file(dest, 0o755, &data);
        Ok(())
    };
    add("init", &guest.init)?;
    add("bin/oomcount", &guest.oomcount)?;
    add("bin/oomcount-hog", &guest.hog)?;
    for (name, path) in &guest.tests {
        add(&format!("tests/{name}"), path)?;
    }
    Ok(cpio.finish())
}

/// The common part followed by `kernel`'s modules, written to `out`.
pub fn write(common: &[u8], kernel: &Kernel, out: &Path) -> anyhow::Result<()> {
    let mut cpio = Cpio::new(1_000_000);
    let mut order = Vec::new();
    for name in MODULES {
        add_module(kernel, name, &mut cpio, &mut order)?;
    }
    cpio.file(
        "lib/modules/load",
        0o644,
        format!("{}\n", order.join("\n")).as_bytes(),
    );
    let mut bytes = common.to_vec();
    bytes.extend(cpio.finish());
    std::fs::write(out, bytes).with_context(|| format!("write {}", out.display()))
}

/// Adds module `name` after what it depends on; nothing for a built-in one.
fn add_module(
    kernel: &Kernel,
    name: &str,
    cpio: &mut Cpio,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    let name = name.replace('-', "_");
    if order.contains(&name) {
        return Ok(());
    }
    let Some(file) = find_module(&kernel.modules.join("kernel"), &name) else {
        let builtin = std::fs::read_to_string(kernel.modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .any(|line| line.ends_with(&format!("/{name}.ko")));
        if !builtin {
            eprintln!(
                "vm-test: {} has no module {name}; tests that need it will say so",
                kernel.release
            );
        }
        return Ok(());
    };
    let data = decompress(&file)?;
    for dependency in depends(&data) {
        add_module(kernel, &dependency, cpio, order)?;
    }
    cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &data);
    order.push(name);
    Ok(())
}

/// `NAME.ko[.xz|.zst]` anywhere below `dir` (file names may spell `_` as `-`).
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
            continue;
        }
        let file_name = entry.file_name().to_string_lossy().replace('-', "_");
        if [".ko", ".ko.xz", ".ko.zst"]
            .iter()
            .any(|ext| file_name == format!("{name}{ext}"))
        {
            return Some(path);
        }
    }
    None
}

/// The module's bytes, decompressed: there is no modprobe in the guest, and `finit_module`
/// takes compressed modules only on newer kernels.
pub(super) fn decompress(file: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match file.extension().and_then(|e| e.to_str()) {
        Some("xz") => ["xz", "-dc"],
        Some("zst") => ["zstd", "-qdc"],
        _ => return std::fs::read(file).with_context(|| format!("read {}", file.display())),
    };
    let out = Command::new(tool[0])
        .arg(tool[1])
        .arg(file)
        .output()
        .with_context(|| format!("run {} (cargo xtask setup installs it)", tool[0]))?;
    anyhow::ensure!(
        out.status.success(),
        "{} {} failed: {}",
        tool.join(" "),
        file.display(),
        out.status
    );
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` strings.
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(start) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &module[start + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::depends;

    #[test]
    fn depends_reads_the_modinfo_entry() {
        let module = b"\x7fELF...\0license=GPL\0depends=watchdog,xen_foo\0vermagic=6.1\0";
        assert_eq!(depends(module), ["watchdog", "xen_foo"]);
        assert!(depends(b"\0depends=\0name=softdog\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }
}
