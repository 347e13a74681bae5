//! Between tests, nothing of one test may reach the next: its processes (a daemon it forgot, a
//! hog that outlived its deadline), its cgroups, its bpffs pins. The tests clean up after
//! themselves; what they leave is removed here and named on the console, as a hint.
use std::path::Path;

pub fn after_test(test: &str) {
    kill_all();
    let mut left = Vec::new();
    remove_cgroups(Path::new("/sys/fs/cgroup"), true, &mut left);
    remove_pins(Path::new("/sys/fs/bpf"), &mut left);
    for what in left {
        println!("oomcount-vm: left behind by {test}: {what}");
    }
}

/// SIGKILLs every process but init, then reaps them all.
fn kill_all() {
    // SAFETY: kill(-1) signals every process init may signal, except init itself.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            break; // ECHILD: no child left
        }
    }
}

/// Removes every cgroup below `dir`, children first (a cgroup with children cannot go); names
/// the top ones, and any that would not go.
fn remove_cgroups(dir: &Path, top: bool, left: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&path, false, left);
            match std::fs::remove_dir(&path) {
                Ok(()) if top => left.push(format!("cgroup {}", path.display())),
                Ok(()) => {}
                Err(err) => left.push(format!("cgroup {} (not removed: {err})", path.display())),
            }
        }
    }
}

fn remove_pins(dir: &Path, left: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        let note = removed.err().map(|err| format!(" (not removed: {err})"));
        left.push(format!(
            "pin {}{}",
            path.display(),
            note.unwrap_or_default()
        ));
    }
}
