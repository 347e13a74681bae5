// The toolchain that builds and lints the eBPF crate, pinned here and nowhere else.
//
// `include!`d by `oomcount/build.rs` (which builds the eBPF object), by `oomcount-ebpf/build.rs`
// and by `xtask` (which installs and checks what the build needs), so that the three never
// disagree. No crate compiles this file on its own.
//
// Why a pinned stable toolchain and not `nightly`: bpf-linker reads the bitcode that rustc's own
// LLVM writes, so it must be built against the same LLVM major, and the only LLVM it can be built
// against here is a Debian package (bookworm has llvm-15, -16, -19 and -22). `nightly` moves:
// `rustup update` turned 1.97 (LLVM 22) into 1.101 (LLVM 23) and every link then failed with
// `ERROR llvm: Invalid record`. Stable 1.95.0 carries LLVM 22.1, the major of Debian's llvm-22;
// `-Z build-std=core` (the BPF target ships no `core`) is enabled on it by `RUSTC_BOOTSTRAP=1`,
// which `oomcount/build.rs` sets for the eBPF build alone. The host crates keep building with
// whatever stable toolchain the machine has.
//
// Not every includer uses every item, hence the `allow(dead_code)`s.
//
// To move the pin: pick a toolchain whose `rustc -vV` LLVM major Debian packages as
// `llvm-N-dev` and bpf-linker supports as feature `llvm-N`; `cargo xtask setup` derives the
// packages, the feature and the linker's folder from that major.

/// The rustup toolchain that builds and lints `oomcount-ebpf` (passed to `rustup run`).
#[allow(dead_code)]
pub const EBPF_TOOLCHAIN: &str = "1.95.0";

/// The bpf-linker release the eBPF object is linked with, installed by `cargo xtask setup`.
#[allow(dead_code)]
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where `cargo xtask setup` installs the project's own bpf-linker, built against the LLVM of
/// [`EBPF_TOOLCHAIN`] (`<root>/bin/bpf-linker`). A bpf-linker on the PATH is never used: one
/// built against another LLVM fails only at link time, with `Invalid record`.
///
/// `$XDG_CACHE_HOME/oomcount/bpf-linker-<version>` (default `~/.cache`): outside the clone, so
/// that a fresh clone on the same machine does not build it again.
#[allow(dead_code)]
pub fn bpf_linker_root() -> Option<std::path::PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(
        cache
            .join("oomcount")
            .join(format!("bpf-linker-{BPF_LINKER_VERSION}")),
    )
}

/// The project's bpf-linker binary (see [`bpf_linker_root`]).
#[allow(dead_code)]
pub fn bpf_linker() -> Option<std::path::PathBuf> {
    bpf_linker_root().map(|root| root.join("bin").join("bpf-linker"))
}
