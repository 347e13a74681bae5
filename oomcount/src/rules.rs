//! The watchdog's judgement: is the OOM killer's work a recoverable event, or a machine that
//! should be reset?
//!
//! A pure function of observations and [`Rules`]: no clock, no device, no /proc in here. The
//! daemon feeds it each kill as the kernel reports it and samples memory at each keepalive; the
//! pinger, `oomcount check` and systemd's watchdog all act on the same [`Verdict`], and the
//! table tests below drive it through every rule and the edges of its window.
//!
//! - **unrecoverable**: more than `max_kills` kills of the configured constraint within
//!   `window`, or one kill of a `critical` process (within `window`). It is latched: a machine
//!   judged unrecoverable is not judged healthy again by the same daemon, so that a pinger that
//!   stopped does not resume just before the reset.
//! - **degraded**: a counted kill within `quiet`, memory strain (MemAvailable below its minimum
//!   or PSI `full avg10` above its maximum) now or within `quiet`, or a critical process among
//!   the `critical_top` likely next victims. Recoverable: keepalives go on.
//! - **healthy** otherwise.
use std::{collections::VecDeque, fmt, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::Rules;

/// Kills remembered at most: the window's worth, bounded for a storm (`max_kills` stays below).
pub const MAX_REMEMBERED: usize = 4096;

/// One OOM kill as the rules see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Kill {
    /// When the kernel marked the victim (CLOCK_MONOTONIC).
    pub at: Duration,
    pub pid: u32,
    /// `None` where the event was lost (the count stays exact; the name is unknown).
    pub comm: Option<String>,
    /// `global`, `memcg`, `cpuset`, `mempolicy`; `None` where unknown.
    pub constraint: Option<String>,
}

/// Memory as sampled at one keepalive; `None` where the kernel does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    /// MemAvailable, bytes.
    pub mem_available: Option<u64>,
    /// `/proc/pressure/memory` `full avg10`, percent.
    pub psi_full_avg10: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Unrecoverable,
}

impl Health {
    /// Whether the watchdog should still be kept alive.
    pub fn recoverable(self) -> bool {
        self != Health::Unrecoverable
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unrecoverable => "unrecoverable",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub health: Health,
    /// Why, in one line; empty when healthy.
    pub reason: String,
}

impl Verdict {
    fn healthy() -> Self {
        Self {
            health: Health::Healthy,
            reason: String::new(),
        }
    }

    fn degraded(reason: String) -> Self {
        Self {
            health: Health::Degraded,
            reason,
        }
    }
}

/// The rules' memory: recent kills, the last strain, and a latched unrecoverable verdict.
#[derive(Debug)]
pub struct Monitor {
    rules: Rules,
    kills: VecDeque<Kill>,
    /// When memory was last strained, and how.
    strain: Option<(Duration, String)>,
    latched: Option<Verdict>,
}

impl Monitor {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            kills: VecDeque::new(),
            strain: None,
            latched: None,
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Records a kill; the next [`Monitor::judge`] weighs it.
    pub fn kill(&mut self, kill: Kill) {
        if self.kills.len() == MAX_REMEMBERED {
            self.kills.pop_front();
        }
        // Kills arrive in order but for the per-CPU ring buffer's rare reordering: keep sorted.
        let at = self.kills.partition_point(|k| k.at <= kill.at);
        self.kills.insert(at, kill);
    }

    /// Whether a kill counts toward the rules: the configured constraint, or a critical name.
    fn counted(&self, kill: &Kill) -> bool {
        self.rules.constraint.counts(kill.constraint.as_deref()) || self.critical(kill)
    }

    fn critical(&self, kill: &Kill) -> bool {
        kill.comm
            .as_ref()
            .is_some_and(|comm| self.rules.critical.iter().any(|c| c == comm))
    }

