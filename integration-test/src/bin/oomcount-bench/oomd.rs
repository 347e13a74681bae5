//! The daemon under measurement: the release `oomcount daemon` on a socket of its own, unpinned
//! (a daemon of the machine's own, pinned, is left alone), its log read line by line so that
//! the moment it is attached and serving is known to the millisecond. Both Prometheus outputs
//! are on (`[metrics]`: a textfile in its folder and a loopback port, per-key series too), as a
//! fleet runs it: every figure of the bench is the daemon's with them.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use oomcount_integration_test::locate;

/// A running daemon; stopped (SIGTERM) on drop.
pub struct Oomd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    /// Where it serves `GET /metrics` (`127.0.0.1:PORT`).
    pub metrics: String,
    /// The textfile it rewrites after each batch of events.
    pub textfile: PathBuf,
    /// From just before `spawn` to the log line that says it serves.
    pub ready_after: Duration,
    /// Its CPU time (user, system ticks) at that moment: loading and verifying the programs.
    pub startup_ticks: (u64, u64),
    log: mpsc::Receiver<String>,
}

/// The config a dom0 would run with: the watchdog and its rules (critical names, vitals), both
/// metrics outputs with the per-key tables, a kill hook, and xenstore where the bench found a
/// store (`XENSTORED_PATH`, a host oxenstored: see `main`), with the vitals published every
/// `xenstore` (a duration), none where `None`.
fn every_feature(metrics: &str, textfile: &Path, xenstore: Option<&str>) -> String {
    let mut config = format!(
        "[watchdog]\n\
         [rules]\nmax_kills = 3\nconstraint = \"global\"\ncritical = [\"xenstored\", \"sshd\"]\n\
         [metrics]\nlisten = \"{metrics}\"\ntextfile = {:?}\nby_cgroup = true\nby_comm = true\n\
         [hooks]\non_kill = [\"/bin/true\"]\nuser = \"nobody\"\n",
        textfile.display().to_string()
    );
    if let Some(interval) = xenstore
        && std::env::var_os("XENSTORED_PATH").is_some()
    {
        config.push_str(&format!(
            "[xenstore]\nmode = \"on\"\ninterval = \"{interval}\"\n"
        ));
    }
    config
}

impl Oomd {
    /// Starts it and waits (up to 30 s) until it says it is attached and serving.
    pub fn start(label: &str) -> Result<Oomd, String> {
        Self::start_with(label, Some("10s"))
    }

    /// [`Oomd::start`], with xenstore's vitals every `xenstore` (where the bench has a store), or
    /// without xenstore.
    pub fn start_with(label: &str, xenstore: Option<&str>) -> Result<Oomd, String> {
        let bin = locate::oomcount();
        let dir =
            std::env::temp_dir().join(format!("oomcount-bench-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("mkdir {}: {err}", dir.display()))?;
        let socket = dir.join("oomcount.sock");
        let textfiles = dir.join("textfile");
        std::fs::create_dir_all(&textfiles)
            .map_err(|err| format!("mkdir {}: {err}", textfiles.display()))?;
        let textfile = textfiles.join("oomcount.prom");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|err| format!("a free loopback port: {err}"))?
            .port();
        let metrics = format!("127.0.0.1:{port}");
        let config = dir.join("oomcount.toml");
        std::fs::write(&config, every_feature(&metrics, &textfile, xenstore))
            .map_err(|err| format!("write {}: {err}", config.display()))?;
        let started = Instant::now();
        let mut child = Command::new(&bin)
            // Judged and ticked as with a device, none opened: this host has no watchdog.
            .args(["daemon", "--no-pin", "--dry-run", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("start {} daemon: {err}", bin.display()))?;
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        let ready_after = loop {
            let left = Duration::from_secs(30).saturating_sub(started.elapsed());
            match log.recv_timeout(left) {
                Ok(line) if line.contains("serving on") => break started.elapsed(),
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    return Err(format!(
                        "the daemon did not say it serves within 30 s ({status:?}); it said: {}",
                        said.join(" / ")
                    ));
                }
            }
        };
        let startup_ticks = crate::procfs::cpu_split(child.id())?;
        // The daemon installs its SIGTERM handler after that line: one answer proves it is in
        // its loop, so that stopping it later is a clean exit and not a race.
        crate::client::count(&socket)?;
        Ok(Oomd {
            child,
            dir,
            socket,
            metrics,
            textfile,
            ready_after,
            startup_ticks,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops it with SIGTERM; its exit status must be success.
    pub fn stop(mut self) -> Result<(), String> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the daemon had exited already ({status})"));
        }
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)
            .map_err(|err| format!("SIGTERM the daemon: {err}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let said: Vec<String> = self.log.try_iter().collect();
                    return Err(format!(
                        "the daemon exited with {status}; it said: {}",
                        said.join(" / ")
                    ));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("the daemon did not exit within 10 s of SIGTERM".to_owned());
                }
            }
        }
    }
}

impl Drop for Oomd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None))
            && let Err(err) = self.terminate()
        {
            eprintln!("bench: {err}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
