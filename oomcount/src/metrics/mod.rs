//! Prometheus metrics: the daemon's counts in the text exposition format 0.0.4, for fleets.
//!
//! Fleets watch their machines with Prometheus (federation, remote_write, Alertmanager), so the
//! daemon speaks its format, in two ways that carry the same text, each off by default:
//!
//! - a file for node_exporter's textfile collector ([`textfile`]), rewritten atomically after each
//!   batch of events and each change of verdict: it needs no port, so it works under the unit's
//!   `PrivateNetwork=yes`;
//! - `GET /metrics` over HTTP/1.1 on a TCP port ([`http`]), served on the daemon's one thread,
//!   bounded like the unix socket: a slow or hostile client never holds the thread.
//!
//! What the text says is built from a plain [`Snapshot`] of the daemon's counts
//! ([`exposition`]), and the opt-in per-cgroup and per-command counts come from a table of
//! bounded size whatever the victims are called ([`table`]), which `oomcount top` shows too.
pub mod exposition;
pub mod http;
pub mod table;
pub mod textfile;

pub use exposition::{Constraints, GuestSample, Snapshot, render, render_guests};
pub use table::{Entry, Tally};

/// The port of `listen` when the address gives none, and the one the documentation uses.
///
/// Prometheus's list of default ports (its wiki's "Default port allocations") handed out
/// 9100-9999 to exporters until the range ran out in 2023, and 9090-9094 are Prometheus's own;
/// 10066 is outside both, below the kernel's ephemeral range (32768-60999 by default, so no
/// outgoing connection takes it first), and in no entry of /etc/services (10000 webmin,
/// 10050-10051 zabbix and 10080-10083 amanda are the nearest).
pub const DEFAULT_PORT: u16 = 10066;
pub mod publish;
pub use publish::{Publisher, Settings};
