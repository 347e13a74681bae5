//! `oomcount detach`: removes the pins, so that the probe stops, unless a running daemon holds
//! it: that daemon keeps its probe attached and pins it again, so detach refuses and says which
//! process to stop first.
use anyhow::Context as _;

pub use oomcount_args::detach::Args;

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.pin_dir;
    let detached = match oomcount::probe::pins::detach(dir) {
        Err(err @ oomcount::probe::pins::PinError::Held { .. }) => return Err(err.into()),
        other => other.with_context(|| format!("detach (as root?) from {}", dir.display()))?,
    };
    match (detached.removed, detached.held_by.as_slice()) {
        (0, []) => println!("no pins in {}", dir.display()),
        (n, []) => println!(
            "removed {n} pins from {}: the probe is detached",
            dir.display()
        ),
        (n, holders) => println!(
            "removed {n} pins from {}, but the probe is still attached: held by {}",
            dir.display(),
            holders.join(", ")
        ),
    }
    Ok(())
}
