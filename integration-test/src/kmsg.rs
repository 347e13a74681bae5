//! The kernel's own account of each OOM kill, from its log: the tests compare every field the
//! daemon reports with the "Killed process" line the kernel printed for the same victim. Only
//! the tests parse the kernel log; oomcount itself never does.
//!
//! A [`Kmsg`] reads `/dev/kmsg` from the moment it is opened (older records are skipped), in a
//! thread of its own, so that a storm of kills cannot overrun the kernel's log buffer before the
//! test reads it; records lost anyway are counted ([`Kmsg::lost`]).
//!
//! What the kernel prints for one kill, in order (all under `oom_lock`, so kills do not
//! interleave), where `dump_header` (rate-limited: 10 per 5 s) may leave out the first two:
//!
//! ```text
//! oc-alloc invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
//! oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a/b,task=oc-big,pid=42,uid=0
//! Memory cgroup out of memory: Killed process 42 (oc-big) total-vm:43292kB, anon-rss:32512kB, file-rss:6608kB, shmem-rss:0kB, UID:0 pgtables:128kB oom_score_adj:1000
//! ```
use std::{
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::OpenOptionsExt as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::wait::wait_until;

/// The kernel's "Killed process" line for one victim, with the header lines that went with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelKill {
    /// `Memory cgroup out of memory` or `Out of memory` (a global OOM).
    pub reason: String,
    pub pid: u32,
    pub comm: String,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub uid: u32,
    pub pgtables_kb: u64,
    pub oom_score_adj: i16,
    /// The `oom-kill:` summary line of the same OOM, when `dump_header` printed it and it
    /// names this victim.
    pub summary: Option<OomSummary>,
    /// The comm of the task that invoked the OOM killer (`COMM invoked oom-killer: ...`), when
    /// the summary was printed.
    pub invoker: Option<String>,
}

/// `oom-kill:constraint=...,oom_memcg=...,task_memcg=...,task=...,pid=...,uid=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomSummary {
    /// `CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, ...
    pub constraint: String,
    /// The cgroup whose limit was hit (absent for a global OOM, which says `global_oom`).
    pub oom_memcg: Option<String>,
    /// The victim's memory cgroup.
    pub task_memcg: Option<String>,
    pub task: String,
    pub pid: u32,
    pub uid: u32,
}

#[derive(Default)]
struct State {
    messages: Vec<String>,
    lost: u64,
    error: Option<String>,
}

/// `/dev/kmsg` from the moment of [`Kmsg::open`], read by a thread until dropped.
pub struct Kmsg {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Kmsg {
    /// Opens `/dev/kmsg` at its end and starts reading; panics when it cannot.
    pub fn open() -> Kmsg {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .unwrap_or_else(|err| {
                panic!(
                    "open /dev/kmsg: {err} (the tests read the kernel's Killed process lines there)"
                )
            });
        file.seek(SeekFrom::End(0))
            .unwrap_or_else(|err| panic!("seek to the end of /dev/kmsg: {err}"));
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                // A record is at most about 1 KiB of text plus its dictionary.
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => std::thread::sleep(Duration::from_millis(2)),
                        Ok(n) => {
                            let message = message(&String::from_utf8_lossy(&buf[..n]));
                            lock(&state).messages.push(message);
                            continue; // read on while there is more
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        // The reader fell behind the ring buffer: the next read goes on with
                        // the oldest record left.
                        Err(err) if err.raw_os_error() == Some(libc::EPIPE) => {
                            lock(&state).lost += 1
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            lock(&state).error = Some(format!("read /dev/kmsg: {err}"));
                            return;
                        }
                    }
                }
            })
        };
        Kmsg {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The messages read so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let state = lock(&self.state);
        if let Some(err) = &state.error {
            panic!("{err}");
        }
        state.messages.clone()
    }

    /// How many times the reader found records overwritten before it could read them.
    pub fn lost(&self) -> u64 {
        lock(&self.state).lost
    }

    /// Every "Killed process" line read so far, in order.
    pub fn kills(&self) -> Vec<KernelKill> {
        parse_kills(&self.messages())
    }

    /// The first "Killed process" line for `pid`, waiting for it until `deadline`.
    pub fn wait_kill(&self, pid: u32, deadline: Instant) -> KernelKill {
        wait_until(
            deadline,
            &format!("the kernel's Killed process line for pid {pid}"),
            || {
                let kills = self.kills();
                kills.iter().find(|k| k.pid == pid).cloned().ok_or_else(|| {
                    let pids: Vec<u32> = kills.iter().map(|k| k.pid).collect();
                    format!("Killed process lines for pids {pids:?}")
                })
            },
        )
    }

    /// Every "Killed process" line for `pid` (a `memory.oom.group` kill prints its first
    /// victim twice).
    pub fn kills_of(&self, pid: u32) -> Vec<KernelKill> {
        self.kills().into_iter().filter(|k| k.pid == pid).collect()
    }
}

