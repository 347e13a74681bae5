//! `oomcount list`: the most recent victims, from the daemon's history.
use oomcount::probe::event::Kind;

use oomcount::protocol::{self, Request, Response};

pub use oomcount_args::list::Args;

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
