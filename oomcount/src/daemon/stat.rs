//! `/run/oomcount/stat`: the counts for anyone to `cat`, the way `/proc/vmstat` has them.
//!
//! One `name value` per line, world-readable, replaced atomically (written beside, then renamed)
//! after each batch of events, so a reader never sees half a file and needs no privileges, no
//! socket and no parsing beyond `awk`.
use std::path::{Path, PathBuf};

use crate::protocol::CountReply;

/// The stat file that goes with a daemon socket: `stat` beside the default socket
/// (`/run/oomcount/stat`), `<socket>.stat` beside any other, so that daemons whose sockets share
/// a folder do not share a stat file.
pub fn path_for(socket: &Path) -> PathBuf {
    let default = Path::new(crate::protocol::DEFAULT_SOCKET);
    if socket.file_name() == default.file_name() {
        socket.with_file_name("stat")
    } else {
        let mut name = socket.as_os_str().to_owned();
        name.push(".stat");
        PathBuf::from(name)
    }
}

/// The file's contents.
pub(crate) fn render(counts: &CountReply) -> String {
    let mut out = String::with_capacity(256);
    let mut line = |name: &str, value: &dyn std::fmt::Display| {
        out.push_str(name);
        out.push(' ');
        out.push_str(&value.to_string());
        out.push('\n');
    };
    line("oom_kill", &counts.kills);
    line("oom_marked", &counts.marked);
    line("oom_kill_memcg", &counts.kills_memcg);
    line("oom_kill_global", &counts.kills_global);
    line("oom_events_dropped", &counts.events_dropped);
    line("attached_at", &counts.attached_at);
    out
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;
    use crate::files::{TempDir, replace_atomic};

    fn counts() -> CountReply {
        CountReply::sample()
    }

    #[test]
    fn one_name_value_per_line() {
        assert_eq!(
            render(&counts()),
            "oom_kill 3\noom_marked 5\noom_kill_memcg 2\noom_kill_global 1\noom_events_dropped 0\nattached_at 2026-11-26T05:00:00Z\n"
        );
    }

    #[test]
    fn replaces_the_file_world_readable() {
        let tmp = TempDir::new("stat");
        let dir = &tmp.0;
        let path = dir.join("stat");
        replace_atomic(&path, "oom_kill 1\n").unwrap();
        replace_atomic(&path, "oom_kill 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "oom_kill 2\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(!dir.join("stat.tmp").exists());
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["stat"]);
        assert_eq!(
            path_for(Path::new("/run/oomcount/oomcount.sock")),
            Path::new("/run/oomcount/stat")
        );
    }
}
