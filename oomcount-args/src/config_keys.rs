//! Every key of the configuration file, with its default as TOML and what it does.
//!
//! One table for the commented `/etc/oomcount/oomcount.toml` the package ships and for the
//! oomcount.toml(5) man page, both written by xtask. The parser is the library's
//! (`oomcount::config`); its tests hold this table to it, so that neither can drift: every key
//! here is one the parser accepts, every key it accepts is here, and the shipped file,
//! uncommented, parses to the defaults.

/// One key of one table.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    /// The default as a TOML value; `None` where the default is no value (`timeout`: the
    /// driver's own), and then [`Key::example`] is what the shipped file shows.
    pub default: Option<&'static str>,
    /// A value to show where there is no default.
    pub example: &'static str,
    /// What it does, in one line.
    pub doc: &'static str,
}

/// One table (`[watchdog]`, `[rules]`, `[hooks]`, `[metrics]`).
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub doc: &'static str,
    pub keys: &'static [Key],
}

const fn key(name: &'static str, default: &'static str, doc: &'static str) -> Key {
    Key {
        name,
        default: Some(default),
        example: default,
        doc,
    }
}

pub const TABLES: &[Table] = &[
    Table {
        name: "watchdog",
        doc: "The watchdog device the daemon keeps alive while OOM activity is recoverable. \
Without this table no device is opened; with it (even empty), /dev/watchdog is.",
        keys: &[
            key(
                "device",
                "\"/dev/watchdog\"",
                "The device to keep alive; \"\" for none (the verdict is still served to `oomcount check` and systemd).",
            ),
            Key {
                name: "timeout",
                default: None,
                example: "\"60s\"",
                doc: "The watchdog's timeout, set with WDIOC_SETTIMEOUT (whole seconds); unset: the driver's own.",
            },
            key(
                "interval",
                "\"10s\"",
                "Time between keepalives, at least 100ms and below the timeout.",
            ),
            key(
                "nowayout",
                "false",
                "Never disarm the device with the magic 'V', so that stopping the daemon cannot disarm the watchdog.",
            ),
            key(
                "realtime",
                "false",
                "Run the daemon at SCHED_FIFO priority 1, as watchdog(8) does, so that keepalives are not delayed.",
            ),
        ],
    },
    Table {
        name: "rules",
        doc: "When OOM activity stops being recoverable (the verdict `oomcount check` returns and the pinger acts on).",
        keys: &[
            key(
                "max_kills",
                "3",
                "More kills than this within `window` is unrecoverable.",
            ),
            key("window", "\"5m\"", "The window `max_kills` counts in."),
            key(
                "constraint",
                "\"global\"",
                "Which kills `max_kills` counts: global, memcg, cpuset, mempolicy or any.",
            ),
            key(
                "critical",
                "[]",
                "One kill of a process matching one of these is unrecoverable: NAME (comm), \"cgroup:/PATH\" or \"unit:NAME.service\".",
            ),
            key(
                "critical_top",
                "0",
                "Degraded while a critical process is among this many likely next victims (by oom_score); 0 for off.",
            ),
            key(
                "quiet",
                "\"10m\"",
                "How long after the last kill or strain things stay degraded.",
            ),
            key(
                "mem_available_min",
                "\"32MiB\"",
                "Degraded below this MemAvailable; 0 for off.",
            ),
            key(
                "psi_full_avg10_max",
                "60.0",
                "Degraded above this share of time (%) in which every task stalled on memory; 100 for off.",
            ),
        ],
    },
    Table {
        name: "hooks",
        doc: "Programs run for each OOM kill and each change of verdict, never through a shell: the event is in their \
environment (OOMCOUNT_PID, OOMCOUNT_COMM, ..., OOMCOUNT_EVENT as JSON), never in their arguments.",
        keys: &[
            Key {
                name: "on_kill",
                default: None,
                example: "[\"/usr/bin/logger\", \"-t\", \"oomcount-hook\", \"an OOM kill\"]",
                doc: "The program (an absolute path) and its arguments, run for each kill.",
            },
            Key {
                name: "on_verdict",
                default: None,
                example: "[\"/usr/bin/logger\", \"-t\", \"oomcount-hook\", \"the verdict changed\"]",
                doc: "The program and its arguments, run for each change of health (OOMCOUNT_HEALTH, OOMCOUNT_PREVIOUS).",
            },
            key(
                "user",
                "\"nobody\"",
                "The user hooks run as (a name or a numeric uid), without capabilities.",
            ),
            key(
                "max_running",
                "2",
                "Hooks running at once, at most; a kill that finds them busy waits in one slot, replaced by a newer one (counted as skipped).",
            ),
            key(
                "timeout",
                "\"10s\"",
                "A hook still running after this is killed with its process group.",
            ),
        ],
    },
    Table {
        name: "xenstore",
        doc: "On a Xen guest: the counts, verdict, last kill and vitals in the guest's xenstore home (data/oomcount/), \
for dom0's `oomcount guests`.",
        keys: &[
            key(
                "mode",
                "\"auto\"",
                "\"auto\": where /proc/xen or /dev/xen/xenbus shows a Xen guest (not dom0); \"on\": a missing xenstore stops the daemon; \"off\".",
            ),
            key(
                "interval",
                "\"10s\"",
                "Time between two publications of the vitals, at least 1s; kills and verdict changes go as they happen.",
            ),
        ],
    },
    Table {
        name: "metrics",
        doc: "Prometheus's text format, each output off unless set: a textfile for node_exporter's textfile \
collector and GET /metrics on a port (the unit's drop-in opens the network for it).",
        keys: &[
            Key {
                name: "textfile",
                default: None,
                example: "\"/var/lib/prometheus/node-exporter/oomcount.prom\"",
                doc: "A *.prom file in an existing folder, rewritten after each batch of events and each change of verdict.",
            },
            Key {
                name: "listen",
                default: None,
                example: "\"127.0.0.1:10066\"",
                doc: "IP:PORT (an IP alone: port 10066) where GET /metrics is served; no host names.",
            },
            key(
                "by_cgroup",
                "false",
                "Publish oomcount_cgroup_oom_kills_total{cgroup}.",
            ),
            key(
                "by_comm",
                "false",
                "Publish oomcount_comm_oom_kills_total{comm}.",
            ),
            key(
                "max_series",
                "64",
                "Series of their own per key (1 to 1000); kills of later keys count in _other.",
            ),
            key(
                "cgroup_depth",
                "3",
                "The levels of a victim's cgroup path kept (0 to 8).",
            ),
        ],
    },
];