    /// The verdict at `now` (CLOCK_MONOTONIC), given memory now and the likely next victims'
    /// names, most likely first.
    pub fn judge(&mut self, now: Duration, pressure: Pressure, likely: &[String]) -> Verdict {
        if let Some(latched) = &self.latched {
            return latched.clone();
        }
        let rules = &self.rules;
        let keep = rules.window.max(rules.quiet);
        while self
            .kills
            .front()
            .is_some_and(|k| now.saturating_sub(k.at) > keep)
        {
            self.kills.pop_front();
        }
        // Within the window: (now - window, now].
        let in_window = |k: &&Kill| now.saturating_sub(k.at) < rules.window;
        if let Some(kill) = self
            .kills
            .iter()
            .filter(in_window)
            .find(|k| self.critical(k))
        {
            return self.latch(format!(
                "critical process {} (pid {}) was OOM-killed {} ago",
                kill.comm.as_deref().unwrap_or("?"),
                kill.pid,
                ago(now, kill.at)
            ));
        }
        let counted = self
            .kills
            .iter()
            .filter(in_window)
            .filter(|k| self.counted(k))
            .count();
        if counted > rules.max_kills as usize {
            return self.latch(format!(
                "{counted} {}OOM kills within {} (more than max_kills = {})",
                rules.constraint,
                humantime::format_duration(rules.window),
                rules.max_kills
            ));
        }

        if let Some(strain) = self.strained(pressure) {
            self.strain = Some((now, strain));
        }
        let within_quiet = |at: Duration| now.saturating_sub(at) < self.rules.quiet;
        if let Some(kill) = self
            .kills
            .iter()
            .rev()
            .find(|k| self.counted(k) && within_quiet(k.at))
        {
            return Verdict::degraded(format!(
                "{}OOM kill of {} (pid {}) {} ago; healthy after {} without one",
                self.rules.constraint,
                kill.comm.as_deref().unwrap_or("?"),
                kill.pid,
                ago(now, kill.at),
                humantime::format_duration(self.rules.quiet)
            ));
        }
        if let Some((at, strain)) = &self.strain
            && within_quiet(*at)
        {
            return Verdict::degraded(if *at == now {
                strain.clone()
            } else {
                format!("{strain} {} ago", ago(now, *at))
            });
        }
        if let Some((rank, name)) = likely
            .iter()
            .take(self.rules.critical_top)
            .enumerate()
            .find(|(_, name)| self.rules.critical.contains(name))
        {
            return Verdict::degraded(format!(
                "critical process {name} is likely OOM victim #{} (critical_top = {})",
                rank + 1,
                self.rules.critical_top
            ));
        }
        Verdict::healthy()
    }

    /// Memory strain now, in words, or `None`.
    fn strained(&self, pressure: Pressure) -> Option<String> {
        let rules = &self.rules;
        if let Some(available) = pressure.mem_available
            && available < rules.mem_available_min
        {
            return Some(format!(
                "MemAvailable {} below mem_available_min {}",
                mib(available),
                mib(rules.mem_available_min)
            ));
        }
        if let Some(full) = pressure.psi_full_avg10
            && full > rules.psi_full_avg10_max
        {
            return Some(format!(
                "memory pressure full avg10 {full:.2}% above psi_full_avg10_max {:.2}%",
                rules.psi_full_avg10_max
            ));
        }
        None
    }

    /// Latches the unrecoverable verdict with `reason`: every later judgement is this one.
    pub fn latch(&mut self, reason: String) -> Verdict {
        let verdict = Verdict {
            health: Health::Unrecoverable,
            reason,
        };
        self.latched = Some(verdict.clone());
        verdict
    }
}

fn ago(now: Duration, at: Duration) -> humantime::FormattedDuration {
    // Whole milliseconds: nanoseconds are noise to an operator.
    let ago = now.saturating_sub(at);
    humantime::format_duration(Duration::from_millis(ago.as_millis() as u64))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scope;

    const S: Duration = Duration::from_secs(1);

    fn rules() -> Rules {
        Rules {
            max_kills: 3,
            window: 300 * S,
            constraint: Scope::Global,
            critical: vec!["xenstored".to_owned()],
            critical_top: 3,
            quiet: 600 * S,
            mem_available_min: 32 << 20,
            psi_full_avg10_max: 60.0,
        }
    }

    fn kill(at_secs: u64, comm: &str, constraint: Option<&str>) -> Kill {
        Kill {
            at: Duration::from_secs(at_secs),
            pid: 1000 + at_secs as u32,
            comm: Some(comm.to_owned()),
            constraint: constraint.map(str::to_owned),
        }
    }

    fn calm() -> Pressure {
        Pressure {
            mem_available: Some(1 << 30),
            psi_full_avg10: Some(0.0),
        }
    }

    /// One row: the rules, the kills, when and with what memory it is judged, the verdict
    /// expected and a word of its reason.
    struct Row {
        name: &'static str,
        rules: Rules,
        kills: Vec<Kill>,
        now: u64,
        pressure: Pressure,
        likely: &'static [&'static str],
        health: Health,
        reason: &'static str,
    }

    fn row(name: &'static str) -> Row {
        Row {
            name,
            rules: rules(),
            kills: Vec::new(),
            now: 10_000,
            pressure: calm(),
            likely: &[],
            health: Health::Healthy,
            reason: "",
        }
    }

