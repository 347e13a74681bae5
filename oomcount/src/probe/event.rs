//! Victim events as users see them: decoded from the kernel's records, with absent fields absent.
//!
//! The kernel sends one [`oomcount_common::Event`] per mark; this turns it into a
//! [`VictimEvent`] with names, paths and a wall-clock time. A field the kernel could not give
//! exactly on this machine (its flag clear) is `None` here and left out of the JSON: never
//! guessed, never read from /proc after the fact.
use std::{
    fmt,
    time::{Duration, SystemTime},
};

use oomcount_common::{CGROUP_DEPTH, Event, c_str, constraint, flags, kind};
use serde::{Deserialize, Serialize};

use crate::notify::container::{self, Container};

/// What an event is: a kill, or a mark without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A victim killed by the OOM killer.
    Kill,
    /// A mark without a kill: another thread of a victim, or a victim already dying.
    Mark,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Kill => "kill",
            Kind::Mark => "mark",
        })
    }
}

/// The constraint the OOM killer ran under (the kernel's `enum oom_constraint`): which memory
/// ran out. One type for the events, the rules and the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Constraint {
    /// The whole machine (`CONSTRAINT_NONE`).
    Global,
    /// A memory cgroup's limit.
    Memcg,
    /// A cpuset's memory nodes.
    Cpuset,
    /// A memory policy's nodes.
    Mempolicy,
}

impl Constraint {
    pub const ALL: [Constraint; 4] = [
        Constraint::Global,
        Constraint::Memcg,
        Constraint::Cpuset,
        Constraint::Mempolicy,
    ];

    /// The kernel's value; `None` for one this oomcount does not know.
    pub fn from_kernel(value: u16) -> Option<Self> {
        match value {
            constraint::NONE => Some(Constraint::Global),
            constraint::CPUSET => Some(Constraint::Cpuset),
            constraint::MEMORY_POLICY => Some(Constraint::Mempolicy),
            constraint::MEMCG => Some(Constraint::Memcg),
            _ => None,
        }
    }

    /// Its name, as in the JSON and the config.
    pub fn name(self) -> &'static str {
        match self {
            Constraint::Global => "global",
            Constraint::Memcg => "memcg",
            Constraint::Cpuset => "cpuset",
            Constraint::Mempolicy => "mempolicy",
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One victim event, as `watch --json` and `list --json` print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VictimEvent {
    /// `kill` or `mark`.
    pub kind: Kind,
    /// Per-boot sequence number of events, in the order the daemon received them.
    pub seq: u64,
    /// When the kernel marked the victim (RFC 3339, UTC, nanoseconds).
    pub time: String,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tgid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_vm_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub anon_rss_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file_rss_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shmem_rss_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pgtables_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oom_score_adj: Option<i16>,
    /// `memcg`, `global`, `cpuset` or `mempolicy`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub constraint: Option<Constraint>,
    /// The victim's memory cgroup, as a path in the memory controller's hierarchy.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cgroup_id: Option<u64>,
    /// The memory cgroup whose limit was hit (memcg OOMs only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oom_cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oom_cgroup_id: Option<u64>,
    /// The container the victim ran in, as its cgroup path shows it (`unit`, `container_id`,
    /// `pod_uid`, `pod_qos`; each absent when the path does not show it).
    #[serde(flatten)]
    pub container: Container,
    /// The victim was already an OOM victim when it was killed (again): a `memory.oom.group`
    /// kill reaches its first victim twice and the kernel counts both; this event comes from the
    /// signal, without the tracepoint's memory fields.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub again: bool,
    /// The task that invoked the OOM killer (whose allocation failed).
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: String,
    pub cpu: u32,
}

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// Wall-clock time at monotonic zero.
    boot: SystemTime,
}

impl Clock {
    /// Reads both clocks now.
    pub(crate) fn now() -> Self {
        Self {
            boot: SystemTime::now() - monotonic(),
        }
    }

    pub(crate) fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(ktime_ns)
    }
}

/// CLOCK_MONOTONIC, the clock of the kernel's event timestamps (`bpf_ktime_get_ns`).
pub(crate) fn monotonic() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(c_str(bytes)).into_owned()
}

