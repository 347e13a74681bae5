//! What one kernel's run means, and the kernel x test table printed at the end.
//!
//! A kernel passes only when its `/init` booted, reported no error, finished, and every test it
//! ran passed: a guest that panicked, reset or hung counts as failed even with no failed test.
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use oomcount_vm_init::report::{self, Line, Outcome, PREFIX, TestResult};

use super::qemu;

/// One kernel's run, as collected by the host.
pub struct KernelRun {
    /// The column header: the upstream version (`5.10.223`).
    pub label: String,
    pub release: String,
    /// `None`: not booted, the matrix's budget was spent.
    pub run: Option<qemu::Run>,
    pub timeout: Duration,
    pub console_log: PathBuf,
}

impl KernelRun {
    fn lines(&self) -> &[Line] {
        self.run.as_ref().map_or(&[], |run| &run.lines)
    }

    fn tests(&self) -> impl Iterator<Item = &TestResult> {
        self.lines().iter().filter_map(|line| match line {
            Line::Test(result) => Some(result),
            _ => None,
        })
    }

    fn boot_secs(&self) -> Option<f64> {
        self.lines().iter().find_map(|line| match line {
            Line::Booted { uptime, .. } => Some(*uptime),
            _ => None,
        })
    }

    /// Why this kernel failed; empty when it passed.
    pub fn problems(&self) -> Vec<String> {
        let Some(run) = &self.run else {
            return vec!["not booted: the matrix's time budget was spent (--budget)".to_owned()];
        };
        let mut problems = Vec::new();
        if run.exit.is_none() {
            let secs = self.timeout.as_secs();
            problems.push(format!(
                "timed out after {secs} s and killed (--timeout, --budget)"
            ));
        }
        if self.boot_secs().is_none() {
            problems.push("/init never reported: the kernel did not boot to it".to_owned());
        }
        problems.extend(run.lines.iter().filter_map(|line| match line {
            Line::Error(message) => Some(format!("/init: {message}")),
            _ => None,
        }));
        let done = run
            .lines
            .iter()
            .any(|line| matches!(line, Line::Done { .. }));
        match run.exit {
            _ if done => {}
            None => {}
            Some(qemu::INIT_FINISHED) => {
                problems.push("/init finished but its report has no end line".to_owned())
            }
            Some(status) => problems.push(format!(
                "/init did not finish (QEMU exit status {status}: a panic, a reset or /init crashed)"
            )),
        }
        let failed: Vec<&str> = self
            .tests()
            .filter(|test| test.outcome.is_failure())
            .map(|test| test.name.as_str())
            .collect();
        if !failed.is_empty() {
            problems.push(format!("failed: {}", failed.join(", ")));
        }
        problems
    }
}

