//! The daemon's socket protocol: one JSON object per line each way.
//!
//! A client writes a [`Request`] line and reads one [`Response`] line; a connection may carry
//! several requests. Lines are bounded ([`MAX_LINE`]) so that a misbehaving client cannot make
//! the daemon grow; garbage gets an error response and costs the daemon nothing else.
use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/oomcount/oomcount.sock";

/// The longest request or response line accepted, newline included.
pub const MAX_LINE: usize = 4096;

/// How long a client waits for the daemon's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The counts since attach, and the kernel's since boot.
    Count,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Count(CountReply),
    Error(String),
}

/// What `oomcount count --json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReply {
    /// Victims killed by the OOM killer since the probe was attached.
    pub kills: u64,
    /// `oom/mark_victim` events since attach, kills included.
    pub marked: u64,
    /// Events lost to a full ring buffer (`kills` and `marked` are exact regardless).
    pub events_dropped: u64,
    /// When the probe was attached (RFC 3339, UTC).
    pub attached_at: String,
    /// `/proc/vmstat` `oom_kill`: the kernel's count since boot; absent before Linux 4.13.
    pub kernel_oom_kill: Option<u64>,
    /// Who answered: `daemon`.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no oomcount daemon is running on {0}: start one with `oomcount daemon` (as root), or name its socket with --socket"
    )]
    NotRunning(PathBuf),
    #[error("cannot reach the daemon at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon at {path} did not answer")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon at {path} answered garbage (is it an oomcount daemon of this version?)")]
    Garbage {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the daemon at {0} refused the request: {1}")]
    Refused(PathBuf, String),
}

/// Sends one request to the daemon at `path` and reads its answer.
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(path.to_path_buf())
        }
        _ => ClientError::Connect {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let io_err = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut answer = Vec::new();
    BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut answer)
        .map_err(io_err)?;
    if answer.is_empty() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        )));
    }
    let response = serde_json::from_slice(&answer).map_err(|source| ClientError::Garbage {
        path: path.to_path_buf(),
        source,
    })?;
    match response {
        Response::Error(message) => Err(ClientError::Refused(path.to_path_buf(), message)),
        other => Ok(other),
    }
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        assert_eq!(
            serde_json::to_string(&Request::Count).unwrap(),
            r#"{"request":"count"}"#
        );
        let parsed: Request = serde_json::from_str(r#"{"request":"count"}"#).unwrap();
        assert_eq!(parsed, Request::Count);
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let reply = Response::Count(CountReply {
            kills: 3,
            marked: 5,
            events_dropped: 0,
            attached_at: "2026-11-26T05:00:00Z".into(),
            kernel_oom_kill: Some(7),
            source: "daemon".into(),
        });
        let text = serde_json::to_string(&reply).unwrap();
        assert!(text.starts_with(r#"{"count":{"kills":3,"#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), reply);
    }
}
