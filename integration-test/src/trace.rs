//! An independent count of `oom/mark_victim` events, through tracefs rather than BPF, so the
//! daemon's `marked` can be checked against something that is not the daemon.
//!
//! It uses a private trace instance (`instances/<name>`): its own ring buffer and its own event
//! switches, so it neither clears nor disturbs anybody else's tracing, and removing the instance
//! leaves the machine as it was.
use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{mounts::is_mount_point, unique_name};

/// `mark_victim` events recorded in a private tracefs instance from [`MarkTrace::start`] on.
#[derive(Debug)]
pub struct MarkTrace {
    dir: PathBuf,
}

impl MarkTrace {
    /// Starts recording, mounting tracefs at `/sys/kernel/tracing` if nothing is there; or says
    /// why it cannot (to go on without this oracle).
    pub fn start() -> Result<MarkTrace, String> {
        let root = tracefs()?;
        let dir = root.join("instances").join(unique_name("oomcount-test"));
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let trace = MarkTrace { dir };
        let enable = trace.dir.join("events/oom/mark_victim/enable");
        fs::write(&enable, "1").map_err(|e| format!("enable {}: {e}", enable.display()))?;
        // The other oom events (reaper, score changes) are there to explain a failure; only
        // mark_victim lines are counted.
        let _ = fs::write(trace.dir.join("events/oom/enable"), "1");
        Ok(trace)
    }

    /// The pids of the victims marked so far, in order.
    pub fn pids(&self) -> Vec<u32> {
        self.check_no_overrun();
        parse_pids(&self.text())
    }

    /// The `mark_victim` records so far, in order, with their fields.
    pub fn records(&self) -> Vec<MarkRecord> {
        self.check_no_overrun();
        parse_records(&self.text())
    }

    /// Everything recorded so far (all `oom` events), as tracefs prints it.
    pub fn text(&self) -> String {
        let file = self.dir.join("trace");
        fs::read_to_string(&file).unwrap_or_else(|err| panic!("read {}: {err}", file.display()))
    }

    /// How many victims were marked so far.
    pub fn count(&self) -> u64 {
        self.pids().len() as u64
    }

    fn check_no_overrun(&self) {
        let Ok(cpus) = fs::read_dir(self.dir.join("per_cpu")) else {
            return;
        };
        for cpu in cpus.flatten() {
            let stats = fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
            let overrun = stats
                .lines()
                .find_map(|l| l.strip_prefix("overrun: "))
                .unwrap_or("0");
            assert_eq!(
                overrun.trim(),
                "0",
                "the trace buffer of {} lost events",
                cpu.path().display()
            );
        }
    }
}

impl Drop for MarkTrace {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("events/oom/enable"), "0");
        let _ = fs::write(self.dir.join("events/oom/mark_victim/enable"), "0");
        if let Err(err) = fs::remove_dir(&self.dir) {
            eprintln!("cleanup: rmdir {}: {err}", self.dir.display());
        }
    }
}

/// The `format` file of `oom/mark_victim` on this kernel: which fields its records carry.
pub fn mark_victim_format() -> Result<String, String> {
    let file = tracefs()?.join("events/oom/mark_victim/format");
    fs::read_to_string(&file).map_err(|e| format!("read {}: {e}", file.display()))
}

/// The tracefs root: `/sys/kernel/tracing` (mounted here if need be), else the debugfs one.
pub fn tracefs() -> Result<PathBuf, String> {
    let main = Path::new("/sys/kernel/tracing");
    if main.join("instances").is_dir() {
        return Ok(main.to_path_buf());
    }
    let old = Path::new("/sys/kernel/debug/tracing");
    if old.join("instances").is_dir() {
        return Ok(old.to_path_buf());
    }
    if main.is_dir() && !is_mount_point(main) {
        nix::mount::mount(
            Some("nodev"),
            main,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mount -t tracefs nodev {}: {e}", main.display()))?;
        if main.join("instances").is_dir() {
            return Ok(main.to_path_buf());
        }
    }
    Err("no tracefs with instances".into())
}

/// One `mark_victim` record as tracefs prints it: `pid=N` alone on the old layout; on the new
/// one (6.9+ and backports) `pid=N comm=C total-vm=NkB anon-rss=NkB file-rss:NkB
/// shmem-rss:NkB uid=N pgtables=NkB oom_score_adj=N`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarkRecord {
    pub pid: u32,
    pub comm: Option<String>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub uid: Option<u32>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i16>,
}

/// The `mark_victim` records of a `trace` file.
pub fn parse_records(trace: &str) -> Vec<MarkRecord> {
    trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("mark_victim: ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let mut fields = std::collections::HashMap::new();
            for token in rest.split_whitespace() {
                if let Some(at) = token.find(['=', ':']) {
                    let value = token[at + 1..].trim_end_matches("kB");
                    fields.insert(&token[..at], value.to_owned());
                }
            }
            let num = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
            Some(MarkRecord {
                pid: fields.get("pid")?.parse().ok()?,
                comm: fields.get("comm").cloned(),
                total_vm_kb: num("total-vm"),
                anon_rss_kb: num("anon-rss"),
                file_rss_kb: num("file-rss"),
                shmem_rss_kb: num("shmem-rss"),
                uid: fields.get("uid").and_then(|v| v.parse().ok()),
                pgtables_kb: num("pgtables"),
                oom_score_adj: fields.get("oom_score_adj").and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// The pids of `mark_victim: pid=N ...` lines of a `trace` file.
fn parse_pids(trace: &str) -> Vec<u32> {
    trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("mark_victim: pid=").map(|(_, rest)| rest))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_old_and_new_lines() {
        let text = "# tracer: nop\n#\n\
            oomcount-hog-12 [001] ..... 10.0: mark_victim: pid=12 comm=oomcount-hog anon_rss=1kB\n\
            sh-7 [000] ..... 11.0: mark_victim: pid=34\n";
        assert_eq!(super::parse_pids(text), vec![12, 34]);
        let new = "hog-12 [001] ..... 10.0: mark_victim: pid=12 comm=hog total-vm=5944kB \
            anon-rss=4096kB file-rss:0kB shmem-rss:256kB uid=7 pgtables=48kB oom_score_adj=-5\n\
            sh-7 [000] ..... 11.0: mark_victim: pid=34\n";
        let records = super::parse_records(new);
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!(
            (r.pid, r.comm.as_deref(), r.uid),
            (12, Some("hog"), Some(7))
        );
        assert_eq!(
            (
                r.total_vm_kb,
                r.anon_rss_kb,
                r.file_rss_kb,
                r.shmem_rss_kb,
                r.pgtables_kb
            ),
            (Some(5944), Some(4096), Some(0), Some(256), Some(48))
        );
        assert_eq!(r.oom_score_adj, Some(-5));
        assert_eq!(
            records[1],
            super::MarkRecord {
                pid: 34,
                ..Default::default()
            }
        );
    }
}