impl VictimEvent {
    /// Decodes a kernel record; `seq` is the daemon's.
    pub(crate) fn decode(event: &Event, seq: u64, clock: &Clock) -> Self {
        let has = |flag: u32| event.flags & flag != 0;
        fn when<T>(event: &Event, flag: u32, value: T) -> Option<T> {
            (event.flags & flag != 0).then_some(value)
        }
        let path = has(flags::CGROUP).then(|| cgroup_path(event, event.cgroup_depth as usize));
        let container = path
            .as_deref()
            .map(container::from_cgroup)
            .unwrap_or_default();
        let oom_cgroup = if has(flags::OOM_CGROUP) {
            let level = event.oom_cgroup_level as usize;
            let depth = event.cgroup_depth as usize;
            (has(flags::CGROUP) && level <= depth).then(|| cgroup_path_above(event, level, depth))
        } else {
            None
        };
        Self {
            kind: if event.kind == kind::KILL {
                Kind::Kill
            } else {
                Kind::Mark
            },
            seq,
            time: humantime::format_rfc3339_nanos(clock.wall(event.ktime_ns)).to_string(),
            pid: event.pid,
            tgid: when(event, flags::TGID, event.tgid),
            comm: has(flags::COMM).then(|| text(&event.comm)),
            uid: when(event, flags::UID, event.uid),
            total_vm_kb: when(event, flags::MEMORY, event.total_vm_kb),
            anon_rss_kb: when(event, flags::MEMORY, event.anon_rss_kb),
            file_rss_kb: when(event, flags::MEMORY, event.file_rss_kb),
            shmem_rss_kb: when(event, flags::MEMORY, event.shmem_rss_kb),
            pgtables_kb: when(event, flags::MEMORY, event.pgtables_kb),
            oom_score_adj: when(event, flags::OOM_SCORE_ADJ, event.oom_score_adj),
            // A value this oomcount does not know is left out, as a field not read exactly.
            constraint: has(flags::CONSTRAINT)
                .then(|| Constraint::from_kernel(event.constraint))
                .flatten(),
            cgroup: path,
            cgroup_id: when(event, flags::CGROUP, event.cgroup_id),
            oom_cgroup,
            oom_cgroup_id: when(event, flags::OOM_CGROUP, event.oom_cgroup_id),
            container,
            again: has(flags::AGAIN),
            trigger_pid: event.trigger_pid,
            trigger_tgid: event.trigger_tgid,
            trigger_comm: text(&event.trigger_comm),
            cpu: event.cpu,
        }
    }

    /// The one line `watch` prints and the daemon logs.
    pub fn line(&self) -> String {
        let mut out = format!("{} {} pid {}", self.time, self.kind, self.pid);
        if let Some(comm) = &self.comm {
            out += &format!(" ({})", printable(comm));
        }
        if let Some(uid) = self.uid {
            out += &format!(" uid {uid}");
        }
        if let Some(rss) = self.anon_rss_kb {
            out += &format!(" anon-rss {rss}kB");
        }
        if let Some(adj) = self.oom_score_adj {
            out += &format!(" oom_score_adj {adj}");
        }
        if let Some(constraint) = &self.constraint {
            out += &format!(" {constraint}");
        }
        if let Some(cgroup) = &self.oom_cgroup {
            out += &format!(" limit {}", printable(cgroup));
        }
        if let Some(cgroup) = &self.cgroup {
            out += &format!(" in {}", printable(cgroup));
        }
        let Container {
            unit,
            container_id,
            pod_uid,
            pod_qos,
        } = &self.container;
        // The unit names the container where there is one (`docker-<id>.scope`): the short id
        // (as `docker ps` shows it) says the rest.
        match (container_id, unit) {
            (Some(id), _) => out += &format!(" container {}", &id[..id.len().min(12)]),
            (None, Some(unit)) => out += &format!(" unit {unit}"),
            (None, None) => {}
        }
        if let Some(pod) = pod_uid {
            out += &format!(" pod {pod}");
            if let Some(qos) = pod_qos {
                out += &format!(" ({qos})");
            }
        }
        if self.again {
            out += " (again)";
        }
        out += &format!(
            " by pid {} ({}) seq {}",
            self.trigger_pid,
            printable(&self.trigger_comm),
            self.seq
        );
        out
    }
}

