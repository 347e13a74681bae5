//! `oomcount-bench`: measures the release daemon beside what users would run instead, on this
//! machine, in one run, and prints the figures as JSON on stdout (progress on stderr).
//! `cargo xtask bench` builds and runs it, adds the goals and prints the table.
//!
//!     oomcount-bench [--idle-secs 60] [--storm-kills 2000] [--absent NAME=REASON]...
//!     oomcount-bench --hot-functions FILE     (see the `hot` module)
//!
//! Every OOM kill it makes happens in a small memory cgroup of its own (never a global OOM);
//! the only processes it signals are the ones it started. `kernel.bpf_stats_enabled` is on only
//! while the BPF cost is measured, and put back as it was, on error too.
mod baselines;
mod bpfstats;
mod client;
mod hot;
mod oomd;
mod phases;
mod procfs;
mod report;
mod stacks;

use std::{process::ExitCode, time::Duration};

use serde_json::json;

use crate::{baselines::Baseline, oomd::Oomd, report::Row};

pub struct Args {
    pub idle: Duration,
    pub storm_kills: u64,
    /// Baselines the caller could not install, with the reason.
    pub absent: Vec<(String, String)>,
    /// Write the daemon's hot functions there instead of measuring.
    pub hot_functions: Option<std::path::PathBuf>,
}

/// What every phase measures against: the daemon and the baselines, running side by side.
pub struct Bench {
    pub args: Args,
    pub dir: std::path::PathBuf,
    pub daemon: Oomd,
    pub bpftrace: Result<Baseline, String>,
    pub node_exporter: Result<Baseline, String>,
    pub watchdog: Result<Baseline, String>,
    pub rows: Vec<Row>,
    pub details: serde_json::Map<String, serde_json::Value>,
}

