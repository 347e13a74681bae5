//! Runs the tests: `oomcount --help` first (the static daemon starts at all on this kernel),
//! then every test of every libtest binary in `/tests`, each in a process of its own.
//!
//! One process per test, not one per binary: each test gets its own line, time and deadline,
//! and a test that hangs or brings the guest down costs only itself. Tests compare against
//! machine-wide counters, so they run one at a time, and `sweep` clears what one leaves behind
//! before the next starts.
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use oomcount_vm_init::report::{self, Line, Outcome, TestResult};

use crate::{Config, Reporter, sweep};

const TEST_DIR: &str = "/tests";
/// What the tests are told, and nothing else from init's environment.
const ENV: &[(&str, &str)] = &[
    ("OOMCOUNT_VM", "1"),
    ("OOMCOUNT_BIN", "/bin/oomcount"),
    ("OOMCOUNT_HOG", "/bin/oomcount-hog"),
    ("PATH", "/bin"),
    ("HOME", "/root"),
    ("RUST_BACKTRACE", "1"),
];

#[derive(Clone)]
struct Test {
    name: String,
    program: String,
    args: Vec<String>,
    ignored: bool,
}

pub fn run_all(config: &Config, reporter: &mut Reporter) {
    let mut tests = vec![Test {
        name: "oomcount --help".into(),
        program: "/bin/oomcount".into(),
        args: vec!["--help".into()],
        ignored: false,
    }];
    for binary in binaries(reporter) {
        tests.extend(list(&binary, reporter));
    }
    let selected = |test: &Test| {
        config.filters.is_empty()
            || config
                .filters
                .iter()
                .any(|f| test.name.contains(f.as_str()))
    };
    for (i, test) in tests.iter().enumerate() {
        // The smoke test always runs: it is cheap and says whether anything can run at all.
        if i > 0 && !selected(test) {
            continue;
        }
        // An ignored test runs only when asked for by name (it may reset the guest).
        let asked_for = config.run_ignored && !config.filters.is_empty();
        let ignored = test.ignored && !asked_for;
        let (outcome, secs) = if ignored {
            (Outcome::Ignored, 0.0)
        } else {
            println!("{}", report::run_marker(&test.name));
            let mut test = test.clone();
            if test.ignored {
                test.args.push("--include-ignored".into());
            }
            run(&test, config.test_timeout)
        };
        sweep::after_test(&test.name);
        reporter.send(&Line::Test(TestResult {
            name: test.name.clone(),
            outcome,
            secs,
        }));
    }
}

/// The test executables, sorted by name.
fn binaries(reporter: &mut Reporter) -> Vec<String> {
    let entries = match std::fs::read_dir(TEST_DIR) {
        Ok(entries) => entries,
        Err(err) => {
            reporter.send(&Line::Error(format!("read {TEST_DIR}: {err}")));
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The tests of one libtest binary, named `BINARY::TEST`.
fn list(binary: &str, reporter: &mut Reporter) -> Vec<Test> {
    let program = format!("{TEST_DIR}/{binary}");
    let names = |only_ignored: bool| -> Result<Vec<String>, String> {
        let mut cmd = command(&program);
        cmd.args(["--list", "--format", "terse"]);
        if only_ignored {
            cmd.arg("--ignored");
        }
        let out = cmd.stderr(Stdio::inherit()).output();
        let out = out.map_err(|err| format!("{program} --list: {err}"))?;
        if !out.status.success() {
            return Err(format!("{program} --list: {}", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned)
            .collect())
    };
    let (all, ignored) = match (names(false), names(true)) {
        (Ok(all), Ok(ignored)) => (all, ignored),
        (Err(err), _) | (_, Err(err)) => {
            reporter.send(&Line::Error(err));
            return Vec::new();
        }
    };
    all.into_iter()
        .map(|test| Test {
            name: format!("{binary}::{test}"),
            program: program.clone(),
            ignored: ignored.contains(&test),
            args: vec![
                test,
                "--exact".into(),
                "--test-threads=1".into(),
                "--nocapture".into(),
            ],
        })
        .collect()
}

fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(ENV.iter().copied())
        .current_dir("/")
        .stdin(Stdio::null());
    cmd
}

/// Runs one test to its end or its deadline; the outcome and the wall seconds it took.
fn run(test: &Test, timeout: Duration) -> (Outcome, f64) {
    let start = Instant::now();
    // A process group of its own, so that nothing it starts stays attached to init's.
    let child = command(&test.program)
        .args(&test.args)
        .process_group(0)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(err) => {
            println!("oomcount-vm: cannot start {}: {err}", test.program);
            return (Outcome::Failed, 0.0);
        }
    };
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    let outcome = match wait_until(pid, start + timeout) {
        Some(status) if status.success() => Outcome::Ok,
        Some(status) => {
            println!("oomcount-vm: {} ended with {status}", test.name);
            Outcome::Failed
        }
        None => {
            println!(
                "oomcount-vm: {} still running after {timeout:?}: killed",
                test.name
            );
            Outcome::Timeout
        }
    };
    (outcome, start.elapsed().as_secs_f64())
}

/// Waits for `pid`, reaping any orphan on the way (init inherits them all); `None` at the
/// deadline, with `pid` still running (the sweep kills it).
fn wait_until(pid: i32, deadline: Instant) -> Option<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let reaped = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if reaped == pid {
            return Some(ExitStatus::from_raw(status));
        }
        if reaped > 0 {
            continue;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
