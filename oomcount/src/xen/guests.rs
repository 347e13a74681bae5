//! dom0 mode: every domain's `data/oomcount/`, read from xenstore (`oomcount guests`).
//!
//! Everything here was written by a guest, so it is read as hostile: the domains are the
//! numeric children of `/local/domain` (at most [`DOMAINS_MAX`]), each read is bounded by the
//! protocol (4096 bytes), only the keys of [`KEYS`] are read (whatever else a guest writes is
//! never looked at), and each value is parsed into its type ([`Published`]); one that does not
//! parse is shown as `invalid`. A domain that goes away while it is read is simply absent.
//!
//! `--watch` ([`Watcher`]) follows `@introduceDomain`, `@releaseDomain` and each domain's
//! `data/oomcount/seq` (which a guest writes last in each transaction), never the whole of
//! `/local/domain`: one event per publication, and one re-read of that one domain.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{
    client::{Client, Tx, XsError},
    guest::BASE,
    report::{Field, KEYS, Published, constraint_name, parse_text},
    wire::Errno,
};

/// The most domains listed (Xen's domain ids end at 0x7FF0).
pub const DOMAINS_MAX: usize = 0x7FF0;
const NAME_MAX: usize = 64;

/// One domain as dom0 sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestRow {
    pub domid: u32,
    pub name: Field<String>,
    /// `None`: the domain has no `data/oomcount/` (no oomcount there, or not yet).
    pub published: Option<Published>,
}

