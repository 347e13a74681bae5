//! The command line: one module per subcommand, each with its flags and its `run`.
//!
//! Parsing lives here; the work lives in the library. Every subcommand returns an
//! `anyhow::Result` whose error is printed as one line by `main`, with exit status 1; clap's own
//! usage errors exit 2. A write to stdout goes through [`Stdout`], so that `main` can tell the one
//! failure that is no failure (the reader went away: `oomcount list | head -1`) from an EPIPE on
//! the daemon's socket, which is.
pub mod check;
pub mod config;
pub mod count;
pub mod daemon;
pub mod detach;
pub mod guests;
pub mod list;
pub mod next;
pub mod status;
pub mod top;
pub mod watch;

use std::io::Write as _;

// The definitions live in `oomcount-args`, which xtask also reads for the man pages and the
// completions; each subcommand's `run` is here.
pub use oomcount_args::{Cli, Command, CountSource};

/// A write to stdout that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout")]
pub struct Stdout(#[source] pub std::io::Error);

/// Prints `value` to stdout: as one JSON line with `--json`, else as `human` writes it for a
/// person. Every command that has `--json` prints through here.
pub(crate) fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<(), Stdout> {
    let mut out = std::io::stdout().lock();
    if json {
        write_json(&mut out, value)
    } else {
        out.write_all(human(value).as_bytes()).map_err(Stdout)
    }
}

/// Writes `value` as one JSON line to `out` (stdout).
pub(crate) fn write_json(
    out: &mut impl std::io::Write,
    value: &impl serde::Serialize,
) -> Result<(), Stdout> {
    // Our replies always serialize: what can fail is the write, which serde_json hands back.
    serde_json::to_writer(&mut *out, value).map_err(|err| Stdout(err.into()))?;
    writeln!(out).map_err(Stdout)
}

/// Whether `err` is only that stdout was closed (EPIPE on stdout), which ends a command quietly
/// with status 0. An EPIPE or ECONNRESET anywhere else, the daemon's socket first of all, is not:
/// a command that got no answer must not exit 0 with nothing printed.
pub fn reader_gone(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<Stdout>()
            .is_some_and(|Stdout(io)| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The command line, with `oomcount check` when called by that name: a symlink named
/// `oomcount-check` in watchdog(8)'s test-directory is run as `oomcount-check test` and
/// `oomcount-check repair CODE`.
pub fn args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> impl Iterator<Item = std::ffi::OsString> {
    let mut args = args.into_iter().peekable();
    let check = args.peek().is_some_and(|argv0| {
        std::path::Path::new(argv0)
            .file_name()
            .is_some_and(|name| name == "oomcount-check")
    });
    let first = args.next().map(|_| "oomcount".into());
    first
        .into_iter()
        .chain(check.then(|| "check".into()))
        .chain(args)
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => daemon::run(args),
        Command::Count(args) => count::run(args),
        Command::Watch(args) => watch::run(args),
        Command::List(args) => list::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Next(args) => next::run(args),
        Command::Status(args) => status::run(args),
        Command::Check(args) => check::run(args),
        Command::Config(args) => config::run(args),
        Command::Guests(args) => guests::run(args),
        Command::Top(args) => top::run(args),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::{CommandFactory as _, Parser as _};

    use super::*;
    use oomcount::protocol::DEFAULT_SOCKET;

    /// The defaults the command line shows are the library's.
    #[test]
    fn defaults_agree_with_the_library() {
        assert_eq!(
            oomcount_args::DEFAULT_SOCKET,
            oomcount::protocol::DEFAULT_SOCKET
        );
        assert_eq!(
            oomcount_args::DEFAULT_PIN_DIR,
            oomcount::probe::pins::DEFAULT_DIR
        );
        assert_eq!(
            oomcount_args::DEFAULT_HISTORY,
            oomcount::daemon::DEFAULT_HISTORY
        );
        assert_eq!(
            oomcount_args::DEFAULT_CONFIG,
            oomcount::config::DEFAULT_PATH
        );
        assert_eq!(
            [check::GARBAGE, check::NO_ANSWER, check::NO_DAEMON],
            [
                libc::EPROTO as u8,
                libc::ETIMEDOUT as u8,
                libc::ECONNREFUSED as u8
            ]
        );
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn count_takes_json_and_socket() {
        let cli =
            Cli::try_parse_from(["oomcount", "count", "--json", "--socket", "/tmp/s"]).unwrap();
        let Command::Count(args) = cli.command else {
            panic!("not count: {cli:?}")
        };
        assert!(args.json);
        assert_eq!(args.source.socket.socket, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn socket_defaults_to_run() {
        let cli = Cli::try_parse_from(["oomcount", "daemon"]).unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!("not daemon: {cli:?}")
        };
        if std::env::var_os("OOMCOUNT_SOCKET").is_none() {
            assert_eq!(args.socket.socket, PathBuf::from(DEFAULT_SOCKET));
        }
    }

    #[test]
    fn called_as_oomcount_check_it_checks() {
        let argv = ["/etc/watchdog.d/oomcount-check", "repair", "255"].map(Into::into);
        let cli = Cli::try_parse_from(args(argv)).unwrap();
        let Command::Check(check) = cli.command else {
            panic!("not check: {cli:?}")
        };
        assert_eq!(check.mode, Some(check::Mode::Repair));
        assert_eq!(check.code, Some(255));
        let argv = ["/usr/sbin/oomcount", "count"].map(Into::into);
        assert!(matches!(
            Cli::try_parse_from(args(argv)).unwrap().command,
            Command::Count(_)
        ));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for argv in [
            &["oomcount", "count", "--jsn"][..],
            &["oomcount", "frobnicate"],
            &["oomcount", "daemon", "--socket"],
            &["oomcount"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn only_a_closed_stdout_is_a_quiet_end() {
        use std::io::{Error, ErrorKind};
        let socket = std::path::PathBuf::from("/run/oomcount/oomcount.sock");
        let cases: [(anyhow::Error, bool); 7] = [
            (Stdout(Error::from(ErrorKind::BrokenPipe)).into(), true),
            (
                anyhow::Error::from(Stdout(Error::from(ErrorKind::BrokenPipe))).context("list"),
                true,
            ),
            (Stdout(Error::from(ErrorKind::StorageFull)).into(), false),
            // The daemon's socket: EPIPE there is a failure, however it reached the error.
            (Error::from(ErrorKind::BrokenPipe).into(), false),
            (
                anyhow::Error::from(Error::from(ErrorKind::BrokenPipe)).context("write"),
                false,
            ),
            (
                oomcount::protocol::ClientError::Closed(socket.clone()).into(),
                false,
            ),
            (
                oomcount::protocol::ClientError::Io {
                    path: socket,
                    source: Error::from(ErrorKind::BrokenPipe),
                }
                .into(),
                false,
            ),
        ];
        for (err, quiet) in cases {
            assert_eq!(reader_gone(&err), quiet, "{err:#}");
        }
    }

    #[test]
    fn every_subcommand_has_help() {
        for sub in Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
