//! A storm of over a thousand kills, with a watcher: the daemon's event counts must account for
//! every event exactly (received + dropped = the kernel program's counts), the watcher must get
//! every event the daemon received (or be told how many it missed), and every kill event must
//! still say what the kernel's "Killed process" line says of its victim.
use std::collections::HashMap;

use oomcount_integration_test::{
    Daemon, Event, EventCounts, Layout, Watch, WatchClient, events,
    events::{KillOracle, Line, Paused},
    producer, require_root,
    storm::StormGroups,
};

const PRODUCERS: u64 = 4;
const KILLS_EACH: u64 = 250;

#[test]
fn a_storm_of_kill_events_is_accounted_for_exactly() {
    require_root();
    let layout = Layout::of_this_kernel();
    let daemon = Daemon::start();
    let groups = StormGroups::new("events-storm", PRODUCERS);
    let paths = groups.paths();
    let oracle = KillOracle::start(layout);
    let watch = WatchClient::start(&daemon);
    let kernel = Watch::new(Some(&daemon));
    let counted = groups.run_counted(&kernel, KILLS_EACH, "events storm");
    let kills = counted.kills;
    let end = EventCounts::wait_settled(&daemon, "every event received or dropped", |_| true);
    let delta = end.since(&watch.baseline());
    println!("events storm: event counts {delta:?}");

    // The daemon's accounting: every event sent was received or dropped, kills and all.
    delta.assert_accounted(true);
    assert!(
        delta.kill_events_dropped <= delta.events_dropped,
        "kill events dropped are among the events dropped: {delta:?}"
    );

    // The watcher: every event the daemon received, or a `dropped` line by `watcher` for each
    // one it missed.
    let lines = watch_until_complete(&watch, 0, delta.events_received);
    let events: Vec<Event> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Event(e) => Some((**e).clone()),
            _ => None,
        })
        .collect();
    let by = |who: &str| -> u64 {
        lines
            .iter()
            .map(|l| match l {
                Line::Dropped { count, by } if by == who => *count,
                _ => 0,
            })
            .sum()
    };
    let (watcher_dropped, kernel_dropped) = (by("watcher"), by("kernel"));
    let kill_lines = events.iter().filter(|e| e.is_kill()).count() as u64;
    println!(
        "watcher: {} events ({kill_lines} kills), dropped lines: kernel {kernel_dropped}, watcher {watcher_dropped}",
        events.len()
    );
    if watcher_dropped == 0 {
        assert_eq!(
            kill_lines, delta.kill_events_received,
            "the watcher's kill lines against kill_events_received"
        );
        assert_eq!(
            events.len() as u64,
            delta.events_received,
            "the watcher's events against events_received"
        );
        assert_eq!(
            kernel_dropped, delta.events_dropped,
            "the watcher's `dropped by kernel` lines against events_dropped"
        );
    } else {
        assert!(
            kill_lines <= delta.kill_events_received
                && kill_lines + watcher_dropped >= delta.kill_events_received,
            "the watcher's {kill_lines} kill lines and {watcher_dropped} missed events against kill_events_received {}",
            delta.kill_events_received
        );
    }
    events::assert_seq_increasing(&events);
    if delta.events_dropped == 0 && watcher_dropped == 0 {
        for pair in events.windows(2) {
            assert_eq!(
                pair[1].seq,
                pair[0].seq + 1,
                "without drops seq has no gaps: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    // Every kill event of the storm: in one of its groups, the limit its own, the victim the
    // allocating child itself, and the kernel's line for it agreeing field by field. (Other
    // kills on this machine may be in the stream too: the storm's are those in its groups, or
    // where the kernel has no BTF for cgroups, those of its comm.)
    let storm: Vec<&Event> = events
        .iter()
        .filter(|e| e.is_kill())
        .filter(|e| match &e.cgroup {
            Some(cgroup) => paths.contains(cgroup),
            None => !layout.btf && e.comm.as_deref() == Some("oomcount-hog"),
        })
        .collect();
    if delta.kill_events_dropped == 0 && watcher_dropped == 0 {
        assert_eq!(storm.len() as u64, kills, "one kill event per storm victim");
    }
    let lost = oracle.kmsg().lost();
    let mut lines_of: HashMap<u32, Vec<_>> = HashMap::new();
    for line in oracle.kmsg().kills() {
        lines_of.entry(line.pid).or_default().push(line);
    }
    let mut records_of: HashMap<u32, Vec<_>> = HashMap::new();
    for record in oracle.records() {
        records_of.entry(record.pid).or_default().push(record);
    }
    let (mut compared, mut notes) = (0, Vec::new());
    for event in &storm {
        if let Some(cgroup) = &event.cgroup {
            assert_eq!(event.oom_cgroup.as_ref(), Some(cgroup), "{event:?}");
            assert_eq!(event.oom_cgroup_id, event.cgroup_id, "{event:?}");
            assert_eq!(event.constraint.as_deref(), Some("memcg"), "{event:?}");
            assert_eq!(event.tgid, Some(event.pid), "{event:?}");
        }
        assert_eq!(
            (event.trigger_pid, event.again),
            (event.pid, None),
            "a storm child allocates itself into its OOM: {event:?}"
        );
        match lines_of.get(&event.pid) {
            // A pid may have been used again since (the VM guests' pid_max is 32768): the
            // event must agree with one of the kernel's lines and records for it.
            Some(lines) => {
                let records = records_of.get(&event.pid).cloned().unwrap_or_default();
                let candidates: Vec<Option<_>> = if records.is_empty() {
                    vec![None]
                } else {
                    records.iter().map(Some).collect()
                };
                let comparisons: Vec<_> = lines
                    .iter()
                    .flat_map(|line| {
                        candidates.iter().map(move |r| {
                            (line, *r, events::compare_kill(event, line, *r, &layout))
                        })
                    })
                    .collect();
                match comparisons.iter().find(|(.., c)| c.mismatches.is_empty()) {
                    Some((.., c)) => notes.extend(c.notes.iter().cloned()),
                    None => {
                        let (line, record, c) = &comparisons[0];
                        panic!(
                            "the kill event differs from the kernel's account ({}):\n  {}\nevent:  {event:?}\nkernel: {line:?}\nrecord: {record:?}",
                            layout.describe(),
                            c.mismatches.join("\n  ")
                        );
                    }
                }
                compared += 1;
            }
            None if lost > 0 => {}
            None => panic!(
                "no Killed process line for pid {} though /dev/kmsg lost nothing: {event:?}",
                event.pid
            ),
        }
    }
    println!(
        "{compared} of {} storm kill events compared with the kernel's lines ({lost} kmsg overruns; {})",
        storm.len(),
        layout.describe()
    );
    if !notes.is_empty() {
        eprintln!(
            "NOTE: in {} fields of the storm's kills the kernel's mark_victim record and its Killed process line differ (approximate vs exact RSS); the first: {}",
            notes.len(),
            notes[0]
        );
    }
}

/// The watcher's lines after the first `skip`, once it has every one of the `received` events
/// the daemon received since, or a `dropped` line by `watcher` for each it missed.
fn watch_until_complete(watch: &WatchClient, skip: usize, received: u64) -> Vec<Line> {
    oomcount_integration_test::wait_until(
        oomcount_integration_test::deadline(std::time::Duration::from_secs(20)),
        "the watcher to get every event the daemon received",
        || {
            let lines: Vec<Line> = watch.lines().into_iter().skip(skip).collect();
            let got: u64 = lines
                .iter()
                .map(|l| match l {
                    Line::Event(_) => 1,
                    Line::Dropped { count, by } if by == "watcher" => *count,
                    _ => 0,
                })
                .sum();
            if got >= received {
                Ok(lines)
            } else {
                Err(format!("{got} of {received}"))
            }
        },
    )
}

/// Kills per producer while the daemon is stopped: 4 x 100 events overflow the ring buffer's 112.
const PAUSED_DAEMON_EACH: u64 = 100;
/// Kills per producer while the watcher is stopped: more than the daemon queues for a watcher
/// (256) and its socket holds.
const PAUSED_WATCHER_EACH: u64 = 200;

/// Sums the `dropped` lines by `who` and counts the events (all, and kills) among `lines`.
fn tally(lines: &[Line], who: &str) -> (u64, u64, u64) {
    let dropped = lines
        .iter()
        .map(|l| match l {
            Line::Dropped { count, by } if by == who => *count,
            _ => 0,
        })
        .sum();
    let events = lines.iter().filter(|l| matches!(l, Line::Event(_))).count() as u64;
    let kills = lines
        .iter()
        .filter(|l| matches!(l, Line::Event(e) if e.is_kill()))
        .count() as u64;
    (dropped, events, kills)
}

#[test]
fn events_lost_while_the_daemon_or_the_watcher_is_stopped_are_accounted_for() {
    require_root();
    let daemon = Daemon::start();
    let storm = StormGroups::new("events-drops", PRODUCERS);
    let groups = &storm.groups[..];
    let watch = WatchClient::start(&daemon);
    let kernel = Watch::new(Some(&daemon));

    // The daemon stopped: the kernel program counts every kill, and the events that do not fit
    // in the ring buffer are counted as dropped, kills among them.
    let paused = Paused::stop(daemon.pid(), "the daemon");
    let kills = producer::storm(groups, PAUSED_DAEMON_EACH);
    drop(paused);
    let d = kernel.settle(
        "the daemon to count the kills made while it was stopped",
        |d| d.kills() >= kills,
    );
    let end = EventCounts::wait_settled(&daemon, "every event received or dropped", |_| true);
    let delta = end.since(&watch.baseline());
    println!(
        "{}; event counts {delta:?}",
        d.summary("daemon stopped", None)
    );
    assert_eq!(
        (d.vmstat, d.kills()),
        (kills, kills),
        "the kernel's and the daemon's kills (another OOM on this machine?)"
    );
    assert!(
        delta.events_dropped > 0,
        "{kills} events while the daemon was stopped should overflow the ring buffer: {delta:?}"
    );
    delta.assert_accounted(true);
    if delta.marked == delta.kills {
        assert_eq!(
            delta.kill_events_dropped, delta.events_dropped,
            "every event was a kill's, so every dropped one too"
        );
    }
    let lines = oomcount_integration_test::wait_until(
        oomcount_integration_test::deadline(std::time::Duration::from_secs(20)),
        "the watcher to get the events and the kernel's drops",
        || {
            let lines = watch.lines();
            let (dropped, events, _) = tally(&lines, "kernel");
            if events >= delta.events_received && dropped >= delta.events_dropped {
                Ok(lines)
            } else {
                Err((events, dropped))
            }
        },
    );
    let (kernel_dropped, events, kill_lines) = tally(&lines, "kernel");
    let (watcher_dropped, ..) = tally(&lines, "watcher");
    println!(
        "watcher: {events} events ({kill_lines} kills), dropped: kernel {kernel_dropped}, watcher {watcher_dropped}"
    );
    assert_eq!(watcher_dropped, 0, "the watcher was not stopped");
    assert_eq!(
        (events, kill_lines, kernel_dropped),
        (
            delta.events_received,
            delta.kill_events_received,
            delta.events_dropped
        ),
        "the watcher's events, kill lines and `dropped by kernel` lines against the counts"
    );
    events::assert_seq_increasing(&watch.events());

    // The watcher stopped: the daemon goes on, and tells it how many events it missed.
    let skip = lines.len();
    let before = end;
    let paused = watch.pause();
    let kernel = Watch::new(Some(&daemon));
    let kills = producer::storm(groups, PAUSED_WATCHER_EACH);
    let d = kernel.settle("the daemon to count the storm", |d| d.kills() >= kills);
    assert_eq!(
        (d.vmstat, d.kills()),
        (kills, kills),
        "the kernel's and the daemon's kills (another OOM on this machine?): {d:?}"
    );
    let end = EventCounts::wait_settled(&daemon, "the daemon to receive the storm", |c| {
        c.kills >= before.kills + kills
    });
    drop(paused);
    let delta = end.since(&before);
    let lines = watch_until_complete(&watch, skip, delta.events_received);
    let (watcher_dropped, events, kill_lines) = tally(&lines, "watcher");
    println!(
        "watcher stopped for {kills} kills: counts {delta:?}; it got {events} events ({kill_lines} kills) and was told of {watcher_dropped} missed"
    );
    delta.assert_accounted(false);
    assert!(
        kill_lines <= delta.kill_events_received
            && kill_lines + watcher_dropped >= delta.kill_events_received,
        "the watcher's {kill_lines} kill lines and {watcher_dropped} missed events against kill_events_received {}",
        delta.kill_events_received
    );
    if watcher_dropped == 0 {
        eprintln!(
            "NOTE: the stopped watcher missed nothing ({kills} events fit in its queue and socket)"
        );
        assert_eq!(kill_lines, delta.kill_events_received);
    }
    events::assert_seq_increasing(&watch.events());
}
