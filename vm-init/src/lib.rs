//! oomcount's VM test guest: the `/init` binary, and the report format it shares with the host.
//!
//! `cargo xtask vm-test` boots Debian kernels under QEMU with an initramfs whose `/init` is this
//! crate's binary. The binary is guest-only; this library holds what both sides must agree on,
//! so that the line `/init` writes and the line the host parses are defined once.
pub mod report;
