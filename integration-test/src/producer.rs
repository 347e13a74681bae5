//! The test side of `oomcount-hog`: run it in a given shape and check that it ended the way that
//! shape must end (killed by SIGKILL, or surviving), so that a test's counts are about the kills
//! it meant to make. What each shape makes the kernel count is in the `victim` module's docs.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    cgroup::MemCg,
    locate,
    wait::{deadline, wait_until},
};

/// `oomcount-hog` with `args`, stdin closed, stderr shared with the test.
pub fn hog(args: &[&str]) -> Command {
    let mut cmd = Command::new(locate::hog());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    cmd.spawn()
        .unwrap_or_else(|err| panic!("start {cmd:?}: {err}"))
}

/// Waits for `child` to end by `deadline`; panics naming `what` otherwise.
pub fn wait_child(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    wait_until(deadline, what, || match child.try_wait() {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err("still running".to_owned()),
        Err(err) => Err(format!("wait: {err}")),
    })
}

fn assert_oom_killed(status: ExitStatus, what: &str) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{what} should have been OOM-killed but ended with {status}"
    );
}

fn dir(cg: &MemCg) -> &str {
    cg.dir().to_str().expect("cgroup paths are UTF-8")
}

/// `n` single-threaded processes, one after another, each touching memory in `cg` until killed.
pub fn single_kills(cg: &MemCg, n: u64) {
    for i in 0..n {
        let mut child = spawn(hog(&["alloc", "--cgroup", dir(cg)]));
        let status = wait_child(
            &mut child,
            deadline(Duration::from_secs(20)),
            &format!("single-threaded hog {i} to be killed"),
        );
        assert_oom_killed(status, &format!("single-threaded hog {i}"));
    }
}

/// One process of `threads` threads, all touching memory in `cg` until it is killed; returns
/// its pid.
pub fn threaded_kill(cg: &MemCg, threads: usize) -> u32 {
    let mut child = spawn(hog(&["threads", &threads.to_string(), "--cgroup", dir(cg)]));
    let status = wait_child(
        &mut child,
        deadline(Duration::from_secs(20)),
        "the multi-threaded hog to be killed",
    );
    assert_oom_killed(status, "the multi-threaded hog");
    child.id()
}

/// One single-threaded process touching memory in `cg` until killed, with more hog options
/// (`--adj N`, `--comm NAME`, `--uid N`); returns its pid.
pub fn kill_one(cg: &MemCg, options: &[&str]) -> u32 {
    let mut cmd = hog(&["alloc", "--cgroup", dir(cg)]);
    cmd.args(options);
    let mut child = spawn(cmd);
    let what = format!("the hog {options:?} to be killed");
    let status = wait_child(&mut child, deadline(Duration::from_secs(20)), &what);
    assert_oom_killed(status, &format!("the hog {options:?}"));
    child.id()
}

/// A process that touches `mb` MiB in `cg` and exits, which must survive (another member is
/// the OOM killer's choice); with more hog options. Returns its pid.
pub fn survivor(cg: &MemCg, mb: u64, options: &[&str]) -> u32 {
    let mut cmd = hog(&["alloc", "--cgroup", dir(cg), "--mb", &mb.to_string()]);
    cmd.args(options);
    let mut child = spawn(cmd);
    let what = format!("the hog {options:?} to touch {mb} MiB and exit");
    let status = wait_child(&mut child, deadline(Duration::from_secs(30)), &what);
    assert!(
        status.success(),
        "the hog {options:?} touching {mb} MiB should have survived but ended with {status}"
    );
    child.id()
}

/// A `clone(CLONE_VM)` pair touching memory in `cg`; both must die (the group ends up empty).
pub fn vmshare_kill(cg: &MemCg) {
    let mut child = spawn(hog(&["vmshare", "--cgroup", dir(cg)]));
    let status = wait_child(
        &mut child,
        deadline(Duration::from_secs(20)),
        "the vmshare hog to be killed",
    );
    assert_oom_killed(status, "the vmshare hog");
    wait_until(
        deadline(Duration::from_secs(10)),
        "the vmshare hog's mm-sharing clone to die too",
        || {
            let left = cg.pids();
            if left.is_empty() { Ok(()) } else { Err(left) }
        },
    );
}

