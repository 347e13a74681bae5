//! `oomcount daemon`: flags, then the library's daemon.
pub use oomcount_args::daemon::Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    oomcount::logger::init(if args.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    // Before anything is attached or armed: a bad file stops here, naming its line.
    let config = oomcount::config::Config::load(args.config.as_deref())?;
    let stat = match args.stat {
        Some(path) if path.as_os_str().is_empty() => None,
        Some(path) => Some(path),
        None => Some(oomcount::daemon::stat::path_for(&args.socket.socket)),
    };
    oomcount::daemon::run(oomcount::daemon::Options {
        stat,
        pin_dir: (!args.no_pin).then_some(args.pin_dir),
        socket: args.socket.socket,
        history: args.history,
        config,
        dry_run: args.dry_run,
    })?;
    Ok(())
}