/// A name anyone chooses (a comm, a cgroup's) for the one-line form: control characters
/// escaped, so that a victim named with a newline or an escape sequence cannot forge a log line
/// or rewrite a terminal. The JSON and the hooks carry the name as it is.
fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(char::is_control) {
        return name.into();
    }
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The names of an event exactly as the kernel had them (any bytes but NUL), for the hooks'
/// environment and the journal: the JSON holds them as lossy UTF-8.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExactNames {
    pub comm: Option<Vec<u8>>,
    pub cgroup: Option<Vec<u8>>,
    pub oom_cgroup: Option<Vec<u8>>,
    pub trigger_comm: Vec<u8>,
}

impl ExactNames {
    /// Parses a kernel record, as [`VictimEvent::decode`] does.
    pub(crate) fn of(record: &[u8]) -> Option<Self> {
        let event = Event::from_bytes(record)?;
        let has = |flag: u32| event.flags & flag != 0;
        let depth = event.cgroup_depth as usize;
        let level = event.oom_cgroup_level as usize;
        Some(Self {
            comm: has(flags::COMM).then(|| c_str(&event.comm).to_vec()),
            cgroup: has(flags::CGROUP).then(|| cgroup_bytes_above(&event, 0, depth)),
            oom_cgroup: (has(flags::OOM_CGROUP) && has(flags::CGROUP) && level <= depth)
                .then(|| cgroup_bytes_above(&event, level, depth)),
            trigger_comm: c_str(&event.trigger_comm).to_vec(),
        })
    }
}

/// The path of the victim's cgroup: levels `0..depth` are leaf first.
fn cgroup_path(event: &Event, depth: usize) -> String {
    cgroup_path_above(event, 0, depth)
}

/// The path of the ancestor `level` levels above the victim's cgroup.
fn cgroup_path_above(event: &Event, level: usize, depth: usize) -> String {
    // Lossy as a whole is lossy name by name: `/` never ends a multi-byte sequence.
    String::from_utf8_lossy(&cgroup_bytes_above(event, level, depth)).into_owned()
}

