//! Hooks: a program the administrator names, run for each kill (`on_kill`) and for each change of
//! verdict (`on_verdict`), with the event in its environment.
//!
//! Victims' names are chosen by whoever starts a process, so nothing from an event reaches an
//! argument list or a shell: the program and its arguments are the configuration's, exactly, and
//! the event is in environment variables (`OOMCOUNT_PID`, `OOMCOUNT_COMM`, ..., the whole event as
//! JSON in `OOMCOUNT_EVENT`), byte-exact, in an environment that holds nothing else but a fixed
//! `PATH`.
//!
//! A hook runs as the configured user (`nobody` by default) with no groups but its own, no
//! capabilities (permitted, effective, inheritable, ambient and, where the daemon may, bounding),
//! `no_new_privs`, stdin and stdout on /dev/null, in its own process group, in `/`, with every
//! descriptor of the daemon's closed, at ordinary priority and `oom_score_adj` 0 (not the
//! daemon's real-time priority and -1000).
//!
//! Bounded: at most `max_running` hooks at once; an event that finds them all busy waits in a
//! single slot per kind, replacing (and counting as skipped) the one that waited before it, so a
//! storm of kills runs the first hooks, then the newest, told in `OOMCOUNT_SKIPPED` how many kills
//! before it ran no hook. A hook still running (or still holding its stderr) at `timeout` has its
//! process group killed. Its exit status and the first line of its stderr are logged.
//!
//! Nothing here blocks the daemon's thread: a hook is spawned on the blocking thread, then
//! supervised by a task that waits on its pidfd, its stderr pipe and a timer. Spawned without a
//! fork: glibc's fork holds every malloc lock while the kernel copies the daemon's page tables
//! (2-2.5 ms measured here), and the runtime's thread, which allocates on each event, waited that
//! long for each hook. So the daemon starts its own binary as the hook's launcher (`posix_spawn`,
//! which shares the address space until the exec and takes no lock), and the launcher, a process
//! of its own, drops privileges and executes the hook ([`launch`]).
use std::{
    ffi::OsStr,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    pin::pin,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt as _,
    process::{ChildStderr, Command},
    sync::Notify,
};

use super::Notice;

/// The environment's only variable that is not the event's.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The first line of a hook's stderr kept for the log, at most.
const FIRST_LINE: usize = 256;

/// `[hooks]` in the config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    /// Program and arguments run for each kill.
    pub on_kill: Option<Vec<String>>,
    /// Program and arguments run for each change of verdict.
    pub on_verdict: Option<Vec<String>>,
    /// The user hooks run as: a name, or a numeric uid.
    pub user: String,
    /// Hooks running at once, at most.
    pub max_running: usize,
    /// A hook still running after this is killed (its whole process group).
    #[serde(deserialize_with = "crate::units::duration")]
    pub timeout: Duration,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            on_kill: None,
            on_verdict: None,
            user: "nobody".to_owned(),
            max_running: 2,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A `[hooks]` value that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hooks.{key}: the list is empty: give [\"/path/to/program\", \"arg\", ...]")]
    Empty { key: &'static str },
    #[error(
        "hooks.{key}: {path:?} is not an absolute path: give the program's full path (hooks run without a shell or PATH lookup)"
    )]
    Relative { key: &'static str, path: String },
    #[error("hooks.{key}: cannot use {path:?}: {source}")]
    Unusable {
        key: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("hooks.{key}: {path:?} is not a regular file: name the program itself")]
    NotFile { key: &'static str, path: String },
    #[error(
        "hooks.{key}: {path:?} is not executable by user {user:?}: chmod it, or set hooks.user"
    )]
    NotExecutable {
        key: &'static str,
        path: String,
        user: String,
    },
    #[error(
        "hooks.user: there is no user {0:?} on this machine: name an existing user (default \"nobody\")"
    )]
    UnknownUser(String),
    #[error("hooks.user: cannot look up {user:?}: {source}")]
    UserLookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("hooks.max_running: give at least 1")]
    NoneRunning,
    #[error("hooks.timeout: give at least 1 ms")]
    NoTimeout,
}

/// What a hook is run for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Kill = 0,
    Verdict = 1,
}

