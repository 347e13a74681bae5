//! Who the OOM killer would take next: processes ranked by `/proc/PID/oom_score`.
//!
//! `oom_score` is the kernel's own badness of a process (its resident memory, swap and page
//! tables, plus `oom_score_adj` thousandths of all memory) scaled to 0..=2000, the figure
//! the global OOM killer maximises; reading it rather than recomputing it keeps the ranking
//! right whatever the kernel version weighs. It is integer-scaled, so small processes tie; ties
//! go to the one with more memory (resident plus swap, what the badness counts), then the lower
//! pid, so that the order is stable.
//!
//! The ranking is the global OOM killer's. An OOM in a memory cgroup chooses among that group's
//! members only, weighing `oom_score_adj` against the group's limit rather than all memory, so
//! within a group the order can differ; the `cgroup` of each candidate says where it is.
//!
//! Processes with `oom_score_adj` -1000 are never chosen: they are listed apart, not ranked.
//! Kernel threads and zombies have no memory of their own (no `VmRSS`) and are left out. A
//! process that ends while the scan reads it is skipped, not an error: on a busy machine that
//! happens on every scan. Memory stays bounded by `n`: only the top `n` candidates are kept
//! (and the protected ones, which are few by nature), and a process whose score cannot reach
//! the top `n` is not read further than its score.
use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    path::{Path, PathBuf},
};

use procfs::{ProcError, ProcResult, ProcessCGroup, process::Process};
use serde::Serialize;

/// The `oom_score_adj` of a process the OOM killer never chooses.
pub(crate) const PROTECTED_ADJ: i32 = -1000;

/// A process as the OOM killer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub pid: i32,
    /// The command name (`Name:` of `/proc/PID/status`, at most 15 bytes).
    pub comm: String,
    /// `/proc/PID/oom_score`: 0..=2000, higher is chosen first.
    pub oom_score: u32,
    /// `/proc/PID/oom_score_adj`: -1000 (never) ..= 1000 (first).
    pub oom_score_adj: i32,
    /// Resident memory (`VmRSS`), kB.
    pub rss_kb: u64,
    /// Swapped-out memory (`VmSwap`), kB.
    pub swap_kb: u64,
    /// The memory cgroup, as a path in its hierarchy: the cgroup v1 `memory` controller's line
    /// of `/proc/PID/cgroup`, else the cgroup2 line (`0::PATH`). `None` when it has neither.
    pub cgroup: Option<String>,
    /// The container `cgroup` names (`unit`, `container_id`, `pod_uid`, `pod_qos`; absent when
    /// it names none), as kill events give it.
    #[serde(flatten)]
    pub container: crate::notify::container::Container,
}

/// The processes the OOM killer would choose, most likely first, and those it never chooses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ranking {
    /// The top `n` by `oom_score`, descending (ties: more rss + swap first, then lower pid).
    pub likely: Vec<Candidate>,
    /// `oom_score_adj` -1000, by pid.
    pub protected: Vec<Candidate>,
    /// Processes that exist but could not be read (a `hidepid` /proc, say), so are not ranked.
    pub unreadable: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum VictimsError {
    #[error("cannot list the processes in {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: ProcError,
    },
}

/// The top `n` likely victims among this machine's processes (this PID namespace's `/proc`),
/// and the protected ones.
pub fn rank(n: usize) -> Result<Ranking, VictimsError> {
    rank_in(Path::new("/proc"), n)
}

/// [`rank`] over the processes of the procfs at `proc_root`.
pub(crate) fn rank_in(proc_root: &Path, n: usize) -> Result<Ranking, VictimsError> {
    let processes = procfs::process::all_processes_with_root(proc_root).map_err(|source| {
        VictimsError::List {
            path: proc_root.to_path_buf(),
            source,
        }
    })?;
    let mut top = TopN::new(n);
    let mut protected = Vec::new();
    let mut unreadable = 0;
    for process in processes {
        let read = process.and_then(|p| {
            read_candidate(&p, &top).map_err(|err| match err {
                // A read that failed otherwise because the process ended meanwhile.
                _ if !proc_root.join(p.pid.to_string()).exists() => ProcError::NotFound(None),
                err => err,
            })
        });
        match read {
            Ok(Some(c)) if c.oom_score_adj == PROTECTED_ADJ => protected.push(c),
            Ok(Some(c)) => top.push(c),
            Ok(None) | Err(ProcError::NotFound(_)) => {}
            Err(err) => {
                log::debug!("victims: skipping an unreadable process: {err}");
                unreadable += 1;
            }
        }
    }
    protected.sort_by_key(|c| c.pid);
    Ok(Ranking {
        likely: top.into_sorted(),
        protected,
        unreadable,
    })
}

