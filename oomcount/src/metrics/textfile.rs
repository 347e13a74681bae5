//! The exposition as a file for node_exporter's textfile collector.
//!
//! node_exporter reads every `*.prom` file of its `--collector.textfile.directory` at each scrape,
//! whenever that happens, so the file must never be seen half written: it is written beside
//! (`<path>.tmp`, which the collector ignores, not ending in `.prom`) and renamed over the old one,
//! as the stat file is (`files::replace_atomic`: never through a link, mode 0644; `daemon::writer`
//! frees the replaced file off the runtime's thread).
//!
//! The folder is the collector's, which the daemon does not create: a folder that does not
//! exist is a mistake in the configuration (a typo, node_exporter not installed), said before
//! the daemon attaches ([`check`]), rather than a file that nobody reads.
//!
//! The folder must not be writable by others unless sticky (another user could put a link at
//! the temporary's name; `files::replace_atomic` opens it with `O_NOFOLLOW` and
//! `O_EXCL` anyway). Unlike the stat file's, the folders above it are not required to be root's:
//! Debian's `/var/lib/prometheus` belongs to the `prometheus` user. That user could swap the
//! folder for a link elsewhere, and have root write a file named `oomcount.prom`, of
//! Prometheus text, in a folder of its choosing: a name that cron.d, sudoers.d and profile.d
//! all ignore, with content whose only free parts are escaped label values on their own lines.
use std::{
    io,
    path::{Path, PathBuf},
};

/// Why the textfile cannot be written where the configuration says.
#[derive(Debug, thiserror::Error)]
pub enum TextfileError {
    #[error(
        "{0}: the folder does not exist (create it, or install node_exporter's textfile collector)"
    )]
    NoFolder(PathBuf),
    #[error("{0} is not a folder")]
    NotFolder(PathBuf),
    #[error("{0} must end in .prom, the names node_exporter's textfile collector reads")]
    NotProm(PathBuf),
    #[error("{0} is writable by other users (mode {1:04o}) and not sticky")]
    Writable(PathBuf, u32),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

/// Checks that `path` can be the textfile: named `*.prom`, in an existing folder that is safe for
/// root to write in.
pub fn check(path: &Path) -> Result<(), TextfileError> {
    if path.extension().is_none_or(|ext| ext != "prom") {
        return Err(TextfileError::NotProm(path.to_path_buf()));
    }
    let folder = crate::files::parent(path);
    use std::os::unix::fs::MetadataExt as _;
    let meta = match std::fs::metadata(folder) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return Err(TextfileError::NotFolder(folder.to_path_buf())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(TextfileError::NoFolder(folder.to_path_buf()));
        }
        Err(err) => return Err(TextfileError::Io(folder.to_path_buf(), err)),
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(TextfileError::Writable(folder.to_path_buf(), mode));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_missing_folder_or_name_is_said() {
        let tmp = crate::files::TempDir::new("textfile-check");
        let dir = &tmp.0;
        assert!(matches!(
            check(&dir.join("absent/oomcount.prom")),
            Err(TextfileError::NoFolder(_))
        ));
        assert!(matches!(
            check(&dir.join("oomcount.txt")),
            Err(TextfileError::NotProm(_))
        ));
        use std::os::unix::fs::PermissionsExt as _;
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check(&open.join("oomcount.prom")),
            Err(TextfileError::Writable(..))
        ));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        check(&open.join("oomcount.prom")).unwrap();
        fs::write(dir.join("file"), "").unwrap();
        assert!(matches!(
            check(&dir.join("file/oomcount.prom")),
            Err(TextfileError::NotFolder(_))
        ));
        let said = check(&dir.join("absent/oomcount.prom"))
            .unwrap_err()
            .to_string();
        assert!(said.contains("does not exist"), "{said}");
    }
}
