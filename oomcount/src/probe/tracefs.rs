//! Finding (and where needed mounting) tracefs, and reading tracepoint layouts from it.
//!
//! The records of `oom/mark_victim` changed shape in 6.9 (and stable kernels got the new shape by
//! backport), so field offsets are never compiled in: they are read from each tracepoint's
//! `format` file when the program is loaded and handed to it as [`oomcount_common::Config`].
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use oomcount_common::{
    ABSENT, Config, PAIR_WINDOW_NS, TP_MARK_VICTIM, TP_SIGNAL_GENERATE, offsets,
};

/// Where tracefs is looked for, in order; the first is where it is mounted when absent.
const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed (mount it with `mount -t tracefs nodev /sys/kernel/tracing`)"
    )]
    Mount(#[source] nix::Error),
    #[error(
        "this kernel ({kernel}) has no {category}/{name} tracepoint (no {path}): oomcount needs a kernel with it (Linux 4.13 or newer, CONFIG_TRACEPOINTS)"
    )]
    NoTracepoint {
        kernel: String,
        category: &'static str,
        name: &'static str,
        path: PathBuf,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: field `{field}` is missing or has an unexpected size; this kernel's layout is not one oomcount knows"
    )]
    Layout { path: PathBuf, field: &'static str },
}

/// The tracefs mount point, mounting tracefs at `/sys/kernel/tracing` if none is mounted.
pub(crate) fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let target = Path::new(TRACEFS_PATHS[0]);
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(TracefsError::Mount)?;
    log::info!("mounted tracefs at {}", target.display());
    Ok(target.to_path_buf())
}

