//! `oomcount-bench --hot-functions FILE`: the functions of the release daemon that run once it
//! serves, written for the linker (`oomcount/build.rs` puts them first in `.text`; it says why).
//!
//! bpftrace puts a uprobe on every function of the binary before the daemon starts, and keeps
//! for each when it last ran. The daemon then runs with every feature (as the bench runs it)
//! while it is asked every kind of request by the real commands (a copy of the binary, whose
//! functions the probes do not see), scraped, and sees kills, threads' marks and a watcher; the
//! functions that ran after it said it serves come first, then those that ran only before it
//! served (start-up), each in the binary's own order: start-up then touches its own pages,
//! not the whole binary, and the pages kept once it serves hold the daemon's steady code.
//!
//! A thread's loop, entered once before it serves and running since, counts as run once it serves:
//! the `stacks` module finds those.
//!
//! uprobes cannot sit on some first instructions (locked, VEX-encoded): those few functions are
//! left out, and their code lands wherever the linker puts it.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use oomcount_integration_test::{MemCg, locate, producer};

use crate::{baselines, client, oomd::Oomd, progress, stacks};

/// How long the daemon is exercised: more than the xenstore writer's and the vitals' 10 s.
const EXERCISE: Duration = Duration::from_secs(25);

/// Writes the list to `out`.
pub fn run(out: &Path, dir: &Path) -> Result<(), String> {
    let bin = locate::oomcount();
    let functions = functions(&bin)?;
    let probed = probeable(&bin, &functions)?;
    progress(&format!(
        "hot functions: {} of {} functions probed",
        probed.len(),
        functions.len()
    ));
    let program = dir.join("hot.bt");
    let probes: Vec<String> = probed
        .iter()
        .map(|addr| format!("uprobe:{}:{addr}", bin.display()))
        .collect();
    std::fs::write(
        &program,
        format!(
            "BEGIN {{ printf(\"attached\\n\"); }}\n{}\n{{ @last[probe, pid] = nsecs; }}\n",
            probes.join(",\n")
        ),
    )
    .map_err(|err| format!("write {}: {err}", program.display()))?;
    raise_memlock();
    let mut bpftrace = Tracer(
        Command::new("bpftrace")
            .arg(&program)
            .env("BPFTRACE_MAX_PROBES", "100000")
            .env("BPFTRACE_MAX_BPF_PROGS", "100000")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| format!("bpftrace: {err}"))?,
    );
    let mut out_lines = BufReader::new(bpftrace.0.stdout.take().expect("piped")).lines();
    progress("hot functions: attaching the uprobes (minutes)");
    loop {
        match out_lines.next() {
            Some(Ok(line)) if line == "attached" => break,
            Some(Ok(_)) => {}
            _ => return Err(format!("bpftrace ended: {:?}", bpftrace.0.wait())),
        }
    }
    // The split is when it said it serves: it gives back what start-up mapped a moment later,
    // so whatever runs after (its threads' first rounds too) is what stays resident.
    let spawned = monotonic_ns();
    let daemon = Oomd::start("hot")?;
    let serving = spawned + daemon.ready_after.as_nanos() as u64;
    let exercised = exercise(&daemon, dir);
    // Before it stops: what each thread is in the middle of.
    let stacks = stacks::of(daemon.pid(), &bin);
    let pid = daemon.pid().to_string();
    daemon.stop()?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bpftrace.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .map_err(|err| format!("SIGINT bpftrace: {err}"))?;
    exercised?;
    let stacks = stacks?;
    // `@last[uprobe:BIN:ADDRESS, PID]: NSECS`: when each function was last entered by the
    // daemon (not by the hooks' launcher, the same binary in another process).
    let mut last = BTreeMap::new();
    for line in out_lines {
        let line = line.map_err(|err| format!("bpftrace's output: {err}"))?;
        let Some((probe, nsecs)) = line
            .strip_prefix("@last[")
            .and_then(|l| l.split_once("]: "))
            .and_then(|(key, ns)| {
                key.strip_suffix(pid.as_str())?
                    .strip_suffix(", ")
                    .zip(Some(ns))
            })
        else {
            continue;
        };
        let addr = probe.rsplit(':').next().and_then(|a| a.parse::<u64>().ok());
        if let (Some(addr), Ok(ns)) = (addr, nsecs.trim().parse::<u64>()) {
            last.insert(addr, ns);
        }
    }
    let _ = bpftrace.0.wait();
    // Run once it serves: entered since, or a loop entered before that calls what was.
    let holding = |a: u64| {
        let (&start, function) = functions.range(..=a).next_back()?;
        (a < start + function.size).then_some(start)
    };
    let looping = stacks::looping(&stacks, |f| last.get(&f).copied(), holding, serving);
    let promoted: Vec<&u64> = looping
        .iter()
        .filter(|a| last.get(a).is_none_or(|&ns| ns < serving))
        .collect();
    progress(&format!(
        "hot functions: {} loops entered before serving, on the threads' stacks: {}",
        promoted.len(),
        promoted
            .iter()
            .filter_map(|a| functions.get(*a).map(|f| f.names[0].as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let (mut hot, mut startup) = (Vec::new(), Vec::new());
    for (&addr, &ns) in &last {
        if ns >= serving || looping.contains(&addr) {
            hot.push(addr);
        } else {
            startup.push(addr);
        }
    }
    // A loop whose first instruction took no uprobe is hot all the same.
    hot.extend(looping.iter().filter(|a| !last.contains_key(a)));
    if hot.is_empty() {
        return Err("no function ran after the daemon served: were the probes attached?".into());
    }
    let (hot, hot_bytes) = names(&functions, hot);
    let (startup, startup_bytes) = names(&functions, startup);
    let text = format!(
        "# The functions the daemon runs once it serves, then those only start-up runs, for lld's\n\
         # --symbol-ordering-file (oomcount/build.rs says why). Written by `cargo xtask bench\n\
         # --hot-functions` on Linux {}: do not edit.\n\
         # Once it serves: {} functions, {hot_bytes} bytes.\n{}\n\
         # Start-up only: {} functions, {startup_bytes} bytes.\n{}\n",
        oomcount_integration_test::kernel_release(),
        hot.len(),
        hot.join("\n"),
        startup.len(),
        startup.join("\n"),
    );
    std::fs::write(out, text).map_err(|err| format!("write {}: {err}", out.display()))?;
    progress(&format!(
        "hot functions: {} ({hot_bytes} bytes) and {} of start-up ({startup_bytes} bytes) \
         written to {}",
        hot.len(),
        startup.len(),
        out.display()
    ));
    Ok(())
}

/// bpftrace with its thousands of uprobes: killed and waited for on any early return (a daemon
/// that did not start, say), where `run` has not stopped it itself. While it attaches it does
/// not heed SIGINT or SIGTERM, hence SIGKILL.
struct Tracer(std::process::Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The names of the functions at `addrs`, in the binary's order, and their size in bytes.
fn names(functions: &BTreeMap<u64, Function>, mut addrs: Vec<u64>) -> (Vec<&str>, u64) {
    addrs.sort_unstable();
    let found: Vec<&Function> = addrs.iter().filter_map(|a| functions.get(a)).collect();
    let names = found
        .iter()
        .flat_map(|f| f.names.iter().map(String::as_str))
        .collect();
    (names, found.iter().map(|f| f.size).sum())
}

/// A function of the binary: its size and its names (aliases share an address).
struct Function {
    size: u64,
    names: Vec<String>,
}

/// The binary's functions by address, from `nm`.
fn functions(bin: &Path) -> Result<BTreeMap<u64, Function>, String> {
    let listed = output(Command::new("nm").args(["-S", "--defined-only"]).arg(bin))?;
    let mut functions: BTreeMap<u64, Function> = BTreeMap::new();
    for line in listed.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [addr, size, kind, name] = fields[..] else {
            continue;
        };
        let (Ok(addr), Ok(size)) = (u64::from_str_radix(addr, 16), u64::from_str_radix(size, 16))
        else {
            continue;
        };
        if size > 0 && matches!(kind, "t" | "T" | "w" | "W") {
            let function = functions.entry(addr).or_insert(Function {
                size,
                names: Vec::new(),
            });
            function.names.push(name.to_owned());
        }
    }
    Ok(functions)
}

/// The functions whose first instruction a uprobe can sit on, from `objdump`.
fn probeable(bin: &Path, functions: &BTreeMap<u64, Function>) -> Result<Vec<u64>, String> {
    let listing = output(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(bin),
    )?;
    let mut probed = Vec::new();
    let mut lines = listing.lines();
    while let Some(line) = lines.next() {
        // `0000000000123abc <name>:` then `  123abc:\tinstruction`
        let Some(addr) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .and_then(|(a, _)| u64::from_str_radix(a, 16).ok())
        else {
            continue;
        };
        if !functions.contains_key(&addr) {
            continue;
        }
        let first = lines
            .next()
            .and_then(|l| l.split_once(":\t"))
            .map_or("", |(_, insn)| insn.trim());
        let refused = ["lock", "xchg", "rep", "ud2", "int3"]
            .iter()
            .any(|p| first.starts_with(p))
            || first.starts_with('v');
        if !first.is_empty() && !refused {
            probed.push(addr);
        }
    }
    Ok(probed)
}

/// Every kind of request, scrape, kill and mark, for [`EXERCISE`].
fn exercise(daemon: &Oomd, dir: &Path) -> Result<(), String> {
    // The commands from a copy: the uprobes are on the daemon's file only.
    let client: PathBuf = dir.join("oomcount-client");
    std::fs::copy(locate::oomcount(), &client).map_err(|err| format!("copy the binary: {err}"))?;
    let socket = daemon.socket().to_path_buf();
    let cg = MemCg::new("bench-hot", 4 << 20);
    let watch = client::Watch::start(&socket, "")?;
    let until = Instant::now() + EXERCISE;
    while Instant::now() < until {
        for args in [
            &["count"][..],
            &["count", "--json"],
            &["check"],
            &["list"],
            &["list", "--json"],
            &["top"],
            &["top", "--by", "comm", "--json"],
            &["status"],
            &["next"],
        ] {
            // Their exit status is the verdict's or the command's: only that they ran matters.
            let _ = Command::new(&client)
                .args(args)
                .arg("--socket")
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        baselines::scrape(&daemon.metrics)?;
        producer::single_kills(&cg, 2);
        producer::threaded_kill(&cg, 4);
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(watch);
    Ok(())
}

/// CLOCK_MONOTONIC in ns: bpftrace's `nsecs`.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// bpftrace's thousands of programs need more locked memory than the default limit.
fn raise_memlock() {
    let infinity = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a struct we own; bpftrace inherits it.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &infinity) };
}

fn output(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|err| format!("{command:?}: {err}"))?;
    if !out.status.success() {
        return Err(format!("{command:?}: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
