//! The watchdog on this host: the real daemon, real OOM kills in a memory cgroup, and a FIFO
//! standing in for `/dev/watchdog` (this machine has no watchdog device, and a real one could
//! reset it). The keepalives are seen where they land; `oomcount check` is run as watchdog(8)
//! runs it. The real softdog resets real guests in `vm_watchdog`.
use std::{ffi::OsStr, time::Duration};

use oomcount_integration_test::{
    Daemon, MemCg, pins_possible,
    producer::{kill_one, single_kills},
    require_root,
    wait::{deadline, time_scale, wait_until},
    watchdog::{Scratch, StandIn, check, oomcount, verdict, wait_kills},
};

/// Keepalive period in these tests: short, so that pings and their stop show quickly.
const INTERVAL: &str = "interval = \"200ms\"";

fn start(config: &std::path::Path) -> Daemon {
    Daemon::start_with(&[OsStr::new("--config"), config.as_os_str()])
}

#[test]
fn keepalives_stop_when_kills_go_over_the_rule_and_check_fails() {
    require_root();
    let device = StandIn::new();
    let config = device.config(
        INTERVAL,
        "max_kills = 2\nwindow = \"1h\"\nconstraint = \"memcg\"",
    );
    let mut daemon = start(&config);
    device.wait_pings(3, "keepalives before any kill");
    let cg = MemCg::new("watchdog-rule", 32 << 20);

    // Two kills: at the limit, degraded but recoverable; the pings go on.
    single_kills(&cg, 2);
    wait_kills(&daemon, 2);
    let state = verdict(&daemon);
    assert_eq!(state["health"], "degraded", "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("memcg OOM kill of"),
        "{state}"
    );
    let pings = device.pings();
    device.wait_pings(pings + 2, "keepalives after two kills (under the rule)");
    assert_eq!(check(daemon.socket(), &[]).code, Some(0));

    // The third kill is over the rule: no keepalive after the daemon has counted it.
    single_kills(&cg, 1);
    wait_kills(&daemon, 3);
    let run = check(daemon.socket(), &["--explain"]);
    assert_eq!(run.code, Some(255), "unrecoverable is 255: {run:?}");
    assert!(
        run.stderr
            .contains("unrecoverable: 3 memcg OOM kills within 1h (more than max_kills = 2)"),
        "{run:?}"
    );
    let stopped_at = device.pings();
    // Five keepalive periods without a ping (a wait for an absence has to be a fixed span).
    std::thread::sleep(Duration::from_millis(1000) * time_scale());
    assert_eq!(
        device.pings(),
        stopped_at,
        "keepalives went on after the unrecoverable verdict; daemon log:\n{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("error: unrecoverable: 3 memcg OOM kills")
    );
    // A repair cannot undo it: the verdict is latched.
    assert_eq!(check(daemon.socket(), &["repair", "255"]).code, Some(255));

    // A clean stop leaves the device armed: no magic 'V', the reset still comes.
    assert!(daemon.stop().unwrap().success());
    let bytes = device.wait_closed();
    assert!(!bytes.contains(&b'V'), "{bytes:?}");
}

