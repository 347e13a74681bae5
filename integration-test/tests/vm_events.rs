//! Victim events of the OOMs only a VM guest may make: a global OOM (no cgroup's limit: the
//! event says `global` and names no `oom_cgroup`) and a cgroup2 `memory.oom.group` kill (every
//! member killed, the first victim twice, the second time an `again` event). Only in the VM
//! guest (`OOMCOUNT_VM=1`); elsewhere they skip, loudly.
use std::time::{Duration, SystemTime};

use oomcount_integration_test::{
    Daemon, Event, EventCounts, Layout, MemCg, Version, WatchClient, cgroup,
    events::{self, KillOracle, assert_between},
    in_vm, kernel_release, producer, require_root, vmstat,
};

const SLACK: Duration = Duration::from_secs(1);

#[test]
fn a_global_oom_kill_event_says_global() {
    require_root();
    if !in_vm() {
        eprintln!(
            "SKIPPED the global OOM's event on kernel {}: OOMCOUNT_VM is unset, and a global OOM is made only inside the VM guest",
            kernel_release()
        );
        return;
    }
    let layout = Layout::of_this_kernel();
    println!("{}", layout.describe());
    let daemon = Daemon::start();
    let oracle = KillOracle::start(layout);
    let watch = WatchClient::start(&daemon);
    let vmstat_before = vmstat::oom_kill();
    let from = SystemTime::now();
    let pid = producer::global_kill();
    let to = SystemTime::now();
    // The hog runs where this test runs, outside any limit.
    let memcg = cgroup::memcg_of(std::process::id());

    let event = watch.wait_kills_of(pid, 1).remove(0);
    let kernel = oracle.check(&event, 0);
    println!("event  {event:?}\nkernel {kernel:?}");
    assert_eq!(kernel.reason, "Out of memory", "a global OOM: {kernel:?}");
    assert_eq!(event.tgid, layout.btf.then_some(pid), "tgid");
    if layout.has_uid() {
        assert_eq!(event.oom_score_adj, Some(1000), "the hog's oom_score_adj");
    }
    assert_eq!(
        event.constraint.as_deref(),
        layout.btf.then_some("global"),
        "constraint: {event:?}"
    );
    assert_eq!(
        (&event.oom_cgroup, event.oom_cgroup_id),
        (&None, None),
        "a global OOM hit no cgroup's limit: {event:?}"
    );
    let dir = cgroup::memory_hierarchy()
        .mount
        .join(memcg.trim_start_matches('/'));
    assert_eq!(
        event.cgroup,
        layout.btf.then(|| memcg.clone()),
        "cgroup: {event:?}"
    );
    assert_eq!(
        event.cgroup_id,
        layout.btf.then(|| cgroup::inode(&dir)),
        "cgroup_id (the inode of {}): {event:?}",
        dir.display()
    );
    assert_eq!(event.again, None);
    assert_between(&event, from, to, SLACK);
    if let Some(summary) = &kernel.summary {
        assert_eq!(summary.constraint, "CONSTRAINT_NONE", "{summary:?}");
        assert_eq!(summary.oom_memcg, None, "{summary:?}");
    }

    let end = EventCounts::wait_settled(&daemon, "every event received or dropped", |_| true);
    let delta = end.since(&watch.baseline());
    let vmstat = vmstat::oom_kill() - vmstat_before;
    assert_eq!(
        delta.events_received + delta.events_dropped,
        delta.marked,
        "events received and dropped against marks"
    );
    let kills: Vec<Event> = watch.wait_for("a kill event per kill", |events| {
        let kills: Vec<Event> = events.iter().filter(|e| e.is_kill()).cloned().collect();
        (kills.len() as u64 >= vmstat).then_some(kills)
    });
    println!(
        "global OOM: vmstat {vmstat}, counts {delta:?}, kill events {}",
        kills.len()
    );
    assert_kills(&delta, &kills, vmstat);
    if layout.btf {
        assert_eq!(
            (delta.kills_global, delta.kills_memcg),
            (vmstat, 0),
            "kills_global and kills_memcg"
        );
        for kill in &kills {
            assert_eq!(kill.constraint.as_deref(), Some("global"), "{kill:?}");
        }
    }
}

const MEMBERS: usize = 4;

