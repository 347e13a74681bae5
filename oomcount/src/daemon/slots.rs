//! Who may hold the daemon's connections: a fixed number, shared out by the peer's uid so that
//! no local user can take them all.
//!
//! The socket is world-writable (anyone may count, list and watch), and each connection costs
//! the daemon a task and a few KiB, so connections are limited. A single limit for everyone let
//! any user hold every slot with sixteen idle connections: root's `oomcount check` (watchdog(8)'s
//! test) then got no answer, which watchdog(8) answers with a reboot. So the slots are counted
//! per uid, the uid the kernel recorded when the peer connected (`SO_PEERCRED`, which a client
//! cannot forge):
//!
//! - root has [`ROOT_SLOTS`] of its own, which no other user can take;
//! - the other users share [`USER_SLOTS`], at most [`PER_UID`] each.
//!
//! A connection over its limit is accepted (its uid is known only then), answered with one
//! error line that says what to do, and closed. Refusals are logged once per
//! [`REFUSALS_LOGGED_EVERY`] with a count ([`RefusalLog`]), so that a flood of connections
//! cannot flood the journal too (its rate limit would drop the kill and verdict lines).
use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Connections root may hold at once: watchdog(8)'s test, systemd's, an administrator's.
pub(crate) const ROOT_SLOTS: usize = 16;
/// Connections all other users together may hold at once.
pub(crate) const USER_SLOTS: usize = 32;
/// Connections one user other than root may hold at once.
pub(crate) const PER_UID: usize = 8;
/// The longest span between two log lines about refused connections.
pub(crate) const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Root holds all of its own slots.
    Root,
    /// This user holds [`PER_UID`] connections.
    Uid(u32),
    /// The users other than root hold all of theirs.
    Users,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Root => write!(
                f,
                "root already holds {ROOT_SLOTS} connections to the daemon, its most: close one and try again"
            ),
            Refusal::Uid(uid) => write!(
                f,
                "uid {uid} already holds {PER_UID} connections to the daemon, the most one user may hold: close one and try again"
            ),
            Refusal::Users => write!(
                f,
                "users other than root already hold {USER_SLOTS} connections to the daemon, their most: try again later, or as root"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    root: usize,
    users: usize,
    /// Connections held per uid other than root; a uid leaves the map with its last one, so the
    /// map has at most [`USER_SLOTS`] entries.
    by_uid: HashMap<u32, usize>,
}

/// The daemon's connection slots.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slots {
    held: Arc<Mutex<Held>>,
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    held: Arc<Mutex<Held>>,
    uid: u32,
}

impl Slots {
    pub(crate) fn new() -> Slots {
        Slots::default()
    }

    /// A slot for a connection from `uid`, or why there is none.
    pub(crate) fn take(&self, uid: u32) -> Result<Slot, Refusal> {
        let mut held = lock(&self.held);
        if uid == 0 {
            if held.root >= ROOT_SLOTS {
                return Err(Refusal::Root);
            }
            held.root += 1;
        } else {
            let mine = held.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= PER_UID {
                return Err(Refusal::Uid(uid));
            }
            if held.users >= USER_SLOTS {
                return Err(Refusal::Users);
            }
            held.users += 1;
            held.by_uid.insert(uid, mine + 1);
        }
        Ok(Slot {
            held: self.held.clone(),
            uid,
        })
    }

    /// Connections held now: root's and the other users'.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let held = lock(&self.held);
        (held.root, held.users)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if self.uid == 0 {
            held.root -= 1;
            return;
        }
        held.users -= 1;
        if let Some(mine) = held.by_uid.get_mut(&self.uid) {
            *mine -= 1;
            if *mine == 0 {
                held.by_uid.remove(&self.uid);
            }
        }
    }
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

/// Refused connections in few log lines: the first of a quiet spell at once, then one line per
/// [`REFUSALS_LOGGED_EVERY`] with how many more there were, for as long as they go on.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    every: Duration,
    /// When the count so far is due to be logged; `None` in a quiet spell.
    due: Option<Instant>,
    count: u64,
    last: Option<Refusal>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new(REFUSALS_LOGGED_EVERY)
    }
}

impl RefusalLog {
    pub(crate) fn new(every: Duration) -> RefusalLog {
        RefusalLog {
            every,
            due: None,
            count: 0,
            last: None,
        }
    }

