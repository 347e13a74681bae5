//! `cargo xtask bench`: the daemon's costs beside what users would run instead, measured in one
//! run on this machine (a benchmark, not a timed test: a missed goal is reported, not failed).
//!
//! 1. the build's setup, then the baselines (bpftrace, node_exporter, watchdog(8)) installed
//!    with apt where missing, their services not started ([`install`]);
//! 2. release builds of the daemon and of `oomcount-bench` (the measuring side, in the
//!    integration-test crate beside the OOM producers it uses);
//! 3. `oomcount-bench` runs (about two minutes; progress on stderr) and prints its figures;
//! 4. each figure is held against its goal ([`table`]): the table is printed and written, with
//!    every figure and note, to `target/bench/bench.json`.
pub(crate) mod install;
mod table;

use std::process::{Command, Stdio};

use anyhow::{Context as _, ensure};
use clap::Args;

use crate::{cargo, check, setup, workspace_root};

#[derive(Args)]
pub struct BenchArgs {
    /// Seconds of idle CPU measured (60 for the figure of the goal).
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Kills in the storm.
    #[arg(long, default_value_t = 2000)]
    pub storm_kills: u64,
    /// Do not install missing baselines (they are reported absent).
    #[arg(long)]
    pub no_install: bool,
    /// Measure nothing: write the functions the daemon runs once it serves to
    /// oomcount/hot-functions.txt, which the build puts first (oomcount/build.rs says why).
    /// Takes about 10 minutes, most of them bpftrace attaching its uprobes.
    #[arg(long)]
    pub hot_functions: bool,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    setup::run(setup::Needs::Test)?;
    let absent = if args.no_install {
        Vec::new()
    } else {
        install::baselines()
    };
    eprintln!("bench: release builds");
    check(cargo().args([
        "build",
        "--release",
        "--package",
        "oomcount",
        "--bin",
        "oomcount",
    ]))?;
    check(cargo().args([
        "build",
        "--release",
        "--package",
        "oomcount-integration-test",
        "--bin",
        "oomcount-bench",
        "--bin",
        "oomcount-hog",
    ]))?;
    let release = workspace_root().join("target").join("release");
    let mut bench = Command::new(release.join("oomcount-bench"));
    bench
        .env("OOMCOUNT_BIN", release.join("oomcount"))
        .env("OOMCOUNT_HOG", release.join("oomcount-hog"))
        .args(["--idle-secs", &args.idle_secs.to_string()])
        .args(["--storm-kills", &args.storm_kills.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (name, why) in &absent {
        bench.args(["--absent", &format!("{name}={why}")]);
    }
    if args.hot_functions {
        // The profile reads the daemon's threads' stacks with it (oomcount-bench's `stacks`).
        if !args.no_install && !setup::dpkg_installed("gdb") {
            setup::apt_install(&["gdb"], None).context("--hot-functions needs gdb")?;
        }
        bench
            .arg("--hot-functions")
            .arg(workspace_root().join("oomcount/hot-functions.txt"));
        return check(&mut bench);
    }
    // oomcount-bench puts it back itself; this covers a bench that died on the way.
    let bpf_stats = std::fs::read_to_string(BPF_STATS).ok();
    let output = bench.output().context("run oomcount-bench");
    if let Some(previous) = &bpf_stats
        && std::fs::read_to_string(BPF_STATS).ok().as_ref() != Some(previous)
    {
        let _ = std::fs::write(BPF_STATS, previous);
    }
    let output = output?;
    ensure!(
        output.status.success(),
        "oomcount-bench failed: {}",
        output.status
    );
    let measured: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("oomcount-bench's output is not JSON")?;
    let report = table::with_goals(measured);
    println!(
        "\noomcount bench on Linux {} ({} CPUs)\n\n{}",
        report["kernel"].as_str().unwrap_or("?"),
        report["cpus"],
        table::render(&report)
    );
    let dir = workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let file = dir.join("bench.json");
    std::fs::write(&file, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", file.display()))?;
    eprintln!("bench: written to {}", file.display());
    Ok(())
}
