//! `oomcount check`: the daemon's verdict as an exit status, for watchdog(8) and scripts.
//!
//! watchdog(8) runs a `test-binary` with no argument (or `test`, from its test-directory) and
//! treats a non-zero status as a problem: it then runs the same program as `repair CODE`, and
//! reboots when that fails too. Codes are errno-like, except 255, which asks watchdog(8) to
//! reboot at once. The verdict is the daemon's own, the one its pinger acts on.

use oomcount::{
    protocol::{self, ClientError, Request, Response, VerdictReply},
    watchdog::rules::Health,
};

pub use oomcount_args::check::{GARBAGE, NO_ANSWER, NO_DAEMON, UNRECOVERABLE};

pub use oomcount_args::check::Mode;

pub use oomcount_args::check::Args;

/// A check that did not pass: its exit status and its one-line reason.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    pub code: u8,
    pub message: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.mode == Some(Mode::Repair) && args.code.is_none() {
        anyhow::bail!("repair needs the CODE the test returned, as in `oomcount check repair 255`");
    }
    let socket = &args.socket.socket;
    let reply = match protocol::call(socket, &Request::Verdict) {
        Ok(Response::Verdict(reply)) => reply,
        Ok(other) => {
            return Err(failed(
                GARBAGE,
                format!(
                    "the daemon at {} answered a {} response to a verdict request (is it an oomcount daemon of this version?)",
                    socket.display(),
                    other.kind()
                ),
            ));
        }
        Err(err @ ClientError::NotRunning(_)) => return Err(failed(NO_DAEMON, err.to_string())),
        Err(err @ (ClientError::Garbage { .. } | ClientError::Refused(..))) => {
            return Err(failed(GARBAGE, err.to_string()));
        }
        Err(err) => return Err(failed(NO_ANSWER, format!("{:#}", anyhow::Error::from(err)))),
    };
    // The status is the verdict's: a reader that went away (`check --json | head -c0`) must not
    // turn an unrecoverable verdict into 0. Any other failed write of a recoverable one is 1.
    if let Err(err) = print(&args, &reply)
        && err.0.kind() != std::io::ErrorKind::BrokenPipe
        && reply.health.recoverable()
    {
        return Err(err.into());
    }
    if reply.health.recoverable() {
        if let (Some(Mode::Repair), Some(code)) = (args.mode, args.code) {
            eprintln!("oomcount: repaired: the test's code {code} no longer applies");
        }
        Ok(())
    } else {
        Err(failed(
            UNRECOVERABLE,
            format!("unrecoverable: {}", reply.reason),
        ))
    }
}

fn failed(code: u8, message: String) -> anyhow::Error {
    Failed { code, message }.into()
}

fn print(args: &Args, reply: &VerdictReply) -> Result<(), super::Stdout> {
    if !args.json && !args.explain {
        return Ok(());
    }
    super::print(args.json, reply, |reply| {
        let health = match reply.health {
            Health::Healthy => "healthy".to_owned(),
            _ => format!("{}: {}", reply.health, reply.reason),
        };
        format!("{health}\nwatchdog: {}\n", reply.watchdog)
    })
}
