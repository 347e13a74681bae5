//! What runs inside `oomcount-hog`, the OOM producer: the shapes of victim that the kernel
//! counts differently (FACTS.md), each made on purpose and kept minimal.
//!
//! - one single-threaded process touching memory: one kill, one `mark_victim`;
//! - one process whose threads all touch memory: one kill, and the other threads that hit the
//!   limit are marked again without a kill;
//! - two processes sharing one mm (`clone(CLONE_VM)` without `CLONE_THREAD`): both die, one kill;
//! - a victim already dying when the OOM killer picks it: SIGKILLed but held in the exit path by
//!   a ptrace exit stop, its memory still mapped; the OOM killer marks it and kills nothing;
//! - a storm: producers outside the group fork children that join the group and touch memory
//!   until killed, hundreds of kills a second. The producers stay outside: a memcg OOM chooses
//!   only among the group's members, so it can never kill the producer itself.
//!
//! Memory is mapped and touched page by page with raw `mmap`, so that the charge grows in
//! steps the test controls and no allocator stands between the process and the kernel.
use std::{
    ffi::CString,
    io::Write as _,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    ptr,
};

/// How much each step maps and touches.
pub const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

/// Exit code of a hog that could not map memory (overcommit refused it).
pub const EXIT_NO_MEMORY: i32 = 3;
/// Exit code of a storm whose child ended other than by SIGKILL.
pub const EXIT_STORM_CHILD: i32 = 4;

/// Moves this process into the cgroup at `dir` (writing `0` means "the writer").
pub fn join_cgroup(dir: &Path) {
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, "0").unwrap_or_else(|err| panic!("join {}: {err}", procs.display()));
}

/// Sets this process's `oom_score_adj` (1000: the OOM killer's first choice).
pub fn set_oom_score_adj(adj: i32) {
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .unwrap_or_else(|err| panic!("set oom_score_adj {adj}: {err}"));
}

/// Renames this process (its comm, at most 15 bytes: the kernel cuts the rest), so that a test
/// can tell its victim from the process that made the OOM by name too.
pub fn set_comm(name: &str) {
    set_comm_bytes(name.as_bytes());
}

/// [`set_comm`] with any bytes but NUL: a victim named with a newline or invalid UTF-8.
pub fn set_comm_bytes(name: &[u8]) {
    let name = CString::new(name).expect("no NUL in a comm");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of which it copies at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "prctl(PR_SET_NAME): {}",
        std::io::Error::last_os_error()
    );
}

