//! The daemon's counts as Prometheus text exposition format 0.0.4.
//!
//! Hand-written rather than through a client library: the whole exposition is a dozen families
//! known at compile time, and prometheus-client cost the daemon ~190 kB of resident set where
//! this costs next to nothing (see FACTS.md). The format's rules that a parser does not forgive,
//! and that this module keeps by construction:
//!
//! - each family's `# HELP` and `# TYPE` come once, before its samples, and its samples all
//!   together (a family split by another one is an error for Prometheus, which promtool does not
//!   catch);
//! - no two samples with the same name and labels (not caught by promtool either);
//! - label values escaped (`\\`, `\"`, `\n`) and valid UTF-8, whatever bytes a victim's name
//!   was made of;
//! - a newline at the end.
//!
//! Families with nothing to say are left out whole (no `/proc/vmstat` count before Linux 4.13, no
//! kill yet, no watchdog): a sample that says 0 where the truth is "unknown" would be a lie a
//! PromQL expression could not tell apart.
use std::{
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use super::table::Tally;
use crate::watchdog::rules::Health;

/// Kills by the constraint the OOM killer recorded for them; kills whose record was lost count
/// as `unknown`, the difference to the total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    pub memcg: u64,
    pub global: u64,
    pub cpuset: u64,
    pub mempolicy: u64,
}

/// What the exposition says: plain values the daemon copies out of its state.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Victims killed by the OOM killer since the probe was attached (exact).
    pub kills: u64,
    /// Of them, by constraint; `kills` minus their sum is reported as `unknown`.
    pub by_constraint: Constraints,
    /// `oom/mark_victim` events since attach, kills included.
    pub marked: u64,
    /// Events lost to a full ring buffer.
    pub events_dropped: u64,
    /// `/proc/vmstat` `oom_kill`, the kernel's count since boot; `None` where it cannot be read.
    pub kernel_oom_kill: Option<u64>,
    /// When the probe was attached.
    pub attached_at: SystemTime,
    /// When the last kill this daemon saw happened; `None` before the first.
    pub last_kill: Option<SystemTime>,
    /// The watchdog's verdict; `None` where the daemon judges nothing.
    pub verdict: Option<Health>,
    /// Keepalives sent to the watchdog by this daemon; `None` where nothing is pinged.
    pub keepalives: Option<u64>,
    /// The daemon's version (`oomcount_build_info{version}`).
    pub version: &'a str,
    /// Kills per memory cgroup, where the configuration asks for them.
    pub cgroups: Option<&'a Tally>,
    /// Kills per victim command name, where the configuration asks for them.
    pub comms: Option<&'a Tally>,
}

/// A family's type.
#[derive(Clone, Copy)]
enum Type {
    Counter,
    Gauge,
}

