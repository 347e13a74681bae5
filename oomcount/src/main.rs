//! `oomcount`: parse, run, and decide the exit status in one place.
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2; --help and --version exit 0.
    let cli = oomcount::cli::Cli::parse();
    match oomcount::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oomcount: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `oomcount count | head -1` is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
