//! `oomcount status`: the machine's memory vitals and the OOM kills counted, in one look.
//!
//! The vitals come from /proc, so `status` answers without a daemon; the count comes from the
//! daemon (or its pins, as `count` reads them). A missing daemon is then said in the count's
//! place rather than failing the whole status: the vitals are worth having on their own. A daemon
//! that runs but does not answer (it hangs up, answers garbage or an error, or not in time) is
//! another thing: `status` then prints nothing and fails with one line, since a status without
//! its verdict would pass for one without a daemon.
use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use oomcount::{
    host::vitals::{self, MemoryPsi, Psi, Vitals},
    protocol::{Client, ClientError, CountReply, Request, Response, Source, VerdictReply},
};

pub use oomcount_args::status::Args;

/// What `oomcount status --json` prints.
#[derive(Debug, Serialize)]
struct Status {
    vitals: Vitals,
    /// The count from the daemon, or from the pins without one.
    count: Option<CountReply>,
    /// Why `count` is null.
    #[serde(skip_serializing_if = "Option::is_none")]
    count_error: Option<String>,
    /// The rules' verdict and the keepalive's state (what `check --json` prints), from the
    /// daemon; null without one.
    verdict: Option<VerdictReply>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let vitals = vitals::read().context("read the memory vitals")?;
    let status = match ask(&args.source)? {
        Some((count, verdict)) => Status {
            vitals,
            count: Some(count),
            count_error: None,
            verdict: Some(verdict),
        },
        // No daemon: the pins may still know the count; only a daemon judges.
        None => {
            let pinned = super::count::from_pins(&args.source.pin_dir);
            let count_error = pinned
                .is_none()
                .then(|| ClientError::NotRunning(args.source.socket.socket.clone()).to_string());
            Status {
                vitals,
                count: pinned,
                count_error,
                verdict: None,
            }
        }
    };
    Ok(super::print(args.json, &status, human)?)
}

