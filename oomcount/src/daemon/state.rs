//! The daemon's books, free of I/O: what it numbers, keeps and accounts for between the kernel's
//! records and the clients.
//!
//! The daemon's loop reads the ring buffer and the counters, and writes the slots, the stat
//! file and the sockets; everything it decides in between is here, as plain functions of what
//! it read, so that the sequence numbers, the accounting of lost events and the latch kept with
//! the pins are tested with tables (below) rather than only through a live daemon:
//!
//! - every event gets the next sequence number; events the kernel dropped while the ring buffer
//!   was full are noticed after it is emptied, reported once, and numbered into the sequence, so
//!   that gaps show to a watcher and the sequence goes on across daemons (kept with the pins);
//! - kills whose events were lost reach the rules anyway, from the kernel's split counters
//!   ([`Unseen`]), and once the ring buffer has failed every kill does;
//! - an unrecoverable verdict is kept with the pins as its wall-clock time in nanoseconds, never
//!   zero (zero is "none").
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use oomcount_common::{Event, counter};

use crate::{
    probe::{
        counters::Counters,
        event::{Clock, Kind, VictimEvent},
    },
    protocol::{CountReply, Source},
    watchdog::rules::{Kill, Unseen},
};

/// Events, numbers and losses, as the daemon keeps them.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The last events, for `list`.
    events: VecDeque<Arc<VictimEvent>>,
    capacity: usize,
    /// The last sequence number given (events, and dropped events counted in).
    seq: u64,
    /// Events, and kill events, this daemon received.
    received: u64,
    kills_received: u64,
    /// The kernel's `events_dropped` already reported.
    drops_seen: u64,
    /// Where kills that reach the daemon only as counts are read, and the reading last weighed.
    unseen: UnseenSource,
}

/// Kills the rules weigh without their events, as a (total, memcg, global) triple of kernel
/// counters: while events flow, the lost kill events; once the ring buffer has failed, every
/// kill (no event will come).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnseenSource {
    Dropped([u64; 3]),
    AllKills([u64; 3]),
}

impl UnseenSource {
    fn read(self, c: &Counters) -> [u64; 3] {
        match self {
            UnseenSource::Dropped(_) => [
                c.kill_events_dropped,
                c.kill_events_dropped_memcg,
                c.kill_events_dropped_global,
            ],
            UnseenSource::AllKills(_) => [c.kills, c.kills_memcg, c.kills_global],
        }
    }

    /// The kills counted since the last look, and the source moved past them.
    fn take(&mut self, c: &Counters) -> Unseen {
        let now = self.read(c);
        let (UnseenSource::Dropped(last) | UnseenSource::AllKills(last)) = self;
        let unseen = Unseen::between(*last, now);
        *last = now;
        unseen
    }
}

/// What a batch of events leaves to do, once the counters are read after it.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Settled {
    /// Kills counted by the kernel whose events were lost, for the rules.
    pub unseen: Vec<Kill>,
    /// Events the kernel dropped since the last batch, to report (and already numbered).
    pub dropped: Option<u64>,
}

impl Ledger {
    /// Books that go on from a previous daemon's sequence and reported drops (0 for none),
    /// weighing lost kills from the counters read at start (`None`: unreadable, from zero).
    pub(crate) fn new(
        capacity: usize,
        seq: u64,
        drops_seen: u64,
        start: Option<&Counters>,
    ) -> Self {
        let unseen = UnseenSource::Dropped([0; 3]);
        Self {
            events: VecDeque::with_capacity(capacity.min(64)),
            capacity,
            seq,
            received: 0,
            kills_received: 0,
            drops_seen,
            unseen: start.map_or(unseen, |c| UnseenSource::Dropped(unseen.read(c))),
        }
    }

    /// One event record from the kernel: numbered, decoded and kept; a kill is also returned as
    /// the rules see it. `None` for a record too short to be an event.
    pub(crate) fn receive(
        &mut self,
        record: &[u8],
        clock: &Clock,
    ) -> Option<(Arc<VictimEvent>, Option<Kill>)> {
        let raw = Event::from_bytes(record)?;
        self.seq += 1;
        self.received += 1;
        let event = Arc::new(VictimEvent::decode(&raw, self.seq, clock));
        let kill = (event.kind == Kind::Kill).then(|| {
            self.kills_received += 1;
            Kill {
                at: Duration::from_nanos(raw.ktime_ns),
                pid: event.pid,
                comm: event.comm.clone(),
                constraint: event.constraint,
                cgroup: event.cgroup.clone(),
            }
        });
        if self.capacity > 0 {
            if self.events.len() == self.capacity {
                self.events.pop_front();
            }
            self.events.push_back(event.clone());
        }
        Some((event, kill))
    }