impl Which {
    fn key(self) -> &'static str {
        match self {
            Which::Kill => "on_kill",
            Which::Verdict => "on_verdict",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Which::Kill => "kill",
            Which::Verdict => "verdict",
        }
    }
}

/// The user hooks run as, resolved when the configuration is checked.
#[derive(Clone, Copy, Debug)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// A notice waiting for (or given) a slot.
struct Job {
    which: Which,
    notice: Notice,
    /// Notices of this kind that ran no hook since the last that did.
    skipped: u64,
}

#[derive(Default)]
struct State {
    running: usize,
    /// The one waiting notice per kind (`Which` as index).
    pending: [Option<Notice>; 2],
    skipped_since: [u64; 2],
    skipped: u64,
    ran: u64,
}

impl State {
    /// `notice` waits in its kind's slot; the one it replaces is skipped.
    fn wait(&mut self, which: Which, notice: Notice) {
        if self.pending[which as usize].replace(notice).is_some() {
            self.skipped += 1;
            self.skipped_since[which as usize] += 1;
        }
    }

    /// The next waiting notice, a verdict change before a kill.
    fn take_pending(&mut self) -> Option<Job> {
        [Which::Verdict, Which::Kill].into_iter().find_map(|which| {
            let notice = self.pending[which as usize].take()?;
            Some(Job {
                which,
                notice,
                skipped: std::mem::take(&mut self.skipped_since[which as usize]),
            })
        })
    }
}

struct Shared {
    /// The binary whose [`launch`] starts each hook (the daemon's own).
    launcher: std::path::PathBuf,
    on_kill: Option<Vec<String>>,
    on_verdict: Option<Vec<String>>,
    user: String,
    identity: Identity,
    max_running: usize,
    timeout: Duration,
    state: Mutex<State>,
    idle: Notify,
}

/// The hooks of a running daemon; cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_kill", &self.shared.on_kill)
            .field("on_verdict", &self.shared.on_verdict)
            .field("user", &self.shared.user)
            .finish_non_exhaustive()
    }
}

impl HookConfig {
    /// Checks every value as the daemon will use it (`config check` calls this too).
    pub fn check(&self) -> Result<(), HookError> {
        self.build().map(drop)
    }

    /// The hooks, or `None` when no hook is configured (then `user` is not even looked up: a
    /// machine without `nobody` needs no `[hooks]`).
    pub fn build(&self) -> Result<Option<Hooks>, HookError> {
        if self.max_running == 0 {
            return Err(HookError::NoneRunning);
        }
        if self.timeout.is_zero() {
            return Err(HookError::NoTimeout);
        }
        if self.on_kill.is_none() && self.on_verdict.is_none() {
            return Ok(None);
        }
        Hooks::new(self).map(Some)
    }
}

impl HookError {
    /// The key under `[hooks]` the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            HookError::Empty { key }
            | HookError::Relative { key, .. }
            | HookError::Unusable { key, .. }
            | HookError::NotFile { key, .. }
            | HookError::NotExecutable { key, .. } => key,
            HookError::UnknownUser(_) | HookError::UserLookup { .. } => "user",
            HookError::NoneRunning => "max_running",
            HookError::NoTimeout => "timeout",
        }
    }
}

