//! `oomcount watch`: kills as they happen, one line each.
use oomcount::probe::event::Kind;
use std::io::Write as _;

use anyhow::Context as _;

use oomcount::protocol::{Client, Request, Response};

pub use oomcount_args::watch::Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket.socket)?;
    // The first line (watching, or why the daemon refused the connection), then the events,
    // which can be days apart.
    let mut first = Some(client.call(&Request::Watch)?);
    client.wait_forever()?;
    let mut out = std::io::stdout().lock();
    while let Some(response) = match first.take() {
        Some(response) => Some(response),
        None => client.receive()?,
    } {
        match response {
            Response::Watching(counts) => {
                if args.json {
                    let mut value = serde_json::to_value(&counts).context("encode")?;
                    value["kind"] = "watching".into();
                    writeln!(out, "{value}").map_err(super::Stdout)?;
                } else {
                    eprintln!(
                        "oomcount: watching OOM kills ({} since {}); Ctrl-C to stop",
                        counts.kills, counts.attached_at
                    );
                }
            }
            Response::Event(event) => {
                if event.kind != Kind::Kill && !args.marks {
                    continue;
                }
                if args.json {
                    super::write_json(&mut out, &event)?;
                } else {
                    writeln!(out, "{}", event.line()).map_err(super::Stdout)?;
                }
            }
            Response::Dropped(dropped) => {
                if args.json {
                    let line = serde_json::json!({"kind": "dropped", "count": dropped.count, "by": dropped.by});
                    writeln!(out, "{line}").map_err(super::Stdout)?;
                } else {
                    writeln!(out, "{} events dropped ({})", dropped.count, dropped.by)
                        .map_err(super::Stdout)?;
                }
            }
            other => anyhow::bail!("the daemon answered {other:?} to a watch"),
        }
        out.flush().map_err(super::Stdout)?;
    }
    anyhow::bail!("the daemon closed the connection (stopped?)")
}
