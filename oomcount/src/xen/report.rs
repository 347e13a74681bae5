//! What a guest publishes under `data/oomcount/`, both ways: a plain [`Report`] turned into
//! keys and values for the guest, and the values read back into typed [`Field`]s for dom0.
//!
//! The keys are flat (no folders), so the whole report is [`KEYS`]`.len()` nodes plus
//! `data/oomcount` itself: 22 nodes, and at most [`REPORT_BYTES_MAX`] bytes of values, against
//! xenstored's default per-domain quotas of 1000 nodes and 2048 bytes per value (oxenstored's
//! `quota-maxentity`/`quota-maxsize`, C xenstored's `quota-nb-entry-per-domain`/
//! `quota-max-entry-size`). Free text (the reason, comm, cgroup) is cut to a bound on a
//! character boundary before it is written.
//!
//! Everything dom0 reads is written by a guest, so it is untrusted: each value is parsed into
//! its type with a bound on its length, and one that does not parse is [`Field::Invalid`],
//! shown as invalid, never trusted and never a reason to fail.

pub use crate::{probe::event::Constraint, watchdog::rules::Health};

/// The keys under `data/oomcount/`, `seq` last: written last in the transaction, it tells a
/// watcher in dom0 that the others are complete.
pub const KEYS: [&str; 21] = [
    "kills",
    "kills_memcg",
    "kills_global",
    "marked",
    "events_dropped",
    "attached_at",
    "verdict",
    "reason",
    "last_kill_time",
    "last_kill_pid",
    "last_kill_comm",
    "last_kill_constraint",
    "last_kill_cgroup",
    "mem_total_kb",
    "mem_available_kb",
    "swap_total_kb",
    "swap_free_kb",
    "psi_some_avg10",
    "psi_full_avg10",
    "updated_at",
    "seq",
];

/// Bytes at most of the free-text values.
pub const REASON_MAX: usize = 256;
pub const COMM_MAX: usize = 64;
pub const CGROUP_MAX: usize = 512;
/// The most bytes of values a report writes: 17 numbers of at most 20 digits, the enums, and
/// the three free texts at their bounds.
pub const REPORT_BYTES_MAX: usize = 17 * 20 + 13 + 9 + REASON_MAX + COMM_MAX + CGROUP_MAX;

/// The last kill a guest saw.
#[derive(Debug, Clone, PartialEq)]
pub struct LastKill {
    /// Unix seconds.
    pub time: u64,
    pub pid: u32,
    pub comm: String,
    /// `None`: not read exactly (written as `unknown`).
    pub constraint: Option<Constraint>,
    pub cgroup: String,
}

/// The vitals the rules use.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vitals {
    pub mem_total_kb: u64,
    pub mem_available_kb: Option<u64>,
    pub swap_total_kb: u64,
    pub swap_free_kb: u64,
    /// Memory pressure, percent over 10 s (`/proc/pressure/memory`), where the kernel has PSI.
    pub psi_some_avg10: Option<f64>,
    pub psi_full_avg10: Option<f64>,
}

/// Everything a guest publishes: the daemon fills it from its state, nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kills: u64,
    pub kills_memcg: u64,
    pub kills_global: u64,
    pub marked: u64,
    pub events_dropped: u64,
    /// When the probe was attached, unix seconds.
    pub attached_at: u64,
    pub verdict: Health,
    pub reason: String,
    pub last_kill: Option<LastKill>,
    pub vitals: Option<Vitals>,
    /// When this report was made, unix seconds.
    pub updated_at: u64,
}

