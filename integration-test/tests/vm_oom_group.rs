//! cgroup2 `memory.oom.group`: the OOM killer kills every member of the group together, each
//! through `__oom_kill_process` (one kill each as the kernel counts them; the chosen victim
//! may be counted twice, see below). Needs the cgroup2 memory controller: the VM
//! guests have it; this development host (memcg v1) does not, and skips loudly.
use oomcount_integration_test::{
    Daemon, MemCg, Version, Watch, cgroup, kernel_release, producer, require_root,
};

const MEMBERS: u64 = 4;

#[test]
fn an_oom_group_kill_counts_each_member() {
    require_root();
    let hierarchy = cgroup::memory_hierarchy();
    if hierarchy.version != Version::V2 {
        eprintln!(
            "SKIPPED memory.oom.group on kernel {}: the memory controller is cgroup v1 here ({}); needs cgroup2",
            kernel_release(),
            hierarchy.mount.display()
        );
        return;
    }
    let daemon = Daemon::start();
    let cg = MemCg::new("oomgroup", 64 << 20);
    cg.set_oom_group();
    let watch = Watch::new(Some(&daemon));
    producer::oom_group_kill(&cg, MEMBERS as usize);
    let d = watch.settle("the daemon to count the group's members", |d| {
        d.kills() >= MEMBERS
    });
    let memcg = cg.oom_kills();
    println!(
        "{}",
        d.summary(
            &format!("memory.oom.group ({MEMBERS} members)"),
            Some(memcg)
        )
    );
    if let Some(pids) = watch.marked_pids() {
        println!("memory.oom.group: marked pids {pids:?}");
    }
    // The kernel kills the chosen victim, then every member through oom_kill_memcg_member(),
    // which does not skip the victim: while it still has its mm (it is the task invoking the OOM
    // killer here), it goes through __oom_kill_process() again, counted a second time in
    // /proc/vmstat and memory.events (dmesg says "Killed process" twice), marked once.
    if d.vmstat != MEMBERS {
        eprintln!(
            "NOTE: the kernel counted {} OOM kills for {MEMBERS} members killed",
            d.vmstat
        );
    }
    assert!(
        d.vmstat >= MEMBERS,
        "the kernel should count every member: {d:?}"
    );
    assert_eq!(
        memcg, d.vmstat,
        "the group's memory.events oom_kill against /proc/vmstat"
    );
    assert_eq!(
        d.kills(),
        d.vmstat,
        "the daemon's kills against /proc/vmstat"
    );
}
