//! Events: latency from the kernel's mark to a `watch` client, and exactness in a storm.
use std::time::{Duration, Instant};

use oomcount_integration_test::{MemCg, producer, vmstat};
use serde_json::json;

use super::{line_count, ms, wait_for};
use crate::{
    Bench,
    baselines::{self, Baseline},
    client,
    procfs::Sysctl,
    progress,
    report::{Row, percentile},
};

/// The kernel's log levels: the first is the console's.
const PRINTK: &str = "/proc/sys/kernel/printk";
/// Kills, one at a time, whose latency is measured.
const LATENCY_KILLS: usize = 100;
/// Producers of the storm, each in a group of its own.
const STORM_PRODUCERS: u64 = 4;

/// bpftrace's `mark PID NSECS` lines after the first `from`: how long after `nsecs` each was
/// read, in ms.
fn bpftrace_latencies_since(
    bpftrace: &Result<Baseline, String>,
    from: usize,
) -> Result<Vec<f64>, String> {
    Ok(bpftrace
        .as_ref()
        .map_err(Clone::clone)?
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
        .collect())
}

pub fn latency(b: &mut Bench) -> Result<(), String> {
    progress(&format!("latency: {LATENCY_KILLS} kills, one at a time"));
    let cg = MemCg::new("bench-latency", 4 << 20);
    let console = console_note();
    let note = format!(
        "the kill event's `time` (the kernel's mark_victim timestamp, CLOCK_MONOTONIC as wall \
         time) to the wall clock when a `watch` client read the line; {LATENCY_KILLS} kills, 20 \
         ms apart; bpftrace: its `nsecs` to CLOCK_MONOTONIC when its line was read{console}"
    );
    let rows = [
        ("latency_p50", "latency kill -> `watch` client, p50"),
        ("latency_p99", "latency kill -> `watch` client, p99"),
    ];
    let default = measure(b, &cg, rows, &note)?;
    b.details.insert("latency_ms".into(), json!(default));

    // The same with the daemon at SCHED_FIFO 1, as `realtime = true` runs it.
    progress("latency again, the daemon at SCHED_FIFO 1 (realtime = true)");
    let pid = b.daemon.pid();
    let realtime = with_policy(pid, libc::SCHED_FIFO, 1, || {
        let rows = [
            (
                "latency_rt_p50",
                "latency kill -> `watch`, realtime = true, p50",
            ),
            (
                "latency_rt_p99",
                "latency kill -> `watch`, realtime = true, p99",
            ),
        ];
        measure(b, &cg, rows, "as above, with the daemon at SCHED_FIFO 1")
    })?;
    b.details.insert("latency_rt_ms".into(), json!(realtime));

    // The console's share: the same with the kernel's console quiet for the kill lines (a
    // setting of the machine, not of oomcount: `kernel.printk = 3` or `loglevel=3`).
    if !console.is_empty() {
        progress("latency again, with console_loglevel 3 (the kill lines off the console)");
        let quiet = Sysctl::set(PRINTK, "3")?;
        let note = "as the first, with console_loglevel 3 for the measurement (`kernel.printk`, \
                    put back after): the Killed process lines (KERN_ERR) no longer go to the \
                    console";
        let rows = [
            (
                "latency_quiet_p50",
                "latency kill -> `watch`, console quiet, p50",
            ),
            (
                "latency_quiet_p99",
                "latency kill -> `watch`, console quiet, p99",
            ),
        ];
        let ms = measure(b, &cg, rows, note);
        drop(quiet);
        b.details.insert("latency_quiet_ms".into(), json!(ms?));
    }
    Ok(())
}

/// [`kill_latencies`] as two rows (id and figure), p50 and p99, with bpftrace's latencies over
/// the same kills as their baseline; returns the daemon's latencies.
fn measure(
    b: &mut Bench,
    cg: &MemCg,
    rows: [(&'static str, &'static str); 2],
    note: &str,
) -> Result<Vec<f64>, String> {
    let from = line_count(&b.bpftrace);
    let ours = kill_latencies(b, cg)?;
    let theirs = bpftrace_latencies_since(&b.bpftrace, from);
    for ((id, figure), p) in rows.into_iter().zip([50.0, 99.0]) {
        b.rows.push(
            Row::new(id, figure, "ms")
                .value(percentile(&ours, p).ok_or_else(|| "no kill events".to_owned()))
                .baseline(
                    "bpftrace one-liner (printf)",
                    theirs
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|t| percentile(t, p).ok_or_else(|| "no mark lines".to_owned())),
                )
                .note(format!(
                    "{note}; {} of {LATENCY_KILLS} kills seen",
                    ours.len()
                )),
        );
    }
    Ok(ours)
}

