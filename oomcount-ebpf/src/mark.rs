//! `oom/mark_victim`: pairs each mark with the SIGKILL its task just sent, counts the kill, and
//! sends one event per mark (or per `again` kill) to the ring buffer, counting what it cannot.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use oomcount_common::{ABSENT, Config, Event, Pending, counter, feature, flags, kind};

use crate::{
    Comm, OOMCOUNT_EVENTS, OOMCOUNT_PENDING, OOMCOUNT_SCRATCH, bump, config,
    oom_control::{OomControl, read_oom_control},
    read, stack_anchor,
    task::{read_memory_fields, read_task_memory, read_victim_task},
};

/// Takes the victim of an `again` kill when the signal program tail-called this run, else 0, and
/// keeps it for [`again_victim`] for the rest of the run. Every mark program calls it first.
#[inline(always)]
pub(crate) fn take_again() -> u64 {
    let Some(scratch) = OOMCOUNT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, and tracing programs do not nest on one CPU (the tail call
    // replaces the caller); volatile so that the stores are kept.
    unsafe {
        let task = core::ptr::read_volatile(core::ptr::addr_of!((*scratch).again));
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*scratch).again), 0);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*scratch).again_victim), task);
        task
    }
}

/// The victim of this run's `again` kill, 0 for a mark. Read from memory where it is needed
/// rather than kept in a register: a register holding it would make the verifier go through the
/// kill's code once for each value, which the tail call is there to avoid.
#[inline(always)]
pub(crate) fn again_victim() -> u64 {
    match OOMCOUNT_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch.
        Some(scratch) => unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*scratch).again_victim))
        },
        None => 0,
    }
}

#[tracepoint]
pub fn oomcount_mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

pub(crate) fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    // Never an `again` kill here (those are tail calls into the raw program): this clears it.
    take_again();
    // SAFETY: as in try_signal_generate.
    let pid: i32 = unsafe { ctx.read_at(cfg.mark_victim.pid as usize)? };
    // A classic tracepoint's context is its record, not on the stack: no `oom_control` is
    // looked for (its fields stay absent).
    mark::<false>(&cfg, pid as u32, 0, |cfg, event| {
        if cfg.mark_victim.total_vm != ABSENT {
            let _ = read_memory_fields(ctx, cfg, event);
        }
    });
    Ok(())
}

/// `mark_victim` as a raw tracepoint, the one used wherever BTF is: unlike a classic
/// tracepoint's program it is never skipped because another BPF program or a map syscall is
/// active on the CPU, and its link can be pinned on any kernel. Its arguments are `(int pid)` on
/// the old layout and `(struct task_struct *task, uid_t uid)` on the new one, whose memory
/// fields are then read from the victim's `mm` as the tracepoint itself computes them.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oomcount_mark_victim_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_mark_victim_raw::<false>(&ctx);
    0
}

/// The same with the search for `oom_control` in a `bpf_loop` (Linux 5.17+): what the loader
/// attaches where the helper exists, for fewer instructions to verify (README: Benchmarks).
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oomcount_mark_victim_raw_loop(ctx: RawTracePointContext) -> i32 {
    let _ = try_mark_victim_raw::<true>(&ctx);
    0
}

#[inline(always)]
pub(crate) fn try_mark_victim_raw<const LOOP: bool>(ctx: &RawTracePointContext) -> Result<(), i32> {
    let cfg = config();
    let anchor = stack_anchor(ctx);
    let again = take_again();
    // One call of `mark` for both layouts and for `again` kills: the verifier sees
    // `mark_raw_task` as the constant it is (a read-only global), so it never follows the other
    // layout's branches, such as the read of a second argument the old tracepoint does not have.
    // A tail call from the signal program brings that program's arguments: none are read then.
    let (pid, task, uid) = if again != 0 {
        (read::<i32>(again, cfg.task.pid)? as u32, again, 0)
    } else if cfg.mark_raw_task == 0 {
        let arg: u64 = ctx.arg(0);
        (arg as u32, 0, 0)
    } else {
        let arg: u64 = ctx.arg(0);
        let uid: u64 = ctx.arg(1);
        (read::<i32>(arg, cfg.task.pid)? as u32, arg, uid as u32)
    };
    mark::<LOOP>(&cfg, pid, anchor, |cfg, event| {
        // An `again` kill's event has no memory fields (as the signal has none); its uid comes
        // from the task.
        if task != 0 && again_victim() == 0 {
            event.uid = uid;
            event.flags |= flags::UID;
            if cfg.features & feature::MM != 0 {
                let _ = read_task_memory(cfg, task, event);
            }
        }
    });
    Ok(())
}

