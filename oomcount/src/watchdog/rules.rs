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

use serde::{Deserializer, de};

use crate::probe::event::Constraint;

/// Kills remembered at most: the window's worth, bounded for a storm (`max_kills` stays below).
pub(crate) const MAX_REMEMBERED: usize = 4096;

/// Which kills the `max_kills` rule counts: those of one [`Constraint`], or `any`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Kills of this constraint.
    Only(Constraint),
    /// Every kill.
    Any,
}

impl Scope {
    /// Whether a kill with this constraint (`None`: unknown) counts. A kill whose constraint
    /// could not be read (a `memory.oom.group` member, a lost event) counts only for `any`.
    pub(crate) fn counts(self, constraint: Option<Constraint>) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(only) => constraint == Some(only),
        }
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["global", "memcg", "cpuset", "mempolicy", "any"];
        let name = String::deserialize(deserializer)?;
        if name == "any" {
            return Ok(Scope::Any);
        }
        Constraint::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .map(Scope::Only)
            .ok_or_else(|| de::Error::unknown_variant(&name, NAMES))
    }
}

impl fmt::Display for Scope {
    /// As an adjective before "OOM kills".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Only(constraint) => write!(f, "{constraint} "),
            Scope::Any => Ok(()),
        }
    }
}

/// `[rules]`: when OOM activity stops being recoverable.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// `max_kills`, default 3: more kills than this within `window` is unrecoverable.
    pub max_kills: u32,
    /// `window`, default 5 min.
    #[serde(deserialize_with = "crate::units::duration")]
    pub window: Duration,
    /// `constraint`, default `global`: which kills `max_kills` counts.
    pub constraint: Scope,
    /// `critical`, default none: one kill of a process matching one of these is unrecoverable:
    /// a name (`comm`), `cgroup:/PATH` or `unit:NAME.service` ([`crate::watchdog::rules::Critical`]).
    pub critical: Vec<String>,
    /// `critical_top`, default 0 (off): degraded while a critical process is among this many
    /// likely next victims (by `oom_score`).
    pub critical_top: usize,
    /// `quiet`, default 10 min: how long after the last kill or strain things stay degraded.
    #[serde(deserialize_with = "crate::units::duration")]
    pub quiet: Duration,
    /// `mem_available_min`, default 32 MiB: degraded below this MemAvailable; `0` for off.
    #[serde(deserialize_with = "crate::units::bytes")]
    pub mem_available_min: u64,
    /// `psi_full_avg10_max`, default 60.0: degraded above this share of time (%) in which every
    /// task stalled on memory (where /proc/pressure/memory exists); 100 for off.
    pub psi_full_avg10_max: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_kills: 3,
            window: Duration::from_secs(300),
            constraint: Scope::Only(Constraint::Global),
            critical: Vec::new(),
            critical_top: 0,
            quiet: Duration::from_secs(600),
            mem_available_min: 32 << 20,
            psi_full_avg10_max: 60.0,
        }
    }
}

/// One OOM kill as the rules see it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Kill {
    /// When the kernel marked the victim (CLOCK_MONOTONIC).
    pub at: Duration,
    pub pid: u32,
    /// `None` where the event was lost (the count stays exact; the name is unknown).
    pub comm: Option<String>,
    /// `None` where unknown.
    pub constraint: Option<Constraint>,
    /// The victim's memory cgroup path, as the kernel named it; `None` where unknown.
    pub cgroup: Option<String>,
}

/// One entry of `critical`: what makes a victim's kill unrecoverable, and what that trusts.
///
/// - `NAME` or `comm:NAME`: the victim's `comm`. Any process can give itself any comm
///   (`prctl(PR_SET_NAME)`, or the name of the file it runs), so a user who can get a process
///   OOM-killed (in a memory cgroup delegated to them, say) can make this rule fire.
/// - `cgroup:/PATH`: the victim's memory cgroup is PATH or below it. The kernel gives the path;
///   only who may create cgroups there can match it (for `/system.slice/...`, root).
/// - `unit:NAME.service` (or `.scope`): a system unit, i.e. `cgroup:/system.slice/NAME.service`.
///   A unit of the same name under a user's slice does not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Critical {
    Comm(String),
    Cgroup(String),
}

