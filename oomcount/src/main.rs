//! `oomcount`: parse, run, and decide the exit status in one place.
use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    // The daemon starting a hook through its own binary (`notify::hooks`), before anything else.
    if let Some(code) = oomcount::notify::hooks::launch(&args) {
        return ExitCode::from(code);
    }
    // clap prints usage errors itself and exits 2; --help and --version exit 0.
    let cli = cli::Cli::parse_from(cli::args(args));
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `oomcount count | head -c0`: the reader went away, which is not an error.
        Err(err) if cli::reader_gone(&err) => ExitCode::SUCCESS,
        // `oomcount check` speaks in exit codes (watchdog(8)'s convention).
        Err(err) if err.is::<cli::check::Failed>() => {
            let failed = err.downcast_ref::<cli::check::Failed>();
            eprintln!("oomcount: {err}");
            ExitCode::from(failed.map_or(1, |f| f.code))
        }
        Err(err) => {
            eprintln!("oomcount: {err:#}");
            ExitCode::FAILURE
        }
    }
}
