//! Rebuild the eBPF object when bpf-linker changes: it is the linker, but cargo does not know.
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found: run `cargo xtask setup` (it installs bpf-linker 0.13 against LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
