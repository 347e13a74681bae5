//! A storm: producers in parallel make over a thousand OOM kills in a few seconds. No kill may
//! be lost or doubled, whatever the rate.
use std::time::Instant;

use oomcount_integration_test::{Daemon, MemCg, Watch, producer, require_root};

const PRODUCERS: u64 = 4;
const KILLS_EACH: u64 = 250;

#[test]
fn a_storm_of_a_thousand_kills_is_counted_exactly() {
    require_root();
    let daemon = Daemon::start();
    let parent = MemCg::new("storm", 64 << 20);
    let groups: Vec<MemCg> = (0..PRODUCERS)
        .map(|i| parent.child(&format!("p{i}"), Some(4 << 20)))
        .collect();
    let watch = Watch::new(Some(&daemon));
    let started = Instant::now();
    let kills = producer::storm(&groups, KILLS_EACH);
    let took = started.elapsed();
    let d = watch.settle("the daemon to count the storm", |d| d.kills() >= kills);
    let memcg: u64 = groups.iter().map(MemCg::oom_kills).sum();
    println!(
        "{} ({:.0} kills/s)",
        d.summary("storm", Some(memcg)),
        kills as f64 / took.as_secs_f64()
    );
    assert_eq!(kills, PRODUCERS * KILLS_EACH);
    assert_eq!(
        (d.vmstat, memcg),
        (kills, kills),
        "the kernel's counts (another OOM on this machine?)"
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
