//! Makes sure this machine has what oomcount's build and tests need, installing what is missing.
//!
//! Idempotent and cheap when everything is present (a few `dpkg-query`s, two `rustup` calls and
//! one bpf-linker call), loud when it installs: each install is announced on stderr before it
//! runs. It installs no Rust toolchain and updates none: `oomcount-ebpf/toolchain.rs` pins the one
//! that builds the eBPF crate, and setup only checks that its LLVM and bpf-linker's agree. It assumes a Debian
//! 12 machine and root, as CI has; elsewhere it says what to install instead of failing later in
//! the middle of a build.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::check;

include!("../../oomcount-ebpf/toolchain.rs");

/// What the task at hand needs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Building the eBPF object and the daemon.
    Build,
    /// Building, plus the tools the tests and benchmarks compare against (Prometheus, promtool,
    /// node_exporter, lintian).
    Test,
    /// All of that, plus booting kernels under QEMU.
    Vm,
}

/// Debian packages the build needs besides LLVM's, whose major comes from the eBPF toolchain.
const BUILD_PACKAGES: &[&str] = &["zlib1g-dev", "libzstd-dev"];
/// Debian packages the VM matrix needs besides QEMU (which comes from bookworm-backports).
const VM_PACKAGES: &[&str] = &["cpio", "xz-utils", "zstd", "kmod", "libc6-dev"];
/// Debian packages the tests and benchmarks run for real: a Prometheus server and promtool, the
/// node_exporter that reads the textfile, lintian for the package; gcc and libc6-dev for the
/// LD_PRELOAD shim under which the xenstore tests run Debian's oxenstored without Xen.
const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "prometheus-node-exporter",
    "lintian",
    "gcc",
    "libc6-dev",
];

pub fn run(needs: Needs) -> anyhow::Result<()> {
    let llvm = ebpf_toolchain_llvm()?;
    let llvm_packages = [format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")];
    let mut missing: Vec<&str> = llvm_packages
        .iter()
        .map(String::as_str)
        .chain(BUILD_PACKAGES.iter().copied())
        .filter(|p| !dpkg_installed(p))
        .collect();
    if needs >= Needs::Test {
        missing.extend(TEST_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)));
    }
    if needs == Needs::Vm {
        missing.extend(VM_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)));
    }
    if !missing.is_empty() {
        apt_install(&missing, None).with_context(|| {
            format!(
                "bpf-linker must be built against LLVM {llvm}, the LLVM of the {EBPF_TOOLCHAIN} \
                 toolchain that builds the eBPF crate: install llvm-{llvm}-dev, or pin a toolchain \
                 whose LLVM this system packages in oomcount-ebpf/toolchain.rs"
            )
        })?;
    }
    if needs == Needs::Vm && !qemu_is_recent() {
        ensure_backports()?;
        apt_install(&["qemu-system-x86"], Some("bookworm-backports"))?;
    }
    // The tests build the Debian package: its cargo-deb, pinned, beside bpf-linker.
    if needs >= Needs::Test {
        ensure_cargo_deb()?;
    }
    ensure_bpf_linker(llvm)
}

pub(crate) fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
        .unwrap_or(false)
}

pub(crate) fn apt_install(packages: &[&str], release: Option<&str>) -> anyhow::Result<()> {
    if !nix_is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root, or `apt-get install {}`",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!(
        "setup: installing {} (apt-get, services not started)",
        packages.join(" ")
    );
    // Debian would start prometheus and node_exporter on their public ports: the tests start
    // their own, on loopback.
    let _policy = crate::bench::install::PolicyGuard::deny_all().map_err(anyhow::Error::msg)?;
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

/// Makes sure the pinned eBPF toolchain is there with `rust-src` (`-Z build-std=core` needs it),
/// and returns its LLVM major.
///
/// It never installs or updates a toolchain: a missing one is an error that says what to run. The
/// one thing it may fetch is the `rust-src` component of the pinned toolchain, once.
fn ebpf_toolchain_llvm() -> anyhow::Result<u32> {
    let rustup = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new("rustup")
            .env("RUSTUP_AUTO_INSTALL", "0")
            .args(args)
            .output()
            .with_context(|| {
                format!(
                    "rustup not found: the eBPF crate is built with its {EBPF_TOOLCHAIN} toolchain"
                )
            })
    };
    let components = rustup(&[
        "component",
        "list",
        "--toolchain",
        EBPF_TOOLCHAIN,
        "--installed",
    ])?;
    if !components.status.success() {
        bail!(
            "the eBPF crate is built with the {EBPF_TOOLCHAIN} toolchain, which rustup does not \
             have: run `rustup toolchain install {EBPF_TOOLCHAIN} --profile minimal --component \
             rust-src,clippy,rustfmt`"
        );
    }
    let list = String::from_utf8_lossy(&components.stdout);
    if !list.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!(
            "setup: adding the rust-src component to the {EBPF_TOOLCHAIN} toolchain (rustup)"
        );
        check(
            Command::new("rustup")
                .env("RUSTUP_AUTO_INSTALL", "0")
                .args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    EBPF_TOOLCHAIN,
                ]),
        )
        .context(
            "could not fetch rust-src: without network, install the component from its \
             standalone tarball (see the README, Setup)",
        )?;
    }
    let version = rustup(&["run", EBPF_TOOLCHAIN, "rustc", "-vV"])?;
    let text = String::from_utf8_lossy(&version.stdout);
    // rustup may hold the pin as a link to `stable` (this image does), which `rustup update`
    // moves: say so. The build still works while the LLVM majors agree, which is checked next.
    if !text.contains(&format!("release: {EBPF_TOOLCHAIN}\n")) {
        let release = text
            .lines()
            .find(|l| l.starts_with("release: "))
            .unwrap_or("release: ?");
        eprintln!(
            "setup: note: the {EBPF_TOOLCHAIN} toolchain says `{release}` (a link to a moved \
             toolchain?): `rustup toolchain install {EBPF_TOOLCHAIN}` restores the pin"
        );
    }
    llvm_major(&text, "LLVM version: ").with_context(|| {
        format!("`rustup run {EBPF_TOOLCHAIN} rustc -vV` names no LLVM version: {text}")
    })
}