    fn global(at: u64) -> Kill {
        kill(at, "hog", Some("global"))
    }

    #[test]
    fn decision_table() {
        let rows = [
            row("nothing happened"),
            Row {
                kills: vec![global(9000), global(9100), global(9200)],
                now: 9_300,
                health: Health::Degraded,
                reason: "global OOM kill of hog (pid 10200) 1m 40s ago",
                ..row("max_kills kills within the window: recoverable")
            },
            Row {
                kills: vec![global(9000), global(9100), global(9200), global(9250)],
                now: 9_299,
                health: Health::Unrecoverable,
                reason: "4 global OOM kills within 5m (more than max_kills = 3)",
                ..row("one more than max_kills within the window")
            },
            Row {
                // The first kill is exactly `window` old: out of (now - window, now].
                kills: vec![global(9000), global(9100), global(9200), global(9250)],
                now: 9_300,
                health: Health::Degraded,
                ..row("the oldest kill just left the window")
            },
            Row {
                kills: vec![global(9001), global(9100), global(9200), global(9250)],
                now: 9_300,
                health: Health::Unrecoverable,
                ..row("the oldest kill one second inside the window")
            },
            Row {
                kills: (0..10)
                    .map(|i| kill(9000 + i, "hog", Some("memcg")))
                    .collect(),
                now: 9_010,
                health: Health::Healthy,
                ..row("memcg kills do not count for constraint = global")
            },
            Row {
                rules: Rules {
                    constraint: Scope::Memcg,
                    ..rules()
                },
                kills: (0..4)
                    .map(|i| kill(9000 + i, "hog", Some("memcg")))
                    .collect(),
                now: 9_010,
                health: Health::Unrecoverable,
                reason: "4 memcg OOM kills within 5m",
                ..row("memcg kills count for constraint = memcg")
            },
            Row {
                rules: Rules {
                    constraint: Scope::Memcg,
                    ..rules()
                },
                kills: (0..4).map(|i| global(9000 + i)).collect(),
                now: 9_010,
                health: Health::Healthy,
                ..row("global kills do not count for constraint = memcg")
            },
            Row {
                rules: Rules {
                    constraint: Scope::Any,
                    ..rules()
                },
                kills: vec![
                    global(9000),
                    kill(9001, "a", Some("memcg")),
                    kill(9002, "b", None),
                    kill(9003, "c", Some("cpuset")),
                ],
                now: 9_010,
                health: Health::Unrecoverable,
                reason: "4 OOM kills within 5m",
                ..row("constraint = any counts every kill, unknown ones too")
            },
            Row {
                kills: vec![
                    global(9000),
                    global(9001),
                    global(9002),
                    kill(9003, "x", None),
                ],
                now: 9_010,
                health: Health::Degraded,
                ..row("a kill of unknown constraint does not count for global")
            },
            Row {
                kills: vec![kill(9000, "xenstored", Some("memcg"))],
                now: 9_001,
                health: Health::Unrecoverable,
                reason: "critical process xenstored (pid 10000) was OOM-killed 1s ago",
                ..row("one critical kill, whatever its constraint")
            },
            Row {
                kills: vec![kill(9000, "xenstored", Some("memcg"))],
                now: 9_300,
                health: Health::Degraded,
                ..row("a critical kill older than the window")
            },
            Row {
                kills: vec![global(9000)],
                now: 9_599,
                health: Health::Degraded,
                reason: "healthy after 10m without one",
                ..row("a kill one second before quiet ends")
            },
            Row {
                kills: vec![global(9000)],
                now: 9_600,
                health: Health::Healthy,
                ..row("quiet has passed since the last kill")
            },
            Row {
                pressure: Pressure {
                    mem_available: Some(31 << 20),
                    psi_full_avg10: Some(0.0),
                },
                health: Health::Degraded,
                reason: "MemAvailable 31.0 MiB below mem_available_min 32.0 MiB",
                ..row("MemAvailable below its minimum")
            },
            Row {
                pressure: Pressure {
                    mem_available: Some(32 << 20),
                    psi_full_avg10: Some(60.0),
                },
                health: Health::Healthy,
                ..row("both memory figures exactly at their limits")
            },
            Row {
                pressure: Pressure {
                    mem_available: Some(1 << 30),
                    psi_full_avg10: Some(60.5),
                },
                health: Health::Degraded,
                reason: "full avg10 60.50% above psi_full_avg10_max 60.00%",
                ..row("PSI full above its maximum")
            },
            Row {
                pressure: Pressure::default(),
                health: Health::Healthy,
                ..row("no meminfo or PSI figures: nothing to judge")
            },
            Row {
                rules: Rules {
                    mem_available_min: 0,
                    psi_full_avg10_max: 100.0,
                    ..rules()
                },
                pressure: Pressure {
                    mem_available: Some(0),
                    psi_full_avg10: Some(100.0),
                },
                health: Health::Healthy,
                ..row("memory rules switched off")
            },
            Row {
                likely: &["postgres", "qemu", "xenstored", "sshd"],
                health: Health::Degraded,
                reason: "critical process xenstored is likely OOM victim #3 (critical_top = 3)",
                ..row("a critical process among the top likely victims")
            },
            Row {
                likely: &["postgres", "qemu", "sshd", "xenstored"],
                health: Health::Healthy,
                ..row("a critical process just below the top")
            },
            Row {
                rules: Rules {
                    critical_top: 0,
                    ..rules()
                },
                likely: &["xenstored"],
                health: Health::Healthy,
                ..row("critical_top = 0 is off")
            },
            Row {
                rules: Rules {
                    max_kills: 0,
                    ..rules()
                },
                kills: vec![global(9000)],
                now: 9_000,
                health: Health::Unrecoverable,
                reason: "1 global OOM kills within 5m (more than max_kills = 0)",
                ..row("max_kills = 0: the first kill")
            },
        ];
        for row in rows {
            let mut monitor = Monitor::new(row.rules);
            for kill in row.kills {
                monitor.kill(kill);
            }
            let likely: Vec<String> = row.likely.iter().map(|s| s.to_string()).collect();
            let verdict = monitor.judge(Duration::from_secs(row.now), row.pressure, &likely);
            assert_eq!(verdict.health, row.health, "{}: {verdict:?}", row.name);
            assert!(
                verdict.reason.contains(row.reason),
                "{}: reason {:?} lacks {:?}",
                row.name,
                verdict.reason,
                row.reason
            );
            assert_eq!(verdict.reason.is_empty(), verdict.health == Health::Healthy);
        }
    }

