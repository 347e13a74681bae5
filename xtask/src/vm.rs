//! `cargo xtask vm-test`: the privileged tests inside Debian kernels booted under QEMU.
use clap::Args;

#[derive(Args, Default)]
pub struct VmTestArgs {
    /// Kernel series to boot (5.10.0-32, 5.10, 6.1, 6.12, 7.2); the default matrix when none.
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
}

pub fn run(_args: VmTestArgs) -> anyhow::Result<()> {
    anyhow::bail!("vm-test is not written yet")
}
