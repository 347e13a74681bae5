//! `cargo xtask vm-test`: oomcount's privileged tests inside Debian kernels booted under QEMU.
//!
//! The host runs one kernel, and oomcount must count right on the kernels its users run: the
//! `oom/mark_victim` tracepoint changed its layout in 6.9 and only some stable kernels carry the
//! backport (5.10.0-32 does not), and BPF and cgroup2 details differ between them. So the same
//! integration tests run inside each kernel of a matrix:
//!
//! 1. `build`: the guest's executables, static, in `target/vm`;
//! 2. `kernel`: each kernel fetched from Debian's archive into a cache kept between runs;
//! 3. `initramfs`: an initramfs of oomcount's own (`vm-init` as `/init`), plus the kernel's
//!    modules, written as `cpio`;
//! 4. `qemu`: one boot per kernel, one after the other (the tests compare machine-wide counters
//!    and TCG shares the host's two cores), each with a deadline and all within a budget, so
//!    that a hung guest cannot hold CI past its time;
//! 5. `summary`: a kernel x test table, and an error naming each failed kernel with its failed
//!    tests' panic messages and the path of its console log (`target/vm/vm-test/`);
//! 6. `watchdog`: the softdog scenarios, one guest each (a reset ends a guest), on one kernel.
mod build;
mod cpio;
mod initramfs;
mod kernel;
mod qemu;
mod summary;
mod watchdog;
pub mod xen;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

/// The default matrix: the old `mark_victim` layout (5.10.0-32 = 5.10.223, before the
/// backport), then the newest kernel of each series: 5.10, 6.1, 6.12 (bookworm) and sid's.
pub const DEFAULT_KERNELS: &[&str] = &["5.10.0-32", "5.10", "6.1", "6.12", "7.2"];
const DEFAULT_FLAVOUR: &str = "cloud-amd64";
const DEFAULT_TEST_TIMEOUT_SECS: u64 = 300;
const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// The whole matrix and the watchdog scenarios, so that CI (host tests included) stays within
/// its time: passing, the five kernels take about 26 minutes on this kind of 2-core machine, the
/// scenarios about 4; each failing test adds its own deadline.
const DEFAULT_BUDGET_SECS: u64 = 2400;
/// The kernel the watchdog scenarios boot, unless `--kernel` names others (then the first).
const WATCHDOG_KERNEL: &str = "6.12";
/// A kernel is not booted with less time than this left in the budget.
const MIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Default)]
pub struct VmTestArgs {
    /// Kernel series to boot (5.10.0-32, 5.10, 6.1, 6.12, 7.2); the default matrix when none.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Debian kernel flavour [default: cloud-amd64].
    #[arg(long, value_name = "FLAVOUR")]
    pub flavour: Option<String>,
    /// Where kernels are kept between runs [default: $OOMCOUNT_VM_CACHE, else
    /// ~/.cache/oomcount-vm].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Seconds one test may run in a guest before it is killed [default: 300].
    #[arg(long, value_name = "SECS")]
    pub test_timeout: Option<u64>,
    /// Seconds one kernel may take, boot and every test [default: 600].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Seconds the whole matrix may take; kernels left when it is spent are not booted
    /// [default: 1800].
    #[arg(long, value_name = "SECS")]
    pub budget: Option<u64>,
    /// Run only the tests whose name contains one of these (`oomcount --help` always runs).
    #[arg(value_name = "FILTER")]
    pub filters: Vec<String>,
}

pub fn run(args: VmTestArgs) -> anyhow::Result<()> {
    let target_dir = crate::workspace_root().join("target").join("vm");
    let guest = build::build(&target_dir)?;
    let common = initramfs::common(&guest)?;
    let kernels = fetch_kernels(&args)?;
    let out = target_dir.join("vm-test");
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    // The matrix and the scenarios alike: one at a time per work tree.
    let _lock = lock(&out)?;
    let start = Instant::now();
    let runs = boot_all(&args, &kernels, &common, &out)?;
    let scenarios = watchdog::select(&guest, &args.filters)?;
    let budget = Duration::from_secs(args.budget.unwrap_or(DEFAULT_BUDGET_SECS));
    let scenario_runs = match watchdog_kernel(&args, &kernels) {
        Some(kernel) if !scenarios.is_empty() => {
            let left = budget.saturating_sub(start.elapsed());
            watchdog::run_all(&scenarios, kernel, &common, &out, left)?
        }
        _ => Vec::new(),
    };

    eprintln!("\n{}", summary::table(&runs));
    if !scenario_runs.is_empty() {
        eprintln!("{}", watchdog::table(&scenario_runs));
    }
    let failed_scenarios = scenario_runs.iter().filter(|r| r.result.is_err()).count();
    let failed: Vec<&summary::KernelRun> =
        runs.iter().filter(|r| !r.problems().is_empty()).collect();
    for run in &failed {
        eprintln!("{}", summary::details(run));
    }
    eprintln!("{}", summary::counts(&runs));
    if failed_scenarios > 0 {
        bail!(
            "{failed_scenarios} of {} watchdog scenarios failed: see the table above and target/vm/vm-test/watchdog.*.console.log",
            scenario_runs.len()
        );
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.label.as_str()).collect();
        bail!(
            "{} of {} kernels failed ({}): see the problems and console logs above",
            failed.len(),
            runs.len(),
            names.join(", ")
        );
    }
    Ok(())
}