/// `s` cut to at most `max` bytes on a character boundary, control characters dropped.
fn bounded(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn psi(v: Option<f64>) -> String {
    v.map(|p| format!("{:.2}", p.clamp(0.0, 100.0)))
        .unwrap_or_default()
}

impl Report {
    /// The keys and values to write, in [`KEYS`]' order without `seq` (the writer adds it).
    /// A value that is absent (no kill yet, no PSI) is written empty.
    pub fn to_values(&self) -> Vec<(&'static str, String)> {
        let k = self.last_kill.as_ref();
        let v = self.vitals.clone().unwrap_or_default();
        let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        let has_vitals = self.vitals.is_some();
        let vital = |n: u64| num(has_vitals.then_some(n));
        vec![
            ("kills", self.kills.to_string()),
            ("kills_memcg", self.kills_memcg.to_string()),
            ("kills_global", self.kills_global.to_string()),
            ("marked", self.marked.to_string()),
            ("events_dropped", self.events_dropped.to_string()),
            ("attached_at", self.attached_at.to_string()),
            ("verdict", self.verdict.name().to_owned()),
            ("reason", bounded(&self.reason, REASON_MAX)),
            ("last_kill_time", num(k.map(|k| k.time))),
            ("last_kill_pid", num(k.map(|k| u64::from(k.pid)))),
            (
                "last_kill_comm",
                k.map(|k| bounded(&k.comm, COMM_MAX)).unwrap_or_default(),
            ),
            (
                "last_kill_constraint",
                k.map(|k| constraint_name(k.constraint).to_owned())
                    .unwrap_or_default(),
            ),
            (
                "last_kill_cgroup",
                k.map(|k| bounded(&k.cgroup, CGROUP_MAX))
                    .unwrap_or_default(),
            ),
            ("mem_total_kb", vital(v.mem_total_kb)),
            ("mem_available_kb", num(v.mem_available_kb)),
            ("swap_total_kb", vital(v.swap_total_kb)),
            ("swap_free_kb", vital(v.swap_free_kb)),
            ("psi_some_avg10", psi(v.psi_some_avg10)),
            ("psi_full_avg10", psi(v.psi_full_avg10)),
            ("updated_at", self.updated_at.to_string()),
        ]
    }
}

/// A value read from a guest: absent (no such node, or empty), invalid (why), or its value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<T> {
    Absent,
    Invalid(&'static str),
    Valid(T),
}

impl<T> Field<T> {
    pub fn valid(&self) -> Option<&T> {
        match self {
            Field::Valid(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_invalid(&self) -> bool {
        matches!(self, Field::Invalid(_))
    }
}

/// Parses an unsigned decimal (at most 20 ASCII digits, no sign, no spaces).
pub fn parse_u64(raw: Option<&[u8]>) -> Field<u64> {
    match raw {
        None | Some(b"") => Field::Absent,
        Some(b) if b.len() > 20 || !b.iter().all(u8::is_ascii_digit) => {
            Field::Invalid("not a number")
        }
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Field::Invalid("out of range"), Field::Valid),
    }
}

/// Parses a percentage with at most two decimals, 0 to 100.
pub fn parse_percent(raw: Option<&[u8]>) -> Field<f64> {
    match raw {
        None | Some(b"") => Field::Absent,
        Some(b) if b.len() > 6 || !b.iter().all(|c| c.is_ascii_digit() || *c == b'.') => {
            Field::Invalid("not a percentage")
        }
        Some(b) => match std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        {
            Some(p) if (0.0..=100.0).contains(&p) => Field::Valid(p),
            _ => Field::Invalid("not a percentage"),
        },
    }
}

/// Parses text: UTF-8, at most `max` bytes, no control characters.
pub fn parse_text(raw: Option<&[u8]>, max: usize) -> Field<String> {
    match raw {
        None | Some(b"") => Field::Absent,
        Some(b) if b.len() > max => Field::Invalid("too long"),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) if !s.chars().any(char::is_control) => Field::Valid(s.to_owned()),
            Ok(_) => Field::Invalid("control characters"),
            Err(_) => Field::Invalid("not UTF-8"),
        },
    }
}

/// A kill's constraint as written to the store: its name, or `unknown`.
pub fn constraint_name(constraint: Option<Constraint>) -> &'static str {
    constraint.map_or("unknown", Constraint::name)
}

fn parse_constraint(s: &str) -> Option<Option<Constraint>> {
    std::iter::once(None)
        .chain(Constraint::ALL.map(Some))
        .find(|c| constraint_name(*c) == s)
}

fn parse_health(s: &str) -> Option<Health> {
    Health::ALL.into_iter().find(|h| h.name() == s)
}

fn parse_enum<T>(raw: Option<&[u8]>, parse: fn(&str) -> Option<T>) -> Field<T> {
    match parse_text(raw, 16) {
        Field::Valid(s) => parse(&s).map_or(Field::Invalid("unknown value"), Field::Valid),
        Field::Absent => Field::Absent,
        Field::Invalid(why) => Field::Invalid(why),
    }
}

