//! `oomcount count --json`, the interface the other tests read through, checked for itself:
//! every documented key with its type, `kernel_oom_kill` equal to `/proc/vmstat` at that
//! moment, `attached_at` an RFC 3339 time, and deltas that follow real kills.
use oomcount_integration_test::{
    Daemon, MemCg, Watch, producer, require_root, watch::check_count_fields,
};

#[test]
fn count_json_reports_the_counts_and_the_kernels() {
    require_root();
    let daemon = Daemon::start();
    let text = daemon.count_json().unwrap_or_else(|err| panic!("{err}"));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
    for key in ["kills", "marked", "events_dropped", "kernel_oom_kill"] {
        assert!(
            json[key].is_u64(),
            "`{key}` should be an unsigned number in {text}"
        );
    }
    assert!(
        json["attached_at"].is_string(),
        "`attached_at` should be a string in {text}"
    );
    let first = check_count_fields(&daemon);

    let cg = MemCg::new("json", 32 << 20);
    let watch = Watch::new(Some(&daemon));
    producer::single_kills(&cg, 3);
    let d = watch.settle("the daemon to count 3 kills", |d| {
        d.kills() >= 3 && d.marked() >= 3
    });
    let last = check_count_fields(&daemon);
    println!(
        "{} kernel_oom_kill {:?} attached_at {}",
        d.summary("count --json", Some(cg.oom_kills())),
        last.kernel_oom_kill,
        last.attached_at
    );
    assert_eq!((d.kills(), d.marked(), d.vmstat), (3, 3, 3));
    assert_eq!(
        last.attached_at, first.attached_at,
        "attached_at must not move while the daemon runs"
    );
    assert_eq!(
        last.kernel_oom_kill.unwrap() - first.kernel_oom_kill.unwrap(),
        last.kills - first.kills,
        "kernel_oom_kill and kills should move together"
    );
}
