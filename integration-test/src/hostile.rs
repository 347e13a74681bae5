//! Another user of the machine, for the tests where oomcount must hold against one: commands run
//! as `nobody` (uid 65534), a folder like /tmp for them to plant things in, and the sysctls that
//! would otherwise protect root from what they plant, set for the test and put back after.
//!
//! Every step runs as `oomcount-hog nobody STEP ARGS`, which needs no tool of the machine's (the
//! VM guests have no python, setpriv or coreutils): [`as_nobody`] for a step that ends, and
//! [`Hostile`] for one that goes on while the test works (a hostile user of the daemon's socket,
//! the library's `attacker` module), whose lines are read as they come.
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

/// A step of nobody's that goes on while the test works: `oomcount-hog nobody STEP ARGS`, which
/// prints one line per stage; [`Hostile::line`] waits for the next with a deadline. Dropping it
/// ends it (SIGKILL, by its pid) and reaps it.
pub struct Hostile {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Hostile {
    pub fn start(step: &str, args: &[&OsStr]) -> Hostile {
        let hog = crate::locate::hog();
        let mut child = Command::new(&hog)
            .args(["nobody", step])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("run {} nobody {step} {args:?}: {err}", hog.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || forward(stdout, tx));
        Hostile { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The step's next line, within `within` (scaled like every deadline).
    pub fn line(&mut self, within: Duration) -> String {
        let until = deadline(within);
        let left = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!("nobody's step said nothing within {within:?} (exited: {status:?})")
            }
        }
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
    }
}
