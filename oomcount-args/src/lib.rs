//! oomcount's command line (clap definitions) and its configuration keys, with their defaults.
//!
//! Why a crate of its own: the binary parses with these definitions, and xtask generates the man
//! pages (clap_mangen) and shell completions (clap_complete) and the commented configuration
//! file from them at package time. xtask cannot depend on the `oomcount` package (its build
//! script builds the eBPF object), so what both need lives here, depending on clap alone. Each
//! subcommand's `run` stays in the binary (`oomcount/src/cli`), beside nothing but its work.
pub mod config_keys;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The daemon's socket, unless `--socket` or `OOMCOUNT_SOCKET` says otherwise (the library's
/// `protocol::DEFAULT_SOCKET`; the binary's tests check that they agree).
pub const DEFAULT_SOCKET: &str = "/run/oomcount/oomcount.sock";
/// The pin folder in bpffs (the library's `probe::pins::DEFAULT_DIR`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/oomcount";
/// The events the daemon keeps for `list` (the library's `daemon::DEFAULT_HISTORY`).
pub const DEFAULT_HISTORY: usize = 256;
/// The configuration file (the library's `config::DEFAULT_PATH`).
pub const DEFAULT_CONFIG: &str = "/etc/oomcount/oomcount.toml";
/// Where the daemon publishes its counts for `cat`.
pub const DEFAULT_STAT: &str = "/run/oomcount/stat";

#[derive(Debug, Parser)]
#[command(
    name = "oomcount",
    version,
    about = "Counts the OOM killer's victims exactly, with eBPF, and serves the count",
    long_about = "Counts the OOM killer's victims exactly, with eBPF on the oom/mark_victim \
tracepoint: one per process the kernel kills, the figure /proc/vmstat oom_kill counts, with no \
kernel patch and no log parsing. `oomcount daemon` (as root) holds the probe; `oomcount count` asks it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the probe, serve queries on a unix socket, log each kill (foreground).
    Daemon(daemon::Args),
    /// Print the OOM kills counted since the probe was attached, and the kernel's count since boot.
    Count(count::Args),
    /// Stream OOM kills as they happen, one line each.
    Watch(watch::Args),
    /// Print the most recent OOM victims from the daemon's history.
    List(list::Args),
    /// Remove the probe's pins from bpffs, detaching it (refused while a daemon holds it).
    Detach(detach::Args),
    /// List the processes the OOM killer would kill next, by oom_score, and the protected ones.
    Next(next::Args),
    /// Exit 0 while OOM activity is recoverable, non-zero otherwise (for watchdog(8) and scripts).
    Check(check::Args),
    /// Check the daemon's configuration file.
    Config(config::Args),
    /// Print the memory vitals (available, swap, pressure) and the OOM kills counted.
    Status(status::Args),
    /// Xen dom0: every domain's OOM count, verdict and vitals, from xenstore.
    Guests(guests::Args),
    /// Show which cgroups, or which commands, the OOM killer kills most (kills, last kill, last
    /// victim).
    Top(top::Args),
}

/// The daemon's socket, shared by every subcommand that talks to it.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's unix socket.
    #[arg(long, value_name = "PATH", env = "OOMCOUNT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// Where the count is read: the daemon's socket, else (as root) the pins it left.
#[derive(Debug, clap::Args)]
pub struct CountSource {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Where the daemon pins the probe: the count is read from there (as root) when no daemon
    /// answers.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

pub mod daemon {
    use std::path::PathBuf;

