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
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use oomcount_common::{
    ABSENT, CGROUP_DEPTH, Config, EVENTS_BYTES, Event, PENDING_ENTRIES, Pending, SI_KERNEL,
    SIGKILL, counter, feature, flags, kind,
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
    siginfo_code: 0,
    signal_oom_mm: 0,
    mark_raw_task: 0,
    task_mm: 0,
    mm_total_vm: 0,
    mm_rss_anon: 0,
    mm_rss_file: 0,
    mm_rss_shmem: 0,
    mm_pgtables_bytes: 0,
    page_kb: 4,
    pair_window_ns: 0,
};

#[map]
static OOMCOUNT_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static OOMCOUNT_PENDING: LruHashMap<u32, Pending> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

#[map]
static OOMCOUNT_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Bytes of kernel stack copied at a time while looking for `oom_control`.
const STACK_CHUNK: usize = 256;
/// The largest kernel stack searched (x86_64 with KASAN: 32 KiB).
const STACK_CHUNKS_MAX: u32 = 32 * 1024 / STACK_CHUNK as u32;

/// Scratch space for stack chunks: too big for the 512-byte BPF stack.
#[map]
static OOMCOUNT_SCRATCH: PerCpuArray<[u64; STACK_CHUNK / 8]> = PerCpuArray::with_max_entries(1, 0);

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

