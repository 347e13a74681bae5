//! `count`, `status` and `check` never exit 0 without the daemon's answer.
//!
//! The socket here is a stand-in the test serves itself ([`FakeDaemon`]): it stands for a daemon
//! that misbehaves (its client slots full, wedged, or not an oomcount daemon of this version),
//! which the real one cannot be made to do on demand. Each run must end non-zero with one line
//! on stderr and nothing on stdout; `check` with its documented watchdog(8) codes (110 no answer,
//! 71 not a verdict). Before, an EPIPE on the socket was taken for a closed stdout (`count
//! --json` exited 0 with nothing printed, 1 run in 20 with the slots full), and `status` exited 0
//! with `verdict: null`.
use std::{
    ffi::OsStr,
    time::{Duration, Instant},
};

use oomcount_integration_test::{
    fake_daemon::{Behaviour, FakeDaemon},
    wait::time_scale,
    watchdog::{Run, oomcount},
};

/// The commands that print the daemon's answer.
const COMMANDS: [&[&str]; 6] = [
    &["count"],
    &["count", "--json"],
    &["status"],
    &["status", "--json"],
    &["check"],
    &["check", "--json"],
];

/// How long a client waits for the daemon (protocol.rs `CLIENT_TIMEOUT`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// `oomcount COMMAND --socket SOCKET`, with pins nowhere, so that no figure can come from them.
fn run(daemon: &FakeDaemon, command: &[&str]) -> Run {
    let mut args: Vec<&OsStr> = command.iter().map(OsStr::new).collect();
    args.extend([OsStr::new("--socket"), daemon.socket().as_os_str()]);
    if command[0] != "check" {
        args.extend(["--pin-dir", "/nonexistent/oomcount-pins"].map(OsStr::new));
    }
    oomcount(&args)
}

/// One failure, as a user must see it: non-zero (`check`: `check_code`), nothing on stdout, one
/// line on stderr that contains `says`.
fn assert_fails(command: &[&str], run: &Run, check_code: i32, says: &str) {
    let what = format!("`oomcount {}`: {run:?}", command.join(" "));
    match command[0] {
        "check" => assert_eq!(run.code, Some(check_code), "{what}"),
        _ => assert_eq!(run.code, Some(1), "{what}"),
    }
    assert_eq!(
        run.stdout, "",
        "printed something without the answer: {what}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "not one line: {what}");
    assert!(run.stderr.starts_with("oomcount: "), "{what}");
    assert!(run.stderr.contains(says), "should say {says:?}: {what}");
}

#[test]
fn misbehaving_daemon_hangs_up_at_once_every_run_fails() {
    // The race the slots-full daemon made: EPIPE, ECONNRESET or EOF, whichever comes. 20 runs of
    // each command, as the 1 in 20.
    let daemon = FakeDaemon::start(Behaviour::HangUp);
    for _ in 0..20 {
        for command in COMMANDS {
            assert_fails(
                command,
                &run(&daemon, command),
                110,
                "closed the connection without an answer",
            );
        }
    }
}

#[test]
fn misbehaving_daemon_reads_the_request_and_hangs_up() {
    let daemon = FakeDaemon::start(Behaviour::HangUpAfterRequest);
    for command in COMMANDS {
        assert_fails(
            command,
            &run(&daemon, command),
            110,
            "closed the connection without an answer",
        );
    }
}

#[test]
fn misbehaving_daemon_answers_garbage_an_error_or_another_answer() {
    for (behaviour, says) in [
        (Behaviour::Garbage, "answered garbage"),
        (
            Behaviour::Error,
            "refused the request: the stand-in refuses",
        ),
        (Behaviour::WrongAnswer, "answered a events response to a"),
    ] {
        let daemon = FakeDaemon::start(behaviour);
        for command in COMMANDS {
            assert_fails(command, &run(&daemon, command), 71, says);
        }
    }
}

/// `status` printed `verdict: null` and exited 0 when only the count came back.
#[test]
fn misbehaving_daemon_answers_the_count_but_not_the_verdict() {
    let daemon = FakeDaemon::start(Behaviour::CountOnly);
    for command in [&["status"][..], &["status", "--json"], &["check"]] {
        assert_fails(command, &run(&daemon, command), 71, "answered garbage");
    }
    let count = run(&daemon, &["count", "--json"]);
    assert_eq!(
        count.code,
        Some(0),
        "the count alone is answered: {count:?}"
    );
}

#[test]
fn misbehaving_daemon_never_answers() {
    let daemon = FakeDaemon::start(Behaviour::Silent);
    let limit = CLIENT_TIMEOUT * time_scale() + Duration::from_secs(5);
    // All at once: each waits out the same 5 s.
    let runs: Vec<_> = std::thread::scope(|scope| {
        let daemon = &daemon;
        let started: Vec<_> = COMMANDS
            .iter()
            .map(|command| {
                scope.spawn(move || {
                    let at = Instant::now();
                    (command, run(daemon, command), at.elapsed())
                })
            })
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (command, run, took) in runs {
        assert_fails(command, &run, 110, "did not answer within 5s");
        assert!(took < limit, "`{}` took {took:?}", command.join(" "));
    }
}

/// The control: the stand-in answering as the daemon does is taken, so the failures above come
/// from what it does wrong, not from the stand-in itself.
#[test]
fn misbehaving_daemon_control_answering_like_the_daemon_passes() {
    let daemon = FakeDaemon::start(Behaviour::Answer);
    for command in COMMANDS {
        let run = run(&daemon, command);
        assert_eq!(run.code, Some(0), "`{}`: {run:?}", command.join(" "));
        assert_eq!(run.stderr, "", "`{}`: {run:?}", command.join(" "));
        if command[0] != "check" {
            assert!(!run.stdout.is_empty(), "`{}`: {run:?}", command.join(" "));
        }
    }
    let status = run(&daemon, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|err| panic!("status --json: {err}: {status:?}"));
    assert_eq!(json["count"]["source"], "daemon", "{json}");
    assert_eq!(json["verdict"]["health"], "healthy", "{json}");
}