    /// After a batch of events, with the counters read once the ring buffer was emptied: the
    /// lost kills for the rules (weighed `at`, CLOCK_MONOTONIC) and the drops to report,
    /// numbered into the sequence.
    pub(crate) fn settle(&mut self, counters: &Counters, at: Duration) -> Settled {
        let unseen = self.unseen.take(counters).kills(at).collect();
        let dropped = (counters.events_dropped > self.drops_seen).then(|| {
            let count = counters.events_dropped - self.drops_seen;
            self.drops_seen = counters.events_dropped;
            self.seq += count;
            count
        });
        Settled { unseen, dropped }
    }

    /// The kills to weigh now where no event comes (the ring buffer failed): at each keepalive
    /// and verdict. Nothing while events flow (the batches weigh them).
    pub(crate) fn weigh(&mut self, counters: &Counters, at: Duration) -> Vec<Kill> {
        match self.unseen {
            UnseenSource::AllKills(_) => self.unseen.take(counters).kills(at).collect(),
            UnseenSource::Dropped(_) => Vec::new(),
        }
    }

    /// The ring buffer cannot be read: the lost kills so far are returned for the rules, and
    /// from here on every kill the counters show is (no event will come).
    pub(crate) fn ring_failed(&mut self, counters: &Counters, at: Duration) -> Vec<Kill> {
        let lost = self.unseen.take(counters).kills(at).collect();
        self.unseen =
            UnseenSource::AllKills([counters.kills, counters.kills_memcg, counters.kills_global]);
        lost
    }

    /// The slots kept with the pins for the next daemon: the sequence and the drops reported.
    pub(crate) fn slots(&self) -> [(u32, u64); 2] {
        [
            (counter::SEQ, self.seq),
            (counter::DROPS_SEEN, self.drops_seen),
        ]
    }

    /// The last `n` events kept, oldest first.
    /// The newest kill in the history.
    pub(crate) fn last_kill(&self) -> Option<VictimEvent> {
        self.events
            .iter()
            .rev()
            .find(|e| e.kind == Kind::Kill)
            .map(|e| (**e).clone())
    }

    pub(crate) fn recent(&self, n: usize) -> Vec<VictimEvent> {
        let skip = self.events.len().saturating_sub(n);
        self.events
            .iter()
            .skip(skip)
            .map(|e| (**e).clone())
            .collect()
    }

    /// The daemon's answer to `count`.
    pub(crate) fn count_reply(
        &self,
        counters: &Counters,
        attached_at: SystemTime,
        kernel_oom_kill: Option<u64>,
    ) -> CountReply {
        CountReply::new(
            counters,
            attached_at,
            kernel_oom_kill,
            Source::Daemon,
            (self.received, self.kills_received),
        )
    }
}

/// An unrecoverable verdict's time as kept with the pins: nanoseconds since the epoch, never 0,
/// which means none.
pub(crate) fn latch_ns(at: SystemTime) -> u64 {
    let ns = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX).max(1)
}

