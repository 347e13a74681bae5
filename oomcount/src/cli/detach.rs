//! `oomcount detach`: removes the pins, so that the probe stops once no daemon holds it.
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pin folder.
    #[arg(long, value_name = "DIR", default_value = crate::pins::DEFAULT_DIR)]
    pub pin_dir: std::path::PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let removed = crate::pins::remove(&args.pin_dir)
        .with_context(|| format!("detach (as root?) from {}", args.pin_dir.display()))?;
    // The folder goes too when nothing else is in it.
    let _ = std::fs::remove_dir(&args.pin_dir);
    if removed == 0 {
        println!("no pins in {}", args.pin_dir.display());
    } else {
        println!(
            "removed {removed} pins from {}; a running daemon keeps its probe until it stops",
            args.pin_dir.display()
        );
    }
    Ok(())
}
