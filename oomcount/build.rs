//! Builds the eBPF object with aya-build into `OUT_DIR`, where `include_bytes_aligned!` picks it
//! up: with the pinned toolchain and the project's own bpf-linker (`oomcount-ebpf/toolchain.rs`
//! says why), which `cargo xtask setup` installs and checks.
use anyhow::Context as _;

include!("../oomcount-ebpf/toolchain.rs");

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../oomcount-ebpf");
    // The shared types are compiled into the object too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../oomcount-common/src")
    );
    // The daemon's binary: the functions it runs once it serves, first and together in `.text`
    // (hot-functions.txt; `cargo xtask bench --hot-functions` writes it). The daemon gives back
    // the pages start-up mapped and locks what it touches after (host::system::protect_self),
    // but each fault maps the 64 KiB around it: spread over the whole binary, its ~0.3 MB of
    // steady code kept ~1.4 MB resident. An ordering file is lld's (rustc's default linker on
    // x86_64-unknown-linux-gnu); a name it does not find (another toolchain) is skipped.
    // Segments aligned to 64 KiB: the kernel then loads the binary at a 64 KiB boundary (Linux
    // 5.10+ honours p_align), so the fault-around windows fall on the same bytes of the file at
    // every start. At 4 KiB, ASLR shifted them by a random number of pages, and the same daemon's
    // resident code and read-only data came out 24-64 kB apart from start to start.
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu") {
        let hot = concat!(env!("CARGO_MANIFEST_DIR"), "/hot-functions.txt");
        println!("cargo:rerun-if-changed={hot}");
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={hot}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=65536");
    }
    let linker = bpf_linker().context("neither XDG_CACHE_HOME nor HOME is set")?;
    anyhow::ensure!(
        linker.is_file(),
        "{} is missing: run `cargo xtask setup` (it builds bpf-linker {BPF_LINKER_VERSION} \
         against the LLVM of the {EBPF_TOOLCHAIN} toolchain)",
        linker.display()
    );
    println!("cargo:rerun-if-changed={}", linker.display());
    for var in ["XDG_CACHE_HOME", "HOME"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // SAFETY: a build script is single-threaded here; the variables are for the cargo that
    // aya-build spawns below. RUSTC_BOOTSTRAP=1 enables `-Z build-std=core` on the stable
    // toolchain (aya-build passes it when it sees the variable); the linker is the project's own,
    // never a bpf-linker on the PATH; RUSTUP_AUTO_INSTALL=0 keeps `rustup run` from installing a
    // missing toolchain as a side effect of a build. aya-build turns every line the inner cargo
    // prints into a `cargo:warning`: CARGO_TERM_QUIET leaves only its errors and the compiler's
    // own diagnostics, so that a clean build prints no warning.
    unsafe {
        std::env::set_var("CARGO_TERM_QUIET", "true");
        std::env::set_var("RUSTC_BOOTSTRAP", "1");
        std::env::set_var("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
        std::env::set_var("CARGO_TARGET_BPFEB_UNKNOWN_NONE_LINKER", &linker);
        std::env::set_var("RUSTUP_AUTO_INSTALL", "0");
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "oomcount-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
