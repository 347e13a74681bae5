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

/// The tracefs root: `/sys/kernel/tracing` (mounted here if need be), else the debugfs one.
fn tracefs() -> Result<PathBuf, String> {
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
    }
}
