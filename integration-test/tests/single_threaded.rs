//! Single-threaded victims: each OOM kill is one kill and one `mark_victim`, so the daemon's
//! `kills` and `marked` must both equal the kernel's counts exactly.
use oomcount_integration_test::{Daemon, MemCg, Watch, producer, require_root};

#[test]
fn thirty_single_threaded_kills_are_counted_exactly() {
    require_root();
    let daemon = Daemon::start();
    let cg = MemCg::new("single", 32 << 20);
    let watch = Watch::new(Some(&daemon));
    producer::single_kills(&cg, 30);
    let d = watch.settle("the daemon to count 30 kills and 30 marks", |d| {
        d.kills() >= 30 && d.marked() >= 30
    });
    let memcg = cg.oom_kills();
    println!("{}", d.summary("single-threaded", Some(memcg)));
    assert_eq!(
        d.vmstat, 30,
        "/proc/vmstat oom_kill delta (another OOM on this machine?)"
    );
    assert_eq!(memcg, 30, "the memory cgroup's own oom_kill");
    assert_eq!(d.kills(), 30, "the daemon's kills");
    assert_eq!(d.marked(), 30, "the daemon's marked");
}
