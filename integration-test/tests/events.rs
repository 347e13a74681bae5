//! Victim events, field by field against the kernel: each kill event that `oomcount watch
//! --json --marks` prints must say what the kernel's own "Killed process" line says of the same
//! victim (pid, comm, uid, memory, oom_score_adj), what the test knows (the victim's process id,
//! the oom_score_adj it set, the cgroup it made, when it ran), and where the OOM came from (the
//! allocating task, the cgroup whose limit was hit). Marks without a kill are `mark` events, as
//! many as the daemon's `marked - kills`.
//!
//! Which fields must be present depends on the kernel and is read at run time ([`Layout`]): on
//! kernels whose `oom/mark_victim` has only the pid (5.10.223) the memory fields must be absent.
use std::time::{Duration, SystemTime};

use oomcount_integration_test::{
    Daemon, Event, EventCounts, Layout, MemCg, Watch, WatchClient,
    events::{self, KillOracle, assert_between},
    kmsg::KernelKill,
    producer, require_root,
};

const MIB: u64 = 1 << 20;
/// The kernel keeps this many bytes of a comm.
const COMM_MAX: usize = 15;
/// Slack around the test's window for an event's `time`: the daemon turns the kernel's
/// monotonic clock into wall-clock time when it reads the event.
const SLACK: Duration = Duration::from_secs(1);

fn cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    u32::try_from(n).unwrap_or(1).max(1)
}

/// What every kill event of a memcg OOM must say, whoever the victim: the fields that come from
/// kernel structures (present exactly where the kernel has BTF), the trigger, the CPU.
fn check_memcg_kill(
    event: &Event,
    layout: &Layout,
    victim_cg: &MemCg,
    limit_cg: &MemCg,
    kernel: &KernelKill,
) {
    let btf = layout.btf;
    assert_eq!(event.again, None, "a first kill is not `again`: {event:?}");
    assert_eq!(
        event.constraint.as_deref(),
        btf.then_some("memcg"),
        "constraint: {event:?}"
    );
    assert_eq!(
        event.cgroup,
        btf.then(|| victim_cg.path()),
        "cgroup (the victim's memcg): {event:?}"
    );
    assert_eq!(
        event.cgroup_id,
        btf.then(|| victim_cg.id()),
        "cgroup_id (the inode of {}): {event:?}",
        victim_cg.dir().display()
    );
    assert_eq!(
        event.oom_cgroup,
        btf.then(|| limit_cg.path()),
        "oom_cgroup (the memcg whose limit was hit): {event:?}"
    );
    assert_eq!(
        event.oom_cgroup_id,
        btf.then(|| limit_cg.id()),
        "oom_cgroup_id (the inode of {}): {event:?}",
        limit_cg.dir().display()
    );
    assert!(
        event.cpu < cpus(),
        "cpu {} of {}: {event:?}",
        event.cpu,
        cpus()
    );
    assert_eq!(
        kernel.reason, "Memory cgroup out of memory",
        "the kernel's reason: {kernel:?}"
    );
    // dump_header's lines, when the kernel's rate limit let them through, name the same cgroups
    // and the same invoker.
    if let Some(summary) = &kernel.summary {
        assert_eq!(summary.constraint, "CONSTRAINT_MEMCG", "{summary:?}");
        if btf {
            assert_eq!(
                (summary.task_memcg.as_ref(), summary.oom_memcg.as_ref()),
                (event.cgroup.as_ref(), event.oom_cgroup.as_ref()),
                "the kernel's oom-kill line against the event's cgroup and oom_cgroup"
            );
        }
        assert_eq!(summary.pid, event.pid, "{summary:?}");
    }
    if let Some(invoker) = &kernel.invoker {
        assert_eq!(
            &event.trigger_comm, invoker,
            "trigger_comm against the kernel's `... invoked oom-killer` line"
        );
    }
}