impl Hooks {
    /// Resolves the user and checks each program: absolute, a regular file, executable by the
    /// user.
    pub fn new(config: &HookConfig) -> Result<Self, HookError> {
        if config.max_running == 0 {
            return Err(HookError::NoneRunning);
        }
        if config.timeout.is_zero() {
            return Err(HookError::NoTimeout);
        }
        let identity = resolve(&config.user)?;
        for (key, argv) in [
            ("on_kill", &config.on_kill),
            ("on_verdict", &config.on_verdict),
        ] {
            if let Some(argv) = argv {
                check_program(key, argv, identity, &config.user)?;
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                launcher: SELF.into(),
                on_kill: config.on_kill.clone(),
                on_verdict: config.on_verdict.clone(),
                user: config.user.clone(),
                identity,
                max_running: config.max_running,
                timeout: config.timeout,
                state: Mutex::default(),
                idle: Notify::new(),
            }),
        })
    }

    /// Starts hooks through `binary`, an `oomcount` (whose `main` calls [`launch`]), instead of
    /// the running one: for hooks run by a program that is not `oomcount` (the tests).
    pub fn with_launcher(mut self, binary: std::path::PathBuf) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("set before the hooks are shared")
            .launcher = binary;
        self
    }

    /// Runs `on_kill` for a kill (from within the daemon's tokio runtime; returns at once).
    pub fn kill(&self, notice: Notice) {
        if self.shared.on_kill.is_some() {
            self.submit(Which::Kill, notice);
        }
    }

    /// Runs `on_verdict` for a change of verdict (as [`Hooks::kill`]).
    pub fn verdict(&self, notice: Notice) {
        if self.shared.on_verdict.is_some() {
            self.submit(Which::Verdict, notice);
        }
    }

    /// Notices that ran no hook because `max_running` hooks were busy (`hooks_skipped`).
    pub fn skipped(&self) -> u64 {
        self.state().skipped
    }

    /// Hooks started so far.
    pub fn ran(&self) -> u64 {
        self.state().ran
    }

    /// Hooks running now.
    pub fn running(&self) -> usize {
        self.state().running
    }

    /// Returns once no hook runs and none waits.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic never happens while the lock is held; a poisoned state is still consistent.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn submit(&self, which: Which, notice: Notice) {
        let job = {
            let mut state = self.state();
            if state.running < self.shared.max_running {
                state.running += 1;
                Job {
                    which,
                    notice,
                    skipped: std::mem::take(&mut state.skipped_since[which as usize]),
                }
            } else {
                state.wait(which, notice);
                return;
            }
        };
        let hooks = self.clone();
        tokio::spawn(async move { hooks.supervise(job).await });
    }

    /// Runs `job`, then whatever waits, until nothing does: the slot is given up only then.
    async fn supervise(self, mut job: Job) {
        loop {
            self.run(&job).await;
            let next = {
                let mut state = self.state();
                let next = state.take_pending();
                if next.is_none() {
                    state.running -= 1;
                }
                next
            };
            match next {
                Some(next) => job = next,
                None => {
                    self.shared.idle.notify_waiters();
                    return;
                }
            }
        }
    }

    fn command(&self, job: &Job) -> Option<Command> {
        let argv = match job.which {
            Which::Kill => self.shared.on_kill.as_ref(),
            Which::Verdict => self.shared.on_verdict.as_ref(),
        }?;
        let Identity { uid, gid } = self.shared.identity;
        let mut command = Command::new(&self.shared.launcher);
        command
            .arg(LAUNCHER)
            .arg(uid.to_string())
            .arg(gid.to_string())
            .arg("--")
            .args(argv)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (name, value) in job.notice.fields() {
            // No NUL can come from a kernel name; a value with one could not be passed at all.
            if !value.contains(&0) {
                command.env(name, OsStr::from_bytes(value));
            }
        }
        // After the event's fields: these are never an event's.
        command
            .env("PATH", PATH)
            .env("OOMCOUNT_HOOK", job.which.name())
            .env("OOMCOUNT_SKIPPED", job.skipped.to_string())
            .env("OOMCOUNT_EVENT", job.notice.json());
        // No `pre_exec`, no `uid`: with either, the standard library forks (see the module's
        // documentation); the launcher does their work.
        Some(command)
    }

    async fn run(&self, job: &Job) {
        let Some(mut command) = self.command(job) else {
            return;
        };
        let key = job.which.key();
        let seq = job
            .notice
            .get("seq")
            .map(|seq| format!(" for event {}", String::from_utf8_lossy(seq)))
            .unwrap_or_default();
        // Off the runtime's thread: the exec waits for the program to be read, which under
        // memory pressure (an OOM is why the hook runs) may take long; on the blocking thread,
        // which also runs at ordinary priority where the daemon is real-time.
        let spawned = tokio::task::spawn_blocking(move || command.spawn()).await;
        let mut child = match spawned {
            Ok(Ok(child)) => child,
            Ok(Err(err)) => {
                log::warn!("hook {key}{seq} did not start: {err}");
                return;
            }
            Err(err) => {
                log::warn!("hook {key}{seq} did not start: {err}");
                return;
            }
        };
        self.state().ran += 1;
        let pid = child.id().unwrap_or_default() as i32;
        let mut stderr = child.stderr.take();
        let mut first = FirstLine::default();
        let mut chunk = [0u8; 512];
        let mut status: Option<io::Result<ExitStatus>> = None;
        let mut deadline = pin!(tokio::time::sleep(self.shared.timeout));
        let timed_out = loop {
            if status.is_some() && stderr.is_none() {
                break false;
            }
            tokio::select! {
                exited = child.wait(), if status.is_none() => status = Some(exited),
                read = read_some(stderr.as_mut(), &mut chunk) => match read {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => first.push(&chunk[..n]),
                },
                () = &mut deadline => break true,
            }
        };
        if timed_out {
            // The leader is not reaped before this (or its group still holds the pipe), so the
            // group id is still this hook's.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            if status.is_none() {
                status = Some(child.wait().await);
            }
        }
        let line = first.text();
        let said = if line.is_empty() {
            String::new()
        } else {
            format!(": {line}")
        };
        match status {
            _ if timed_out => log::warn!(
                "hook {key}{seq} (pid {pid}) killed after its timeout of {:?}{said}",
                self.shared.timeout
            ),
            Some(Ok(status)) if status.success() => {
                log::info!("hook {key}{seq} (pid {pid}) exited 0{said}")
            }
            Some(Ok(status)) => log::warn!("hook {key}{seq} (pid {pid}) {status}{said}"),
            Some(Err(err)) => log::warn!("hook {key}{seq} (pid {pid}): cannot wait: {err}"),
            None => {}
        }
    }
}