/// The kernel for the watchdog scenarios: 6.12 in the default matrix, else the first asked for.
fn watchdog_kernel<'a>(
    args: &VmTestArgs,
    kernels: &'a [kernel::Kernel],
) -> Option<&'a kernel::Kernel> {
    if args.kernels.is_empty() {
        let series = format!("{WATCHDOG_KERNEL}.");
        kernels.iter().find(|k| k.upstream().starts_with(&series))
    } else {
        kernels.first()
    }
}

/// Every kernel asked for, from the cache or Debian's archive, before any boot: a missing
/// kernel fails the run early.
fn fetch_kernels(args: &VmTestArgs) -> anyhow::Result<Vec<kernel::Kernel>> {
    let cache = cache_dir(args);
    let archive = kernel::Archive::open(&cache)?;
    let flavour = args.flavour.as_deref().unwrap_or(DEFAULT_FLAVOUR);
    let series: Vec<&str> = if args.kernels.is_empty() {
        DEFAULT_KERNELS.to_vec()
    } else {
        args.kernels.iter().map(String::as_str).collect()
    };
    let mut kernels = Vec::new();
    for name in series {
        let kernel = archive.fetch(name, flavour).with_context(|| {
            format!(
                "fetch the Debian kernel {name} ({flavour}) into {}",
                cache.display()
            )
        })?;
        eprintln!(
            "vm-test: kernel {name} is {} ({})",
            kernel.release, kernel.version
        );
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// Boots each kernel in turn, each within its timeout and all within the matrix's budget; a
/// kernel the budget no longer covers is not booted (and fails).
fn boot_all(
    args: &VmTestArgs,
    kernels: &[kernel::Kernel],
    common: &[u8],
    out: &std::path::Path,
) -> anyhow::Result<Vec<summary::KernelRun>> {
    let test_timeout = args.test_timeout.unwrap_or(DEFAULT_TEST_TIMEOUT_SECS);
    let timeout = Duration::from_secs(args.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let budget = Duration::from_secs(args.budget.unwrap_or(DEFAULT_BUDGET_SECS));
    let mut init_args = vec!["--test-timeout".to_owned(), test_timeout.to_string()];
    for filter in &args.filters {
        init_args.extend(["--filter".to_owned(), filter.clone()]);
    }
    let start = Instant::now();
    let mut runs = Vec::new();
    for kernel in kernels {
        let left = budget.saturating_sub(start.elapsed());
        let timeout = timeout.min(left);
        let console_log = out.join(format!("{}.console.log", kernel.release));
        let run = if left < MIN_TIMEOUT.min(timeout) || left.is_zero() {
            eprintln!(
                "vm-test: not booting {}: the budget of {budget:?} is spent",
                kernel.release
            );
            None
        } else {
            let initramfs = out.join(format!("{}.cpio", kernel.release));
            initramfs::write(common, kernel, &initramfs)?;
            eprintln!(
                "vm-test: booting {} ({}) under QEMU TCG",
                kernel.release, kernel.version
            );
            let run = qemu::boot(&qemu::Boot {
                kernel,
                initramfs: &initramfs,
                console_log: &console_log,
                report: &out.join(format!("{}.report", kernel.release)),
                init_args: init_args.clone(),
                timeout,
            })?;
            eprintln!(
                "vm-test: {} done in {:.0} s",
                kernel.release,
                run.wall.as_secs_f64()
            );
            Some(run)
        };
        runs.push(summary::KernelRun {
            label: kernel.upstream().to_owned(),
            release: kernel.release.clone(),
            run,
            timeout,
            console_log,
        });
    }
    Ok(runs)
}

/// `--cache`, else `$OOMCOUNT_VM_CACHE`, else `$XDG_CACHE_HOME/oomcount-vm` or
/// `~/.cache/oomcount-vm`: outside the work tree, so that a fresh clone (CI's) reuses it; in
/// `target/vm/cache` when there is no home at all.
fn cache_dir(args: &VmTestArgs) -> PathBuf {
    args.cache.clone().unwrap_or_else(default_cache)
}

/// `$OOMCOUNT_VM_CACHE`, else the user's cache folder (see [`cache_dir`]).
pub(crate) fn default_cache() -> PathBuf {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("OOMCOUNT_VM_CACHE") {
        return dir;
    }
    let user_cache = env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|home| home.join(".cache")));
    match user_cache {
        Some(base) => base.join("oomcount-vm"),
        None => crate::workspace_root()
            .join("target")
            .join("vm")
            .join("cache"),
    }
}

/// One matrix at a time per work tree: two would write the same logs, and share the host's
/// cores, which slows both and makes timing look different to the tests.
fn lock(out: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let path = out.join("lock");
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; the lock goes with the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("vm-test: another vm-test runs in this work tree; waiting for it to finish");
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(err).with_context(|| format!("lock {}", path.display()));
        }
    }
    Ok(file)
}
