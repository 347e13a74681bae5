//! What users would run instead, started the way the bench compares them (FACTS.md): a bpftrace
//! one-liner on `oom/mark_victim`, node_exporter with only its vmstat collector on loopback, and
//! watchdog(8) in a mode that cannot reboot. Each is absent (with the reason) when it is not
//! installed or does not start; that is a row of the table, not a failure.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub const BPFTRACE: &str = "/usr/bin/bpftrace";
pub const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
pub const WATCHDOG: &str = "/usr/sbin/watchdog";

/// The one-liner a user would write to see kills: it prints each mark with the kernel's
/// monotonic time (`nsecs`), so its latency is measured like the daemon's.
pub const BPFTRACE_PRINT: &str = "BEGIN { printf(\"ready\\n\"); } \
     tracepoint:oom:mark_victim { @marks = count(); printf(\"mark %d %llu\\n\", args->pid, nsecs); }";
/// A bare counter on the same tracepoint: the least a BPF program can cost there.
pub const BPFTRACE_COUNT: &str =
    "BEGIN { printf(\"ready\\n\"); } tracepoint:oom:mark_victim { @marks = count(); }";

/// A line a baseline printed, with CLOCK_MONOTONIC (ns) when it was read.
pub type Line = (u64, String);

/// A running baseline; stopped on drop.
pub struct Baseline {
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    stop_signal: Signal,
    /// From just before `spawn` to ready (bpftrace: its BEGIN probe, which runs once every
    /// probe is attached; node_exporter: its first answer on /metrics).
    pub ready_after: Option<Duration>,
    /// node_exporter's address.
    pub address: Option<String>,
}

impl Baseline {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far (stdout and stderr).
    pub fn lines(&self) -> Vec<Line> {
        lock(&self.lines).clone()
    }

    /// Stops it (bpftrace prints its maps on SIGINT) and returns every line it printed.
    pub fn stop(mut self) -> Vec<Line> {
        self.end();
        // The reader threads finish once the pipes close.
        std::thread::sleep(Duration::from_millis(50));
        self.lines()
    }

    fn end(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), self.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.end();
    }
}

fn spawn(cmd: &mut Command, stop_signal: Signal) -> Result<Baseline, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("start {cmd:?}: {err}"))?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    read_lines(out, lines.clone());
    read_lines(err, lines.clone());
    Ok(Baseline {
        child,
        lines,
        stop_signal,
        ready_after: None,
        address: None,
    })
}

fn read_lines(pipe: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<Line>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            lock(&lines).push((monotonic_ns(), line));
        }
    });
}

