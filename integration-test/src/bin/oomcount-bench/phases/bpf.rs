//! BPF cost per event: `run_time_ns / run_cnt` of each program while statistics are on.
use oomcount_integration_test::{MemCg, producer};
use serde_json::json;

use crate::{
    Bench,
    baselines::{self, Baseline},
    bpfstats, progress,
    report::Row,
};

/// Kills while BPF statistics are on.
const BPF_KILLS: u64 = 200;

pub fn bpf_cost(b: &mut Bench) -> Result<(), String> {
    progress(&format!(
        "BPF cost: {BPF_KILLS} kills with kernel.bpf_stats_enabled on"
    ));
    let bare = baselines::bpftrace(baselines::BPFTRACE_COUNT);
    let cg = MemCg::new("bench-bpf", 4 << 20);
    let pids = [
        ("oomcount", Ok(b.daemon.pid())),
        (
            "bpftrace one-liner (printf)",
            b.bpftrace.as_ref().map(Baseline::pid).map_err(Clone::clone),
        ),
        (
            "bpftrace bare counter",
            bare.as_ref().map(Baseline::pid).map_err(Clone::clone),
        ),
    ];
    let snapshot = || -> Vec<Result<Vec<bpfstats::Prog>, String>> {
        pids.iter()
            .map(|(_, pid)| bpfstats::programs(*pid.as_ref().map_err(Clone::clone)?))
            .collect()
    };
    let stats = bpfstats::stats_on()?;
    let before = snapshot();
    producer::storm(std::slice::from_ref(&cg), BPF_KILLS);
    let after = snapshot();
    drop(stats);
    drop(bare);
    let costs: Vec<Result<Vec<bpfstats::Cost>, String>> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Ok(bpfstats::costs(b.as_ref()?, a.as_ref()?)))
        .collect();
    // The program that ran for the marks: the daemon's named so, a bpftrace's only one.
    let per_mark = |costs: &Result<Vec<bpfstats::Cost>, String>| -> Result<f64, String> {
        let costs = costs.as_ref().map_err(Clone::clone)?;
        let mark = costs
            .iter()
            .filter(|c| c.runs > 0)
            .find(|c| c.name.contains("mark_victim"))
            .or_else(|| costs.iter().max_by_key(|c| c.runs))
            .ok_or("no program ran")?;
        mark.ns_per_run
            .map(|ns| ns / 1000.0)
            .ok_or_else(|| format!("{} did not run", mark.name))
    };
    let ours = costs[0].as_ref().map_err(Clone::clone)?;
    let signal = ours.iter().find(|c| c.name.contains("signal"));
    let total_ns: f64 = ours
        .iter()
        .filter_map(|c| Some(c.ns_per_run? * c.runs as f64))
        .sum();
    let mut note = format!(
        "ns per run of the mark_victim program over {BPF_KILLS} kills; all of oomcount's BPF \
         time per kill: {:.2} us",
        total_ns / BPF_KILLS as f64 / 1000.0
    );
    if let Some(s) = signal {
        note.push_str(&format!(
            "; its signal_generate program: {} runs (every signal on the machine), {:.2} us each",
            s.runs,
            s.ns_per_run.unwrap_or(0.0) / 1000.0
        ));
    }
    b.rows.push(
        Row::new("bpf_cost", "BPF time per OOM event", "us")
            .value(per_mark(&costs[0]))
            .baseline("bpftrace bare counter", per_mark(&costs[2]))
            .baseline("bpftrace one-liner (printf)", per_mark(&costs[1]))
            .earlier("a bare counter", 1.2)
            .note(note),
    );
    let detail: Vec<_> = pids
        .iter()
        .zip(&costs)
        .map(|((name, _), c)| match c {
            Ok(c) => json!({"who": name, "programs": c.iter().map(|c| json!({"name": c.name, "runs": c.runs, "ns_per_run": c.ns_per_run})).collect::<Vec<_>>()}),
            Err(why) => json!({"who": name, "absent": why}),
        })
        .collect();
    b.details.insert("bpf_cost".into(), json!(detail));
    Ok(())
}
