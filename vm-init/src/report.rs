//! The lines the guest's `/init` reports to the host, one per event.
//!
//! `/init` writes them to the second serial port (`/dev/ttyS1`), which the host saves to a file
//! and parses after QEMU exits; it echoes them on the console too, for whoever reads the log.
//! Why a port of their own: the console carries the kernel's messages (OOM reports, during the
//! very tests) and the tests' output, which can land in the middle of a line; the report port
//! carries nothing else, so the host never has to guess.
use std::fmt;

/// Every report line starts with this, on the port and on the console.
pub const PREFIX: &str = "oomcount-vm: ";

/// The console line `/init` prints as a test starts (console only, not a report line): the host
/// finds each failed test's output after it.
pub fn run_marker(test: &str) -> String {
    format!("{PREFIX}run {}", one_line(test))
}

/// The console line a watchdog scenario prints when, from now on, it expects the watchdog to
/// reset the guest within `ms` milliseconds. The host times the reset from when it reads it.
pub fn reset_expected(ms: u64) -> String {
    format!("{PREFIX}expect reset within {ms} ms")
}

/// The milliseconds of a [`reset_expected`] line, found anywhere in a console line.
pub fn parse_reset_expected(line: &str) -> Option<u64> {
    let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
    rest.strip_prefix("expect reset within ")?
        .strip_suffix(" ms")?
        .trim()
        .parse()
        .ok()
}

/// The console line a watchdog scenario prints when the guest outlived what it waited for
/// without a reset: a scenario that expects none passes only with this line (and its test).
pub fn survived(ms: u64) -> String {
    format!("{PREFIX}no reset after {ms} ms")
}

/// Whether a console line holds a [`survived`] mark.
pub fn is_survived(line: &str) -> bool {
    line.find(PREFIX).is_some_and(|at| {
        let rest = &line[at + PREFIX.len()..];
        rest.starts_with("no reset after ") && rest.trim_end().ends_with(" ms")
    })
}

/// One report line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `/init` started: the guest's uptime then (the boot time) and its `/proc/version`.
    Booted { uptime: f64, version: String },
    /// One test finished (or was skipped, for an ignored one).
    Test(TestResult),
    /// Something the run needs failed outside any test (a mount, a module, a test binary that
    /// cannot list its tests). The host fails the kernel.
    Error(String),
    /// Every test ran; the guest's uptime then.
    Done { uptime: f64 },
}

/// How one test ended, and how long it took (wall seconds in the guest).
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub name: String,
    pub outcome: Outcome,
    pub secs: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// Killed by `/init` at its per-test deadline.
    Timeout,
    /// `#[ignore]`d: listed, not run.
    Ignored,
}

impl Outcome {
    /// Whether the test counts against the kernel.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Timeout)
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Timeout => "TIMEOUT",
            Outcome::Ignored => "ignored",
        }
    }

    fn parse(word: &str) -> Option<Outcome> {
        [
            Outcome::Ok,
            Outcome::Failed,
            Outcome::Timeout,
            Outcome::Ignored,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == word)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Display for Line {
    /// The line without its newline. Test names may hold spaces: the outcome and the time are
    /// taken from the end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Booted { uptime, version } => {
                write!(f, "{PREFIX}booted in {uptime:.2} s: {}", one_line(version))
            }
            Line::Test(TestResult {
                name,
                outcome,
                secs,
            }) => {
                write!(f, "{PREFIX}test {} {outcome} ({secs:.2} s)", one_line(name))
            }
            Line::Error(message) => write!(f, "{PREFIX}error {}", one_line(message)),
            Line::Done { uptime } => write!(f, "{PREFIX}done at {uptime:.2} s uptime"),
        }
    }
}

impl Line {
    /// Parses one line of the report; `None` for anything else. The prefix may come after other
    /// text (a console line that started before it), and a trailing `\r` is ignored.
    pub fn parse(text: &str) -> Option<Line> {
        let start = text.find(PREFIX)?;
        let rest = text[start + PREFIX.len()..].trim_end_matches(['\r', '\n']);
        let (word, rest) = rest.split_once(' ')?;
        match word {
            "booted" => {
                let (uptime, version) = rest.strip_prefix("in ")?.split_once(" s: ")?;
                let uptime = uptime.parse().ok()?;
                Some(Line::Booted {
                    uptime,
                    version: version.to_owned(),
                })
            }
            "test" => {
                let (rest, secs) = rest.strip_suffix(" s)")?.rsplit_once(" (")?;
                let (name, outcome) = rest.rsplit_once(' ')?;
                Some(Line::Test(TestResult {
                    name: name.to_owned(),
                    outcome: Outcome::parse(outcome)?,
                    secs: secs.parse().ok()?,
                }))
            }
            "error" => Some(Line::Error(rest.to_owned())),
            "done" => {
                let uptime = rest.strip_prefix("at ")?.strip_suffix(" s uptime")?;
                Some(Line::Done {
                    uptime: uptime.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

/// A line break inside a field would end the report line early.
fn one_line(text: &str) -> String {
    text.trim().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_marks_are_found_in_console_noise() {
        let line = format!("[   12.3] noise {}\r\n", reset_expected(7000));
        assert_eq!(parse_reset_expected(line.trim_end()), Some(7000));
        assert_eq!(
            parse_reset_expected("oomcount-vm: expect reset within x ms"),
            None
        );
        assert_eq!(
            parse_reset_expected("oomcount-vm: run vm_watchdog::x"),
            None
        );
    }

    fn round_trip(line: Line) {
        let text = line.to_string();
        assert_eq!(Line::parse(&text), Some(line), "{text}");
    }

    #[test]
    fn lines_round_trip() {
        round_trip(Line::Booted {
            uptime: 3.25,
            version: "Linux version 5.10.0-32-cloud-amd64 (gcc) #1 SMP Debian 5.10.223-1".into(),
        });
        for outcome in [
            Outcome::Ok,
            Outcome::Failed,
            Outcome::Timeout,
            Outcome::Ignored,
        ] {
            round_trip(Line::Test(TestResult {
                name: "oomcount --help (a name with spaces)".into(),
                outcome,
                secs: 12.5,
            }));
        }
        round_trip(Line::Error("mount cgroup2 on /sys/fs/cgroup: EBUSY".into()));
        round_trip(Line::Done { uptime: 101.0 });
    }

    #[test]
    fn parse_finds_the_prefix_inside_a_console_line() {
        let text = "[   12.3] oom_reaper: reaped process 7oomcount-vm: done at 40.00 s uptime\r";
        assert_eq!(Line::parse(text), Some(Line::Done { uptime: 40.0 }));
    }

    #[test]
    fn parse_rejects_other_lines() {
        assert_eq!(Line::parse("test foo ... ok"), None);
        assert_eq!(Line::parse("oomcount-vm: test foo maybe (1.00 s)"), None);
        assert_eq!(Line::parse("oomcount-vm: run foo"), None);
    }

    #[test]
    fn fields_stay_on_one_line() {
        let text = Line::Error("first\nsecond".into()).to_string();
        assert_eq!(text, "oomcount-vm: error first second");
    }
}
