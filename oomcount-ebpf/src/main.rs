//! oomcount's kernel side: exact OOM kill counting on two tracepoints.
//!
//! `oom/mark_victim` fires whenever the OOM killer grants a task access to memory reserves, which
//! is more often than it kills: the other threads of a victim hitting the limit are marked again,
//! and a victim that is already dying is marked without a kill. What sets a real kill apart is
//! the SIGKILL that `__oom_kill_process` sends (SI_KERNEL, to the whole thread group) in the same
//! task just before it marks the victim. So `signal_generate` remembers, per sending task, the
//! last such SIGKILL, and `mark_victim` counts a kill only when the pid it marks is the pid that
//! same task has just signalled. Every mark is counted as `marked`, and each one sends an event
//! record; a full ring buffer is counted, never silent.
//!
//! Field offsets come from the tracepoints' `format` files through the `OOMCOUNT_CONFIG` global:
//! the layouts differ between kernels.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use oomcount_common::{
    ABSENT, Config, EVENTS_BYTES, Event, PENDING_ENTRIES, Pending, SI_KERNEL, SIGKILL, counter,
    flags, kind,
};

/// Filled in by the loader (`EbpfLoader::set_global`); read-only for the program.
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
    pair_window_ns: 0,
};

#[map]
static OOMCOUNT_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static OOMCOUNT_PENDING: LruHashMap<u32, Pending> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

#[map]
static OOMCOUNT_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[inline(always)]
fn config() -> Config {
    // SAFETY: a plain read of a static the loader rewrote before load; volatile so the compiler
    // does not fold in the defaults above.
    unsafe { core::ptr::read_volatile(&OOMCOUNT_CONFIG) }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(value) = OOMCOUNT_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracepoint programs do not nest on one CPU.
        unsafe { *value += 1 };
    }
}

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
    bump(counter::OOM_SIGNALS);
    let pending = Pending {
        victim_pid: victim_pid as u32,
        _pad: 0,
        // SAFETY: helper without preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
        comm,
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    OOMCOUNT_PENDING.insert(tid, pending, 0)
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
    let pid = pid as u32;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;

    let mut event = Event {
        kind: kind::MARK,
        ktime_ns: now,
        pid,
        trigger_pid: tid,
        trigger_tgid: (pid_tgid >> 32) as u32,
        // SAFETY: helper without preconditions.
        cpu: unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() },
        trigger_comm: bpf_get_current_comm().unwrap_or_default(),
        ..Event::default()
    };

    // A mark consumes the task's pending SIGKILL whether or not it matches: a real kill is the
    // very next mark after its signal, so an older entry can only be stale.
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(pending) = unsafe { OOMCOUNT_PENDING.get(tid) }.copied() {
        let _ = OOMCOUNT_PENDING.remove(tid);
        if pending.victim_pid == pid && now.wrapping_sub(pending.at_ns) <= cfg.pair_window_ns {
            bump(counter::KILLS);
            event.kind = kind::KILL;
            event.comm = pending.comm;
            event.flags |= flags::COMM;
        }
    }

    if cfg.mark_total_vm != ABSENT {
        read_memory_fields(ctx, &cfg, &mut event)?;
    }

    match OOMCOUNT_EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => bump(counter::EVENTS_DROPPED),
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
    event.flags |= flags::MEMORY;
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
