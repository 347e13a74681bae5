//! `clone(CLONE_VM)` without `CLONE_THREAD`: two processes sharing one mm. The OOM killer kills
//! both but counts one; the daemon must count one too.
use oomcount_integration_test::{Daemon, MemCg, Watch, producer, require_root};

const PAIRS: u64 = 5;

#[test]
fn mm_sharing_processes_are_one_kill() {
    require_root();
    let daemon = Daemon::start();
    let cg = MemCg::new("vmshare", 32 << 20);
    let watch = Watch::new(Some(&daemon));
    for _ in 0..PAIRS {
        producer::vmshare_kill(&cg);
    }
    let d = watch.settle("the daemon to count the mm-sharing pairs", |d| {
        d.kills() >= PAIRS
    });
    let memcg = cg.oom_kills();
    println!("{}", d.summary("clone(CLONE_VM) pairs", Some(memcg)));
    assert_eq!(
        (d.vmstat, memcg),
        (PAIRS, PAIRS),
        "the kernel counts one kill per pair"
    );
    assert_eq!(
        d.kills(),
        d.vmstat,
        "the daemon's kills against /proc/vmstat"
    );
    assert!(
        d.marked() >= d.kills(),
        "marked {} < kills {}",
        d.marked(),
        d.kills()
    );
}