/// A guest's `data/oomcount/` as dom0 reads it: every field typed, none trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub kills: Field<u64>,
    pub kills_memcg: Field<u64>,
    pub kills_global: Field<u64>,
    pub marked: Field<u64>,
    pub events_dropped: Field<u64>,
    pub attached_at: Field<u64>,
    pub verdict: Field<Health>,
    pub reason: Field<String>,
    pub last_kill_time: Field<u64>,
    pub last_kill_pid: Field<u64>,
    pub last_kill_comm: Field<String>,
    pub last_kill_constraint: Field<Option<Constraint>>,
    pub last_kill_cgroup: Field<String>,
    pub mem_total_kb: Field<u64>,
    pub mem_available_kb: Field<u64>,
    pub swap_total_kb: Field<u64>,
    pub swap_free_kb: Field<u64>,
    pub psi_some_avg10: Field<f64>,
    pub psi_full_avg10: Field<f64>,
    pub updated_at: Field<u64>,
    pub seq: Field<u64>,
}

impl Published {
    /// Parses the raw values, `get(key)` giving each key's bytes (`None` where absent).
    pub fn parse<'a>(mut get: impl FnMut(&str) -> Option<&'a [u8]>) -> Published {
        Published {
            kills: parse_u64(get("kills")),
            kills_memcg: parse_u64(get("kills_memcg")),
            kills_global: parse_u64(get("kills_global")),
            marked: parse_u64(get("marked")),
            events_dropped: parse_u64(get("events_dropped")),
            attached_at: parse_u64(get("attached_at")),
            verdict: parse_enum(get("verdict"), parse_health),
            reason: parse_text(get("reason"), REASON_MAX),
            last_kill_time: parse_u64(get("last_kill_time")),
            last_kill_pid: parse_u64(get("last_kill_pid")),
            last_kill_comm: parse_text(get("last_kill_comm"), COMM_MAX),
            last_kill_constraint: parse_enum(get("last_kill_constraint"), parse_constraint),
            last_kill_cgroup: parse_text(get("last_kill_cgroup"), CGROUP_MAX),
            mem_total_kb: parse_u64(get("mem_total_kb")),
            mem_available_kb: parse_u64(get("mem_available_kb")),
            swap_total_kb: parse_u64(get("swap_total_kb")),
            swap_free_kb: parse_u64(get("swap_free_kb")),
            psi_some_avg10: parse_percent(get("psi_some_avg10")),
            psi_full_avg10: parse_percent(get("psi_full_avg10")),
            updated_at: parse_u64(get("updated_at")),
            seq: parse_u64(get("seq")),
        }
    }

    /// The keys whose values did not parse, in [`KEYS`]' order.
    pub fn invalid_keys(&self) -> Vec<&'static str> {
        let flags = [
            self.kills.is_invalid(),
            self.kills_memcg.is_invalid(),
            self.kills_global.is_invalid(),
            self.marked.is_invalid(),
            self.events_dropped.is_invalid(),
            self.attached_at.is_invalid(),
            self.verdict.is_invalid(),
            self.reason.is_invalid(),
            self.last_kill_time.is_invalid(),
            self.last_kill_pid.is_invalid(),
            self.last_kill_comm.is_invalid(),
            self.last_kill_constraint.is_invalid(),
            self.last_kill_cgroup.is_invalid(),
            self.mem_total_kb.is_invalid(),
            self.mem_available_kb.is_invalid(),
            self.swap_total_kb.is_invalid(),
            self.swap_free_kb.is_invalid(),
            self.psi_some_avg10.is_invalid(),
            self.psi_full_avg10.is_invalid(),
            self.updated_at.is_invalid(),
            self.seq.is_invalid(),
        ];
        KEYS.iter()
            .zip(flags)
            .filter(|(_, bad)| *bad)
            .map(|(k, _)| *k)
            .collect()
    }

    /// What a guest's own report reads as: for dom0's own row, from the local daemon.
    pub fn from_report(r: &Report, seq: u64) -> Published {
        let values = r.to_values();
        let seq = seq.to_string();
        Published::parse(|key| {
            if key == "seq" {
                return Some(seq.as_bytes());
            }
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_bytes())
        })
    }
}

