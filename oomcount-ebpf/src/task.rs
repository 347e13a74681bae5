//! What a victim's `task_struct` (and the tracepoint's own record, on the new layout) tells of
//! it: memory, uid, oom_score_adj, tgid and its memory cgroup's path.

use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, programs::TracePointContext};
use oomcount_common::{CGROUP_DEPTH, Config, Event, feature, flags};

use crate::read;

/// The memory fields of the new `mark_victim` layout, from the task's `mm` (its rss counters,
/// in pages) and its `signal` (oom_score_adj).
#[inline(always)]
pub(crate) fn read_task_memory(cfg: &Config, task: u64, event: &mut Event) -> Result<(), i32> {
    let mm: u64 = read(task, cfg.task.mm)?;
    if mm == 0 {
        return Ok(());
    }
    let pages_kb = |pages: i64| (pages.max(0) as u64) * u64::from(cfg.page_kb);
    event.total_vm_kb = pages_kb(read::<i64>(mm, cfg.mm.total_vm)?);
    event.anon_rss_kb = pages_kb(read::<i64>(mm, cfg.mm.rss_anon)?);
    event.file_rss_kb = pages_kb(read::<i64>(mm, cfg.mm.rss_file)?);
    event.shmem_rss_kb = pages_kb(read::<i64>(mm, cfg.mm.rss_shmem)?);
    event.pgtables_kb = (read::<i64>(mm, cfg.mm.pgtables_bytes)?.max(0) as u64) >> 10;
    let signal: u64 = read(task, cfg.task.signal)?;
    event.oom_score_adj = read(signal, cfg.signal.oom_score_adj)?;
    event.flags |= flags::MEMORY | flags::OOM_SCORE_ADJ;
    Ok(())
}

/// The new layout (6.9+, and backports) carries the victim's memory, uid and oom_score_adj.
#[inline(always)]
pub(crate) fn read_memory_fields(
    ctx: &TracePointContext,
    cfg: &Config,
    event: &mut Event,
) -> Result<(), i32> {
    // SAFETY: as in try_signal_generate.
    unsafe {
        event.total_vm_kb = ctx.read_at(cfg.mark_victim.total_vm as usize)?;
        event.anon_rss_kb = ctx.read_at(cfg.mark_victim.anon_rss as usize)?;
        event.file_rss_kb = ctx.read_at(cfg.mark_victim.file_rss as usize)?;
        event.shmem_rss_kb = ctx.read_at(cfg.mark_victim.shmem_rss as usize)?;
        event.pgtables_kb = ctx.read_at(cfg.mark_victim.pgtables as usize)?;
        event.uid = ctx.read_at(cfg.mark_victim.uid as usize)?;
        event.oom_score_adj = ctx.read_at(cfg.mark_victim.oom_score_adj as usize)?;
    }
    event.flags |= flags::MEMORY | flags::UID | flags::OOM_SCORE_ADJ;
    Ok(())
}

/// What the victim's `task_struct` tells exactly: tgid, and where the tracepoint lacks them
/// (old layout) uid and oom_score_adj; and its memory cgroup, noting the level `oom_kn`.
#[inline(always)]
pub(crate) fn read_victim_task(
    cfg: &Config,
    task: u64,
    oom_kn: u64,
    event: &mut Event,
) -> Result<(), i32> {
    event.tgid = read(task, cfg.task.tgid)?;
    event.flags |= flags::TGID;
    if cfg.features & feature::CRED != 0 {
        if event.flags & flags::UID == 0 {
            let cred: u64 = read(task, cfg.task.real_cred)?;
            event.uid = read(cred, cfg.cred.uid)?;
            event.flags |= flags::UID;
        }
        if event.flags & flags::OOM_SCORE_ADJ == 0 {
            let signal: u64 = read(task, cfg.task.signal)?;
            event.oom_score_adj = read(signal, cfg.signal.oom_score_adj)?;
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
pub(crate) fn read_cgroup_path(
    cfg: &Config,
    task: u64,
    oom_kn: u64,
    event: &mut Event,
) -> Result<(), i32> {
    let css_set: u64 = read(task, cfg.task.cgroups)?;
    let css: u64 = read(css_set, cfg.css_set.subsys + cfg.css_set.memory_cgrp_id * 8)?;
    let cgroup: u64 = read(css, cfg.css.cgroup)?;
    let mut kn: u64 = read(cgroup, cfg.cgroup.kn)?;
    event.cgroup_id = read(kn, cfg.kernfs_node.id)?;
    event.flags |= flags::CGROUP;
    for level in 0..CGROUP_DEPTH {
        let parent: u64 = read(kn, cfg.kernfs_node.parent)?;
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
        let name: u64 = read(kn, cfg.kernfs_node.name)?;
        // SAFETY: `name` is a kernel string pointer; the helper bounds the copy.
        unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut event.cgroup[level])? };
        event.cgroup_depth = level as u16 + 1;
        kn = parent;
    }
    let parent: u64 = read(kn, cfg.kernfs_node.parent)?;
    if parent != 0 {
        event.flags |= flags::CGROUP_TRUNCATED;
    }
    Ok(())
}