/// `(oom_score_adj, comm, uid)` of each victim: non-zero adjustments, one negative (set as root
/// before dropping to the uid) where this process may lower one, a comm longer than the kernel
/// keeps, victims that are not root.
fn victims() -> [(i16, Option<&'static str>, Option<u32>); 3] {
    let low = if may_lower_oom_score_adj() {
        -17
    } else {
        eprintln!(
            "NOTE: no CAP_SYS_RESOURCE here (a sandbox?): the victims' oom_score_adj stay positive"
        );
        17
    };
    [
        (321, Some("oc-fields"), None),
        (low, None, Some(4242)),
        (1000, Some("oc-fields-long-name"), Some(65534)),
    ]
}

/// Whether this process has CAP_SYS_RESOURCE, which a negative oom_score_adj needs.
fn may_lower_oom_score_adj() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[test]
fn kill_events_match_the_kernels_killed_process_lines() {
    require_root();
    let layout = Layout::of_this_kernel();
    println!("{}", layout.describe());
    let daemon = Daemon::start();
    let cg = MemCg::new("fields", 32 * MIB);
    let oracle = KillOracle::start(layout);
    let watch = WatchClient::start(&daemon);
    let from = SystemTime::now();
    let victims = victims();
    let mut pids = Vec::new();
    for (adj, comm, uid) in &victims {
        let mut options = vec!["--adj".to_owned(), adj.to_string()];
        if let Some(comm) = comm {
            options.extend(["--comm".to_owned(), (*comm).to_owned()]);
        }
        if let Some(uid) = uid {
            options.extend(["--uid".to_owned(), uid.to_string()]);
        }
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        pids.push(producer::kill_one(&cg, &options));
    }
    let to = SystemTime::now();

    let mut seen = Vec::new();
    for (&pid, (adj, comm, uid)) in pids.iter().zip(&victims) {
        let kills = watch.wait_kills_of(pid, 1);
        assert_eq!(kills.len(), 1, "one kill event for pid {pid}: {kills:?}");
        let event = &kills[0];
        let kernel = oracle.check(event, 0);
        println!("pid {pid}:\n  event  {event:?}\n  kernel {kernel:?}");
        // What the test knows of its own victim.
        let comm: String = comm
            .unwrap_or("oomcount-hog")
            .chars()
            .take(COMM_MAX)
            .collect();
        assert_eq!(event.comm.as_deref(), Some(comm.as_str()), "comm");
        assert_eq!(event.tgid, layout.btf.then_some(pid), "tgid: {event:?}");
        if layout.has_uid() {
            assert_eq!(
                event.oom_score_adj,
                Some(*adj),
                "the oom_score_adj the test set"
            );
            assert_eq!(
                event.uid,
                Some(uid.unwrap_or(0)),
                "the uid the victim ran as"
            );
        }
        // Each victim is alone in its group and allocates itself into the OOM.
        assert_eq!(
            (
                event.trigger_pid,
                event.trigger_tgid,
                event.trigger_comm.as_str()
            ),
            (pid, pid, comm.as_str()),
            "the trigger of a victim that allocated itself into the OOM"
        );
        check_memcg_kill(event, &layout, &cg, &cg, &kernel);
        assert_between(event, from, to, SLACK);
        seen.push(event.clone());
    }
    events::assert_seq_increasing(&watch.events());
    events::assert_seq_increasing(&seen);
    assert_eq!(
        cg.oom_kills(),
        victims.len() as u64,
        "the memcg's own oom_kill"
    );

    // `list` holds the same events, the same to the field.
    let listed = events::list(&daemon, 1024, true);
    events::assert_seq_increasing(&listed);
    for event in &seen {
        assert!(
            listed.contains(event),
            "`list --json --marks` lacks {event:?}"
        );
    }
    let kills_only = events::list(&daemon, 1024, false);
    assert!(
        kills_only.iter().all(Event::is_kill),
        "`list --json` without --marks listed a mark: {kills_only:?}"
    );
    for event in &seen {
        assert!(kills_only.contains(event), "`list --json` lacks {event:?}");
    }
    let last_two = events::list(&daemon, 2, true);
    assert_eq!(last_two.len(), 2, "`list -n 2`: {last_two:?}");
    events::assert_seq_increasing(&last_two);
    let newest = seen.last().expect("events").seq;
    assert!(
        last_two[1].seq >= newest,
        "`list -n 2` should end with the newest event (seq {newest} or later): {last_two:?}"
    );
    println!(
        "kill events of {} victims match the kernel's lines ({})",
        seen.len(),
        layout.describe()
    );
}

#[test]
fn the_victim_is_not_the_task_that_allocated() {
    require_root();
    let layout = Layout::of_this_kernel();
    let daemon = Daemon::start();
    let cg = MemCg::new("trigger", 64 * MIB);
    let oracle = KillOracle::start(layout);
    let watch = WatchClient::start(&daemon);
    // A big process the OOM killer prefers, holding its memory; then a small one allocates
    // until the group's limit: the small one invokes the OOM killer, the big one dies, and the
    // small one finishes.
    let mut big = producer::Held::spawn_with(&cg, 40, 1000, &["--comm", "oc-big"]);
    let from = SystemTime::now();
    // The allocator must not become a victim itself: on a slow guest the big victim may not
    // have given its memory back when the allocator charges again, and then the allocator is
    // all the OOM killer finds (seen on 7.2 under QEMU). oom_score_adj -1000 rules it out where
    // this process may set it; the allocator then waits in its page fault until memory is free.
    let mut options = vec!["--comm", "oc-allocator"];
    if may_lower_oom_score_adj() {
        options.extend(["--adj", "-1000"]);
    }
    let allocator = producer::survivor(&cg, 32, &options);
    big.wait_killed("the big hog to be OOM-killed for the allocator");
    let to = SystemTime::now();

    let event = watch.wait_kills_of(big.pid(), 1).remove(0);
    let kernel = oracle.check(&event, 0);
    println!("event  {event:?}\nkernel {kernel:?}");
    assert_eq!(event.comm.as_deref(), Some("oc-big"));
    assert_eq!(event.tgid, layout.btf.then_some(big.pid()), "tgid");
    if layout.has_uid() {
        assert_eq!(event.oom_score_adj, Some(1000));
    }
    assert_eq!(
        (
            event.trigger_pid,
            event.trigger_tgid,
            event.trigger_comm.as_str()
        ),
        (allocator, allocator, "oc-allocator"),
        "the trigger is the allocating process, not the victim"
    );
    check_memcg_kill(&event, &layout, &cg, &cg, &kernel);
    assert_between(&event, from, to, SLACK);
    let ours: Vec<Event> = watch
        .events()
        .into_iter()
        .filter(|e| e.pid == allocator || e.pid == big.pid())
        .collect();
    assert_eq!(
        ours,
        vec![event],
        "one event for this OOM: the big process's kill"
    );
    assert_eq!(cg.oom_kills(), 1, "the memcg's own oom_kill");
}

#[test]
fn nested_memcgs_name_the_cgroup_whose_limit_was_hit() {
    require_root();
    let layout = Layout::of_this_kernel();
    let daemon = Daemon::start();
    // The limit is on the top group; the victim two levels below, in groups without one.
    let top = MemCg::new("nested", 48 * MIB);
    top.use_hierarchy();
    let middle = top.child("mid", None);
    middle.use_hierarchy();
    let leaf = middle.child("leaf", None);
    let oracle = KillOracle::start(layout);
    let watch = WatchClient::start(&daemon);
    let from = SystemTime::now();
    let pid = producer::kill_one(&leaf, &["--adj", "500", "--comm", "oc-nested"]);
    let to = SystemTime::now();

    let event = watch.wait_kills_of(pid, 1).remove(0);
    let kernel = oracle.check(&event, 0);
    println!(
        "event  {event:?}\nkernel {kernel:?}\nexpected cgroup {} oom_cgroup {}",
        leaf.path(),
        top.path()
    );
    assert_eq!(event.tgid, layout.btf.then_some(pid), "tgid");
    check_memcg_kill(&event, &layout, &leaf, &top, &kernel);
    if layout.btf {
        assert_ne!(
            event.cgroup_id, event.oom_cgroup_id,
            "the victim's memcg is not the one whose limit was hit"
        );
    }
    assert_between(&event, from, to, SLACK);
    assert_eq!(
        leaf.oom_kills(),
        1,
        "the victim's memcg's own oom_kill (v1 counts it there; v2 there and above)"
    );
}

const THREADS: usize = 8;
const THREADED_ROUND: usize = 5;
const THREADED_MAX: usize = 15;

#[test]
fn marks_without_kills_are_mark_events() {
    require_root();
    let layout = Layout::of_this_kernel();
    let daemon = Daemon::start();
    let dying_cg = MemCg::new("marks-dying", 64 * MIB);
    let threads_cg = MemCg::new("marks-threads", 32 * MIB);
    let watch = WatchClient::start(&daemon);
    let kernel = Watch::new(Some(&daemon));
    // A victim already dying: one mark, no kill.
    let dying = producer::already_dying(&dying_cg, 64).unwrap_or_else(|err| {
        panic!(
            "{err}; the oom events since the start:\n{}",
            kernel.trace_text().unwrap_or_default()
        )
    });
    // Multi-threaded victims: one kill each, and their other threads marked again (on kernels
    // that mark them, see multi_threaded.rs): until one is, or THREADED_MAX kills.
    let mut threaded = Vec::new();
    loop {
        for _ in 0..THREADED_ROUND {
            threaded.push(producer::threaded_kill(&threads_cg, THREADS));
        }
        let n = threaded.len() as u64;
        let d = kernel.settle("the daemon to count the multi-threaded kills", |d| {
            d.kills() >= n && d.marked() > n
        });
        if d.marked() > n + 1 || threaded.len() >= THREADED_MAX {
            break;
        }
    }
    let d = kernel.delta();
    let end = EventCounts::wait_settled(&daemon, "every event received or dropped", |_| true);
    let delta = end.since(&watch.baseline());
    let events = watch.wait_for("every event the daemon received in the stream", |events| {
        (events.len() as u64 >= delta.events_received).then(|| events.to_vec())
    });
    let marks: Vec<&Event> = events.iter().filter(|e| e.kind == "mark").collect();
    let kills: Vec<&Event> = events.iter().filter(|e| e.is_kill()).collect();
    println!(
        "{}; counts {delta:?}; stream: {} kill events, {} mark events",
        d.summary("marks", None),
        kills.len(),
        marks.len()
    );
    let foreign: Vec<&&Event> = kills
        .iter()
        .filter(|e| !threaded.contains(&e.tgid.unwrap_or(e.pid)))
        .collect();
    assert_eq!(
        d.vmstat,
        threaded.len() as u64,
        "/proc/vmstat oom_kill delta (another OOM on this machine?); kills not of this test: {foreign:?}"
    );
    assert_eq!(
        (
            delta.events_dropped,
            watch.dropped("kernel"),
            watch.dropped("watcher")
        ),
        (0, 0, 0),
        "no event may be lost at this rate"
    );
    assert_eq!(
        events.len() as u64,
        delta.events_received,
        "the stream against events_received"
    );
    assert_eq!(
        marks.len() as u64,
        delta.marked - delta.kills,
        "mark events against marked - kills"
    );
    assert_eq!(kills.len() as u64, delta.kills, "kill events against kills");
    events::assert_seq_increasing(&events);

    // The dying victim: one mark event, no kill event.
    let of_dying: Vec<&Event> = events.iter().filter(|e| e.pid == dying).collect();
    assert_eq!(
        of_dying.len(),
        1,
        "one event for the dying victim (pid {dying}): {of_dying:?}"
    );
    let mark = of_dying[0];
    assert_eq!(
        mark.kind, "mark",
        "the dying victim is marked, not killed: {mark:?}"
    );
    assert_ne!(
        mark.trigger_pid, dying,
        "another process invoked the OOM killer"
    );
    // A mark carries what the tracepoint gives.
    assert_eq!(
        mark.memory().iter().all(Option::is_some),
        layout.memory,
        "memory fields of a mark event on this kernel ({}): {mark:?}",
        layout.describe()
    );
    for mark in &marks {
        assert_eq!(mark.again, None, "a mark is never `again`: {mark:?}");
        assert_eq!(
            mark.memory().iter().all(Option::is_some),
            layout.memory,
            "memory fields of a mark: {mark:?}"
        );
    }
    // The multi-threaded victims: one kill event each; their other threads' marks are made by
    // themselves (the thread that hit the limit is the one marked).
    for &pid in &threaded {
        let of_pid: Vec<&&Event> = kills
            .iter()
            .filter(|e| e.tgid.unwrap_or(e.pid) == pid)
            .collect();
        assert_eq!(
            of_pid.len(),
            1,
            "one kill event for the multi-threaded victim {pid}: {of_pid:?}"
        );
    }
    let thread_marks = marks
        .iter()
        .filter(|m| threaded.contains(&m.trigger_tgid))
        .inspect(|m| {
            assert_eq!(
                m.pid, m.trigger_pid,
                "another thread of a killed process marks itself: {m:?}"
            )
        })
        .count();
    println!(
        "marks: the dying victim's 1, {thread_marks} of threads of {} killed processes",
        threaded.len()
    );
}
