//! Makes sure this machine has what oomcount's build and tests need, installing what is missing.
//!
//! Idempotent and cheap when everything is present (a few `dpkg-query`s and one `rustup` call),
//! loud when it installs: each install is announced on stderr before it runs. It assumes a Debian
//! 12 machine and root, as CI has; elsewhere it says what to install instead of failing later in
//! the middle of a build.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::check;

/// What the task at hand needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Building the eBPF object and the daemon.
    Build,
    /// Building, plus booting kernels under QEMU.
    Vm,
}

/// Debian packages the build needs: LLVM 22 for bpf-linker.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
/// Debian packages the VM matrix needs besides QEMU (which comes from bookworm-backports).
const VM_PACKAGES: &[&str] = &["cpio", "xz-utils", "zstd", "kmod", "libc6-dev"];
const BPF_LINKER_VERSION: &str = "0.13";

pub fn run(needs: Needs) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if needs == Needs::Vm {
        missing.extend(VM_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)));
    }
    if !missing.is_empty() {
        apt_install(&missing, None)?;
    }
    if needs == Needs::Vm && !qemu_is_recent() {
        ensure_backports()?;
        apt_install(&["qemu-system-x86"], Some("bookworm-backports"))?;
    }
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
        .unwrap_or(false)
}

fn apt_install(packages: &[&str], release: Option<&str>) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root, or `apt-get install {}`",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!("setup: installing {} (apt-get)", packages.join(" "));
    check(Command::new("apt-get").args(["update", "-q"]))?;
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ]);
    if let Some(release) = release {
        cmd.args(["-t", release]);
    }
    check(cmd.args(packages))
}

/// QEMU 10 from bookworm-backports: bookworm's own 7.2 is older than the recipe was measured on.
fn qemu_is_recent() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let version = text.split_whitespace().nth(3)?.to_owned();
            version.split('.').next()?.parse::<u32>().ok()
        })
        .is_some_and(|major| major >= 8)
}

/// Adds bookworm-backports on the mirror apt already uses, when no source names it.
fn ensure_backports() -> anyhow::Result<()> {
    let mut sources = String::new();
    for dir in ["/etc/apt/sources.list", "/etc/apt/sources.list.d"] {
        let path = std::path::Path::new(dir);
        let files: Vec<std::path::PathBuf> = if path.is_dir() {
            std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect()
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            sources.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
            sources.push('\n');
        }
    }
    if sources.contains("bookworm-backports") {
        return Ok(());
    }
    let mirror = sources
        .split_whitespace()
        .find(|word| word.starts_with("http") && word.trim_end_matches('/').ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .trim_end_matches('/')
        .to_owned();
    let file = "/etc/apt/sources.list.d/bookworm-backports.sources";
    eprintln!("setup: adding bookworm-backports ({mirror}) as {file}");
    std::fs::write(
        file,
        format!(
            "Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .with_context(|| format!("write {file}"))
}

fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup not found: oomcount's eBPF side needs rustup's nightly toolchain")?;
    let list = String::from_utf8_lossy(&installed.stdout);
    if installed.status.success() && list.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: installing the nightly toolchain's rust-src (rustup)");
    check(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = &version
        && String::from_utf8_lossy(&out.stdout).contains(&format!(" {BPF_LINKER_VERSION}."))
    {
        return Ok(());
    }
    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (cargo install, a few minutes)"
    );
    check(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
