//! `oomcount count`: the body count, from the daemon.
use std::path::Path;

use oomcount::{
    probe::pins::Pinned,
    protocol::{self, ClientError, CountReply, Request, Response, Source},
};

pub use oomcount_args::count::Args;

/// The counts from the pinned counter map, when there are pins and this process may read them.
pub(super) fn from_pins(dir: &std::path::Path) -> Option<CountReply> {
    let pinned = Pinned::open(dir).ok()??;
    let counters = pinned.counters().ok()?;
    let attached = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(pinned.attached_ns());
    let kernel = oomcount::host::system::kernel_oom_kill();
    Some(CountReply::new(
        &counters,
        attached,
        kernel,
        Source::Pins,
        (0, 0),
    ))
}

/// The counts from the daemon at `socket`, else from the pins in `pin_dir` when no daemon runs.
/// A daemon that runs but does not answer with the counts is an error, never the pins' figures.
fn counts(socket: &Path, pin_dir: &Path) -> anyhow::Result<CountReply> {
    Ok(match protocol::call(socket, &Request::Count) {
        Ok(Response::Count(reply)) => reply,
        Ok(other) => anyhow::bail!(
            "the daemon at {} answered a {} response to a count request (is it an oomcount daemon of this version?)",
            socket.display(),
            other.kind()
        ),
        // No daemon: the pinned counters still know, to whoever may read them.
        Err(ClientError::NotRunning(path)) => match from_pins(pin_dir) {
            Some(reply) => reply,
            None => return Err(ClientError::NotRunning(path).into()),
        },
        Err(err) => return Err(err.into()),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reply = counts(&args.source.socket.socket, &args.source.pin_dir)?;
    Ok(super::print(args.json, &reply, human)?)
}

/// The count for a person: what was counted, since when, and the kernel's figure beside it.
fn human(reply: &CountReply) -> String {
    let kernel = reply
        .kernel_oom_kill
        .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    let hooks = match (reply.hooks_run, reply.hooks_skipped) {
        (Some(run), Some(skipped)) => format!(
            "hooks            {run} run, {skipped} skipped  (kills and verdict changes that found max_running hooks busy)\n"
        ),
        _ => String::new(),
    };
    format!(
        "kills            {}  (OOM kills since {}: {} by a cgroup limit, {} global)\n\
         marked           {}  (oom/mark_victim events: kills, threads of victims, victims already dying)\n\
         events dropped   {}\n\
         kernel oom_kill  {}  (/proc/vmstat, since boot)\n\
         source           {}\n{hooks}",
        reply.kills,
        reply.attached_at,
        reply.kills_memcg,
        reply.kills_global,
        reply.marked,
        reply.events_dropped,
        kernel,
        if reply.source == Source::Pins {
            "the pinned counters (no daemon is running)"
        } else {
            "the daemon"
        }
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
            oom_signals: 0,
            hooks_run: None,
            hooks_skipped: None,
            events_received: 34,
            kill_events_received: 30,
            attached_at: "2026-11-26T05:00:00Z".into(),
            kernel_oom_kill: None,
            source: Source::Daemon,
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
