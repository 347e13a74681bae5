//! The storm tests' shape: one producer per memory cgroup of its own, all under one parent, and
//! the counts a storm must leave behind: the kernel's (`/proc/vmstat`, the groups' own) and the
//! daemon's kills, all equal to the kills made, at whatever rate the machine gives.
use std::time::Instant;

use crate::{Delta, MemCg, Watch, producer};

/// A parent group of 64 MiB and, under it, one 4 MiB group per producer.
pub struct StormGroups {
    // Kept for its Drop: the children go with it.
    _parent: MemCg,
    pub groups: Vec<MemCg>,
}

/// A storm counted: the kills made, and what changed meanwhile.
pub struct Counted {
    pub kills: u64,
    pub delta: Delta,
}

impl StormGroups {
    pub fn new(label: &str, producers: u64) -> StormGroups {
        let parent = MemCg::new(label, 64 << 20);
        let groups = (0..producers)
            .map(|i| parent.child(&format!("p{i}"), Some(4 << 20)))
            .collect();
        StormGroups {
            _parent: parent,
            groups,
        }
    }

    /// The groups' paths, as events name them.
    pub fn paths(&self) -> Vec<String> {
        self.groups.iter().map(MemCg::path).collect()
    }

    /// Makes `kills_each` kills in every group at once, waits until the daemon behind `watch`
    /// has counted them, prints the counts, and checks each against the kills made.
    pub fn run_counted(&self, watch: &Watch, kills_each: u64, name: &str) -> Counted {
        let started = Instant::now();
        let kills = producer::storm(&self.groups, kills_each);
        let took = started.elapsed();
        let delta = watch.settle("the daemon to count the storm", |d| d.kills() >= kills);
        let memcg: u64 = self.groups.iter().map(MemCg::oom_kills).sum();
        println!(
            "{} ({:.0} kills/s)",
            delta.summary(name, Some(memcg)),
            kills as f64 / took.as_secs_f64()
        );
        assert_eq!(kills, self.groups.len() as u64 * kills_each);
        assert_eq!(
            (delta.vmstat, memcg),
            (kills, kills),
            "the kernel's counts (another OOM on this machine?)"
        );
        assert_eq!(
            delta.kills(),
            delta.vmstat,
            "the daemon's kills against /proc/vmstat"
        );
        Counted { kills, delta }
    }
}