/// Reads what ranking needs about one process; `None` for a process without memory of its own
/// (kernel thread, zombie) and for one whose score cannot enter `top`.
fn read_candidate(p: &Process, top: &TopN) -> ProcResult<Option<Candidate>> {
    let oom_score_adj = i32::from(p.oom_score_adj()?);
    let oom_score = u32::from(p.oom_score()?);
    if oom_score_adj != PROTECTED_ADJ && !top.admits(oom_score) {
        return Ok(None);
    }
    let status = p.status()?;
    let Some(rss_kb) = status.vmrss else {
        return Ok(None);
    };
    let cgroup = memory_cgroup(&p.cgroups()?.0);
    let container = cgroup
        .as_deref()
        .map(crate::notify::container::from_cgroup)
        .unwrap_or_default();
    Ok(Some(Candidate {
        pid: p.pid,
        comm: status.name,
        oom_score,
        oom_score_adj,
        rss_kb,
        swap_kb: status.vmswap.unwrap_or(0),
        cgroup,
        container,
    }))
}

/// The memory cgroup among a process's cgroups: the v1 hierarchy with the `memory` controller
/// where there is one (it then holds memory control, whatever cgroup2 is also mounted), else
/// the cgroup2 hierarchy.
fn memory_cgroup(groups: &[ProcessCGroup]) -> Option<String> {
    groups
        .iter()
        .find(|g| g.controllers.iter().any(|c| c == "memory"))
        .or_else(|| {
            groups
                .iter()
                .find(|g| g.hierarchy == 0 && g.controllers.is_empty())
        })
        .map(|g| g.pathname.clone())
}

/// The order of likelihood: `Less` when `a` would be chosen before `b`.
fn likelier(a: &Candidate, b: &Candidate) -> Ordering {
    let memory = |c: &Candidate| c.rss_kb.saturating_add(c.swap_kb);
    b.oom_score
        .cmp(&a.oom_score)
        .then_with(|| memory(b).cmp(&memory(a)))
        .then_with(|| a.pid.cmp(&b.pid))
}

/// A candidate ordered by [`likelier`]: the greatest is the least likely, so that a max-heap
/// of them has the one to drop at its top.
struct ByLikelihood(Candidate);

impl Ord for ByLikelihood {
    fn cmp(&self, other: &Self) -> Ordering {
        likelier(&self.0, &other.0)
    }
}

impl PartialOrd for ByLikelihood {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ByLikelihood {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ByLikelihood {}

/// The `n` likeliest candidates pushed so far.
struct TopN {
    n: usize,
    heap: BinaryHeap<ByLikelihood>,
}

impl TopN {
    fn new(n: usize) -> Self {
        // A huge `n` (`-n 1000000`) must not allocate up front.
        let capacity = n.min(4096).saturating_add(1);
        Self {
            n,
            heap: BinaryHeap::with_capacity(capacity),
        }
    }

    /// Whether a candidate with this score could enter: room left, or a score at least the
    /// lowest kept (an equal score may still win on memory).
    fn admits(&self, oom_score: u32) -> bool {
        if self.heap.len() < self.n {
            return true;
        }
        self.heap
            .peek()
            .is_some_and(|least| oom_score >= least.0.oom_score)
    }

    fn push(&mut self, candidate: Candidate) {
        if self.n == 0 {
            return;
        }
        self.heap.push(ByLikelihood(candidate));
        if self.heap.len() > self.n {
            self.heap.pop();
        }
    }

    /// The kept candidates, most likely first.
    fn into_sorted(self) -> Vec<Candidate> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|c| c.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn candidate(pid: i32, oom_score: u32, rss_kb: u64, swap_kb: u64) -> Candidate {
        Candidate {
            pid,
            comm: format!("p{pid}"),
            oom_score,
            oom_score_adj: 0,
            rss_kb,
            swap_kb,
            cgroup: None,
            container: Default::default(),
        }
    }

    fn pids(list: &[Candidate]) -> Vec<i32> {
        list.iter().map(|c| c.pid).collect()
    }

    #[test]
    fn top_n_keeps_the_likeliest_in_order() {
        // (pid, oom_score, rss, swap)
        let table = [
            (1, 666, 100, 0),
            (2, 1333, 10, 0),
            (3, 700, 5, 0),
            (4, 666, 50, 60), // ties with 1 on score; 110 kB of memory beats 100
            (5, 2000, 1, 0),
            (6, 666, 100, 0), // ties with 1 on score and memory; the lower pid first
            (7, 0, 1 << 30, 0),
        ];
        for (n, want) in [
            (0, vec![]),
            (1, vec![5]),
            (3, vec![5, 2, 3]),
            (5, vec![5, 2, 3, 4, 1]),
            (6, vec![5, 2, 3, 4, 1, 6]),
            (10, vec![5, 2, 3, 4, 1, 6, 7]),
        ] {
            let mut top = TopN::new(n);
            for &(pid, score, rss, swap) in &table {
                top.push(candidate(pid, score, rss, swap));
            }
            assert_eq!(pids(&top.into_sorted()), want, "n = {n}");
        }
    }

