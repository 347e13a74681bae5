//! The OOM killer's `struct oom_control`, found on the invoking task's kernel stack: the kill's
//! constraint and the memory cgroup whose limit was hit.
//!
//! The search is most of the verifier's work at start-up (the loader logs each program's
//! verified instructions at debug level: `oomcount daemon -v`), so it is written for the
//! verifier: see [`find_oom_control`].

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_loop, bpf_probe_read_kernel_buf,
};
use oomcount_common::{Config, OC_BYTES, feature};

use crate::{OOMCOUNT_SCRATCH, Scratch, config, read};

/// Words of kernel stack searched for `oom_control`, upwards from the raw tracepoint's arguments.
/// Between them and the `oom_control` (in the frame of `out_of_memory`'s caller) lie only the
/// frames of the OOM killer and of the tracepoint: 296 bytes on 6.18 for a kill's mark; more for
/// the SIGKILL of a `memory.oom.group` member, which passes through the signal code. 1 KiB leaves
/// room for larger frames on other builds; each word costs the verifier instructions.
pub(crate) const WINDOW_WORDS: usize = 128;

pub(crate) const OC_WORDS: usize = OC_BYTES as usize / 8;

/// Slots holding the chosen task that are checked, lowest first. On 6.18 a kill's mark has four
/// below its `oom_control` (the OOM killer's own frames keep the victim), then the real one.
const CANDIDATES: usize = 8;

/// What the OOM killer's `oom_control` says of a kill.
#[derive(Default, Clone, Copy)]
pub(crate) struct OomControl {
    pub(crate) found: bool,
    pub(crate) constraint: u16,
    /// The memory cgroup whose limit was hit (0 for a global OOM), its kernfs node and id.
    pub(crate) memcg: u64,
    pub(crate) kn: u64,
    pub(crate) kn_id: u64,
}

#[inline(always)]
pub(crate) fn read_oom_control<const LOOP: bool>(
    cfg: &Config,
    task: u64,
    anchor: u64,
    oom: &mut OomControl,
) -> Result<(), i32> {
    let leader: u64 = read(task, cfg.task.group_leader)?;
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
    let chosen: u64 = read(oc, cfg.oom_control.chosen)?;
    // SAFETY: as above.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*scratch).chosen_by), me);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*scratch).chosen), chosen);
    }
    let constraint: u32 = read(oc, cfg.oom_control.constraint)?;
    oom.memcg = read(oc, cfg.oom_control.memcg)?;
    oom.constraint = constraint as u16;
    oom.found = true;
    if oom.memcg != 0 && cfg.features & feature::CGROUP != 0 {
        // A mem_cgroup begins with its cgroup_subsys_state.
        let cgroup: u64 = read(oom.memcg, cfg.css.cgroup)?;
        oom.kn = read(cgroup, cfg.cgroup.kn)?;
        oom.kn_id = read(oom.kn, cfg.kernfs_node.id)?;
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
/// loop bound is tracked exactly and splits the verifier's states at each iteration. (The
/// figures of the shapes tried, and of this one: README, Benchmarks, Start-up.)
#[inline(always)]
fn find_oom_control(cfg: &Config, anchor: u64, [a, b, c]: [u64; 3]) -> Option<u64> {
    let (base, top, scratch) = copy_window(cfg, anchor)?;
    // SAFETY: per-CPU scratch.
    let window = unsafe { core::ptr::addr_of_mut!((*scratch).window).cast::<u64>() };
    // SAFETY: per-CPU scratch; volatile so that the compiler cannot see the value (see
    // `is_zero`) nor drop the store and load.
    let ones = unsafe {
        let ones = core::ptr::addr_of_mut!((*scratch).ones);
        core::ptr::write_volatile(ones, 0xffff_ffff);
        core::ptr::read_volatile(ones)
    };
    // SAFETY: per-CPU scratch.
    let found = unsafe { core::ptr::addr_of_mut!((*scratch).found) };
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
    b0 &= u64::MAX << (cfg.oom_control.chosen / 8 % 64);
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
        let oc = (base + i * 8).wrapping_sub(u64::from(cfg.oom_control.chosen));
        // Most candidates fail on their constraint, read here from the window when it holds
        // it, before the copy of the whole `oom_control`.
        let constraint = (oc + u64::from(cfg.oom_control.constraint)).wrapping_sub(base) / 8;
        if constraint < WINDOW_WORDS as u64 {
            // SAFETY: constraint < WINDOW_WORDS.
            let word = unsafe { *window.add(constraint as usize & (WINDOW_WORDS - 1)) };
            if (word >> (cfg.oom_control.constraint % 8 * 8)) as u32 > 3 {
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
    let stack: u64 = read(current, cfg.task.stack).ok()?;
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
/// build uses: the verifier goes through one word's check instead of the whole window's. Same
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
    if (i as u64) * 8 < u64::from(cfg.oom_control.chosen) {
        return 0;
    }
    let oc = search.base + i as u64 * 8 - u64::from(cfg.oom_control.chosen);
    // Most candidates fail on their constraint, read here from the window when it holds it.
    let constraint = (oc + u64::from(cfg.oom_control.constraint)).wrapping_sub(search.base) / 8;
    if constraint < WINDOW_WORDS as u64 {
        // SAFETY: per-CPU scratch; the index is masked into the window.
        let word = unsafe { (*scratch).window[constraint as usize & (WINDOW_WORDS - 1)] };
        if (word >> (cfg.oom_control.constraint % 8 * 8)) as u32 > 3 {
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
    let constraint = half(cfg.oom_control.constraint);
    let order = half(cfg.oom_control.order) as i32;
    let memcg = word(cfg.oom_control.memcg);
    let zonelist = word(cfg.oom_control.zonelist);
    let nodemask = word(cfg.oom_control.nodemask);
    let totalpages = word(cfg.oom_control.totalpages);
    let memcg_oom = constraint == u32::from(oomcount_common::constraint::MEMCG);
    word(cfg.oom_control.chosen) == chosen
        && constraint <= 3
        && (-1..=16).contains(&order)
        && half(cfg.oom_control.gfp_mask) < 1 << 30
        && (1..1 << 40).contains(&totalpages)
        && kernel_or_null(memcg)
        && memcg_oom == (memcg != 0)
        && kernel_or_null(zonelist)
        && kernel_or_null(nodemask)
        && (!memcg_oom || (zonelist == 0 && nodemask == 0))
}