/// What both `mark_victim` programs do once they know the pid: pair the mark with the task's
/// pending SIGKILL (or take the `again` kill the signal program handed over), count, and send
/// the event (`fill` adds the program's own fields). `anchor` is where to start looking for the
/// `oom_control` (see [`stack_anchor`]), 0 for nowhere.
#[inline(always)]
pub(crate) fn mark<const LOOP: bool>(
    cfg: &Config,
    pid: u32,
    anchor: u64,
    fill: impl FnOnce(&Config, &mut Event),
) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;

    // Everything is initialised on every path (no `Option` with an undefined payload): older
    // verifiers (5.10) reject a register that LLVM leaves undefined on one path.
    let mut is_kill = false;
    let mut victim = Pending::default();
    let mut comm: Comm = [0; 2];
    let mut oom = OomControl::default();
    let again = again_victim();
    if again != 0 {
        // The signal program's kill of a task already marked: no mark, no pending signal.
        is_kill = true;
        victim.task = again;
        comm = read(again, cfg.task.comm).unwrap_or_default();
    } else {
        bump(counter::MARKED);
        // A mark consumes the task's pending SIGKILL whether or not it matches: a real kill is
        // the very next mark after its signal, so an older entry can only be stale.
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(pending) = unsafe { OOMCOUNT_PENDING.get(tid) } {
            victim = *pending;
            // SAFETY: `comm` is 8-aligned in the map value (asserted above).
            comm = unsafe { core::ptr::read(core::ptr::addr_of!(pending.comm).cast::<Comm>()) };
            let _ = OOMCOUNT_PENDING.remove(tid);
            if victim.victim_pid == pid
                && victim.counted == 0
                && now.wrapping_sub(victim.at_ns) <= cfg.pair_window_ns
            {
                is_kill = true;
            }
        }
    }
    if is_kill {
        oom = count_kill::<LOOP>(cfg, victim.task, anchor);
        if !oom.found && again_victim() != 0 {
            // Not the OOM killer's: see count_kill.
            return;
        }
    }
    // Which split counter a lost kill event bumps, so that the rules can weigh it with its
    // constraint; out of range (no counter) where the constraint is unknown.
    let dropped_as = match (is_kill && oom.found, oom.memcg != 0) {
        (false, _) => u32::MAX,
        (true, true) => counter::KILL_EVENTS_DROPPED_MEMCG,
        (true, false) => counter::KILL_EVENTS_DROPPED_GLOBAL,
    };
    emit(cfg, now, pid, is_kill, dropped_as, |cfg, event| {
        fill(cfg, event);
        if is_kill {
            event.kind = kind::KILL;
            if again_victim() != 0 {
                event.flags |= flags::AGAIN;
            }
            fill_kill(cfg, event, comm, victim.task, &oom);
        }
    });
}

/// Counts a kill, and where the victim's task is known, its constraint from the OOM killer's
/// own view of it. Counting comes before any event is written, so that the counters stay exact
/// when the ring buffer is full.
#[inline(always)]
pub(crate) fn count_kill<const LOOP: bool>(cfg: &Config, task: u64, anchor: u64) -> OomControl {
    let mut oom = OomControl::default();
    if task != 0 && anchor != 0 && cfg.features & feature::OOM_CONTROL != 0 {
        let _ = read_oom_control::<LOOP>(cfg, task, anchor, &mut oom);
    }
    // An `again` kill is a kill only where the OOM killer's own `oom_control` chose the task:
    // other kernel SIGKILLs reach OOM victims too (a pid namespace's teardown, say), and the
    // kernel counts none of them.
    if !oom.found && again_victim() != 0 {
        return oom;
    }
    bump(counter::KILLS);
    if oom.found {
        bump(if oom.memcg != 0 {
            counter::KILLS_MEMCG
        } else {
            counter::KILLS_GLOBAL
        });
    }
    oom
}

/// Sends one event about `pid` (a kill's when `kill`): the common fields here, the rest by
/// `fill`; a full ring buffer is counted, a lost kill also in `dropped_as` (where in range).
#[inline(always)]
pub(crate) fn emit(
    cfg: &Config,
    now: u64,
    pid: u32,
    kill: bool,
    dropped_as: u32,
    fill: impl FnOnce(&Config, &mut Event),
) {
    let Some(mut entry) = OOMCOUNT_EVENTS.reserve::<Event>(0) else {
        bump(counter::EVENTS_DROPPED);
        if kill {
            bump(counter::KILL_EVENTS_DROPPED);
            bump(dropped_as);
        }
        return;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `event` points at a reserved, exclusively ours ring-buffer record of the right
    // size; it is zeroed first so that every byte the user side reads is initialised.
    unsafe {
        core::ptr::write_bytes(event, 0, 1);
        let event = &mut *event;
        event.kind = kind::MARK;
        event.ktime_ns = now;
        event.pid = pid;
        event.trigger_pid = pid_tgid as u32;
        event.trigger_tgid = (pid_tgid >> 32) as u32;
        event.cpu = bpf_get_smp_processor_id();
        event.trigger_comm = bpf_get_current_comm().unwrap_or_default();
        fill(cfg, event);
    }
    entry.submit(0);
}

/// The fields of a kill's event: the victim's comm from the signal, the OOM killer's view, and
/// what the victim's task tells.
#[inline(always)]
pub(crate) fn fill_kill(cfg: &Config, event: &mut Event, comm: Comm, task: u64, oom: &OomControl) {
    // SAFETY: `comm` is 8-aligned in the 8-aligned record (asserted above).
    unsafe { core::ptr::write(event.comm.as_mut_ptr().cast::<Comm>(), comm) };
    event.flags |= flags::COMM;
    if oom.found {
        event.constraint = oom.constraint;
        event.flags |= flags::CONSTRAINT;
        if oom.kn != 0 {
            event.oom_cgroup_id = oom.kn_id;
            event.oom_cgroup_level = u16::MAX;
            event.flags |= flags::OOM_CGROUP;
        }
    }
    if task != 0 {
        let _ = read_victim_task(cfg, task, oom.kn, event);
    }
}