/// Remembers that the current task just sent an OOM-style SIGKILL to `victim_pid`.
#[inline(always)]
fn remember(victim_pid: u32, task: u64, comm: [u8; 16], counted: u32) -> Result<(), i32> {
    bump(counter::OOM_SIGNALS);
    let pending = Pending {
        victim_pid,
        counted,
        // SAFETY: helper without preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
        task,
        comm,
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
    let comm: [u8; 16] = unsafe { ctx.read_at(cfg.sig_comm as usize)? };
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
    let cfg = config();
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are not pointers: the tracepoint itself turns
    // them into SI_USER and SI_KERNEL.
    let info: u64 = ctx.arg(1);
    let code = match info {
        0 => 0,
        1 => SI_KERNEL,
        _ => read::<i32>(info, cfg.siginfo_code)?,
    };
    if code != SI_KERNEL {
        return Ok(());
    }
    let task: u64 = ctx.arg(2);
    let pid: i32 = read(task, cfg.task_pid)?;
    let comm: [u8; 16] = read(task, cfg.task_comm)?;
    // A task that is already an OOM victim gets no new mark (its thread is flagged already),
    // yet the kernel counts the kill: a `memory.oom.group` kill reaches its first victim twice.
    // Count it, and send its event, here.
    let signal: u64 = read(task, cfg.task_signal)?;
    let oom_mm: u64 = read(signal, cfg.signal_oom_mm)?;
    if oom_mm != 0 {
        let oom = count_kill(&cfg, task);
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        emit(&cfg, now, pid as u32, true, |cfg, event| {
            event.kind = kind::KILL;
            event.flags |= flags::AGAIN;
            fill_kill(cfg, event, comm, task, &oom);
        });
    }
    remember(pid as u32, task, comm, u32::from(oom_mm != 0))
}

#[tracepoint]
pub fn oomcount_mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    let cfg = config();
    bump(counter::MARKED);
    // SAFETY: as in try_signal_generate.
    let pid: i32 = unsafe { ctx.read_at(cfg.mark_pid as usize)? };
    mark(&cfg, pid as u32, |cfg, event| {
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
    let _ = try_mark_victim_raw(&ctx);
    0
}

fn try_mark_victim_raw(ctx: &RawTracePointContext) -> Result<(), i32> {
    let cfg = config();
    bump(counter::MARKED);
    let arg: u64 = ctx.arg(0);
    if cfg.mark_raw_task == 0 {
        mark(&cfg, arg as u32, |_, _| {});
        return Ok(());
    }
    let pid: i32 = read(arg, cfg.task_pid)?;
    let uid: u64 = ctx.arg(1);
    mark(&cfg, pid as u32, |cfg, event| {
        event.uid = uid as u32;
        event.flags |= flags::UID;
        if cfg.features & feature::MM != 0 {
            let _ = read_task_memory(cfg, arg, event);
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
/// pending SIGKILL, count, and send the event (`fill` adds the program's own fields).
#[inline(always)]
fn mark(cfg: &Config, pid: u32, fill: impl FnOnce(&Config, &mut Event)) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;

    // A mark consumes the task's pending SIGKILL whether or not it matches: a real kill is the
    // very next mark after its signal, so an older entry can only be stale.
    // SAFETY: the value is copied out before the entry is removed.
    // Everything is initialised on every path (no `Option` with an undefined payload): older
    // verifiers (5.10) reject a register that LLVM leaves undefined on one path.
    let mut is_kill = false;
    let mut victim = Pending::default();
    let mut oom = OomControl::default();
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(pending) = unsafe { OOMCOUNT_PENDING.get(tid) } {
        victim = *pending;
        let _ = OOMCOUNT_PENDING.remove(tid);
        if victim.victim_pid == pid
            && victim.counted == 0
            && now.wrapping_sub(victim.at_ns) <= cfg.pair_window_ns
        {
            is_kill = true;
            oom = count_kill(cfg, victim.task);
        }
    }
    emit(cfg, now, pid, is_kill, |cfg, event| {
        fill(cfg, event);
        if is_kill {
            event.kind = kind::KILL;
            fill_kill(cfg, event, victim.comm, victim.task, &oom);
        }
    });
}

/// Counts a kill, and where the victim's task is known, its constraint from the OOM killer's
/// own view of it. Counting comes before any event is written, so that the counters stay exact
/// when the ring buffer is full.
#[inline(always)]
fn count_kill(cfg: &Config, task: u64) -> OomControl {
    bump(counter::KILLS);
    let mut oom = OomControl::default();
    if task != 0 && cfg.features & feature::OOM_CONTROL != 0 {
        let _ = read_oom_control(cfg, task, &mut oom);
        if oom.found {
            bump(if oom.memcg != 0 {
                counter::KILLS_MEMCG
            } else {
                counter::KILLS_GLOBAL
            });
        }
    }
    oom
}

/// Sends one event about `pid` (a kill's when `kill`): the common fields here, the rest by
/// `fill`; a full ring buffer is counted.
#[inline(always)]
fn emit(cfg: &Config, now: u64, pid: u32, kill: bool, fill: impl FnOnce(&Config, &mut Event)) {
    let Some(mut entry) = OOMCOUNT_EVENTS.reserve::<Event>(0) else {
        bump(counter::EVENTS_DROPPED);
        if kill {
            bump(counter::KILL_EVENTS_DROPPED);
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
fn fill_kill(cfg: &Config, event: &mut Event, comm: [u8; 16], task: u64, oom: &OomControl) {
    event.comm = comm;
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
fn read_oom_control(cfg: &Config, task: u64, oom: &mut OomControl) -> Result<(), i32> {
    let leader: u64 = read(task, cfg.task_group_leader)?;
    let Some(oc) = find_oom_control(cfg, task, leader) else {
        return Ok(());
    };
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

/// Finds the OOM killer's `struct oom_control` on the current (invoking) task's kernel stack:
/// the slot holding the chosen task (the victim or its group leader) whose neighbours make a
/// consistent `oom_control` (a known constraint; a memcg exactly when the constraint is memcg;
/// a plausible allocation order).
#[inline(always)]
fn find_oom_control(cfg: &Config, victim: u64, leader: u64) -> Option<u64> {
    // SAFETY: helper without preconditions.
    let current = unsafe { bpf_get_current_task() };
    let stack: u64 = read(current, cfg.task_stack).ok()?;
    let scratch = OOMCOUNT_SCRATCH.get_ptr_mut(0)?;
    let chunks = cfg.thread_size / STACK_CHUNK as u32;
    // From the top of the stack down: the OOM path's frames sit above this program's.
    for chunk in 1..=STACK_CHUNKS_MAX {
        if chunk > chunks {
            break;
        }
        let base = stack + u64::from(cfg.thread_size) - u64::from(chunk) * STACK_CHUNK as u64;
        // SAFETY: per-CPU scratch of exactly STACK_CHUNK bytes; the helper fails cleanly.
        let words = unsafe {
            let bytes = core::slice::from_raw_parts_mut(scratch.cast::<u8>(), STACK_CHUNK);
            if bpf_probe_read_kernel_buf(base as *const u8, bytes).is_err() {
                continue;
            }
            &*scratch
        };
        for (i, &word) in words.iter().enumerate() {
            if word != 0 && (word == victim || word == leader) {
                let oc = (base + i as u64 * 8).wrapping_sub(u64::from(cfg.oc_chosen));
                if is_oom_control(cfg, oc) {
                    return Some(oc);
                }
            }
        }
    }
    None
}

#[inline(always)]
fn is_oom_control(cfg: &Config, oc: u64) -> bool {
    let (Ok(constraint), Ok(memcg), Ok(order)) = (
        read::<u32>(oc, cfg.oc_constraint),
        read::<u64>(oc, cfg.oc_memcg),
        read::<i32>(oc, cfg.oc_order),
    ) else {
        return false;
    };
    let memcg_oom = constraint == u32::from(oomcount_common::constraint::MEMCG);
    constraint <= 3 && memcg_oom == (memcg != 0) && (-1..=16).contains(&order)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
