//! The daemon's kill hook on real OOM kills: victims named by the test (hostile names among
//! them) are killed in a memory cgroup named like a Kubernetes pod's container, and the hook the
//! daemon runs (`oomcount-hog hook-probe`, which records what it was given) must have each field
//! of the daemon's own kill event byte-exact, the container fields included; a storm of real
//! kills with slow hooks runs at most `max_running` of them, counts the rest, and the keepalives
//! stay on time; a bad `[hooks]` value stops the daemon before it attaches.
use std::{
    collections::BTreeSet,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use oomcount_integration_test::{
    Daemon, MemCg,
    hook_probe::Record,
    locate, producer, require_root,
    wait::{deadline, time_scale, wait_until},
    watchdog::{Scratch, StandIn, oomcount, write_config},
};

const MIB: u64 = 1 << 20;
const POD: &str = "74c13223-5a00-11e9-b385-42010a80018d";
const ID: &str = "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376";

/// A folder uid 65534 can write its records into.
fn probe_dir(scratch: &Scratch) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch.dir().join("records");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(scratch.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn hooks_table(dir: &Path, extra: &str) -> String {
    format!(
        "[hooks]\non_kill = [{:?}, \"hook-probe\", {:?}{extra}]\nuser = \"65534\"\n",
        locate::hog().display().to_string(),
        dir.display().to_string()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `oomcount list --json -n 1000` as JSON values (every field the daemon has, as it has them).
fn listed(daemon: &Daemon) -> Vec<serde_json::Value> {
    let out = Command::new(locate::oomcount())
        .args(["list", "--json", "-n", "1000", "--socket"])
        .arg(daemon.socket())
        .output()
        .expect("oomcount list");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("a JSON array of events")
}

fn env_text(record: &Record, name: &str) -> String {
    String::from_utf8_lossy(record.env(name).unwrap_or_else(|| panic!("no {name}"))).into_owned()
}

/// A kill's memory cgroup named as containerd names a besteffort pod's container under the
/// kubelet's systemd driver.
fn pod_groups(base: &MemCg) -> (MemCg, MemCg) {
    let pod = base.child_named(
        &format!("kubepods-besteffort-pod{}.slice", POD.replace('-', "_")),
        None,
    );
    let container = pod.child_named(&format!("cri-containerd-{ID}.scope"), Some(16 * MIB));
    (pod, container)
}

#[test]
fn the_hook_gets_every_field_of_each_real_kill_byte_exact() {
    require_root();
    let scratch = Scratch::new("oomcount-hook-kills");
    let dir = probe_dir(&scratch);
    let daemon = scratch.daemon(&hooks_table(&dir, ""), &[]);
    let base = MemCg::new("hook-kills", 64 * MIB);
    let (_pod, container) = pod_groups(&base);
    let sentinel = PathBuf::from("/tmp/oc");
    let names: [&[u8]; 6] = [
        b"$(reboot)",
        b";rm -rf /",
        b"two\nlines",
        b"it's \"q\"",
        b"\xff\xfebad\x80",
        b";touch /tmp/oc",
    ];
    let sentinel_existed = sentinel.exists();
    let mut victims = Vec::new();
    for name in names {
        let pid = producer::kill_one(&container, &["--comm-hex", &hex(name)]);
        victims.push((pid, name));
    }
    let records = wait_until(
        deadline(Duration::from_secs(20)),
        "a finished hook per kill",
        || {
            let records = Record::read_all(&dir);
            let done = records.iter().filter(|r| r.end_ns.is_some()).count();
            if done == names.len() {
                Ok(records)
            } else {
                Err(done)
            }
        },
    );
    let events = listed(&daemon);
    for (pid, name) in victims {
        let event = events
            .iter()
            .find(|e| e["kind"] == "kill" && e["pid"] == pid)
            .unwrap_or_else(|| panic!("no kill event for pid {pid}: {events:?}"));
        let record = records
            .iter()
            .find(|r| r.env("OOMCOUNT_PID") == Some(pid.to_string().as_bytes()))
            .unwrap_or_else(|| panic!("no hook run for pid {pid}"));
        let fields = event.as_object().unwrap();
        // Every field of the event, and nothing else of the event's kind, as OOMCOUNT_<KEY>.
        let mut want: BTreeSet<String> = ["OOMCOUNT_HOOK", "OOMCOUNT_SKIPPED", "OOMCOUNT_EVENT"]
            .map(String::from)
            .into();
        for (key, value) in fields {
            let var = format!("OOMCOUNT_{}", key.to_uppercase());
            let got = record
                .env(&var)
                .unwrap_or_else(|| panic!("pid {pid}: no {var} for {key}={value}"));
            let expected: Vec<u8> = match (key.as_str(), value) {
                // The JSON holds the name lossily; the hook gets the kernel's bytes.
                ("comm", _) => name.to_vec(),
                // The victim allocated the memory itself: it is the trigger too.
                ("trigger_comm", _) => name.to_vec(),
                (_, serde_json::Value::String(text)) => text.clone().into_bytes(),
                (_, serde_json::Value::Bool(true)) => b"1".to_vec(),
                (_, other) => other.to_string().into_bytes(),
            };
            assert_eq!(
                got,
                expected.as_slice(),
                "pid {pid}: {var} is {:?}, the event's {key} is {value}",
                String::from_utf8_lossy(got)
            );
            want.insert(var);
        }
        let given: BTreeSet<String> = record
            .environ
            .iter()
            .map(|entry| {
                let name = entry.split(|&b| b == b'=').next().unwrap();
                String::from_utf8_lossy(name).into_owned()
            })
            .filter(|name| name.starts_with("OOMCOUNT_"))
            .collect();
        assert_eq!(given, want, "pid {pid}: the hook's OOMCOUNT_ variables");
        let whole: serde_json::Value = serde_json::from_str(&env_text(record, "OOMCOUNT_EVENT"))
            .expect("OOMCOUNT_EVENT is JSON");
        assert_eq!(&whole, event, "pid {pid}: OOMCOUNT_EVENT");
        assert_eq!(event["comm"], String::from_utf8_lossy(name).as_ref());
        // The container, from the path the kernel gave.
        assert_eq!(event["pod_uid"], POD, "{event}");
        assert_eq!(event["pod_qos"], "besteffort", "{event}");
        let scope = format!("cri-containerd-{ID}.scope");
        if scope.len() <= oomcount::notify::container::NAME_MAX {
            // The kernel's record holds the scope's whole name.
            assert_eq!(event["container_id"], ID, "{event}");
            assert_eq!(event["unit"], scope.as_str(), "{event}");
            assert_eq!(env_text(record, "OOMCOUNT_CONTAINER_ID"), ID);
        } else if let Some(id) = event.get("container_id") {
            assert_eq!(id, ID, "a container id is whole or absent: {event}");
        }
        assert_eq!(env_text(record, "OOMCOUNT_POD_UID"), POD);
        // Run as configured: arguments the config's, as uid 65534 without capabilities.
        assert_eq!(
            record.info.argv,
            [
                locate::hog().display().to_string(),
                "hook-probe".into(),
                dir.display().to_string()
            ]
        );
        assert_eq!(record.status("Uid"), "65534 65534 65534 65534");
        assert_eq!(record.status("CapEff"), "0000000000000000");
        assert_eq!(record.status("NoNewPrivs"), "1");
    }
    assert!(
        sentinel_existed || !sentinel.exists(),
        "a victim's name was run: {} exists",
        sentinel.display()
    );
    let counts: serde_json::Value = serde_json::from_str(&daemon.count_json().unwrap()).unwrap();
    assert_eq!(counts["hooks_run"], names.len() as u64, "{counts}");
    assert_eq!(counts["hooks_skipped"], 0, "{counts}");
    // `list` for people names the pod.
    let out = Command::new(locate::oomcount())
        .args(["list", "--socket"])
        .arg(daemon.socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(" pod {POD} (besteffort)")),
        "list: {text}"
    );
}

#[test]
fn a_storm_of_real_kills_with_slow_hooks_keeps_the_keepalives_on_time() {
    require_root();
    let scratch = Scratch::new("oomcount-hook-storm");
    let dir = probe_dir(&scratch);
    let device = StandIn::new();
    let interval = Duration::from_millis(200);
    let config = device.config(
        &format!("interval = \"{}ms\"", interval.as_millis()),
        &format!(
            "max_kills = 4000\nmem_available_min = 0\npsi_full_avg10_max = 100.0\n{}max_running = 2\ntimeout = \"10s\"\n",
            hooks_table(&dir, ", \"--sleep-ms\", \"300\"")
        ),
    );
    let daemon = Daemon::start_with(&[OsStr::new("--config"), config.as_os_str()]);
    device.wait_pings(3, "keepalives before the storm");
    let parent = MemCg::new("hook-storm", 64 * MIB);
    let groups: Vec<MemCg> = (0..4)
        .map(|i| parent.child(&format!("p{i}"), Some(4 * MIB)))
        .collect();
    let from = Instant::now();
    let kills = producer::storm(&groups, 50);
    assert!(kills >= 200, "the storm made {kills} kills");
    let counts = wait_until(
        deadline(Duration::from_secs(30)),
        "every kill event handed to the hooks and the last hook done",
        || {
            let counts: serde_json::Value =
                serde_json::from_str(&daemon.count_json().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            let handed = counts["hooks_run"].as_u64().unwrap_or(0)
                + counts["hooks_skipped"].as_u64().unwrap_or(0);
            let records = Record::read_all(&dir);
            let running = records.iter().filter(|r| r.end_ns.is_none()).count();
            if counts["kill_events_received"].as_u64() == Some(handed)
                && counts["kills"].as_u64() >= Some(kills)
                && running == 0
                && records.len() as u64 == counts["hooks_run"].as_u64().unwrap_or(0)
            {
                Ok(counts)
            } else {
                Err(format!("{counts} {running} running"))
            }
        },
    );
    let gap = device.longest_gap_since(from);
    let records = Record::read_all(&dir);
    let skipped = counts["hooks_skipped"].as_u64().unwrap();
    assert!(skipped > 0, "{counts}");
    // At most max_running probes alive at once.
    let mut edges: Vec<(u64, i32)> = records
        .iter()
        .flat_map(|r| [(r.info.start_ns, 1), (r.end_ns.unwrap(), -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(most <= 2, "{most} hooks ran at once, max_running 2");
    let told: u64 = records
        .iter()
        .map(|r| env_text(r, "OOMCOUNT_SKIPPED").parse::<u64>().unwrap())
        .sum();
    assert_eq!(told, skipped, "the hooks were told of every skipped kill");
    let slack = Duration::from_millis(100) * time_scale();
    eprintln!(
        "hook storm: {kills} kills, {} hooks run, {skipped} skipped, longest keepalive gap {gap:?} (interval {interval:?})",
        records.len()
    );
    assert!(
        gap <= interval + slack,
        "a keepalive waited {gap:?} during the storm (interval {interval:?})"
    );
}

#[test]
fn a_bad_hook_stops_the_daemon_before_it_attaches_naming_the_key() {
    require_root();
    let scratch = Scratch::new("oomcount-hook-badconf");
    let plain = scratch.dir().join("not-executable");
    std::fs::create_dir_all(scratch.dir()).unwrap();
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    // A program every test machine has, the VM guests included (they have no /bin/true).
    let program = locate::hog().display().to_string();
    for (text, line, key) in [
        (
            "[hooks]\non_kill = [\"notify-send\"]\n",
            2,
            "hooks.on_kill: ",
        ),
        (
            "[hooks]\non_kill = [\"/nonexistent/oomcount-hook\"]\n",
            2,
            "hooks.on_kill: ",
        ),
        (
            &format!(
                "[rules]\n[hooks]\non_verdict = [{:?}]\n",
                plain.display().to_string()
            ),
            3,
            "hooks.on_verdict: ",
        ),
        (
            &format!("[hooks]\non_kill = [{program:?}]\nuser = \"no-such-user-oomcount\"\n"),
            3,
            "hooks.user: ",
        ),
    ] {
        let config = write_config(scratch.dir(), text);
        let expected = format!("oomcount: {}:{line}: {key}", config.display());
        let socket = scratch.dir().join("oomcount.sock");
        let daemon = oomcount(&[
            "daemon".as_ref(),
            "--no-pin".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ]);
        assert_eq!(daemon.code, Some(1), "{daemon:?}");
        assert!(
            daemon.stderr.starts_with(&expected),
            "{expected}: {daemon:?}"
        );
        assert_eq!(daemon.stderr.lines().count(), 1, "{daemon:?}");
        assert!(!socket.exists(), "the daemon went on to serve");
        let checked = oomcount(&["config".as_ref(), "check".as_ref(), config.as_os_str()]);
        assert_eq!(checked.code, Some(1), "{checked:?}");
        assert!(checked.stderr.starts_with(&expected), "{checked:?}");
    }
    let good = write_config(
        scratch.dir(),
        &format!("[hooks]\non_kill = [{program:?}, \"--any\"]\nuser = \"65534\"\n"),
    );
    let checked = oomcount(&["config".as_ref(), "check".as_ref(), good.as_os_str()]);
    assert_eq!(checked.code, Some(0), "{checked:?}");
    assert!(
        checked.stdout.contains(&format!(
            "hooks: on_kill [{program:?}, \"--any\"] on_verdict none, as user 65534"
        )),
        "{checked:?}"
    );
}

#[test]
fn a_change_of_verdict_runs_on_verdict() {
    require_root();
    let scratch = Scratch::new("oomcount-hook-verdict");
    let dir = probe_dir(&scratch);
    let table = hooks_table(&dir, "").replace("on_kill", "on_verdict");
    let daemon = scratch.daemon(
        &format!(
            "[rules]\nconstraint = \"any\"\nmax_kills = 3\nwindow = \"1h\"\nquiet = \"1h\"\n{table}"
        ),
        &[],
    );
    let cg = MemCg::new("hook-verdict", 16 * MIB);
    let pid = producer::kill_one(&cg, &[]);
    let record = wait_until(
        deadline(Duration::from_secs(20)),
        "the on_verdict hook run for the kill's change of health",
        || {
            let records = Record::read_all(&dir);
            match records.as_slice() {
                [one] if one.end_ns.is_some() => Ok(Record::read_all(&dir).remove(0)),
                other => Err(other.len()),
            }
        },
    );
    let verdict = oomcount_integration_test::watchdog::verdict(&daemon);
    assert_eq!(env_text(&record, "OOMCOUNT_HOOK"), "verdict");
    assert_eq!(env_text(&record, "OOMCOUNT_PREVIOUS"), "healthy");
    assert_eq!(env_text(&record, "OOMCOUNT_HEALTH"), "degraded");
    assert_eq!(verdict["health"], "degraded", "{verdict}");
    // The reason the daemon gives (which says how long ago, so only up to there).
    let reason = env_text(&record, "OOMCOUNT_REASON");
    let named = format!("OOM kill of oomcount-hog (pid {pid}) ");
    assert!(reason.starts_with(&named), "{reason}");
    assert!(
        verdict["reason"].as_str().unwrap().starts_with(&named),
        "{verdict}"
    );
    let whole: serde_json::Value =
        serde_json::from_str(&env_text(&record, "OOMCOUNT_EVENT")).unwrap();
    assert_eq!(whole["health"], "degraded");
    // One change, one run: no hook for the kill itself (no on_kill).
    assert_eq!(Record::read_all(&dir).len(), 1);
}
