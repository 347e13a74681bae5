//! The daemon's socket spoken directly (one JSON line each way), so that an event's arrival is
//! timed where it arrives: `count` for the counters, and a `watch` whose reader thread stamps
//! each line with the wall clock when `read` returned it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde_json::Value;

/// `{"request":"count"}`: the daemon's counters, as JSON.
pub fn count(socket: &Path) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|err| format!("connect {}: {err}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(b"{\"request\":\"count\"}\n")
        .map_err(|err| format!("send count: {err}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|err| format!("read count: {err}"))?;
    let value: Value =
        serde_json::from_str(&line).map_err(|err| format!("count reply {line:?}: {err}"))?;
    value
        .get("count")
        .cloned()
        .ok_or_else(|| format!("count reply {line:?}"))
}

/// One counter of [`count`]'s reply.
pub fn counter(reply: &Value, name: &str) -> u64 {
    reply[name].as_u64().unwrap_or(0)
}

/// What a watch received so far.
#[derive(Default, Clone, Debug)]
pub struct Received {
    /// Kill events: how long after the kernel's mark (its `time`) the line was read.
    pub kill_latencies: Vec<Duration>,
    pub marks: u64,
    pub dropped: u64,
    pub garbage: Vec<String>,
}

/// A `watch` connection read by a thread until dropped. It keeps the events of victims in one
/// memory cgroup (or below it): other OOM kills on the machine are not the bench's.
pub struct Watch {
    stream: UnixStream,
    received: Arc<Mutex<Received>>,
}

impl Watch {
    /// Connects and waits for the `watching` line; keeps the events of victims in `cgroup` (a
    /// path in the memory hierarchy) or below.
    pub fn start(socket: &Path, cgroup: &str) -> Result<Watch, String> {
        let mut stream = UnixStream::connect(socket)
            .map_err(|err| format!("connect {}: {err}", socket.display()))?;
        stream
            .write_all(b"{\"request\":\"watch\"}\n")
            .map_err(|err| format!("send watch: {err}"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|err| err.to_string())?);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .map_err(|err| format!("read the watching line: {err}"))?;
        if !first.starts_with("{\"watching\"") {
            return Err(format!("the watch began with {first:?}"));
        }
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        let cgroup = cgroup.to_owned();
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let at = SystemTime::now();
                        record(&mut lock(&shared), &line, at, &cgroup);
                    }
                }
            }
        });
        Ok(Watch { stream, received })
    }

    pub fn received(&self) -> Received {
        lock(&self.received).clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn record(received: &mut Received, line: &str, at: SystemTime, cgroup: &str) {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        received.garbage.push(line.to_owned());
        return;
    };
    if let Some(event) = value.get("event") {
        let path = event["cgroup"].as_str().unwrap_or("");
        let ours =
            path == cgroup || path.starts_with(&format!("{}/", cgroup.trim_end_matches('/')));
        if !ours {
            return;
        }
        if event["kind"] != "kill" {
            received.marks += 1;
            return;
        }
        match event["time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        {
            Some(marked) => received
                .kill_latencies
                .push(at.duration_since(marked).unwrap_or_default()),
            None => received.garbage.push(line.to_owned()),
        }
    } else if let Some(dropped) = value.get("dropped") {
        received.dropped += dropped["count"].as_u64().unwrap_or(0);
    } else {
        received.garbage.push(line.to_owned());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
