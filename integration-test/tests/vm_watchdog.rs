//! The watchdog with the real softdog, in VM guests only: each test is a scenario that ends
//! either with the guest reset by the watchdog or with the guest alive after three margins.
//!
//! They are `#[ignore]`d everywhere else: on a host they would reset the machine (this one has no
//! watchdog device at all). `cargo xtask vm-test` boots one guest per scenario with `-no-reboot`
//! and times the reset from the host: a scenario that expects one prints
//! [`reset_expected`] at its trigger, and passes only if QEMU exits by a reset within that time,
//! measured by the host's clock (the guest's own clock dies with it).
use std::{ffi::OsStr, io::Write as _, time::Duration};

use oomcount_integration_test::{
    Daemon, MemCg,
    producer::{kill_one, single_kills},
    require_root,
    wait::{deadline, wait_until},
    watchdog::{check, oomcount, verdict, wait_kills, write_config},
};
use oomcount_vm_init::report::{reset_expected, survived};

/// softdog's timeout in these scenarios, and the keepalive interval.
const TIMEOUT: Duration = Duration::from_secs(5);
const INTERVAL: &str = "1s";
/// Beyond the timeout: the host's reading of the console and QEMU's exit.
const SLACK: Duration = Duration::from_secs(2);

fn config(rules: &str) -> std::path::PathBuf {
    config_with(TIMEOUT, rules)
}

fn config_with(timeout: Duration, rules: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oomcount-vmwd-{}", std::process::id()));
    write_config(
        &dir,
        &format!(
            "[watchdog]\ndevice = \"/dev/watchdog\"\ntimeout = \"{}s\"\ninterval = \"{INTERVAL}\"\n[rules]\n{rules}\n",
            timeout.as_secs()
        ),
    )
}

fn start(rules: &str) -> Daemon {
    assert!(
        std::path::Path::new("/dev/watchdog").exists(),
        "no /dev/watchdog: the guest's /init loads softdog"
    );
    let config = config(rules);
    Daemon::start_with(&[OsStr::new("--config"), config.as_os_str()])
}

fn wait_keepalives(daemon: &Daemon, n: u64) {
    wait_until(deadline(Duration::from_secs(10)), "keepalives", || {
        let v = verdict(daemon);
        let sent = v["watchdog"]["keepalives"].as_u64().unwrap_or(0);
        if sent >= n { Ok(()) } else { Err(v) }
    });
}

/// From here the watchdog must reset the guest: tell the host, then outlive the deadline only
/// to fail.
fn expect_reset() -> ! {
    expect_reset_within(TIMEOUT + SLACK)
}

fn expect_reset_within(within: Duration) -> ! {
    println!("{}", reset_expected(within.as_millis() as u64));
    let _ = std::io::stdout().flush();
    std::thread::sleep(within * 4);
    panic!("the guest was not reset within {within:?} (waited four times that)");
}

/// Three margins with the guest alive: the watchdog was kept alive, or disarmed. The host
/// passes a scenario without a reset only if it has seen this.
fn outlive_three_margins() {
    let margins = TIMEOUT * 3;
    std::thread::sleep(margins);
    println!("{}", survived(margins.as_millis() as u64));
    let _ = std::io::stdout().flush();
}

#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn a_kills_over_the_rule_reset_the_guest() {
    require_root();
    let daemon = start("max_kills = 2\nwindow = \"1h\"\nconstraint = \"memcg\"");
    wait_keepalives(&daemon, 2);
    let cg = MemCg::new("vmwd-over", 32 << 20);
    single_kills(&cg, 3);
    wait_kills(&daemon, 3);
    expect_reset();
}

#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn b_kills_under_the_rule_keep_the_guest_up() {
    require_root();
    let mut daemon = start("max_kills = 2\nwindow = \"1h\"\nconstraint = \"memcg\"");
    wait_keepalives(&daemon, 2);
    let cg = MemCg::new("vmwd-under", 32 << 20);
    single_kills(&cg, 2);
    wait_kills(&daemon, 2);
    let before = verdict(&daemon);
    assert_eq!(before["health"], "degraded", "{before}");
    assert_eq!(check(daemon.socket(), &[]).code, Some(0));
    outlive_three_margins();
    let after = verdict(&daemon);
    assert!(
        after["watchdog"]["keepalives"].as_u64() > before["watchdog"]["keepalives"].as_u64(),
        "keepalives stopped: {after}"
    );
    assert!(daemon.stop().unwrap().success());
    assert!(
        daemon.log().contains("disarmed (magic close)"),
        "{}",
        daemon.log()
    );
}

#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn c_one_critical_kill_resets_the_guest() {
    require_root();
    let daemon = start("max_kills = 100\nconstraint = \"any\"\ncritical = [\"oc-critical\"]");
    wait_keepalives(&daemon, 2);
    let cg = MemCg::new("vmwd-critical", 32 << 20);
    kill_one(&cg, &["--comm", "oc-critical"]);
    wait_kills(&daemon, 1);
    expect_reset();
}

