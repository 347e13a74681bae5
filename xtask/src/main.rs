//! oomcount's developer tasks: `cargo xtask setup|run|test|vm-test|bench`.
//!
//! Each task first runs `setup`, which makes sure (idempotently, saying what it installs) that a
//! fresh Debian 12 machine has what the build needs, so that the README's two commands work on a
//! clean clone. The eBPF object itself is built by `oomcount/build.rs`, not here.
mod bench;
mod deb;
mod fuzz;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "oomcount developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build needs (apt packages, bpf-linker, cargo-deb, the eBPF toolchain's
    /// rust-src), idempotently.
    Setup,
    /// Build and run the daemon in the foreground on built-in defaults (as root).
    Run {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
        /// Arguments passed to `oomcount daemon`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: lints, unit tests, privileged tests on this kernel, then the VM matrix.
    Test(test::TestArgs),
    /// Boot Debian kernels under QEMU and run the privileged tests inside each.
    VmTest(vm::VmTestArgs),
    /// Boot Debian's Xen 4.17 under QEMU with a dom0 and two PV guests running oomcount, and
    /// check what `oomcount guests` shows against each guest's own /proc/vmstat.
    XenTest(vm::xen::XenTestArgs),
    /// Measure the release daemon beside bpftrace, node_exporter and watchdog(8) (installing
    /// them), print the table of figures and goals, and write it to target/bench/bench.json.
    Bench(bench::BenchArgs),
    /// Build the Debian package, target/debian/oomcount_<version>_amd64.deb (with cargo-deb).
    Deb(deb::DebArgs),
    /// Run the fuzz targets (socket requests, config, tracefs formats, BTF, cgroup paths, xenstore) for a bounded time
    /// each, from their seeds in fuzz/corpus; a crash fails, with the input saved to replay.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(setup::Needs::Vm),
        Command::Run { release, args } => {
            setup::run(setup::Needs::Build).and_then(|()| run(release, &args))
        }
        Command::Test(args) => test::run(args),
        Command::VmTest(args) => setup::run(setup::Needs::Vm).and_then(|()| vm::run(args)),
        Command::XenTest(args) => setup::run(setup::Needs::Vm).and_then(|()| vm::xen::run(args)),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Deb(args) if args.test => deb::install_test::run(),
        Command::Deb(args) => deb::run(args).map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask run`: build the daemon, then exec it in the foreground.
fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::process::CommandExt as _;
    let mut build = cargo();
    build.args(["build", "--package", "oomcount", "--bin", "oomcount"]);
    if release {
        build.arg("--release");
    }
    check(&mut build)?;
    let bin = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("oomcount");
    let err = std::process::Command::new(&bin)
        .arg("daemon")
        .args(args)
        .exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` as this xtask was run with, at the workspace root.
pub fn cargo() -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, failing with its command line when it does not succeed.
pub fn check(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .map_err(|err| anyhow::anyhow!("could not start {cmd:?}: {err}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// Runs `cmd` as [`check`] does, its standard error passed through line by line; when it fails,
/// the panic messages it printed are printed again at the end. A CI log keeps only its first and
/// last lines, and a failing test's own output (a daemon's log) can push its panic message out
/// of both.
pub fn check_recalling_panics(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let (result, panics) = run_recalling_panics(cmd)?;
    if result.is_err() && !panics.is_empty() {
        eprintln!(
            "xtask: the panics above, again ({}; a should_panic test's among them):",
            panics.len()
        );
        for lines in &panics {
            for line in lines {
                eprintln!("  {line}");
            }
        }
    }
    result
}

/// Runs `cmd` for [`check_recalling_panics`]: whether it succeeded, and the panic messages it
/// printed on its standard error (the first lines of each).
fn run_recalling_panics(
    cmd: &mut std::process::Command,
) -> anyhow::Result<(anyhow::Result<()>, Vec<Vec<String>>)> {
    use std::io::{BufRead as _, Write as _};
    /// Lines kept of each panic message, and characters of each line.
    const LINES: usize = 12;
    const WIDTH: usize = 400;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|err| anyhow::anyhow!("could not start {cmd:?}: {err}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut panics: Vec<Vec<String>> = Vec::new();
    let mut taking = 0;
    let mut out = std::io::stderr().lock();
    for line in std::io::BufReader::new(stderr).split(b'\n') {
        let line = line?;
        let _ = out.write_all(&line);
        let _ = out.write_all(b"\n");
        let text = String::from_utf8_lossy(&line);
        if text.starts_with("thread '") && text.contains(" panicked at ") {
            panics.push(Vec::new());
            taking = LINES;
        } else if text.starts_with("stack backtrace:") || text.starts_with("note: run with") {
            taking = 0;
        }
        if taking > 0 {
            taking -= 1;
            let cut: String = text.chars().take(WIDTH).collect();
            panics.last_mut().expect("a panic was seen").push(cut);
        }
    }
    drop(out);
    let status = child.wait()?;
    let result = if status.success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{cmd:?} failed: {status}"))
    };
    Ok((result, panics))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failing_commands_panic_messages_are_kept() {
        let script = "echo one >&2; echo \"thread 't' (7) panicked at a.rs:1:2:\" >&2; \
                      echo 'what went wrong' >&2; echo 'stack backtrace:' >&2; echo 'frame' >&2; \
                      exit 3";
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script]);
        let (result, panics) = super::run_recalling_panics(&mut cmd).unwrap();
        assert!(result.unwrap_err().to_string().contains("exit status: 3"));
        assert_eq!(
            panics,
            [["thread 't' (7) panicked at a.rs:1:2:", "what went wrong"]]
        );
    }
}