/// Waits until `baseline` printed a line containing `want`; returns when it was read.
fn wait_line(baseline: &mut Baseline, want: &str, within: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some((at, _)) = baseline.lines().iter().find(|(_, l)| l.contains(want)) {
            return Ok(*at);
        }
        if let Ok(Some(status)) = baseline.child.try_wait() {
            return Err(format!("it exited ({status}): {}", said(baseline)));
        }
        if Instant::now() >= deadline {
            return Err(format!("no {want:?} within {within:?}: {}", said(baseline)));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn said(baseline: &Baseline) -> String {
    let lines: Vec<String> = baseline.lines().into_iter().map(|(_, l)| l).collect();
    lines.join(" / ")
}

/// `bpftrace -e PROGRAM`, ready once its BEGIN probe printed `ready`.
pub fn bpftrace(program: &str) -> Result<Baseline, String> {
    installed(BPFTRACE, "bpftrace")?;
    let started_ns = monotonic_ns();
    let mut baseline = spawn(
        Command::new(BPFTRACE).args(["-B", "line", "-e", program]),
        Signal::SIGINT,
    )?;
    let ready_ns = wait_line(&mut baseline, "ready", Duration::from_secs(30))
        .map_err(|err| format!("bpftrace did not start: {err}"))?;
    baseline.ready_after = Some(Duration::from_nanos(ready_ns - started_ns));
    Ok(baseline)
}

/// node_exporter with only its vmstat collector, on a free loopback port; ready once
/// `/metrics` answers.
pub fn node_exporter() -> Result<Baseline, String> {
    installed(NODE_EXPORTER, "prometheus-node-exporter")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|err| format!("find a free loopback port: {err}"))?
        .port();
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut baseline = spawn(
        Command::new(NODE_EXPORTER).args([
            "--collector.disable-defaults",
            "--collector.vmstat",
            &format!("--web.listen-address={address}"),
        ]),
        Signal::SIGTERM,
    )?;
    let deadline = started + Duration::from_secs(10);
    loop {
        if scrape(&address).is_ok() {
            baseline.ready_after = Some(started.elapsed());
            break;
        }
        if let Ok(Some(status)) = baseline.child.try_wait() {
            return Err(format!(
                "node_exporter exited ({status}): {}",
                said(&baseline)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node_exporter did not answer on {address} within 10 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    baseline.address = Some(address);
    Ok(baseline)
}

/// One scrape of node_exporter's `/metrics` on loopback; the body.
pub fn scrape(address: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|err| format!("{address}: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|err| format!("{address}: {err}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|err| format!("{address}: {err}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => Err(format!("{address}: {:?}", response.lines().next())),
    }
}

/// `node_vmstat_oom_kill` from a scrape.
pub fn scraped_oom_kill(body: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix("node_vmstat_oom_kill "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// watchdog(8) as FACTS.md measured it (`realtime = yes`: memory locked, priority 1), in a mode
/// that cannot reboot: no watchdog device in its configuration (none is its default), no test
/// or repair binaries, an empty test directory, and `--no-action`. Before the measured run, a
/// verbose dry run of one second must report `alive=[none]` and `no_act=yes`; else it is not
/// run at all.
pub fn watchdog(dir: &Path) -> Result<Baseline, String> {
    installed(WATCHDOG, "watchdog")?;
    let empty = dir.join("watchdog.d");
    std::fs::create_dir_all(&empty).map_err(|err| format!("mkdir {}: {err}", empty.display()))?;
    let config = dir.join("watchdog.conf");
    let text = format!(
        "realtime = yes\npriority = 1\ntest-directory = {}\n",
        empty.display()
    );
    for forbidden in ["watchdog-device", "test-binary", "repair-binary", "reboot"] {
        assert!(
            !text.contains(forbidden),
            "{forbidden} in the watchdog config"
        );
    }
    std::fs::write(&config, &text).map_err(|err| format!("write {}: {err}", config.display()))?;
    let args = |verbose: bool| {
        let mut args = vec!["--foreground".to_owned(), "--no-action".to_owned()];
        if verbose {
            args.push("--verbose".to_owned());
        }
        args.extend(["--config-file".to_owned(), config.display().to_string()]);
        args
    };
    // The dry run: the daemon says which device it keeps alive and whether it may act.
    let mut dry = spawn(Command::new(WATCHDOG).args(args(true)), Signal::SIGTERM)?;
    let verdict = wait_line(&mut dry, "no_act=", Duration::from_secs(5));
    let lines = said(&dry);
    drop(dry);
    verdict.map_err(|err| format!("watchdog's dry run: {err}"))?;
    if !(lines.contains("alive=[none]") && lines.contains("no_act=yes")) {
        return Err(format!(
            "refused: watchdog's dry run did not report alive=[none] and no_act=yes: {lines}"
        ));
    }
    let baseline = spawn(Command::new(WATCHDOG).args(args(false)), Signal::SIGTERM)?;
    std::thread::sleep(Duration::from_millis(300));
    let holds_device = std::fs::read_dir(format!("/proc/{}/fd", baseline.pid()))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("/dev/watchdog"))
            })
        })
        .unwrap_or(false);
    if holds_device {
        return Err("refused: watchdog opened a watchdog device; stopped it".to_owned());
    }
    Ok(baseline)
}

fn installed(path: &str, package: &str) -> Result<(), String> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!("not installed ({path}; Debian package {package})"))
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of bpftrace's `nsecs` and of the kernel's event times.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on this stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
