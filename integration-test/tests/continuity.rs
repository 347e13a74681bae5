//! Not one kill lost while the daemon is away: the probe's pins keep the kernel counting through
//! a daemon's crash (SIGKILL), `count` reads the pins without a daemon, a restarted daemon adopts
//! them and receives the events produced meanwhile, an older oomcount's pins are replaced without
//! losing their count, and the stat file says it all to anyone.
//!
//! Each test pins in a folder of its own under /sys/fs/bpf and removes it at the end.
use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use oomcount_integration_test::{
    MemCg, deadline, locate, pins_possible, producer, require_root, vmstat, wait_until,
};

/// A daemon pinned in its own folder, SIGKILLed or stopped by the test.
struct Pinned {
    dir: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Pinned {
    fn new(label: &str) -> Pinned {
        let name = format!("oomcount-test-{label}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&dir).unwrap();
        Pinned {
            socket: dir.join("oomcount.sock"),
            pins: Path::new("/sys/fs/bpf").join(&name),
            dir,
            child: None,
        }
    }

    fn oomcount(&self) -> Command {
        let mut cmd = Command::new(locate::oomcount());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts the daemon (with `env` set) and waits until it answers.
    fn start(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "a daemon of this test is running");
        let log = fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = self
            .oomcount()
            .args(["daemon", "--socket"])
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pins)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(
            deadline(Duration::from_secs(20)),
            "the daemon to answer",
            || match self.count().get("source").and_then(|s| s.as_str()) {
                Some("daemon") => Ok(()),
                other => Err(format!("source {other:?}; log: {}", self.log())),
            },
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILLs the daemon: no chance to clean up.
    fn crash(&mut self) {
        let mut child = self.child.take().expect("a running daemon");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERMs the daemon and expects a clean exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("a running daemon");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "daemon exit {status}; log:\n{}",
            self.log()
        );
    }

    fn run(&self, args: &[&str]) -> Output {
        self.oomcount()
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// `count --json`, from the daemon or, without one, from the pins.
    fn count(&self) -> serde_json::Value {
        let out = self
            .oomcount()
            .args(["count", "--json", "--socket"])
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pins)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn kills(&self) -> u64 {
        self.count()["kills"]
            .as_u64()
            .unwrap_or_else(|| panic!("no kills in {}", self.count()))
    }

    /// The stat file beside a socket named like the default one.
    fn stat(&self) -> PathBuf {
        self.socket.with_file_name("stat")
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(locate::oomcount())
            .args(["detach", "--pin-dir"])
            .arg(&self.pins)
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn kills_while_the_daemon_is_away_are_counted_and_delivered() {
    require_root();
    if !pins_possible() {
        return;
    }
    let mut daemon = Pinned::new("crash");
    daemon.start(&[]);
    let cg = MemCg::new("crash", 32 << 20);
    let vmstat_before = vmstat::oom_kill();
    producer::single_kills(&cg, 2);
    wait_until(
        deadline(Duration::from_secs(10)),
        "2 kills",
        || match daemon.kills() {
            2 => Ok(()),
            n => Err(n),
        },
    );

    daemon.crash();
    assert!(
        daemon.pins.join("link_mark_victim").exists(),
        "pins outlive the daemon"
    );
    producer::single_kills(&cg, 3);
    producer::threaded_kill(&cg, 8);
    let away = daemon.count();
    let vmstat_delta = vmstat::oom_kill() - vmstat_before;
    println!("while away: {away}; vmstat delta {vmstat_delta}");
    assert_eq!(
        away["source"], "pins",
        "count without a daemon reads the pins"
    );
    assert_eq!(
        away["kills"].as_u64(),
        Some(vmstat_delta),
        "kills while away"
    );
    assert_eq!(vmstat_delta, 6);

    daemon.start(&[]);
    assert!(
        daemon.log().contains("adopted the probe"),
        "{}",
        daemon.log()
    );
    let back = daemon.count();
    assert_eq!(back["kills"].as_u64(), Some(6), "{back}");
    assert_eq!(back["attached_at"], away["attached_at"], "the same probe");
    // The events produced while the daemon was away wait in the ring buffer.
    let list = daemon.run(&["list", "--json", "-n", "100"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    println!("delivered after restart: {} kill events", events.len());
    assert_eq!(events.len(), 4, "the 4 kills while away: {events:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > 2,
        "seq goes on: {seqs:?}"
    );
    daemon.stop();
}

#[test]
fn older_pins_are_replaced_and_their_count_kept() {
    require_root();
    if !pins_possible() {
        return;
    }
    let mut daemon = Pinned::new("upgrade");
    // Poses as an older oomcount whose pins this version cannot adopt.
    daemon.start(&[("OOMCOUNT_TEST_PIN_VERSION", "0")]);
    let cg = MemCg::new("upgrade", 32 << 20);
    producer::single_kills(&cg, 3);
    wait_until(
        deadline(Duration::from_secs(10)),
        "3 kills",
        || match daemon.kills() {
            3 => Ok(()),
            n => Err(n),
        },
    );
    let before = daemon.count();
    daemon.stop();

    daemon.start(&[]);
    assert!(
        daemon.log().contains("replacing pins of layout version 0"),
        "{}",
        daemon.log()
    );
    let after = daemon.count();
    assert_eq!(
        after["kills"].as_u64(),
        Some(3),
        "the count carried over: {after}"
    );
    assert_eq!(after["attached_at"], before["attached_at"]);
    producer::single_kills(&cg, 1);
    wait_until(
        deadline(Duration::from_secs(10)),
        "4 kills",
        || match daemon.kills() {
            4 => Ok(()),
            n => Err(n),
        },
    );
    daemon.stop();
}

#[test]
fn the_stat_file_is_atomic_and_world_readable() {
    require_root();
    let mut daemon = Pinned::new("stat");
    daemon.start(&[]);
    let stat = daemon.stat();
    let cg = MemCg::new("stat", 32 << 20);
    producer::single_kills(&cg, 2);
    // The stat file says what the daemon says (both count every OOM kill on the machine).
    let text = wait_until(
        deadline(Duration::from_secs(10)),
        "the stat file to show the daemon's kills (at least 2)",
        || {
            let text = fs::read_to_string(&stat).unwrap_or_default();
            let kills = daemon.kills();
            if kills >= 2 && text.lines().any(|l| l == format!("oom_kill {kills}")) {
                Ok(text)
            } else {
                Err((kills, text))
            }
        },
    );
    println!("{}:\n{text}", stat.display());
    for name in [
        "oom_kill",
        "oom_marked",
        "oom_events_dropped",
        "oom_kill_global",
        "oom_kill_memcg",
        "attached_at",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} in {text}"
        );
    }
    assert_eq!(
        fs::metadata(&stat).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(
        !PathBuf::from(format!("{}.tmp", stat.display())).exists(),
        "no leftover"
    );
    // An unprivileged user reads it (the folder is world-searchable): this test binary, run
    // again as nobody, doing only `read_stat_as_nobody`.
    fs::set_permissions(&daemon.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "read_stat_as_nobody",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(READ_STAT, &stat)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nobody cannot read it: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = stdout.split(STAT_MARK).nth(1).unwrap_or_default();
    assert_eq!(seen, text, "what nobody read");
    daemon.stop();
    assert!(!stat.exists(), "a stopped daemon removes its stat file");
}

/// Set to the stat file's path when this binary runs as nobody to read it.
const READ_STAT: &str = "OOMCOUNT_TEST_READ_STAT";
const STAT_MARK: &str = "---stat---";

/// Does nothing unless run by `the_stat_file_is_atomic_and_world_readable` as nobody.
#[test]
fn read_stat_as_nobody() {
    let Some(path) = std::env::var_os(READ_STAT) else {
        return;
    };
    assert_eq!(nix::unistd::geteuid().as_raw(), 65534, "runs as nobody");
    let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path:?}: {err}"));
    print!("{STAT_MARK}{text}{STAT_MARK}");
}

#[test]
fn a_second_daemon_refuses_in_one_line() {
    require_root();
    let mut daemon = Pinned::new("second");
    daemon.start(&[]);
    let out = daemon
        .oomcount()
        .args(["daemon", "--socket"])
        .arg(&daemon.socket)
        .arg("--pin-dir")
        .arg(&daemon.pins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    daemon.stop();
}