/// Fuzz entry: parses `bytes` as every key's value at once (split at NULs, one piece per key).
#[doc(hidden)]
pub fn fuzz_values(bytes: &[u8]) -> usize {
    let pieces: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
    let p = Published::parse(|key| {
        let i = KEYS.iter().position(|k| *k == key)?;
        pieces.get(i).copied()
    });
    p.invalid_keys().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            kills: 3,
            kills_memcg: 2,
            kills_global: 1,
            marked: 4,
            events_dropped: 0,
            attached_at: 1_700_000_000,
            verdict: Health::Degraded,
            reason: "3 kills in 60 s".into(),
            last_kill: Some(LastKill {
                time: 1_700_000_100,
                pid: 4242,
                comm: "hog".into(),
                constraint: Some(Constraint::Memcg),
                cgroup: "/t".into(),
            }),
            vitals: Some(Vitals {
                mem_total_kb: 1000,
                mem_available_kb: Some(500),
                swap_total_kb: 0,
                swap_free_kb: 0,
                psi_some_avg10: Some(1.5),
                psi_full_avg10: None,
            }),
            updated_at: 1_700_000_200,
        }
    }

    #[test]
    fn report_round_trips() {
        let r = report();
        let p = Published::from_report(&r, 7);
        assert_eq!(p.kills, Field::Valid(3));
        assert_eq!(p.verdict, Field::Valid(Health::Degraded));
        assert_eq!(p.last_kill_comm, Field::Valid("hog".into()));
        assert_eq!(
            p.last_kill_constraint,
            Field::Valid(Some(Constraint::Memcg))
        );
        assert_eq!(p.psi_some_avg10, Field::Valid(1.5));
        assert_eq!(p.psi_full_avg10, Field::Absent);
        assert_eq!(p.seq, Field::Valid(7));
        assert!(p.invalid_keys().is_empty());
        assert_eq!(r.to_values().len() + 1, KEYS.len());
        for ((k, _), key) in r.to_values().iter().zip(KEYS) {
            assert_eq!(*k, key);
        }
    }

    #[test]
    fn a_report_stays_within_its_bounds() {
        let mut r = report();
        r.reason = "é".repeat(1000);
        r.last_kill.as_mut().unwrap().cgroup = "x\n".repeat(1000);
        r.kills = u64::MAX;
        let total: usize = r.to_values().iter().map(|(_, v)| v.len()).sum();
        assert!(total + 20 <= REPORT_BYTES_MAX, "{total}");
        let values = r.to_values();
        let reason = &values.iter().find(|(k, _)| *k == "reason").unwrap().1;
        assert_eq!(reason.len(), REASON_MAX);
        const { assert!(REPORT_BYTES_MAX < 2048) };
    }

    #[test]
    fn garbage_is_invalid_never_trusted() {
        let junk: &[u8] = b"\xff\xfe12\x1b[2J";
        let p = Published::parse(|_| Some(junk));
        assert_eq!(p.invalid_keys().len(), KEYS.len());
        assert_eq!(parse_u64(Some(b"-1")), Field::Invalid("not a number"));
        assert_eq!(
            parse_u64(Some(b"99999999999999999999")),
            Field::Invalid("out of range")
        );
        assert_eq!(
            parse_u64(Some(b"18446744073709551615")),
            Field::Valid(u64::MAX)
        );
        assert_eq!(
            parse_u64(Some(&[b'1'; 4096])),
            Field::Invalid("not a number")
        );
        assert_eq!(
            parse_percent(Some(b"100.01")),
            Field::Invalid("not a percentage")
        );
        assert_eq!(
            parse_percent(Some(b"1..2")),
            Field::Invalid("not a percentage")
        );
        assert_eq!(
            parse_text(Some(&[b'a'; 65]), COMM_MAX),
            Field::Invalid("too long")
        );
        assert_eq!(
            parse_enum(Some(b"HEALTHY"), parse_health),
            Field::Invalid("unknown value")
        );
        assert_eq!(Published::parse(|_| None).invalid_keys().len(), 0);
        assert_eq!(fuzz_values(b"1\0x\0"), 1);
    }
}