/// Writes the families one at a time: each header once, then its samples.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: Type, help: &str) {
        let kind = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
        };
        let _ = write!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// A sample without labels.
    fn value(&mut self, name: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A sample with one label.
    fn labelled(
        &mut self,
        name: &str,
        label: &str,
        label_value: &str,
        value: impl std::fmt::Display,
    ) {
        self.out.push_str(name);
        self.out.push('{');
        self.out.push_str(label);
        self.out.push_str("=\"");
        escape_into(&mut self.out, label_value);
        let _ = writeln!(self.out, "\"}} {value}");
    }

    /// A sample with labels, each value escaped.
    fn series(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        self.out.push('{');
        for (i, (label, label_value)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(label);
            self.out.push_str("=\"");
            escape_into(&mut self.out, label_value);
            self.out.push('"');
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// A Xen guest as dom0 exports it (`oomcount_guest_*`): what it published, already parsed from
/// untrusted values; `report` is `None` where any of its values did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSample {
    pub domid: u32,
    /// `/local/domain/<id>/name`; empty where absent or invalid. Cut to [`GUEST_NAME_MAX`] bytes
    /// when rendered.
    pub name: String,
    /// Its kill count and verdict, where every value it published parsed.
    pub report: Option<(u64, Health)>,
}

/// The most bytes of a domain's name in a label (Xen's own limit on names is 64).
pub const GUEST_NAME_MAX: usize = 64;

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends the guests' families to `out` (an exposition [`render`] made): one series per domain
/// and family, in the order given (by domid). Nothing where `guests` is empty.
pub fn render_guests(out: &mut String, guests: &[GuestSample]) {
    if guests.is_empty() {
        return;
    }
    let mut w = Writer {
        out: std::mem::take(out),
    };
    let domid = |g: &GuestSample| g.domid.to_string();
    w.family(
        "oomcount_guest_report_valid",
        Type::Gauge,
        "1 where every value the Xen guest published under data/oomcount parsed, 0 where one did not (its counts are then left out).",
    );
    for g in guests {
        let id = domid(g);
        let labels = [("domain", cut(&g.name, GUEST_NAME_MAX)), ("domid", &id)];
        w.series(
            "oomcount_guest_report_valid",
            &labels,
            u8::from(g.report.is_some()),
        );
    }
    if guests.iter().any(|g| g.report.is_some()) {
        w.family(
            "oomcount_guest_oom_kills_total",
            Type::Counter,
            "OOM kills a Xen guest's oomcount published in xenstore, as dom0 read them.",
        );
        for g in guests {
            let Some((kills, _)) = g.report else { continue };
            let id = domid(g);
            let labels = [("domain", cut(&g.name, GUEST_NAME_MAX)), ("domid", &id)];
            w.series("oomcount_guest_oom_kills_total", &labels, kills);
        }
        w.family(
            "oomcount_guest_verdict",
            Type::Gauge,
            "A Xen guest's verdict as it published it: 1 for its current state, 0 for the others.",
        );
        for g in guests {
            let Some((_, verdict)) = g.report else {
                continue;
            };
            let id = domid(g);
            for state in Health::ALL {
                let labels = [
                    ("domain", cut(&g.name, GUEST_NAME_MAX)),
                    ("domid", &id),
                    ("state", state.name()),
                ];
                w.series(
                    "oomcount_guest_verdict",
                    &labels,
                    u8::from(state == verdict),
                );
            }
        }
    }
    *out = w.out;
}

/// Appends `value` escaped as a label value of the text format: backslash, double quote and line
/// feed, the three the format escapes. (It is UTF-8 already: a `str`.)
pub fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Seconds since the epoch with milliseconds, as Prometheus's timestamps in a gauge are written.
struct Seconds(SystemTime);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        write!(f, "{}.{:03}", since.as_secs(), since.subsec_millis())
    }
}

