//! A storm: producers in parallel make over a thousand OOM kills in a few seconds. No kill may
//! be lost or doubled, whatever the rate.
use oomcount_integration_test::{
    Daemon, Watch, require_root,
    storm::{Counted, StormGroups},
};

const PRODUCERS: u64 = 4;
const KILLS_EACH: u64 = 250;

#[test]
fn a_storm_of_a_thousand_kills_is_counted_exactly() {
    require_root();
    let daemon = Daemon::start();
    let storm = StormGroups::new("storm", PRODUCERS);
    let watch = Watch::new(Some(&daemon));
    let Counted { delta: d, .. } = storm.run_counted(&watch, KILLS_EACH, "storm");
    assert!(
        d.marked() >= d.kills(),
        "marked {} < kills {}",
        d.marked(),
        d.kills()
    );
}