/// A mounted tracefs: one of the usual paths with an `events` folder in it.
pub(crate) fn find() -> Option<PathBuf> {
    TRACEFS_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.join("events").is_dir())
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub decl: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("field:")?;
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next()?.to_owned();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the last word of the declaration, without any array suffix.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?
                .split('[')
                .next()?
                .to_owned();
            Some(Field {
                decl,
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

fn offset_of(fields: &[Field], name: &str, size: u32) -> Option<u32> {
    fields
        .iter()
        .find(|f| f.name == name && f.size == size)
        .map(|f| f.offset)
}

/// Builds the program's configuration from the two tracepoints' layouts.
pub fn config_from_formats(
    mark_victim: &[Field],
    signal_generate: &[Field],
    mark_path: &Path,
    signal_path: &Path,
) -> Result<Config, TracefsError> {
    let need = |fields: &[Field], name: &'static str, size: u32, path: &Path| {
        offset_of(fields, name, size).ok_or_else(|| TracefsError::Layout {
            path: path.to_path_buf(),
            field: name,
        })
    };
    let mut config = Config {
        mark_victim: offsets::MarkVictim {
            pid: need(mark_victim, "pid", 4, mark_path)?,
            ..Default::default()
        },
        signal_generate: offsets::SignalGenerate {
            sig: need(signal_generate, "sig", 4, signal_path)?,
            code: need(signal_generate, "code", 4, signal_path)?,
            comm: need(signal_generate, "comm", 16, signal_path)?,
            pid: need(signal_generate, "pid", 4, signal_path)?,
            group: need(signal_generate, "group", 4, signal_path)?,
        },
        pair_window_ns: PAIR_WINDOW_NS,
        ..Config::default()
    };
    // The new layout (6.9+ and backports): all of these, or none of them.
    let memory = (|| {
        Some((
            offset_of(mark_victim, "total_vm", 8)?,
            offset_of(mark_victim, "anon_rss", 8)?,
            offset_of(mark_victim, "file_rss", 8)?,
            offset_of(mark_victim, "shmem_rss", 8)?,
            offset_of(mark_victim, "pgtables", 8)?,
            offset_of(mark_victim, "uid", 4)?,
            offset_of(mark_victim, "oom_score_adj", 2)?,
        ))
    })();
    if let Some((total_vm, anon, file, shmem, pgtables, uid, adj)) = memory {
        config.mark_victim.total_vm = total_vm;
        config.mark_victim.anon_rss = anon;
        config.mark_victim.file_rss = file;
        config.mark_victim.shmem_rss = shmem;
        config.mark_victim.pgtables = pgtables;
        config.mark_victim.uid = uid;
        config.mark_victim.oom_score_adj = adj;
    }
    config.mark_victim.comm = mark_victim
        .iter()
        .find(|f| f.name == "comm" && f.decl.starts_with("__data_loc"))
        .map_or(ABSENT, |f| f.offset);
    Ok(config)
}

/// Reads both tracepoints' layouts from tracefs and builds the program's configuration.
pub(crate) fn load_config(tracefs: &Path) -> Result<Config, TracefsError> {
    let read = |(category, name): (&'static str, &'static str)| {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        match fs::read_to_string(&path) {
            Ok(text) => Ok((parse_format(&text), path)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(TracefsError::NoTracepoint {
                kernel: kernel_release(),
                category,
                name,
                path,
            }),
            Err(source) => Err(TracefsError::Read { path, source }),
        }
    };
    let (mark, mark_path) = read(TP_MARK_VICTIM)?;
    let (signal, signal_path) = read(TP_SIGNAL_GENERATE)?;
    config_from_formats(&mark, &signal, &mark_path, &signal_path)
}

/// `uname -r`, for messages.
pub(crate) fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_MARK: &str = "name: mark_victim\nID: 609\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;\n\
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;\n\
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;\n\
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;\n\n\
print fmt: \"pid=%d\", REC->pid\n";

    const OLD_MARK: &str = "name: mark_victim\nID: 400\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\n\
print fmt: \"pid=%d\", REC->pid\n";

    const SIGNAL: &str = "name: signal_generate\nformat:\n\
\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int errno;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:int code;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:1;\n\
\tfield:pid_t pid;\toffset:36;\tsize:4;\tsigned:1;\n\
\tfield:int group;\toffset:40;\tsize:4;\tsigned:1;\n\
\tfield:int result;\toffset:44;\tsize:4;\tsigned:1;\n";

    fn config(mark: &str) -> Result<Config, TracefsError> {
        config_from_formats(
            &parse_format(mark),
            &parse_format(SIGNAL),
            Path::new("mark"),
            Path::new("signal"),
        )
    }

    #[test]
    fn parses_field_names_and_offsets() {
        let fields = parse_format(SIGNAL);
        assert_eq!(fields.len(), 7);
        assert_eq!(fields[3].name, "comm");
        assert_eq!((fields[3].offset, fields[3].size), (20, 16));
        assert_eq!(parse_format(NEW_MARK)[3].name, "comm");
    }

    #[test]
    fn new_layout_has_memory_fields() {
        let c = config(NEW_MARK).unwrap();
        assert_eq!(c.mark_victim.pid, 8);
        assert_eq!(c.mark_victim.comm, 12);
        assert_eq!(
            (
                c.mark_victim.total_vm,
                c.mark_victim.pgtables,
                c.mark_victim.uid
            ),
            (16, 56, 48)
        );
        assert_eq!(c.mark_victim.oom_score_adj, 64);
        assert_eq!(
            (
                c.signal_generate.sig,
                c.signal_generate.code,
                c.signal_generate.comm,
                c.signal_generate.pid,
                c.signal_generate.group
            ),
            (8, 16, 20, 36, 40)
        );
        assert_eq!(c.pair_window_ns, PAIR_WINDOW_NS);
    }

    #[test]
    fn old_layout_marks_memory_absent() {
        let c = config(OLD_MARK).unwrap();
        assert_eq!(c.mark_victim.pid, 8);
        assert_eq!(c.mark_victim.comm, ABSENT);
        assert_eq!(c.mark_victim.total_vm, ABSENT);
        assert_eq!(c.mark_victim.oom_score_adj, ABSENT);
    }

    #[test]
    fn missing_pid_is_a_layout_error() {
        let err =
            config("format:\n\tfield:long pid;\toffset:8;\tsize:8;\tsigned:1;\n").unwrap_err();
        assert!(
            matches!(err, TracefsError::Layout { field: "pid", .. }),
            "{err}"
        );
    }
}
