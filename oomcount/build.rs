//! Builds the eBPF object with aya-build (nightly, bpf-linker) into `OUT_DIR`, where
//! `include_bytes_aligned!` picks it up. `cargo xtask setup` installs what this needs.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../oomcount-ebpf");
    // The shared types are compiled into the object too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../oomcount-common/src")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "oomcount-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