/// Reads `stderr` while it is open; pends forever once it is closed.
async fn read_some(stderr: Option<&mut ChildStderr>, buf: &mut [u8]) -> io::Result<usize> {
    match stderr {
        Some(stderr) => stderr.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The first line of a hook's stderr, at most [`FIRST_LINE`] bytes; the rest is read and dropped
/// so that the hook never blocks writing it.
#[derive(Default)]
struct FirstLine {
    bytes: Vec<u8>,
    done: bool,
}

impl FirstLine {
    fn push(&mut self, mut chunk: &[u8]) {
        if self.done {
            return;
        }
        if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            chunk = &chunk[..end];
            self.done = true;
        }
        let room = FIRST_LINE - self.bytes.len();
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.done |= self.bytes.len() == FIRST_LINE;
    }

    /// The line for the log: lossy UTF-8, control characters escaped.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes)
            .chars()
            .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
                if c.is_control() {
                    Box::new(c.escape_default())
                } else {
                    Box::new(std::iter::once(c))
                }
            })
            .collect()
    }
}

/// The daemon's own binary, whatever its path now (a package upgrade may have replaced it).
const SELF: &str = "/proc/self/exe";
/// The first argument that makes the binary a hook's launcher: `LAUNCHER UID GID -- PROGRAM
/// ARGS...`. Not a subcommand (nobody types it; the CLI's help and man pages leave it out); run
/// by anyone else, it can only drop privileges that user has.
pub const LAUNCHER: &str = "__oomcount-hook-launcher";

/// When `args` (the process's, `argv[0]` first) ask for the launcher: drops privileges to the
/// given uid and gid ([`drop_privileges`]) and executes the hook with this process's environment
/// (the daemon's, made for the hook); returns only if that fails, with the exit status (127, as a
/// shell's for a program it cannot run), having said why on stderr (the daemon logs its first
/// line). `None` when `args` are not the launcher's.
pub fn launch(args: &[std::ffi::OsString]) -> Option<u8> {
    if args.get(1).is_none_or(|first| first != LAUNCHER) {
        return None;
    }
    let failed = |what: String| {
        eprintln!("oomcount hook launcher: {what}");
        Some(127)
    };
    let number = |arg: Option<&std::ffi::OsString>| -> Option<u32> { arg?.to_str()?.parse().ok() };
    let (Some(uid), Some(gid), Some("--"), Some(program)) = (
        number(args.get(2)),
        number(args.get(3)),
        args.get(4).and_then(|a| a.to_str()),
        args.get(5),
    ) else {
        return failed(format!("usage: {LAUNCHER} UID GID -- PROGRAM [ARGS...]"));
    };
    if let Err(err) = drop_privileges(uid, gid) {
        return failed(format!("cannot become uid {uid} gid {gid}: {err}"));
    }
    let cstring = |arg: &std::ffi::OsString| std::ffi::CString::new(arg.as_bytes());
    let Ok(argv) = args[5..].iter().map(cstring).collect::<Result<Vec<_>, _>>() else {
        return failed("an argument holds a NUL byte".to_owned());
    };
    let err = nix::unistd::execv(&argv[0], &argv).unwrap_err();
    failed(format!(
        "cannot run {}: {err}",
        Path::new(program).display()
    ))
}

