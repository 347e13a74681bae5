//! Kills per key (a memory cgroup, a command name), in a table of bounded size whatever the
//! victims are called.
//!
//! Anyone may name a process or create a cgroup (in a delegated subtree), so the keys are chosen
//! by whoever runs out of memory: a table keyed by them must not grow with them, in the daemon's
//! memory or in Prometheus's series. So:
//!
//! - the first [`Tally::capacity`] keys seen keep a row of their own for the daemon's life; a
//!   key after them counts in the one row [`OTHER`], and so do kills whose key the kernel could
//!   not give. Rows are never evicted: a counter that vanished and came back would read as a
//!   reset to Prometheus, and one whose kills moved to `_other` would make that row jump;
//! - a key is made valid UTF-8 (invalid bytes become U+FFFD) and cut to [`MAX_KEY`] bytes; a
//!   cgroup path is also cut to the configured depth, so that the rows are the slices,
//!   services or pods a fleet watches, not the cgroup of each short-lived container;
//! - a command named `_other` itself counts in the `_other` row (two series with one label
//!   value would be one series twice), and so does an empty name (an empty label value is no
//!   label to Prometheus); a cgroup key always starts with `/`, so it cannot clash.
//!
//! Each row keeps its count, the time of its last kill and the last victim (pid and command name)
//! for `oomcount top`. Never a pid in a label: one series per process would be unbounded.
use std::{collections::BTreeMap, time::SystemTime};

/// The row of the kills beyond the table's size, or without a key.
pub const OTHER: &str = "_other";
/// Rows per table unless the configuration says otherwise.
pub const DEFAULT_CAPACITY: usize = 64;
/// The longest key kept, in bytes (a cgroup path may be up to PATH_MAX long).
pub const MAX_KEY: usize = 256;
/// The longest command name kept for a row's last victim, in bytes (the kernel's is 15).
const MAX_COMM: usize = 64;
/// The path of a cgroup whose top levels the kernel's record left out (deeper than it holds).
const TRUNCATED: &str = "/...";

/// One row: a key's kills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kills: u64,
    /// When the last of them happened.
    pub last_kill: SystemTime,
    /// The last victim: pid and command name (as the kernel gave it, made UTF-8).
    pub last_pid: u32,
    pub last_comm: String,
}

impl Entry {
    fn new(at: SystemTime) -> Self {
        Self {
            kills: 0,
            last_kill: at,
            last_pid: 0,
            last_comm: String::new(),
        }
    }
}

/// A kill to count: who died, when, and where.
#[derive(Clone, Copy, Debug)]
pub struct Kill<'a> {
    pub at: SystemTime,
    pub pid: u32,
    /// The victim's command name; `None` where the kernel did not give it.
    pub comm: Option<&'a [u8]>,
}

/// Kills per key, at most `capacity` rows plus [`OTHER`].
#[derive(Clone, Debug)]
pub struct Tally {
    capacity: usize,
    rows: BTreeMap<String, Entry>,
    other: Option<Entry>,
}

