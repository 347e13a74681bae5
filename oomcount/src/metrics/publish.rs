//! The daemon's side of the metrics: the `[metrics]` settings, and what the daemon keeps for
//! them between events (the per-key tables, the last kill, the kills by constraint the kernel's
//! counters do not split).
//!
//! The per-key tables are kept whether or not Prometheus gets them (`by_cgroup`, `by_comm`):
//! they are small and bounded (at most `max_series` rows each), and `oomcount top` reads them.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use super::{Constraints, Snapshot, Tally, table::Kill};
use crate::{
    probe::{counters::Counters, event::Constraint},
    watchdog::rules::Health,
};

/// The most rows a table may be given: each costs Prometheus a series on every machine.
pub const MAX_SERIES: usize = 1000;
/// The deepest cut of a cgroup path: the kernel's record holds 8 levels.
pub const MAX_DEPTH: usize = oomcount_common::CGROUP_DEPTH;

/// `[metrics]`: the Prometheus outputs, each off unless set.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `textfile`: a `*.prom` file for node_exporter's textfile collector, rewritten after each
    /// batch of events and each change of verdict, removed when the daemon stops.
    pub textfile: Option<PathBuf>,
    /// `listen`: `IP:PORT` (or an IP alone, port [`super::DEFAULT_PORT`]) where `GET /metrics`
    /// is served.
    pub listen: Option<String>,
    /// `by_cgroup`: publish `oomcount_cgroup_oom_kills_total{cgroup}`, default false.
    pub by_cgroup: bool,
    /// `by_comm`: publish `oomcount_comm_oom_kills_total{comm}`, default false.
    pub by_comm: bool,
    /// `max_series`: rows of their own per table (besides `_other`), default 64.
    pub max_series: usize,
    /// `cgroup_depth`: the levels of a cgroup path kept, default 3 (`/kubepods/burstable/pod…`,
    /// `/system.slice/foo.service`).
    pub cgroup_depth: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            textfile: None,
            listen: None,
            by_cgroup: false,
            by_comm: false,
            max_series: super::table::DEFAULT_CAPACITY,
            cgroup_depth: 3,
        }
    }
}

impl Settings {
    /// `listen` as an address: `IP:PORT`, `[IPv6]:PORT`, or an IP alone with the default port.
    /// No host names: the daemon resolves nothing at start.
    pub fn listen_addr(&self) -> Option<Result<SocketAddr, String>> {
        let listen = self.listen.as_deref()?;
        Some(parse_listen(listen))
    }
}

fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!(
                "{listen:?}: port 0 is no port to scrape; write it like \"127.0.0.1:{}\"",
                super::DEFAULT_PORT
            ));
        }
        return Ok(addr);
    }
    if let Ok(ip) = listen
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, super::DEFAULT_PORT));
    }
    Err(format!(
        "{listen:?} is not an address: write an IP address and a port, like \"127.0.0.1:{}\" (no host names)",
        super::DEFAULT_PORT
    ))
}

/// What the daemon keeps for the metrics.
#[derive(Debug)]
pub struct Publisher {
    settings: Settings,
    cgroups: Tally,
    comms: Tally,
    last_kill: Option<SystemTime>,
    /// Kills with these constraints among the events received: the kernel's counters split
    /// kills only as memcg and other.
    cpuset: u64,
    mempolicy: u64,
    /// The verdict last published, to rewrite the textfile when it changes.
    published: Option<Health>,
    /// dom0's snapshot of every Xen guest, where the daemon follows them.
    guests: Option<crate::xen::dom0::Snapshot>,
}

/// A row of `oomcount top`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopRow {
    /// The cgroup (cut to the configured depth) or the command name; `_other` for the rest.
    pub key: String,
    pub kills: u64,
    /// When the last of them happened (RFC 3339, UTC).
    pub last_kill: String,
    /// The last victim.
    pub last_pid: u32,
    pub last_comm: String,
}

/// What `oomcount top` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    #[default]
    Cgroup,
    Comm,
}

