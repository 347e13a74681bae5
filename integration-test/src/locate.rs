//! Where the binaries under test are. Cargo builds a test as `target/<profile>/deps/<name>-<hash>`
//! and binaries as `target/<profile>/<name>`; the VM guest has no target folder and names them
//! by environment (`OOMCOUNT_BIN=/bin/oomcount`, `OOMCOUNT_HOG=/bin/oomcount-hog`).
use std::path::PathBuf;

/// The binary named by environment variable `var`, else `name` in the folder above the running
/// test executable's `deps/`. Panics, saying how to build it, when it is not there.
pub fn binary(var: &str, name: &str, build_hint: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe
        .parent()
        .expect("the test executable's folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {} ({var} unset): {build_hint}",
        path.display()
    );
    path
}

/// The daemon under test: `$OOMCOUNT_BIN`, else `target/<profile>/oomcount`.
pub fn oomcount() -> PathBuf {
    binary(
        "OOMCOUNT_BIN",
        "oomcount",
        "build it first with `cargo build -p oomcount` (same profile as the tests), or set OOMCOUNT_BIN",
    )
}

/// The OOM producer: `$OOMCOUNT_HOG`, else `target/<profile>/oomcount-hog`.
pub fn hog() -> PathBuf {
    binary(
        "OOMCOUNT_HOG",
        "oomcount-hog",
        "cargo builds it with this package's tests (`cargo test -p oomcount-integration-test`), or set OOMCOUNT_HOG",
    )
}