/// `LATENCY_KILLS` kills in `cg`, one at a time: each one's latency to a `watch` client, in ms.
fn kill_latencies(b: &Bench, cg: &MemCg) -> Result<Vec<f64>, String> {
    let watch = client::Watch::start(b.daemon.socket(), &cg.path())?;
    for _ in 0..LATENCY_KILLS {
        producer::storm(std::slice::from_ref(cg), 1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = wait_for(Duration::from_secs(10), || {
        let r = watch.received();
        (r.kill_latencies.len() as u64 + r.dropped >= LATENCY_KILLS as u64).then_some(r)
    })
    .unwrap_or_else(|| watch.received());
    Ok(got.kill_latencies.iter().map(|d| ms(*d)).collect())
}

/// Runs `f` with `pid` at scheduling `policy`/`priority`, then puts it back to SCHED_OTHER.
fn with_policy<T>(
    pid: u32,
    policy: i32,
    priority: i32,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let set = |policy, priority| {
        let param = libc::sched_param {
            sched_priority: priority,
        };
        // SAFETY: sched_setscheduler on a pid of ours with a parameter we own.
        match unsafe { libc::sched_setscheduler(pid as i32, policy, &param) } {
            0 => Ok(()),
            _ => Err(format!(
                "sched_setscheduler({pid}): {}",
                std::io::Error::last_os_error()
            )),
        }
    };
    set(policy, priority)?;
    let result = f();
    set(libc::SCHED_OTHER, 0)?;
    result
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
    let level: u32 = std::fs::read_to_string(PRINTK)
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

/// Kills, one at a time, whose appearance in the textfile and at the port is measured.
const PUBLISH_KILLS: usize = 100;

/// A kill to its appearance in the daemon's Prometheus outputs, each measured over kills of
/// its own so that neither measurement disturbs the other: the textfile's rename (seen by
/// inotify) after the kill's mark; then the first answer of the port that counts the kill (a
/// thread scraping in a loop meanwhile).
pub fn publish_latency(b: &mut Bench) -> Result<(), String> {
    progress(&format!(
        "latency to the textfile, then to the port: {PUBLISH_KILLS} kills each, one at a time"
    ));
    publish_rows(
        b,
        [
            ("publish_textfile_p99", "latency kill -> textfile, p99"),
            ("publish_port_p99", "latency kill -> port's answer, p99"),
        ],
        "",
    )?;
    // As the `watch` latency: the console's share left out.
    if !console_note().is_empty() {
        progress("the same with console_loglevel 3 (the kill lines off the console)");
        let quiet = Sysctl::set(PRINTK, "3")?;
        let measured = publish_rows(
            b,
            [
                (
                    "publish_textfile_quiet_p99",
                    "latency kill -> textfile, console quiet, p99",
                ),
                (
                    "publish_port_quiet_p99",
                    "latency kill -> port's answer, console quiet, p99",
                ),
            ],
            "; console_loglevel 3 meanwhile (`kernel.printk`, put back after)",
        );
        drop(quiet);
        measured?;
    }
    Ok(())
}

/// One measurement of [`publish_latency`]: its two rows, `more` added to their notes.
fn publish_rows(
    b: &mut Bench,
    ids: [(&'static str, &'static str); 2],
    more: &str,
) -> Result<(), String> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let cg = MemCg::new("bench-publish", 4 << 20);

    let renames = Renames::watch(b.daemon.textfile.parent().expect("a folder"))?;
    let (_, marks) = marked_kills(b, &cg)?;
    let renames = renames.stop();
    // The first rename after each kill's mark.
    let textfile: Vec<f64> = marks
        .iter()
        .filter_map(|&marked| renames.iter().find_map(|&r| after(marked, r)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let address = b.daemon.metrics.clone();
    let stopped = stop.clone();
    // (when answered, oomcount_oom_kills_total) for each scrape.
    let scraper = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            let Ok(body) = baselines::scrape(&address) else {
                continue;
            };
            let at = std::time::SystemTime::now();
            if let Some(kills) = body
                .lines()
                .find_map(|l| l.strip_prefix("oomcount_oom_kills_total "))
                .and_then(|v| v.parse::<u64>().ok())
            {
                seen.push((at, kills));
            }
        }
        seen
    });
    let marked = marked_kills(b, &cg);
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper
        .join()
        .map_err(|_| "the scraper panicked".to_owned())?;
    let (kills0, port_marks) = marked?;
    // The first answer counting the n-th kill, after its mark.
    let port: Vec<f64> = port_marks
        .iter()
        .enumerate()
        .filter_map(|(n, &marked)| {
            scrapes
                .iter()
                .find(|(_, kills)| *kills > kills0 + n as u64)
                .and_then(|&(at, _)| after(marked, at))
        })
        .collect();
    let [(textfile_id, textfile_figure), (port_id, port_figure)] = ids;
    let rows = [
        (
            textfile_id,
            textfile_figure,
            &textfile,
            format!(
                "the kill event's `time` (the kernel's mark) to the rename of the textfile (inotify \
                 IN_MOVED_TO, read by a thread of the bench); {} renames for {} kills seen by a \
                 watcher",
                renames.len(),
                marks.len()
            ),
        ),
        (
            port_id,
            port_figure,
            &port,
            format!(
                "the kill event's `time` to the first answer of the port that counts it, over \
                 {PUBLISH_KILLS} more kills while a thread of the bench scraped in a loop ({} \
                 scrapes): the port reads the kernel's counters at each scrape",
                scrapes.len()
            ),
        ),
    ];
    for (id, figure, values, note) in rows {
        b.rows.push(
            Row::new(id, figure, "ms")
                .value(percentile(values, 99.0).ok_or_else(|| "none seen".to_owned()))
                .note(format!(
                    "{note}; p50 {:.3} ms, {} kills measured{more}",
                    percentile(values, 50.0).unwrap_or(f64::NAN),
                    values.len()
                )),
        );
    }
    b.details.insert(
        format!("{textfile_id}_ms"),
        json!({"textfile": textfile, "port": port}),
    );
    Ok(())
}

/// How long after `at` the time `t` is, in ms; `None` before it.
fn after(at: std::time::SystemTime, t: std::time::SystemTime) -> Option<f64> {
    t.duration_since(at).ok().map(ms)
}

/// [`PUBLISH_KILLS`] kills in `cg`, one at a time: the daemon's kill count before them, and their
/// marks (the events' `time`) in order.
fn marked_kills(b: &Bench, cg: &MemCg) -> Result<(u64, Vec<std::time::SystemTime>), String> {
    let socket = b.daemon.socket().to_path_buf();
    let kills0 = client::counter(&client::count(&socket)?, "kills");
    let watch = client::Watch::start(&socket, &cg.path())?;
    for _ in 0..PUBLISH_KILLS {
        producer::storm(std::slice::from_ref(cg), 1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = wait_for(Duration::from_secs(10), || {
        let r = watch.received();
        (r.kill_times.len() >= PUBLISH_KILLS).then_some(r)
    })
    .unwrap_or_else(|| watch.received());
    // The daemon renames the textfile after the batch that carried the last event.
    std::thread::sleep(Duration::from_millis(100));
    let mut marks = got.kill_times;
    marks.sort();
    Ok((kills0, marks))
}

/// The wall-clock times of the renames into a folder (the daemon's textfile), read by a thread
/// from inotify until stopped.
struct Renames {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<std::time::SystemTime>>,
}

impl Renames {
    fn watch(dir: &std::path::Path) -> Result<Renames, String> {
        use std::os::unix::ffi::OsStrExt as _;
        // SAFETY: inotify_init1 makes a descriptor this function owns from here.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(format!(
                "inotify_init1: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the descriptor is valid and owned by the OwnedFd alone.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| "a NUL in the textfile's folder".to_owned())?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(raw, path.as_ptr(), libc::IN_MOVED_TO) } < 0 {
            return Err(format!(
                "inotify_add_watch {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut buf = [0u8; 4096];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let mut poll = libc::pollfd {
                    fd: raw,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd of ours, a 50 ms timeout.
                if unsafe { libc::poll(&mut poll, 1, 50) } <= 0 {
                    continue;
                }
                let at = std::time::SystemTime::now();
                // SAFETY: reading into a buffer of ours from a descriptor held by `fd`.
                let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
                // Each event is one rename into the folder (the textfile is all there is).
                let size = std::mem::size_of::<libc::inotify_event>();
                let mut at_byte = 0;
                while n > 0 && at_byte + size <= n as usize {
                    let len = u32::from_ne_bytes(
                        buf[at_byte + 12..at_byte + 16].try_into().expect("4 bytes"),
                    ) as usize;
                    times.push(at);
                    at_byte += size + len;
                }
            }
            drop(fd);
            times
        });
        Ok(Renames { stop, thread })
    }

    fn stop(self) -> Vec<std::time::SystemTime> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
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
