//! `oomcount daemon`: flags, then the library's daemon.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub socket: super::SocketArg,
    /// Log each mark without a kill too, and other details (debug level).
    #[arg(short, long)]
    pub verbose: bool,
    /// Where to publish the counts for `cat` (default: /run/oomcount/stat, or SOCKET.stat beside
    /// another socket); "" for none.
    #[arg(long, value_name = "PATH")]
    pub stat: Option<std::path::PathBuf>,
    /// Where to pin the probe in bpffs, so that it counts on while no daemon runs.
    #[arg(long, value_name = "DIR", default_value = oomcount::probe::pins::DEFAULT_DIR)]
    pub pin_dir: std::path::PathBuf,
    /// Pin nothing: the probe detaches when the daemon exits.
    #[arg(long)]
    pub no_pin: bool,
    /// Events kept for `oomcount list` (about 400 bytes each).
    #[arg(long, default_value_t = oomcount::daemon::DEFAULT_HISTORY, value_name = "EVENTS")]
    pub history: usize,
    /// The watchdog and its rules (TOML) [default: /etc/oomcount/oomcount.toml, where it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Judge and log as configured, but open no watchdog device.
    #[arg(long)]
    pub dry_run: bool,
}

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
