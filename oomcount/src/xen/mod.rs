//! Xen: each guest publishes its OOM count, verdict and vitals in xenstore, and dom0 lists
//! every guest's (issue 15).
//!
//! No existing tool carries an OOM count through xenstore, and the Rust xenstore crates are
//! GPL, so the protocol is our own: [`wire`] (the codec of `xs_wire.h`, pure), [`client`] (a
//! blocking client with deadlines, for a thread of its own or the CLI), [`report`] (the keys a
//! guest writes, and their typed, distrustful parsing), [`guest`] (the coalescing writer),
//! [`guests`] (dom0's listing and watch) and [`dom0`] (every guest's series in dom0's metrics).
pub mod client;
pub mod dom0;
pub mod guest;
pub mod guests;
pub mod report;
pub mod wire;

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{Xenstore, XenstoreMode},
    host::vitals::Vitals as HostVitals,
    probe::event::VictimEvent,
    protocol::CountReply,
    watchdog::rules::Health,
};
use client::Client;
use guest::Publisher;
use report::{LastKill, Report, Vitals};

/// What this machine is to Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not under Xen (or xenfs and the xenbus device are both missing).
    None,
    /// A guest (domU): publishes its own report.
    Guest,
    /// The control domain (`/proc/xen/capabilities` says `control_d`).
    Dom0,
}

/// Looks at `/proc/xen` and `/dev/xen/xenbus` under `root` (`/` outside tests).
pub fn role(root: &Path) -> Role {
    let caps = root.join("proc/xen/capabilities");
    if let Ok(c) = std::fs::read_to_string(&caps)
        && c.split(',').any(|w| w.trim() == "control_d")
    {
        return Role::Dom0;
    }
    if root.join("proc/xen").is_dir() || root.join("dev/xen/xenbus").exists() {
        // /proc/xen exists in guests too (xenfs may not be mounted there: the device is enough).
        return Role::Guest;
    }
    Role::None
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339_secs(s: &str) -> u64 {
    humantime::parse_rfc3339_weak(s).map_or(0, unix_secs)
}

/// The vitals as a guest publishes them.
pub fn vitals(v: &HostVitals) -> Vitals {
    Vitals {
        mem_total_kb: v.mem_total_kb,
        mem_available_kb: v.mem_available_kb,
        swap_total_kb: v.swap_total_kb,
        swap_free_kb: v.swap_free_kb,
        psi_some_avg10: v.psi.as_ref().map(|p| f64::from(p.some.avg10)),
        psi_full_avg10: v
            .psi
            .as_ref()
            .and_then(|p| p.full.as_ref())
            .map(|f| f64::from(f.avg10)),
    }
}

/// A report from what the daemon serves: its counts, its verdict, its last kill (the newest
/// event of kind `kill`), and the vitals last read.
pub fn report_from(
    counts: &CountReply,
    health: Health,
    reason: &str,
    last_kill: Option<&VictimEvent>,
    vitals: Option<Vitals>,
) -> Report {
    Report {
        kills: counts.kills,
        kills_memcg: counts.kills_memcg,
        kills_global: counts.kills_global,
        marked: counts.marked,
        events_dropped: counts.events_dropped,
        attached_at: rfc3339_secs(&counts.attached_at),
        verdict: health,
        reason: reason.to_owned(),
        last_kill: last_kill.map(|e| LastKill {
            time: rfc3339_secs(&e.time),
            pid: e.tgid.unwrap_or(e.pid),
            comm: e.comm.clone().unwrap_or_default(),
            constraint: e.constraint,
            cgroup: e.cgroup.clone().unwrap_or_default(),
        }),
        vitals,
        updated_at: unix_secs(SystemTime::now()),
    }
}

/// The daemon's publisher as `[xenstore]` asks: `Ok(None)` where nothing is to be published;
/// an error (one line, naming the key) where `mode = "on"` and no xenstore can be opened.
pub(crate) fn start_publisher(config: &Xenstore) -> Result<Option<Publisher>, String> {
    let on_failed = |err: client::XsError| {
        format!(
            "[xenstore] mode = \"on\", but {err} (is this a Xen guest with xenfs? set mode = \"auto\" or \"off\")"
        )
    };
    let client = match (config.mode, role(Path::new("/"))) {
        (XenstoreMode::Off, _) => return Ok(None),
        (XenstoreMode::Auto, Role::None) => {
            log::debug!(
                "xenstore: not a Xen guest (no /proc/xen, no /dev/xen/xenbus): nothing published"
            );
            return Ok(None);
        }
        (XenstoreMode::Auto, Role::Dom0) => {
            log::debug!("xenstore: dom0: nothing published (oomcount guests asks this daemon)");
            return Ok(None);
        }
        (XenstoreMode::Auto, Role::Guest) => match Client::open_guest() {
            Ok(client) => client,
            Err(err) => {
                log::warn!(
                    "xenstore: {err}: nothing published (set [xenstore] mode = \"off\" for no attempt)"
                );
                return Ok(None);
            }
        },
        (XenstoreMode::On, Role::Dom0) => Client::open_dom0().map_err(on_failed)?,
        (XenstoreMode::On, _) => Client::open_guest().map_err(on_failed)?,
    };
    let path = client.path().display().to_string();
    let publisher = Publisher::start(client, guest::BASE, guest::MIN_INTERVAL)
        .map_err(|err| format!("xenstore: cannot start its thread: {err}"))?;
    log::info!("xenstore: publishing under {} through {path}", guest::BASE);
    Ok(Some(publisher))
}

/// dom0's follower of every guest for the metrics, where `[metrics]` publishes something and
/// this is dom0: `/proc/xen/capabilities` says so, or (`mode = "on"`) the store reached is
/// xenstored's unix socket, whose relative paths are `/local/domain/0`. Guests never read
/// other domains. `None` elsewhere, and where the store cannot be opened (said once).
pub(crate) fn start_guest_metrics(
    config: &Xenstore,
    metrics_on: bool,
    changed: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> Option<dom0::GuestMetrics> {
    if !metrics_on || config.mode == XenstoreMode::Off {
        return None;
    }
    let open: fn() -> Result<Client, client::XsError> = match (config.mode, role(Path::new("/"))) {
        (_, Role::Dom0) => Client::open_dom0,
        (XenstoreMode::On, _) => Client::open_guest,
        _ => return None,
    };
    let client = match open() {
        Ok(c) if c.is_socket() || role(Path::new("/")) == Role::Dom0 => c,
        Ok(_) => return None,
        Err(err) => {
            log::warn!("xenstore: {err}: no guests in the metrics");
            return None;
        }
    };
    let path = client.path().display().to_string();
    match dom0::GuestMetrics::start(client, Box::new(open), config.interval, changed) {
        Ok(g) => {
            log::info!("xenstore: dom0: every guest's count in the metrics, read through {path}");
            Some(g)
        }
        Err(err) => {
            log::warn!(
                "xenstore: cannot start the guests' thread ({err}): no guests in the metrics"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let d = std::env::temp_dir().join(format!("oomcount-xenrole-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(role(&d), Role::None);
        std::fs::create_dir_all(d.join("dev/xen")).unwrap();
        std::fs::write(d.join("dev/xen/xenbus"), "").unwrap();
        assert_eq!(role(&d), Role::Guest);
        std::fs::create_dir_all(d.join("proc/xen")).unwrap();
        std::fs::write(d.join("proc/xen/capabilities"), "control_d\n").unwrap();
        assert_eq!(role(&d), Role::Dom0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
