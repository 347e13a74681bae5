//! Another user against the daemon's pins and files: nobody (uid 65534) plants links at the
//! names the daemon derives and folders on its way, and makes the pin folder before the daemon;
//! root removes or replaces the pins under a running daemon. The daemon must write nowhere it was
//! not told to, refuse folders others control in one line, keep its probe attached and pinned,
//! and `detach` must say what stays attached.
use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use oomcount_integration_test::{
    Daemon, MemCg,
    hostile::{Folder, NOBODY, Sysctl, as_nobody, plant_link},
    locate, pins_possible,
    producer::single_kills,
    require_root, vmstat,
    wait::{deadline, wait_until},
    watchdog::{Run, oomcount, wait_kills},
};

/// The pins' names, as the daemon makes them.
const PINS: [&str; 4] = [
    "counters",
    "events",
    "link_signal_generate",
    "link_mark_victim",
];

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A root-owned 0600 file in a folder only root can enter: what nobody's links point at.
struct Precious {
    folder: Folder,
    file: PathBuf,
    before: fs::Metadata,
}

impl Precious {
    fn new() -> Precious {
        let folder = Folder::new("oomcount-precious", 0o700);
        let file = folder.path().join("precious");
        fs::write(&file, "root's own\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let before = fs::metadata(&file).unwrap();
        Precious {
            folder,
            file,
            before,
        }
    }

    /// Where nobody would like root to make a file.
    fn elsewhere(&self) -> PathBuf {
        self.folder.path().join("made-by-root")
    }

    /// Nothing was written, chmodded or made there.
    fn assert_untouched(&self, daemon_log: &str) {
        let now = fs::metadata(&self.file).unwrap();
        assert_eq!(
            fs::read_to_string(&self.file).unwrap(),
            "root's own\n",
            "written through a link; daemon log:\n{daemon_log}"
        );
        assert_eq!(
            (now.mode() & 0o7777, now.uid(), now.nlink(), now.mtime()),
            (0o600, 0, 1, self.before.mtime()),
            "changed through a link; daemon log:\n{daemon_log}"
        );
        let made: Vec<_> = fs::read_dir(self.folder.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(made, ["precious"], "a file made through a link");
    }
}

/// `oomcount daemon ARGS`, expected to refuse: its exit and its one line.
fn refused(args: &[&OsStr]) -> Run {
    let mut all = vec![OsStr::new("daemon")];
    all.extend(args);
    let run = oomcount(&all);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    run
}

#[test]
fn links_planted_at_the_daemons_files_are_never_followed() {
    require_root();
    // What would stop the attack on most distributions: off, as the issue found it.
    let _links = Sysctl::set("/proc/sys/fs/protected_symlinks", "0");
    let shared = Folder::new("oomcount-shared", 0o1777);
    let precious = Precious::new();
    let socket = shared.path().join("oc.sock");
    let stat = shared.path().join("oc.stat");
    // Every name the daemon derives, planted by nobody before it starts: links to root's file,
    // and to where a file would be made.
    let lock = with_suffix(&socket, ".lock");
    let tmp = with_suffix(&stat, ".tmp");
    plant_link(&precious.elsewhere(), &lock);
    plant_link(&precious.file, &tmp);
    plant_link(&precious.file, &socket);
    plant_link(&precious.file, &stat);

    let mut daemon = Daemon::start_on(Some(&socket), &["--stat".as_ref(), stat.as_os_str()], &[]);
    // The stat file is written at start-up, through its temporary.
    let text = wait_until(
        deadline(Duration::from_secs(5)),
        "the daemon's stat file",
        || match fs::symlink_metadata(&stat) {
            Ok(meta) if meta.is_file() => Ok(fs::read_to_string(&stat).unwrap()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(text.starts_with("oom_kill "), "{text}");
    let meta = |path: &Path| fs::symlink_metadata(path).unwrap();
    assert!(meta(&socket).file_type().is_socket());
    assert_eq!(meta(&socket).mode() & 0o777, 0o666);
    assert!(meta(&lock).is_file());
    assert_eq!((meta(&lock).uid(), meta(&lock).mode() & 0o777), (0, 0o600));
    assert_eq!(meta(&stat).mode() & 0o777, 0o644);
    assert!(fs::symlink_metadata(&tmp).is_err(), "no temporary left");
    precious.assert_untouched(&daemon.log());
    assert!(
        daemon.log().contains("was not oomcount's own file"),
        "{}",
        daemon.log()
    );

    assert!(daemon.stop().unwrap().success());
    assert!(fs::symlink_metadata(&socket).is_err());
    assert!(fs::symlink_metadata(&stat).is_err());
    precious.assert_untouched(&daemon.log());
}

#[test]
fn a_folder_on_the_way_that_another_user_controls_is_refused_in_one_line() {
    require_root();
    let _links = Sysctl::set("/proc/sys/fs/protected_symlinks", "0");
    let shared = Folder::new("oomcount-shared", 0o1777);
    let precious = Precious::new();
    // nobody's link to root's folder, and a folder of nobody's own.
    let link = shared.path().join("evil");
    plant_link(precious.folder.path(), &link);
    let mine = shared.path().join("mine");
    let made = as_nobody("mkdir", &[mine.as_os_str()]);
    assert_eq!(made.code, Some(0), "{made:?}");
    let socket = link.join("oc.sock");
    let run = refused(&["--no-pin".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
    assert!(
        run.stderr.contains(&format!(
            "{} is a symbolic link owned by uid {NOBODY}",
            link.display()
        )) && run.stderr.contains("--socket"),
        "{run:?}"
    );
    let socket = mine.join("oc.sock");
    let run = refused(&["--no-pin".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
    assert!(
        run.stderr
            .contains(&format!("{} is owned by uid {NOBODY}", mine.display())),
        "{run:?}"
    );
    // The stat file's folder likewise (the socket's is fine).
    let socket = shared.path().join("oc.sock");
    let stat = mine.join("stat");
    let run = refused(&[
        "--no-pin".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--stat".as_ref(),
        stat.as_os_str(),
    ]);
    assert!(
        run.stderr.contains("--stat") && run.stderr.contains("owned by uid 65534"),
        "{run:?}"
    );
    assert!(
        fs::read_dir(&mine).unwrap().next().is_none(),
        "made in nobody's folder"
    );
    precious.assert_untouched("(refused)");
}

/// A bpffs of the test's own, mounted with `data`; unmounted when dropped.
struct Bpffs(Folder);

impl Bpffs {
    fn mount(data: &str) -> Bpffs {
        let folder = Folder::new("oomcount-bpffs", 0o755);
        nix::mount::mount(
            Some("bpf"),
            folder.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some(data),
        )
        .unwrap_or_else(|err| panic!("mount bpffs at {}: {err}", folder.path().display()));
        Bpffs(folder)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes a test's pins (with `oomcount detach`), whatever happened.
struct Unpin(PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = oomcount(&["detach".as_ref(), "--pin-dir".as_ref(), self.0.as_os_str()]);
    }
}

#[test]
fn a_pin_folder_another_user_made_is_refused_and_the_daemons_own_is_out_of_their_reach() {
    require_root();
    if !pins_possible() {
        return;
    }
    // bpffs as mounted without a mode (as the issue found /sys/fs/bpf): world-writable, sticky.
    let bpffs = Bpffs::mount("mode=1777");
    let theirs = bpffs.path().join("oomcount-x");
    let made = as_nobody("mkdir", &[theirs.as_os_str()]);
    assert_eq!(made.code, Some(0), "{made:?}");
    let scratch = Folder::new("oomcount-pinsock", 0o755);
    let socket = scratch.path().join("oc.sock");
    let run = refused(&[
        "--socket".as_ref(),
        socket.as_os_str(),
        "--pin-dir".as_ref(),
        theirs.as_os_str(),
    ]);
    assert!(
        run.stderr.starts_with(&format!(
            "oomcount: refusing the pin folder {}",
            theirs.display()
        )) && run
            .stderr
            .contains(&format!("{} is owned by uid {NOBODY}", theirs.display())),
        "{run:?}"
    );
    assert!(
        fs::read_dir(&theirs).unwrap().next().is_none(),
        "pinned there"
    );

    // The daemon's own folder: root's, 0700; nobody can neither look in nor remove a pin.
    let ours = bpffs.path().join("oomcount-y");
    let _unpin = Unpin(ours.clone());
    let daemon = Daemon::start_with(&["--pin-dir".as_ref(), ours.as_os_str()]);
    let meta = fs::symlink_metadata(&ours).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
    let link = ours.join("link_mark_victim");
    let rm = as_nobody("rm", &[link.as_os_str()]);
    assert_ne!(rm.code, Some(0), "nobody removed a pin: {rm:?}");
    assert!(link.exists());
    let ls = as_nobody("ls", &[ours.as_os_str()]);
    assert_ne!(ls.code, Some(0), "nobody listed the pins: {ls:?}");
    drop(daemon);
}

#[test]
fn bpffs_mounted_by_the_daemon_is_mode_0700() {
    require_root();
    if !pins_possible() {
        return;
    }
    // A mount namespace of the daemon's own where /sys/fs/bpf is not mounted, so that it mounts
    // bpffs itself (there only: the mount, and the pins, go with the namespace).
    let scratch = Folder::new("oomcount-mountns", 0o755);
    let socket = scratch.path().join("oc.sock");
    let log = scratch.path().join("daemon.log");
    let out = fs::File::create(&log).unwrap();
    if Command::new("unshare").arg("--version").output().is_err() {
        // The VM guests carry no util-linux; whether the daemon mounts bpffs 0700 does not
        // depend on the kernel, and the host's run checks it.
        eprintln!(
            "skipped: no unshare (util-linux) here ({}) to give the daemon a mount namespace without bpffs",
            oomcount_integration_test::kernel_release()
        );
        return;
    }
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("while umount -l /sys/fs/bpf 2>/dev/null; do :; done; exec \"$0\" \"$@\"")
        .arg(locate::oomcount())
        .args([
            "daemon",
            "--pin-dir",
            "/sys/fs/bpf/oomcount-mode",
            "--socket",
        ])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run unshare (util-linux)");
    let pid = child.id();
    let daemon_log = || fs::read_to_string(&log).unwrap_or_default();
    let mounted = wait_until(
        deadline(Duration::from_secs(20)),
        "the daemon to mount bpffs and serve",
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited ({status}): {}", daemon_log());
            }
            let served = oomcount(&["count".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
            let mountinfo =
                fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            match mountinfo
                .lines()
                .find(|l| l.split(' ').nth(4) == Some("/sys/fs/bpf") && l.contains(" - bpf "))
            {
                Some(line) if served.code == Some(0) => Ok(line.to_owned()),
                other => Err(format!("{other:?}; {}", daemon_log())),
            }
        },
    );
    let root = fs::metadata(format!("/proc/{pid}/root/sys/fs/bpf")).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", daemon_log());
    assert!(
        mounted
            .split(' ')
            .any(|o| o.split(',').any(|o| o == "mode=700")),
        "{mounted}"
    );
    // bpffs makes its root sticky whatever the mode.
    assert_eq!(root.mode() & 0o777, 0o700, "{mounted}");
    assert!(
        daemon_log().contains("mounted bpffs at /sys/fs/bpf (mode 0700)"),
        "{}",
        daemon_log()
    );
}

/// The BPF links process `pid` holds descriptors of.
fn links_held(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter(|fd| {
            fs::read_link(fd.as_ref().unwrap().path())
                .is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-link")
        })
        .count()
}

fn pin_dir(label: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("oomcount-test-{label}-{}", std::process::id()))
}

#[test]
fn pins_removed_under_a_running_daemon_are_pinned_again_and_no_kill_is_missed() {
    require_root();
    if !pins_possible() {
        return;
    }
    let pins = pin_dir("repin");
    let _unpin = Unpin(pins.clone());
    let mut daemon = Daemon::start_with(&["--pin-dir".as_ref(), pins.as_os_str()]);
    assert_eq!(
        links_held(daemon.pid()),
        2,
        "the daemon holds its own links"
    );

    // detach refuses while the daemon holds the probe, and says which process to stop.
    let run = oomcount(&["detach".as_ref(), "--pin-dir".as_ref(), pins.as_os_str()]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("held by pid {} (oomcount)", daemon.pid()))
            && run.stderr.lines().count() == 1,
        "{run:?}"
    );
    assert!(
        PINS.iter().all(|p| pins.join(p).exists()),
        "detach removed pins"
    );

    // Removed by hand: the daemon pins its probe again at once; and again when the folder
    // goes (moved away here, so that the daemon cannot fill it before it goes).
    let all_pinned = |what: &str| {
        wait_until(deadline(Duration::from_secs(5)), what, || {
            let missing: Vec<_> = PINS.iter().filter(|p| !pins.join(p).exists()).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(missing)
            }
        })
    };
    for name in ["link_mark_victim", "link_signal_generate"] {
        fs::remove_file(pins.join(name)).unwrap();
    }
    all_pinned("the daemon to pin its links again");
    let moved = with_suffix(&pins, "-moved");
    fs::rename(&pins, &moved).unwrap();
    all_pinned("the daemon to make its folder and pin its probe again");
    for name in PINS {
        fs::remove_file(moved.join(name)).unwrap();
    }
    fs::remove_dir(&moved).unwrap();
    assert!(
        daemon.log().contains("while this daemon ran: pinned again"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        fs::metadata(&pins).unwrap().mode() & 0o7777,
        0o700,
        "the folder made again"
    );

    // The pins are the daemon's own probe: a kill counted by it, then, with the daemon gone,
    // a kill counted in the pins.
    let before = vmstat::oom_kill();
    let cg = MemCg::new("repin", 32 << 20);
    let counted = daemon.count().kills;
    single_kills(&cg, 1);
    wait_kills(&daemon, counted + 1);
    daemon.crash();
    single_kills(&cg, 1);
    let run = oomcount(&[
        "count".as_ref(),
        "--json".as_ref(),
        "--socket".as_ref(),
        daemon.socket().as_os_str(),
        "--pin-dir".as_ref(),
        pins.as_os_str(),
    ]);
    let away: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("count --json: {err}: {run:?}"));
    assert_eq!(away["source"], "pins", "{away}");
    assert_eq!(
        away["kills"].as_u64(),
        Some(counted + vmstat::oom_kill() - before),
        "{away}"
    );

    // With no daemon, detach detaches, and says so.
    let run = oomcount(&["detach".as_ref(), "--pin-dir".as_ref(), pins.as_os_str()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("removed 4 pins") && run.stdout.contains("the probe is detached"),
        "{run:?}"
    );
    assert!(!pins.exists());
}

#[test]
fn pins_replaced_under_a_running_daemon_are_reported_and_left_alone() {
    require_root();
    if !pins_possible() {
        return;
    }
    let pins = pin_dir("replaced");
    let _unpin = Unpin(pins.clone());
    let daemon = Daemon::start_with(&["--pin-dir".as_ref(), pins.as_os_str()]);
    // Another object at the counters' name (the events map: not this daemon's counters).
    fs::rename(pins.join("events"), pins.join("counters")).unwrap();
    let report = "are not this daemon's probe any more";
    wait_until(
        deadline(Duration::from_secs(5)),
        "the daemon to report pins not its own",
        || {
            let log = daemon.log();
            if log.contains(report) {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    assert!(!pins.join("events").exists(), "the daemon touched them");
    // Said once, however often the folder changes meanwhile.
    fs::create_dir(pins.join("x")).unwrap();
    fs::remove_dir(pins.join("x")).unwrap();
    // The stranger removed: the daemon's own pins come back.
    fs::remove_file(pins.join("counters")).unwrap();
    wait_until(
        deadline(Duration::from_secs(5)),
        "the daemon to pin its maps again",
        || {
            let log = daemon.log();
            if PINS.iter().all(|p| pins.join(p).exists()) && log.contains("daemon's again") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    assert_eq!(daemon.log().matches(report).count(), 1, "{}", daemon.log());
    // Serving all along.
    daemon.count();
}