/// The count and the verdict, from the daemon on one connection; `None` when no daemon runs.
/// Anything short of both answers from a running daemon is an error.
fn ask(source: &super::CountSource) -> anyhow::Result<Option<(CountReply, VerdictReply)>> {
    let socket = &source.socket.socket;
    let mut client = match Client::connect(socket) {
        Ok(client) => client,
        Err(ClientError::NotRunning(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let wrong = |request: &str, other: Response| {
        anyhow::anyhow!(
            "the daemon at {} answered a {} response to a {request} request (is it an oomcount daemon of this version?)",
            socket.display(),
            other.kind()
        )
    };
    let count = match client.call(&Request::Count)? {
        Response::Count(count) => count,
        other => return Err(wrong("count", other)),
    };
    let verdict = match client.call(&Request::Verdict)? {
        Response::Verdict(verdict) => verdict,
        other => return Err(wrong("verdict", other)),
    };
    Ok(Some((count, verdict)))
}

fn human(status: &Status) -> String {
    let v = &status.vitals;
    let mut text = match v.mem_available_kb {
        Some(available) => format!(
            "memory     {} available of {} ({}%)\n",
            mib(available),
            mib(v.mem_total_kb),
            percent(available, v.mem_total_kb)
        ),
        None => format!(
            "memory     {} (MemAvailable unknown before Linux 3.14)\n",
            mib(v.mem_total_kb)
        ),
    };
    if v.swap_total_kb == 0 {
        text.push_str("swap       none\n");
    } else {
        let _ = writeln!(
            text,
            "swap       {} free of {} ({}%)",
            mib(v.swap_free_kb),
            mib(v.swap_total_kb),
            percent(v.swap_free_kb, v.swap_total_kb)
        );
    }
    match &v.psi {
        Some(MemoryPsi { some, full }) => {
            let _ = writeln!(text, "pressure   some {}", psi(some));
            match full {
                Some(full) => {
                    let _ = writeln!(text, "           full {}", psi(full));
                }
                None => text.push_str("           full (not reported by this kernel)\n"),
            }
        }
        None => text.push_str("pressure   unknown (no PSI: Linux 4.20+ with psi enabled)\n"),
    }
    match (&status.count, &status.count_error) {
        (Some(c), _) => {
            let kernel = c
                .kernel_oom_kill
                .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
            let source = if c.source == Source::Pins {
                "the pinned counters, no daemon running"
            } else {
                "the daemon"
            };
            let _ = writeln!(
                text,
                "oom kills  {} since {} ({} by a cgroup limit, {} global; from {source})\n\
                 \x20          kernel oom_kill {kernel} since boot",
                c.kills, c.attached_at, c.kills_memcg, c.kills_global
            );
        }
        (None, error) => {
            let _ = writeln!(
                text,
                "oom kills  unknown: {}",
                error.as_deref().unwrap_or("no answer")
            );
        }
    }
    if let Some(verdict) = &status.verdict {
        let _ = match verdict.health {
            oomcount::watchdog::rules::Health::Healthy => writeln!(text, "verdict    healthy"),
            _ => writeln!(text, "verdict    {}: {}", verdict.health, verdict.reason),
        };
        let _ = writeln!(text, "watchdog   {}", verdict.watchdog);
    }
    text
}

fn mib(kb: u64) -> String {
    format!("{} MiB", kb / 1024)
}

fn percent(part: u64, whole: u64) -> u64 {
    (part * 100).checked_div(whole).unwrap_or(0)
}

fn psi(p: &Psi) -> String {
    format!(
        "avg10 {:.2}%  avg60 {:.2}%  avg300 {:.2}%  total {:.1} s",
        p.avg10,
        p.avg60,
        p.avg300,
        p.total_us as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vitals() -> Vitals {
        Vitals {
            mem_total_kb: 24_683_520,
            mem_available_kb: Some(24_183_456),
            swap_total_kb: 0,
            swap_free_kb: 0,
            psi: Some(MemoryPsi {
                some: Psi {
                    avg10: 1.5,
                    avg60: 0.25,
                    avg300: 0.0,
                    total_us: 176_388_169,
                },
                full: None,
            }),
        }
    }

    #[test]
    fn human_output_without_a_daemon() {
        let text = human(&Status {
            vitals: vitals(),
            count: None,
            count_error: Some("no oomcount daemon is running on /x".into()),
            verdict: None,
        });
        assert_eq!(
            text,
            "memory     23616 MiB available of 24105 MiB (97%)\n\
             swap       none\n\
             pressure   some avg10 1.50%  avg60 0.25%  avg300 0.00%  total 176.4 s\n\
             \x20          full (not reported by this kernel)\n\
             oom kills  unknown: no oomcount daemon is running on /x\n"
        );
    }

    #[test]
    fn human_output_with_the_count() {
        let text = human(&Status {
            vitals: Vitals {
                psi: None,
                swap_total_kb: 2048,
                swap_free_kb: 1024,
                ..vitals()
            },
            count: Some(CountReply {
                kills: 5,
                marked: 5,
                kills_memcg: 5,
                kills_global: 0,
                events_dropped: 0,
                kill_events_dropped: 0,
                oom_signals: 0,
                hooks_run: None,
                hooks_skipped: None,
                events_received: 0,
                kill_events_received: 0,
                attached_at: "2026-11-26T06:12:48Z".into(),
                kernel_oom_kill: Some(33552),
                source: Source::Pins,
            }),
            count_error: None,
            verdict: Some(VerdictReply {
                health: oomcount::watchdog::rules::Health::Degraded,
                reason: "memcg OOM kill of hog (pid 7) 3s ago; healthy after 10m without one"
                    .into(),
                watchdog: oomcount::watchdog::keeper::KeeperState {
                    device: Some("/dev/watchdog".into()),
                    identity: Some("Software Watchdog".into()),
                    timeout_secs: Some(60),
                    interval_ms: Some(10_000),
                    dry_run: false,
                    systemd: false,
                    pinging: true,
                    keepalives: 42,
                    last_keepalive: Some("2026-11-26T06:13:00.000Z".into()),
                },
            }),
        });
        assert!(
            text.ends_with(
                "verdict    degraded: memcg OOM kill of hog (pid 7) 3s ago; healthy after 10m without one\n\
                 watchdog   /dev/watchdog (Software Watchdog) timeout 60s, every 10s, 42 keepalives, last at 2026-11-26T06:13:00.000Z\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("swap       1 MiB free of 2 MiB (50%)\n"),
            "{text}"
        );
        assert!(text.contains("pressure   unknown"), "{text}");
        assert!(
            text.contains(
                "oom kills  5 since 2026-11-26T06:12:48Z (5 by a cgroup limit, 0 global; from the pinned counters, no daemon running)\n\
                 \x20          kernel oom_kill 33552 since boot\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_has_vitals_count_and_why_not() {
        let status = Status {
            vitals: Vitals {
                psi: None,
                ..vitals()
            },
            count: None,
            count_error: Some("no daemon".into()),
            verdict: None,
        };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"vitals":{"mem_total_kb":24683520,"mem_available_kb":24183456,"swap_total_kb":0,"swap_free_kb":0,"psi":null},"count":null,"count_error":"no daemon","verdict":null}"#
        );
    }
}
