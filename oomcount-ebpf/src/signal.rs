//! The OOM killer's SIGKILL, seen on `signal/signal_generate`: remembered per sending task, so
//! that the mark that follows it in the same task is known for a kill. A victim that is already
//! an OOM victim gets no new mark: its kill (`again`) is handed to the raw mark program by a tail
//! call.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomcount_common::{Pending, SI_KERNEL, SIGKILL, counter};

use crate::{Comm, OOMCOUNT_KILL_PROG, OOMCOUNT_PENDING, OOMCOUNT_SCRATCH, bump, config, read};

/// Remembers that the current task just sent an OOM-style SIGKILL to `victim_pid`.
#[inline(always)]
pub(crate) fn remember(victim_pid: u32, task: u64, comm: Comm, counted: u32) -> Result<(), i32> {
    bump(counter::OOM_SIGNALS);
    let pending = Pending {
        victim_pid,
        counted,
        // SAFETY: helper without preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
        task,
        // SAFETY: same size, any bytes are valid.
        comm: unsafe { core::mem::transmute::<Comm, [u8; 16]>(comm) },
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    OOMCOUNT_PENDING.insert(tid, pending, 0)
}

/// `signal/signal_generate` as a classic tracepoint: for kernels without BTF.
#[tracepoint]
pub fn oomcount_signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_signal_generate(&ctx);
    0
}

pub(crate) fn try_signal_generate(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    // SAFETY (all reads): offsets come from the tracepoint's own format file; the reads go
    // through bpf_probe_read_kernel, which fails cleanly rather than faulting.
    let sig: i32 = unsafe { ctx.read_at(cfg.signal_generate.sig as usize)? };
    if sig != SIGKILL {
        return Ok(());
    }
    let code: i32 = unsafe { ctx.read_at(cfg.signal_generate.code as usize)? };
    let group: i32 = unsafe { ctx.read_at(cfg.signal_generate.group as usize)? };
    if code != SI_KERNEL || group == 0 {
        return Ok(());
    }
    let victim_pid: i32 = unsafe { ctx.read_at(cfg.signal_generate.pid as usize)? };
    let comm: Comm = unsafe { ctx.read_at(cfg.signal_generate.comm as usize)? };
    remember(victim_pid as u32, 0, comm, 0)
}

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result)` as a raw tracepoint: the same test, and it keeps the victim's task.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn oomcount_signal_generate_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_signal_generate_raw(&ctx);
    0
}

pub(crate) fn try_signal_generate_raw(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sig: u64 = ctx.arg(0);
    if sig as i32 != SIGKILL {
        return Ok(());
    }
    let group: u64 = ctx.arg(3);
    if group as i32 == 0 {
        return Ok(());
    }
    // The OOM killer sends its SIGKILL with SEND_SIG_PRIV (1; SEND_SIG_FORCED, 2, before 4.20),
    // which is not a pointer: the tracepoint turns it into SI_KERNEL. A signal that comes with a
    // real siginfo is never the OOM killer's, whatever its si_code: `rt_sigqueueinfo` lets any
    // process send itself SIGKILL with SI_KERNEL, and such forged signals must take no pending
    // entry (they would push real kills' signals out of the LRU) and count nothing.
    let info: u64 = ctx.arg(1);
    if info != 1 && info != 2 {
        return Ok(());
    }
    let cfg = config();
    let task: u64 = ctx.arg(2);
    let pid: i32 = read(task, cfg.task.pid)?;
    let comm: Comm = read(task, cfg.task.comm)?;
    // A task that is already an OOM victim gets no new mark (its thread is flagged already),
    // yet the kernel counts the kill: a `memory.oom.group` kill reaches its first victim twice.
    // That kill is counted, and its event sent, by the mark program, tail-called here with the
    // victim in the scratch: the kill's code (the search for `oom_control`, the event) is then
    // verified once, in one program.
    let signal: u64 = read(task, cfg.task.signal)?;
    let oom_mm: u64 = read(signal, cfg.signal.oom_mm)?;
    let _ = remember(pid as u32, task, comm, u32::from(oom_mm != 0));
    if oom_mm != 0 {
        let scratch = OOMCOUNT_SCRATCH.get_ptr_mut(0).ok_or(0)?;
        // SAFETY: per-CPU scratch; the tail-called program runs next, on this CPU.
        unsafe {
            let again = core::ptr::addr_of_mut!((*scratch).again);
            core::ptr::write_volatile(again, task);
            OOMCOUNT_KILL_PROG.tail_call(ctx, 0);
            // No program to call (it is set before this one is attached): an `again` kill counts
            // only where its `oom_control` is found, which only that program looks for.
            core::ptr::write_volatile(again, 0);
        }
    }
    Ok(())
}
