//! Another user against the daemon's files: nobody (uid 65534) plants links at the names the
//! daemon derives and folders on its way. The daemon must write nowhere it was not told to, and
//! refuse folders others control in one line.
use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use oomcount_integration_test::{
    Daemon,
    hostile::{Folder, NOBODY, Sysctl, as_nobody, plant_link},
    require_root,
    wait::{deadline, wait_until},
    watchdog::{Run, oomcount},
};

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
    let made = as_nobody("/bin/mkdir", &[mine.as_os_str()]);
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