/// [`cgroup_path_above`], exact bytes.
fn cgroup_bytes_above(event: &Event, level: usize, depth: usize) -> Vec<u8> {
    let depth = depth.min(CGROUP_DEPTH);
    let mut path = Vec::new();
    if event.flags & flags::CGROUP_TRUNCATED != 0 {
        path.extend_from_slice(b"/...");
    }
    for name in event.cgroup[level.min(depth)..depth].iter().rev() {
        path.push(b'/');
        path.extend_from_slice(c_str(name));
    }
    if path.is_empty() {
        path.push(b'/');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(names: &[&str]) -> Event {
        let mut event = Event {
            kind: kind::KILL,
            flags: flags::COMM | flags::CGROUP | flags::CONSTRAINT | flags::OOM_CGROUP,
            ktime_ns: 1_500_000_000,
            pid: 42,
            constraint: constraint::MEMCG,
            cgroup_depth: names.len() as u16,
            oom_cgroup_level: 1,
            cgroup_id: 7,
            oom_cgroup_id: 6,
            trigger_pid: 41,
            ..Event::default()
        };
        event.comm[..3].copy_from_slice(b"hog");
        for (level, name) in names.iter().enumerate() {
            event.cgroup[level][..name.len()].copy_from_slice(name.as_bytes());
        }
        event
    }

    fn clock() -> Clock {
        Clock {
            boot: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn decodes_paths_leaf_first() {
        let decoded = VictimEvent::decode(&event(&["child", "parent", "top"]), 9, &clock());
        assert_eq!(decoded.cgroup.as_deref(), Some("/top/parent/child"));
        assert_eq!(decoded.oom_cgroup.as_deref(), Some("/top/parent"));
        assert_eq!(decoded.constraint, Some(Constraint::Memcg));
        assert_eq!(decoded.kind, Kind::Kill);
        assert_eq!(decoded.time, "1970-01-01T00:00:01.500000000Z");
        assert_eq!(decoded.seq, 9);
    }

    #[test]
    fn absent_fields_are_left_out() {
        let mut bare = event(&[]);
        bare.flags = 0;
        bare.kind = kind::MARK;
        let decoded = VictimEvent::decode(&bare, 1, &clock());
        let json = serde_json::to_string(&decoded).unwrap();
        for absent in ["comm", "uid", "anon_rss_kb", "cgroup", "constraint", "tgid"] {
            assert!(
                !json.contains(&format!("\"{absent}\"")),
                "{absent} in {json}"
            );
        }
        assert!(json.contains(r#""kind":"mark""#), "{json}");
        assert_eq!(serde_json::from_str::<VictimEvent>(&json).unwrap(), decoded);
    }

    #[test]
    fn root_and_truncated_paths() {
        let decoded = VictimEvent::decode(&event(&[]), 1, &clock());
        assert_eq!(decoded.cgroup.as_deref(), Some("/"));
        let mut deep = event(&["leaf"]);
        deep.flags |= flags::CGROUP_TRUNCATED;
        deep.oom_cgroup_level = 0;
        let decoded = VictimEvent::decode(&deep, 1, &clock());
        assert_eq!(decoded.cgroup.as_deref(), Some("/.../leaf"));
    }

    #[test]
    fn line_reads_like_the_kernel_log() {
        let decoded = VictimEvent::decode(&event(&["c"]), 3, &clock());
        assert_eq!(
            decoded.line(),
            "1970-01-01T00:00:01.500000000Z kill pid 42 (hog) memcg limit / in /c by pid 41 () seq 3"
        );
    }

    #[test]
    fn the_cgroup_path_names_the_container() {
        let uid = "74c13223-5a00-11e9-b385-42010a80018d";
        let slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        // Leaf first, as the kernel walks them; the pod's slice cut as the record cuts it.
        let cut = &slice[..slice.len().min(oomcount_common::CGROUP_NAME - 1)];
        let decoded = VictimEvent::decode(
            &event(&["leaf", cut, "kubepods-besteffort.slice", "kubepods.slice"]),
            3,
            &clock(),
        );
        assert_eq!(decoded.container.pod_uid.as_deref(), Some(uid));
        assert_eq!(decoded.container.pod_qos.as_deref(), Some("besteffort"));
        let json = serde_json::to_value(&decoded).unwrap();
        assert_eq!(json["pod_uid"], uid);
        assert_eq!(json["pod_qos"], "besteffort");
        assert!(json.get("container_id").is_none(), "{json}");
        assert!(json.get("unit").is_none(), "{json}");
        assert_eq!(
            serde_json::from_value::<VictimEvent>(json).unwrap(),
            decoded
        );
        assert!(
            decoded
                .line()
                .contains(&format!(" pod {uid} (besteffort) by pid")),
            "{}",
            decoded.line()
        );
        let mut forged = event(&["c"]);
        forged.comm[..5].copy_from_slice(b"a\nb\x1b[");
        let line = VictimEvent::decode(&forged, 3, &clock()).line();
        assert!(line.contains(" (a\\nb\\u{1b}[) "), "{line}");
        let unit = VictimEvent::decode(&event(&["nginx.service", "system.slice"]), 3, &clock());
        assert!(
            unit.line().contains(" unit nginx.service by pid"),
            "{}",
            unit.line()
        );
        let plain = VictimEvent::decode(&event(&["c"]), 3, &clock());
        assert!(plain.container.is_empty());
    }

    #[test]
    fn exact_names_keep_every_byte() {
        let mut raw = event(&["ok", "top"]);
        raw.comm = [0; 16];
        raw.comm[..5].copy_from_slice(b"a\nb\xff\"");
        raw.cgroup[0][..4].copy_from_slice(b"x\xfe\ny");
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw as *const Event).cast::<u8>(), size_of::<Event>())
        };
        let exact = ExactNames::of(bytes).unwrap();
        assert_eq!(exact.comm.as_deref(), Some(&b"a\nb\xff\""[..]));
        assert_eq!(exact.cgroup.as_deref(), Some(&b"/top/x\xfe\ny"[..]));
        assert_eq!(exact.oom_cgroup.as_deref(), Some(&b"/top"[..]));
        let decoded = VictimEvent::decode(&raw, 1, &clock());
        assert_eq!(decoded.comm.as_deref(), Some("a\nb\u{fffd}\""));
        assert_eq!(decoded.cgroup.as_deref(), Some("/top/x\u{fffd}\ny"));
        assert!(ExactNames::of(&bytes[..10]).is_none());
    }
}