impl Tally {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            rows: BTreeMap::new(),
            other: None,
        }
    }

    /// Rows of their own the table keeps at most (besides [`OTHER`]).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts `kill` in the row of `key` (any bytes), or in [`OTHER`].
    pub fn count(&mut self, key: Option<&[u8]>, kill: Kill<'_>) {
        let key = key.map(|key| bounded(key, MAX_KEY));
        let own = match &key {
            // An empty label value is no label at all to Prometheus: no row of its own either.
            Some(key) if key != OTHER && !key.is_empty() => {
                if !self.rows.contains_key(&**key) && self.rows.len() < self.capacity {
                    self.rows.insert(key.to_string(), Entry::new(kill.at));
                }
                self.rows.get_mut(&**key)
            }
            _ => None,
        };
        let row = match own {
            Some(row) => row,
            None => self.other.get_or_insert_with(|| Entry::new(kill.at)),
        };
        row.kills += 1;
        row.last_kill = kill.at;
        row.last_pid = kill.pid;
        row.last_comm.clear();
        if let Some(comm) = kill.comm {
            row.last_comm.push_str(&bounded(comm, MAX_COMM));
        }
    }

    /// Counts `kill` by the victim's memory cgroup `path`, cut to `depth` levels.
    pub fn count_cgroup(&mut self, path: Option<&[u8]>, depth: usize, kill: Kill<'_>) {
        let key = path.map(|path| cgroup_key(path, depth));
        self.count(key.as_deref().map(str::as_bytes), kill);
    }

    /// Counts `kill` by the victim's command name.
    pub fn count_comm(&mut self, kill: Kill<'_>) {
        self.count(kill.comm, kill);
    }

    /// The rows in the order of their keys, [`OTHER`] last where it has kills.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.rows
            .iter()
            .map(|(key, entry)| (key.as_str(), entry))
            .chain(self.other.as_ref().map(|entry| (OTHER, entry)))
    }

    /// Kills counted, all rows together.
    pub fn total(&self) -> u64 {
        self.entries().map(|(_, entry)| entry.kills).sum()
    }
}

/// `bytes` as UTF-8 (invalid sequences replaced), cut at a character boundary to at most `max`
/// bytes.
fn bounded(bytes: &[u8], max: usize) -> std::borrow::Cow<'_, str> {
    // Cut first, so that a huge input is never converted whole; a character split by the cut
    // becomes one U+FFFD, which the second cut may drop.
    let lossy = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    if lossy.len() <= max {
        return lossy;
    }
    let mut end = max;
    while !lossy.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(lossy[..end].to_owned())
}