#[test]
fn one_kill_of_a_critical_process_is_unrecoverable() {
    require_root();
    let device = StandIn::new();
    let config = device.config(
        INTERVAL,
        "max_kills = 100\nconstraint = \"any\"\ncritical = [\"oc-critical\"]",
    );
    let daemon = start(&config);
    device.wait_pings(2, "keepalives before the kill");
    let cg = MemCg::new("watchdog-critical", 32 << 20);
    let pid = kill_one(&cg, &["--comm", "oc-critical"]);
    wait_kills(&daemon, 1);
    let run = check(daemon.socket(), &["--explain"]);
    assert_eq!(run.code, Some(255), "{run:?}");
    assert!(
        run.stdout.starts_with(&format!(
            "unrecoverable: critical process oc-critical (pid {pid}, cgroup {}) was OOM-killed",
            cg.path()
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains("stopped: unrecoverable"), "{run:?}");
}

/// systemd's `Restart=` (in the shipped unit) restarts a daemon whose `WATCHDOG=1` stopped: a
/// restarted daemon that started healthy would open the device again, which pings it, and ping
/// on, and the machine judged unrecoverable would never be reset.
#[test]
fn an_unrecoverable_verdict_outlives_the_daemon_and_the_next_one_leaves_the_device_alone() {
    require_root();
    if !pins_possible() {
        return;
    }
    let pins = Scratch::new("oomcount-latch-pins");
    let pin_dir = std::path::Path::new("/sys/fs/bpf").join(pins.dir().file_name().unwrap());
    let _unpin = Unpin(pin_dir.clone());
    let rules = "max_kills = 100\nconstraint = \"any\"\ncritical = [\"oc-critical\"]";
    let pinned = |device: &StandIn| {
        let config = device.config(INTERVAL, rules);
        Daemon::start_with(&[
            OsStr::new("--config"),
            config.as_os_str(),
            OsStr::new("--pin-dir"),
            pin_dir.as_os_str(),
        ])
    };
    let first = StandIn::new();
    let mut daemon = pinned(&first);
    first.wait_pings(2, "keepalives before the kill");
    let cg = MemCg::new("watchdog-latch", 32 << 20);
    kill_one(&cg, &["--comm", "oc-critical"]);
    wait_kills(&daemon, 1);
    assert_eq!(check(daemon.socket(), &[]).code, Some(255));
    // As systemd does when WATCHDOG=1 stops coming: the daemon is killed, then started again.
    daemon.crash();

    let second = StandIn::new();
    let daemon = pinned(&second);
    let run = check(daemon.socket(), &["--explain"]);
    assert_eq!(
        run.code,
        Some(255),
        "the verdict outlives the daemon: {run:?}"
    );
    assert!(
        run.stdout.contains("by an earlier oomcount daemon"),
        "{run:?}"
    );
    // Five keepalive periods (a wait for an absence has to be a fixed span): the device is not
    // even opened.
    std::thread::sleep(Duration::from_millis(1000) * time_scale());
    assert_eq!(
        (second.pings(), second.bytes().len()),
        (0, 0),
        "the restarted daemon touched the device; its log:\n{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("is not opened, so that its reset comes"),
        "{}",
        daemon.log()
    );
}

/// The latch on each way pins are replaced: pins of an older oomcount (which a newer one
/// replaces, carrying their counts over), and pins left with maps but no links by a daemon that
/// died between pinning the two. A daemon started after either must keep the verdict and leave
/// the device alone.
#[test]
fn the_latch_survives_pins_replaced_by_a_newer_oomcount() {
    latched_pins_replaced(false);
}

#[test]
fn the_latch_survives_a_crash_between_pinning_the_maps_and_the_links() {
    latched_pins_replaced(true);
}

fn latched_pins_replaced(crash_between: bool) {
    require_root();
    if !pins_possible() {
        return;
    }
    let label = if crash_between { "crash" } else { "upgrade" };
    let pins = Scratch::new(&format!("oomcount-latch-{label}"));
    let pin_dir = std::path::Path::new("/sys/fs/bpf").join(pins.dir().file_name().unwrap());
    let _unpin = Unpin(pin_dir.clone());
    let rules = "max_kills = 100\nconstraint = \"any\"\ncritical = [\"oc-critical\"]";
    let pinned = |device: &StandIn, env: &[(&str, &OsStr)]| {
        let config = device.config(INTERVAL, rules);
        Daemon::start_env(
            &[
                OsStr::new("--config"),
                config.as_os_str(),
                OsStr::new("--pin-dir"),
                pin_dir.as_os_str(),
            ],
            env,
        )
    };
    // An older oomcount, whose pins a newer one cannot adopt, judges the machine unrecoverable
    // and dies.
    let old = StandIn::new();
    let mut daemon = pinned(&old, &[("OOMCOUNT_TEST_PIN_VERSION", OsStr::new("0"))]);
    old.wait_pings(2, "keepalives before the kill");
    let cg = MemCg::new(&format!("watchdog-latch-{label}"), 32 << 20);
    kill_one(&cg, &["--comm", "oc-critical"]);
    wait_kills(&daemon, 1);
    assert_eq!(check(daemon.socket(), &[]).code, Some(255));
    let kills = daemon.count().kills;
    daemon.crash();

    if crash_between {
        // A newer daemon replaces those pins and is killed after pinning the new maps, before
        // the links: what it leaves is maps without links.
        let dying = StandIn::new();
        let config = dying.config(INTERVAL, rules);
        let socket = pins.dir().join("dying.sock");
        std::fs::create_dir_all(pins.dir()).unwrap();
        let status = std::process::Command::new(oomcount_integration_test::locate::oomcount())
            .args(["daemon", "--pin-dir"])
            .arg(&pin_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .env("OOMCOUNT_TEST_CRASH_AFTER_MAPS", "1")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{status}"
        );
        assert!(pin_dir.join("counters").exists() && !pin_dir.join("link_mark_victim").exists());
        assert_eq!(
            dying.bytes().len(),
            0,
            "the dying daemon touched the device"
        );
    }

    let device = StandIn::new();
    let daemon = pinned(&device, &[]);
    assert!(
        daemon.log().contains("replacing pins of layout version"),
        "{}",
        daemon.log()
    );
    let run = check(daemon.socket(), &["--explain"]);
    assert_eq!(
        run.code,
        Some(255),
        "the verdict outlives the pins: {run:?}"
    );
    assert!(
        run.stdout.contains("by an earlier oomcount daemon"),
        "{run:?}"
    );
    assert!(daemon.count().kills >= kills, "the counts carried over");
    // Five keepalive periods (a wait for an absence has to be a fixed span): the device is not
    // even opened.
    std::thread::sleep(Duration::from_millis(1000) * time_scale());
    assert_eq!(
        (device.pings(), device.bytes().len()),
        (0, 0),
        "the daemon on replaced pins touched the device; its log:\n{}",
        daemon.log()
    );
}

/// Removes a test's pins, whatever happened.
struct Unpin(std::path::PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = oomcount(&[
            OsStr::new("detach"),
            OsStr::new("--pin-dir"),
            self.0.as_os_str(),
        ]);
    }
}

#[test]
fn a_clean_stop_disarms_with_the_magic_v_and_nowayout_does_not() {
    require_root();
    for (nowayout, magic) in [(false, true), (true, false)] {
        let device = StandIn::new();
        let config = device.config(&format!("{INTERVAL}\nnowayout = {nowayout}"), "");
        let mut daemon = start(&config);
        device.wait_pings(3, "keepalives");
        let state = verdict(&daemon);
        assert_eq!(state["health"], "healthy", "{state}");
        assert_eq!(state["watchdog"]["pinging"], true, "{state}");
        assert_eq!(
            state["watchdog"]["device"],
            device.path().display().to_string()
        );
        assert!(daemon.stop().unwrap().success());
        let bytes = device.wait_closed();
        assert_eq!(
            bytes.last() == Some(&b'V'),
            magic,
            "nowayout = {nowayout}: {bytes:?}"
        );
        assert!(
            bytes[..bytes.len() - 1].iter().all(|&b| b == 0),
            "{bytes:?}"
        );
    }
}

#[test]
fn a_bad_config_stops_the_daemon_before_it_attaches_naming_file_line_and_key() {
    require_root();
    let scratch = Scratch::new("oomcount-badconf");
    let dir = scratch.dir();
    let config = scratch.config(
        "[watchdog]\ndevice = \"/dev/null\"\n\n[rules]\nmax_kills = 3\nwindow = \"5 minutes and a bit\"\n",
    );
    let expected = format!("oomcount: {}:6: rules.window: ", config.display());
    let socket = dir.join("oomcount.sock");
    let daemon = oomcount(&[
        "daemon".as_ref(),
        "--no-pin".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(daemon.code, Some(1), "{daemon:?}");
    assert!(daemon.stderr.starts_with(&expected), "{daemon:?}");
    assert_eq!(daemon.stderr.lines().count(), 1, "{daemon:?}");
    assert!(!socket.exists(), "the daemon went on to serve");

    let checked = oomcount(&["config".as_ref(), "check".as_ref(), config.as_os_str()]);
    assert_eq!(checked.code, Some(1));
    assert!(checked.stderr.starts_with(&expected), "{checked:?}");

    let good = scratch.config("[rules]\nmax_kills = 5\ncritical = [\"xenstored\"]\n");
    let checked = oomcount(&["config".as_ref(), "check".as_ref(), good.as_os_str()]);
    assert_eq!(checked.code, Some(0), "{checked:?}");
    assert!(
        checked
            .stdout
            .contains("unrecoverable above 5 global OOM kills within 5m, or one kill of xenstored"),
        "{checked:?}"
    );
    let missing = oomcount(&[
        "daemon".as_ref(),
        "--config".as_ref(),
        dir.join("nope.toml").as_os_str(),
    ]);
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("nope.toml") && missing.stderr.contains("--config"),
        "{missing:?}"
    );
}

#[test]
fn check_without_a_daemon_fails_with_econnrefused_and_repair_keeps_it() {
    let socket =
        std::env::temp_dir().join(format!("oomcount-nodaemon-{}.sock", std::process::id()));
    let run = check(&socket, &[]);
    assert_eq!(run.code, Some(111), "{run:?}");
    assert!(
        run.stderr.contains("no oomcount daemon is running"),
        "{run:?}"
    );
    assert_eq!(check(&socket, &["test"]).code, Some(111));
    assert_eq!(check(&socket, &["repair", "111"]).code, Some(111));
    let usage = check(&socket, &["repair"]);
    assert_eq!(usage.code, Some(1), "{usage:?}");
    assert!(usage.stderr.contains("repair needs the CODE"), "{usage:?}");
}

#[test]
fn dry_run_judges_and_logs_without_a_device() {
    require_root();
    // The device does not exist: a dry run must not need it.
    let scratch = Scratch::new("oomcount-dry");
    let daemon = scratch.daemon(
        "[watchdog]\ndevice = \"/nonexistent/watchdog\"\ninterval = \"200ms\"\n[rules]\nmax_kills = 0\nconstraint = \"memcg\"\n",
        &[OsStr::new("--dry-run")],
    );
    let state = verdict(&daemon);
    assert_eq!(state["watchdog"]["dry_run"], true, "{state}");
    assert!(
        state["watchdog"].get("device").is_none_or(|d| d.is_null()),
        "{state}"
    );
    let cg = MemCg::new("watchdog-dry", 32 << 20);
    single_kills(&cg, 1);
    wait_until(
        deadline(Duration::from_secs(10)),
        "the dry run to log its verdict",
        || {
            let log = daemon.log();
            if log.contains("keepalives would stop here") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    assert_eq!(check(daemon.socket(), &[]).code, Some(255));
}

/// systemd's side of `Type=notify` and `WatchdogSec=`, played by the test: a datagram socket
/// as `NOTIFY_SOCKET` (no systemd runs here). The daemon must say READY=1 once it serves,
/// WATCHDOG=1 about every half of `WATCHDOG_USEC` while recoverable, none after, and
/// STOPPING=1 at its end.
#[test]
fn systemd_hears_ready_then_watchdog_pings_until_unrecoverable() {
    use std::os::unix::net::UnixDatagram;
    require_root();
    let scratch = Scratch::new("oomcount-notify");
    let config = scratch.config("[rules]\nmax_kills = 0\nconstraint = \"memcg\"\n");
    let notify = scratch.dir().join("notify.sock");
    let _ = std::fs::remove_file(&notify);
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10) * time_scale()))
        .unwrap();
    let mut daemon = Daemon::start_env(
        &[OsStr::new("--config"), config.as_os_str()],
        &[
            ("NOTIFY_SOCKET", notify.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("400000")),
        ],
    );
    let next = || {
        let mut buf = [0u8; 256];
        let n = systemd
            .recv(&mut buf)
            .expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut buf = [0u8; 256];
    let first = next();
    assert!(first.contains("READY=1"), "{first:?}");
    for _ in 0..3 {
        let ping = next();
        assert!(ping.contains("WATCHDOG=1"), "{ping:?}");
    }
    let state = verdict(&daemon);
    assert_eq!(state["watchdog"]["systemd"], true, "{state}");
    assert_eq!(state["watchdog"]["interval_ms"], 200, "{state}");

    let cg = MemCg::new("watchdog-systemd", 32 << 20);
    single_kills(&cg, 1);
    wait_kills(&daemon, 1);
    assert_eq!(check(daemon.socket(), &[]).code, Some(255));
    // Drain what was sent before the verdict; then nothing but silence until the stop.
    systemd.set_nonblocking(true).unwrap();
    while systemd.recv(&mut buf).is_ok() {}
    std::thread::sleep(Duration::from_millis(1000) * time_scale());
    let late = systemd
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(
        late.is_err(),
        "a notification after the unrecoverable verdict: {late:?}"
    );
    systemd.set_nonblocking(false).unwrap();
    assert!(daemon.stop().unwrap().success());
    let last = next();
    assert!(last.contains("STOPPING=1"), "{last:?}");
}

/// `critical_top`: a critical process among the likely next victims (by `oom_score`, as `oomcount
/// next` ranks them) makes the machine degraded, not unrecoverable: nothing was killed yet.
#[test]
fn a_critical_process_among_the_likely_victims_is_degraded() {
    require_root();
    let scratch = Scratch::new("oomcount-crittop");
    let daemon = scratch.daemon(
        "[rules]\ncritical = [\"oc-crit-top\"]\ncritical_top = 3\nmem_available_min = 0\npsi_full_avg10_max = 100.0\n",
        &[],
    );
    let calm = verdict(&daemon);
    assert_eq!(calm["health"], "healthy", "{calm}");
    let cg = MemCg::new("watchdog-crittop", 64 << 20);
    let held = oomcount_integration_test::producer::Held::spawn_with(
        &cg,
        16,
        1000,
        &["--comm", "oc-crit-top"],
    );
    // The ranking is redone at most once a second, off the daemon's thread: the verdict
    // follows within about that.
    let state = wait_until(
        deadline(Duration::from_secs(5)),
        "the verdict to see the critical process",
        || {
            let state = verdict(&daemon);
            if state["health"] == "degraded" {
                Ok(state)
            } else {
                Err(state)
            }
        },
    );
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .starts_with("critical process oc-crit-top is likely OOM victim #"),
        "{state}"
    );
    assert_eq!(
        check(daemon.socket(), &[]).code,
        Some(0),
        "degraded is recoverable"
    );
    drop(held);
    wait_until(
        deadline(Duration::from_secs(5)),
        "the verdict to be healthy once the process is gone",
        || {
            let after = verdict(&daemon);
            if after["health"] == "healthy" {
                Ok(())
            } else {
                Err(after)
            }
        },
    );
}

/// `realtime = true`: the daemon runs at SCHED_FIFO 1, as watchdog(8) does; by default it does
/// not. The thread that ranks the likely victims (for `critical_top`) never does: at the same
/// real-time priority it would run ahead of the keepalive on a single CPU.
#[test]
fn realtime_puts_the_daemon_at_sched_fifo() {
    require_root();
    for (realtime, policy) in [(true, libc::SCHED_FIFO), (false, libc::SCHED_OTHER)] {
        let scratch = Scratch::new("oomcount-rt");
        let daemon = scratch.daemon(
            &format!(
                "[watchdog]\ndevice = \"\"\nrealtime = {realtime}\n[rules]\ncritical = [\"oc-none\"]\ncritical_top = 3\n"
            ),
            &[],
        );
        // SAFETY: sched_getscheduler only reads the policy of a pid.
        let got = unsafe { libc::sched_getscheduler(daemon.pid() as i32) };
        assert_eq!(got, policy, "realtime = {realtime}; log:\n{}", daemon.log());
        // A verdict request starts a ranking, on a thread of its own.
        let _ = verdict(&daemon);
        let tasks = std::path::PathBuf::from(format!("/proc/{}/task", daemon.pid()));
        // (A new thread inherits SCHED_FIFO, and lowers itself first thing.)
        wait_until(
            deadline(Duration::from_secs(5)),
            "the ranking's thread, at SCHED_OTHER (tid, policy)",
            || {
                let helpers: Vec<(i32, i32)> = std::fs::read_dir(&tasks)
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .filter(|&tid| tid != daemon.pid() as i32)
                    // SAFETY: as above, for a thread id.
                    .map(|tid| (tid, unsafe { libc::sched_getscheduler(tid) }))
                    .collect();
                let ordinary = helpers.iter().all(|&(_, p)| p == libc::SCHED_OTHER);
                if !helpers.is_empty() && ordinary {
                    Ok(())
                } else {
                    Err(helpers)
                }
            },
        );
    }
}