/// The major of the first `LLVM version…` after `marker` in a tool's version text.
fn llvm_major(text: &str, marker: &str) -> Option<u32> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The LLVM major that a bpf-linker binary runs on, as its LLVM says itself
/// (`--llvm-args=--version` prints LLVM's version and exits before any linking).
fn bpf_linker_llvm(linker: &std::path::Path) -> Option<u32> {
    let out = Command::new(linker)
        .args(["--llvm-args=--version", "-o", "/dev/null", "/dev/null"])
        .output()
        .ok()?;
    llvm_major(&String::from_utf8_lossy(&out.stdout), "LLVM version ")
}

/// Makes sure the project's own bpf-linker (never one on the PATH) runs on LLVM `llvm`, building
/// it when it is missing or runs on another LLVM.
fn ensure_bpf_linker(llvm: u32) -> anyhow::Result<()> {
    let (Some(root), Some(linker)) = (bpf_linker_root(), bpf_linker()) else {
        bail!("neither XDG_CACHE_HOME nor HOME is set: setup needs one to keep bpf-linker in");
    };
    let found = linker.is_file().then(|| bpf_linker_llvm(&linker)).flatten();
    if found == Some(llvm) {
        return Ok(());
    }
    match found {
        Some(other) => eprintln!(
            "setup: {} runs on LLVM {other}, the {EBPF_TOOLCHAIN} toolchain writes LLVM {llvm}: \
             building it again",
            linker.display()
        ),
        None => eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} into {} \
             (cargo install, about a minute)",
            root.display()
        ),
    }
    check(
        cargo_install(&root, "bpf-linker", BPF_LINKER_VERSION)
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ]),
    )
    .with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} with feature llvm-{llvm} failed: it needs \
             llvm-{llvm}-dev, and a bpf-linker release that supports LLVM {llvm}"
        )
    })?;
    match bpf_linker_llvm(&linker) {
        Some(got) if got == llvm => Ok(()),
        got => bail!(
            "{} was built for LLVM {llvm} but runs on {got:?}: check /usr/lib/llvm-{llvm}",
            linker.display()
        ),
    }
}

/// Makes sure the project's own cargo-fuzz, pinned, is installed beside bpf-linker (building it
/// when missing), and returns its binary. Only `cargo xtask fuzz` and `cargo xtask test` need it.
pub fn ensure_cargo_fuzz() -> anyhow::Result<std::path::PathBuf> {
    ensure_tool("cargo-fuzz", "0.13.2", "a few minutes")
}

/// Makes sure the project's own cargo-deb, pinned, is installed beside bpf-linker, and returns
/// its binary. `cargo xtask deb` and `cargo xtask test` need it.
pub fn ensure_cargo_deb() -> anyhow::Result<std::path::PathBuf> {
    ensure_tool("cargo-deb", "3.8.0", "a few minutes")
}

/// Installs `krate` at `version` (pinned) into `$XDG_CACHE_HOME/oomcount/KRATE-VERSION` when its
/// binary is not there yet (idempotent), and returns the binary.
fn ensure_tool(krate: &str, version: &str, takes: &str) -> anyhow::Result<std::path::PathBuf> {
    let Some(root) = bpf_linker_root()
        .and_then(|linker| Some(linker.parent()?.join(format!("{krate}-{version}"))))
    else {
        bail!("neither XDG_CACHE_HOME nor HOME is set: setup needs one to keep {krate} in");
    };
    let bin = root.join("bin").join(krate);
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "setup: building {krate} {version} into {} (cargo install, {takes})",
        root.display()
    );
    check(&mut cargo_install(&root, krate, version))
        .with_context(|| format!("building {krate} {version} failed"))?;
    Ok(bin)
}

/// `cargo install --force --locked CRATE --version =VERSION` into `root`: a tool of the
/// project's own, never one of the user's.
fn cargo_install(root: &std::path::Path, krate: &str, version: &str) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Only to spare cargo's advice to put the folder on the PATH: nothing runs it from there.
    cmd.env("PATH", path_with(&root.join("bin")))
        .arg("install")
        .arg("--root")
        .arg(root)
        .args([
            "--force",
            "--locked",
            krate,
            "--version",
            &format!("={version}"),
        ]);
    cmd
}

/// The PATH with `dir` in front.
fn path_with(dir: &std::path::Path) -> std::ffi::OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)))
        .unwrap_or(rest)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