impl Critical {
    /// Parses one `critical` entry, or says what is wrong with it.
    pub(crate) fn parse(entry: &str) -> Result<Critical, String> {
        if let Some(path) = entry.strip_prefix("cgroup:") {
            let path = path.trim_end_matches('/');
            if !path.starts_with('/') || path.contains("//") || path.contains('\0') {
                return Err(format!(
                    "{entry:?}: a cgroup is an absolute path, such as cgroup:/system.slice/xenstored.service"
                ));
            }
            return Ok(Critical::Cgroup(path.to_owned()));
        }
        if let Some(unit) = entry.strip_prefix("unit:") {
            let valid = !unit.is_empty()
                && !unit.contains('/')
                && (unit.ends_with(".service") || unit.ends_with(".scope"));
            if !valid {
                return Err(format!(
                    "{entry:?}: a unit is a name such as unit:xenstored.service (.service or .scope)"
                ));
            }
            return Ok(Critical::Cgroup(format!("/system.slice/{unit}")));
        }
        let comm = entry.strip_prefix("comm:").unwrap_or(entry);
        if comm.is_empty() || comm.len() > 15 || comm.contains('\0') {
            return Err(format!(
                "{comm:?} is not a process name: 1 to 15 bytes, as in /proc/PID/comm (longer names are cut there); or use cgroup:/PATH or unit:NAME.service"
            ));
        }
        Ok(Critical::Comm(comm.to_owned()))
    }