/// In the launcher, before exec: the daemon's descriptors close on exec, then groups, gid and
/// uid become the hook user's, and no capability and no way to gain one is left.
fn drop_privileges(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    fn check(result: libc::c_int) -> io::Result<()> {
        if result == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // SAFETY: plain system calls on this process, with valid pointers to locals and constants.
    unsafe {
        // Nothing of the daemon's own protection: not its real-time priority (a hook that spins
        // would starve the machine) nor its oom_score_adj of -1000 (a hook that grows must be
        // the OOM killer's to take). Both are inherited through the spawn; both may fail harmlessly
        // where the daemon never had them.
        let ordinary = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_OTHER, &ordinary);
        let adj = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if adj >= 0 {
            libc::write(adj, b"0".as_ptr().cast(), 1);
            libc::close(adj);
        }
        // Everything above stderr (the BPF maps, the socket, the watchdog device) stays the
        // daemon's even if some library forgot O_CLOEXEC. Before 5.11 this is EINVAL, and every
        // descriptor the daemon opens itself is close-on-exec anyway.
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        // While CAP_SETPCAP is still there: no capability can come back through a file's.
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        if libc::geteuid() != uid || libc::getegid() != gid {
            check(libc::setgroups(1, &gid))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
        }
        // EINVAL before 4.3, which has no ambient set.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let none = [
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        check(libc::syscall(libc::SYS_capset, &header, none.as_ptr()) as libc::c_int)?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// A user name (its uid and primary group from the user database), or a numeric uid: its primary
/// group where the database knows it, else the group of the same number (a machine without
/// /etc/passwd, such as a minimal guest).
fn resolve(user: &str) -> Result<Identity, HookError> {
    let lookup = |source| HookError::UserLookup {
        user: user.to_owned(),
        source,
    };
    // getpwnam(3): a missing database is "not found" (ENOENT and kin), not an error.
    let absent = |result: nix::Result<Option<nix::unistd::User>>| match result {
        Err(
            nix::errno::Errno::ENOENT
            | nix::errno::Errno::ESRCH
            | nix::errno::Errno::EBADF
            | nix::errno::Errno::EPERM,
        ) => Ok(None),
        other => other,
    };
    if let Some(found) = absent(nix::unistd::User::from_name(user)).map_err(lookup)? {
        return Ok(Identity {
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
        });
    }
    let uid: libc::uid_t = match user.parse() {
        Ok(uid) if user.bytes().all(|b| b.is_ascii_digit()) => uid,
        _ => return Err(HookError::UnknownUser(user.to_owned())),
    };
    let gid = absent(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)))
        .map_err(lookup)?
        .map_or(uid, |found| found.gid.as_raw());
    Ok(Identity { uid, gid })
}

