//! The frames a thread never leaves, for the `hot` profile.
//!
//! A uprobe sees a function when it is entered. A thread's loop (a xenstore thread's rounds, the
//! runtime's `block_on`) is entered once, before the daemon serves, and then runs for good: by its
//! entries it is start-up code, and the profile put it among start-up's pages, which the daemon
//! gives back and then maps in again, with the 64 KiB around each fault. What tells such a frame:
//! on a thread's stack at the end, it is the caller of a function entered after the daemon served.
//! Its callers further out (`main`, the thread's start) wait for good and stay start-up's.
//!
//! The stacks come from gdb (`thread apply all bt`), which unwinds the release binary by its
//! `.eh_frame`; the bench's setup installs it for `--hot-functions`.
use std::{collections::BTreeSet, path::Path, process::Command};

/// One thread's frames, innermost first, each as an address in the file that its function holds
/// (the innermost's pc, the call before each return address), `None` where gdb gave none.
pub type Stack = Vec<Option<u64>>;

/// Every thread's stack of the running process `pid` of the binary `bin`.
pub fn of(pid: u32, bin: &Path) -> Result<Vec<Stack>, String> {
    let base = load_base(pid, bin)?;
    let out = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .output()
        .map_err(|err| format!("gdb (needed by --hot-functions): {err}"))?;
    let stacks = parse(&String::from_utf8_lossy(&out.stdout), base);
    if stacks.is_empty() {
        return Err(format!(
            "gdb showed no thread of {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(stacks)
}

/// The functions that a stack shows running after `served`: each caller of a function of the
/// binary entered at or after it (`entered` gives a function's last entry; `function` maps an
/// address to the function that holds it).
pub fn looping(
    stacks: &[Stack],
    entered: impl Fn(u64) -> Option<u64>,
    function: impl Fn(u64) -> Option<u64>,
    served: u64,
) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for stack in stacks {
        for pair in stack.windows(2) {
            let (Some(callee), Some(caller)) = (pair[0], pair[1]) else {
                continue;
            };
            let (Some(callee), Some(caller)) = (function(callee), function(caller)) else {
                continue;
            };
            if entered(callee).is_some_and(|ns| ns >= served) {
                found.insert(caller);
            }
        }
    }
    found
}

/// Where the kernel mapped the binary's first byte (its file offset 0).
fn load_base(pid: u32, bin: &Path) -> Result<u64, String> {
    let bin = std::fs::canonicalize(bin).map_err(|err| format!("{}: {err}", bin.display()))?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|err| format!("/proc/{pid}/maps: {err}"))?;
    maps.lines()
        .find_map(|line| {
            // `start-end perms offset dev inode path`
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [range, _, offset, _, _, path] = fields[..] else {
                return None;
            };
            (Path::new(path) == bin && u64::from_str_radix(offset, 16) == Ok(0))
                .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())?
        })
        .ok_or_else(|| format!("{} is not mapped in {pid}", bin.display()))
}

/// gdb's backtraces: `Thread N (...)` then `#K  0xADDR in NAME ...` (or `#0  NAME ...`, the
/// innermost frame without its address).
fn parse(text: &str, base: u64) -> Vec<Stack> {
    let mut stacks: Vec<Stack> = Vec::new();
    for line in text.lines() {
        if line.starts_with("Thread ") {
            stacks.push(Vec::new());
            continue;
        }
        let (Some(stack), Some(frame)) = (stacks.last_mut(), line.strip_prefix('#')) else {
            continue;
        };
        let mut fields = frame.split_whitespace();
        let innermost = fields.next() == Some("0");
        let addr = fields
            .next()
            .and_then(|a| a.strip_prefix("0x"))
            .and_then(|a| u64::from_str_radix(a, 16).ok());
        // Below the base (another mapping) an address wraps to a huge one that no function
        // holds. Outer frames show where the call returns to: the call is the byte before.
        let in_file = |a: u64| a.wrapping_sub(base).wrapping_sub(u64::from(!innermost));
        stack.push(addr.map(in_file));
    }
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;

    const BT: &str = "\
Thread 2 (Thread 0x7f1e35c646c0 (LWP 27799) \"tokio-rt-worker\"):
#0  syscall () at ../sysdeps/unix/sysv/linux/x86_64/syscall.S:38
#1  0x0000000000001f5b in <std::sys::sync::condvar::futex::Condvar>::wait_timeout ()
#2  0x0000000000002329 in std::sys::backtrace::__rust_begin_short_backtrace::hcf3 ()
#3  0x0000000000003749 in core::ops::function::FnOnce::call_once{{vtable.shim}} ()

Thread 1 (Thread 0x7f1e35ca6840 (LWP 27797) \"oomcount\"):
#0  0x00000000000f0f36 in epoll_wait (epfd=3) at epoll_wait.c:30
#1  0x00000000000016fa in tokio::runtime::io::driver::Driver::turn::hb1f ()
";

    #[test]
    fn parses_threads_and_frames() {
        let stacks = parse(BT, 0x1000);
        assert_eq!(
            stacks,
            vec![
                vec![None, Some(0xf5a), Some(0x1328), Some(0x2748)],
                vec![Some(0xeff36), Some(0x6f9)],
            ]
        );
    }

    #[test]
    fn a_caller_of_what_ran_since_is_looping_and_its_callers_are_not() {
        // Functions are the 0x1000-byte blocks their addresses fall in.
        let function = |a: u64| Some(a & !0xfff);
        let stacks = vec![vec![None, Some(0x1f5a), Some(0x2328), Some(0x3748)]];
        // wait_timeout (0x1000) entered at 50, after serving at 40; the loop (0x2000) and the
        // shim (0x3000) at 10.
        let entered = |f: u64| match f {
            0x1000 => Some(50),
            0x2000 | 0x3000 => Some(10),
            _ => None,
        };
        assert_eq!(
            looping(&stacks, entered, function, 40),
            BTreeSet::from([0x2000])
        );
        // Nothing since serving at 60: nothing loops.
        assert!(looping(&stacks, entered, function, 60).is_empty());
    }
}