fn home(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// The domain ids under `/local/domain`, sorted; names that are not numbers are skipped.
pub fn domains(c: &mut Client) -> Result<Vec<u32>, XsError> {
    let mut ids: Vec<u32> = match c.directory(Tx::NONE, "/local/domain") {
        Ok(names) => names.iter().filter_map(|n| n.parse().ok()).collect(),
        Err(e) if e.errno() == Some(&Errno::NoEnt) => Vec::new(),
        Err(e) => return Err(e),
    };
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(DOMAINS_MAX);
    Ok(ids)
}

fn absent_ok<T>(r: Result<T, XsError>) -> Result<Option<T>, XsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.errno(), Some(Errno::NoEnt | Errno::Acces)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one domain, in one transaction (so that the values and `seq` belong together).
pub fn read_guest(c: &mut Client, domid: u32) -> Result<GuestRow, XsError> {
    let home = home(domid);
    c.transaction(|c, tx| {
        // ENOENT when the domain is gone: the callers drop it.
        c.read(tx, &home)?;
        let name = absent_ok(c.read(tx, &format!("{home}/name")))?;
        let name = parse_text(name.as_deref(), NAME_MAX);
        let base = format!("{home}/{BASE}");
        let Some(present) = absent_ok(c.directory(tx, &base))? else {
            return Ok(GuestRow {
                domid,
                name,
                published: None,
            });
        };
        let mut raw: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for key in KEYS {
            if present.iter().any(|p| p == key)
                && let Some(v) = absent_ok(c.read(tx, &format!("{base}/{key}")))?
            {
                raw.insert(key, v);
            }
        }
        Ok(GuestRow {
            domid,
            name,
            published: Some(Published::parse(|k| raw.get(k).map(Vec::as_slice))),
        })
    })
}

/// Every domain; `own` (dom0's row from the local daemon) first in place of domain 0's store
/// entry when given.
pub fn list(c: &mut Client, own: Option<GuestRow>) -> Result<Vec<GuestRow>, XsError> {
    let mut rows = Vec::new();
    let skip_zero = own.is_some();
    rows.extend(own);
    for domid in domains(c)? {
        if domid == 0 && skip_zero {
            continue;
        }
        match read_guest(c, domid) {
            Ok(row) => rows.push(row),
            // Gone between the listing and the read.
            Err(e) if e.errno() == Some(&Errno::NoEnt) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

fn num<T: Copy + Into<Value>>(f: &Field<T>) -> Value {
    f.valid().map_or(Value::Null, |v| (*v).into())
}

fn text(f: &Field<String>) -> Value {
    f.valid().map_or(Value::Null, |v| Value::String(v.clone()))
}

impl GuestRow {
    /// The row for `--json`: absent and invalid values are `null`, and `invalid` names the keys
    /// that did not parse. Ages are seconds before `now` (unix seconds).
    pub fn to_json(&self, now: u64) -> Value {
        let age = |f: &Field<u64>| {
            f.valid()
                .map_or(Value::Null, |t| now.saturating_sub(*t).into())
        };
        let mut v = json!({
            "domid": self.domid,
            "name": text(&self.name),
            "oomcount": self.published.is_some(),
        });
        let Some(p) = &self.published else {
            return v;
        };
        let mut invalid = p.invalid_keys();
        if self.name.is_invalid() {
            invalid.insert(0, "name");
        }
        let last_kill = if p.last_kill_time.valid().is_some() || p.last_kill_time.is_invalid() {
            json!({
                "time": num(&p.last_kill_time),
                "age_s": age(&p.last_kill_time),
                "pid": num(&p.last_kill_pid),
                "comm": text(&p.last_kill_comm),
                "constraint": p.last_kill_constraint.valid().map(|c| constraint_name(*c)),
                "cgroup": text(&p.last_kill_cgroup),
            })
        } else {
            Value::Null
        };
        let extra = json!({
            "valid": invalid.is_empty(),
            "invalid": invalid,
            "kills": num(&p.kills),
            "kills_memcg": num(&p.kills_memcg),
            "kills_global": num(&p.kills_global),
            "marked": num(&p.marked),
            "events_dropped": num(&p.events_dropped),
            "attached_at": num(&p.attached_at),
            "verdict": p.verdict.valid().map(|h| h.name()),
            "reason": text(&p.reason),
            "last_kill": last_kill,
            "mem_total_kb": num(&p.mem_total_kb),
            "mem_available_kb": num(&p.mem_available_kb),
            "swap_total_kb": num(&p.swap_total_kb),
            "swap_free_kb": num(&p.swap_free_kb),
            "psi_some_avg10": num(&p.psi_some_avg10),
            "psi_full_avg10": num(&p.psi_full_avg10),
            "updated_at": num(&p.updated_at),
            "stale_s": age(&p.updated_at),
            "seq": num(&p.seq),
        });
        if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
            a.extend(b);
        }
        v
    }
}

fn show<T>(f: &Field<T>, fmt: impl Fn(&T) -> String) -> String {
    match f {
        Field::Absent => "-".into(),
        Field::Invalid(_) => "invalid".into(),
        Field::Valid(v) => fmt(v),
    }
}

fn ago(f: &Field<u64>, now: u64) -> String {
    show(f, |t| format!("{}s", now.saturating_sub(*t)))
}

/// The rows as the table `oomcount guests` prints.
pub fn table(rows: &[GuestRow], now: u64) -> String {
    let mut lines = vec![
        [
            "DOMID",
            "NAME",
            "KILLS",
            "VERDICT",
            "MEMAVAIL",
            "LAST KILL",
            "AGE",
            "UPDATED",
        ]
        .map(String::from),
    ];
    for r in rows {
        let name = show(&r.name, |n| n.clone());
        let mut cells = [
            r.domid.to_string(),
            name,
            "-".into(),
            "no oomcount".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ];
        if let Some(p) = &r.published {
            let comm = show(&p.last_kill_comm, |c| c.clone());
            let pid = show(&p.last_kill_pid, u64::to_string);
            cells[2] = show(&p.kills, u64::to_string);
            cells[3] = show(&p.verdict, |h| h.name().into());
            cells[4] = show(&p.mem_available_kb, |kb| format!("{} MiB", kb / 1024));
            cells[5] = match p.last_kill_time {
                Field::Absent => "-".into(),
                _ => format!("{comm} ({pid})"),
            };
            cells[6] = ago(&p.last_kill_time, now);
            cells[7] = format!("{} ago", ago(&p.updated_at, now));
            if !p.invalid_keys().is_empty() && !cells.iter().any(|c| c == "invalid") {
                cells[3] = format!("{} (invalid keys)", cells[3]);
            }
        }
        lines.push(cells);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A change `--watch` prints.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Appeared(GuestRow),
    Changed(GuestRow),
    Gone(u32),
}

impl Change {
    /// The domain that changed.
    pub fn domid(&self) -> u32 {
        match self {
            Change::Appeared(r) | Change::Changed(r) => r.domid,
            Change::Gone(d) => *d,
        }
    }

    /// One line: JSON (`{"change": ..., "guest": row}`) or text.
    pub fn line(&self, json: bool, now: u64) -> String {
        let (what, row) = match self {
            Change::Appeared(r) => ("appeared", Some(r)),
            Change::Changed(r) => ("changed", Some(r)),
            Change::Gone(_) => ("gone", None),
        };
        let domid = self.domid();
        if json {
            return json!({"change": what, "domid": domid, "guest": row.map(|r| r.to_json(now))})
                .to_string();
        }
        match row {
            None => format!("domain {domid} gone"),
            Some(r) => {
                let t = table(std::slice::from_ref(r), now);
                format!("{what}: {}", t.lines().nth(1).unwrap_or_default())
            }
        }
    }
}

const INTRO: &str = "oomcount:intro";
const RELEASE: &str = "oomcount:release";
const SEQ: &str = "oomcount:seq:";

/// Follows every domain through watches (see the module's docs).
pub struct Watcher {
    rows: BTreeMap<u32, GuestRow>,
    /// The most domains followed (the lowest ids).
    max: usize,
}

impl Watcher {
    /// Sets the watches on `@introduceDomain` and `@releaseDomain`.
    pub fn start(c: &mut Client) -> Result<Watcher, XsError> {
        c.watch("@introduceDomain", INTRO)?;
        c.watch("@releaseDomain", RELEASE)?;
        Ok(Watcher {
            rows: BTreeMap::new(),
            max: DOMAINS_MAX,
        })
    }

    /// Follows at most `max` domains (those of the lowest ids): bounded memory and watches.
    pub fn limit(mut self, max: usize) -> Watcher {
        self.max = max;
        self
    }

    /// The domains seen now.
    pub fn rows(&self) -> impl Iterator<Item = &GuestRow> {
        self.rows.values()
    }

    /// Lists the domains again: watches `seq` of the new ones, forgets the gone ones.
    pub fn sync(&mut self, c: &mut Client) -> Result<Vec<Change>, XsError> {
        let now: BTreeSet<u32> = domains(c)?.into_iter().take(self.max).collect();
        let mut changes = Vec::new();
        let gone: Vec<u32> = self
            .rows
            .keys()
            .filter(|d| !now.contains(d))
            .copied()
            .collect();
        for d in gone {
            self.rows.remove(&d);
            let _ = c.unwatch(&format!("{}/{BASE}/seq", home(d)), &format!("{SEQ}{d}"));
            changes.push(Change::Gone(d));
        }
        for d in now {
            if self.rows.contains_key(&d) {
                continue;
            }
            let row = match read_guest(c, d) {
                Ok(r) => r,
                Err(e) if e.errno() == Some(&Errno::NoEnt) => continue,
                Err(e) => return Err(e),
            };
            c.watch(&format!("{}/{BASE}/seq", home(d)), &format!("{SEQ}{d}"))?;
            self.rows.insert(d, row.clone());
            changes.push(Change::Appeared(row));
        }
        Ok(changes)
    }

    /// Waits for the next event (up to `timeout`, `None`: for ever) and returns what changed.
    pub fn next(
        &mut self,
        c: &mut Client,
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<Change>, XsError> {
        let Some(ev) = c.wait_event(timeout)? else {
            return Ok(Vec::new());
        };
        if ev.token == INTRO || ev.token == RELEASE {
            return self.sync(c);
        }
        let Some(d) = ev
            .token
            .strip_prefix(SEQ)
            .and_then(|d| d.parse::<u32>().ok())
        else {
            return Ok(Vec::new());
        };
        if !self.rows.contains_key(&d) {
            return Ok(Vec::new());
        }
        match read_guest(c, d) {
            Ok(row) if self.rows.get(&d) != Some(&row) => {
                self.rows.insert(d, row.clone());
                Ok(vec![Change::Changed(row)])
            }
            Ok(_) => Ok(Vec::new()),
            Err(e) if e.errno() == Some(&Errno::NoEnt) => self.sync(c),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::report::{Constraint, Health, LastKill, Report};

    fn row(garbage: bool) -> GuestRow {
        let r = Report {
            kills: 2,
            kills_memcg: 2,
            kills_global: 0,
            marked: 2,
            events_dropped: 0,
            attached_at: 100,
            verdict: Health::Healthy,
            reason: String::new(),
            last_kill: Some(LastKill {
                time: 150,
                pid: 7,
                comm: "hog".into(),
                constraint: Some(Constraint::Memcg),
                cgroup: "/t".into(),
            }),
            vitals: None,
            updated_at: 190,
        };
        let mut p = Published::from_report(&r, 3);
        if garbage {
            p.kills = Field::Invalid("not a number");
        }
        GuestRow {
            domid: 5,
            name: Field::Valid("domu1".into()),
            published: Some(p),
        }
    }

    #[test]
    fn json_row() {
        let v = row(false).to_json(200);
        assert_eq!(v["kills"], 2);
        assert_eq!(v["verdict"], "healthy");
        assert_eq!(v["last_kill"]["comm"], "hog");
        assert_eq!(v["last_kill"]["age_s"], 50);
        assert_eq!(v["stale_s"], 10);
        assert_eq!(v["valid"], true);
        let bad = row(true).to_json(200);
        assert_eq!(bad["kills"], Value::Null);
        assert_eq!(bad["invalid"], json!(["kills"]));
        assert_eq!(bad["valid"], false);
    }

    #[test]
    fn table_shows_invalid() {
        let t = table(&[row(false), row(true)], 200);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("DOMID"));
        assert!(
            lines[1].contains("hog (7)") && lines[1].contains("10s ago"),
            "{t}"
        );
        assert!(lines[2].contains("invalid"), "{t}");
        let gone = Change::Gone(5).line(true, 0);
        assert_eq!(gone, r#"{"change":"gone","domid":5,"guest":null}"#);
    }
}