    #[test]
    fn unrecoverable_is_latched() {
        let mut monitor = Monitor::new(rules());
        monitor.kill(kill(100, "xenstored", None));
        assert_eq!(
            monitor.judge(101 * S, calm(), &[]).health,
            Health::Unrecoverable
        );
        // Long after the window and quiet, the same reason stands.
        let later = monitor.judge(100_000 * S, calm(), &[]);
        assert_eq!(later.health, Health::Unrecoverable);
        assert!(later.reason.contains("xenstored"), "{later:?}");
    }

    #[test]
    fn strain_lasts_for_quiet() {
        let mut monitor = Monitor::new(rules());
        let strained = Pressure {
            mem_available: Some(1 << 20),
            psi_full_avg10: None,
        };
        assert_eq!(
            monitor.judge(1000 * S, strained, &[]).health,
            Health::Degraded
        );
        let after = monitor.judge(1599 * S, calm(), &[]);
        assert_eq!(after.health, Health::Degraded);
        assert!(after.reason.ends_with("9m 59s ago"), "{after:?}");
        assert_eq!(monitor.judge(1600 * S, calm(), &[]).health, Health::Healthy);
    }

    #[test]
    fn kills_arriving_late_are_weighed_by_their_time() {
        let mut monitor = Monitor::new(rules());
        for at in [5, 3, 4, 1] {
            monitor.kill(global(at));
        }
        assert_eq!(
            monitor.judge(6 * S, calm(), &[]).health,
            Health::Unrecoverable
        );
        // Kills outside the window, delivered after a restart, do not trip it.
        let mut monitor = Monitor::new(rules());
        for at in [1, 2, 3, 4] {
            monitor.kill(global(at));
        }
        assert_eq!(monitor.judge(1000 * S, calm(), &[]).health, Health::Healthy);
    }

    #[test]
    fn memory_stays_bounded_in_a_storm() {
        let mut monitor = Monitor::new(Rules {
            constraint: Scope::Memcg,
            max_kills: u32::MAX,
            ..rules()
        });
        for at in 0..10 * MAX_REMEMBERED as u64 {
            monitor.kill(Kill {
                at: Duration::from_millis(at),
                pid: 1,
                comm: None,
                constraint: Some("global".to_owned()),
            });
        }
        assert_eq!(monitor.kills.len(), MAX_REMEMBERED);
    }
}