/// The table: one row per test, one column per kernel, then the verdicts and wall times.
pub fn table(runs: &[KernelRun]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for test in runs.iter().flat_map(KernelRun::tests) {
        if !names.contains(&test.name.as_str()) {
            names.push(&test.name);
        }
    }
    let row = |first: &str, cells: Vec<String>| {
        std::iter::once(first.to_owned())
            .chain(cells)
            .collect::<Vec<_>>()
    };
    let mut rows = vec![row("test", runs.iter().map(|r| r.label.clone()).collect())];
    for name in &names {
        let cells = runs.iter().map(|run| {
            let test = run.tests().find(|t| t.name == *name);
            test.map_or("-".to_owned(), |t| match t.outcome {
                Outcome::Ignored => "ignored".to_owned(),
                outcome => format!("{outcome} {:.1}", t.secs),
            })
        });
        rows.push(row(name, cells.collect()));
    }
    let verdict = |run: &KernelRun| {
        if run.problems().is_empty() {
            "ok"
        } else {
            "FAILED"
        }
    };
    rows.push(row(
        "kernel",
        runs.iter().map(|r| verdict(r).to_owned()).collect(),
    ));
    let wall = |run: &KernelRun| match (&run.run, run.boot_secs()) {
        (None, _) => "-".to_owned(),
        (Some(r), None) => format!("{:.0}", r.wall.as_secs_f64()),
        (Some(r), Some(boot)) => format!("{:.0} ({boot:.1})", r.wall.as_secs_f64()),
    };
    rows.push(row("wall s (boot s)", runs.iter().map(wall).collect()));

    let widths: Vec<usize> = (0..rows[0].len())
        .map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (col, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[col]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A failed kernel's problems, the panic message of each failed test (from the console log),
/// and the log's end when the guest did not finish.
pub fn details(run: &KernelRun) -> String {
    let mut out = format!(
        "vm-test: {} FAILED: {}\n",
        run.release,
        run.problems().join("; ")
    );
    let bytes = std::fs::read(&run.console_log).unwrap_or_default();
    let console = String::from_utf8_lossy(&bytes);
    for test in run.tests().filter(|t| t.outcome.is_failure()) {
        let _ = writeln!(out, "  {}:", test.name);
        if test.outcome == Outcome::Timeout {
            let _ = writeln!(out, "    killed at its deadline (--test-timeout)");
        }
        for line in panics(&console, &test.name) {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(out, "vm-test: console log: {}", run.console_log.display());
    let finished = run
        .lines()
        .iter()
        .any(|line| matches!(line, Line::Done { .. }));
    if run.run.is_some() && !finished {
        let lines: Vec<&str> = console.lines().collect();
        out.push_str("vm-test: the console log's end:\n");
        for line in &lines[lines.len().saturating_sub(30)..] {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The lines that say why `test` failed: each `panicked at` line and the message after it,
/// between the test's start and end on the console.
fn panics<'a>(console: &'a str, test: &str) -> Vec<&'a str> {
    let start = report::run_marker(test);
    let end = format!("{PREFIX}test {test} ");
    let section = console
        .lines()
        .skip_while(|line| !line.trim_end().ends_with(&start))
        .take_while(|line| !line.contains(&end));
    let mut out = Vec::new();
    let mut lines = section.peekable();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") {
            out.push(line.trim());
            if let Some(message) = lines.next_if(|l| !l.trim().is_empty()) {
                out.push(message.trim());
            }
        }
    }
    out.truncate(8);
    out
}

/// The closing line: tests passed, failed (a kernel that failed without a failing test counts
/// once) and skipped, over every kernel.
pub fn counts(runs: &[KernelRun]) -> String {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for run in runs {
        let mut failed_tests = 0;
        for test in run.tests() {
            match test.outcome {
                Outcome::Ok => passed += 1,
                Outcome::Ignored => skipped += 1,
                Outcome::Failed | Outcome::Timeout => failed_tests += 1,
            }
        }
        failed += failed_tests;
        if failed_tests == 0 && !run.problems().is_empty() {
            failed += 1;
        }
    }
    format!("vm-test: {passed} passed, {failed} failed, {skipped} skipped")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(label: &str, lines: Vec<Line>, exit: Option<i32>) -> KernelRun {
        KernelRun {
            label: label.into(),
            release: format!("{label}-cloud-amd64"),
            run: Some(qemu::Run {
                wall: Duration::from_secs(90),
                exit,
                lines,
                reset_marks: Vec::new(),
                survived: false,
            }),
            timeout: Duration::from_secs(600),
            console_log: PathBuf::from("console.log"),
        }
    }

    fn test(name: &str, outcome: Outcome) -> Line {
        Line::Test(TestResult {
            name: name.into(),
            outcome,
            secs: 1.5,
        })
    }

    fn booted() -> Line {
        Line::Booted {
            uptime: 3.0,
            version: "Linux version x".into(),
        }
    }

    #[test]
    fn a_finished_run_with_passing_tests_passes() {
        let done = Line::Done { uptime: 9.0 };
        let lines = vec![
            booted(),
            test("a", Outcome::Ok),
            test("b", Outcome::Ignored),
            done,
        ];
        let run = kernel("6.1.192", lines, Some(qemu::INIT_FINISHED));
        assert!(run.problems().is_empty(), "{:?}", run.problems());
        assert_eq!(counts(&[run]), "vm-test: 1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn a_crash_a_timeout_or_no_boot_fails_without_a_failed_test() {
        let crashed = kernel("5.10.223", vec![booted(), test("a", Outcome::Ok)], Some(0));
        assert!(
            crashed.problems()[0].contains("did not finish"),
            "{:?}",
            crashed.problems()
        );
        let hung = kernel("7.2.13", vec![booted()], None);
        assert!(
            hung.problems()[0].contains("timed out"),
            "{:?}",
            hung.problems()
        );
        let mut skipped = kernel("6.12.117", vec![], None);
        skipped.run = None;
        assert!(
            skipped.problems()[0].contains("budget"),
            "{:?}",
            skipped.problems()
        );
        assert_eq!(
            counts(&[crashed, hung, skipped]),
            "vm-test: 1 passed, 3 failed, 0 skipped"
        );
    }

    #[test]
    fn the_table_has_a_row_per_test_and_a_column_per_kernel() {
        let a = kernel(
            "5.10.223",
            vec![booted(), test("x", Outcome::Failed)],
            Some(0),
        );
        let b_lines = vec![booted(), test("x", Outcome::Ok), test("y", Outcome::Ok)];
        let b = kernel("6.12.117", b_lines, Some(1));
        let table = table(&[a, b]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("test") && lines[0].ends_with("6.12.117"),
            "{table}"
        );
        assert!(
            lines[1].contains("FAILED 1.5") && lines[1].ends_with("ok 1.5"),
            "{table}"
        );
        assert!(lines[2].contains(" - "), "{table}");
        assert!(
            lines[4].starts_with("wall s (boot s)") && lines[4].ends_with("90 (3.0)"),
            "{table}"
        );
    }

    #[test]
    fn panics_come_from_the_failed_tests_section_only() {
        let console = "\
oomcount-vm: run a::one
thread 'one' panicked at tests/a.rs:3:5:
expected 3 kills, saw 2
oomcount-vm: test a::one FAILED (1.00 s)
oomcount-vm: run a::two
thread 'two' panicked at tests/a.rs:9:5:
oomcount-vm: test a::two FAILED (1.00 s)
";
        let one = panics(console, "a::one");
        assert_eq!(
            one,
            [
                "thread 'one' panicked at tests/a.rs:3:5:",
                "expected 3 kills, saw 2"
            ]
        );
        assert_eq!(
            panics(console, "a::two"),
            ["thread 'two' panicked at tests/a.rs:9:5:"]
        );
    }
}