impl Drop for Kmsg {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The text of a `/dev/kmsg` record (`PRI,SEQ,USEC,FLAGS;TEXT\n` and dictionary lines), with
/// `\xNN` escapes undone.
fn message(record: &str) -> String {
    let text = record.split_once(';').map_or(record, |(_, text)| text);
    let text = text.split('\n').next().unwrap_or("");
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(byte) = text
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The "Killed process" lines of `messages`, each with the header lines of its OOM.
pub fn parse_kills(messages: &[String]) -> Vec<KernelKill> {
    let mut kills = Vec::new();
    let mut invoker: Option<String> = None;
    let mut summary: Option<OomSummary> = None;
    for message in messages {
        if let Some((comm, _)) = message.split_once(" invoked oom-killer: ") {
            invoker = Some(comm.to_owned());
            summary = None;
        } else if let Some(rest) = message.strip_prefix("oom-kill:") {
            summary = parse_summary(rest);
        } else if let Some(mut kill) = parse_killed(message) {
            if let Some(s) = summary.take_if(|s| s.pid == kill.pid) {
                kill.summary = Some(s);
                kill.invoker = invoker.take();
            }
            kills.push(kill);
        }
    }
    kills
}

/// `REASON: Killed process PID (COMM) total-vm:NkB, anon-rss:NkB, file-rss:NkB,
/// shmem-rss:NkB, UID:N pgtables:NkB oom_score_adj:N`.
fn parse_killed(message: &str) -> Option<KernelKill> {
    let (reason, rest) = message.split_once(": Killed process ")?;
    let (pid, rest) = rest.split_once(" (")?;
    let (comm, rest) = rest.rsplit_once(") total-vm:")?;
    let mut fields = std::collections::HashMap::new();
    for token in format!("total-vm:{rest}").split([' ', ',']) {
        if let Some((key, value)) = token.split_once(':') {
            fields.insert(key.to_owned(), value.trim_end_matches("kB").to_owned());
        }
    }
    let num = |key: &str| fields.get(key)?.parse::<u64>().ok();
    Some(KernelKill {
        reason: reason.to_owned(),
        pid: pid.parse().ok()?,
        comm: comm.to_owned(),
        total_vm_kb: num("total-vm")?,
        anon_rss_kb: num("anon-rss")?,
        file_rss_kb: num("file-rss")?,
        shmem_rss_kb: num("shmem-rss")?,
        uid: fields.get("UID")?.parse().ok()?,
        pgtables_kb: num("pgtables")?,
        oom_score_adj: fields.get("oom_score_adj")?.parse().ok()?,
        summary: None,
        invoker: None,
    })
}

fn parse_summary(text: &str) -> Option<OomSummary> {
    let mut fields = std::collections::HashMap::new();
    for item in text.split(',') {
        if let Some((key, value)) = item.split_once('=') {
            fields.insert(key, value);
        }
    }
    let get = |key: &str| fields.get(key).map(|v| (*v).to_owned());
    Some(OomSummary {
        constraint: get("constraint")?,
        oom_memcg: get("oom_memcg"),
        task_memcg: get("task_memcg"),
        task: get("task")?,
        pid: fields.get("pid")?.parse().ok()?,
        uid: fields.get("uid")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kill_with_its_header() {
        let messages: Vec<String> = [
            "3,1,2,-;oc-alloc invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
            "6,2,3,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a/b,task=oc big,pid=42,uid=7",
            "3,3,4,-;Memory cgroup out of memory: Killed process 42 (oc big) total-vm:43292kB, anon-rss:32512kB, file-rss:6608kB, shmem-rss:0kB, UID:7 pgtables:128kB oom_score_adj:-17\n SUBSYSTEM=x",
            "3,4,5,-;Out of memory: Killed process 43 (a) b\\x29) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:4kB, UID:0 pgtables:5kB oom_score_adj:1000",
        ]
        .iter()
        .map(|r| message(r))
        .collect();
        let kills = parse_kills(&messages);
        assert_eq!(kills.len(), 2, "{kills:?}");
        let first = &kills[0];
        assert_eq!(
            (
                first.pid,
                first.comm.as_str(),
                first.uid,
                first.oom_score_adj
            ),
            (42, "oc big", 7, -17)
        );
        assert_eq!(
            (first.total_vm_kb, first.anon_rss_kb, first.file_rss_kb),
            (43292, 32512, 6608)
        );
        assert_eq!((first.shmem_rss_kb, first.pgtables_kb), (0, 128));
        assert_eq!(first.reason, "Memory cgroup out of memory");
        let summary = first.summary.as_ref().expect("the summary names pid 42");
        assert_eq!(summary.oom_memcg.as_deref(), Some("/a"));
        assert_eq!(summary.task_memcg.as_deref(), Some("/a/b"));
        assert_eq!(first.invoker.as_deref(), Some("oc-alloc"));
        let second = &kills[1];
        assert_eq!((second.pid, second.comm.as_str()), (43, "a) b)"));
        assert_eq!(second.reason, "Out of memory");
        assert_eq!(
            (second.summary.clone(), second.invoker.clone()),
            (None, None)
        );
    }
}
