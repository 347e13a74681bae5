//! The daemon under test, run as a user runs it: `oomcount daemon --socket P` in the background
//! and `oomcount count --socket P --json` to read it. The tests see only what a user sees.
//!
//! Its stderr (log lines) goes to a file, so that a failing test can show what the daemon said.
//! Dropping the handle stops the daemon with SIGTERM and checks that it exits cleanly.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, SystemTime},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::Deserialize;

use crate::{
    locate, unique_name,
    wait::{deadline, poll_until, wait_until},
};

/// What `oomcount count --json` reports (unknown keys ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Counts {
    /// OOM kills since the probe was attached.
    pub kills: u64,
    /// `oom/mark_victim` events since the probe was attached.
    pub marked: u64,
    /// Events lost to a full ring buffer.
    pub events_dropped: u64,
    /// When the probe was attached (RFC 3339).
    pub attached_at: String,
    /// `/proc/vmstat` `oom_kill` as the daemon read it (absent before Linux 4.13).
    #[serde(default)]
    pub kernel_oom_kill: Option<u64>,
}

/// A running `oomcount daemon`, stopped on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    started_at: SystemTime,
}

impl Daemon {
    /// Starts the daemon on a socket of its own and waits until `count` answers.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// [`Daemon::start`] with more daemon flags (`--config FILE`, `--dry-run`).
    pub fn start_with(args: &[&std::ffi::OsStr]) -> Daemon {
        Daemon::start_env(args, &[])
    }

    /// [`Daemon::start_with`] with more environment (systemd's `NOTIFY_SOCKET`).
    pub fn start_env(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        Daemon::start_on(None, args, env)
    }

    /// [`Daemon::start_env`] on `socket` (default: one in a folder of the daemon's own).
    pub fn start_on(
        socket: Option<&Path>,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let bin = locate::oomcount();
        let dir = std::env::temp_dir().join(unique_name("oomcount-daemon"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let socket = socket.map_or_else(|| dir.join("oomcount.sock"), Path::to_path_buf);
        let log = dir.join("daemon.log");
        let out =
            fs::File::create(&log).unwrap_or_else(|err| panic!("create {}: {err}", log.display()));
        let err = out.try_clone().expect("dup the log file");
        let started_at = SystemTime::now();
        // No pins unless asked for (`--pin-dir`, in a folder of the test's own): each test's
        // daemon starts from its own attach.
        let pinned = args.iter().any(|a| *a == "--pin-dir");
        let child = Command::new(&bin)
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .args((!pinned).then_some("--no-pin"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|err| panic!("start {} daemon: {err}", bin.display()));
        let mut daemon = Daemon {
            child: Some(child),
            bin,
            dir,
            socket,
            log,
            started_at,
        };
        wait_until(
            deadline(Duration::from_secs(20)),
            "the daemon to answer `count`",
            || {
                if let Some(status) = daemon
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "the daemon exited early ({status}); its log:\n{}",
                        daemon.log()
                    );
                }
                daemon.try_count()
            },
        );
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Root's verdict request from connect to answer, without starting a process (the
    /// attack tests time it while the daemon is under attack).
    pub fn verdict_round_trip(&self) -> Duration {
        use std::io::{BufRead as _, Write as _};
        let started = std::time::Instant::now();
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).expect("connect");
        stream.write_all(b"{\"request\":\"verdict\"}\n").unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut answer)
            .unwrap();
        assert!(answer.starts_with(r#"{"verdict":"#), "{answer}");
        started.elapsed()
    }

    /// When this handle started the daemon (the probe attaches after that).
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_else(|err| format!("(cannot read {}: {err})", self.log.display()))
    }

    /// `oomcount count --socket P --json`, parsed; panics (with the daemon's log) on failure.
    pub fn count(&self) -> Counts {
        self.try_count()
            .unwrap_or_else(|err| panic!("{err}; the daemon's log:\n{}", self.log()))
    }

    /// `oomcount count --socket P --json` as raw JSON text.
    pub fn count_json(&self) -> Result<String, String> {
        let output = Command::new(&self.bin)
            .arg("count")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("run {} count: {err}", self.bin.display()))?;
        if !output.status.success() {
            return Err(format!(
                "`oomcount count --json` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        String::from_utf8(output.stdout)
            .map_err(|err| format!("`oomcount count --json` printed non-UTF-8: {err}"))
    }

    /// [`Daemon::count`] that returns failures instead of panicking.
    pub fn try_count(&self) -> Result<Counts, String> {
        let text = self.count_json()?;
        serde_json::from_str(&text)
            .map_err(|err| format!("`oomcount count --json` printed {text:?}: {err}"))
    }

    /// The daemon's `oom_score_adj` (it should protect itself with -1000).
    pub fn oom_score_adj(&self) -> i32 {
        let path = format!("/proc/{}/oom_score_adj", self.pid());
        let text = fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {path}: {err}"));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{path}: {text:?}"))
    }

    /// Sends SIGKILL and reaps the daemon: a crash, as far as anything else can tell.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("the daemon runs");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns how it exited.
    pub fn stop(&mut self) -> Result<ExitStatus, String> {
        let mut child = self.child.take().ok_or("the daemon was already stopped")?;
        let pid = Pid::from_raw(child.id() as i32);
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the daemon had already exited ({status})"));
        }
        kill(pid, Signal::SIGTERM).map_err(|err| format!("SIGTERM the daemon: {err}"))?;
        let waited = poll_until(
            deadline(Duration::from_secs(10)),
            "the daemon to exit after SIGTERM",
            || match child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running"),
                Err(_) => Err("cannot wait"),
            },
        );
        waited.inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let outcome = self.stop().and_then(|status| {
            if status.success() {
                Ok(())
            } else {
                Err(format!("the daemon exited with {status} on SIGTERM"))
            }
        });
        match outcome {
            Ok(()) if !std::thread::panicking() => {
                let _ = fs::remove_dir_all(&self.dir);
            }
            Ok(()) => eprintln!("the daemon's log ({}):\n{}", self.log.display(), self.log()),
            Err(err) if std::thread::panicking() => {
                eprintln!(
                    "{err}; the daemon's log ({}):\n{}",
                    self.log.display(),
                    self.log()
                )
            }
            Err(err) => panic!(
                "{err}; the daemon's log ({}):\n{}",
                self.log.display(),
                self.log()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_ignoring_unknown_keys() {
        let text = r#"{"kills":3,"marked":5,"events_dropped":0,"attached_at":"2026-11-26T05:00:00Z","kernel_oom_kill":7,"source":"daemon"}"#;
        let counts: Counts = serde_json::from_str(text).unwrap();
        assert_eq!(
            (counts.kills, counts.marked, counts.kernel_oom_kill),
            (3, 5, Some(7))
        );
        let old =
            r#"{"kills":0,"marked":0,"events_dropped":0,"attached_at":"x","kernel_oom_kill":null}"#;
        assert_eq!(
            serde_json::from_str::<Counts>(old).unwrap().kernel_oom_kill,
            None
        );
    }
}
