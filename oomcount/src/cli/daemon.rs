//! `oomcount daemon`: flags, then the library's daemon.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: super::SocketArg,
    /// Log each mark without a kill too, and other details (debug level).
    #[arg(short, long)]
    pub verbose: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::logger::init(if args.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    crate::daemon::run(crate::daemon::Options {
        socket: args.socket.socket,
    })?;
    Ok(())
}