    #[derive(Debug, clap::Args)]
    pub struct Args {
        #[command(flatten)]
        pub socket: super::SocketArg,
        /// Log each mark without a kill too, and other details (debug level).
        #[arg(short, long)]
        pub verbose: bool,
        /// Where to publish the counts for `cat` (default: /run/oomcount/stat, or SOCKET.stat
        /// beside another socket); "" for none.
        #[arg(long, value_name = "PATH")]
        pub stat: Option<PathBuf>,
        /// Where to pin the probe in bpffs, so that it counts on while no daemon runs.
        #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath, default_value = super::DEFAULT_PIN_DIR)]
        pub pin_dir: PathBuf,
        /// Pin nothing: the probe detaches when the daemon exits.
        #[arg(long)]
        pub no_pin: bool,
        /// Events kept for `oomcount list` (about 600 bytes each, with their strings).
        #[arg(long, default_value_t = super::DEFAULT_HISTORY, value_name = "EVENTS")]
        pub history: usize,
        /// The watchdog and its rules (TOML) [default: /etc/oomcount/oomcount.toml, where it exists].
        #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        pub config: Option<PathBuf>,
        /// Judge and log as configured, but open no watchdog device.
        #[arg(long)]
        pub dry_run: bool,
    }
}

pub mod count {
    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// Print one JSON object: kills, marked, kills_memcg, kills_global, events_dropped,
        /// kill_events_dropped, events_received, kill_events_received, attached_at, kernel_oom_kill,
        /// source (`daemon`, or `pins` when read from the pinned counters without a daemon).
        #[arg(long)]
        pub json: bool,
        #[command(flatten)]
        pub source: super::CountSource,
    }
}

pub mod watch {
    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// One JSON object per line: `kind` is `watching` (first line, with the counts), `kill`,
        /// `mark` (with --marks), or `dropped` (events lost, with `count` and `by`).
        #[arg(long)]
        pub json: bool,
        /// Also show marks without a kill (threads of a victim, victims already dying).
        #[arg(long)]
        pub marks: bool,
        #[command(flatten)]
        pub socket: super::SocketArg,
    }
}

pub mod list {
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
}

pub mod detach {
    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// The pin folder.
        #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath, default_value = super::DEFAULT_PIN_DIR)]
        pub pin_dir: std::path::PathBuf,
    }
}

pub mod next {
    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// How many likely victims to list, the most likely first.
        #[arg(short = 'n', long, default_value_t = 10, value_name = "N")]
        pub count: usize,
        /// Print one JSON object: `likely` (the top N by oom_score) and `protected` (oom_score_adj
        /// -1000, never chosen), arrays of {pid, comm, oom_score, oom_score_adj, rss_kb, swap_kb,
        /// cgroup}; and `unreadable`, the processes that could not be read.
        #[arg(long)]
        pub json: bool,
    }
}

pub mod check {
    /// Unrecoverable: watchdog(8)'s "reboot" code.
    pub const UNRECOVERABLE: u8 = 255;
    /// No daemon answers on the socket (ECONNREFUSED).
    pub const NO_DAEMON: u8 = 111;
    /// The daemon did not answer: it closed the connection first, or gave no answer in time
    /// (ETIMEDOUT).
    pub const NO_ANSWER: u8 = 110;
    /// The daemon answered something else than a verdict: garbage, or an error (EPROTO).
    pub const GARBAGE: u8 = 71;

    /// Every exit status of `oomcount check`, with its meaning: for its help and the man page's
    /// EXIT STATUS.
    pub const EXIT_STATUS: [(u8, &str); 7] = [
        (
            0,
            "recoverable (healthy or degraded); in repair mode: recoverable again",
        ),
        (
            1,
            "a local error before asking the daemon (repair without CODE, say)",
        ),
        (2, "a usage error (clap)"),
        (
            GARBAGE,
            "the daemon answered something else than a verdict (garbage, or an error): EPROTO",
        ),
        (
            NO_ANSWER,
            "the daemon did not answer (it closed the connection, or gave no answer within 5 s): ETIMEDOUT",
        ),
        (NO_DAEMON, "no daemon answers on the socket: ECONNREFUSED"),
        (UNRECOVERABLE, "unrecoverable: watchdog(8) reboots"),
    ];

    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum Mode {
        /// Judge now (what watchdog(8) runs from its test-directory).
        Test,
        /// watchdog(8)'s second chance after CODE: 0 if things are recoverable now, else the code.
        Repair,
    }

