//! `oomcount next`: who the OOM killer would take next, read from /proc (no daemon needed).
use std::fmt::Write as _;

use anyhow::Context as _;

use oomcount::host::victims::{self, Ranking};

pub use oomcount_args::next::Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    let ranking = victims::rank(args.count).context("rank the processes")?;
    Ok(super::print(args.json, &ranking, human)?)
}

/// After the cgroup: the container it names, as kill events show it (` container <short id>`,
/// else ` unit <unit>`, and ` pod <uid> (<qos>)`).
fn container(c: &oomcount::host::victims::Candidate) -> String {
    let mut out = String::new();
    let found = &c.container;
    match (&found.container_id, &found.unit) {
        (Some(id), _) => out += &format!(" container {}", &id[..id.len().min(12)]),
        (None, Some(unit))
            if !c
                .cgroup
                .as_deref()
                .is_some_and(|p| p.ends_with(unit.as_str())) =>
        {
            out += &format!(" unit {unit}")
        }
        _ => {}
    }
    if let (Some(pod), Some(qos)) = (&found.pod_uid, &found.pod_qos) {
        out += &format!(" pod {pod} ({qos})");
    }
    out
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
            c.cgroup.as_deref().unwrap_or("-").to_owned() + &container(c),
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
            container: Default::default(),
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
    fn a_candidate_in_a_container_says_which() {
        let id = "34dc0b5e626f2c5c4c5170e34b10e7654ce36f0fcd532739f4445baabea03376";
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod74c13223_5a00_11e9_b385_42010a80018d.slice/cri-containerd-{id}.scope"
        );
        let mut c = candidate(4537, "postgres", 1333, 1000);
        c.container = oomcount::notify::container::from_cgroup(&path);
        c.cgroup = Some(path.clone());
        let text = human(&Ranking {
            likely: vec![c.clone()],
            ..Ranking::default()
        });
        assert!(
            text.contains(&format!(
                "{path} container 34dc0b5e626f pod 74c13223-5a00-11e9-b385-42010a80018d (besteffort)"
            )),
            "{text}"
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["container_id"], id);
        assert_eq!(json["pod_qos"], "besteffort");
        let mut unit = candidate(1, "nginx", 10, 0);
        unit.cgroup = Some("/system.slice/nginx.service".into());
        unit.container = oomcount::notify::container::from_cgroup("/system.slice/nginx.service");
        let text = human(&Ranking {
            likely: vec![unit],
            ..Ranking::default()
        });
        assert!(
            text.contains("/system.slice/nginx.service\n"),
            "the path says the unit: {text}"
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
