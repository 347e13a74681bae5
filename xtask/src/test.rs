//! `cargo xtask test`: every test, in the order that fails fastest.
//!
//! 1. rustfmt and clippy (`-D warnings`) on the host crates and on the eBPF crate;
//! 2. unit tests of every host crate (`promtool check metrics` on the expositions among them),
//!    `promtool check rules` and `test rules` on the alerting rules, then each fuzz target for a
//!    few seconds from its seeds (`cargo xtask fuzz`);
//! 3. the privileged integration tests on this machine's kernel (real eBPF, real OOM kills in a
//!    memory cgroup), one at a time because they compare against machine-wide counters;
//! 4. the Debian package: built, linted, installed on this machine, upgraded and purged
//!    (`deb::install_test`);
//! 5. the same integration tests inside the VM kernel matrix (`cargo xtask vm-test`), then
//!    oomcount on a real Xen hypervisor (`cargo xtask xen-test`).
use clap::Args;

use crate::{cargo, check, setup};

#[derive(Args)]
pub struct TestArgs {
    /// Skip the VM kernel matrix.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the short fuzzing run after the unit tests.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Skip the Debian package's build, install, upgrade and purge.
    #[arg(long)]
    pub no_deb: bool,
    /// Only integration tests whose name contains this filter.
    pub filter: Option<String>,
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    setup::run(if args.no_vm {
        setup::Needs::Test
    } else {
        setup::Needs::Vm
    })?;
    // The eBPF crate builds only for the BPF target: host-side commands leave it out.
    const HOST: [&str; 3] = ["--workspace", "--exclude", "oomcount-ebpf"];
    if !args.no_lint {
        eprintln!("test: rustfmt and clippy");
        check(cargo().args(["fmt", "--all", "--check"]))?;
        // The fuzz targets are a workspace of their own (fuzz/Cargo.toml says why).
        check(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
        check(
            cargo()
                .arg("clippy")
                .args(HOST)
                .args(["--all-targets", "--", "-D", "warnings"]),
        )?;
        // The eBPF crate is linted by the toolchain that builds it, whose clippy does not move.
        check(
            std::process::Command::new("rustup")
                .current_dir(crate::workspace_root())
                .env("RUSTUP_AUTO_INSTALL", "0")
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["run", setup::EBPF_TOOLCHAIN, "cargo", "clippy"])
                .args(["--package", "oomcount-ebpf"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(["--", "-D", "warnings"]),
        )?;
        verify_unit()?;
    }
    eprintln!("test: unit tests");
    check(cargo().arg("test").args(HOST).args(["--lib", "--bins"]))?;
    eprintln!("test: promtool check rules, test rules (contrib/prometheus)");
    for args in [
        ["check", "rules", "oomcount-rules.yml"],
        ["test", "rules", "oomcount-rules.test.yml"],
    ] {
        let mut promtool = std::process::Command::new("promtool");
        check(
            promtool
                .current_dir(crate::workspace_root().join("contrib/prometheus"))
                .args(args),
        )?;
    }
    if !args.no_fuzz {
        eprintln!("test: fuzzing, {FUZZ_SECONDS} s per target");
        crate::fuzz::fuzz(FUZZ_SECONDS, None)?;
    }
    eprintln!("test: privileged integration tests on this kernel");
    // The tests start the daemon binary, which `cargo test` of another package does not build.
    check(cargo().args(["build", "--package", "oomcount", "--bin", "oomcount"]))?;
    let mut integration = cargo();
    integration.args([
        "test",
        "--package",
        "oomcount-integration-test",
        "--tests",
        "--",
    ]);
    if let Some(filter) = &args.filter {
        integration.arg(filter);
    }
    // They compare against machine-wide counters (/proc/vmstat), so two runs on one machine
    // (two clones, or a run beside a developer's) would see each other's kills: one at a time.
    let _machine = machine_lock()?;
    crate::check_recalling_panics(integration.args(["--test-threads=1", "--nocapture"]))?;
    drop(_machine);
    if !args.no_deb {
        crate::deb::install_test::run()?;
    }
    if !args.no_vm {
        crate::vm::run(crate::vm::VmTestArgs::default())?;
        crate::vm::xen::run(crate::vm::xen::XenTestArgs::default())?;
    }
    Ok(())
}

/// `systemd-analyze verify` on the shipped unit, where systemd-analyze exists.
///
/// Verify also checks that each `Exec*=` program is an executable file and that each
/// `Documentation=` man page is installed, which say nothing of the unit on a build machine: the
/// unit is verified as installed in a scratch root with a stand-in at each program's path, and
/// man pages, which other packages own (watchdog(8)), are not asked for (`--man=no`). Unknown keys
/// and bad values are only warnings to verify (exit 0), so any line it prints fails.
fn verify_unit() -> anyhow::Result<()> {
    let unit = crate::workspace_root().join("contrib/systemd/oomcount.service");
    let text = std::fs::read_to_string(&unit)?;
    verify_unit_text("contrib/systemd/oomcount.service", &text).map(drop)
}

/// `systemd-analyze verify` on a unit's `text` (see [`verify_unit`]), and its exposure by
/// `systemd-analyze security --offline=yes`, which it returns (`None` without systemd-analyze).
pub(crate) fn verify_unit_text(label: &str, text: &str) -> anyhow::Result<Option<String>> {
    use std::{fs, os::unix::fs::PermissionsExt as _, process::Command};

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("test: no systemd-analyze here: {label} not verified");
        return Ok(None);
    }
    eprintln!("test: systemd-analyze verify {label}");
    let root = std::env::temp_dir().join(format!("oomcount-unit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let installed = root.join("etc/systemd/system/oomcount.service");
    fs::create_dir_all(installed.parent().expect("a folder"))?;
    fs::write(&installed, text)?;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        // `ExecStart=-/path args`: the prefixes say how to run it, the first word is the path.
        let program = value.trim_start_matches(['-', '@', ':', '+', '!']);
        let Some(program) = program.split_whitespace().next() else {
            continue;
        };
        if key.trim().starts_with("Exec") {
            let stand_in = root.join(program.trim_start_matches('/'));
            fs::create_dir_all(stand_in.parent().expect("a folder"))?;
            fs::write(&stand_in, "#!/bin/sh\n")?;
            fs::set_permissions(&stand_in, fs::Permissions::from_mode(0o755))?;
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--root"])
        .arg(&root)
        .arg("/etc/systemd/system/oomcount.service")
        .output();
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "--root"])
        .arg(&root)
        .arg("/etc/systemd/system/oomcount.service")
        .output();
    let _ = fs::remove_dir_all(&root);
    let out = out?;
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {label} ({}):\n{}",
        out.status,
        said.trim()
    );
    let security = security?;
    let exposure = String::from_utf8_lossy(&security.stdout)
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")
                .map(|(_, r)| r.to_owned())
        });
    Ok(exposure)
}

/// Seconds of fuzzing per target in a test run: the seeds, and a little more, every time.
const FUZZ_SECONDS: u32 = 8;

/// Where the privileged tests of every clone on this machine take turns.
const MACHINE_LOCK: &str = "/run/lock/oomcount-tests.lock";

/// Waits for, then holds, the machine-wide lock of the privileged tests (released on drop).
fn machine_lock() -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MACHINE_LOCK)
        .with_context(|| format!("open {MACHINE_LOCK}"))?;
    // SAFETY: flock on an fd this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("test: another run holds {MACHINE_LOCK}; waiting for it");
        // SAFETY: as above.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        anyhow::ensure!(
            locked == 0,
            "flock {MACHINE_LOCK}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(file)
}
