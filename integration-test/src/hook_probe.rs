//! A hook for the hook tests (`oomcount-hog hook-probe DIR [--sleep-ms N] [--hang] [--stderr
//! TEXT] [--exit N]`): it records what it was given, exactly as the kernel handed it over, into
//! `DIR/<pid>.*`, and the tests read the records back with [`Record::read_all`].
//!
//! Recorded: its environment (a copy of `/proc/self/environ`, byte for byte), its arguments, its
//! `/proc/self/status` (uid, gid, groups, capabilities, `NoNewPrivs`), where its descriptors
//! point (stdin should be /dev/null, nothing of the daemon's open), its process group, and when
//! it started and ended (CLOCK_MONOTONIC, so that tests can tell how many ran at once).
//! `--hang` forks a child into the hook's process group and both sleep until killed.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// What a probe writes at its start (`<pid>.json`); `<pid>.environ` holds its environment and
/// `<pid>.end` its end time once it ends by itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    pub pid: i32,
    pub pgid: i32,
    pub argv: Vec<String>,
    pub cwd: String,
    /// Descriptor number to what it points at, read before the probe opened anything.
    pub fds: BTreeMap<i32, String>,
    pub start_ns: u64,
    /// The child `--hang` started in the same process group.
    pub child: Option<i32>,
    /// `sched_getscheduler` (0: SCHED_OTHER) and `/proc/self/oom_score_adj`.
    pub policy: i32,
    pub oom_score_adj: String,
}

/// One run of the probe, read back.
#[derive(Debug)]
pub struct Record {
    pub info: Info,
    /// Each `NAME=value` of the environment, exact bytes.
    pub environ: Vec<Vec<u8>>,
    pub status: String,
    pub end_ns: Option<u64>,
}

impl Record {
    /// Every record in `dir` whose start was written, in order of start.
    pub fn read_all(dir: &Path) -> Vec<Record> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(dir).expect("the probe's folder") {
            let path = entry.expect("a folder entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let info: Info = serde_json::from_slice(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                let sibling = |ext: &str| path.with_extension(ext);
                let environ = std::fs::read(sibling("environ")).expect("the probe's environ");
                let end_ns = std::fs::read_to_string(sibling("end"))
                    .ok()
                    .map(|s| s.trim().parse().expect("an end time"));
                records.push(Record {
                    info,
                    environ: environ
                        .split(|&b| b == 0)
                        .filter(|v| !v.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect(),
                    status: std::fs::read_to_string(sibling("status")).unwrap(),
                    end_ns,
                });
            }
        }
        records.sort_by_key(|r| r.info.start_ns);
        records
    }

    /// The value of `name` in the environment, exact bytes.
    pub fn env(&self, name: &str) -> Option<&[u8]> {
        self.environ.iter().find_map(|entry| {
            entry
                .strip_prefix(name.as_bytes())
                .and_then(|rest| rest.strip_prefix(b"="))
        })
    }

    /// A `/proc/<pid>/status` line's value (`Uid`, `CapEff`, `NoNewPrivs`, ...).
    pub fn status(&self, key: &str) -> String {
        self.status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {key} in the probe's status"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock as `Instant`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes `bytes` to `path` through a temporary name, so that readers see all or nothing.
fn publish(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `hook-probe DIR [--sleep-ms N] [--hang] [--stderr TEXT] [--exit N]`.
pub fn main(args: &[String]) -> Result<ExitCode, String> {
    let start_ns = monotonic_ns();
    // Before anything here opens a descriptor: what the hook was started with.
    let mut fds = BTreeMap::new();
    for fd in 0..64 {
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            fds.insert(fd, target.to_string_lossy().into_owned());
        }
    }
    let (dir, rest) = args.split_first().ok_or("hook-probe DIR ...")?;
    let mut sleep = Duration::ZERO;
    let mut hang = false;
    let mut stderr = None;
    let mut exit = 0u8;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sleep-ms" => {
                sleep = Duration::from_millis(value()?.parse().map_err(|_| "--sleep-ms N")?)
            }
            "--hang" => hang = true,
            "--stderr" => stderr = Some(value()?.clone()),
            "--exit" => exit = value()?.parse().map_err(|_| "--exit N")?,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let pid = std::process::id() as i32;
    let base = PathBuf::from(dir).join(pid.to_string());
    let environ = std::fs::read("/proc/self/environ").map_err(|e| e.to_string())?;
    publish(&base.with_extension("environ"), &environ)?;
    let status = std::fs::read("/proc/self/status").map_err(|e| e.to_string())?;
    publish(&base.with_extension("status"), &status)?;
    let child = if hang {
        // SAFETY: the child only sleeps.
        match unsafe { libc::fork() } {
            0 => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            -1 => return Err("fork failed".into()),
            child => Some(child),
        }
    } else {
        None
    };
    let info = Info {
        pid,
        pgid: nix::unistd::getpgrp().as_raw(),
        argv: std::env::args().collect(),
        cwd: std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        fds,
        start_ns,
        child,
        // SAFETY: sched_getscheduler on this process has no preconditions.
        policy: unsafe { libc::sched_getscheduler(0) },
        oom_score_adj: std::fs::read_to_string("/proc/self/oom_score_adj")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    };
    publish(
        &base.with_extension("json"),
        &serde_json::to_vec(&info).unwrap(),
    )?;
    if let Some(text) = stderr {
        eprint!("{text}");
    }
    if hang {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::thread::sleep(sleep);
    publish(
        &base.with_extension("end"),
        monotonic_ns().to_string().as_bytes(),
    )?;
    Ok(ExitCode::from(exit))
}
