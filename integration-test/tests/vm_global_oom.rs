//! A global OOM (no cgroup limit): the daemon must survive it (it sets its own oom_score_adj to
//! -1000), keep answering, and count the kill. Only in the VM guest (`OOMCOUNT_VM=1`): a global
//! OOM anywhere else could kill what runs the tests.
use oomcount_integration_test::{Daemon, Watch, in_vm, kernel_release, producer, require_root};

#[test]
fn the_daemon_survives_and_counts_a_global_oom() {
    require_root();
    if !in_vm() {
        eprintln!(
            "SKIPPED global OOM on kernel {}: OOMCOUNT_VM is unset, and a global OOM is made only inside the VM guest",
            kernel_release()
        );
        return;
    }
    let mut daemon = Daemon::start();
    assert_eq!(
        daemon.oom_score_adj(),
        -1000,
        "the daemon should protect itself from the OOM killer"
    );
    let watch = Watch::new(Some(&daemon));
    producer::global_kill();
    let d = watch.settle("the daemon to count the global OOM kill", |d| {
        d.kills() >= 1
    });
    println!("{}", d.summary("global OOM", None));
    assert!(
        daemon.is_running(),
        "the daemon died in the global OOM; its log:\n{}",
        daemon.log()
    );
    assert!(d.vmstat >= 1, "the kernel counted no kill");
    assert_eq!(
        d.kills(),
        d.vmstat,
        "the daemon's kills against /proc/vmstat"
    );
}
