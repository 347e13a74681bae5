//! Memory: start-up (time and CPU), the resident set after start-up and at the end.
use std::time::Duration;

use serde_json::json;

use super::{memory_of as memory, ms, ticks};
use crate::{
    Bench,
    baselines::Baseline,
    oomd::Oomd,
    procfs, progress,
    report::{Row, percentile},
};

/// Start-ups timed; the last daemon is kept for the other phases.
const STARTS: usize = 3;

/// Exec to serving (ms), and the CPU time by then (user, system ms), of each start.
pub struct Startups {
    pub times: Vec<f64>,
    pub cpu: Vec<(f64, f64)>,
}

/// The daemon started [`STARTS`] times: exec to serving, and its CPU time by then.
pub fn startup() -> Result<(Oomd, Startups), String> {
    progress(&format!("start-up: the daemon, {STARTS} times"));
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    let tick = procfs::ms_per_tick();
    for i in 0..STARTS {
        let daemon = Oomd::start(&format!("start{i}"))?;
        times.push(ms(daemon.ready_after));
        let (user, system) = daemon.startup_ticks;
        cpu.push((user as f64 * tick, system as f64 * tick));
        if i + 1 == STARTS {
            return Ok((daemon, Startups { times, cpu }));
        }
        daemon.stop()?;
    }
    unreachable!("STARTS > 0")
}

pub fn startup_rows(b: &mut Bench, starts: &Startups) {
    let (times, split) = (&starts.times, &starts.cpu);
    let cpu: Vec<f64> = split.iter().map(|(u, s)| u + s).collect();
    let ready = |t: &Result<Baseline, String>| {
        t.as_ref()
            .map_err(Clone::clone)
            .map(|t| t.ready_after.map_or(f64::NAN, ms))
    };
    b.rows.push(
        Row::new("startup_time", "time from exec to attached", "ms")
            .value(percentile(times, 50.0).ok_or_else(|| "no start".to_owned()))
            .baseline("bpftrace one-liner (to BEGIN)", ready(&b.bpftrace))
            .baseline("node_exporter (to first /metrics)", ready(&b.node_exporter))
            .note(format!("median of {STARTS} starts: {times:.0?} ms")),
    );
    let tick = procfs::ms_per_tick();
    b.rows.push(
        Row::new("startup_cpu", "CPU time at start-up", "ms")
            .value(percentile(&cpu, 50.0).ok_or_else(|| "no start".to_owned()))
            .baseline(
                "bpftrace one-liner (CPU so far)",
                ticks(&b.bpftrace).map(|t| t as f64 * tick),
            )
            .note(format!(
                "median of {STARTS} starts, (user, system) ms: {split:.0?}; system time is the \
                 kernel's, mostly the verifier's"
            )),
    );
    b.details.insert("startup_ms".into(), json!(times));
}

pub fn steady_memory(b: &mut Bench) -> Result<(), String> {
    std::thread::sleep(Duration::from_secs(1));
    let pid = b.daemon.pid();
    let m = procfs::memory(pid)?;
    progress(&format!("steady memory: VmRSS {} kB", m.rss_kb));
    b.details.insert(
        "daemon_rss_by_mapping_after_start_kb".into(),
        json!(procfs::rss_by_mapping(pid)?),
    );
    let row = Row::new(
        "rss_steady",
        "daemon steady RSS (VmRSS after start-up)",
        "kB",
    )
    .value(Ok(m.rss_kb as f64));
    let row = with_baselines(row, b, "node_exporter (vmstat only)", |m| m.rss_kb)
        .earlier("bare aya loader", 18_800.0)
        .earlier("bare aya loader, kernel BTF skipped", 4_900.0)
        .note(format!(
            "both Prometheus outputs on (a textfile and a loopback port, per-key series too); VmLck {} kB; by mapping in details",
            m.locked_kb
        ));
    b.rows.push(row);
    Ok(())
}