    /// Whether a victim with this comm and memory cgroup matches.
    pub(crate) fn matches(&self, comm: Option<&str>, cgroup: Option<&str>) -> bool {
        match self {
            Critical::Comm(name) => comm == Some(name.as_str()),
            Critical::Cgroup(path) => cgroup.is_some_and(|cgroup| {
                cgroup
                    .strip_prefix(path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
        }
    }
}

/// Kills the kernel counted whose events never reached the daemon, split by the kernel's own
/// reading of their constraint (its `oom_control`): the rules weigh them as they would the
/// events, so that lost events never make the verdict fail open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unseen {
    pub memcg: u64,
    /// Not a memory cgroup's limit: the whole machine, or (rarely) a cpuset or memory policy,
    /// which the kernel-side split does not tell apart; weighed as `global`.
    pub global: u64,
    /// Constraint unknown (no `oom_control` found, or older programs without the split).
    pub unknown: u64,
}

impl Unseen {
    /// The growth between two readings of a (total, memcg, global) triple of kernel counters:
    /// the lost kill events and their split, or where no event arrives at all (the ring buffer
    /// failed), the kills and theirs. The split never claims more than the total grew.
    pub(crate) fn between(before: [u64; 3], after: [u64; 3]) -> Unseen {
        let grew = |i: usize| after[i].saturating_sub(before[i]);
        let total = grew(0);
        let memcg = grew(1).min(total);
        let global = grew(2).min(total - memcg);
        Unseen {
            memcg,
            global,
            unknown: total - memcg - global,
        }
    }

    /// One [`Kill`] each, at `at`, without a name or pid.
    pub(crate) fn kills(self, at: Duration) -> impl Iterator<Item = Kill> {
        let kill = move |constraint: Option<Constraint>| Kill {
            at,
            pid: 0,
            comm: None,
            constraint,
            cgroup: None,
        };
        std::iter::repeat_n(kill(Some(Constraint::Memcg)), self.memcg as usize)
            .chain(std::iter::repeat_n(
                kill(Some(Constraint::Global)),
                self.global as usize,
            ))
            .chain(std::iter::repeat_n(kill(None), self.unknown as usize))
    }
}

/// Memory as sampled at one keepalive; `None` where the kernel does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Pressure {
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
    pub const ALL: [Health; 3] = [Health::Healthy, Health::Degraded, Health::Unrecoverable];

    /// Its name, as `oomcount check`, the JSON, the metrics' label and xenstore say it.
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unrecoverable => "unrecoverable",
        }
    }

    /// Whether the watchdog should still be kept alive.
    pub fn recoverable(self) -> bool {
        self != Health::Unrecoverable
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Verdict {
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
pub(crate) struct Monitor {
    rules: Rules,
    /// `rules.critical`, parsed (the config was validated: an entry that does not parse is
    /// left out).
    critical: Vec<Critical>,
    kills: VecDeque<Kill>,
    /// When memory was last strained, and how.
    strain: Option<(Duration, String)>,
    latched: Option<Verdict>,
    /// A fault that leaves the rules blind in part (the event ring buffer failed): never
    /// healthy while it lasts.
    fault: Option<String>,
}

impl Monitor {
    pub(crate) fn new(rules: Rules) -> Self {
        let critical = rules
            .critical
            .iter()
            .filter_map(|entry| Critical::parse(entry).ok())
            .collect();
        Self {
            rules,
            critical,
            kills: VecDeque::new(),
            strain: None,
            latched: None,
            fault: None,
        }
    }

    /// States a fault: the verdict is at least degraded, with `reason`, from now on.
    pub(crate) fn fault(&mut self, reason: String) {
        self.fault = Some(reason);
    }

    pub(crate) fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Records a kill; the next [`Monitor::judge`] weighs it.
    pub(crate) fn kill(&mut self, kill: Kill) {
        if self.kills.len() == MAX_REMEMBERED {
            // Room is made at the expense of the kills the rules do not count, oldest first, so
            // that a burst of them never pushes a counted kill out of the window.
            let evict = self
                .kills
                .iter()
                .position(|k| !self.counted(k))
                .unwrap_or(0);
            self.kills.remove(evict);
        }
        // Kills arrive in order but for the per-CPU ring buffer's rare reordering: keep sorted.
        let at = self.kills.partition_point(|k| k.at <= kill.at);
        self.kills.insert(at, kill);
    }

    /// Whether a kill counts toward the rules: the configured constraint, or a critical name.
    fn counted(&self, kill: &Kill) -> bool {
        self.rules.constraint.counts(kill.constraint) || self.critical(kill)
    }

    fn critical(&self, kill: &Kill) -> bool {
        self.critical
            .iter()
            .any(|c| c.matches(kill.comm.as_deref(), kill.cgroup.as_deref()))
    }

    /// The verdict at `now` (CLOCK_MONOTONIC), given memory now and the likely next victims'
    /// names, most likely first.
    pub(crate) fn judge(
        &mut self,
        now: Duration,
        pressure: Pressure,
        likely: &[String],
    ) -> Verdict {
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
                "critical process {} (pid {}{}) was OOM-killed {} ago",
                kill.comm.as_deref().unwrap_or("?"),
                kill.pid,
                kill.cgroup
                    .as_deref()
                    .map(|c| format!(", cgroup {c}"))
                    .unwrap_or_default(),
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
        if let Some(fault) = &self.fault {
            return Verdict::degraded(fault.clone());
        }
        if let Some((rank, name)) = likely
            .iter()
            .take(self.rules.critical_top)
            .enumerate()
            .find(|(_, name)| {
                self.critical
                    .iter()
                    .any(|c| matches!(c, Critical::Comm(comm) if comm == *name))
            })
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
    pub(crate) fn latch(&mut self, reason: String) -> Verdict {
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

    const S: Duration = Duration::from_secs(1);

    fn rules() -> Rules {
        Rules {
            max_kills: 3,
            window: 300 * S,
            constraint: Scope::Only(Constraint::Global),
            critical: vec!["xenstored".to_owned()],
            critical_top: 3,
            quiet: 600 * S,
            mem_available_min: 32 << 20,
            psi_full_avg10_max: 60.0,
        }
    }

    fn kill(at_secs: u64, comm: &str, constraint: Option<Constraint>) -> Kill {
        Kill {
            at: Duration::from_secs(at_secs),
            pid: 1000 + at_secs as u32,
            comm: Some(comm.to_owned()),
            constraint,
            cgroup: None,
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
        kill(at, "hog", Some(Constraint::Global))
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
                    .map(|i| kill(9000 + i, "hog", Some(Constraint::Memcg)))
                    .collect(),
                now: 9_010,
                health: Health::Healthy,
                ..row("memcg kills do not count for constraint = global")
            },
            Row {
                rules: Rules {
                    constraint: Scope::Only(Constraint::Memcg),
                    ..rules()
                },
                kills: (0..4)
                    .map(|i| kill(9000 + i, "hog", Some(Constraint::Memcg)))
                    .collect(),
                now: 9_010,
                health: Health::Unrecoverable,
                reason: "4 memcg OOM kills within 5m",
                ..row("memcg kills count for constraint = memcg")
            },
            Row {
                rules: Rules {
                    constraint: Scope::Only(Constraint::Memcg),
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
                    kill(9001, "a", Some(Constraint::Memcg)),
                    kill(9002, "b", None),
                    kill(9003, "c", Some(Constraint::Cpuset)),
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
                kills: vec![kill(9000, "xenstored", Some(Constraint::Memcg))],
                now: 9_001,
                health: Health::Unrecoverable,
                reason: "critical process xenstored (pid 10000) was OOM-killed 1s ago",
                ..row("one critical kill, whatever its constraint")
            },
            Row {
                kills: vec![kill(9000, "xenstored", Some(Constraint::Memcg))],
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
            constraint: Scope::Only(Constraint::Memcg),
            max_kills: u32::MAX,
            ..rules()
        });
        for at in 0..10 * MAX_REMEMBERED as u64 {
            monitor.kill(Kill {
                at: Duration::from_millis(at),
                pid: 1,
                comm: None,
                constraint: Some(Constraint::Global),
                cgroup: None,
            });
        }
        assert_eq!(monitor.kills.len(), MAX_REMEMBERED);
    }

    #[test]
    fn unseen_kills_take_the_kernels_split() {
        // (before, after, expected): totals, memcg and global grow independently; the split
        // never claims more than the total grew, and what it does not explain is unknown.
        let rows = [
            ([0, 0, 0], [0, 0, 0], (0, 0, 0)),
            ([5, 2, 3], [9, 3, 5], (1, 2, 1)),
            ([0, 0, 0], [4, 0, 4], (0, 4, 0)),
            ([0, 0, 0], [4, 4, 0], (4, 0, 0)),
            // Programs without the split (adopted older pins): all unknown.
            ([7, 0, 0], [10, 0, 0], (0, 0, 3)),
            // A split counter ahead of the total (read between two bumps): capped.
            ([0, 0, 0], [1, 2, 2], (1, 0, 0)),
            // Counters that went back (pins replaced): nothing, never a wrap.
            ([9, 9, 9], [1, 1, 1], (0, 0, 0)),
        ];
        for (before, after, (memcg, global, unknown)) in rows {
            let unseen = Unseen::between(before, after);
            assert_eq!(
                unseen,
                Unseen {
                    memcg,
                    global,
                    unknown
                },
                "{before:?} -> {after:?}"
            );
            let kills: Vec<Kill> = unseen.kills(Duration::from_secs(1)).collect();
            assert_eq!(kills.len() as u64, memcg + global + unknown);
            let with =
                |c: Option<Constraint>| kills.iter().filter(|k| k.constraint == c).count() as u64;
            assert_eq!(with(Some(Constraint::Memcg)), memcg);
            assert_eq!(with(Some(Constraint::Global)), global);
            assert_eq!(with(None), unknown);
        }
    }

    #[test]
    fn global_kills_whose_events_were_all_lost_trip_max_kills() {
        // max_kills = 3, constraint = global: four lost global kills, known only as counts.
        let mut monitor = Monitor::new(rules());
        for kill in Unseen::between([0, 0, 0], [4, 0, 4]).kills(Duration::from_secs(100)) {
            monitor.kill(kill);
        }
        let verdict = monitor.judge(Duration::from_secs(101), calm(), &[]);
        assert_eq!(verdict.health, Health::Unrecoverable, "{verdict:?}");
        // The same four as memcg kills count nothing toward a global rule.
        let mut monitor = Monitor::new(rules());
        for kill in Unseen::between([0, 0, 0], [4, 4, 0]).kills(Duration::from_secs(100)) {
            monitor.kill(kill);
        }
        let verdict = monitor.judge(Duration::from_secs(101), calm(), &[]);
        assert_ne!(verdict.health, Health::Unrecoverable, "{verdict:?}");
    }

    #[test]
    fn a_fault_is_never_healthy_and_never_hides_worse() {
        let mut monitor = Monitor::new(rules());
        monitor.fault("event ring buffer failed".to_owned());
        let verdict = monitor.judge(Duration::from_secs(10_000), calm(), &[]);
        assert_eq!(verdict.health, Health::Degraded);
        assert!(verdict.reason.contains("ring buffer"), "{verdict:?}");
        for at in 0..4 {
            monitor.kill(kill(9_990 + at, "x", Some(Constraint::Global)));
        }
        let verdict = monitor.judge(Duration::from_secs(10_000), calm(), &[]);
        assert_eq!(verdict.health, Health::Unrecoverable, "{verdict:?}");
    }

    #[test]
    fn critical_entries_parse_and_match() {
        let ok = |e: &str| Critical::parse(e).unwrap();
        assert_eq!(ok("xenstored"), Critical::Comm("xenstored".into()));
        assert_eq!(ok("comm:xenstored"), Critical::Comm("xenstored".into()));
        assert_eq!(
            ok("unit:xenstored.service"),
            Critical::Cgroup("/system.slice/xenstored.service".into())
        );
        assert_eq!(
            ok("cgroup:/machine.slice/"),
            Critical::Cgroup("/machine.slice".into())
        );
        for bad in [
            "",
            "a-name-longer-than-15",
            "cgroup:relative",
            "cgroup:",
            "cgroup:/a//b",
            "unit:",
            "unit:xenstored",
            "unit:a/b.service",
        ] {
            assert!(Critical::parse(bad).is_err(), "{bad:?} parsed");
        }
        let unit = ok("unit:xenstored.service");
        // (comm, cgroup, matches)
        let rows = [
            (
                Some("xenstored"),
                Some("/system.slice/xenstored.service"),
                true,
            ),
            (
                Some("anything"),
                Some("/system.slice/xenstored.service/sub"),
                true,
            ),
            // A user's own unit of that name, a lookalike sibling, a truncated path, no path.
            (
                Some("xenstored"),
                Some("/user.slice/user-1000.slice/user@1000.service/xenstored.service"),
                false,
            ),
            (
                Some("xenstored"),
                Some("/system.slice/xenstored.service2"),
                false,
            ),
            (
                Some("xenstored"),
                Some("/.../system.slice/xenstored.service"),
                false,
            ),
            (Some("xenstored"), None, false),
        ];
        for (comm, cgroup, expected) in rows {
            assert_eq!(unit.matches(comm, cgroup), expected, "{comm:?} {cgroup:?}");
        }
        let comm = ok("xenstored");
        assert!(comm.matches(Some("xenstored"), None));
        assert!(!comm.matches(Some("xenstore"), Some("/system.slice/xenstored.service")));
    }

    #[test]
    fn a_critical_unit_is_judged_by_cgroup_not_by_name() {
        let mut monitor = Monitor::new(Rules {
            critical: vec!["unit:xenstored.service".to_owned()],
            ..rules()
        });
        // A user's process renamed xenstored, killed in the user's own cgroup: memcg, no effect.
        monitor.kill(Kill {
            cgroup: Some("/user.slice/user-1000.slice/session-1.scope".into()),
            ..kill(9_999, "xenstored", Some(Constraint::Memcg))
        });
        let verdict = monitor.judge(Duration::from_secs(10_000), calm(), &[]);
        assert_ne!(verdict.health, Health::Unrecoverable, "{verdict:?}");
        monitor.kill(Kill {
            cgroup: Some("/system.slice/xenstored.service".into()),
            ..kill(9_999, "xenstored", Some(Constraint::Memcg))
        });
        let verdict = monitor.judge(Duration::from_secs(10_000), calm(), &[]);
        assert_eq!(verdict.health, Health::Unrecoverable, "{verdict:?}");
        assert!(
            verdict
                .reason
                .contains("cgroup /system.slice/xenstored.service"),
            "{verdict:?}"
        );
    }

    #[test]
    fn uncounted_kills_never_push_a_counted_one_out() {
        // constraint = global, max_kills = 3: four global kills, then a storm of memcg kills
        // that fills the memory many times over; the four stay and trip the rule.
        let mut monitor = Monitor::new(rules());
        for at in 0..4 {
            monitor.kill(kill(1_000 + at, "g", Some(Constraint::Global)));
        }
        for i in 0..3 * MAX_REMEMBERED as u64 {
            monitor.kill(Kill {
                at: Duration::from_secs(1_010) + Duration::from_micros(i),
                ..kill(0, "m", Some(Constraint::Memcg))
            });
        }
        assert_eq!(monitor.kills.len(), MAX_REMEMBERED);
        let verdict = monitor.judge(Duration::from_secs(1_020), calm(), &[]);
        assert_eq!(verdict.health, Health::Unrecoverable, "{verdict:?}");
    }
}
