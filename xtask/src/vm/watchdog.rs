//! The watchdog scenarios: the real softdog resetting (or not) a guest of its own per scenario.
//!
//! A reset ends the guest, so each scenario (`vm_watchdog::*`, `#[ignore]`d in ordinary runs)
//! gets a boot of its own, with `/init` told to run that one ignored test. QEMU runs with
//! `-no-reboot`, so a reset is QEMU's exit with status 0, which `/init` never produces (it leaves
//! through isa-debug-exit, status 1). A scenario that expects a reset prints a mark with its
//! deadline at its trigger; the host times the reset from reading that mark to seeing QEMU exit.
//! softdog behaves alike on every kernel, so the scenarios boot one kernel, not the matrix.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use oomcount_vm_init::report::{Line, Outcome};

use super::{
    build::Guest,
    initramfs,
    kernel::Kernel,
    qemu::{self, INIT_FINISHED},
};

/// The test binary holding the scenarios.
const BINARY: &str = "vm_watchdog";
/// One scenario's boot, daemon start, kills and three margins, with room.
pub const TIMEOUT: Duration = Duration::from_secs(240);

/// How one scenario ended.
pub struct ScenarioRun {
    pub name: String,
    /// `Ok(what was measured)` or `Err(why it failed)`.
    pub result: Result<String, String>,
    pub wall: Duration,
}