    /// A refusal at `now`: the line to log at once, or `None` when it is counted for
    /// [`RefusalLog::flush`].
    pub(crate) fn refused(&mut self, now: Instant, refusal: Refusal) -> Option<String> {
        if self.due.is_none() {
            self.due = Some(now + self.every);
            return Some(format!(
                "refused a connection: {refusal} (more refusals are counted, logged every {})",
                humantime::format_duration(self.every)
            ));
        }
        self.count += 1;
        self.last = Some(refusal);
        None
    }

    /// When [`RefusalLog::flush`] is due; `None` in a quiet spell.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// At [`RefusalLog::due`]: the line about the refusals counted since the last line, if
    /// there were any; without any, a quiet spell begins.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<String> {
        let Some(last) = self.last.take() else {
            self.due = None;
            return None;
        };
        let line = format!(
            "refused {} more connection{} in the last {} (the last: {last})",
            self.count,
            if self.count == 1 { "" } else { "s" },
            humantime::format_duration(self.every)
        );
        self.count = 0;
        self.due = Some(now + self.every);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_another_users_or_roots_slots() {
        let slots = Slots::new();
        let mine: Vec<Slot> = (0..PER_UID).map(|_| slots.take(65534).unwrap()).collect();
        assert_eq!(slots.take(65534).unwrap_err(), Refusal::Uid(65534));
        // Another user and root still get theirs.
        let other = slots.take(1000).expect("another user's slot");
        let root: Vec<Slot> = (0..ROOT_SLOTS).map(|_| slots.take(0).unwrap()).collect();
        assert_eq!(slots.take(0).unwrap_err(), Refusal::Root);
        assert_eq!(slots.held(), (ROOT_SLOTS, PER_UID + 1));
        // A slot given back can be taken again.
        drop(mine);
        drop(root);
        assert_eq!(slots.held(), (0, 1));
        assert!(slots.take(65534).is_ok());
        assert!(slots.take(0).is_ok());
        drop(other);
        assert_eq!(slots.held(), (0, 0));
    }

    #[test]
    fn users_together_cannot_take_roots_slots() {
        let slots = Slots::new();
        let users: Vec<Slot> = (0..USER_SLOTS)
            .map(|i| slots.take(1000 + (i / PER_UID) as u32).unwrap())
            .collect();
        assert_eq!(slots.take(5000).unwrap_err(), Refusal::Users);
        // A user at its own limit hears about that limit first.
        assert_eq!(slots.take(1000).unwrap_err(), Refusal::Uid(1000));
        assert!(slots.take(0).is_ok(), "root keeps its own slots");
        drop(users);
        let _last = slots.take(5000).unwrap();
        assert_eq!(
            lock(&slots.held).by_uid.keys().collect::<Vec<_>>(),
            [&5000],
            "uids leave the map with their last slot"
        );
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_a_count() {
        let every = Duration::from_secs(10);
        let mut log = RefusalLog::new(every);
        let t0 = Instant::now();
        let first = log
            .refused(t0, Refusal::Uid(65534))
            .expect("the first at once");
        assert!(
            first.starts_with("refused a connection: uid 65534 already holds 8 connections"),
            "{first}"
        );
        assert_eq!(log.due(), Some(t0 + every));
        for i in 1..=1000 {
            assert_eq!(
                log.refused(t0 + Duration::from_millis(i), Refusal::Uid(65534)),
                None
            );
        }
        let summary = log.flush(t0 + every).expect("a summary");
        assert!(
            summary
                .starts_with("refused 1000 more connections in the last 10s (the last: uid 65534"),
            "{summary}"
        );
        // Still refusing: counted for the next summary, not logged at once.
        assert_eq!(log.due(), Some(t0 + every * 2));
        assert_eq!(log.refused(t0 + every * 2, Refusal::Users), None);
        let summary = log.flush(t0 + every * 2).unwrap();
        assert!(
            summary.starts_with("refused 1 more connection in"),
            "{summary}"
        );
        // An interval without refusals ends the spell: the next is logged at once.
        assert_eq!(log.flush(t0 + every * 3), None);
        assert_eq!(log.due(), None);
        assert!(log.refused(t0 + every * 4, Refusal::Root).is_some());
    }
}