/// A storm: one producer per group in `groups` (the producers stay outside them), each making
/// `kills_each` children that are killed in its group. Returns the kills the hog reported.
pub fn storm(groups: &[MemCg], kills_each: u64) -> u64 {
    let mut cmd = hog(&["storm", "--kills-each", &kills_each.to_string()]);
    for cg in groups {
        cmd.args(["--cgroup", dir(cg)]);
    }
    cmd.stdout(Stdio::piped());
    let mut child = spawn(cmd);
    let status = wait_child(
        &mut child,
        deadline(Duration::from_secs(120)),
        "the storm to end",
    );
    assert!(
        status.success(),
        "the storm failed: {status} (its producers said why above)"
    );
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut said)
        .expect("read the storm's output");
    said.trim()
        .strip_prefix("killed ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the storm said {said:?}, not `killed N`"))
}

/// A hog that touched `mb` MiB in `cg` and holds it until killed (by the kernel or on drop).
#[derive(Debug)]
pub struct Held {
    child: Child,
}

impl Held {
    /// Starts it with `oom_score_adj` `adj` and waits until it holds its memory.
    pub fn spawn(cg: &MemCg, mb: u64, adj: i32) -> Held {
        Held::spawn_with(cg, mb, adj, &[])
    }

    /// [`Held::spawn`] with more hog options (`--comm NAME`, `--uid N`).
    pub fn spawn_with(cg: &MemCg, mb: u64, adj: i32, options: &[&str]) -> Held {
        let mut cmd = hog(&[
            "alloc",
            "--cgroup",
            dir(cg),
            "--mb",
            &mb.to_string(),
            "--adj",
            &adj.to_string(),
            "--hold",
        ]);
        cmd.args(options).stdout(Stdio::piped());
        let mut child = spawn(cmd);
        let said = read_line_by(&mut child, deadline(Duration::from_secs(20)));
        if said != "ready" {
            let _ = child.kill();
            let status = child.wait();
            panic!("a holding hog ({mb} MiB) did not get ready: said {said:?}, ended {status:?}");
        }
        Held { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it has been killed by SIGKILL.
    pub fn wait_killed(&mut self, what: &str) {
        let status = wait_child(&mut self.child, deadline(Duration::from_secs(20)), what);
        assert_oom_killed(status, what);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The already-dying victim (see `victim::dying`): a process holding 5/8 of `cg`'s limit,
/// `oom_score_adj` 1000, SIGKILLed and held in its exit path by `oomcount-hog dying` (a ptrace
/// exit stop). Then a second process touches as much: it hits the limit, the OOM killer picks
/// the dying one and only marks it, the OOM reaper frees its memory (after `OOM_REAPER_DELAY`,
/// 2 s on 5.18 and later), and the second process finishes. Returns the dying victim's pid, or
/// what went otherwise (for the caller to panic with, adding what it traced).
pub fn already_dying(cg: &MemCg, limit_mb: u64) -> Result<u32, String> {
    let share = limit_mb * 5 / 8;
    let mut cmd = hog(&["dying", "--cgroup", dir(cg), "--mb", &share.to_string()]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut tracer = spawn(cmd);
    let said = read_line_by(&mut tracer, deadline(Duration::from_secs(20)));
    let Some(pid) = said
        .strip_prefix("dying ")
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        let _ = tracer.kill();
        return Err(format!(
            "`oomcount-hog dying` said {said:?}, not `dying PID` (its stderr says why)"
        ));
    };
    let before = ProcStatus::read(pid);
    if !(before.state.starts_with('t') && before.rss_kib >= share * 1024 * 9 / 10) {
        drop(tracer.stdin.take());
        return Err(format!(
            "the victim should be stopped in its exit with {share} MiB: {before:?}"
        ));
    }
    let mut small = spawn(hog(&[
        "alloc",
        "--cgroup",
        dir(cg),
        "--mb",
        &share.to_string(),
    ]));
    let small_status = wait_child(
        &mut small,
        deadline(Duration::from_secs(30)),
        "the small hog to finish",
    );
    let after = ProcStatus::read(pid);
    drop(tracer.stdin.take()); // tells the tracer to let the victim finish exiting
    let tracer_status = wait_child(
        &mut tracer,
        deadline(Duration::from_secs(10)),
        "the dying victim's tracer to end",
    );
    if !small_status.success() {
        return Err(format!(
            "the small hog should have survived (the OOM killer choosing the dying victim, pid \
             {pid}) but ended with {small_status}; the victim before: {before:?}, after: {after:?}"
        ));
    }
    if !tracer_status.success() {
        return Err(format!(
            "the dying victim's tracer failed ({tracer_status}; its stderr says why)"
        ));
    }
    Ok(pid)
}

/// The first line `child` prints by `deadline` (its stdout piped), or what happened instead.
fn read_line_by(child: &mut Child, deadline: Instant) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(line) => line.trim().to_owned(),
        Err(err) => format!("(nothing: {err})"),
    }
}

/// The members of a `memory.oom.group` (cgroup2): `members - 1` processes holding a little
/// memory, then one touching memory until the limit; the OOM killer kills them all together.
/// Returns their pids, the growing one first.
pub fn oom_group_kill(cg: &MemCg, members: usize) -> Vec<u32> {
    assert!(members >= 2, "a group needs at least two members");
    let mut held: Vec<Held> = (1..members).map(|_| Held::spawn(cg, 4, 0)).collect();
    let mut grower = spawn(hog(&["alloc", "--cgroup", dir(cg)]));
    let status = wait_child(
        &mut grower,
        deadline(Duration::from_secs(20)),
        "the growing member to be killed",
    );
    assert_oom_killed(status, "the growing member");
    for (i, member) in held.iter_mut().enumerate() {
        member.wait_killed(&format!("held member {i} to be killed with its group"));
    }
    std::iter::once(grower.id())
        .chain(held.iter().map(Held::pid))
        .collect()
}

/// The VM guest's global OOM: one process (`oom_score_adj` 1000) touching memory outside any
/// limit until the kernel kills it. Refused unless `OOMCOUNT_VM` is set. Returns its pid.
pub fn global_kill() -> u32 {
    assert!(
        crate::wait::in_vm(),
        "a global OOM is allowed only in the VM guest (OOMCOUNT_VM=1)"
    );
    let mut child = spawn(hog(&["alloc", "--global", "--adj", "1000"]));
    let status = wait_child(
        &mut child,
        deadline(Duration::from_secs(60)),
        "the global hog to be killed",
    );
    assert_oom_killed(status, "the global hog");
    child.id()
}

/// What `/proc/PID/status` says about a process, for the already-dying victim.
#[derive(Debug)]
pub struct ProcStatus {
    /// `State:` (`D (disk sleep)` when frozen), empty when the process is gone.
    pub state: String,
    /// `VmRSS:` in KiB.
    pub rss_kib: u64,
    /// SIGKILL in `SigPnd:` or `ShdPnd:`.
    pub sigkill_pending: bool,
}

impl ProcStatus {
    pub fn read(pid: u32) -> ProcStatus {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
        };
        let pending = |key: &str| {
            u64::from_str_radix(field(key), 16)
                .is_ok_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
        };
        ProcStatus {
            state: field("State:").to_owned(),
            rss_kib: field("VmRSS:")
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0),
            sigkill_pending: pending("SigPnd:") || pending("ShdPnd:"),
        }
    }
}
