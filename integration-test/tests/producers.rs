//! The OOM producers, checked against the kernel alone (no daemon): each shape of victim makes
//! the kernel count what FACTS.md says, so the daemon tests that use them compare the daemon
//! with a known truth. Oracles: `/proc/vmstat` `oom_kill`, the memory cgroup's own `oom_kill`,
//! and `mark_victim` events in a private trace instance.
use oomcount_integration_test::{MemCg, Watch, producer, require_root};

const MIB: u64 = 1 << 20;

#[test]
fn single_threaded_victim_is_one_kill_and_one_mark() {
    require_root();
    let cg = MemCg::new("producers-single", 32 * MIB);
    let watch = Watch::new(None);
    producer::single_kills(&cg, 5);
    let d = watch.delta();
    println!(
        "producer single: vmstat {} memcg {} traced {:?}",
        d.vmstat,
        cg.oom_kills(),
        d.traced
    );
    assert_eq!((d.vmstat, cg.oom_kills()), (5, 5));
    assert!(d.traced.is_none_or(|t| t == 5), "{d:?}");
}

#[test]
fn multi_threaded_victim_is_one_kill_and_more_marks() {
    require_root();
    let cg = MemCg::new("producers-threads", 32 * MIB);
    let watch = Watch::new(None);
    for _ in 0..5 {
        producer::threaded_kill(&cg, 8);
    }
    let d = watch.delta();
    println!(
        "producer threads: vmstat {} memcg {} traced {:?}",
        d.vmstat,
        cg.oom_kills(),
        d.traced
    );
    assert_eq!((d.vmstat, cg.oom_kills()), (5, 5));
    assert!(d.traced.is_none_or(|t| t >= 5), "{d:?}");
}

#[test]
fn vmshare_pair_is_one_kill() {
    require_root();
    let cg = MemCg::new("producers-vmshare", 32 * MIB);
    let watch = Watch::new(None);
    for _ in 0..3 {
        producer::vmshare_kill(&cg);
    }
    let d = watch.delta();
    println!(
        "producer vmshare: vmstat {} memcg {} traced {:?}",
        d.vmstat,
        cg.oom_kills(),
        d.traced
    );
    assert_eq!((d.vmstat, cg.oom_kills()), (3, 3));
}

#[test]
fn already_dying_victim_is_a_mark_without_a_kill() {
    require_root();
    let cg = MemCg::new("producers-dying", 64 * MIB);
    let watch = Watch::new(None);
    let pid = producer::already_dying(&cg, 64).unwrap_or_else(|err| {
        panic!(
            "{err}; the oom events since the start:\n{}",
            watch.trace_text().unwrap_or_default()
        )
    });
    let d = watch.delta();
    println!(
        "producer dying: vmstat {} memcg {} traced {:?} pids {:?}",
        d.vmstat,
        cg.oom_kills(),
        d.traced,
        watch.marked_pids()
    );
    assert_eq!((d.vmstat, cg.oom_kills()), (0, 0));
    if let Some(pids) = watch.marked_pids() {
        assert_eq!(pids, vec![pid], "the dying victim should be marked once");
    }
}

#[test]
fn storm_kills_are_counted_once_each() {
    require_root();
    let parent = MemCg::new("producers-storm", 64 * MIB);
    let groups: Vec<MemCg> = (0..4)
        .map(|i| parent.child(&format!("p{i}"), Some(4 * MIB)))
        .collect();
    let watch = Watch::new(None);
    let started = std::time::Instant::now();
    let kills = producer::storm(&groups, 25);
    let took = started.elapsed();
    let d = watch.delta();
    let memcg: u64 = groups.iter().map(MemCg::oom_kills).sum();
    println!(
        "producer storm: {kills} kills in {took:.2?}: vmstat {} memcg {memcg} traced {:?}",
        d.vmstat, d.traced
    );
    assert_eq!((d.vmstat, memcg), (kills, kills));
    assert!(d.traced.is_none_or(|t| t == kills), "{d:?}");
}
