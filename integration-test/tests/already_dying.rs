//! A victim already dying when the OOM killer picks it: the kernel marks it (`mark_victim`) but
//! kills nothing (`task_will_free_mem`). The daemon must count a mark and no kill. The victim is
//! SIGKILLed and held in its exit path by a ptrace exit stop (see `victim::dying`).
use oomcount_integration_test::{Daemon, MemCg, Watch, producer, require_root};

#[test]
fn an_already_dying_victim_is_marked_but_not_a_kill() {
    require_root();
    let daemon = Daemon::start();
    let cg = MemCg::new("dying", 64 << 20);
    let watch = Watch::new(Some(&daemon));
    let pid = producer::already_dying(&cg, 64).unwrap_or_else(|err| {
        panic!(
            "{err}; the oom events since the start:\n{}",
            watch.trace_text().unwrap_or_default()
        )
    });
    let d = watch.settle("the daemon to count the mark", |d| d.marked() >= 1);
    let memcg = cg.oom_kills();
    println!("{}", d.summary("already-dying", Some(memcg)));
    if let Some(pids) = watch.marked_pids() {
        assert_eq!(
            pids,
            vec![pid],
            "the kernel should have marked the dying victim once, and nothing else"
        );
    }
    assert_eq!(
        (d.vmstat, memcg),
        (0, 0),
        "the kernel counts no kill for a victim already dying"
    );
    assert_eq!(d.kills(), 0, "the daemon's kills");
    assert_eq!(d.marked(), 1, "the daemon's marked");
}
