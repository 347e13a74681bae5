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
//!
//! Here: the contract with the loader (`OOMCOUNT_CONFIG`), the maps and the small helpers every
//! program uses. The programs: [`signal`] (the OOM killer's SIGKILL) and [`mark`] (`mark_victim`,
//! counting and events); what they read: [`task`] (the victim) and [`oom_control`] (the OOM
//! killer's own record of the kill, searched for on the stack).
#![no_std]
#![no_main]

mod mark;
mod oom_control;
mod signal;
mod task;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::RawTracePointContext,
};
use oomcount_common::{
    ABSENT, Config, EVENTS_BYTES, Event, PENDING_ENTRIES, Pending, counter, offsets,
};

use oom_control::{OC_WORDS, WINDOW_WORDS};

/// Filled in by the loader (`EbpfLoader::override_global`); read-only for the programs.
#[unsafe(no_mangle)]
static OOMCOUNT_CONFIG: Config = Config {
    mark_victim: offsets::MarkVictim {
        pid: 8,
        comm: ABSENT,
        total_vm: ABSENT,
        anon_rss: ABSENT,
        file_rss: ABSENT,
        shmem_rss: ABSENT,
        pgtables: ABSENT,
        uid: ABSENT,
        oom_score_adj: ABSENT,
    },
    signal_generate: offsets::SignalGenerate {
        sig: 8,
        code: 16,
        comm: 20,
        pid: 36,
        group: 40,
    },
    features: 0,
    task: offsets::Task {
        pid: 0,
        tgid: 0,
        comm: 0,
        group_leader: 0,
        real_cred: 0,
        signal: 0,
        cgroups: 0,
        stack: 0,
        mm: 0,
    },
    cred: offsets::Cred { uid: 0 },
    signal: offsets::Signal {
        oom_score_adj: 0,
        oom_mm: 0,
    },
    css_set: offsets::CssSet {
        subsys: 0,
        memory_cgrp_id: 0,
    },
    css: offsets::Css { cgroup: 0 },
    cgroup: offsets::Cgroup { kn: 0 },
    kernfs_node: offsets::KernfsNode {
        name: 0,
        parent: 0,
        id: 0,
    },
    oom_control: offsets::OomControl {
        memcg: 0,
        chosen: 0,
        constraint: 0,
        order: 0,
        zonelist: 0,
        nodemask: 0,
        gfp_mask: 0,
        totalpages: 0,
    },
    mm: offsets::Mm {
        total_vm: 0,
        rss_anon: 0,
        rss_file: 0,
        rss_shmem: 0,
        pgtables_bytes: 0,
    },
    mark_raw_task: 0,
    thread_size: 0,
    page_kb: 4,
    pair_window_ns: 0,
};

#[map]
pub(crate) static OOMCOUNT_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub(crate) static OOMCOUNT_PENDING: LruHashMap<u32, Pending> =
    LruHashMap::with_max_entries(PENDING_ENTRIES, 0);

#[map]
pub(crate) static OOMCOUNT_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// The raw `mark_victim` program, which the raw `signal_generate` one tail-calls for an `again`
/// kill (filled in by the loader before either is attached).
#[map]
pub(crate) static OOMCOUNT_KILL_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Scratch space, too big for the 512-byte BPF stack: the stack window searched and a copy of
/// one candidate `oom_control`.
#[repr(C)]
pub(crate) struct Scratch {
    pub(crate) window: [u64; WINDOW_WORDS],
    pub(crate) oc: [u64; OC_WORDS],
    /// The `oom_control` found, handed out of the search loop through memory: see
    /// [`oom_control`].
    pub(crate) found: u64,
    /// `u32::MAX`, stored and loaded again so that the compiler cannot see the constant: see
    /// [`oom_control`]'s `is_zero`.
    pub(crate) ones: u64,
    /// The victim of an `again` kill, handed by the signal program to the mark program it
    /// tail-calls; 0 otherwise. Taken (and cleared) as the mark program starts: see
    /// [`take_again`].
    pub(crate) again: u64,
    /// What the running mark program took from `again`: set at its start, so never stale.
    pub(crate) again_victim: u64,
    /// The task that last found an `oom_control` on this CPU (pid_tgid), and that
    /// `oom_control`'s chosen task: see [`read_oom_control`].
    pub(crate) chosen_by: u64,
    pub(crate) chosen: u64,
}

#[map]
pub(crate) static OOMCOUNT_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn config() -> Config {
    // SAFETY: a plain read of a static the loader rewrote before load; volatile so the compiler
    // does not fold in the defaults above.
    unsafe { core::ptr::read_volatile(&OOMCOUNT_CONFIG) }
}

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(value) = OOMCOUNT_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and tracing programs do not nest on one CPU.
        unsafe { *value += 1 };
    }
}

/// Reads a `T` from kernel memory at `base + offset`.
#[inline(always)]
pub(crate) fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}

/// The address of a raw tracepoint's arguments, as a number: `bpf_trace_run<N>` keeps them in
/// its own frame, on the kernel stack of the task that hit the tracepoint, a few frames below the
/// OOM killer's. (The program's own stack is no anchor: since 6.13 it may be a per-CPU one.) The
/// pointer goes through a map so that the verifier sees a plain number, never a context pointer
/// used in arithmetic.
#[inline(always)]
pub(crate) fn stack_anchor(ctx: &RawTracePointContext) -> u64 {
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
pub(crate) type Comm = [u64; 2];

const _: () = assert!(core::mem::offset_of!(Pending, comm) % 8 == 0);

const _: () = assert!(core::mem::offset_of!(Event, comm) % 8 == 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
