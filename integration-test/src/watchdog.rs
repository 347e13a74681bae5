//! The watchdog tests' tools: a stand-in device where no real one exists, configuration files,
//! and `oomcount check` run as watchdog(8) runs it.
//!
//! The stand-in is a FIFO: the daemon opens it as it opens `/dev/watchdog` (without ioctls it
//! pings by writing), and a reader thread records every byte and when it came, and whether the
//! daemon closed it. So a test sees the keepalives, their stop, and the magic 'V', without a
//! watchdog that could reset this machine. The real softdog is tested in the VM guests.
use std::{
    ffi::OsStr,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Instant,
};

use crate::{
    Daemon, locate, unique_name,
    wait::{deadline, wait_until},
};

#[derive(Default)]
struct Seen {
    bytes: Vec<(Instant, u8)>,
    closed: bool,
}

/// A FIFO standing in for a watchdog device.
pub struct StandIn {
    dir: PathBuf,
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
}

impl StandIn {
    pub fn new() -> StandIn {
        let dir = std::env::temp_dir().join(unique_name("oomcount-watchdog"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let path = dir.join("watchdog");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap_or_else(|err| panic!("mkfifo {}: {err}", path.display()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let (path, seen) = (path.clone(), seen.clone());
            // Opening a FIFO to read waits for its writer: the daemon, when it arms the device.
            std::thread::spawn(move || {
                // At real-time priority where it may (as root), so that the time of each
                // keepalive is when the daemon wrote it, not when a busy machine got round to
                // this thread; above the daemon's and the tests' commands' SCHED_FIFO 1: at an
                // equal priority it waits for one of them to block (a command of the debug
                // build runs for ~100 ms), and a keepalive on time may be seen late.
                let param = libc::sched_param { sched_priority: 10 };
                // SAFETY: sets this thread's own policy from a parameter it owns.
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
                let Ok(mut fifo) = fs::File::open(&path) else {
                    return;
                };
                let mut buf = [0u8; 64];
                loop {
                    match fifo.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let now = Instant::now();
                            let mut seen = seen.lock().unwrap();
                            seen.bytes.extend(buf[..n].iter().map(|&b| (now, b)));
                        }
                    }
                }
                seen.lock().unwrap().closed = true;
            })
        };
        StandIn {
            dir,
            path,
            seen,
            reader: Some(reader),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keepalives so far (each a write of one NUL byte).
    pub fn pings(&self) -> usize {
        self.bytes().iter().filter(|&&b| b == 0).count()
    }

    /// Every byte written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.seen
            .lock()
            .unwrap()
            .bytes
            .iter()
            .map(|&(_, b)| b)
            .collect()
    }

    /// When each keepalive came, in order.
    pub fn ping_times(&self) -> Vec<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.bytes
            .iter()
            .filter(|&&(_, b)| b == 0)
            .map(|&(at, _)| at)
            .collect()
    }

    /// The longest wait for a keepalive between `from` and now: between two keepalives, the
    /// last one before `from` included, and from the last one until now.
    pub fn longest_gap_since(&self, from: Instant) -> std::time::Duration {
        let times = self.ping_times();
        let first = times.iter().rposition(|&at| at < from).unwrap_or(0);
        let mut times = times[first..].to_vec();
        times.push(Instant::now());
        times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    /// When the last keepalive came.
    pub fn last_ping(&self) -> Option<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.bytes
            .iter()
            .rev()
            .find(|&&(_, b)| b == 0)
            .map(|&(at, _)| at)
    }

    /// Whether the daemon closed the device.
    pub fn closed(&self) -> bool {
        self.seen.lock().unwrap().closed
    }

    /// Waits until `n` keepalives have come.
    pub fn wait_pings(&self, n: usize, what: &str) {
        wait_until(deadline(std::time::Duration::from_secs(10)), what, || {
            let pings = self.pings();
            if pings >= n { Ok(()) } else { Err(pings) }
        });
    }

    /// Waits until the daemon has closed the device; returns every byte it wrote.
    pub fn wait_closed(&self) -> Vec<u8> {
        wait_until(
            deadline(std::time::Duration::from_secs(5)),
            "the daemon to close the device",
            || {
                if self.closed() {
                    Ok(())
                } else {
                    Err(self.bytes().len())
                }
            },
        );
        self.bytes()
    }

    /// A config file beside the FIFO: `[watchdog]` on this stand-in with `watchdog` (more
    /// keys), then `rules` as the `[rules]` table's body.
    pub fn config(&self, watchdog: &str, rules: &str) -> PathBuf {
        let text = format!(
            "[watchdog]\ndevice = {:?}\n{watchdog}\n[rules]\n{rules}\n",
            self.path.display().to_string()
        );
        write_config(&self.dir, &text)
    }
}

impl Default for StandIn {
    fn default() -> Self {
        StandIn::new()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // A reader still waiting for a writer is released by one of ours.
        if !self.closed() {
            let _ = fs::OpenOptions::new()
                .write(true)
                .custom_flags_nonblock()
                .open(&self.path);
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// Writes `text` as `oomcount.toml` in `dir` (made if needed); returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
    let path = dir.join("oomcount.toml");
    fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    path
}

/// A folder of the test's own for config files and sockets, removed on drop.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        Scratch {
            dir: std::env::temp_dir().join(unique_name(label)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `text` as the folder's `oomcount.toml`; returns its path.
    pub fn config(&self, text: &str) -> PathBuf {
        write_config(&self.dir, text)
    }

    /// Writes `text` as the config and starts a daemon on it with `more` flags.
    pub fn daemon(&self, text: &str, more: &[&OsStr]) -> Daemon {
        let config = self.config(text);
        let mut args = vec![OsStr::new("--config"), config.as_os_str()];
        args.extend(more);
        Daemon::start_with(&args)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How `oomcount` ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `oomcount ARGS` to its end.
pub fn oomcount(args: &[&OsStr]) -> Run {
    let bin = locate::oomcount();
    let out = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run {} {args:?}: {err}", bin.display()));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `oomcount check --json --socket SOCKET [MORE]`.
pub fn check(socket: &Path, more: &[&str]) -> Run {
    let mut args: Vec<&OsStr> = vec![OsStr::new("check")];
    args.extend(more.iter().map(OsStr::new));
    args.extend(["--socket".as_ref(), socket.as_os_str()]);
    oomcount(&args)
}

/// The verdict and the keepalive's state, from `oomcount check --json`.
pub fn verdict(daemon: &Daemon) -> serde_json::Value {
    let run = check(daemon.socket(), &["--json"]);
    serde_json::from_str(&run.stdout).unwrap_or_else(|err| panic!("check --json: {err}: {run:?}"))
}

/// Waits until the daemon has counted `n` kills.
pub fn wait_kills(daemon: &Daemon, n: u64) {
    wait_until(
        deadline(std::time::Duration::from_secs(10)),
        "the daemon to count the kills",
        || {
            let kills = daemon.count().kills;
            if kills >= n { Ok(()) } else { Err(kills) }
        },
    );
}
