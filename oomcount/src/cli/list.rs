//! `oomcount list`: the most recent victims, from the daemon's history.
use oomcount::probe::event::Kind;

use oomcount::protocol::{self, Request, Response};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many events, the most recent last.
    #[arg(short = 'n', long, default_value_t = 20, value_name = "N")]
    pub count: usize,
    /// A JSON array of event objects (the fields of `watch --json`).
    #[arg(long)]
    pub json: bool,
    /// Also list marks without a kill.
    #[arg(long)]
    pub marks: bool,
    #[command(flatten)]
    pub socket: super::SocketArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Marks are filtered here, so ask for the whole history when they are left out.
    let n = if args.marks { args.count } else { usize::MAX };
    let events = match protocol::call(&args.socket.socket, &Request::List { n })? {
        Response::Events(events) => events,
        other => anyhow::bail!("the daemon answered {other:?} to a list request"),
    };
    let mut events: Vec<_> = events
        .into_iter()
        .filter(|e| args.marks || e.kind == Kind::Kill)
        .collect();
    let skip = events.len().saturating_sub(args.count);
    events.drain(..skip);
    Ok(super::print(args.json, &events, |events| {
        events.iter().map(|event| event.line() + "\n").collect()
    })?)
}
