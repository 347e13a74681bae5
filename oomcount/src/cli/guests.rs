//! `oomcount guests`: every Xen domain's OOM count, verdict and vitals, as dom0 reads them from
//! xenstore; dom0's own row first, from the local daemon.
use std::{io::Write as _, time::SystemTime};

use anyhow::Context as _;
use oomcount::{
    probe::event::Kind,
    protocol::{self, Request, Response},
    xen::{
        client::{Client, Tx},
        guests::{self, GuestRow, Watcher},
        report::{Field, Published},
    },
};

pub use oomcount_args::guests::Args;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// dom0's own row, from the daemon at `socket`; `None` where no daemon answers (domain 0's
/// entry in xenstore, if any, is shown instead).
fn own_row(socket: &std::path::Path, client: &mut Client) -> Option<GuestRow> {
    let Ok(Response::Count(counts)) = protocol::call(socket, &Request::Count) else {
        return None;
    };
    let Ok(Response::Verdict(verdict)) = protocol::call(socket, &Request::Verdict) else {
        return None;
    };
    let last = match protocol::call(socket, &Request::List { n: usize::MAX }) {
        Ok(Response::Events(events)) => events.into_iter().rev().find(|e| e.kind == Kind::Kill),
        _ => None,
    };
    let vitals = oomcount::host::vitals::read()
        .ok()
        .map(|v| oomcount::xen::vitals(&v));
    let report = oomcount::xen::report_from(
        &counts,
        verdict.health,
        &verdict.reason,
        last.as_ref(),
        vitals,
    );
    let name = client
        .read_opt(Tx::NONE, "/local/domain/0/name")
        .ok()
        .flatten();
    let name = match oomcount::xen::report::parse_text(name.as_deref(), 64) {
        Field::Absent => Field::Valid("Domain-0".to_owned()),
        other => other,
    };
    Some(GuestRow {
        domid: 0,
        name,
        published: Some(Published::from_report(&report, 0)),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut client = Client::open_dom0().map_err(|err| {
        anyhow::anyhow!(
            "{err}: no xenstore answers here (run `oomcount guests` in Xen's dom0, as root)"
        )
    })?;
    let own = own_row(&args.socket.socket, &mut client);
    if !args.watch {
        let rows = guests::list(&mut client, own).context("reading the domains from xenstore")?;
        let now = now();
        let json: Vec<_> = rows.iter().map(|r| r.to_json(now)).collect();
        return Ok(super::print(args.json, &json, |_| {
            guests::table(&rows, now)
        })?);
    }
    let mut out = std::io::stdout().lock();
    let mut emit = |line: String| writeln!(out, "{line}").and_then(|()| out.flush());
    // dom0's own row comes from its daemon: domain 0's entry in xenstore is not shown beside it.
    let skip_zero = own.is_some();
    if let Some(row) = own {
        emit(guests::Change::Appeared(row).line(args.json, now())).map_err(super::Stdout)?;
    }
    let mut watcher = Watcher::start(&mut client).context("watching xenstore")?;
    let mut changes = watcher
        .sync(&mut client)
        .context("reading the domains from xenstore")?;
    loop {
        for change in changes {
            if skip_zero && change.domid() == 0 {
                continue;
            }
            emit(change.line(args.json, now())).map_err(super::Stdout)?;
        }
        changes = watcher
            .next(&mut client, None)
            .context("watching xenstore")?;
    }
}
