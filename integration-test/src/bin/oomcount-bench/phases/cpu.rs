//! CPU: idle, `oomcount count` against grep, scrapes of the daemon's port and of node_exporter.
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
/// Scrapes of the daemon's port: at ~0.07 ms each, enough for tens of clock ticks.
const OUR_SCRAPES: usize = 5000;
/// node_exporter's CPU per scrape with all its collectors (FACTS.md), in ms.
const NODE_FULL_SCRAPE_MS: f64 = 9.3;

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

/// node_exporter scraped [`SCRAPES`] times and the daemon's port [`OUR_SCRAPES`] times: the CPU
/// per scrape of each, and their growth.
pub fn scrapes(b: &mut Bench) -> Result<(), String> {
    let node = match &b.node_exporter {
        Ok(node) => {
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
            Ok(cpu / SCRAPES as f64)
        }
        Err(why) => Err(why.clone()),
    };

    progress(&format!("the daemon's /metrics: {OUR_SCRAPES} scrapes"));
    let pid = b.daemon.pid();
    let before = procfs::cpu_ticks(pid)?;
    let mut times = Vec::new();
    for _ in 0..OUR_SCRAPES {
        let started = Instant::now();
        let body = baselines::scrape(&b.daemon.metrics)?;
        times.push(ms(started.elapsed()));
        if !body.contains("\noomcount_oom_kills_total ") {
            return Err(format!(
                "the daemon's /metrics lacks oomcount_oom_kills_total: {body}"
            ));
        }
    }
    let ours =
        (procfs::cpu_ticks(pid)? - before) as f64 * procfs::ms_per_tick() / OUR_SCRAPES as f64;
    let vmstat = vmstat_read_cpu_ms();
    let rss = procfs::memory(pid)?.rss_kb;
    b.details.insert(
        "oomcount_scrapes".into(),
        json!({
            "scrapes": OUR_SCRAPES,
            "cpu_ms_per_scrape": ours,
            "median_wall_ms": percentile(&times, 50.0),
            "rss_kb_after": rss,
        }),
    );
    b.rows.push(
        Row::new("scrape_cpu", "CPU per scrape of /metrics", "ms")
            .value(Ok(ours))
            .baseline("node_exporter (vmstat only)", node.clone())
            .baseline("one read of /proc/vmstat, which each scrape makes", vmstat.clone())
            .earlier("node_exporter, all collectors", NODE_FULL_SCRAPE_MS)
            .note(format!(
                "the daemon's CPU time over {OUR_SCRAPES} scrapes of its port (one connection each, \
                 as Prometheus without keep-alive), node_exporter's over {SCRAPES}; daemon VmRSS \
                 after them {rss} kB"
            )),
    );
    b.rows.push(
        Row::new(
            "scrape_cpu_ratio",
            "CPU per scrape, against node_exporter (vmstat only)",
            "x",
        )
        .value(node.clone().map(|node| ours / node))
        .note(format!(
            "the row above: the daemon's figure over node_exporter's, both from this run; one \
             read of /proc/vmstat alone (oomcount_kernel_oom_kills_total) is {}",
            match (&vmstat, &node) {
                (Ok(v), Ok(n)) => format!("{:.3}x", v / n),
                _ => "unmeasured".to_owned(),
            }
        )),
    );
    Ok(())
}

/// The CPU time (user and system, ms) this thread spends on one read of /proc/vmstat, the median
/// of 5 rounds of 1000: the floor of a scrape that reports the kernel's own count.
fn vmstat_read_cpu_ms() -> Result<f64, String> {
    use std::io::Read as _;
    let thread_cpu_ms = || {
        // SAFETY: getrusage fills the struct we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        ms(usage.ru_utime) + ms(usage.ru_stime)
    };
    let mut buf = Vec::with_capacity(16 << 10);
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let before = thread_cpu_ms();
        for _ in 0..1000 {
            buf.clear();
            std::fs::File::open("/proc/vmstat")
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(|err| format!("read /proc/vmstat: {err}"))?;
        }
        rounds.push((thread_cpu_ms() - before) / 1000.0);
    }
    percentile(&rounds, 50.0).ok_or_else(|| "no rounds".to_owned())
}
