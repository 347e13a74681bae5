//! The kill hook for real: the library's hooks run a real program (`oomcount-hog hook-probe`,
//! which records what it was given) as uid 65534, and each test holds the record against the
//! event the hook was run for.
//!
//! - every field reaches the hook's environment byte-exact, hostile victim names included
//!   (`$(...)`, `;rm -rf /`, newlines, quotes, invalid UTF-8), nothing else is in it, the argument
//!   list is the configuration's, and nothing a name says is run;
//! - the hook runs without privileges: uid/gid/groups 65534, no capabilities, `no_new_privs`,
//!   stdin/stdout /dev/null, none of the caller's descriptors, its own process group, cwd `/`;
//! - a hook that hangs (and a child it left) is killed at its timeout, and its exit status and
//!   stderr's first line are logged;
//! - a storm of 200 kills runs at most `max_running` hooks at once, the rest are coalesced and
//!   counted, and the runtime thread (the daemon's keepalives) is never held up.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use oomcount::notify::{
    Notice,
    hooks::{HookConfig, Hooks},
};
use oomcount_integration_test::{
    hook_probe::Record,
    locate, require_root,
    wait::{deadline, time_scale},
};

/// Log lines the hooks wrote, for the tests to find theirs.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGGED.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn logged(needle: &str) -> Option<String> {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .find(|line| line.contains(needle))
        .cloned()
}