fn main() -> ExitCode {
    oomcount_integration_test::require_root();
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("oomcount-bench: {err}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("oomcount-bench-{}", std::process::id()));
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("oomcount-bench: mkdir {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    let outcome = run(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oomcount-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, dir: &std::path::Path) -> Result<(), String> {
    let started = std::time::Instant::now();
    // Every daemon the bench starts runs with every feature a dom0 would turn on, xenstore
    // included: against a real oxenstored on this host (no hypervisor needed), where it can run.
    let xenstored = start_xenstored();
    if let Some(out) = &args.hot_functions {
        return hot::run(out, dir);
    }
    let absent = |name: &str| {
        args.absent
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, why)| why.clone())
    };
    progress("baselines: watchdog(8), node_exporter, bpftrace");
    let watchdog = absent("watchdog").map_or_else(|| baselines::watchdog(dir), Err);
    let node_exporter = absent("node_exporter").map_or_else(baselines::node_exporter, Err);
    let bpftrace =
        absent("bpftrace").map_or_else(|| baselines::bpftrace(baselines::BPFTRACE_PRINT), Err);
    for (name, baseline) in [
        ("watchdog", &watchdog),
        ("node_exporter", &node_exporter),
        ("bpftrace", &bpftrace),
    ] {
        if let Err(why) = baseline {
            progress(&format!("{name} absent: {why}"));
        }
    }
    let xenstore = phases::memory::xenstore_memory()?;
    let (daemon, starts) = phases::memory::startup()?;
    let mut bench = Bench {
        args,
        dir: dir.to_path_buf(),
        daemon,
        bpftrace,
        node_exporter,
        watchdog,
        rows: Vec::new(),
        details: serde_json::Map::new(),
    };
    phases::memory::startup_rows(&mut bench, &starts);
    phases::memory::steady_memory(&mut bench)?;
    bench.rows.push(xenstore.0);
    bench
        .details
        .insert("xenstore_rss_by_mapping_kb".into(), xenstore.1);
    phases::cpu::idle_cpu(&mut bench)?;
    phases::cpu::count_ratio(&mut bench)?;
    phases::cpu::scrapes(&mut bench)?;
    phases::events::latency(&mut bench)?;
    phases::events::publish_latency(&mut bench)?;
    phases::bpf::bpf_cost(&mut bench)?;
    phases::events::storm(&mut bench)?;
    phases::memory::end_memory(&mut bench)?;
    let Bench {
        daemon,
        mut rows,
        mut details,
        ..
    } = bench;
    daemon.stop()?;
    phases::signals::signal_cost(&mut rows, &mut details)?;
    details.insert(
        "xenstore".into(),
        json!(match &xenstored {
            Ok(_) => "on, against a host oxenstored".to_owned(),
            Err(why) => format!("off: {why}"),
        }),
    );
    drop(xenstored);
    details.insert("took_s".into(), json!(started.elapsed().as_secs_f64()));
    let output = json!({
        "kernel": oomcount_integration_test::kernel_release(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "oomcount": oomcount_integration_test::locate::oomcount(),
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "details": details,
    });
    println!("{output:#}");
    Ok(())
}

/// A real oxenstored for the daemons' xenstore mode, its socket in `XENSTORED_PATH` for every
/// daemon started after; or why not (the daemons then run without xenstore).
fn start_xenstored() -> Result<oomcount_integration_test::xenstored::Xenstored, String> {
    use oomcount_integration_test::xenstored;
    if let Some(why) = xenstored::unavailable() {
        return Err(why);
    }
    progress("xenstore: a host oxenstored for the daemons");
    let store = std::panic::catch_unwind(xenstored::Xenstored::start)
        .map_err(|_| "oxenstored did not start (see above)".to_owned())?;
    // As a real dom0's store has it (oxenstored runs here with --no-domain-init): the daemons'
    // dom0 readers then follow domain 0 from their first round, as on a dom0.
    write_key(&store.socket(), "/local/domain/0/name", b"Domain-0")
        .map_err(|err| format!("write /local/domain/0/name into the host store: {err}"))?;
    // SAFETY: set before any thread of the bench's that reads the environment starts.
    unsafe { std::env::set_var("XENSTORED_PATH", store.socket()) };
    Ok(store)
}

/// One XS_WRITE (`xs_wire.h`: type 11, request id, transaction 0, length; `path\0value`) over
/// the store's socket, and its reply read.
fn write_key(socket: &std::path::Path, path: &str, value: &[u8]) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut payload = path.as_bytes().to_vec();
    payload.push(0);
    payload.extend_from_slice(value);
    let mut message = Vec::new();
    for word in [11u32, 1, 0, payload.len() as u32] {
        message.extend_from_slice(&word.to_le_bytes());
    }
    message.extend_from_slice(&payload);
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&message)?;
    let mut header = [0u8; 16];
    stream.read_exact(&mut header)?;
    let kind = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(header[12..].try_into().expect("4 bytes"));
    let mut reply = vec![0u8; len as usize];
    stream.read_exact(&mut reply)?;
    match kind {
        11 => Ok(()),
        _ => Err(std::io::Error::other(format!(
            "the store answered type {kind}: {}",
            String::from_utf8_lossy(&reply)
        ))),
    }
}

pub fn progress(what: &str) {
    eprintln!("bench: {what}");
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        idle: Duration::from_secs(60),
        storm_kills: 2000,
        absent: Vec::new(),
        hot_functions: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--idle-secs" => {
                let secs = value()?;
                args.idle = Duration::from_secs(
                    secs.parse()
                        .map_err(|_| format!("--idle-secs {secs:?}: not a number"))?,
                );
            }
            "--storm-kills" => {
                let kills = value()?;
                args.storm_kills = kills
                    .parse()
                    .map_err(|_| format!("--storm-kills {kills:?}: not a number"))?;
            }
            "--absent" => {
                let pair = value()?;
                let (name, why) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("--absent {pair:?}: give NAME=REASON"))?;
                args.absent.push((name.to_owned(), why.to_owned()));
            }
            "--hot-functions" => args.hot_functions = Some(value()?.into()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(args)
}
