//! oomcount's kernel side: exact OOM kill counting, and one event per mark.
//!
//! `oom/mark_victim` fires whenever the OOM killer grants a task access to memory reserves, which
//! is more often than it kills: the other threads of a victim hitting the limit are marked again,
//! and a victim that is already dying is marked without a kill. What sets a real kill apart is
//! the SIGKILL that `__oom_kill_process` sends (SI_KERNEL, to the whole thread group) in the same
//! task just before it marks the victim. So a `signal_generate` program remembers, per sending
//! task, the last such SIGKILL, and `mark_victim` counts a kill only when the pid it marks is the
//! pid that same task has just signalled. Every mark is counted as `marked` and sends an event;
//! a full ring buffer is counted, never silent.
//!
//! Offsets come from the loader through `OOMCOUNT_CONFIG`: tracepoint fields from tracefs, kernel
//! structures from BTF. Where BTF gave the victim's `task_struct` (the raw `signal_generate`
//! program), a kill's event also carries the victim's tgid, memory cgroup path, and, from the
//! `oom_control` on the OOM invoker's stack, the constraint and the cgroup whose limit was hit.
//!
//! A kill the kernel counts without a mark (a `memory.oom.group` kill reaching its first victim
//! a second time) is seen only by the signal program, which tail-calls the raw mark program to
//! count it and send its event: the kill's code lives in one program, verified once.
//!
//! Cost: an OOM kill runs these programs once or twice, and their verification is most of the
//! daemon's start-up, so the `oom_control` is looked for in a small window just above the raw
//! tracepoint's arguments (which sit on the invoker's kernel stack, a few frames below it), not
//! over the whole stack.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use oomcount_common::{
    ABSENT, CGROUP_DEPTH, Config, EVENTS_BYTES, Event, OC_BYTES, PENDING_ENTRIES, Pending,
    SI_KERNEL, SIGKILL, counter, feature, flags, kind,
};

/// Filled in by the loader (`EbpfLoader::override_global`); read-only for the programs.
#[unsafe(no_mangle)]
static OOMCOUNT_CONFIG: Config = Config {
    mark_pid: 8,
    mark_comm: ABSENT,
    mark_total_vm: ABSENT,
    mark_anon_rss: ABSENT,
    mark_file_rss: ABSENT,
    mark_shmem_rss: ABSENT,
    mark_pgtables: ABSENT,
    mark_uid: ABSENT,
    mark_oom_score_adj: ABSENT,
    sig_sig: 8,
    sig_code: 16,
    sig_comm: 20,
    sig_pid: 36,
    sig_group: 40,
    features: 0,
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    task_group_leader: 0,
    task_real_cred: 0,
    task_signal: 0,
    task_cgroups: 0,
    task_stack: 0,
    cred_uid: 0,
    signal_oom_score_adj: 0,
    css_set_subsys: 0,
    memory_cgrp_id: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kn_name: 0,
    kn_parent: 0,
    kn_id: 0,
    oc_memcg: 0,
    oc_chosen: 0,
    oc_constraint: 0,
    oc_order: 0,
    thread_size: 0,
    oc_zonelist: 0,
    oc_nodemask: 0,
    oc_gfp_mask: 0,
    oc_totalpages: 0,
    signal_oom_mm: 0,
    mark_raw_task: 0,
    task_mm: 0,
    mm_total_vm: 0,
    mm_rss_anon: 0,
    mm_rss_file: 0,
    mm_rss_shmem: 0,
    mm_pgtables_bytes: 0,
    page_kb: 4,
    _padding: 0,
    pair_window_ns: 0,
};

#[map]
static OOMCOUNT_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static OOMCOUNT_PENDING: LruHashMap<u32, Pending> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

