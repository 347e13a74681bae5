//! `cargo xtask fuzz`: each cargo-fuzz target in `fuzz/` for a bounded time.
//!
//! The targets feed arbitrary bytes to what reads untrusted or hand-written input: the socket's
//! request lines (`request`), the configuration file (`config`), tracefs `format` files
//! (`tracefs`), the kernel's BTF (`btf`), victims' cgroup paths, which anyone names
//! (`cgroup`), xenstore's wire messages and the values a Xen guest publishes there
//! (`xenstore`), and victims' names through the Prometheus exposition with the metrics port's
//! request heads (`metrics`). They are built by the project's own cargo-fuzz
//! (`setup::ensure_cargo_fuzz`) with libFuzzer and no sanitizer, which the stable toolchain
//! builds: the parsers are safe Rust, where what a sanitizer would add is caught by panics and
//! overflow checks (on in these builds).
//!
//! Each target starts from its seeds in `fuzz/corpus/<target>` (committed, never written here)
//! and keeps the inputs it finds in `fuzz/target/corpus/<target>`, so that runs on one clone
//! build on each other. A crash, an input that runs longer than [`INPUT_TIMEOUT`], or memory past
//! [`RSS_LIMIT_MB`] fails the run, with the input saved in `fuzz/artifacts/<target>/` and the
//! command that replays it; the time running out is the normal end.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{check, setup, workspace_root};

/// The fuzz targets, in the order they run.
pub const TARGETS: [&str; 7] = [
    "request", "config", "tracefs", "btf", "cgroup", "xenstore", "metrics",
];

/// Seconds one input may take: each parser takes microseconds on the inputs libFuzzer makes
/// (at most a few KiB), so this is a hang even on a loaded machine.
const INPUT_TIMEOUT: u32 = 5;
/// Memory one target may use (each peaks under 50 MB), and the largest single allocation.
const RSS_LIMIT_MB: u32 = 512;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Only this target: request, config, tracefs, btf, cgroup, xenstore or metrics (default: all
    /// seven).
    #[arg(value_parser = TARGETS)]
    pub target: Option<String>,
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    // The oomcount crate's build script builds the eBPF object, with what setup installs.
    setup::run(setup::Needs::Build)?;
    fuzz(args.seconds, args.target.as_deref())
}

/// Builds the targets, then runs `only` (or every target) for `seconds` each.
pub fn fuzz(seconds: u32, only: Option<&str>) -> anyhow::Result<()> {
    let bin = setup::ensure_cargo_fuzz()?;
    let root = workspace_root();
    let cargo_fuzz = |command: &str| {
        let mut cmd = Command::new(&bin);
        cmd.current_dir(&root)
            .args(["fuzz", command, "--sanitizer", "none"]);
        cmd
    };
    check(&mut cargo_fuzz("build")).context("building the fuzz targets")?;
    let work = root.join("fuzz").join("target");
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus = work.join("corpus").join(target);
        let logs = work.join("logs");
        for dir in [&corpus, &logs] {
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let log_path = logs.join(format!("{target}.log"));
        let log = fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let status = cargo_fuzz("run")
            .arg(target)
            .arg(&corpus)
            .arg(root.join("fuzz").join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("could not start cargo-fuzz")?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            eprintln!("{}", failure(&text));
            eprintln!(
                "(`cargo fuzz` is {} fuzz, or `cargo fuzz` with {} on the PATH)",
                bin.display(),
                bin.parent().unwrap_or(&root).display()
            );
            bail!(
                "fuzz target `{target}` failed ({status}); its output is in {}",
                log_path.display()
            );
        }
        eprintln!("{}", summary(target, &text, &corpus));
    }
    Ok(())
}

/// `fuzz: request: 133,766 runs in 11 s (12,160/s), 3,092 new inputs (seed 2433904136)`.
fn summary(target: &str, log: &str, corpus: &Path) -> String {
    let stat = |name: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .map_or_else(|| "?".to_owned(), thousands)
    };
    let seconds = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("Done ")?
                .split(" in ")
                .nth(1)?
                .split(' ')
                .next()
        })
        .unwrap_or("?");
    let seed = log
        .lines()
        .find_map(|l| l.strip_prefix("INFO: Seed: "))
        .unwrap_or("?");
    let kept = fs::read_dir(corpus).map_or(0, |dir| dir.count());
    format!(
        "fuzz: {target}: {} runs in {seconds} s ({}/s), {} new inputs ({} kept in {}), \
         no crash (seed {seed})",
        stat("stat::number_of_executed_units:"),
        stat("stat::average_exec_per_sec:"),
        stat("stat::new_units_added:"),
        thousands(kept as u64),
        corpus.display(),
    )
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a failed run's output says about the failure: the panic and its message, libFuzzer's
/// diagnosis, and cargo-fuzz's lines on the saved input and how to replay it.
fn failure(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        out.extend(lines[at..].iter().take(2));
    }
    out.extend(lines.iter().filter(|l| {
        l.contains("ERROR: libFuzzer")
            || l.starts_with("ALARM:")
            || l.starts_with("SUMMARY:")
            || l.contains("Test unit written to")
    }));
    if let Some(at) = lines.iter().position(|l| l.contains("Failing input:")) {
        // Up to cargo-fuzz's own error and backtrace, which say only that the target failed.
        out.extend(
            lines[at..]
                .iter()
                .take_while(|l| !l.starts_with("Error: "))
                .filter(|l| !l.trim_start().starts_with('─')),
        );
    }
    if out.is_empty() {
        out.extend(lines.iter().rev().take(20).rev());
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn summary_reads_libfuzzer_stats() {
        let log = "INFO: Seed: 2433904136\nDone 133766 runs in 11 second(s)\n\
                   stat::number_of_executed_units: 133766\n\
                   stat::average_exec_per_sec:     12160\nstat::new_units_added:          3092\n";
        let line = summary("request", log, &PathBuf::from("/nonexistent"));
        assert!(
            line.starts_with(
                "fuzz: request: 133,766 runs in 11 s (12,160/s), 3,092 new inputs (0 kept"
            ),
            "{line}"
        );
        assert!(line.ends_with("no crash (seed 2433904136)"), "{line}");
    }

    #[test]
    fn failure_shows_the_panic_and_the_replay() {
        let log = "#3800\tREDUCE cov: 1385\n\nthread '<unnamed>' panicked at src/btf.rs:221:18:\n\
                   attempt to add with overflow\nstack backtrace:\n   0: frame\n\
                   ==2782== ERROR: libFuzzer: deadly signal\nSUMMARY: libFuzzer: deadly signal\n\
                   artifact_prefix='a/'; Test unit written to a/crash-1\n\
                   ────────────\n\nFailing input:\n\n\ta/crash-1\n\nReproduce with:\n\n\
                   \tcargo fuzz run --sanitizer=none btf a/crash-1\n\n\
                   Error: Fuzz target exited with exit status: 77\n\nStack backtrace:\n";
        let text = failure(log);
        assert!(text.contains("attempt to add with overflow"), "{text}");
        assert!(text.contains("Test unit written to a/crash-1"), "{text}");
        assert!(
            text.contains("cargo fuzz run --sanitizer=none btf a/crash-1"),
            "{text}"
        );
        assert!(
            text.contains("==2782== ERROR: libFuzzer: deadly signal"),
            "{text}"
        );
        assert!(!text.contains("frame") && !text.contains('─'), "{text}");
        assert!(
            !text.contains("Error: ") && !text.contains("Stack"),
            "{text}"
        );
    }
}
