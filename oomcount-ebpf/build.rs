//! Rebuild the eBPF object when the project's bpf-linker changes: it is the linker, but cargo does
//! not know.
include!("toolchain.rs");

fn main() {
    if let Some(linker) = bpf_linker() {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