#[map]
static OOMCOUNT_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The raw `mark_victim` program, which the raw `signal_generate` one tail-calls for an `again`
/// kill (filled in by the loader before either is attached).
#[map]
static OOMCOUNT_KILL_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Words of kernel stack searched for `oom_control`, upwards from the raw tracepoint's arguments.
/// Between them and the `oom_control` (in the frame of `out_of_memory`'s caller) lie only the
/// frames of the OOM killer and of the tracepoint: 296 bytes on 6.18 for a kill's mark; more for
/// the SIGKILL of a `memory.oom.group` member, which passes through the signal code. 1 KiB leaves
/// room for larger frames on other builds; each word costs the verifier about 35 instructions.
const WINDOW_WORDS: usize = 128;
const OC_WORDS: usize = OC_BYTES as usize / 8;
/// Slots holding the chosen task that are checked, lowest first. On 6.18 a kill's mark has four
/// below its `oom_control` (the OOM killer's own frames keep the victim), then the real one.
const CANDIDATES: usize = 8;

/// Scratch space, too big for the 512-byte BPF stack: the stack window searched and a copy of
/// one candidate `oom_control`.
#[repr(C)]
struct Scratch {
    window: [u64; WINDOW_WORDS],
    oc: [u64; OC_WORDS],
    /// The `oom_control` found, handed out of the search loop through memory: see
    /// [`find_oom_control`].
    found: u64,
    /// The victim of an `again` kill, handed by the signal program to the mark program it
    /// tail-calls; 0 otherwise. Taken (and cleared) as the mark program starts: see
    /// [`take_again`].
    again: u64,
    /// What the running mark program took from `again`: set at its start, so never stale.
    again_victim: u64,
    /// The task that last found an `oom_control` on this CPU (pid_tgid), and that
    /// `oom_control`'s chosen task: see [`read_oom_control`].
    chosen_by: u64,
    chosen: u64,
}

#[map]
static OOMCOUNT_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn config() -> Config {
    // SAFETY: a plain read of a static the loader rewrote before load; volatile so the compiler
    // does not fold in the defaults above.
    unsafe { core::ptr::read_volatile(&OOMCOUNT_CONFIG) }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(value) = OOMCOUNT_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracing programs do not nest on one CPU.
        unsafe { *value += 1 };
    }
}

/// Reads a `T` from kernel memory at `base + offset`.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}

/// The address of a raw tracepoint's arguments, as a number: `bpf_trace_run<N>` keeps them in
/// its own frame, on the kernel stack of the task that hit the tracepoint, a few frames below the
/// OOM killer's. (The program's own stack is no anchor: since 6.13 it may be a per-CPU one.) The
/// pointer goes through a map so that the verifier sees a plain number, never a context pointer
/// used in arithmetic.
#[inline(always)]
fn stack_anchor(ctx: &RawTracePointContext) -> u64 {
    let Some(scratch) = OOMCOUNT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, and tracing programs do not nest on one CPU; volatile so that
    // the store and load are kept.
    unsafe {
        let slot = core::ptr::addr_of_mut!((*scratch).window[0]);
        core::ptr::write_volatile(slot, aya_ebpf::EbpfContext::as_ptr(ctx) as u64);
        core::ptr::read_volatile(slot)
    }
}

/// A comm as two words. A `[u8; 16]` held across helper calls takes one 8-byte stack slot per
/// byte (128 of the program's 512 bytes of stack); two words take two.
type Comm = [u64; 2];
const _: () = assert!(core::mem::offset_of!(Pending, comm) % 8 == 0);
const _: () = assert!(core::mem::offset_of!(Event, comm) % 8 == 0);