/// The exposition of `snapshot`, text format 0.0.4.
pub fn render(snapshot: &Snapshot<'_>) -> String {
    let mut w = Writer {
        out: String::with_capacity(2048),
    };
    let s = snapshot;

    w.family(
        "oomcount_oom_kills_total",
        Type::Counter,
        "Processes killed by the OOM killer since the probe was attached (exact, from eBPF).",
    );
    w.value("oomcount_oom_kills_total", s.kills);

    let c = s.by_constraint;
    let known = c.memcg + c.global + c.cpuset + c.mempolicy;
    w.family(
        "oomcount_oom_kills_by_constraint_total",
        Type::Counter,
        "OOM kills by the constraint the OOM killer recorded; unknown where the event was lost. They sum to oomcount_oom_kills_total.",
    );
    for (name, value) in [
        ("memcg", c.memcg),
        ("global", c.global),
        ("cpuset", c.cpuset),
        ("mempolicy", c.mempolicy),
        ("unknown", s.kills.saturating_sub(known)),
    ] {
        w.labelled(
            "oomcount_oom_kills_by_constraint_total",
            "constraint",
            name,
            value,
        );
    }

    w.family(
        "oomcount_oom_marks_total",
        Type::Counter,
        "oom/mark_victim events since the probe was attached, kills included.",
    );
    w.value("oomcount_oom_marks_total", s.marked);

    w.family(
        "oomcount_events_dropped_total",
        Type::Counter,
        "Victim events lost to a full ring buffer (the counts stay exact).",
    );
    w.value("oomcount_events_dropped_total", s.events_dropped);

    if let Some(kernel) = s.kernel_oom_kill {
        w.family(
            "oomcount_kernel_oom_kills_total",
            Type::Counter,
            "The kernel's own count of OOM kills since boot (/proc/vmstat oom_kill).",
        );
        w.value("oomcount_kernel_oom_kills_total", kernel);
    }

    w.family(
        "oomcount_attached_timestamp_seconds",
        Type::Gauge,
        "When the probe was attached: the counters count from here.",
    );
    w.value(
        "oomcount_attached_timestamp_seconds",
        Seconds(s.attached_at),
    );

    if let Some(last) = s.last_kill {
        w.family(
            "oomcount_last_oom_kill_timestamp_seconds",
            Type::Gauge,
            "When the last OOM kill the daemon saw happened.",
        );
        w.value("oomcount_last_oom_kill_timestamp_seconds", Seconds(last));
    }

    if let Some(verdict) = s.verdict {
        w.family(
            "oomcount_verdict",
            Type::Gauge,
            "The watchdog's verdict: 1 for the current state, 0 for the others.",
        );
        for state in Health::ALL {
            w.labelled(
                "oomcount_verdict",
                "state",
                state.name(),
                u8::from(state == verdict),
            );
        }
    }

    if let Some(keepalives) = s.keepalives {
        w.family(
            "oomcount_watchdog_keepalives_total",
            Type::Counter,
            "Keepalives this daemon sent to the watchdog.",
        );
        w.value("oomcount_watchdog_keepalives_total", keepalives);
    }

    w.family(
        "oomcount_build_info",
        Type::Gauge,
        "The daemon's version, as a label; always 1.",
    );
    w.labelled("oomcount_build_info", "version", s.version, 1);

    for (tally, name, label, help) in [
        (
            s.cgroups,
            "oomcount_cgroup_oom_kills_total",
            "cgroup",
            "OOM kills by the victim's memory cgroup, cut to the configured depth; _other for cgroups beyond the table's size.",
        ),
        (
            s.comms,
            "oomcount_comm_oom_kills_total",
            "comm",
            "OOM kills by the victim's command name; _other for names beyond the table's size.",
        ),
    ] {
        let Some(tally) = tally else { continue };
        w.family(name, Type::Counter, help);
        for (key, entry) in tally.entries() {
            w.labelled(name, label, key, entry.kills);
        }
    }
    w.out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        collections::HashSet,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;

    pub(crate) fn snapshot<'a>(
        cgroups: Option<&'a Tally>,
        comms: Option<&'a Tally>,
    ) -> Snapshot<'a> {
        Snapshot {
            kills: 7,
            by_constraint: Constraints {
                memcg: 4,
                global: 1,
                cpuset: 0,
                mempolicy: 1,
            },
            marked: 9,
            events_dropped: 2,
            kernel_oom_kill: Some(120),
            attached_at: UNIX_EPOCH + Duration::from_millis(1_764_800_000_250),
            last_kill: Some(UNIX_EPOCH + Duration::from_millis(1_764_800_100_007)),
            verdict: Some(Health::Degraded),
            keepalives: Some(31),
            version: "0.1.0",
            cgroups,
            comms,
        }
    }

    /// The checks promtool does not make: each family's header once and before its samples, its
    /// samples together, no series twice, a final newline. Returns the samples' values by
    /// series.
    pub(crate) fn check_structure(text: &str) -> std::collections::HashMap<String, String> {
        assert!(text.ends_with('\n'), "no final newline:\n{text}");
        let mut closed: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut typed: HashSet<String> = HashSet::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut series = std::collections::HashMap::new();
        let mut open = |family: &str, current: &mut Option<String>| {
            if current.as_deref() != Some(family) {
                if let Some(previous) = current.take() {
                    closed.insert(previous);
                }
                assert!(
                    !closed.contains(family),
                    "family {family} split by another family:\n{text}"
                );
                *current = Some(family.to_owned());
            }
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let family = rest.split(' ').next().unwrap();
                assert!(helped.insert(family.to_owned()), "HELP twice for {family}");
                open(family, &mut current);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let family = rest.split(' ').next().unwrap();
                assert!(typed.insert(family.to_owned()), "TYPE twice for {family}");
                open(family, &mut current);
            } else {
                let name_end = line.find(['{', ' ']).expect("a sample");
                let name = &line[..name_end];
                assert!(typed.contains(name), "sample {name} before its TYPE");
                open(name, &mut current);
                // The series is everything before the value, which follows the last space (a
                // label value's spaces come before its closing brace).
                let (key, value) = line.rsplit_once(' ').unwrap();
                assert!(
                    series.insert(key.to_owned(), value.to_owned()).is_none(),
                    "series {key} twice:\n{text}"
                );
            }
        }
        assert_eq!(typed, helped, "a family without HELP or TYPE");
        series
    }

    /// `promtool check metrics` on `text`: exit 0 and nothing said, or a panic that shows both.
    pub(crate) fn promtool_check(text: &str) {
        use std::{io::Write as _, process::Stdio};
        let mut child = match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(err) => panic!(
                "cannot run promtool ({err}): install it with `cargo xtask setup` (Debian package promtool)"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics: {}\n{said}\non:\n{text}",
            out.status
        );
    }

    #[test]
    fn every_family_once_with_its_values() {
        let text = render(&snapshot(None, None));
        let series = check_structure(&text);
        let value = |key: &str| series.get(key).map(String::as_str);
        assert_eq!(value("oomcount_oom_kills_total"), Some("7"));
        assert_eq!(
            value("oomcount_oom_kills_by_constraint_total{constraint=\"memcg\"}"),
            Some("4")
        );
        assert_eq!(
            value("oomcount_oom_kills_by_constraint_total{constraint=\"unknown\"}"),
            Some("1")
        );
        assert_eq!(value("oomcount_oom_marks_total"), Some("9"));
        assert_eq!(value("oomcount_events_dropped_total"), Some("2"));
        assert_eq!(value("oomcount_kernel_oom_kills_total"), Some("120"));
        assert_eq!(
            value("oomcount_attached_timestamp_seconds"),
            Some("1764800000.250")
        );
        assert_eq!(
            value("oomcount_last_oom_kill_timestamp_seconds"),
            Some("1764800100.007")
        );
        assert_eq!(value("oomcount_verdict{state=\"healthy\"}"), Some("0"));
        assert_eq!(value("oomcount_verdict{state=\"degraded\"}"), Some("1"));
        assert_eq!(
            value("oomcount_verdict{state=\"unrecoverable\"}"),
            Some("0")
        );
        assert_eq!(value("oomcount_watchdog_keepalives_total"), Some("31"));
        assert_eq!(value("oomcount_build_info{version=\"0.1.0\"}"), Some("1"));
        promtool_check(&text);
    }

    #[test]
    fn the_constraints_sum_to_the_kills() {
        let text = render(&snapshot(None, None));
        let series = check_structure(&text);
        let sum: u64 = series
            .iter()
            .filter(|(k, _)| k.starts_with("oomcount_oom_kills_by_constraint_total{"))
            .map(|(_, v)| v.parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, 7);
    }

    #[test]
    fn unknown_leaves_out_whole_families() {
        let mut s = snapshot(None, None);
        s.kernel_oom_kill = None;
        s.last_kill = None;
        s.verdict = None;
        s.keepalives = None;
        let text = render(&s);
        for gone in [
            "oomcount_kernel_oom_kills_total",
            "oomcount_last_oom_kill_timestamp_seconds",
            "oomcount_verdict",
            "oomcount_watchdog_keepalives_total",
        ] {
            assert!(!text.contains(&format!(" {gone} ")), "{gone} in:\n{text}");
        }
        check_structure(&text);
        promtool_check(&text);
    }

    /// What promtool lets through, the structure checks do not.
    #[test]
    fn the_structure_checks_catch_what_promtool_does_not() {
        let header = |name: &str| format!("# HELP {name} x\n# TYPE {name} counter\n");
        let split = format!(
            "{}a_total{{l=\"1\"}} 1\n{}b_total 1\na_total{{l=\"2\"}} 1\n",
            header("a_total"),
            header("b_total")
        );
        let twice = format!(
            "{}a_total{{l=\"1\"}} 1\na_total{{l=\"1\"}} 2\n",
            header("a_total")
        );
        for (what, text) in [("split by another family", &split), ("twice", &twice)] {
            promtool_check(text);
            let caught = std::panic::catch_unwind(|| check_structure(text));
            let said = caught
                .err()
                .and_then(|p| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            assert!(said.contains(what), "not caught ({what}): {said}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, "a\\b\"c\nd\te");
        assert_eq!(out, "a\\\\b\\\"c\\nd\te");
    }

    #[test]
    fn guests_one_series_per_domain_hostile_names_escaped() {
        let mut text = render(&snapshot(None, None));
        let long = "é".repeat(40);
        let guests = [
            GuestSample {
                domid: 3,
                name: "web\"1\\\n} 9\nfake_total 1".into(),
                report: Some((7, Health::Healthy)),
            },
            GuestSample {
                domid: 4,
                name: String::new(),
                report: None,
            },
            GuestSample {
                domid: 5,
                name: long.clone(),
                report: Some((2, Health::Unrecoverable)),
            },
        ];
        render_guests(&mut text, &guests);
        let series = check_structure(&text);
        let v = |k: &str| series.get(k).map(String::as_str);
        let hostile = r#"domain="web\"1\\\n} 9\nfake_total 1",domid="3""#;
        assert_eq!(
            v(&format!("oomcount_guest_oom_kills_total{{{hostile}}}")),
            Some("7")
        );
        assert_eq!(
            v(&format!("oomcount_guest_report_valid{{{hostile}}}")),
            Some("1")
        );
        assert_eq!(
            v(&format!(
                "oomcount_guest_verdict{{{hostile},state=\"healthy\"}}"
            )),
            Some("1")
        );
        assert_eq!(
            v("oomcount_guest_report_valid{domain=\"\",domid=\"4\"}"),
            Some("0")
        );
        assert!(
            !series
                .keys()
                .any(|k| k.contains("domid=\"4\"") && !k.contains("report_valid")),
            "an invalid report has no counts:\n{text}"
        );
        // 64 bytes of a 2-byte character: 32 of them, never half of one.
        let cut_name = "é".repeat(32);
        assert_eq!(
            v(&format!(
                "oomcount_guest_verdict{{domain=\"{cut_name}\",domid=\"5\",state=\"unrecoverable\"}}"
            )),
            Some("1")
        );
        assert!(!text.contains(&long));
        assert_eq!(
            series
                .keys()
                .filter(|k| k.starts_with("oomcount_guest_oom_kills_total"))
                .count(),
            2
        );
        assert!(!series.contains_key("fake_total"));
        promtool_check(&text);
        // No guests: no families.
        let mut none = render(&snapshot(None, None));
        render_guests(&mut none, &[]);
        assert!(!none.contains("oomcount_guest"));
        // Only invalid ones: the valid gauge alone.
        let mut bad = render(&snapshot(None, None));
        render_guests(&mut bad, &guests[1..2]);
        assert!(!bad.contains("oomcount_guest_oom_kills_total"), "{bad}");
        check_structure(&bad);
        promtool_check(&bad);
    }

    #[test]
    fn an_odd_version_string_stays_one_line() {
        let mut s = snapshot(None, None);
        s.version = "1.0\n\"x\\";
        let text = render(&s);
        assert!(text.contains("oomcount_build_info{version=\"1.0\\n\\\"x\\\\\"} 1\n"));
        check_structure(&text);
        promtool_check(&text);
    }
}
