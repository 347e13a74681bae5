//! `oomcount top`: which cgroups, or which commands, the OOM killer keeps killing.
//!
//! From the daemon's bounded table (the one behind the Prometheus series `by_cgroup` and
//! `by_comm`): the first `max_series` keys seen have a row each, the rest count as `_other`.
use oomcount::{
    metrics::publish::{By, TopReply},
    protocol::{self, Request, Response},
};

pub use oomcount_args::top::Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    let by = match args.by {
        oomcount_args::top::By::Cgroup => By::Cgroup,
        oomcount_args::top::By::Comm => By::Comm,
    };
    let reply = match protocol::call(&args.socket.socket, &Request::Top { by })? {
        Response::Top(reply) => reply,
        other => anyhow::bail!(
            "the daemon at {} answered a {} response to a top request (is it an oomcount daemon of this version?)",
            args.socket.socket.display(),
            other.kind()
        ),
    };
    Ok(super::print(args.json, &reply, human)?)
}

/// The table for a person: one row per key, most kills first.
fn human(reply: &TopReply) -> String {
    let what = match reply.by {
        By::Cgroup => "CGROUP",
        By::Comm => "COMMAND",
    };
    if reply.rows.is_empty() {
        return "no OOM kill since the daemon started\n".to_owned();
    }
    let width = reply
        .rows
        .iter()
        .map(|row| row.key.chars().count())
        .chain([what.len()])
        .max()
        .unwrap_or(0)
        .min(60);
    let mut out = format!(
        "{what:width$}  {:>6}  {:20}  LAST VICTIM\n",
        "KILLS", "LAST KILL"
    );
    for row in &reply.rows {
        // A name is whatever bytes its process chose: its control characters are shown escaped.
        let key: String = row.key.chars().flat_map(char::escape_debug).collect();
        let comm: String = row.last_comm.chars().flat_map(char::escape_debug).collect();
        out += &format!(
            "{key:width$}  {:>6}  {:20}  {} ({comm})\n",
            row.kills, row.last_kill, row.last_pid
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use oomcount::metrics::publish::TopRow;

    use super::*;

    #[test]
    fn rows_line_up_and_names_are_escaped() {
        let text = human(&TopReply {
            by: By::Comm,
            max_rows: 64,
            cgroup_depth: 3,
            rows: vec![
                TopRow {
                    key: "hog".into(),
                    kills: 12,
                    last_kill: "2026-12-04T14:00:00Z".into(),
                    last_pid: 4242,
                    last_comm: "hog".into(),
                },
                TopRow {
                    key: "evil\n\u{1b}[2J".into(),
                    kills: 1,
                    last_kill: "2026-12-04T14:00:01Z".into(),
                    last_pid: 7,
                    last_comm: "evil\n".into(),
                },
            ],
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("COMMAND"), "{text}");
        assert!(
            lines[1].contains("    12  2026-12-04T14:00:00Z  4242 (hog)"),
            "{text}"
        );
        assert!(lines[2].starts_with("evil\\n\\u{1b}[2J"), "{text}");
    }
}
