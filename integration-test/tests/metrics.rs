//! The daemon's Prometheus metrics, read by the real consumers: a Prometheus server (Debian's
//! 2.42) scrapes the daemon's port, a node_exporter reads its textfile, and after real OOM kills
//! in a memory cgroup the PromQL answer through each path equals the kernel's `/proc/vmstat`
//! count; the alerting rules shipped in contrib/prometheus, loaded in that server, have the kill
//! alert pending. Then a hostile client of the port must not delay the watchdog's keepalives nor
//! the unix socket's answers.
//!
//! Prometheus and node_exporter run on loopback ports of their own, with their own config and
//! data in a folder of the test's, and are stopped (by pid) at the end. Prometheus scrapes first
//! about 5 s after it starts (FACTS.md), so every answer is polled with a deadline.
//!
//! The VM guests have neither program: the tests that need them say so there and return; the
//! others (the hostile clients of the port, bad `[metrics]` values) run in every guest, whose
//! `/init` brings loopback up.
use std::{
    ffi::OsStr,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use oomcount_integration_test::{
    Daemon, MemCg, Watch, in_vm, producer, require_root,
    wait::{deadline, time_scale, wait_until},
    watchdog::{Scratch, StandIn, oomcount},
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// Whether the real consumers are here; in a VM guest they may not be (said loudly).
fn consumers_here(test: &str) -> bool {
    let missing: Vec<&str> = [PROMETHEUS, NODE_EXPORTER, "/usr/bin/promtool"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        in_vm(),
        "{} missing: install them with `cargo xtask setup` (Debian packages prometheus, prometheus-node-exporter)",
        missing.join(", ")
    );
    eprintln!("SKIP {test}: {} not in this VM guest", missing.join(", "));
    false
}

/// Loopback must be up everywhere the tests run (the VM guests' `/init` brings it up): a port
/// that binds but cannot be reached (`lo` down) fails here in one line, not in every request.
fn loopback_here(test: &str) -> bool {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|err| panic!("{test}: cannot bind 127.0.0.1: {err}"));
    let addr = listener.local_addr().expect("a bound address");
    std::net::TcpStream::connect(addr)
        .unwrap_or_else(|err| panic!("{test}: loopback is down ({err}): bring `lo` up"));
    true
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One HTTP/1.0 GET: status code and body.
fn get(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|err| format!("connect {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|err| format!("send to {addr}: {err}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|err| format!("read from {addr}: {err}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head in {answer:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `s` for a URL's query.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A program the test started, stopped by its pid on drop, with its folder.
struct Started {
    child: Child,
    name: &'static str,
    log: PathBuf,
    addr: SocketAddr,
}

impl Started {
    fn start(name: &'static str, program: &str, args: &[&OsStr], dir: &Path, port: u16) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|err| panic!("start {program}: {err}"));
        Started {
            child,
            name,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `target` answers 200.
    fn wait_ready(&mut self, target: &str) {
        wait_until(
            deadline(Duration::from_secs(20)),
            &format!("{} to answer {target}", self.name),
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("{} exited ({status}):\n{}", self.name, self.log());
                }
                match get(self.addr, target) {
                    Ok((200, _)) => Ok(()),
                    other => Err(other),
                }
            },
        );
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // SIGTERM to the one process this test started (Prometheus exits 0 in ~7 ms).
        // SAFETY: kill(2) on a child's pid, which cannot be reused before it is waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server of the test's own, loading the shipped rules, scraping `targets` (job
/// name, address) every second.
struct Prometheus {
    server: Started,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> Self {
        let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../contrib/prometheus/oomcount-rules.yml")
            .canonicalize()
            .expect("contrib/prometheus/oomcount-rules.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n",
            rules.display().to_string()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let listen = format!("--web.listen-address=127.0.0.1:{port}");
        let data = format!("--storage.tsdb.path={}", dir.join("data").display());
        let config = format!("--config.file={}", file.display());
        let mut server = Started::start(
            "prometheus",
            PROMETHEUS,
            &[config.as_ref(), data.as_ref(), listen.as_ref()],
            dir,
            port,
        );
        server.wait_ready("/-/ready");
        Prometheus { server }
    }

    /// The value of a PromQL expression with one answer; Err says what came instead.
    fn query(&self, expr: &str) -> Result<f64, String> {
        let (status, body) = get(
            self.server.addr,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|err| format!("{status} {err}: {body}"))?;
        let result = json["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("{status}: {body}"))?;
        match result.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no value: {body}")),
            _ => Err(format!("{} answers: {body}", result.len())),
        }
    }

    /// Waits until `expr` is `want`.
    fn wait_value(&self, expr: &str, want: f64) {
        wait_until(
            deadline(Duration::from_secs(30)),
            &format!("Prometheus to answer {want} to {expr}"),
            || match self.query(expr) {
                Ok(v) if v == want => Ok(()),
                other => Err(other),
            },
        );
    }

    /// The alerts' names and states.
    fn alerts(&self) -> Result<Vec<(String, String)>, String> {
        let (_, body) = get(self.server.addr, "/api/v1/alerts")?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(json["data"]["alerts"]
            .as_array()
            .ok_or_else(|| body.clone())?
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect())
    }
}

/// `promtool check metrics` on `text`: exit 0, nothing said.
fn promtool_check(text: &str, what: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}: {}\n{said}\n{text}",
        out.status
    );
}

/// The value of the sample `series` (name and labels as written) in an exposition.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn prometheus_counts_real_kills_through_the_port_and_the_textfile() {
    require_root();
    if !consumers_here("prometheus_counts_real_kills_through_the_port_and_the_textfile")
        || !loopback_here("prometheus_counts_real_kills_through_the_port_and_the_textfile")
    {
        return;
    }
    let scratch = Scratch::new("oomcount-metrics");
    let textfiles = scratch.dir().join("textfile");
    std::fs::create_dir_all(&textfiles).unwrap();
    let textfile = textfiles.join("oomcount.prom");
    let port = free_port();
    let endpoint = SocketAddr::from(([127, 0, 0, 1], port));
    let daemon = scratch.daemon(
        &format!(
            "[metrics]\ntextfile = {:?}\nlisten = \"{endpoint}\"\nby_cgroup = true\nby_comm = true\ncgroup_depth = 8\n",
            textfile.display().to_string()
        ),
        &[],
    );
    let exporter_port = free_port();
    let listen = format!("--web.listen-address=127.0.0.1:{exporter_port}");
    let directory = format!("--collector.textfile.directory={}", textfiles.display());
    let mut exporter = Started::start(
        "node_exporter",
        NODE_EXPORTER,
        &[
            listen.as_ref(),
            "--collector.disable-defaults".as_ref(),
            "--collector.textfile".as_ref(),
            directory.as_ref(),
        ],
        scratch.dir(),
        exporter_port,
    );
    exporter.wait_ready("/metrics");
    let prometheus = Prometheus::start(
        scratch.dir(),
        &[("oomcount", endpoint), ("node", exporter.addr)],
    );
    // Both paths say 0 before the kills (the daemon counts from its attach).
    prometheus.wait_value("oomcount_oom_kills_total{job=\"oomcount\"}", 0.0);
    prometheus.wait_value("oomcount_oom_kills_total{job=\"node\"}", 0.0);

    let cg = MemCg::new("metrics", 32 << 20);
    let watch = Watch::new(Some(&daemon));
    producer::single_kills(&cg, 5);
    let d = watch.settle("the daemon to count 5 kills", |d| d.kills() >= 5);
    assert_eq!(
        d.vmstat, 5,
        "/proc/vmstat delta (another OOM on this machine?)"
    );
    let kills = daemon.count().kills;
    assert_eq!(kills, d.vmstat, "kills before the test's (another OOM?)");
    let started = Instant::now();
    for job in ["oomcount", "node"] {
        prometheus.wait_value(
            &format!("oomcount_oom_kills_total{{job=\"{job}\"}}"),
            d.vmstat as f64,
        );
        prometheus.wait_value(
            &format!("sum(oomcount_oom_kills_by_constraint_total{{job=\"{job}\"}})"),
            d.vmstat as f64,
        );
    }
    println!(
        "Prometheus saw {} kills through the port and the textfile {:.1?} after the daemon counted them",
        d.vmstat,
        started.elapsed()
    );
    prometheus.wait_value(
        &format!(
            "oomcount_cgroup_oom_kills_total{{job=\"oomcount\", cgroup={:?}}}",
            cg.path()
        ),
        cg.oom_kills() as f64,
    );
    prometheus.wait_value(
        "sum(oomcount_comm_oom_kills_total{job=\"oomcount\"})",
        d.vmstat as f64,
    );
    prometheus.wait_value(
        "oomcount_oom_kills_by_constraint_total{job=\"oomcount\", constraint=\"memcg\"}",
        d.vmstat as f64,
    );

    // The same table for people: `oomcount top`.
    let top = oomcount(&[
        OsStr::new("top"),
        OsStr::new("--json"),
        OsStr::new("--socket"),
        daemon.socket().as_os_str(),
    ]);
    assert_eq!(top.code, Some(0), "{top:?}");
    let top: serde_json::Value = serde_json::from_str(&top.stdout).unwrap();
    let row = top["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == cg.path().as_str())
        .unwrap_or_else(|| panic!("no row for {} in {top}", cg.path()));
    assert_eq!(row["kills"], cg.oom_kills(), "{top}");
    assert!(row["last_pid"].as_u64().unwrap() > 0, "{top}");
    for by in ["cgroup", "comm"] {
        let human = oomcount(&[
            OsStr::new("top"),
            OsStr::new("--by"),
            OsStr::new(by),
            OsStr::new("--socket"),
            daemon.socket().as_os_str(),
        ]);
        assert_eq!(human.code, Some(0), "{human:?}");
        println!("$ oomcount top --by {by}\n{}", human.stdout);
    }

    // The kill alert of the shipped rules (`for: 1m`) is pending after the kills.
    wait_until(
        deadline(Duration::from_secs(30)),
        "the OomKill alert to be pending",
        || match prometheus.alerts() {
            Ok(alerts)
                if alerts
                    .iter()
                    .any(|(name, state)| name == "OomKill" && state == "pending") =>
            {
                Ok(())
            }
            other => Err(other),
        },
    );

    // What both paths published: valid, and the same counts.
    let (status, scraped) = get(endpoint, "/metrics").unwrap();
    assert_eq!(status, 200);
    let file = std::fs::read_to_string(&textfile).unwrap();
    promtool_check(&scraped, "the endpoint's answer");
    promtool_check(&file, "the textfile");
    for series in [
        "oomcount_oom_kills_total",
        "oomcount_oom_marks_total",
        "oomcount_events_dropped_total",
    ] {
        assert_eq!(
            sample(&scraped, series),
            sample(&file, series),
            "{series}:\n{scraped}\n{file}"
        );
    }
    assert_eq!(sample(&file, "oomcount_oom_kills_total"), Some(kills));
    let left: Vec<_> = std::fs::read_dir(&textfiles)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["oomcount.prom"], "only the textfile in its folder");
    drop(daemon);
    assert!(
        !textfile.exists(),
        "the textfile is removed when the daemon stops"
    );
}

/// The attacks on the port, each from threads of the test's for `ATTACK`.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Connections that send a head a byte every 50 ms, never ending it.
    Slow,
    /// Connections that send headers without end, as fast as the daemon takes them.
    Huge,
    /// As many connections as the test can open, held idle.
    Flood,
}

const INTERVAL: Duration = Duration::from_millis(200);
const SLACK: Duration = Duration::from_millis(100);
const ATTACK: Duration = Duration::from_secs(3);

fn attack(kind: Attack, addr: SocketAddr, until: Instant) -> usize {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut opened = 0;
                let mut held = Vec::new();
                while Instant::now() < until {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    opened += 1;
                    match kind {
                        Attack::Slow => {
                            let _ = stream.set_nonblocking(true);
                            held.push(stream);
                            for s in &mut held {
                                let _ = s.write(b"X");
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Attack::Huge => {
                            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n");
                            let line = [b'x'; 8192];
                            while Instant::now() < until && stream.write_all(&line).is_ok() {}
                        }
                        Attack::Flood => held.push(stream),
                    }
                }
                opened
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

#[test]
fn a_hostile_client_of_the_port_delays_no_keepalive() {
    require_root();
    if !loopback_here("a_hostile_client_of_the_port_delays_no_keepalive") {
        return;
    }
    // As many connections as the process may have.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on this process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let device = StandIn::new();
    let port = free_port();
    let endpoint = SocketAddr::from(([127, 0, 0, 1], port));
    let config = device.config(
        "interval = \"200ms\"\nrealtime = true",
        &format!("mem_available_min = 0\npsi_full_avg10_max = 100.0\n\n[metrics]\nlisten = \"{endpoint}\""),
    );
    let daemon =
        Daemon::start_with(&[OsStr::new("--config"), config.as_os_str(), OsStr::new("-v")]);
    device.wait_pings(3, "keepalives before the attacks");
    for kind in [Attack::Slow, Attack::Huge, Attack::Flood] {
        let from = Instant::now();
        let until = from + ATTACK;
        let attacker = std::thread::spawn(move || attack(kind, endpoint, until));
        let mut slowest = Duration::ZERO;
        let mut scrapes = 0;
        let mut failed = Vec::new();
        while Instant::now() < until {
            slowest = slowest.max(daemon.verdict_round_trip());
            match get(endpoint, "/metrics") {
                Ok((200, body)) if body.contains("oomcount_oom_kills_total ") => scrapes += 1,
                other => failed.push(other),
            }
        }
        let opened = attacker.join().unwrap();
        let gap = device.longest_gap_since(from);
        println!(
            "{kind:?}: longest keepalive gap {gap:.0?}; verdict round trip at most {slowest:.0?}; {scrapes} scrapes answered, {} not; the attacker opened {opened} connections",
            failed.len()
        );
        assert!(
            gap <= INTERVAL + SLACK * time_scale(),
            "a keepalive came {gap:?} after the one before under the {kind:?} attack; daemon log:\n{}",
            daemon.log()
        );
        assert!(
            slowest < Duration::from_secs(1) * time_scale(),
            "the unix socket took {slowest:?} to answer under the {kind:?} attack"
        );
        assert!(
            scrapes > 0,
            "no scrape answered under the {kind:?} attack: {failed:?}"
        );
    }
}

#[test]
fn bad_metrics_values_stop_the_daemon_before_it_attaches() {
    require_root();
    if !loopback_here("bad_metrics_values_stop_the_daemon_before_it_attaches") {
        return;
    }
    let scratch = Scratch::new("oomcount-metrics-bad");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap();
    let missing = scratch.dir().join("no-such-folder/oomcount.prom");
    let cases = [
        (
            "listen = \"127.0.0.1:99999\"".to_owned(),
            "metrics.listen",
            "address",
        ),
        (
            "listen = \"localhost:10066\"".to_owned(),
            "metrics.listen",
            "address",
        ),
        (format!("listen = \"{busy}\""), "metrics.listen", "in use"),
        (
            format!("textfile = {:?}", missing.display().to_string()),
            "metrics.textfile",
            "does not exist",
        ),
    ];
    for (line, key, says) in cases {
        let config = scratch.config(&format!("# a comment\n[metrics]\n{line}\n"));
        let check = oomcount(&[
            OsStr::new("config"),
            OsStr::new("check"),
            config.as_os_str(),
        ]);
        assert_ne!(check.code, Some(0), "{line}: config check passed");
        let said = check.stderr.trim();
        assert!(
            said.contains(":3: ") && said.contains(key) && said.contains(says),
            "{line}: config check said {said:?}"
        );
        let run = oomcount(&[
            OsStr::new("daemon"),
            OsStr::new("--no-pin"),
            OsStr::new("--socket"),
            scratch.dir().join("s.sock").as_os_str(),
            OsStr::new("--config"),
            config.as_os_str(),
        ]);
        assert_ne!(run.code, Some(0), "{line}: the daemon started");
        let last = run.stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.contains(":3: ") && last.contains(key) && last.contains(says),
            "{line}: the daemon said {:?}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("attached"),
            "{line}: the daemon attached first: {}",
            run.stderr
        );
    }
}
