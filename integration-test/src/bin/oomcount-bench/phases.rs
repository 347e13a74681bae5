//! The bench's phases, in the order they run. Each adds its rows (oomcount's figure and the
//! baselines measured beside it) and details to the [`Bench`].
use std::{
    process::Command,
    time::{Duration, Instant},
};

use oomcount_integration_test::{MemCg, locate, producer, vmstat};
use serde_json::json;

use crate::{
    Bench,
    baselines::{self, Baseline},
    bpfstats, client,
    oomd::Oomd,
    procfs, progress,
    report::{Row, percentile},
};

/// Start-ups timed; the last daemon is kept for the other phases.
const STARTS: usize = 3;
/// Rounds of `oomcount count` against `grep oom_kill /proc/vmstat`.
const COUNT_ROUNDS: usize = 40;
/// node_exporter scrapes before its peak is read.
const SCRAPES: usize = 100;
/// Kills, one at a time, whose latency is measured.
const LATENCY_KILLS: usize = 100;
/// Kills while BPF statistics are on.
const BPF_KILLS: u64 = 200;
/// Producers of the storm, each in a group of its own.
const STORM_PRODUCERS: u64 = 4;

fn memory(b: &Result<Baseline, String>) -> Result<procfs::Memory, String> {
    procfs::memory(b.as_ref().map_err(Clone::clone)?.pid())
}

