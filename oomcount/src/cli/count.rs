//! `oomcount count`: the body count, from the daemon.
use std::io::Write as _;

use anyhow::Context as _;

use crate::protocol::{self, CountReply, Request, Response};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object: kills, marked, kills_memcg, kills_global, events_dropped,
    /// kill_events_dropped, events_received, kill_events_received, attached_at, kernel_oom_kill,
    /// source.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: super::SocketArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reply = match protocol::call(&args.socket.socket, &Request::Count)? {
        Response::Count(reply) => reply,
        other => anyhow::bail!("the daemon answered {other:?} to a count request"),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &reply).context("write")?;
        writeln!(out).context("write")?;
    } else {
        write!(out, "{}", human(&reply)).context("write")?;
    }
    Ok(())
}

/// The count for a person: what was counted, since when, and the kernel's figure beside it.
fn human(reply: &CountReply) -> String {
    let kernel = reply
        .kernel_oom_kill
        .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    format!(
        "kills            {}  (OOM kills since {}: {} by a cgroup limit, {} global)\n\
         marked           {}  (oom/mark_victim events: kills, threads of victims, victims already dying)\n\
         events dropped   {}\n\
         kernel oom_kill  {}  (/proc/vmstat, since boot)\n",
        reply.kills,
        reply.attached_at,
        reply.kills_memcg,
        reply.kills_global,
        reply.marked,
        reply.events_dropped,
        kernel
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_output_names_every_figure() {
        let text = human(&CountReply {
            kills: 30,
            marked: 34,
            kills_memcg: 30,
            kills_global: 0,
            events_dropped: 0,
            kill_events_dropped: 0,
            events_received: 34,
            kill_events_received: 30,
            attached_at: "2026-11-26T05:00:00Z".into(),
            kernel_oom_kill: None,
            source: "daemon".into(),
        });
        assert!(
            text.starts_with(
                "kills            30  (OOM kills since 2026-11-26T05:00:00Z: 30 by a cgroup limit, 0 global)\n"
            ),
            "{text}"
        );
        assert!(text.contains("marked           34"), "{text}");
        assert!(text.contains("kernel oom_kill  unknown"), "{text}");
    }
}
