//! What a local user without privileges, or a fault, must not do to the watchdog's verdict: the
//! rules fail open when kill events are lost, a renamed process steers a name-only rule, forged
//! "kernel" SIGKILLs reach the kernel side. Real daemon, real OOM kills in memory cgroups, the
//! attacker as uid 65534.
use std::{path::Path, time::Duration};

use oomcount_integration_test::{
    EventCounts, MemCg,
    events::Paused,
    hostile::as_nobody,
    kernel_release,
    producer::{self, kill_one},
    require_root,
    storm::StormGroups,
    wait::{deadline, wait_until},
    watchdog::{Scratch, check, verdict, wait_kills},
};

/// Kills made while the daemon is stopped, more than its ring buffer holds (112 events of 1,168
/// bytes in 128 KiB), and a rule between the two: the events that arrive cannot trip it alone.
const KILLS_EACH: u64 = 75;
const PRODUCERS: u64 = 4;
const MAX_KILLS: u64 = 250;

#[test]
fn kills_whose_events_were_lost_trip_max_kills_with_their_constraint() {
    require_root();
    let scratch = Scratch::new("oomcount-lost-kills");
    let daemon = scratch.daemon(
        &format!(
            "[rules]\nconstraint = \"memcg\"\nmax_kills = {MAX_KILLS}\nwindow = \"1h\"\nquiet = \"1h\"\n"
        ),
        &[],
    );
    let before = EventCounts::read(&daemon);
    let groups = StormGroups::new("oomcount-lost-kills", PRODUCERS);
    // Stopped, the daemon reads nothing: the ring buffer fills, and every later event is lost.
    let paused = Paused::stop(daemon.pid(), "the daemon");
    let made = producer::storm(&groups.groups, KILLS_EACH);
    drop(paused);
    wait_kills(&daemon, before.kills + made);
    let delta =
        EventCounts::wait_settled(&daemon, "the stopped daemon's backlog", |_| true).since(&before);
    println!("lost kills: {delta:?}");
    assert_eq!(
        delta.kills, made,
        "the daemon's kills against the kills made"
    );
    assert!(
        delta.kill_events_received <= MAX_KILLS && delta.kill_events_dropped > 0,
        "the test needs kill events lost and fewer received than max_kills: {delta:?}"
    );
    let state = verdict(&daemon);
    assert_eq!(state["health"], "unrecoverable", "{state}");
    assert!(
        state["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("{made} memcg OOM kills within 1h")),
        "every kill weighed as memcg, the lost ones by the kernel's split: {state}"
    );
}

#[test]
fn a_renamed_process_does_not_fire_a_unit_rule_but_its_cgroup_does() {
    require_root();
    let cg = MemCg::new("oomcount-user-scope", 32 << 20);
    // A user's process named like the toolstack's daemon, in a cgroup of the user's: a comm
    // rule fires on it (what it trusts), a unit rule does not.
    for (rule, fires) in [
        ("\"xenstored\"".to_owned(), true),
        ("\"unit:xenstored.service\"".to_owned(), false),
        (format!("\"cgroup:{}\"", cg.path()), true),
    ] {
        let scratch = Scratch::new("oomcount-critical");
        let daemon = scratch.daemon(
            &format!("[rules]\nconstraint = \"global\"\ncritical = [{rule}]\n"),
            &[],
        );
        let pid = kill_one(&cg, &["--comm", "xenstored"]);
        wait_kills(&daemon, 1);
        let run = check(daemon.socket(), &["--json"]);
        let state: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|err| panic!("check --json: {err}: {run:?}"));
        let health = state["health"].as_str().unwrap_or_default();
        assert_eq!(
            health == "unrecoverable",
            fires,
            "critical = [{rule}], pid {pid} `xenstored` killed in {}: {state}",
            cg.path()
        );
    }
}

#[test]
fn forged_kernel_sigkills_are_not_the_oom_killers() {
    require_root();
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        // Without BTF the classic tracepoint is used, whose record cannot tell a forged
        // siginfo from the kernel's (README: Security).
        eprintln!(
            "skipped: this kernel ({}) has no BTF: forged signals are told apart only by the raw tracepoint",
            kernel_release()
        );
        return;
    }
    let scratch = Scratch::new("oomcount-forged");
    let daemon = scratch.daemon("", &[]);
    let before = signals(&daemon);
    // 50 processes of nobody's, each sending itself SIGKILL with si_code SI_KERNEL.
    let run = as_nobody("forge-sigkill", &["50".as_ref()]);
    assert_eq!(run.code, Some(0), "the forger failed: {run:?}");
    let after_forged = signals(&daemon);
    assert_eq!(
        after_forged, before,
        "50 forged SI_KERNEL SIGKILLs moved the OOM signal count (or the kills)"
    );
    // The real thing still counts: one kill, at least one OOM signal.
    let cg = MemCg::new("oomcount-forged-real", 32 << 20);
    kill_one(&cg, &[]);
    wait_until(
        deadline(Duration::from_secs(10)),
        "the real kill's signal",
        || {
            let now = signals(&daemon);
            if now.0 > before.0 && now.1 == before.1 + 1 {
                Ok(())
            } else {
                Err(now)
            }
        },
    );
}

/// (oom_signals, kills) of `count --json`.
fn signals(daemon: &oomcount_integration_test::Daemon) -> (u64, u64) {
    let text = daemon.count_json().unwrap_or_else(|err| panic!("{err}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("count --json");
    let field = |name: &str| {
        json[name]
            .as_u64()
            .unwrap_or_else(|| panic!("count --json has no {name}: {text}"))
    };
    (field("oom_signals"), field("kills"))
}
