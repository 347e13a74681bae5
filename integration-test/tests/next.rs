//! `oomcount next` and `oomcount status`, run as a user runs them, against the kernel's own view.
//!
//! `next`: three held hogs in a memory cgroup of our own, with `oom_score_adj` 1000, 500
//! and -1000 and known resident memory. The first must be the likeliest victim on the machine,
//! the second after it, the third listed as protected and never ranked, and every field (score,
//! rss, swap, comm, cgroup) as /proc and the cgroup say. No hog touches more than it is told:
//! nothing here comes near an OOM.
//!
//! `status`: the vitals held against /proc/meminfo and /proc/pressure/memory read around it
//! (PSI present exactly where the file is readable, its stall total between the two reads), and
//! the count from a daemon, or the reason there is none.
use std::{fs, process::Command};

use oomcount_integration_test::{
    Daemon, MemCg, cgroup::memcg_of, locate, producer::Held, require_root,
};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
struct Candidate {
    pid: i32,
    comm: String,
    oom_score: u32,
    oom_score_adj: i32,
    rss_kb: u64,
    swap_kb: u64,
    cgroup: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Ranking {
    likely: Vec<Candidate>,
    protected: Vec<Candidate>,
    unreadable: usize,
}

/// `oomcount ARGS`, which must succeed; its stdout.
fn oomcount(args: &[&str]) -> String {
    let bin = locate::oomcount();
    let output = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("run {} {args:?}: {err}", bin.display()));
    assert!(
        output.status.success(),
        "`oomcount {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn next_json(n: usize) -> Ranking {
    let text = oomcount(&["next", "--json", "-n", &n.to_string()]);
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("`next --json` printed {text:?}: {err}"))
}

/// A `Key: N kB` line of a /proc file (`/proc/PID/status`, `/proc/meminfo`); 0 when absent.
fn kb_field(path: &str, key: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|err| panic!("read {path}: {err}"));
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{path} {key}: {v:?}"))
        })
        .unwrap_or(0)
}

fn oom_score(pid: u32) -> u32 {
    let path = format!("/proc/{pid}/oom_score");
    let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{path}: {text:?}"))
}

/// Whether this process has CAP_SYS_RESOURCE, which setting oom_score_adj -1000 takes.
fn may_protect() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// A hog of ours as `next` should show it.
struct Child {
    held: Held,
    comm: &'static str,
    adj: i32,
    mb: u64,
}

impl Child {
    fn spawn(cg: &MemCg, comm: &'static str, adj: i32, mb: u64) -> Child {
        let held = Held::spawn_with(cg, mb, adj, &["--comm", comm]);
        Child {
            held,
            comm,
            adj,
            mb,
        }
    }

    fn pid(&self) -> i32 {
        self.held.pid() as i32
    }

    /// Checks `c`, the candidate `next` gave for this child, against the kernel.
    fn check(&self, c: &Candidate, cg: &MemCg) {
        let pid = self.held.pid();
        let status = format!("/proc/{pid}/status");
        let what = format!("{} (pid {pid}): {c:?}", self.comm);
        assert_eq!(c.comm, self.comm, "{what}");
        assert_eq!(c.oom_score_adj, self.adj, "{what}");
        assert_eq!(c.oom_score, oom_score(pid), "{what}: /proc oom_score");
        assert_eq!(c.cgroup.as_deref(), Some(cg.path().as_str()), "{what}");
        assert_eq!(c.cgroup.as_deref(), Some(memcg_of(pid).as_str()), "{what}");
        // The hog holds what it touched and does nothing else: its VmRSS does not move.
        let rss = kb_field(&status, "VmRSS");
        assert!(
            c.rss_kb >= self.mb * 1024 && c.rss_kb.abs_diff(rss) <= 256,
            "{what}: touched {} MiB, VmRSS now {rss} kB",
            self.mb
        );
        assert_eq!(c.swap_kb, kb_field(&status, "VmSwap"), "{what}: VmSwap");
    }
}