/// The scenarios `filters` select (all when there are none), by their full test names.
pub fn select(guest: &Guest, filters: &[String]) -> anyhow::Result<Vec<String>> {
    let Some((_, program)) = guest.tests.iter().find(|(name, _)| name == BINARY) else {
        anyhow::bail!("the guest's test binaries have no {BINARY}");
    };
    // The guest's static test binary runs here too, to list its tests.
    let out = Command::new(program)
        .args(["--list", "--ignored", "--format", "terse"])
        .output()
        .with_context(|| format!("list the tests of {}", program.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} --list: {}",
        program.display(),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(|test| format!("{BINARY}::{test}"))
        .filter(|name| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect())
}

/// Boots `kernel` once per scenario, each within `TIMEOUT` and all within `budget`.
pub fn run_all(
    scenarios: &[String],
    kernel: &Kernel,
    common: &[u8],
    out: &Path,
    budget: Duration,
) -> anyhow::Result<Vec<ScenarioRun>> {
    let start = std::time::Instant::now();
    let initramfs = out.join(format!("{}.watchdog.cpio", kernel.release));
    initramfs::write(common, kernel, &initramfs)?;
    let mut runs = Vec::new();
    for name in scenarios {
        let left = budget.saturating_sub(start.elapsed());
        if left < Duration::from_secs(60) {
            runs.push(ScenarioRun {
                name: name.clone(),
                result: Err("not booted: the budget is spent".to_owned()),
                wall: Duration::ZERO,
            });
            continue;
        }
        let short = name.trim_start_matches("vm_watchdog::");
        eprintln!("vm-test: watchdog scenario {short} on {}", kernel.release);
        let run = qemu::boot(&qemu::Boot {
            kernel,
            initramfs: &initramfs,
            console_log: &out.join(format!("watchdog.{short}.console.log")),
            report: &out.join(format!("watchdog.{short}.report")),
            init_args: vec![
                "--test-timeout".into(),
                (TIMEOUT.as_secs() - 30).to_string(),
                "--run-ignored".into(),
                "--filter".into(),
                name.clone(),
            ],
            timeout: TIMEOUT.min(left),
        })?;
        let result = judge(name, &run);
        eprintln!(
            "vm-test: watchdog scenario {short}: {}",
            match &result {
                Ok(measured) => format!("passed, {measured}"),
                Err(problem) => format!("FAILED: {problem}"),
            }
        );
        runs.push(ScenarioRun {
            name: name.clone(),
            result,
            wall: run.wall,
        });
    }
    Ok(runs)
}

/// Whether a scenario's boot ended as the scenario said it would.
fn judge(name: &str, run: &qemu::Run) -> Result<String, String> {
    let outcome = run.lines.iter().find_map(|line| match line {
        Line::Test(result) if result.name == name => Some(result.outcome),
        _ => None,
    });
    match run.reset_marks.last() {
        Some(&(at, within_ms)) => {
            let within = Duration::from_millis(within_ms);
            let after = run.wall.saturating_sub(at);
            match run.exit {
                Some(0) if after <= within => Ok(format!(
                    "reset {:.2} s after the trigger (deadline {:.1} s)",
                    after.as_secs_f64(),
                    within.as_secs_f64()
                )),
                Some(0) => Err(format!(
                    "reset {:.2} s after the trigger, later than {:.1} s",
                    after.as_secs_f64(),
                    within.as_secs_f64()
                )),
                None => Err("no reset: the guest ran into its timeout".to_owned()),
                Some(code) => Err(format!(
                    "no reset: QEMU exited with {code} (test {outcome:?})"
                )),
            }
        }
        None => match (run.exit, outcome) {
            (Some(INIT_FINISHED), Some(Outcome::Ok)) if !run.survived => Err(
                "the test passed without saying it outlived its margins: did it run?".to_owned(),
            ),
            (Some(INIT_FINISHED), Some(Outcome::Ok)) => Ok(format!(
                "no reset; the guest finished after {:.0} s",
                run.wall.as_secs_f64()
            )),
            (Some(0), _) => Err("the guest was reset, and the scenario expected none".to_owned()),
            (exit, outcome) => Err(format!(
                "the scenario did not pass: test {outcome:?}, QEMU exit {exit:?}"
            )),
        },
    }
}

/// The scenarios' table: one line each.
pub fn table(runs: &[ScenarioRun]) -> String {
    let mut out = String::from("watchdog scenarios (softdog, one guest each):\n");
    for run in runs {
        let (mark, text) = match &run.result {
            Ok(measured) => ("ok  ", measured.as_str()),
            Err(problem) => ("FAIL", problem.as_str()),
        };
        out += &format!(
            "  {mark} {:<58} {text} [{:.0} s]\n",
            run.name.trim_start_matches("vm_watchdog::"),
            run.wall.as_secs_f64()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit: Option<i32>, wall: u64, marks: Vec<(Duration, u64)>, ok: bool) -> qemu::Run {
        let survived = ok && marks.is_empty();
        qemu::Run {
            wall: Duration::from_secs(wall),
            exit,
            lines: if ok {
                vec![Line::Test(oomcount_vm_init::report::TestResult {
                    name: "vm_watchdog::x".into(),
                    outcome: Outcome::Ok,
                    secs: 1.0,
                })]
            } else {
                Vec::new()
            },
            reset_marks: marks,
            survived,
        }
    }

    #[test]
    fn a_reset_counts_only_within_its_deadline() {
        let mark = vec![(Duration::from_secs(20), 7000)];
        assert!(judge("vm_watchdog::x", &run(Some(0), 25, mark.clone(), false)).is_ok());
        assert!(judge("vm_watchdog::x", &run(Some(0), 28, mark.clone(), false)).is_err());
        assert!(judge("vm_watchdog::x", &run(Some(1), 60, mark.clone(), false)).is_err());
        assert!(judge("vm_watchdog::x", &run(None, 240, mark, false)).is_err());
    }

    #[test]
    fn no_mark_means_no_reset_and_a_passed_test() {
        assert!(judge("vm_watchdog::x", &run(Some(1), 40, Vec::new(), true)).is_ok());
        assert!(judge("vm_watchdog::x", &run(Some(0), 40, Vec::new(), true)).is_err());
        assert!(judge("vm_watchdog::x", &run(Some(1), 40, Vec::new(), false)).is_err());
        let mut skipped = run(Some(1), 40, Vec::new(), true);
        skipped.survived = false;
        assert!(judge("vm_watchdog::x", &skipped).is_err());
    }
}
