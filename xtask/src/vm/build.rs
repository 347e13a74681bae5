//! Builds what runs inside the guests, static, in a target folder of its own.
//!
//! Static (`+crt-static`, glibc's `libc.a`) because the initramfs has no libraries; in
//! `target/vm` so that these flags never invalidate the host's builds in `target/`. Cargo's JSON
//! messages name the executables, test binaries included (their names carry a hash).
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::cargo;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest's executables on the host.
pub struct Guest {
    pub init: PathBuf,
    pub oomcount: PathBuf,
    pub hog: PathBuf,
    /// (test target name, executable) of each integration test binary.
    pub tests: Vec<(String, PathBuf)>,
}

pub fn build(target_dir: &std::path::Path) -> anyhow::Result<Guest> {
    eprintln!(
        "vm-test: building the static guest binaries into {}",
        target_dir.display()
    );
    let bins = artifacts(
        &[
            "build",
            "--package=oomcount",
            "--package=oomcount-vm-init",
            "--package=oomcount-integration-test",
            "--bin=oomcount",
            "--bin=oomcount-vm-init",
            "--bin=oomcount-hog",
        ],
        target_dir,
    )?;
    let tests = artifacts(
        &[
            "test",
            "--no-run",
            "--package=oomcount-integration-test",
            "--tests",
        ],
        target_dir,
    )?;
    let bin = |name: &str| find_bin(&bins, name);
    let tests: Vec<(String, PathBuf)> = tests
        .into_iter()
        .filter(|a| a.kind == "test")
        .map(|a| (a.name, a.path))
        .collect();
    if tests.is_empty() {
        eprintln!(
            "vm-test: oomcount-integration-test has no test binaries; only the smoke test runs"
        );
    }
    Ok(Guest {
        init: bin("oomcount-vm-init")?,
        oomcount: bin("oomcount")?,
        hog: bin("oomcount-hog")?,
        tests,
    })
}

/// Only the daemon and the hog, static (for the Xen test's guests).
pub fn bins(target_dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let bins = artifacts(
        &[
            "build",
            "--package=oomcount",
            "--package=oomcount-integration-test",
            "--bin=oomcount",
            "--bin=oomcount-hog",
        ],
        target_dir,
    )?;
    let bin = |name: &str| find_bin(&bins, name);
    Ok((bin("oomcount")?, bin("oomcount-hog")?))
}

/// The executable of binary target `name` among what cargo built.
fn find_bin(built: &[Artifact], name: &str) -> anyhow::Result<PathBuf> {
    built
        .iter()
        .find(|a| a.kind == "bin" && a.name == name)
        .map(|a| a.path.clone())
        .with_context(|| format!("cargo built no binary {name}"))
}

struct Artifact {
    /// The target's kind (`bin`, `test`).
    kind: String,
    name: String,
    path: PathBuf,
}

/// Runs a cargo command for the guest and returns the executables it produced.
fn artifacts(args: &[&str], target_dir: &std::path::Path) -> anyhow::Result<Vec<Artifact>> {
    let mut cmd = cargo();
    cmd.args(args)
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // The encoded form wins over RUSTFLAGS and config; with --target it reaches neither
        // build scripts nor proc macros, and aya-build sets its own for the eBPF object.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-C\x1ftarget-feature=+crt-static",
        )
        // No DWARF: it is two thirds of each binary, and the initramfs stays in the guest's
        // memory. Panics still say file:line, backtraces still name functions.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_PROFILE_DEV_STRIP", "debuginfo")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("start {cmd:?}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut found = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(path) = message["executable"].as_str() else {
            continue;
        };
        found.push(Artifact {
            kind: message["target"]["kind"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: message["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            path: PathBuf::from(path),
        });
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the static guest binaries failed ({status}): see cargo's errors above");
    }
    Ok(found)
}