/// Remembers that the current task just sent an OOM-style SIGKILL to `victim_pid`.
#[inline(always)]
fn remember(victim_pid: u32, task: u64, comm: Comm, counted: u32) -> Result<(), i32> {
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

fn try_signal_generate(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    // SAFETY (all reads): offsets come from the tracepoint's own format file; the reads go
    // through bpf_probe_read_kernel, which fails cleanly rather than faulting.
    let sig: i32 = unsafe { ctx.read_at(cfg.sig_sig as usize)? };
    if sig != SIGKILL {
        return Ok(());
    }
    let code: i32 = unsafe { ctx.read_at(cfg.sig_code as usize)? };
    let group: i32 = unsafe { ctx.read_at(cfg.sig_group as usize)? };
    if code != SI_KERNEL || group == 0 {
        return Ok(());
    }
    let victim_pid: i32 = unsafe { ctx.read_at(cfg.sig_pid as usize)? };
    let comm: Comm = unsafe { ctx.read_at(cfg.sig_comm as usize)? };
    remember(victim_pid as u32, 0, comm, 0)
}

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result)` as a raw tracepoint: the same test, and it keeps the victim's task.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn oomcount_signal_generate_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_signal_generate_raw(&ctx);
    0
}

fn try_signal_generate_raw(ctx: &RawTracePointContext) -> Result<(), i32> {
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
    let pid: i32 = read(task, cfg.task_pid)?;
    let comm: Comm = read(task, cfg.task_comm)?;
    // A task that is already an OOM victim gets no new mark (its thread is flagged already),
    // yet the kernel counts the kill: a `memory.oom.group` kill reaches its first victim twice.
    // That kill is counted, and its event sent, by the mark program, tail-called here with the
    // victim in the scratch: the kill's code (the search for `oom_control`, the event) is then
    // verified once, in one program (40,000 instructions a copy, on 6.18).
    let signal: u64 = read(task, cfg.task_signal)?;
    let oom_mm: u64 = read(signal, cfg.signal_oom_mm)?;
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

/// Takes the victim of an `again` kill when the signal program tail-called this run, else 0, and
/// keeps it for [`again_victim`] for the rest of the run. Every mark program calls it first.
#[inline(always)]
fn take_again() -> u64 {
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
fn again_victim() -> u64 {
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

fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    // Never an `again` kill here (those are tail calls into the raw program): this clears it.
    take_again();
    // SAFETY: as in try_signal_generate.
    let pid: i32 = unsafe { ctx.read_at(cfg.mark_pid as usize)? };
    // A classic tracepoint's context is its record, not on the stack: no `oom_control` is
    // looked for (its fields stay absent).
    mark::<false>(&cfg, pid as u32, 0, |cfg, event| {
        if cfg.mark_total_vm != ABSENT {
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
/// attaches where the helper exists, for 26k verified instructions instead of 41k (on 6.18).
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oomcount_mark_victim_raw_loop(ctx: RawTracePointContext) -> i32 {
    let _ = try_mark_victim_raw::<true>(&ctx);
    0
}

#[inline(always)]
fn try_mark_victim_raw<const LOOP: bool>(ctx: &RawTracePointContext) -> Result<(), i32> {
    let cfg = config();
    let anchor = stack_anchor(ctx);
    let again = take_again();
    // One call of `mark` for both layouts and for `again` kills: the verifier sees
    // `mark_raw_task` as the constant it is (a read-only global), so it never follows the other
    // layout's branches, such as the read of a second argument the old tracepoint does not have.
    // A tail call from the signal program brings that program's arguments: none are read then.
    let (pid, task, uid) = if again != 0 {
        (read::<i32>(again, cfg.task_pid)? as u32, again, 0)
    } else if cfg.mark_raw_task == 0 {
        let arg: u64 = ctx.arg(0);
        (arg as u32, 0, 0)
    } else {
        let arg: u64 = ctx.arg(0);
        let uid: u64 = ctx.arg(1);
        (read::<i32>(arg, cfg.task_pid)? as u32, arg, uid as u32)
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

/// The memory fields of the new `mark_victim` layout, from the task's `mm` (its rss counters,
/// in pages) and its `signal` (oom_score_adj).
#[inline(always)]
fn read_task_memory(cfg: &Config, task: u64, event: &mut Event) -> Result<(), i32> {
    let mm: u64 = read(task, cfg.task_mm)?;
    if mm == 0 {
        return Ok(());
    }
    let pages_kb = |pages: i64| (pages.max(0) as u64) * u64::from(cfg.page_kb);
    event.total_vm_kb = pages_kb(read::<i64>(mm, cfg.mm_total_vm)?);
    event.anon_rss_kb = pages_kb(read::<i64>(mm, cfg.mm_rss_anon)?);
    event.file_rss_kb = pages_kb(read::<i64>(mm, cfg.mm_rss_file)?);
    event.shmem_rss_kb = pages_kb(read::<i64>(mm, cfg.mm_rss_shmem)?);
    event.pgtables_kb = (read::<i64>(mm, cfg.mm_pgtables_bytes)?.max(0) as u64) >> 10;
    let signal: u64 = read(task, cfg.task_signal)?;
    event.oom_score_adj = read(signal, cfg.signal_oom_score_adj)?;
    event.flags |= flags::MEMORY | flags::OOM_SCORE_ADJ;
    Ok(())
}

/// What both `mark_victim` programs do once they know the pid: pair the mark with the task's
/// pending SIGKILL (or take the `again` kill the signal program handed over), count, and send
/// the event (`fill` adds the program's own fields). `anchor` is where to start looking for the
/// `oom_control` (see [`stack_anchor`]), 0 for nowhere.
#[inline(always)]
fn mark<const LOOP: bool>(
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
        comm = read(again, cfg.task_comm).unwrap_or_default();
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
fn count_kill<const LOOP: bool>(cfg: &Config, task: u64, anchor: u64) -> OomControl {
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
fn emit(
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
fn fill_kill(cfg: &Config, event: &mut Event, comm: Comm, task: u64, oom: &OomControl) {
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

/// What the OOM killer's `oom_control` says of a kill.
#[derive(Default, Clone, Copy)]
struct OomControl {
    found: bool,
    constraint: u16,
    /// The memory cgroup whose limit was hit (0 for a global OOM), its kernfs node and id.
    memcg: u64,
    kn: u64,
    kn_id: u64,
}

#[inline(always)]
fn read_oom_control<const LOOP: bool>(
    cfg: &Config,
    task: u64,
    anchor: u64,
    oom: &mut OomControl,
) -> Result<(), i32> {
    let leader: u64 = read(task, cfg.task_group_leader)?;
    // A `memory.oom.group` member is killed by the same OOM killer call as the group's chosen
    // victim, whose `oom_control` names that victim, not the member: the slots holding the task
    // this task's last `oom_control` chose are candidates too (else the victim again).
    let scratch = OOMCOUNT_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let me = bpf_get_current_pid_tgid();
    // SAFETY: per-CPU scratch, and tracing programs do not nest on one CPU.
    let previous = unsafe {
        match core::ptr::read_volatile(core::ptr::addr_of!((*scratch).chosen_by)) == me {
            true => core::ptr::read_volatile(core::ptr::addr_of!((*scratch).chosen)),
            false => task,
        }
    };
    let found = if LOOP {
        find_oom_control_loop(cfg, anchor, [task, leader, previous])
    } else {
        find_oom_control(cfg, anchor, [task, leader, previous])
    };
    let Some(oc) = found else {
        return Ok(());
    };
    let chosen: u64 = read(oc, cfg.oc_chosen)?;
    // SAFETY: as above.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*scratch).chosen_by), me);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*scratch).chosen), chosen);
    }
    let constraint: u32 = read(oc, cfg.oc_constraint)?;
    oom.memcg = read(oc, cfg.oc_memcg)?;
    oom.constraint = constraint as u16;
    oom.found = true;
    if oom.memcg != 0 && cfg.features & feature::CGROUP != 0 {
        // A mem_cgroup begins with its cgroup_subsys_state.
        let cgroup: u64 = read(oom.memcg, cfg.css_cgroup)?;
        oom.kn = read(cgroup, cfg.cgroup_kn)?;
        oom.kn_id = read(oom.kn, cfg.kn_id)?;
    }
    Ok(())
}

/// The new layout (6.9+, and backports) carries the victim's memory, uid and oom_score_adj.
#[inline(always)]
fn read_memory_fields(ctx: &TracePointContext, cfg: &Config, event: &mut Event) -> Result<(), i32> {
    // SAFETY: as in try_signal_generate.
    unsafe {
        event.total_vm_kb = ctx.read_at(cfg.mark_total_vm as usize)?;
        event.anon_rss_kb = ctx.read_at(cfg.mark_anon_rss as usize)?;
        event.file_rss_kb = ctx.read_at(cfg.mark_file_rss as usize)?;
        event.shmem_rss_kb = ctx.read_at(cfg.mark_shmem_rss as usize)?;
        event.pgtables_kb = ctx.read_at(cfg.mark_pgtables as usize)?;
        event.uid = ctx.read_at(cfg.mark_uid as usize)?;
        event.oom_score_adj = ctx.read_at(cfg.mark_oom_score_adj as usize)?;
    }
    event.flags |= flags::MEMORY | flags::UID | flags::OOM_SCORE_ADJ;
    Ok(())
}

/// What the victim's `task_struct` tells exactly: tgid, and where the tracepoint lacks them
/// (old layout) uid and oom_score_adj; and its memory cgroup, noting the level `oom_kn`.
#[inline(always)]
fn read_victim_task(cfg: &Config, task: u64, oom_kn: u64, event: &mut Event) -> Result<(), i32> {
    event.tgid = read(task, cfg.task_tgid)?;
    event.flags |= flags::TGID;
    if cfg.features & feature::CRED != 0 {
        if event.flags & flags::UID == 0 {
            let cred: u64 = read(task, cfg.task_real_cred)?;
            event.uid = read(cred, cfg.cred_uid)?;
            event.flags |= flags::UID;
        }
        if event.flags & flags::OOM_SCORE_ADJ == 0 {
            let signal: u64 = read(task, cfg.task_signal)?;
            event.oom_score_adj = read(signal, cfg.signal_oom_score_adj)?;
            event.flags |= flags::OOM_SCORE_ADJ;
        }
    }
    if cfg.features & feature::CGROUP != 0 {
        read_cgroup_path(cfg, task, oom_kn, event)?;
    }
    Ok(())
}

/// Walks the victim's memory cgroup up to the root, copying each level's name (leaf first) and
/// noting the level whose kernfs node is `oom_kn`.
#[inline(always)]
fn read_cgroup_path(cfg: &Config, task: u64, oom_kn: u64, event: &mut Event) -> Result<(), i32> {
    let css_set: u64 = read(task, cfg.task_cgroups)?;
    let css: u64 = read(css_set, cfg.css_set_subsys + cfg.memory_cgrp_id * 8)?;
    let cgroup: u64 = read(css, cfg.css_cgroup)?;
    let mut kn: u64 = read(cgroup, cfg.cgroup_kn)?;
    event.cgroup_id = read(kn, cfg.kn_id)?;
    event.flags |= flags::CGROUP;
    for level in 0..CGROUP_DEPTH {
        let parent: u64 = read(kn, cfg.kn_parent)?;
        if parent == 0 {
            // The root's name is not part of a path.
            if kn == oom_kn {
                event.oom_cgroup_level = level as u16;
            }
            return Ok(());
        }
        if kn == oom_kn {
            event.oom_cgroup_level = level as u16;
        }
        let name: u64 = read(kn, cfg.kn_name)?;
        // SAFETY: `name` is a kernel string pointer; the helper bounds the copy.
        unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut event.cgroup[level])? };
        event.cgroup_depth = level as u16 + 1;
        kn = parent;
    }
    let parent: u64 = read(kn, cfg.kn_parent)?;
    if parent != 0 {
        event.flags |= flags::CGROUP_TRUNCATED;
    }
    Ok(())
}

/// Finds the OOM killer's `struct oom_control` on the current (invoking) task's kernel stack,
/// in the [`WINDOW_WORDS`] above `anchor` (the raw tracepoint's arguments): the first slot, from
/// below, holding the chosen task (one of `keys`: the victim, its group leader, the task this
/// task's last `oom_control` chose) whose surroundings make a consistent `oom_control`
/// ([`is_oom_control`]). The window is copied in one read, each candidate in one more.
///
/// Written for the verifier, which follows each side of every branch in a loop separately: the
/// scan of the window has no branch (it sets a bit per word that holds the chosen task), and
/// only the few candidates found, at most [`CANDIDATES`], are checked with branches. Every size
/// is a constant too (a window that would pass the top of the stack is moved down rather than
/// shortened, and candidates below `anchor` are rejected by address): a variable read size or
/// loop bound is tracked exactly and splits the verifier's states at each iteration. The whole
/// stack searched in chunks took 450,000 instructions to verify, a plain search of this window
/// 100,000 or more; this about 20,000 (on 6.18).
#[inline(always)]
fn find_oom_control(cfg: &Config, anchor: u64, [a, b, c]: [u64; 3]) -> Option<u64> {
    let (base, top, scratch) = copy_window(cfg, anchor)?;
    // SAFETY: per-CPU scratch.
    let window = unsafe { core::ptr::addr_of_mut!((*scratch).window).cast::<u64>() };
    // SAFETY: per-CPU scratch; volatile so that the compiler cannot see the value (see
    // `is_zero`) nor drop the store and load.
    let found = unsafe { core::ptr::addr_of_mut!((*scratch).found) };
    let ones = unsafe {
        core::ptr::write_volatile(found, 0xffff_ffff);
        core::ptr::read_volatile(found)
    };
    // One bit per word of the window: does it hold the chosen task?
    let mut bits = [0u64; WINDOW_WORDS / 64];
    for (i, bits) in bits.iter_mut().enumerate() {
        for bit in 0..64 {
            // SAFETY: i * 64 + bit < WINDOW_WORDS.
            let word = unsafe { *window.add(i * 64 + bit) };
            let held = is_zero(word ^ a, ones) | is_zero(word ^ b, ones) | is_zero(word ^ c, ones);
            *bits |= held << bit;
        }
    }
    let [mut b0, mut b1] = bits;
    // A slot this low cannot hold `chosen`: its `oom_control` would begin below the window.
    b0 &= u64::MAX << (cfg.oc_chosen / 8 % 64);
    let mut any = false;
    for _ in 0..CANDIDATES {
        // The lowest candidate left: its word index, and it taken out of the set.
        let (lowest, offset) = if b0 != 0 {
            let lowest = b0 & b0.wrapping_neg();
            b0 ^= lowest;
            (lowest, 0)
        } else if b1 != 0 {
            let lowest = b1 & b1.wrapping_neg();
            b1 ^= lowest;
            (lowest, 64)
        } else {
            break;
        };
        let i = offset + u64::from((lowest - 1).count_ones());
        // SAFETY: i < WINDOW_WORDS.
        let chosen = unsafe { *window.add(i as usize & (WINDOW_WORDS - 1)) };
        let oc = (base + i * 8).wrapping_sub(u64::from(cfg.oc_chosen));
        // Most candidates fail on their constraint, read here from the window when it holds
        // it, before the copy of the whole `oom_control`.
        let constraint = (oc + u64::from(cfg.oc_constraint)).wrapping_sub(base) / 8;
        if constraint < WINDOW_WORDS as u64 {
            // SAFETY: constraint < WINDOW_WORDS.
            let word = unsafe { *window.add(constraint as usize & (WINDOW_WORDS - 1)) };
            if (word >> (cfg.oc_constraint % 8 * 8)) as u32 > 3 {
                continue;
            }
        }
        if oc >= anchor && is_oom_control(cfg, scratch, oc, top, chosen) {
            // Through memory, so that nothing the verifier tracks per iteration outlives the
            // loop (the rest of the program would be verified once per iteration).
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(found, oc) };
            any = true;
            break;
        }
    }
    // SAFETY: as above.
    any.then(|| unsafe { core::ptr::read_volatile(found) })
}

/// Copies the window of the invoker's stack that is searched for `oom_control` (the
/// [`WINDOW_WORDS`] above `anchor`, moved down if they would pass the top of the stack) into the
/// scratch: returns where it lies on the stack, the top of the stack, and the scratch. `None`
/// when `anchor` is not on this task's stack (an interrupt stack?).
#[inline(always)]
fn copy_window(cfg: &Config, anchor: u64) -> Option<(u64, u64, *mut Scratch)> {
    const WINDOW_BYTES: u64 = WINDOW_WORDS as u64 * 8;
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_task() };
    let stack: u64 = read(current, cfg.task_stack).ok()?;
    let top = stack + u64::from(cfg.thread_size);
    if anchor < stack || anchor >= top || !anchor.is_multiple_of(8) || top - stack < WINDOW_BYTES {
        return None;
    }
    let base = if top - anchor < WINDOW_BYTES {
        top - WINDOW_BYTES
    } else {
        anchor
    };
    let scratch = OOMCOUNT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch of WINDOW_BYTES; the helper fails cleanly.
    unsafe {
        let window = core::ptr::addr_of_mut!((*scratch).window).cast::<u8>();
        let bytes = core::slice::from_raw_parts_mut(window, WINDOW_BYTES as usize);
        bpf_probe_read_kernel_buf(base as *const u8, bytes).ok()?;
    }
    Some((base, top, scratch))
}

/// What the `bpf_loop` search's callback needs, on the caller's stack.
#[repr(C)]
struct Search {
    base: u64,
    anchor: u64,
    top: u64,
    /// The tasks whose slots are candidates (see [`find_oom_control`]).
    keys: [u64; 3],
    /// The `oom_control` found, 0 while none is.
    found: u64,
}

/// [`find_oom_control`] with `bpf_loop` (Linux 5.17+), which the raw mark program's `_loop`
/// build uses: the verifier goes through one word's check instead of the whole window's (the
/// program's verified instructions 41,100 -> 25,900 on 6.18; 16,200 without any search). Same
/// window, same order (lowest slot first), same checks; every candidate is checked, not only the
/// first [`CANDIDATES`] (a count of them would be a value the verifier follows through each).
#[inline(always)]
fn find_oom_control_loop(cfg: &Config, anchor: u64, keys: [u64; 3]) -> Option<u64> {
    let (base, top, _) = copy_window(cfg, anchor)?;
    let mut search = Search {
        base,
        anchor,
        top,
        keys,
        found: 0,
    };
    // SAFETY: the callback takes the `Search` it is given back, for the length of the call.
    unsafe {
        bpf_loop(
            WINDOW_WORDS as u32,
            search_word as *mut core::ffi::c_void,
            core::ptr::addr_of_mut!(search).cast(),
            0,
        )
    };
    (search.found != 0).then_some(search.found)
}

/// `bpf_loop`'s callback: whether word `index` of the window is the chosen task's slot in a
/// consistent `oom_control` (then 1, the search stops; 0 goes on).
#[inline(never)]
extern "C" fn search_word(index: u32, search: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `bpf_loop` hands back the `Search` it was given.
    let search = unsafe { &mut *search.cast::<Search>() };
    let cfg = config();
    let Some(scratch) = OOMCOUNT_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let i = index as usize & (WINDOW_WORDS - 1);
    // SAFETY: per-CPU scratch; i < WINDOW_WORDS.
    let chosen = unsafe { (*scratch).window[i] };
    let [a, b, c] = search.keys;
    if chosen != a && chosen != b && chosen != c {
        return 0;
    }
    // A slot this low cannot hold `chosen`: its `oom_control` would begin below the window.
    if (i as u64) * 8 < u64::from(cfg.oc_chosen) {
        return 0;
    }
    let oc = search.base + i as u64 * 8 - u64::from(cfg.oc_chosen);
    // Most candidates fail on their constraint, read here from the window when it holds it.
    let constraint = (oc + u64::from(cfg.oc_constraint)).wrapping_sub(search.base) / 8;
    if constraint < WINDOW_WORDS as u64 {
        // SAFETY: per-CPU scratch; the index is masked into the window.
        let word = unsafe { (*scratch).window[constraint as usize & (WINDOW_WORDS - 1)] };
        if (word >> (cfg.oc_constraint % 8 * 8)) as u32 > 3 {
            return 0;
        }
    }
    if oc >= search.anchor && is_oom_control(&cfg, scratch, oc, search.top, chosen) {
        search.found = oc;
        return 1;
    }
    0
}

/// 1 when `x` is 0, else 0, without a branch: the top half of `(x folded to 32 bits) + ones`,
/// where `ones` is `u32::MAX` in a form the compiler cannot see through (it would turn this
/// back into a comparison, which BPF can only do with a branch).
#[inline(always)]
fn is_zero(x: u64, ones: u64) -> u64 {
    let folded = (x | (x >> 32)) & 0xffff_ffff;
    ((folded + ones) >> 32) ^ 1
}

/// Whether the `oom_control` that would hold `chosen` at `oc` is one: every member the OOM
/// killer set is in range, and they agree with each other (a memcg exactly when the constraint
/// says so, and then no zonelist or nodemask, as `mem_cgroup_out_of_memory` sets them).
#[inline(always)]
fn is_oom_control(cfg: &Config, scratch: *mut Scratch, oc: u64, top: u64, chosen: u64) -> bool {
    if oc + u64::from(OC_BYTES) > top {
        return false;
    }
    // SAFETY: per-CPU scratch of OC_BYTES; the helper fails cleanly.
    let copy = unsafe {
        let copy = core::ptr::addr_of_mut!((*scratch).oc).cast::<u64>();
        let bytes = core::slice::from_raw_parts_mut(copy.cast::<u8>(), OC_BYTES as usize);
        if bpf_probe_read_kernel_buf(oc as *const u8, bytes).is_err() {
            return false;
        }
        copy
    };
    // Members by their BTF offsets, which the loader checked to fit in the copy, aligned.
    // SAFETY: the index is masked into the copy.
    let word = |offset: u32| unsafe { *copy.add((offset / 8) as usize & (OC_WORDS - 1)) };
    let half = |offset: u32| (word(offset) >> ((offset % 8) * 8)) as u32;
    let kernel_or_null = |pointer: u64| pointer == 0 || (pointer as i64) < 0;
    let constraint = half(cfg.oc_constraint);
    let order = half(cfg.oc_order) as i32;
    let memcg = word(cfg.oc_memcg);
    let zonelist = word(cfg.oc_zonelist);
    let nodemask = word(cfg.oc_nodemask);
    let totalpages = word(cfg.oc_totalpages);
    let memcg_oom = constraint == u32::from(oomcount_common::constraint::MEMCG);
    word(cfg.oc_chosen) == chosen
        && constraint <= 3
        && (-1..=16).contains(&order)
        && half(cfg.oc_gfp_mask) < 1 << 30
        && (1..1 << 40).contains(&totalpages)
        && kernel_or_null(memcg)
        && memcg_oom == (memcg != 0)
        && kernel_or_null(zonelist)
        && kernel_or_null(nodemask)
        && (!memcg_oom || (zonelist == 0 && nodemask == 0))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