/// Becomes user and group `uid` (real, effective and saved), dropping root: for a victim whose
/// uid is not the test's. Called after joining the cgroup and setting `oom_score_adj`.
pub fn become_user(uid: u32) {
    // SAFETY: plain system calls on integers.
    unsafe {
        assert_eq!(
            libc::setgroups(0, ptr::null()),
            0,
            "setgroups: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::setresgid(uid, uid, uid),
            0,
            "setresgid {uid}: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::setresuid(uid, uid, uid),
            0,
            "setresuid {uid}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Maps one [`CHUNK`] and writes to each page so that it is charged. Uses no allocator and no
/// thread-local state besides `errno`, so an mm-sharing clone may call it.
fn touch_chunk() -> bool {
    // SAFETY: a fresh private anonymous mapping, written only within its length.
    unsafe {
        let p = libc::mmap(
            ptr::null_mut(),
            CHUNK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return false;
        }
        let p = p.cast::<u8>();
        for offset in (0..CHUNK).step_by(PAGE) {
            ptr::write_volatile(p.add(offset), 1);
        }
    }
    true
}

fn touch_or_exit() {
    if !touch_chunk() {
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(EXIT_NO_MEMORY) };
    }
}

/// Touches `mb` MiB and returns.
pub fn touch_mb(mb: u64) {
    for _ in 0..mb {
        touch_or_exit();
    }
}

/// Touches memory until the OOM killer ends this process.
pub fn touch_forever() -> ! {
    loop {
        touch_or_exit();
    }
}

/// Says `ready` on stdout and waits to be killed, holding what it touched.
pub fn hold() -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// `n` threads touching memory at once (a barrier starts them together), until killed.
pub fn threads(n: usize) -> ! {
    let start = std::sync::Arc::new(std::sync::Barrier::new(n));
    for _ in 1..n {
        let start = start.clone();
        std::thread::spawn(move || {
            start.wait();
            touch_forever()
        });
    }
    start.wait();
    touch_forever()
}

/// A second process sharing this one's mm (`clone(CLONE_VM)`, no `CLONE_THREAD`); both touch
/// memory until killed. The clone runs [`touch_chunk`] only, which needs no thread-local state.
pub fn vmshare() -> ! {
    extern "C" fn sharer(_: *mut libc::c_void) -> libc::c_int {
        touch_forever()
    }
    const STACK: usize = 256 << 10;
    // SAFETY: the stack is a fresh mapping owned by the clone for its whole life (both processes
    // die together); the clone touches no thread-local state.
    unsafe {
        let stack = libc::mmap(
            ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        assert_ne!(stack, libc::MAP_FAILED, "mmap the clone's stack");
        let top = stack.cast::<u8>().add(STACK).cast();
        let pid = libc::clone(sharer, top, libc::CLONE_VM | libc::SIGCHLD, ptr::null_mut());
        assert!(
            pid > 0,
            "clone(CLONE_VM): {}",
            std::io::Error::last_os_error()
        );
    }
    touch_forever()
}

/// The already-dying victim. Forks a child that joins `group`, sets `oom_score_adj` 1000 (the
/// OOM killer's choice), touches `mb` MiB and waits; this process (outside the group) seizes it
/// with `PTRACE_O_TRACEEXIT` and SIGKILLs it. The child then stops at `PTRACE_EVENT_EXIT`, at the
/// top of `do_exit()`: its signal group is exiting, its mm still attached and counted as live.
/// That is what the OOM killer's `task_will_free_mem()` takes for a victim already on its way
/// out: it marks it and kills nothing, and the OOM reaper frees its memory while it stays stopped.
/// Says `dying PID` on stdout, waits for a line on stdin (or its end), lets the child finish
/// exiting and checks it died of the SIGKILL.
///
/// Why not a frozen process: a cgroup v1 freezer holds a SIGKILLed task too, but the mark thaws
/// it, and while it exits (no longer live, memory not yet uncharged) a second OOM in the same
/// group finds no one else to pick than the process that triggered it (seen on 7.2 in QEMU).
pub fn dying(group: &Path, mb: u64) -> Result<(), String> {
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this process is single-threaded here, so the child may do anything.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(ready_r);
            join_cgroup(group);
            set_oom_score_adj(1000);
            touch_mb(mb);
            let _ = nix::unistd::write(&ready_w, b"r");
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        pid => pid,
    };
    drop(ready_w);
    let child = nix::unistd::Pid::from_raw(pid);
    let mut byte = [0u8; 1];
    if nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&ready_r), &mut byte) != Ok(1) {
        return Err(format!(
            "the victim (pid {pid}) died before touching {mb} MiB: {:#x}",
            wait_pid(pid)
        ));
    }
    use nix::sys::ptrace::{self, Options};
    ptrace::seize(
        child,
        Options::PTRACE_O_TRACEEXIT | Options::PTRACE_O_EXITKILL,
    )
    .map_err(|e| format!("PTRACE_SEIZE {pid}: {e}"))?;
    nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("kill {pid}: {e}"))?;
    let status = wait_pid_all(pid);
    let exit_stop = libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8);
    if !(libc::WIFSTOPPED(status) && status >> 8 == exit_stop) {
        return Err(format!(
            "the SIGKILLed victim did not stop at PTRACE_EVENT_EXIT (wait status {status:#x}): this kernel lets SIGKILL skip the exit stop"
        ));
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "dying {pid}");
    let _ = out.flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let _ = ptrace::detach(child, None);
    let status = wait_pid_all(pid);
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        Ok(())
    } else {
        Err(format!(
            "the victim ended with wait status {status:#x}, not by SIGKILL"
        ))
    }
}