    #[derive(Debug, clap::Args)]
    #[command(
        after_long_help = "Exit status: 0 recoverable (healthy or degraded); 255 unrecoverable \
(watchdog(8) reboots); 111 no daemon answers on the socket; 110 the daemon did not answer (it \
closed the connection, or gave no answer within 5 s); 71 the daemon answered something else than \
a verdict (garbage, or an error). Never 0 without the daemon's verdict. In repair mode: 0 when \
things are recoverable again, else one of these codes."
    )]
    pub struct Args {
        /// `test` (the default) or `repair`, as watchdog(8) calls its test programs.
        #[arg(value_enum, value_name = "MODE")]
        pub mode: Option<Mode>,
        /// The code the test returned, in repair mode.
        #[arg(value_name = "CODE", requires = "mode")]
        pub code: Option<i32>,
        /// What watchdog(8) may name after the code (ignored).
        #[arg(value_name = "OBJECT", requires = "code", hide = true)]
        pub object: Option<std::ffi::OsString>,
        /// Print the verdict and its reason, and the keepalive's state, even when recoverable.
        #[arg(long)]
        pub explain: bool,
        /// Print the verdict as one JSON object: health, reason, watchdog.
        #[arg(long)]
        pub json: bool,
        #[command(flatten)]
        pub socket: super::SocketArg,
    }
}

pub mod config {
    use std::path::PathBuf;

    #[derive(Debug, clap::Args)]
    pub struct Args {
        #[command(subcommand)]
        pub command: Command,
    }

    #[derive(Debug, clap::Subcommand)]
    pub enum Command {
        /// Check a configuration file and print what it sets, defaults included.
        Check {
            /// The file [default: /etc/oomcount/oomcount.toml].
            #[arg(value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
            file: Option<PathBuf>,
        },
    }
}

pub mod guests {
    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// One JSON array of domains (with --watch: one JSON object per change): domid, name,
        /// oomcount (whether it publishes), valid, invalid (the keys that did not parse: their
        /// values are null), kills, kills_memcg, kills_global, marked, events_dropped, verdict,
        /// reason, last_kill {time, age_s, pid, comm, constraint, cgroup}, mem_available_kb and
        /// the other vitals, updated_at, stale_s, seq.
        #[arg(long)]
        pub json: bool,
        /// Print a line for each change (a domain appears, publishes, or goes), from xenstore
        /// watches, until interrupted. dom0's own row is printed once, first (its changes:
        /// `oomcount watch`).
        #[arg(long)]
        pub watch: bool,
        #[command(flatten)]
        pub socket: super::SocketArg,
    }
}

pub mod status {
    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// Print one JSON object: `vitals` (mem_total_kb, mem_available_kb, swap_total_kb,
        /// swap_free_kb, psi: {some, full} each {avg10, avg60, avg300, total_us}, or null without
        /// PSI), `count` (the object `count --json` prints, or null) and `count_error` (why it is
        /// null), `verdict` (what `check --json` prints: health, reason, watchdog; null without a
        /// daemon).
        #[arg(long)]
        pub json: bool,
        #[command(flatten)]
        pub source: super::CountSource,
    }
}

pub mod top {
    /// What `oomcount top` counts kills by.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum By {
        /// The victim's memory cgroup, cut to `[metrics] cgroup_depth` levels.
        Cgroup,
        /// The victim's command name.
        Comm,
    }

    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// What to count kills by.
        #[arg(long, value_enum, default_value_t = By::Cgroup)]
        pub by: By,
        /// One JSON object: by, max_rows, cgroup_depth, rows (key, kills, last_kill, last_pid,
        /// last_comm), most kills first.
        #[arg(long)]
        pub json: bool,
        #[command(flatten)]
        pub socket: super::SocketArg,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes: Vec<u8> = check::EXIT_STATUS.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), check::EXIT_STATUS.len());
    }
}