/// The verdict kept with the pins, read back; `None` for none.
pub(crate) fn latched_at(ns: u64) -> Option<SystemTime> {
    (ns != 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use oomcount_common::{constraint, flags, kind};

    use super::*;
    use crate::probe::event::Constraint;

    fn record(k: u32, pid: u32, constraint: u16) -> Vec<u8> {
        let event = Event {
            kind: k,
            pid,
            flags: flags::CONSTRAINT,
            constraint,
            ktime_ns: 1_000_000_000 * u64::from(pid),
            ..Event::default()
        };
        event.as_bytes().to_vec()
    }

    fn counters(kills: u64, dropped: u64, kill_dropped: [u64; 3]) -> Counters {
        Counters {
            kills,
            marked: kills,
            events_dropped: dropped,
            kill_events_dropped: kill_dropped[0],
            kill_events_dropped_memcg: kill_dropped[1],
            kill_events_dropped_global: kill_dropped[2],
            ..Counters::default()
        }
    }

    #[test]
    fn events_are_numbered_on_from_the_previous_daemon_and_kills_go_to_the_rules() {
        let clock = Clock::now();
        let mut ledger = Ledger::new(2, 41, 0, None);
        let rows = [
            (
                kind::KILL,
                1,
                constraint::MEMCG,
                42,
                Some(Constraint::Memcg),
            ),
            (kind::MARK, 2, constraint::MEMCG, 43, None),
            (
                kind::KILL,
                3,
                constraint::NONE,
                44,
                Some(Constraint::Global),
            ),
        ];
        for (k, pid, c, seq, kill) in rows {
            let (event, to_rules) = ledger.receive(&record(k, pid, c), &clock).unwrap();
            assert_eq!(event.seq, seq, "pid {pid}");
            assert_eq!(to_rules.map(|k| k.constraint.unwrap()), kill, "pid {pid}");
        }
        assert!(ledger.receive(&[0; 8], &clock).is_none(), "a short record");
        assert_eq!(ledger.slots()[0], (counter::SEQ, 44));
        // Capacity 2: the oldest went.
        let kept: Vec<u32> = ledger.recent(10).iter().map(|e| e.pid).collect();
        assert_eq!(kept, [2, 3]);
        assert_eq!(ledger.recent(1)[0].pid, 3);
        let reply = ledger.count_reply(&counters(2, 0, [0; 3]), UNIX_EPOCH, None);
        assert_eq!((reply.events_received, reply.kill_events_received), (3, 2));
        assert_eq!(reply.source, Source::Daemon);
    }

    #[test]
    fn drops_are_reported_once_and_numbered_into_the_sequence() {
        // (kernel events_dropped after a batch, drops reported, sequence after)
        let rows = [
            (0, None, 10),
            (5, Some(5), 15),
            (5, None, 15),
            (7, Some(2), 17),
        ];
        let mut ledger = Ledger::new(0, 10, 0, None);
        for (dropped, reported, seq) in rows {
            let settled = ledger.settle(&counters(0, dropped, [0; 3]), Duration::ZERO);
            assert_eq!(settled.dropped, reported, "events_dropped {dropped}");
            assert_eq!(
                ledger.slots(),
                [(counter::SEQ, seq), (counter::DROPS_SEEN, dropped)]
            );
        }
        // A daemon that goes on from pins where 7 were already reported reports none of them.
        let mut next = Ledger::new(0, 17, 7, None);
        assert_eq!(
            next.settle(&counters(0, 7, [0; 3]), Duration::ZERO).dropped,
            None
        );
    }

    #[test]
    fn lost_kills_reach_the_rules_from_the_kernels_split_counts() {
        let at = Duration::from_secs(9);
        // Two lost kill events already there when the daemon started: not weighed again.
        let mut ledger = Ledger::new(0, 0, 0, Some(&counters(2, 2, [2, 1, 1])));
        let constraints = |kills: &[Kill]| -> Vec<Option<Constraint>> {
            kills.iter().map(|k| k.constraint).collect()
        };
        // (lost kill events: total, memcg, global) -> the kills weighed
        let rows: [([u64; 3], Vec<Option<Constraint>>); 3] = [
            ([2, 1, 1], vec![]),
            // Three more: one memcg, none global, two the kernel could not split.
            ([5, 2, 1], vec![Some(Constraint::Memcg), None, None]),
            ([6, 2, 2], vec![Some(Constraint::Global)]),
        ];
        for (lost, weighed) in rows {
            let settled = ledger.settle(&counters(lost[0], lost[0], lost), at);
            assert_eq!(constraints(&settled.unseen), weighed, "{lost:?}");
            assert!(
                settled
                    .unseen
                    .iter()
                    .all(|k| k.at == at && k.comm.is_none())
            );
        }
        // While events flow, the keepalive weighs nothing: the batches do.
        assert!(ledger.weigh(&counters(9, 6, [6, 2, 2]), at).is_empty());
    }

    #[test]
    fn once_the_ring_buffer_fails_every_kill_is_weighed_from_the_counts() {
        let at = Duration::from_secs(1);
        let mut ledger = Ledger::new(0, 0, 0, Some(&counters(0, 0, [0; 3])));
        // One lost kill event not yet weighed when the ring buffer fails: weighed then.
        let mut c = counters(4, 1, [1, 1, 0]);
        c.kills_memcg = 3;
        c.kills_global = 1;
        let lost = ledger.ring_failed(&c, at);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].constraint, Some(Constraint::Memcg));
        // From here, every new kill: two memcg, one global, one of unknown constraint.
        let mut later = c;
        later.kills = 8;
        later.kills_memcg = 5;
        later.kills_global = 2;
        let kills = ledger.weigh(&later, at);
        let memcg = kills
            .iter()
            .filter(|k| k.constraint == Some(Constraint::Memcg))
            .count();
        assert_eq!((kills.len(), memcg), (4, 2));
        assert!(ledger.weigh(&later, at).is_empty(), "weighed once");
    }

    #[test]
    fn the_latch_is_kept_as_nanoseconds_never_zero() {
        let rows = [
            (UNIX_EPOCH, 1),
            (UNIX_EPOCH - Duration::from_secs(5), 1),
            (
                UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123),
                1_764_000_000_123,
            ),
        ];
        for (at, ns) in rows {
            assert_eq!(latch_ns(at), ns, "{at:?}");
        }
        assert_eq!(latched_at(0), None);
        let at = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        assert_eq!(latched_at(latch_ns(at)), Some(at));
    }
}