/// The row of a cgroup path: its first `depth` levels (`/` for 0), always starting with `/`;
/// a path whose top levels the kernel's record lacks (`/...` first) is `/...` when they are
/// the levels asked for.
pub fn cgroup_key(path: &[u8], depth: usize) -> String {
    let path = bounded(path, MAX_KEY);
    let mut levels = path.split('/').filter(|level| !level.is_empty());
    let mut key = String::with_capacity(path.len() + 1);
    for level in levels.by_ref().take(depth) {
        if level == "..." && key.is_empty() {
            return TRUNCATED.to_owned();
        }
        key.push('/');
        key.push_str(level);
    }
    if key.is_empty() {
        key.push('/');
    }
    key
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::metrics::exposition::{
        render,
        tests::{check_structure, promtool_check, snapshot},
    };

    fn kill<'a>(n: u64, comm: &'a [u8]) -> Kill<'a> {
        Kill {
            at: UNIX_EPOCH + Duration::from_secs(1_764_800_000 + n),
            pid: 1000 + n as u32,
            comm: Some(comm),
        }
    }

    #[test]
    fn cgroup_paths_cut_to_depth() {
        let cases: &[(&str, usize, &str)] = &[
            ("/", 3, "/"),
            ("", 3, "/"),
            ("/system.slice/foo.service", 3, "/system.slice/foo.service"),
            ("/a/b/c/d/e", 3, "/a/b/c"),
            ("/a/b/c/d/e", 0, "/"),
            ("/a/b/c/d/e", 1, "/a"),
            ("a//b/", 5, "/a/b"),
            ("/.../g/h", 3, "/..."),
            ("/.../g/h", 0, "/"),
        ];
        for &(path, depth, key) in cases {
            assert_eq!(
                cgroup_key(path.as_bytes(), depth),
                key,
                "{path:?} at {depth}"
            );
        }
    }

    #[test]
    fn keys_past_capacity_and_keyless_kills_count_as_other() {
        let mut tally = Tally::new(2);
        tally.count_comm(kill(1, b"a"));
        tally.count_comm(kill(2, b"b"));
        tally.count_comm(kill(3, b"a"));
        tally.count_comm(kill(4, b"c"));
        tally.count_comm(kill(5, b"d"));
        tally.count(None, kill(6, b"e"));
        // A name that is the overflow row's own label value goes there too.
        tally.count_comm(kill(8, b""));
        tally.count_comm(kill(7, b"_other"));
        let rows: Vec<(&str, u64)> = tally.entries().map(|(k, e)| (k, e.kills)).collect();
        assert_eq!(rows, [("a", 2), ("b", 1), (OTHER, 5)]);
        assert_eq!(tally.total(), 8);
        let (_, a) = tally.entries().next().unwrap();
        assert_eq!(
            (a.last_pid, a.last_comm.as_str(), a.last_kill),
            (1003, "a", UNIX_EPOCH + Duration::from_secs(1_764_800_003))
        );
        let (_, other) = tally.entries().last().unwrap();
        assert_eq!((other.last_pid, other.last_comm.as_str()), (1007, "_other"));
    }

    #[test]
    fn memory_is_bounded_whatever_the_keys() {
        let mut tally = Tally::new(DEFAULT_CAPACITY);
        let huge = vec![b'x'; 1 << 20];
        for n in 0..10_000u64 {
            let mut key = huge[..(n as usize % 4096) + 1].to_vec();
            key.extend_from_slice(&n.to_le_bytes());
            tally.count(Some(&key), kill(n, &huge));
        }
        assert_eq!(tally.entries().count(), DEFAULT_CAPACITY + 1);
        assert_eq!(tally.total(), 10_000);
        for (key, entry) in tally.entries() {
            assert!(key.len() <= MAX_KEY, "{}", key.len());
            assert!(entry.last_comm.len() <= MAX_COMM);
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_and_cut_on_a_character() {
        assert_eq!(bounded(b"ok\xff\xfe", 16), "ok\u{fffd}\u{fffd}");
        // "é" is two bytes: a cut through it leaves neither half.
        assert_eq!(bounded("aé".as_bytes(), 2), "a");
        assert_eq!(bounded("aéb".as_bytes(), 3), "aé");
    }

    /// Hostile names through the whole exposition: promtool parses it, and the structure
    /// checks hold.
    #[test]
    fn hostile_names_make_a_valid_exposition() {
        let mut comms = Tally::new(DEFAULT_CAPACITY);
        let mut cgroups = Tally::new(DEFAULT_CAPACITY);
        let names: &[&[u8]] = &[
            b"quote\"d",
            b"back\\slash",
            b"new\nline",
            b"\\n",
            b"\"}",
            b"bad\xff\xc3utf8",
            b"\xc3",
            b"tab\tcr\rnul\0",
            b"",
            b" space ",
            b"_other",
            "ünï".as_bytes(),
        ];
        let deep: String = (0..400).map(|n| format!("/level{n}")).collect();
        for (n, name) in names.iter().enumerate() {
            let k = kill(n as u64, name);
            comms.count_comm(k);
            let mut path = b"/kubepods/".to_vec();
            path.extend_from_slice(name);
            path.extend_from_slice(b"/x");
            cgroups.count_cgroup(Some(&path), 8, k);
        }
        cgroups.count_cgroup(Some(deep.as_bytes()), 8, kill(99, b"deep"));
        cgroups.count_cgroup(Some(deep.as_bytes()), 500, kill(99, b"deep"));
        cgroups.count_cgroup(Some(b"/.../a/b"), 3, kill(99, b"deep"));
        // Names past the table's size.
        let mut small = Tally::new(3);
        for name in names {
            small.count_comm(kill(1, name));
        }
        for tally in [&comms, &small] {
            let text = render(&snapshot(Some(&cgroups), Some(tally)));
            let series = check_structure(&text);
            let sum: u64 = series
                .iter()
                .filter(|(k, _)| k.starts_with("oomcount_comm_oom_kills_total{"))
                .map(|(_, v)| v.parse::<u64>().unwrap())
                .sum();
            assert_eq!(sum, names.len() as u64);
            assert!(!text.contains("pid"), "a pid in:\n{text}");
            promtool_check(&text);
        }
    }
}