/// The daemon's answer to a top request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopReply {
    pub by: By,
    /// Rows of their own the table keeps at most (besides `_other`).
    pub max_rows: usize,
    /// The levels of a cgroup path kept (for `by: cgroup`).
    pub cgroup_depth: usize,
    /// Most kills first.
    pub rows: Vec<TopRow>,
}

/// What the exposition needs from the daemon besides what the publisher keeps.
#[derive(Clone, Copy, Debug)]
pub struct Readings<'a> {
    pub counters: &'a Counters,
    pub attached_at: SystemTime,
    pub kernel_oom_kill: Option<u64>,
    pub health: Option<Health>,
    pub keepalives: Option<u64>,
}

impl Publisher {
    pub fn new(settings: Settings) -> Self {
        Self {
            cgroups: Tally::new(settings.max_series),
            comms: Tally::new(settings.max_series),
            settings,
            last_kill: None,
            cpuset: 0,
            mempolicy: 0,
            published: None,
            guests: None,
        }
    }

    /// Exports the Xen guests of `snapshot` too (`oomcount_guest_*`, dom0 only).
    pub fn set_guests(&mut self, snapshot: crate::xen::dom0::Snapshot) {
        self.guests = Some(snapshot);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether anything is published (a textfile or a port).
    pub fn publishes(&self) -> bool {
        self.settings.textfile.is_some() || self.settings.listen.is_some()
    }

    /// A kill event received: counted in the tables.
    pub fn kill(
        &mut self,
        at: SystemTime,
        pid: u32,
        comm: Option<&str>,
        cgroup: Option<&str>,
        constraint: Option<Constraint>,
    ) {
        let kill = Kill {
            at,
            pid,
            comm: comm.map(str::as_bytes),
        };
        self.comms.count_comm(kill);
        self.cgroups
            .count_cgroup(cgroup.map(str::as_bytes), self.settings.cgroup_depth, kill);
        self.last_kill = Some(self.last_kill.map_or(at, |last| last.max(at)));
        match constraint {
            Some(Constraint::Cpuset) => self.cpuset += 1,
            Some(Constraint::Mempolicy) => self.mempolicy += 1,
            _ => {}
        }
    }

    /// The exposition, text format 0.0.4.
    pub fn render(&self, r: &Readings<'_>) -> String {
        let c = r.counters;
        // The kernel's `kills_global` holds every kill not by a memcg limit; the cpuset and
        // memory-policy ones among them are known from their events (a lost one stays global).
        let cpuset = self.cpuset.min(c.kills_global);
        let mempolicy = self.mempolicy.min(c.kills_global - cpuset);
        let snapshot = Snapshot {
            kills: c.kills,
            by_constraint: Constraints {
                memcg: c.kills_memcg,
                global: c.kills_global - cpuset - mempolicy,
                cpuset,
                mempolicy,
            },
            marked: c.marked,
            events_dropped: c.events_dropped,
            kernel_oom_kill: r.kernel_oom_kill,
            attached_at: r.attached_at,
            last_kill: self.last_kill,
            verdict: r.health,
            keepalives: r.keepalives,
            version: env!("CARGO_PKG_VERSION"),
            cgroups: self.settings.by_cgroup.then_some(&self.cgroups),
            comms: self.settings.by_comm.then_some(&self.comms),
        };
        let mut text = super::render(&snapshot);
        if let Some(guests) = &self.guests {
            let guests = guests.lock().unwrap_or_else(|e| e.into_inner());
            super::render_guests(&mut text, &guests);
        }
        text
    }

    /// Whether `health` differs from the verdict last written to the textfile.
    pub fn verdict_changed(&self, health: Option<Health>) -> bool {
        self.settings.textfile.is_some() && self.published != health
    }

    /// Records that the textfile is being rewritten for the verdict `health`; returns its path,
    /// `None` without a textfile.
    pub fn textfile_published(&mut self, health: Option<Health>) -> Option<&std::path::Path> {
        let path = self.settings.textfile.as_deref()?;
        self.published = health;
        Some(path)
    }

    /// Removes the textfile, when the daemon stops: a stopped daemon's counts must not look
    /// current (the `OomcountAbsent` alert).
    pub fn remove_textfile(&self) {
        if let Some(path) = &self.settings.textfile {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The table for `oomcount top`, most kills first.
    pub fn top(&self, by: By) -> TopReply {
        let tally = match by {
            By::Cgroup => &self.cgroups,
            By::Comm => &self.comms,
        };
        let mut rows: Vec<TopRow> = tally
            .entries()
            .map(|(key, entry)| TopRow {
                key: key.to_owned(),
                kills: entry.kills,
                last_kill: humantime::format_rfc3339_seconds(entry.last_kill).to_string(),
                last_pid: entry.last_pid,
                last_comm: entry.last_comm.clone(),
            })
            .collect();
        rows.sort_by(|a, b| b.kills.cmp(&a.kills).then_with(|| a.key.cmp(&b.key)));
        TopReply {
            by,
            max_rows: tally.capacity(),
            cgroup_depth: self.settings.cgroup_depth,
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::metrics::exposition::tests::{check_structure, promtool_check};

    #[test]
    fn listen_addresses() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:9999"), "127.0.0.1:9999");
        assert_eq!(ok("127.0.0.1"), "127.0.0.1:10066");
        assert_eq!(ok("[::1]:8080"), "[::1]:8080");
        assert_eq!(ok("::1"), "[::1]:10066");
        for bad in [
            "localhost:10066",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            "",
            "1.2.3:4",
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.contains("127.0.0.1:10066"), "{bad}: {err}");
        }
    }

    #[test]
    fn kills_split_by_constraint_and_key() {
        let mut publisher = Publisher::new(Settings {
            by_cgroup: true,
            by_comm: true,
            cgroup_depth: 2,
            ..Settings::default()
        });
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_764_800_000 + s);
        publisher.kill(
            at(1),
            10,
            Some("hog"),
            Some("/a/b/c"),
            Some(Constraint::Memcg),
        );
        publisher.kill(
            at(2),
            11,
            Some("hog"),
            Some("/a/b/d"),
            Some(Constraint::Memcg),
        );
        publisher.kill(at(3), 12, Some("db"), Some("/"), Some(Constraint::Cpuset));
        let counters = Counters {
            kills: 4,
            marked: 5,
            kills_memcg: 2,
            kills_global: 1,
            ..Counters::default()
        };
        let text = publisher.render(&Readings {
            counters: &counters,
            attached_at: at(0),
            kernel_oom_kill: Some(9),
            health: Some(Health::Degraded),
            keepalives: None,
        });
        let series = check_structure(&text);
        let v = |k: &str| series.get(k).map(String::as_str);
        assert_eq!(
            v("oomcount_oom_kills_by_constraint_total{constraint=\"memcg\"}"),
            Some("2")
        );
        assert_eq!(
            v("oomcount_oom_kills_by_constraint_total{constraint=\"cpuset\"}"),
            Some("1")
        );
        assert_eq!(
            v("oomcount_oom_kills_by_constraint_total{constraint=\"global\"}"),
            Some("0")
        );
        assert_eq!(
            v("oomcount_oom_kills_by_constraint_total{constraint=\"unknown\"}"),
            Some("1")
        );
        assert_eq!(
            v("oomcount_cgroup_oom_kills_total{cgroup=\"/a/b\"}"),
            Some("2")
        );
        assert_eq!(v("oomcount_comm_oom_kills_total{comm=\"hog\"}"), Some("2"));
        assert_eq!(
            v("oomcount_last_oom_kill_timestamp_seconds"),
            Some("1764800003.000")
        );
        promtool_check(&text);
        let top = publisher.top(By::Cgroup);
        assert_eq!(top.rows[0].key, "/a/b");
        assert_eq!((top.rows[0].kills, top.rows[0].last_pid), (2, 11));
        assert_eq!(top.rows[1].key, "/");
    }
}
