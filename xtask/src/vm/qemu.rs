//! Boots one kernel under QEMU and collects what its `/init` reported.
//!
//! TCG, never KVM: this kind of machine's `/dev/kvm` is PVM, under which stock kernels crawl
//! and die. Two serial ports: the first is the console (kernel messages and the tests' output),
//! saved to the console log and echoed here only for its report lines; the second carries the
//! report alone, into a file parsed when QEMU exits. `-no-reboot` and `panic=-1` turn a reset
//! or a panic into QEMU's exit; isa-debug-exit says that `/init` reached its end.
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use oomcount_vm_init::report::{Line, PREFIX, is_survived, parse_reset_expected};

use super::kernel::Kernel;

/// Enough for the tests, small enough that a global OOM inside is quick.
const MEMORY: &str = "1G";
/// Two vCPUs, so that OOM storms have parallelism.
const CPUS: &str = "2";
/// QEMU's exit status when `/init` wrote 0 to isa-debug-exit: `(0 << 1) | 1`.
pub const INIT_FINISHED: i32 = 1;

pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub console_log: &'a Path,
    pub report: &'a Path,
    /// Arguments for `/init`, after `--` on the kernel command line.
    pub init_args: Vec<String>,
    pub timeout: Duration,
}

/// How a boot ended.
pub struct Run {
    pub wall: Duration,
    /// QEMU's exit status; `None` when it was killed at the timeout.
    pub exit: Option<i32>,
    pub lines: Vec<Line>,
    /// Each "expect reset within MS" console mark: when the host read it (since QEMU started),
    /// and its milliseconds.
    pub reset_marks: Vec<(Duration, u64)>,
    /// A "no reset after MS" console mark was seen.
    pub survived: bool,
}

pub fn boot(boot: &Boot) -> anyhow::Result<Run> {
    let log = File::create(boot.console_log)
        .with_context(|| format!("create {}", boot.console_log.display()))?;
    let append = format!(
        "console=ttyS0 panic=-1 quiet -- {}",
        boot.init_args.join(" ")
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", MEMORY, "-smp", CPUS])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", boot.report.display()))
        .arg("-kernel")
        .arg(&boot.kernel.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?);
    let start = Instant::now();
    let mut qemu = cmd.spawn().context(
        "start qemu-system-x86_64 (cargo xtask setup installs it from bookworm-backports)",
    )?;
    let console = qemu.stdout.take().expect("piped");
    let label = boot.kernel.upstream().to_owned();
    let echo = std::thread::spawn(move || copy_console(console, log, &label, start));
    let exit = loop {
        if let Some(status) = qemu.try_wait()? {
            break status.code();
        }
        if start.elapsed() >= boot.timeout {
            qemu.kill()?;
            qemu.wait()?;
            break None;
        }
        // Short: a watchdog reset is timed by when QEMU's exit is seen.
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed();
    let (reset_marks, survived) = echo.join().unwrap_or_default();
    let report = std::fs::read(boot.report).unwrap_or_default();
    let lines = String::from_utf8_lossy(&report)
        .lines()
        .filter_map(Line::parse)
        .collect();
    Ok(Run {
        wall,
        exit,
        lines,
        reset_marks,
        survived,
    })
}

/// Saves the console to the log, echoing the report lines (and `/init`'s other notes) on stderr
/// so that a long run shows its progress; returns the reset marks, timed as they are read, and
/// whether a survival mark was seen.
fn copy_console(
    console: impl std::io::Read,
    mut log: File,
    label: &str,
    start: Instant,
) -> (Vec<(Duration, u64)>, bool) {
    let mut reader = BufReader::new(console);
    let mut line = Vec::new();
    let mut marks = Vec::new();
    let mut survived = false;
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let at = start.elapsed();
        let _ = log.write_all(&line);
        let text = String::from_utf8_lossy(&line);
        if let Some(ms) = parse_reset_expected(text.trim_end()) {
            marks.push((at, ms));
        }
        survived |= is_survived(&text);
        if let Some(start) = text.find(PREFIX) {
            eprintln!("  {label:>9} | {}", text[start..].trim_end());
        }
        line.clear();
    }
    (marks, survived)
}