/// An `on_kill`/`on_verdict` list: an absolute path to a regular file `user` may execute.
fn check_program(
    key: &'static str,
    argv: &[String],
    identity: Identity,
    user: &str,
) -> Result<(), HookError> {
    let program = argv.first().ok_or(HookError::Empty { key })?;
    let path = Path::new(program);
    if !path.is_absolute() {
        return Err(HookError::Relative {
            key,
            path: program.clone(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|source| HookError::Unusable {
        key,
        path: program.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(HookError::NotFile {
            key,
            path: program.clone(),
        });
    }
    let mode = meta.mode();
    let bit = if identity.uid == 0 {
        0o111
    } else if meta.uid() == identity.uid {
        0o100
    } else if meta.gid() == identity.gid {
        0o010
    } else {
        0o001
    };
    if mode & bit == 0 {
        return Err(HookError::NotExecutable {
            key,
            path: program.clone(),
            user: user.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_answers_only_its_own_argument_and_refuses_a_short_list() {
        let args =
            |list: &[&str]| -> Vec<std::ffi::OsString> { list.iter().map(Into::into).collect() };
        assert_eq!(launch(&args(&["oomcount", "count"])), None);
        assert_eq!(launch(&args(&["oomcount"])), None);
        // Refused before any privilege is dropped or anything run.
        assert_eq!(launch(&args(&["oomcount", LAUNCHER, "65534"])), Some(127));
        assert_eq!(
            launch(&args(&[
                "oomcount",
                LAUNCHER,
                "x",
                "65534",
                "--",
                "/bin/true"
            ])),
            Some(127)
        );
    }

    fn config(on_kill: &[&str]) -> HookConfig {
        HookConfig {
            on_kill: Some(on_kill.iter().map(|s| s.to_string()).collect()),
            user: "root".into(),
            ..HookConfig::default()
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let plain =
            std::env::temp_dir().join(format!("oomcount-hook-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let plain = plain.to_str().unwrap().to_owned();
        let cases: [(HookConfig, &str); 7] = [
            (config(&[]), "hooks.on_kill: the list is empty"),
            (
                config(&["true"]),
                "hooks.on_kill: \"true\" is not an absolute path",
            ),
            (
                config(&["/nonexistent/hook"]),
                "hooks.on_kill: cannot use \"/nonexistent/hook\"",
            ),
            (config(&["/"]), "hooks.on_kill: \"/\" is not a regular file"),
            (
                config(&[&plain]),
                &format!("hooks.on_kill: {plain:?} is not executable by user \"root\""),
            ),
            (
                HookConfig {
                    user: "no-such-user-oomcount".into(),
                    ..config(&["/bin/true"])
                },
                "hooks.user: there is no user \"no-such-user-oomcount\"",
            ),
            (
                HookConfig {
                    max_running: 0,
                    ..HookConfig::default()
                },
                "hooks.max_running",
            ),
        ];
        for (config, want) in cases {
            let err = config.check().expect_err(want).to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        let verdict = HookConfig {
            on_verdict: Some(vec!["bin/true".into()]),
            ..HookConfig::default()
        };
        assert!(
            verdict
                .check()
                .unwrap_err()
                .to_string()
                .starts_with("hooks.on_verdict:")
        );
        config(&["/bin/true", "any", "args"]).check().unwrap();
        let numeric = resolve("4000000000").unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4_000_000_000, 4_000_000_000));
        assert_eq!(resolve("0").unwrap().uid, 0);
        assert!(resolve("-1").is_err() && resolve("+5").is_err());
        std::fs::remove_file(plain).unwrap();
    }

    /// Hooks switch users and are killed at their timeout: the shipped unit must allow both (the
    /// daemon runs as root with a bounding set, so a capability not there is refused).
    #[test]
    fn the_shipped_unit_lets_hooks_switch_users() {
        let unit = include_str!("../../../contrib/systemd/oomcount.service");
        let caps = |key: &str| {
            unit.lines()
                .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
                .next_back()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
            for cap in ["CAP_SETUID", "CAP_SETGID", "CAP_KILL"] {
                assert!(caps(key).contains(&cap), "{key} lacks {cap}");
            }
        }
    }

    #[test]
    fn first_line_is_bounded_and_escaped() {
        let mut line = FirstLine::default();
        line.push(b"bad \x1b[31mthing");
        line.push(b" happened\nsecond line\n");
        line.push(b"more");
        assert_eq!(line.text(), "bad \\u{1b}[31mthing happened");
        let mut long = FirstLine::default();
        long.push(&[b'x'; 10_000]);
        assert_eq!(long.text().len(), FIRST_LINE);
    }

    #[test]
    fn a_storm_waits_in_one_slot_per_kind() {
        let mut state = State::default();
        for which in [Which::Kill, Which::Kill, Which::Verdict, Which::Kill] {
            state.wait(which, Notice::new(&serde_json::json!({ "seq": 1 })));
        }
        let first = state.take_pending().unwrap();
        assert_eq!((first.which, first.skipped), (Which::Verdict, 0));
        let second = state.take_pending().unwrap();
        assert_eq!((second.which, second.skipped), (Which::Kill, 2));
        assert!(state.take_pending().is_none());
        assert_eq!(state.skipped, 2);
    }
}