    #[test]
    fn top_n_admits_only_scores_that_can_enter() {
        let mut top = TopN::new(2);
        assert!(top.admits(0), "room left");
        top.push(candidate(1, 900, 1, 0));
        top.push(candidate(2, 800, 1, 0));
        assert!(!top.admits(799));
        assert!(top.admits(800), "an equal score may win on memory");
        assert!(!TopN::new(0).admits(2000));
        assert!(TopN::new(usize::MAX).admits(0), "no allocation up front");
    }

    fn cg(hierarchy: u32, controllers: &[&str], pathname: &str) -> ProcessCGroup {
        ProcessCGroup {
            hierarchy,
            controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
            pathname: pathname.to_owned(),
        }
    }

    #[test]
    fn memory_cgroup_prefers_the_v1_memory_controller() {
        let hybrid = [
            cg(0, &[], "/user.slice"),
            cg(5, &["cpu", "cpuacct"], "/cpu"),
            cg(4, &["memory"], "/mem/demo"),
        ];
        assert_eq!(memory_cgroup(&hybrid).as_deref(), Some("/mem/demo"));
        let v2 = [cg(0, &[], "/system.slice/sshd.service")];
        assert_eq!(
            memory_cgroup(&v2).as_deref(),
            Some("/system.slice/sshd.service")
        );
        let v1_without_memory = [cg(3, &["cpuset"], "/")];
        assert_eq!(memory_cgroup(&v1_without_memory), None);
        assert_eq!(memory_cgroup(&[]), None);
    }

    /// A fake procfs in a temporary folder, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("oomcount-victims-{}-{n}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// A process; `rss_kb` `None` makes a kernel thread (its status has no `Vm*` lines).
        fn add(&self, pid: i32, name: &str, score: u32, adj: i32, rss_kb: Option<u64>) {
            let dir = self.0.join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            let memory = rss_kb
                .map(|rss| format!("VmRSS:\t{rss:8} kB\nVmSwap:\t       7 kB\n"))
                .unwrap_or_default();
            let status = format!(
                "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nNgid:\t0\n\
                 Pid:\t{pid}\nPPid:\t1\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
                 FDSize:\t64\nGroups:\t\n{memory}Threads:\t1\nSigQ:\t0/95536\n\
                 SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
                 SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n\
                 SigCgt:\t0000000000000000\nCapInh:\t0000000000000000\n\
                 CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n"
            );
            fs::write(dir.join("status"), status).unwrap();
            fs::write(dir.join("oom_score"), format!("{score}\n")).unwrap();
            fs::write(dir.join("oom_score_adj"), format!("{adj}\n")).unwrap();
            let cgroup = format!("12:memory:/demo/{name}\n1:name=systemd:/x\n0::/y\n");
            fs::write(dir.join("cgroup"), cgroup).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ranks_a_procfs_skipping_kernel_threads_and_vanished_processes() {
        let proc = FakeProc::new();
        proc.add(1, "init", 0, 0, Some(12000));
        proc.add(2, "kthreadd", 0, 0, None);
        proc.add(100, "big", 1000, 0, Some(900_000));
        proc.add(200, "chosen", 1500, 1000, Some(1000));
        proc.add(300, "udevd", 0, PROTECTED_ADJ, Some(5000));
        proc.add(400, "small", 667, 0, Some(3000));
        // A process that ended between the listing and the reads: its folder is empty.
        fs::create_dir(proc.0.join("500")).unwrap();
        // One that exists but whose files cannot be made sense of.
        proc.add(600, "odd", 667, 0, Some(1));
        fs::write(proc.0.join("600/oom_score"), "many\n").unwrap();
        // Not a process.
        fs::create_dir(proc.0.join("sys")).unwrap();

        let ranking = rank_in(&proc.0, 3).unwrap();
        assert_eq!(pids(&ranking.likely), [200, 100, 400]);
        assert_eq!(pids(&ranking.protected), [300]);
        assert_eq!(ranking.unreadable, 1, "pid 600");
        let chosen = &ranking.likely[0];
        assert_eq!(
            chosen,
            &Candidate {
                pid: 200,
                comm: "chosen".into(),
                oom_score: 1500,
                oom_score_adj: 1000,
                rss_kb: 1000,
                swap_kb: 7,
                cgroup: Some("/demo/chosen".into()),
                container: Default::default(),
            }
        );

        let all = rank_in(&proc.0, 100).unwrap();
        assert_eq!(pids(&all.likely), [200, 100, 400, 1], "kthreadd has no mm");
        assert!(rank_in(&proc.0, 0).unwrap().likely.is_empty());
    }

    #[test]
    fn a_missing_procfs_is_an_error() {
        let err = rank_in(Path::new("/nonexistent/proc"), 5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot list the processes in /nonexistent/proc"
        );
    }

    #[test]
    fn ranks_this_machine() {
        let ranking = rank(5).unwrap();
        assert!(ranking.likely.len() <= 5);
        assert!(
            ranking
                .likely
                .windows(2)
                .all(|w| likelier(&w[0], &w[1]) == Ordering::Less),
            "{ranking:?}"
        );
        assert!(
            ranking
                .likely
                .iter()
                .all(|c| c.oom_score_adj != PROTECTED_ADJ)
        );
    }
}