/// What publishing to xenstore costs in resident memory: two fresh daemons, the same but for
/// `[xenstore]`, side by side (issue #15: within 0.25 MiB). Only where the bench has a store.
/// Run before the bench's own daemon starts: every client of the host store is domain 0, and a
/// second publishing daemon would write the same keys, which each daemon's guest reader then
/// sees change (a dom0 runs one daemon).
pub fn xenstore_memory() -> Result<(Row, serde_json::Value), String> {
    let row = Row::new(
        "rss_xenstore",
        "steady RSS with xenstore on, over the same daemon without",
        "kB",
    );
    if std::env::var_os("XENSTORED_PATH").is_none() {
        let row = row.value(Err("no xenstore store on this host".to_owned()));
        return Ok((row, serde_json::Value::Null));
    }
    // Five pairs, the median kept: which pages of libc a daemon maps back after start-up varies
    // by a few 64 KiB windows between two starts (ld.so puts libc at a random page, so the
    // fault-around windows fall on other bytes of it each time; oomcount's own binary is
    // aligned to 64 KiB, and its part no longer varies).
    let mut pairs = Vec::new();
    for round in 1..=XEN_PAIRS {
        progress(&format!(
            "xenstore: two daemons, with and without [xenstore] ({round} of {XEN_PAIRS})"
        ));
        // The vitals every second: by the measurement, the report was written at start and the
        // vitals at least once, as they are every 10 s in the steady state.
        let on = Oomd::start_with("xen-on", Some("1s"))?;
        let off = Oomd::start_with("xen-off", None)?;
        std::thread::sleep(Duration::from_millis(2500));
        let (with, without) = (procfs::memory(on.pid())?, procfs::memory(off.pid())?);
        let by_mapping = json!({
            "with": procfs::rss_by_mapping(on.pid())?,
            "without": procfs::rss_by_mapping(off.pid())?,
        });
        on.stop()?;
        off.stop()?;
        pairs.push((with.rss_kb, without.rss_kb, by_mapping));
    }
    pairs.sort_by_key(|(with, without, _)| *with as i64 - *without as i64);
    let said: Vec<String> = pairs
        .iter()
        .map(|(with, without, _)| format!("{with} - {without} kB"))
        .collect();
    let (with, without, by_mapping) = pairs.swap_remove(XEN_PAIRS / 2);
    let row = row.value(Ok(with as f64 - without as f64)).note(format!(
        "the median of {XEN_PAIRS} pairs ({}: VmRSS with, without), 2.5 s after start with the \
             vitals every second (the report written at start and the vitals at least twice, \
             against a host oxenstored as dom0 would; a guest writes the same over xenbus); the \
             median pair by mapping in details",
        said.join(", ")
    ));
    Ok((row, by_mapping))
}

/// Pairs of daemons (with and without xenstore) measured for [`xenstore_memory`].
const XEN_PAIRS: usize = 5;

pub fn end_memory(b: &mut Bench) -> Result<(), String> {
    let pid = b.daemon.pid();
    let m = procfs::memory(pid)?;
    progress(&format!(
        "end: VmRSS {} kB, VmHWM {} kB",
        m.rss_kb, m.hwm_kb
    ));
    b.details.insert(
        "daemon_rss_by_mapping_at_end_kb".into(),
        json!(procfs::rss_by_mapping(pid)?),
    );
    let row = Row::new("rss_peak", "daemon peak RSS (VmHWM, at the end)", "kB")
        .value(Ok(m.hwm_kb as f64));
    let row = with_baselines(row, b, "node_exporter, after 100 scrapes", |m| m.hwm_kb)
        .earlier("bare aya loader", 38_700.0)
        .earlier("bare aya loader, kernel BTF skipped", 21_000.0);
    b.rows.push(row);
    b.rows.push(
        Row::new("rss_end", "daemon RSS at the end (history full)", "kB")
            .value(Ok(m.rss_kb as f64))
            .note("after every phase: thousands of events, the history full (its default 256)"),
    );
    Ok(())
}

/// `row` with the memory of each baseline running beside the daemon: `kb` of its figures
/// (VmRSS or VmHWM); node_exporter's under `node_exporter` (how it was used differs by figure).
fn with_baselines(row: Row, b: &Bench, node_exporter: &str, kb: fn(&procfs::Memory) -> u64) -> Row {
    let figure = |baseline| memory(baseline).map(|m| kb(&m) as f64);
    row.baseline("watchdog(8), memory locked", figure(&b.watchdog))
        .baseline(node_exporter, figure(&b.node_exporter))
        .baseline("bpftrace one-liner", figure(&b.bpftrace))
}
