//! oomcount: the OOM killer's exact body count, from eBPF.
//!
//! The library owns everything but the command line, in folders by concern:
//!
//! - [`probe`]: the kernel side. Loading and attaching the eBPF programs, their pins in bpffs,
//!   the counters, tracefs layouts, BTF offsets, and the events decoded for users.
//! - [`watchdog`]: the judgement. The rules, the keeper that turns verdicts into keepalives,
//!   the watchdog device.
//! - [`daemon`]: the serving. The daemon's state and loop, its clients, socket and stat file.
//! - [`host`]: readings of the machine outside the probe (vmstat, vitals, likely victims).
//! - [`metrics`]: the counts for Prometheus (a port and a textfile) and the per-key table.
//! - [`notify`]: telling someone: kill and verdict hooks, journal entries, victims' containers.
//! - [`config`], [`protocol`] and [`logger`]: the config file, the socket's protocol, the log.
//!
//! The `oomcount` binary (`src/main.rs`, `src/cli/`) parses flags, calls the library and
//! prints.
pub mod config;
pub mod daemon;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod logger;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod protocol;
pub(crate) mod units;
pub mod watchdog;
pub mod xen;