fn runtime() -> tokio::runtime::Runtime {
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Info);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A folder uid 65534 can write its records into.
fn probe_dir(label: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("oomcount-hooks-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn argv(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut argv = vec![
        locate::hog().display().to_string(),
        "hook-probe".to_owned(),
        dir.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv
}

fn hooks(argv: Vec<String>, max_running: usize, timeout: Duration) -> Hooks {
    Hooks::new(&HookConfig {
        on_kill: Some(argv),
        on_verdict: None,
        user: "65534".into(),
        max_running,
        timeout,
    })
    .expect("a valid hook configuration")
    // This test's binary is not oomcount: hooks start through the daemon's.
    .with_launcher(locate::oomcount())
}

const ID: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";

/// A kill event as the daemon's JSON has it, and its notice with the exact name.
fn notice(seq: u64, comm: &[u8]) -> Notice {
    let event = serde_json::json!({
        "kind": "kill", "seq": seq, "time": "2026-12-04T13:00:00.000000000Z", "pid": 4000 + seq,
        "tgid": 4000 + seq, "comm": String::from_utf8_lossy(comm), "uid": 1000,
        "total_vm_kb": 90000, "anon_rss_kb": 51200, "file_rss_kb": 12, "shmem_rss_kb": 0,
        "pgtables_kb": 140, "oom_score_adj": 0, "constraint": "memcg",
        "cgroup": format!("/system.slice/docker-{ID}.scope"), "cgroup_id": 77,
        "oom_cgroup": format!("/system.slice/docker-{ID}.scope"), "oom_cgroup_id": 77,
        "unit": format!("docker-{ID}.scope"), "container_id": ID,
        "trigger_pid": 4000 + seq, "trigger_tgid": 4000 + seq, "trigger_comm": "x", "cpu": 1,
    });
    Notice::new(&event).exact("comm", Some(comm))
}

/// Waits (on the runtime) until no hook runs, within `limit` (scaled).
fn settle(runtime: &tokio::runtime::Runtime, hooks: &Hooks, limit: Duration) {
    runtime
        .block_on(async { tokio::time::timeout(limit * time_scale(), hooks.idle()).await })
        .unwrap_or_else(|_| panic!("hooks still running after {limit:?}: {}", hooks.running()));
}

fn gone_or_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn hostile_names_reach_the_hook_byte_exact_and_run_nothing() {
    require_root();
    // As the daemon may run: real-time (the runtime's threads inherit it) and with another
    // oom_score_adj (raised here: lowering it needs CAP_SYS_RESOURCE); the hook must have
    // neither.
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sets this thread's own policy from a parameter it owns.
    let realtime = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
    let adj_set = std::fs::write("/proc/self/oom_score_adj", "1").is_ok();
    let runtime = runtime();
    let dir = probe_dir("names");
    let sentinel = dir.join("pwned");
    let touch = format!("$(touch {})", sentinel.display());
    let semi = format!(";touch {}", sentinel.display());
    let names: Vec<Vec<u8>> = vec![
        b"$(reboot)".to_vec(),
        b";rm -rf /".to_vec(),
        touch.into_bytes(),
        semi.into_bytes(),
        b"`touch pwned`".to_vec(),
        b"two\nlines".to_vec(),
        b"x\nOOMCOUNT_PID=1".to_vec(),
        b"it's \"quoted\"".to_vec(),
        b"\xff\xfe bad \x80utf8".to_vec(),
        b"a=b".to_vec(),
        b"-rf".to_vec(),
    ];
    let argv = argv(&dir, &["--stderr", "probe ran\nsecond line\n"]);
    let hooks = hooks(argv.clone(), names.len(), Duration::from_secs(10));
    let notices: Vec<Notice> = names
        .iter()
        .enumerate()
        .map(|(i, name)| notice(i as u64 + 1, name))
        .collect();
    runtime.block_on(async {
        for notice in &notices {
            hooks.kill(notice.clone());
        }
    });
    settle(&runtime, &hooks, Duration::from_secs(20));
    assert_eq!(hooks.skipped(), 0);
    let records = Record::read_all(&dir);
    assert_eq!(records.len(), names.len(), "one run per kill");
    for record in &records {
        let seq: usize = String::from_utf8(record.env("OOMCOUNT_SEQ").unwrap().to_vec())
            .unwrap()
            .parse()
            .unwrap();
        let notice = &notices[seq - 1];
        // The environment is exactly the event's fields and the four of the hook's own.
        let mut want: BTreeSet<Vec<u8>> = notice
            .fields()
            .map(|(name, value)| [name.as_bytes(), b"=", value].concat())
            .collect();
        for extra in [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            "OOMCOUNT_HOOK=kill".to_owned(),
            "OOMCOUNT_SKIPPED=0".to_owned(),
            format!("OOMCOUNT_EVENT={}", notice.json()),
        ] {
            want.insert(extra.into_bytes());
        }
        let got: BTreeSet<Vec<u8>> = record.environ.iter().cloned().collect();
        assert_eq!(
            got.len(),
            record.environ.len(),
            "no variable twice: {:?}",
            record.environ
        );
        if got != want {
            let show = |set: &BTreeSet<Vec<u8>>| -> Vec<String> {
                set.iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            };
            panic!(
                "seq {seq}: environment differs\nonly given: {:?}\nmissing: {:?}",
                show(&got.difference(&want).cloned().collect()),
                show(&want.difference(&got).cloned().collect())
            );
        }
        assert_eq!(record.env("OOMCOUNT_COMM"), Some(names[seq - 1].as_slice()));
        assert_eq!(
            record.env("OOMCOUNT_CONTAINER_ID"),
            Some(ID.as_bytes()),
            "{seq}"
        );
        // Nothing from the event in the arguments: they are the configuration's.
        assert_eq!(record.info.argv, argv, "seq {seq}");
        assert_eq!(record.info.cwd, "/");
        assert_eq!(record.info.pgid, record.info.pid, "its own process group");
        // Without privileges.
        assert_eq!(record.status("Uid"), "65534 65534 65534 65534");
        assert_eq!(record.status("Gid"), "65534 65534 65534 65534");
        assert_eq!(record.status("Groups"), "65534");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(record.status(caps), "0000000000000000", "{caps}");
        }
        assert_eq!(record.status("NoNewPrivs"), "1");
        assert_eq!(
            record.info.policy,
            libc::SCHED_OTHER,
            "realtime here: {realtime}"
        );
        assert_eq!(record.info.oom_score_adj, "0", "set here: {adj_set}");
        // stdin and stdout /dev/null, stderr the pipe the log line is read from, nothing else.
        let fds: Vec<(&i32, &String)> = record.info.fds.iter().collect();
        assert_eq!(fds.len(), 3, "only stdio open: {fds:?}");
        assert_eq!(record.info.fds[&0], "/dev/null");
        assert_eq!(record.info.fds[&1], "/dev/null");
        assert!(record.info.fds[&2].starts_with("pipe:"), "{fds:?}");
        assert!(record.end_ns.is_some(), "the probe ran to its end");
        let line = logged(&format!(
            "hook on_kill for event {seq} (pid {})",
            record.info.pid
        ))
        .unwrap_or_else(|| panic!("no log line for seq {seq}"));
        assert!(line.ends_with("exited 0: probe ran"), "{line}");
    }
    assert!(
        !sentinel.exists(),
        "a victim's name was run: {}",
        sentinel.display()
    );
    eprintln!("the test ran real-time: {realtime}; with oom_score_adj 1: {adj_set}");
    let ordinary = libc::sched_param { sched_priority: 0 };
    // SAFETY: as above.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &ordinary) };
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failing_hook_is_logged_with_its_status_and_first_line() {
    require_root();
    let runtime = runtime();
    let dir = probe_dir("fails");
    let hooks = hooks(
        argv(
            &dir,
            &["--exit", "3", "--stderr", "cannot page \x1b[1mops\nmore"],
        ),
        2,
        Duration::from_secs(10),
    );
    runtime.block_on(async { hooks.kill(notice(90, b"failing")) });
    settle(&runtime, &hooks, Duration::from_secs(20));
    let record = &Record::read_all(&dir)[0];
    let line = logged("for event 90").expect("a log line for the failing hook");
    assert_eq!(
        line,
        format!(
            "hook on_kill for event 90 (pid {}) exit status: 3: cannot page \\u{{1b}}[1mops",
            record.info.pid
        )
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_hanging_hook_is_killed_at_its_timeout_with_its_process_group() {
    require_root();
    let runtime = runtime();
    let dir = probe_dir("hang");
    let timeout = Duration::from_millis(500) * time_scale();
    let hooks = hooks(argv(&dir, &["--hang"]), 2, timeout);
    let started = Instant::now();
    runtime.block_on(async { hooks.kill(notice(7, b"hang")) });
    settle(&runtime, &hooks, Duration::from_secs(20));
    let took = started.elapsed();
    let records = Record::read_all(&dir);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert!(
        took >= timeout,
        "the hook was given up after {took:?}, before its timeout {timeout:?}"
    );
    assert!(
        record.end_ns.is_none(),
        "the hanging probe never ended by itself"
    );
    let child = record.info.child.expect("the probe's child");
    for pid in [record.info.pid, child] {
        oomcount_integration_test::wait_until(
            deadline(Duration::from_secs(5)),
            "the hook and its child gone",
            || {
                if gone_or_zombie(pid) {
                    Ok(())
                } else {
                    Err(pid)
                }
            },
        );
    }
    let line = logged("for event 7").expect("a log line for the killed hook");
    assert!(line.contains("killed after its timeout"), "{line}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_storm_runs_at_most_max_running_and_counts_the_rest() {
    require_root();
    let runtime = runtime();
    let dir = probe_dir("storm");
    let max_running = 2;
    let hooks = hooks(
        argv(&dir, &["--sleep-ms", "100"]),
        max_running,
        Duration::from_secs(10),
    );
    let interval = Duration::from_millis(100);
    let kills = 200u64;
    // A keepalive stand-in ticks on the same thread through the storm: it must never wait for a
    // hook (spawns, stderr, reaping).
    let gap = runtime.block_on(async {
        let ticker = async {
            let mut ticks = tokio::time::interval(interval);
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            loop {
                ticks.tick().await;
                let now = Instant::now();
                longest = longest.max(now - last);
                last = now;
                if hooks.running() == 0 && hooks.ran() > 0 {
                    return longest;
                }
            }
        };
        let storm = async {
            for seq in 1..=kills {
                hooks.kill(notice(seq, b"storm"));
                // 200 kills over about a second, as a fast producer makes them.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (longest, ()) = tokio::join!(ticker, storm);
        longest
    });
    settle(&runtime, &hooks, Duration::from_secs(30));
    let records = Record::read_all(&dir);
    let ran = records.len() as u64;
    assert_eq!(ran, hooks.ran());
    assert_eq!(
        ran + hooks.skipped(),
        kills,
        "every kill ran a hook or was counted"
    );
    assert!(hooks.skipped() > 0, "a storm against slow hooks skips some");
    // Each hook says how many kills before it ran none: together, every skipped one.
    let told: u64 = records
        .iter()
        .map(|r| {
            String::from_utf8(r.env("OOMCOUNT_SKIPPED").unwrap().to_vec())
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(told, hooks.skipped());
    let last = records
        .iter()
        .map(|r| {
            String::from_utf8_lossy(r.env("OOMCOUNT_SEQ").unwrap())
                .parse::<u64>()
                .unwrap()
        })
        .max();
    assert_eq!(last, Some(kills), "the newest kill ran its hook");
    // At most max_running probes alive at once (each probe's life lies within its slot's).
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for record in &records {
        edges.push((record.info.start_ns, 1));
        edges.push((record.end_ns.expect("each probe ended"), -1));
    }
    edges.sort();
    let mut now = 0;
    let mut most = 0;
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(
        most <= max_running as i32,
        "{most} hooks ran at once, max_running {max_running}"
    );
    assert_eq!(most, max_running as i32, "the storm used every slot");
    let slack = Duration::from_millis(100) * time_scale();
    assert!(
        gap <= interval + slack,
        "the runtime thread stalled {gap:?} between ticks of {interval:?} during the storm"
    );
    eprintln!(
        "storm: {kills} kills, {ran} hooks run, {} skipped, longest tick gap {gap:?}",
        hooks.skipped()
    );
    std::fs::remove_dir_all(dir).unwrap();
}
