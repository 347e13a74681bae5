//! Another user of the machine, for the tests where oomcount must hold against one: commands run
//! as `nobody` (uid 65534), a folder like /tmp for them to plant things in, and the sysctls that
//! would otherwise protect root from what they plant, set for the test and put back after.
//!
//! A hostile user of the daemon's socket is [`Hostile`]: `hostile.py` run as nobody, which
//! holds connections of one kind, fills its slots, or stalls a connection (see the script's
//! head). The script is written to a folder of the test's own that nobody may read, and run with
//! `setpriv --reuid 65534 --regid 65534 --clear-groups /usr/bin/python3` (the python3 on root's
//! PATH may be a shim that nobody cannot run). It prints one line per step; [`Hostile::line`]
//! waits for the next with a deadline. Dropping a [`Hostile`] ends it (SIGKILL, by its pid) and
//! reaps it.
use std::{
    ffi::OsStr,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{unique_name, wait::deadline, watchdog::Run};

/// The attacker's uid and gid.
pub const NOBODY: u32 = 65534;

/// Runs one step as nobody (uid 65534, no groups): `oomcount-hog nobody STEP ARGS`, which needs
/// no tool of the machine's (the VM guest has none). Steps: `mkdir`, `rm`, `ln`, `ls`,
/// `forge-sigkill N`.
pub fn as_nobody(step: &str, args: &[&OsStr]) -> Run {
    let hog = crate::locate::hog();
    let out = Command::new(&hog)
        .args(["nobody", step])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run {} nobody {step} {args:?}: {err}", hog.display()));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ln -s target link` as nobody; panics unless it worked.
pub fn plant_link(target: &Path, link: &Path) {
    let run = as_nobody("ln", &[target.as_os_str(), link.as_os_str()]);
    assert_eq!(
        run.code,
        Some(0),
        "nobody's ln -s {target:?} {link:?}: {run:?}"
    );
}

/// A sysctl set for a test, put back as it was when dropped (on panic too).
pub struct Sysctl {
    path: PathBuf,
    previous: String,
}

impl Sysctl {
    pub fn set(path: &str, value: &str) -> Sysctl {
        let previous = fs::read_to_string(path)
            .unwrap_or_else(|err| panic!("read {path}: {err}"))
            .trim()
            .to_owned();
        fs::write(path, value).unwrap_or_else(|err| panic!("write {value} to {path}: {err}"));
        Sysctl {
            path: path.into(),
            previous,
        }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(err) = fs::write(&self.path, &self.previous) {
            eprintln!(
                "cannot put {} back to {}: {err}",
                self.path.display(),
                self.previous
            );
        }
    }
}

/// A folder of root's with `mode` (1777 for one like /tmp), removed with what is in it on drop.
pub struct Folder(PathBuf);

impl Folder {
    pub fn new(label: &str, mode: u32) -> Folder {
        let dir = std::env::temp_dir().join(unique_name(label));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|err| panic!("chmod {}: {err}", dir.display()));
        Folder(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = include_str!("hostile.py");

/// Whether the attacker can run here; where it cannot (the VM guest has neither python3 nor
/// setpriv), says so loudly.
pub fn possible() -> bool {
    let missing: Vec<&str> = [PYTHON, "/usr/bin/setpriv"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "SKIPPED the hostile-user test on kernel {}: {} not here",
        crate::kernel_release(),
        missing.join(" and ")
    );
    false
}

/// `hostile.py` running as nobody.
pub struct Hostile {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl Hostile {
    /// Starts `hostile.py SOCKET ARGS` as nobody.
    pub fn start(socket: &Path, args: &[&str]) -> Hostile {
        let dir = std::env::temp_dir().join(unique_name("oomcount-hostile"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.join("hostile.py");
        fs::write(&script, SCRIPT)
            .unwrap_or_else(|err| panic!("write {}: {err}", script.display()));
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
        let mut child = Command::new("setpriv")
            .args([
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
            ])
            .args(["--clear-groups", PYTHON])
            .arg(&script)
            .arg(socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("run hostile.py as nobody: {err}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || forward(stdout, tx));
        Hostile { child, lines, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The script's next line, within `within` (scaled like every deadline).
    pub fn line(&mut self, within: Duration) -> String {
        let until = deadline(within);
        let left = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!("hostile.py said nothing within {within:?} (exited: {status:?})")
            }
        }
    }

    /// SIGTERM, then its last line (the figures of `hold`).
    pub fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.line(Duration::from_secs(10))
    }
}

fn forward(stdout: ChildStdout, tx: mpsc::Sender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        if tx.send(line).is_err() {
            return;
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