#[test]
fn next_ranks_by_oom_score_and_lists_the_protected_apart() {
    require_root();
    let cg = MemCg::new("next", 256 << 20);
    let first = Child::spawn(&cg, "next-first", 1000, 24);
    let second = Child::spawn(&cg, "next-second", 500, 16);
    // Lowering oom_score_adj below what a process inherited takes CAP_SYS_RESOURCE, which
    // some hosts' root lacks (containers, this project's build machines); the VM guests have it.
    let protected = may_protect().then(|| Child::spawn(&cg, "next-protected", -1000, 8));
    if protected.is_none() {
        println!(
            "SKIPPED the protected hog on {}: no CAP_SYS_RESOURCE, so no process of ours can get \
             oom_score_adj -1000 here; `protected` is checked in the VM guests",
            oomcount_integration_test::kernel_release()
        );
    }

    let ranking = next_json(5);
    let top: Vec<String> = ranking
        .likely
        .iter()
        .map(|c| {
            format!(
                "{} {} score {} adj {}",
                c.pid, c.comm, c.oom_score, c.oom_score_adj
            )
        })
        .collect();
    println!("next -n 5: {top:#?}\nprotected: {:?}", ranking.protected);

    assert_eq!(ranking.likely.len(), 5, "{top:#?}");
    assert_eq!(ranking.unreadable, 0, "root reads every process");
    assert_eq!(
        ranking.likely[0].pid,
        first.pid(),
        "the oom_score_adj 1000 hog should be the likeliest victim: {top:#?}"
    );
    assert_eq!(
        ranking.likely[1].pid,
        second.pid(),
        "the oom_score_adj 500 hog should come next (another process with a high adj running?): {top:#?}"
    );
    assert!(
        ranking
            .likely
            .windows(2)
            .all(|w| w[0].oom_score >= w[1].oom_score),
        "ordered by oom_score: {top:#?}"
    );
    for c in &ranking.likely {
        assert_ne!(c.oom_score_adj, -1000, "a protected process ranked: {c:?}");
    }
    // (1000 + badness * 1000 / totalpages) * 2 / 3, badness including adj thousandths.
    assert!(ranking.likely[0].oom_score >= 1333, "{top:#?}");
    assert!(ranking.likely[1].oom_score >= 1000, "{top:#?}");
    first.check(&ranking.likely[0], &cg);
    second.check(&ranking.likely[1], &cg);

    for c in &ranking.protected {
        assert_eq!(c.oom_score_adj, -1000, "{c:?}");
        assert_eq!(c.oom_score, 0, "{c:?}");
    }
    if let Some(protected) = &protected {
        let listed = ranking
            .protected
            .iter()
            .find(|c| c.pid == protected.pid())
            .unwrap_or_else(|| {
                panic!("the -1000 hog is not in protected: {:?}", ranking.protected)
            });
        protected.check(listed, &cg);
    }

    let one = next_json(1);
    assert_eq!(one.likely.len(), 1);
    assert_eq!(one.likely[0].pid, first.pid());
    // Even the whole ranking never lists the protected hog as likely.
    let all = next_json(100_000);
    if let Some(protected) = &protected {
        assert!(all.likely.iter().all(|c| c.pid != protected.pid()));
    }
    assert!(all.likely.iter().any(|c| c.pid == second.pid()));

    let table = oomcount(&["next", "-n", "3"]);
    println!("{table}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("rank "), "{table}");
    assert!(
        rows[1].contains(&format!(" {} ", first.pid())) && rows[1].contains("next-first"),
        "{table}"
    );
    if let Some(protected) = &protected {
        assert!(
            table.contains(&format!("{} (next-protected)", protected.pid())),
            "{table}"
        );
    }
}

#[derive(Debug, Deserialize)]
struct Status {
    vitals: Vitals,
    count: Option<Count>,
    count_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Vitals {
    mem_total_kb: u64,
    mem_available_kb: Option<u64>,
    swap_total_kb: u64,
    swap_free_kb: u64,
    psi: Option<Psi>,
}

#[derive(Debug, Deserialize)]
struct Psi {
    some: PsiLine,
    full: Option<PsiLine>,
}

#[derive(Debug, Deserialize)]
struct PsiLine {
    avg10: f32,
    total_us: u64,
}

#[derive(Debug, Deserialize)]
struct Count {
    kills: u64,
    source: String,
}

/// The `total=` of the `some` line of /proc/pressure/memory, when it can be read.
fn psi_some_total() -> Option<u64> {
    let text = fs::read_to_string("/proc/pressure/memory").ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|kv| kv.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

fn status(args: &[&str]) -> Status {
    let mut argv = vec!["status", "--json"];
    argv.extend_from_slice(args);
    let text = oomcount(&argv);
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("`status --json` printed {text:?}: {err}"))
}

#[test]
fn status_reports_the_kernels_vitals() {
    require_root();
    let dir = std::env::temp_dir().join(format!("oomcount-status-{}", std::process::id()));
    let socket = dir.join("none.sock");
    let pins = dir.join("no-pins");
    let (socket, pins) = (socket.to_str().unwrap(), pins.to_str().unwrap());

    let available_before = kb_field("/proc/meminfo", "MemAvailable");
    let psi_before = psi_some_total();
    let s = status(&["--socket", socket, "--pin-dir", pins]);
    let available_after = kb_field("/proc/meminfo", "MemAvailable");
    let psi_after = psi_some_total();
    println!("{s:?}");

    let v = &s.vitals;
    assert_eq!(v.mem_total_kb, kb_field("/proc/meminfo", "MemTotal"));
    assert_eq!(v.swap_total_kb, kb_field("/proc/meminfo", "SwapTotal"));
    assert!(v.swap_free_kb <= v.swap_total_kb, "{v:?}");
    // Whatever else runs on the machine moves MemAvailable a little between the reads.
    let slack = (v.mem_total_kb / 50).max(32 << 10);
    let available = v.mem_available_kb.expect("MemAvailable (Linux 3.14+)");
    let low = available_before.min(available_after).saturating_sub(slack);
    let high = available_before.max(available_after) + slack;
    assert!(
        (low..=high).contains(&available),
        "MemAvailable {available} kB, /proc/meminfo said {available_before} then {available_after}"
    );
    match (&v.psi, psi_before, psi_after) {
        (Some(psi), Some(before), Some(after)) => {
            assert!(
                (before..=after).contains(&psi.some.total_us),
                "PSI some total {} us, the file said {before} then {after}",
                psi.some.total_us
            );
            assert!((0.0..=100.0).contains(&psi.some.avg10), "{psi:?}");
            assert!(psi.full.is_some(), "memory PSI has a full line: {psi:?}");
        }
        (None, None, None) => println!(
            "no readable /proc/pressure/memory on {}: psi is null, as it should be",
            oomcount_integration_test::kernel_release()
        ),
        (psi, before, after) => panic!(
            "psi {psi:?} but /proc/pressure/memory read {before:?} then {after:?}: present iff readable"
        ),
    }
    assert!(s.count.is_none(), "{s:?}");
    let why = s.count_error.as_deref().unwrap_or_default();
    assert!(why.contains("no oomcount daemon is running"), "{why}");

    // With a daemon, its count.
    let daemon = Daemon::start();
    let socket = daemon.socket().to_str().unwrap();
    let s = status(&["--socket", socket, "--pin-dir", pins]);
    let count = s
        .count
        .unwrap_or_else(|| panic!("no count: {:?}", s.count_error));
    assert_eq!(count.source, "daemon");
    // Other tests' kills may move the count meanwhile; it cannot go back.
    assert!(count.kills <= daemon.count().kills, "{count:?}");
    let text = oomcount(&["status", "--socket", socket, "--pin-dir", pins]);
    println!("{text}");
    assert!(text.starts_with("memory "), "{text}");
    assert!(
        text.contains("oom kills  ") && text.contains(" since ") && !text.contains("unknown"),
        "{text}"
    );
}
