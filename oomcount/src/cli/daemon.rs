//! `oomcount daemon`: flags, then the library's daemon.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: super::SocketArg,
    /// Log each mark without a kill too, and other details (debug level).
    #[arg(short, long)]
    pub verbose: bool,
    /// Events kept for `oomcount list` (about 400 bytes each).
    #[arg(long, default_value_t = crate::daemon::DEFAULT_HISTORY, value_name = "EVENTS")]
    pub history: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::logger::init(if args.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    crate::daemon::run(crate::daemon::Options {
        socket: args.socket.socket,
        history: args.history,
    })?;
    Ok(())
}
