//! CPU: idle, `oomcount count` against grep, node_exporter's scrapes.
use std::{process::Command, time::Instant};

use oomcount_integration_test::{locate, vmstat};
use serde_json::json;

use super::{ms, ticks};
use crate::{
    Bench, baselines, procfs, progress,
    report::{Row, percentile},
};

/// Rounds of `oomcount count` against `grep oom_kill /proc/vmstat`.
const COUNT_ROUNDS: usize = 100;
/// node_exporter scrapes before its peak is read.
const SCRAPES: usize = 100;

pub fn idle_cpu(b: &mut Bench) -> Result<(), String> {
    let secs = b.args.idle.as_secs();
    progress(&format!("idle CPU: {secs} s with nothing to do"));
    let daemon = b.daemon.pid();
    let before = (
        procfs::cpu_ticks(daemon)?,
        ticks(&b.watchdog),
        ticks(&b.bpftrace),
        ticks(&b.node_exporter),
    );
    let kills_before = vmstat::try_oom_kill();
    std::thread::sleep(b.args.idle);
    let kills = vmstat::try_oom_kill()
        .zip(kills_before)
        .map_or(0, |(a, b)| a - b);
    let delta =
        |now: Result<u64, String>, then: Result<u64, String>| Ok(now? as f64 - then? as f64);
    let mut note = format!("{secs} s; a tick is {} ms", procfs::ms_per_tick());
    if kills > 0 {
        note.push_str(&format!(
            "; {kills} OOM kills elsewhere on the machine meanwhile woke the daemon and bpftrace"
        ));
    }
    b.rows.push(
        Row::new("idle_cpu", "CPU over 60 idle seconds", "ticks")
            .value(delta(procfs::cpu_ticks(daemon), Ok(before.0)))
            .baseline(
                "watchdog(8), memory locked",
                delta(ticks(&b.watchdog), before.1),
            )
            .baseline("bpftrace one-liner", delta(ticks(&b.bpftrace), before.2))
            .baseline(
                "node_exporter, not scraped",
                delta(ticks(&b.node_exporter), before.3),
            )
            .note(note),
    );
    Ok(())
}

/// Wall time of a command, which must succeed.
fn timed(cmd: &mut Command) -> Result<f64, String> {
    let started = Instant::now();
    let output = cmd.output().map_err(|err| format!("{cmd:?}: {err}"))?;
    let took = ms(started.elapsed());
    if output.status.success() {
        Ok(took)
    } else {
        Err(format!("{cmd:?}: {}", output.status))
    }
}

pub fn count_ratio(b: &mut Bench) -> Result<(), String> {
    progress(&format!(
        "count: `oomcount count` against `grep oom_kill /proc/vmstat`, {COUNT_ROUNDS} rounds"
    ));
    let bin = locate::oomcount();
    let (mut ours, mut grep) = (Vec::new(), Vec::new());
    for _ in 0..COUNT_ROUNDS {
        ours.push(timed(
            Command::new(&bin)
                .args(["count", "--socket"])
                .arg(b.daemon.socket()),
        )?);
        grep.push(timed(
            Command::new("grep").args(["oom_kill", "/proc/vmstat"]),
        )?);
    }
    let (o, g) = (
        percentile(&ours, 50.0).unwrap_or(f64::NAN),
        percentile(&grep, 50.0).unwrap_or(f64::NAN),
    );
    b.rows.push(
        Row::new(
            "count_ratio",
            "`oomcount count` wall time / `grep oom_kill /proc/vmstat`",
            "x",
        )
        .value(Ok(o / g))
        .note(format!(
            "medians of {COUNT_ROUNDS}: oomcount count {o:.2} ms, grep {g:.2} ms"
        )),
    );
    b.details
        .insert("count_ms".into(), json!({"oomcount": ours, "grep": grep}));
    Ok(())
}

/// node_exporter scraped [`SCRAPES`] times: its CPU per scrape, and its growth.
pub fn scrapes(b: &mut Bench) -> Result<(), String> {
    let Ok(node) = &b.node_exporter else {
        return Ok(());
    };
    let address = node.address.clone().expect("node_exporter has an address");
    progress(&format!("node_exporter: {SCRAPES} scrapes"));
    let before = procfs::cpu_ticks(node.pid())?;
    let mut times = Vec::new();
    for _ in 0..SCRAPES {
        let started = Instant::now();
        baselines::scrape(&address)?;
        times.push(ms(started.elapsed()));
    }
    let cpu = (procfs::cpu_ticks(node.pid())? - before) as f64 * procfs::ms_per_tick();
    let m = procfs::memory(node.pid())?;
    b.details.insert(
        "node_exporter_scrapes".into(),
        json!({
            "scrapes": SCRAPES,
            "cpu_ms_per_scrape": cpu / SCRAPES as f64,
            "median_wall_ms": percentile(&times, 50.0),
            "rss_kb_after": m.rss_kb,
        }),
    );
    Ok(())
}