#[test]
fn an_oom_group_kill_makes_one_again_event() {
    require_root();
    let hierarchy = cgroup::memory_hierarchy();
    if !in_vm() || hierarchy.version != Version::V2 {
        eprintln!(
            "SKIPPED memory.oom.group's events on kernel {}: {}",
            kernel_release(),
            if in_vm() {
                format!(
                    "the memory controller is cgroup v1 here ({}); needs cgroup2",
                    hierarchy.mount.display()
                )
            } else {
                "OOMCOUNT_VM is unset; it runs in the VM guests (cgroup2)".to_owned()
            }
        );
        return;
    }
    let layout = Layout::of_this_kernel();
    println!("{}", layout.describe());
    let daemon = Daemon::start();
    let cg = MemCg::new("oomgroup-events", 64 << 20);
    cg.set_oom_group();
    let oracle = KillOracle::start(layout);
    let watch = WatchClient::start(&daemon);
    let vmstat_before = vmstat::oom_kill();
    let from = SystemTime::now();
    let pids = producer::oom_group_kill(&cg, MEMBERS);
    let to = SystemTime::now();
    let grower = pids[0];
    let vmstat = vmstat::oom_kill() - vmstat_before;
    let end = EventCounts::wait_settled(&daemon, "the daemon to count the group's kills", |c| {
        c.kills >= watch.baseline().kills + vmstat
    });
    let delta = end.since(&watch.baseline());
    let events: Vec<Event> = watch.wait_for("every event the daemon received", |events| {
        (events.len() as u64 >= delta.events_received).then(|| events.to_vec())
    });
    let kills: Vec<Event> = events.iter().filter(|e| e.is_kill()).cloned().collect();
    let lines: Vec<_> = oracle
        .kmsg()
        .kills()
        .into_iter()
        .filter(|k| pids.contains(&k.pid))
        .collect();
    println!(
        "memory.oom.group ({MEMBERS} members {pids:?}): vmstat {vmstat}, memcg {}, counts {delta:?}, {} Killed process lines",
        cg.oom_kills(),
        lines.len()
    );
    for kill in &kills {
        println!("  {kill:?}");
    }
    assert_kills(&delta, &kills, vmstat);
    assert_eq!(
        lines.len() as u64,
        vmstat,
        "the kernel's Killed process lines against /proc/vmstat"
    );
    for &pid in &pids {
        assert!(
            kills.iter().any(|k| k.pid == pid),
            "no kill event for member {pid}"
        );
    }
    let again: Vec<&Event> = kills.iter().filter(|k| k.is_again()).collect();
    // An `again` kill sends an event without a mark: the events are the marks and those.
    assert_eq!(
        delta.events_received + delta.events_dropped,
        delta.marked + again.len() as u64,
        "events received and dropped against marks and `again` kills"
    );
    if vmstat as usize == MEMBERS + 1 {
        // The kernel killed (and counted) the first victim twice: that second kill is the
        // `again` event.
        assert_eq!(again.len(), 1, "one `again` event: {kills:?}");
        assert_eq!(
            again[0].pid, grower,
            "the first victim (the growing member) is killed again"
        );
    } else {
        assert!(
            again.is_empty(),
            "no kill counted twice, no `again`: {kills:?}"
        );
    }
    let first_cpu = kills
        .iter()
        .find(|k| k.pid == grower && !k.is_again())
        .map(|k| k.cpu);
    for kill in &kills {
        // Each kill event against the kernel's line for the same kill: the first victim's two
        // lines in order, its first kill event then its `again` one.
        let n = kills
            .iter()
            .filter(|k| k.pid == kill.pid && k.seq < kill.seq)
            .count();
        oracle.check(kill, n);
        if kill.is_again() {
            assert!(
                kill.memory().iter().all(Option::is_none),
                "an `again` event has no memory fields: {kill:?}"
            );
        }
        assert_eq!(kill.tgid, layout.btf.then_some(kill.pid), "tgid: {kill:?}");
        assert_eq!(kill.cgroup, layout.btf.then(|| cg.path()), "{kill:?}");
        assert_eq!(kill.cgroup_id, layout.btf.then(|| cg.id()), "{kill:?}");
        // The OOM killer's `oom_control` names the first victim as the chosen one; the other
        // members' kills find it through that victim, which the daemon's program remembers per
        // CPU: on the CPU of the chosen victim's kill (the invoker rarely moves in between),
        // every kill's constraint and oom_cgroup are there; elsewhere they may be absent, never
        // wrong.
        let chosen = Some(kill.cpu) == first_cpu;
        let expect = |value: bool| layout.btf && (chosen || value);
        assert!(
            kill.constraint.as_deref() == Some("memcg") || !expect(kill.constraint.is_some()),
            "constraint: {kill:?}"
        );
        assert!(
            kill.oom_cgroup == Some(cg.path()) || !expect(kill.oom_cgroup.is_some()),
            "oom_cgroup: {kill:?}"
        );
        assert!(
            kill.oom_cgroup_id == Some(cg.id()) || !expect(kill.oom_cgroup_id.is_some()),
            "oom_cgroup_id: {kill:?}"
        );
        assert_eq!(
            kill.trigger_pid, grower,
            "the growing member invoked the OOM killer"
        );
        assert_between(kill, from, to, SLACK);
    }
    events::assert_seq_increasing(&kills);
    if layout.btf {
        // Only kills found through `oom_control` are split by constraint; none of them may be
        // called global.
        let found = kills.iter().filter(|k| k.constraint.is_some()).count() as u64;
        assert_eq!(
            (delta.kills_memcg, delta.kills_global),
            (found, 0),
            "kills_memcg and kills_global: every kill found through oom_control is by the group's limit"
        );
        assert!(found >= 1, "the chosen victim's kill is found: {kills:?}");
    }
}

/// The daemon's kills and its kill events, each against `/proc/vmstat`'s.
fn assert_kills(delta: &EventCounts, kills: &[Event], vmstat: u64) {
    assert_eq!(
        delta.kills, vmstat,
        "the daemon's kills against /proc/vmstat"
    );
    assert_eq!(
        kills.len() as u64,
        vmstat,
        "kill events against /proc/vmstat"
    );
}