/// One producer process per cgroup in `groups`, each forking `kills_each` children one after
/// another; a child joins its producer's group and touches memory until the OOM killer ends it.
/// Returns the number of children killed by SIGKILL, or why the storm failed.
pub fn storm(groups: &[PathBuf], kills_each: u64) -> Result<u64, String> {
    let mut producers = Vec::new();
    for dir in groups {
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .expect("no NUL in a path");
        // SAFETY: this process is single-threaded here, so the child may do anything.
        match unsafe { libc::fork() } {
            -1 => {
                return Err(format!(
                    "fork a producer: {}",
                    std::io::Error::last_os_error()
                ));
            }
            0 => {
                let code = match produce(&procs, kills_each) {
                    Ok(()) => 0,
                    Err(err) => {
                        eprintln!("oomcount-hog storm producer for {}: {err}", dir.display());
                        EXIT_STORM_CHILD
                    }
                };
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(code) };
            }
            pid => producers.push((pid, dir)),
        }
    }
    let mut failed = Vec::new();
    for (pid, dir) in producers {
        let status = wait_pid(pid);
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failed.push(format!(
                "producer for {} ended with status {status:#x}",
                dir.display()
            ));
        }
    }
    if failed.is_empty() {
        Ok(kills_each * groups.len() as u64)
    } else {
        Err(failed.join("; "))
    }
}

/// A producer: forks `kills` children into the group whose `cgroup.procs` is `procs`, waiting
/// for each to be killed before the next.
fn produce(procs: &CString, kills: u64) -> Result<(), String> {
    for n in 0..kills {
        // SAFETY: the producer is single-threaded.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => child_in_group(procs),
            _ => {}
        }
        let status = wait_pid(pid);
        if !(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL) {
            return Err(format!(
                "child {n} (pid {pid}) ended with status {status:#x}, not by SIGKILL"
            ));
        }
    }
    Ok(())
}

/// A storm child: joins the group with raw system calls, then touches memory until killed.
fn child_in_group(procs: &CString) -> ! {
    // SAFETY: plain system calls on a valid C string and a 1-byte buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(EXIT_STORM_CHILD);
        }
        libc::close(fd);
    }
    touch_forever()
}

fn wait_pid(pid: libc::pid_t) -> libc::c_int {
    wait_pid_flags(pid, 0)
}

/// `waitpid` with `__WALL`, which also reports ptrace stops.
fn wait_pid_all(pid: libc::pid_t) -> libc::c_int {
    wait_pid_flags(pid, libc::__WALL)
}

fn wait_pid_flags(pid: libc::pid_t, flags: libc::c_int) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only to `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return status;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EINTR),
            "waitpid({pid}): {err}"
        );
    }
}

/// `n` children, one after another, each sending itself SIGKILL through `rt_sigqueueinfo` with
/// `si_code` SI_KERNEL (the kernel lets a process send itself any code): what a forged "kernel"
/// SIGKILL looks like. Each must die of it.
pub fn forge_sigkills(n: u32) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: the child only makes system calls and exits; the hog has one thread.
        match unsafe { libc::fork() } {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                info.si_signo = libc::SIGKILL;
                info.si_code = libc::SI_KERNEL;
                libc::syscall(
                    libc::SYS_rt_sigqueueinfo,
                    libc::getpid(),
                    libc::SIGKILL,
                    &info as *const libc::siginfo_t,
                );
                // Only reached when the signal was refused.
                libc::_exit(3);
            },
            child => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(child, &mut status, 0) };
                if !(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL) {
                    return Err(format!(
                        "the forged SIGKILL was refused (status {status:#x})"
                    ));
                }
            }
        }
    }
    Ok(())
}
