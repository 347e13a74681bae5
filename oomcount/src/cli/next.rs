//! `oomcount next`: who the OOM killer would take next, read from /proc (no daemon needed).
use std::fmt::Write as _;

use anyhow::Context as _;

use oomcount::host::victims::{self, Ranking};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many likely victims to list, the most likely first.
    #[arg(short = 'n', long, default_value_t = 10, value_name = "N")]
    pub count: usize,
    /// Print one JSON object: `likely` (the top N by oom_score) and `protected` (oom_score_adj
    /// -1000, never chosen), arrays of {pid, comm, oom_score, oom_score_adj, rss_kb, swap_kb,
    /// cgroup}; and `unreadable`, the processes that could not be read.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ranking = victims::rank(args.count).context("rank the processes")?;
    Ok(super::print(args.json, &ranking, human)?)
}

/// A table of the likely victims, then the protected ones on one line.
fn human(ranking: &Ranking) -> String {
    let mut text = format!(
        "{:>4} {:>7} {:>9} {:>5} {:>10} {:>9}  {:<15}  cgroup\n",
        "rank", "pid", "oom_score", "adj", "rss", "swap", "comm"
    );
    for (i, c) in ranking.likely.iter().enumerate() {
        let _ = writeln!(
            text,
            "{:>4} {:>7} {:>9} {:>5} {:>10} {:>9}  {:<15}  {}",
            i + 1,
            c.pid,
            c.oom_score,
            c.oom_score_adj,
            kb(c.rss_kb),
            kb(c.swap_kb),
            c.comm,
            c.cgroup.as_deref().unwrap_or("-"),
        );
    }
    if ranking.likely.is_empty() {
        text.push_str("(no process to rank)\n");
    }
    if !ranking.protected.is_empty() {
        let list: Vec<String> = ranking
            .protected
            .iter()
            .map(|c| format!("{} ({})", c.pid, c.comm))
            .collect();
        let _ = writeln!(
            text,
            "protected (oom_score_adj -1000, never chosen): {}",
            list.join(", ")
        );
    }
    if ranking.unreadable > 0 {
        let _ = writeln!(
            text,
            "not ranked: {} processes could not be read (run as root to see them)",
            ranking.unreadable
        );
    }
    text
}

fn kb(n: u64) -> String {
    format!("{n}kB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomcount::host::victims::Candidate;

    fn candidate(pid: i32, comm: &str, oom_score: u32, adj: i32) -> Candidate {
        Candidate {
            pid,
            comm: comm.into(),
            oom_score,
            oom_score_adj: adj,
            rss_kb: 16404,
            swap_kb: 0,
            cgroup: Some("/demo".into()),
        }
    }

    #[test]
    fn table_has_a_row_per_candidate_and_protected_on_one_line() {
        let text = human(&Ranking {
            likely: vec![
                candidate(4537, "python3", 1333, 1000),
                candidate(77, "sshd", 666, 0),
            ],
            protected: vec![
                candidate(300, "udevd", 0, -1000),
                candidate(9, "oomcount", 0, -1000),
            ],
            unreadable: 0,
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "rank     pid oom_score   adj        rss      swap  comm             cgroup",
                "   1    4537      1333  1000    16404kB       0kB  python3          /demo",
                "   2      77       666     0    16404kB       0kB  sshd             /demo",
                "protected (oom_score_adj -1000, never chosen): 300 (udevd), 9 (oomcount)",
            ]
        );
    }

    #[test]
    fn says_what_it_could_not_see() {
        let text = human(&Ranking {
            unreadable: 3,
            ..Ranking::default()
        });
        assert!(text.contains("(no process to rank)"), "{text}");
        assert!(text.contains("3 processes could not be read"), "{text}");
    }

    #[test]
    fn json_is_one_object_with_likely_and_protected() {
        let ranking = Ranking {
            likely: vec![candidate(1, "a", 700, 0)],
            protected: vec![],
            unreadable: 0,
        };
        assert_eq!(
            serde_json::to_string(&ranking).unwrap(),
            r#"{"likely":[{"pid":1,"comm":"a","oom_score":700,"oom_score_adj":0,"rss_kb":16404,"swap_kb":0,"cgroup":"/demo"}],"protected":[],"unreadable":0}"#
        );
    }
}