fn ticks(b: &Result<Baseline, String>) -> Result<u64, String> {
    procfs::cpu_ticks(b.as_ref().map_err(Clone::clone)?.pid())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The daemon started [`STARTS`] times: exec to serving, and its CPU time by then.
pub fn startup() -> Result<(Oomd, Vec<f64>, Vec<f64>), String> {
    progress(&format!("start-up: the daemon, {STARTS} times"));
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    for i in 0..STARTS {
        let daemon = Oomd::start(&format!("start{i}"))?;
        times.push(ms(daemon.ready_after));
        cpu.push(daemon.startup_ticks as f64 * procfs::ms_per_tick());
        if i + 1 == STARTS {
            return Ok((daemon, times, cpu));
        }
        daemon.stop()?;
    }
    unreachable!("STARTS > 0")
}

pub fn startup_rows(b: &mut Bench, times: &[f64], cpu: &[f64]) {
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
            .value(percentile(cpu, 50.0).ok_or_else(|| "no start".to_owned()))
            .baseline(
                "bpftrace one-liner (CPU so far)",
                ticks(&b.bpftrace).map(|t| t as f64 * tick),
            )
            .note(format!("median of {STARTS} starts: {cpu:.0?} ms")),
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
    b.rows.push(
        Row::new(
            "rss_steady",
            "daemon steady RSS (VmRSS after start-up)",
            "kB",
        )
        .value(Ok(m.rss_kb as f64))
        .baseline(
            "watchdog(8), memory locked",
            memory(&b.watchdog).map(|m| m.rss_kb as f64),
        )
        .baseline(
            "node_exporter (vmstat only)",
            memory(&b.node_exporter).map(|m| m.rss_kb as f64),
        )
        .baseline(
            "bpftrace one-liner",
            memory(&b.bpftrace).map(|m| m.rss_kb as f64),
        )
        .earlier("bare aya loader", 18_800.0)
        .earlier("bare aya loader, kernel BTF skipped", 4_900.0)
        .note(format!("VmLck {} kB; by mapping in details", m.locked_kb)),
    );
    Ok(())
}

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

/// bpftrace's `mark PID NSECS` lines after the first `from`: how long after `nsecs` each was
/// read, in ms.
fn bpftrace_latencies(bpftrace: &Baseline, from: usize) -> Vec<f64> {
    bpftrace
        .lines()
        .iter()
        .skip(from)
        .filter_map(|(read, line)| {
            let ns: u64 = line
                .strip_prefix("mark ")?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(read.saturating_sub(ns) as f64 / 1e6)
        })
        .collect()
}

fn line_count(b: &Result<Baseline, String>) -> usize {
    b.as_ref().map_or(0, |t| t.lines().len())
}

pub fn latency(b: &mut Bench) -> Result<(), String> {
    progress(&format!("latency: {LATENCY_KILLS} kills, one at a time"));
    let cg = MemCg::new("bench-latency", 4 << 20);
    let watch = client::Watch::start(b.daemon.socket(), &cg.path())?;
    let from = line_count(&b.bpftrace);
    for _ in 0..LATENCY_KILLS {
        producer::storm(std::slice::from_ref(&cg), 1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = wait_for(Duration::from_secs(10), || {
        let r = watch.received();
        (r.kill_latencies.len() as u64 + r.dropped >= LATENCY_KILLS as u64).then_some(r)
    })
    .unwrap_or_else(|| watch.received());
    let ours: Vec<f64> = got.kill_latencies.iter().map(|d| ms(*d)).collect();
    let theirs = |p: f64| {
        let t = b.bpftrace.as_ref().map_err(Clone::clone)?;
        percentile(&bpftrace_latencies(t, from), p).ok_or_else(|| "no mark lines".to_owned())
    };
    let note = format!(
        "the kill event's `time` (the kernel's mark_victim timestamp, CLOCK_MONOTONIC as wall \
         time) to the wall clock when a `watch` client read the line; {} of {LATENCY_KILLS} \
         kills, 20 ms apart; bpftrace: its `nsecs` to CLOCK_MONOTONIC when its line was read{}",
        ours.len(),
        console_note()
    );
    for (id, figure, p) in [
        ("latency_p50", "latency kill -> `watch` client, p50", 50.0),
        ("latency_p99", "latency kill -> `watch` client, p99", 99.0),
    ] {
        b.rows.push(
            Row::new(id, figure, "ms")
                .value(percentile(&ours, p).ok_or_else(|| "no kill events".to_owned()))
                .baseline("bpftrace one-liner (printf)", theirs(p))
                .note(note.clone()),
        );
    }
    b.details.insert("latency_ms".into(), json!(ours));
    Ok(())
}

/// Whether the kernel prints each kill on a console (its "Killed process" line is KERN_ERR),
/// which delays every watcher: the OOM killer prints it, on the CPU the watcher is woken on,
/// before the victim can exit.
fn console_note() -> String {
    let consoles = std::fs::read_to_string("/proc/consoles").unwrap_or_default();
    let names: Vec<&str> = consoles
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let level: u32 = std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if names.is_empty() || level <= 3 {
        return String::new();
    }
    format!(
        "; the kernel prints each Killed process line on console {} (console_loglevel {level}) \
         before a watcher runs",
        names.join(", ")
    )
}

pub fn bpf_cost(b: &mut Bench) -> Result<(), String> {
    progress(&format!(
        "BPF cost: {BPF_KILLS} kills with kernel.bpf_stats_enabled on"
    ));
    let bare = baselines::bpftrace(baselines::BPFTRACE_COUNT);
    let cg = MemCg::new("bench-bpf", 4 << 20);
    let pids = [
        ("oomcount", Ok(b.daemon.pid())),
        (
            "bpftrace one-liner (printf)",
            b.bpftrace.as_ref().map(Baseline::pid).map_err(Clone::clone),
        ),
        (
            "bpftrace bare counter",
            bare.as_ref().map(Baseline::pid).map_err(Clone::clone),
        ),
    ];
    let snapshot = || -> Vec<Result<Vec<bpfstats::Prog>, String>> {
        pids.iter()
            .map(|(_, pid)| bpfstats::programs(*pid.as_ref().map_err(Clone::clone)?))
            .collect()
    };
    let stats = bpfstats::StatsOn::enable()?;
    let before = snapshot();
    producer::storm(std::slice::from_ref(&cg), BPF_KILLS);
    let after = snapshot();
    drop(stats);
    drop(bare);
    let costs: Vec<Result<Vec<bpfstats::Cost>, String>> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Ok(bpfstats::costs(b.as_ref()?, a.as_ref()?)))
        .collect();
    // The program that ran for the marks: the daemon's named so, a bpftrace's only one.
    let per_mark = |costs: &Result<Vec<bpfstats::Cost>, String>| -> Result<f64, String> {
        let costs = costs.as_ref().map_err(Clone::clone)?;
        let mark = costs
            .iter()
            .filter(|c| c.runs > 0)
            .find(|c| c.name.contains("mark_victim"))
            .or_else(|| costs.iter().max_by_key(|c| c.runs))
            .ok_or("no program ran")?;
        mark.ns_per_run
            .map(|ns| ns / 1000.0)
            .ok_or_else(|| format!("{} did not run", mark.name))
    };
    let ours = costs[0].as_ref().map_err(Clone::clone)?;
    let signal = ours.iter().find(|c| c.name.contains("signal"));
    let total_ns: f64 = ours
        .iter()
        .filter_map(|c| Some(c.ns_per_run? * c.runs as f64))
        .sum();
    let mut note = format!(
        "ns per run of the mark_victim program over {BPF_KILLS} kills; all of oomcount's BPF \
         time per kill: {:.2} us",
        total_ns / BPF_KILLS as f64 / 1000.0
    );
    if let Some(s) = signal {
        note.push_str(&format!(
            "; its signal_generate program: {} runs (every signal on the machine), {:.2} us each",
            s.runs,
            s.ns_per_run.unwrap_or(0.0) / 1000.0
        ));
    }
    b.rows.push(
        Row::new("bpf_cost", "BPF time per OOM event", "us")
            .value(per_mark(&costs[0]))
            .baseline("bpftrace bare counter", per_mark(&costs[2]))
            .baseline("bpftrace one-liner (printf)", per_mark(&costs[1]))
            .earlier("a bare counter", 1.2)
            .note(note),
    );
    let detail: Vec<_> = pids
        .iter()
        .zip(&costs)
        .map(|((name, _), c)| match c {
            Ok(c) => json!({"who": name, "programs": c.iter().map(|c| json!({"name": c.name, "runs": c.runs, "ns_per_run": c.ns_per_run})).collect::<Vec<_>>()}),
            Err(why) => json!({"who": name, "absent": why}),
        })
        .collect();
    b.details.insert("bpf_cost".into(), json!(detail));
    Ok(())
}

fn wait_for<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn storm(b: &mut Bench) -> Result<(), String> {
    let each = b.args.storm_kills.div_ceil(STORM_PRODUCERS);
    let total = each * STORM_PRODUCERS;
    progress(&format!(
        "storm: {total} kills by {STORM_PRODUCERS} producers, as fast as they go"
    ));
    let parent = MemCg::new("bench-storm", 64 << 20);
    let groups: Vec<MemCg> = (0..STORM_PRODUCERS)
        .map(|i| parent.child(&format!("p{i}"), Some(4 << 20)))
        .collect();
    let socket = b.daemon.socket().to_path_buf();
    let watch = client::Watch::start(&socket, &parent.path())?;
    let scrape = |node: &Result<Baseline, String>| -> Result<u64, String> {
        let address = node.as_ref().map_err(Clone::clone)?.address.clone();
        baselines::scrape(&address.expect("an address"))
            .and_then(|body| baselines::scraped_oom_kill(&body).ok_or("no oom_kill".into()))
    };
    let counted = |reply: &serde_json::Value| client::counter(reply, "kills");
    let (daemon0, vm0, node0) = (
        counted(&client::count(&socket)?),
        vmstat::oom_kill(),
        scrape(&b.node_exporter),
    );
    let bt_from = line_count(&b.bpftrace);
    let started = Instant::now();
    let kills = producer::storm(&groups, each);
    let took = started.elapsed();
    let vm = vmstat::oom_kill() - vm0;
    // The kills are in the kernel's counters the moment they happen; the events follow.
    let daemon = counted(&client::count(&socket)?) - daemon0;
    let got = wait_for(Duration::from_secs(10), || {
        let r = watch.received();
        (r.kill_latencies.len() as u64 + r.dropped >= kills).then_some(r)
    })
    .unwrap_or_else(|| watch.received());
    let memcg: u64 = groups.iter().map(MemCg::oom_kills).sum();
    let node = scrape(&b.node_exporter).and_then(|n| Ok(n - node0?));
    let (bt_marks, bt_lost) = b.bpftrace.as_ref().map_or((0, 0), |t| {
        let lines = t.lines();
        let marks = lines[bt_from..]
            .iter()
            .filter(|(_, l)| l.starts_with("mark "))
            .count() as u64;
        let lost = lines[bt_from..]
            .iter()
            .filter_map(|(_, l)| {
                l.strip_prefix("Lost ")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
        (marks, lost)
    });
    let bt = |v: u64| b.bpftrace.as_ref().map(|_| v as f64).map_err(Clone::clone);
    let storm_ms: Vec<f64> = got.kill_latencies.iter().map(|d| ms(*d)).collect();
    let note = format!(
        "{kills} kills in {:.1} s ({:.0}/s); /proc/vmstat +{vm}, the groups' memory.oom_control \
         {memcg}, the daemon's kills +{daemon}; a watch client read {} kill events, {} \
         dropped, latency p50 {:.2} ms p99 {:.2} ms; bpftrace printed {bt_marks} marks, lost \
         {bt_lost}",
        took.as_secs_f64(),
        kills as f64 / took.as_secs_f64(),
        got.kill_latencies.len(),
        got.dropped,
        percentile(&storm_ms, 50.0).unwrap_or(f64::NAN),
        percentile(&storm_ms, 99.0).unwrap_or(f64::NAN),
    );
    b.rows.push(
        Row::new("storm_missed", "kills missed in a storm", "kills")
            .value(Ok(vm.saturating_sub(daemon) as f64))
            .baseline(
                "bpftrace one-liner (printf)",
                bt(vm.saturating_sub(bt_marks)),
            )
            .baseline(
                "node_exporter",
                node.as_ref()
                    .map(|n| vm.saturating_sub(*n) as f64)
                    .map_err(Clone::clone),
            )
            .note(note.clone()),
    );
    b.rows.push(
        Row::new("storm_extra", "kills counted extra in a storm", "kills")
            .value(Ok(daemon.saturating_sub(vm) as f64))
            .baseline(
                "bpftrace one-liner (printf)",
                bt(bt_marks.saturating_sub(vm)),
            )
            .baseline("node_exporter", node.map(|n| n.saturating_sub(vm) as f64))
            .note(note),
    );
    b.rows.push(
        Row::new(
            "storm_latency_p99",
            "latency kill -> `watch` client in the storm, p99",
            "ms",
        )
        .value(percentile(&storm_ms, 99.0).ok_or_else(|| "no kill events".to_owned())),
    );
    b.details.insert(
        "storm".into(),
        json!({"kills": kills, "seconds": took.as_secs_f64(), "vmstat": vm, "memcg": memcg,
               "daemon": daemon, "events": got.kill_latencies.len(), "dropped": got.dropped,
               "garbage": got.garbage}),
    );
    Ok(())
}

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
    b.rows.push(
        Row::new("rss_peak", "daemon peak RSS (VmHWM, at the end)", "kB")
            .value(Ok(m.hwm_kb as f64))
            .baseline(
                "watchdog(8), memory locked",
                memory(&b.watchdog).map(|m| m.hwm_kb as f64),
            )
            .baseline(
                "node_exporter, after 100 scrapes",
                memory(&b.node_exporter).map(|m| m.hwm_kb as f64),
            )
            .baseline(
                "bpftrace one-liner",
                memory(&b.bpftrace).map(|m| m.hwm_kb as f64),
            )
            .earlier("bare aya loader", 38_700.0)
            .earlier("bare aya loader, kernel BTF skipped", 21_000.0),
    );
    b.rows.push(
        Row::new("rss_end", "daemon RSS at the end (history full)", "kB")
            .value(Ok(m.rss_kb as f64))
            .note("after every phase: thousands of events, history at its 1024"),
    );
    Ok(())
}