/// The configuration file the package ships: every table and key commented out, each key with
/// its default (or an example where the default is no value) and what it does, so that the file
/// as shipped changes nothing.
pub fn commented_file() -> String {
    let mut text = String::from(
        "# oomcount's configuration: read by `oomcount daemon` at start; check it with\n\
         # `oomcount config check`, then `systemctl restart oomcount`. See oomcount.toml(5).\n\
         # Every key is commented out with its default: this file as shipped changes nothing.\n",
    );
    for table in TABLES {
        text.push_str(&format!("\n# {}\n#[{}]\n", table.doc, table.name));
        for key in table.keys {
            let note = if key.default.is_none() {
                " (no default; an example)"
            } else {
                ""
            };
            text.push_str(&format!(
                "# {}{note}\n#{} = {}\n",
                key.doc, key.name, key.example
            ));
        }
    }
    text
}

/// [`commented_file`] with every table and every key that has a default uncommented: what the
/// tests parse, expecting the defaults (and the `[watchdog]` table present).
pub fn uncommented_defaults() -> String {
    let mut text = String::new();
    for table in TABLES {
        text.push_str(&format!("[{}]\n", table.name));
        for key in table.keys {
            if let Some(default) = key.default {
                text.push_str(&format!("{} = {default}\n", key.name));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_sets_nothing() {
        for line in commented_file().lines() {
            assert!(line.is_empty() || line.starts_with('#'), "{line}");
        }
    }

    #[test]
    fn every_key_appears_with_its_doc() {
        let text = commented_file();
        for table in TABLES {
            assert!(text.contains(&format!("#[{}]", table.name)));
            for key in table.keys {
                assert!(text.contains(&format!("#{} = {}", key.name, key.example)));
                assert!(!key.doc.contains('\n'), "{}: one line", key.name);
            }
        }
    }
}