#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn d_a_clean_stop_disarms_and_a_second_opener_is_refused() {
    require_root();
    let mut daemon = start("");
    wait_keepalives(&daemon, 2);
    let state = verdict(&daemon);
    assert_eq!(
        state["watchdog"]["identity"], "Software Watchdog",
        "{state}"
    );
    assert_eq!(
        state["watchdog"]["timeout_secs"],
        TIMEOUT.as_secs(),
        "{state}"
    );
    // softdog has one opener at a time: a second daemon on it is refused in one line.
    let other = std::env::temp_dir().join("oomcount-vmwd-second.sock");
    let config = config("");
    let second = oomcount(&[
        "daemon".as_ref(),
        "--no-pin".as_ref(),
        "--socket".as_ref(),
        other.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(
        second.stderr.contains("/dev/watchdog is busy") && second.stderr.lines().count() == 1,
        "{second:?}"
    );
    assert!(daemon.stop().unwrap().success());
    assert!(
        daemon.log().contains("disarmed (magic close)"),
        "{}",
        daemon.log()
    );
    outlive_three_margins();
}

#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn e_a_killed_daemon_resets_the_guest() {
    require_root();
    let mut daemon = start("");
    wait_keepalives(&daemon, 2);
    daemon.crash();
    expect_reset();
}

/// What systemd's `Restart=` does after `WATCHDOG=1` stops: kill the daemon and start another
/// on the same pins. That one must keep the verdict and leave the device alone (opening it and
/// setting its timeout would ping it). A longer timeout here, so that the restart has room
/// before the reset; the reset is expected from the second daemon's start.
#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn f_a_daemon_restarted_after_the_verdict_does_not_cancel_the_reset() {
    require_root();
    let timeout = TIMEOUT * 2;
    let config = config_with(
        timeout,
        "max_kills = 100\nconstraint = \"any\"\ncritical = [\"oc-critical\"]",
    );
    let pinned = || {
        Daemon::start_with(&[
            OsStr::new("--config"),
            config.as_os_str(),
            OsStr::new("--pin-dir"),
            OsStr::new("/sys/fs/bpf/oomcount-vmwd"),
        ])
    };
    let mut daemon = pinned();
    wait_keepalives(&daemon, 2);
    let cg = MemCg::new("vmwd-restart", 32 << 20);
    kill_one(&cg, &["--comm", "oc-critical"]);
    wait_kills(&daemon, 1);
    daemon.crash();
    let again = pinned();
    assert_eq!(
        check(again.socket(), &[]).code,
        Some(255),
        "{}",
        again.log()
    );
    expect_reset_within(timeout + SLACK);
}

/// The latch when the pins are replaced: an older oomcount (posed by `OOMCOUNT_TEST_PIN_VERSION`)
/// judges the guest unrecoverable and is SIGKILLed; a newer one replaces its pins and is killed
/// between pinning the new maps and the links (`OOMCOUNT_TEST_CRASH_AFTER_MAPS`, as a crash or
/// an OOM kill there would); a third replaces what that one left. Neither may open the device
/// (opening it pings it): the reset comes within the timeout of the first daemon's death. A
/// longer timeout here, so that two starts have room before the reset.
#[test]
#[ignore = "resets its VM guest: cargo xtask vm-test runs it in a guest of its own"]
fn g_pins_replaced_after_the_verdict_do_not_cancel_the_reset() {
    require_root();
    let timeout = TIMEOUT * 3;
    let config = config_with(
        timeout,
        "max_kills = 100\nconstraint = \"any\"\ncritical = [\"oc-critical\"]",
    );
    let pin_dir = OsStr::new("/sys/fs/bpf/oomcount-vmwd-replace");
    let args = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--pin-dir"),
        pin_dir,
    ];
    let mut old = Daemon::start_env(&args, &[("OOMCOUNT_TEST_PIN_VERSION", OsStr::new("0"))]);
    wait_keepalives(&old, 2);
    let cg = MemCg::new("vmwd-replace", 32 << 20);
    kill_one(&cg, &["--comm", "oc-critical"]);
    wait_kills(&old, 1);
    old.crash();
    let socket = std::env::temp_dir().join("oomcount-vmwd-dying.sock");
    let dying = std::process::Command::new(oomcount_integration_test::locate::oomcount())
        .arg("daemon")
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .env("OOMCOUNT_TEST_CRASH_AFTER_MAPS", "1")
        .stdin(std::process::Stdio::null())
        .status()
        .expect("run the daemon that dies between maps and links");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&dying),
        Some(libc::SIGKILL),
        "{dying}"
    );
    let again = Daemon::start_with(&args);
    assert!(
        again
            .log()
            .contains("replacing pins of layout version 0 without links"),
        "{}",
        again.log()
    );
    assert_eq!(
        check(again.socket(), &[]).code,
        Some(255),
        "{}",
        again.log()
    );
    expect_reset_within(timeout + SLACK);
}
