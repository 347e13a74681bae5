//! The kernel-structure offsets oomcount's programs follow, read from the kernel's BTF.
//!
//! Each group of offsets ([`oomcount_common::feature`]) is handed to the programs only when all
//! of its members were found; a kernel without BTF, or with a layout this code does not know,
//! gets fewer event details (their flags clear) and the same exact counts.
use oomcount_common::{Config, OC_BYTES, feature};

use crate::btf::Btf;

const STRUCTS: &[&str] = &[
    "task_struct",
    "cred",
    "signal_struct",
    "css_set",
    "cgroup_subsys_state",
    "cgroup",
    "kernfs_node",
    "oom_control",
    "mm_struct",
    "mm_rss_stat",
    "percpu_counter",
];
const MEMBERS: &[&str] = &[
    "pid",
    "tgid",
    "comm",
    "group_leader",
    "real_cred",
    "signal",
    "cgroups",
    "stack",
    "uid",
    "oom_score_adj",
    "subsys",
    "cgroup",
    "kn",
    "name",
    "parent",
    "__parent",
    "id",
    "memcg",
    "chosen",
    "constraint",
    "order",
    "zonelist",
    "nodemask",
    "gfp_mask",
    "totalpages",
    "oom_mm",
    "mm",
    "total_vm",
    "rss_stat",
    "count",
    "pgtables_bytes",
];
const ENUMERATORS: &[&str] = &[
    "memory_cgrp_id",
    "MM_FILEPAGES",
    "MM_ANONPAGES",
    "MM_SHMEMPAGES",
];

/// Fills the BTF part of `config` from the running kernel, setting the `features` found.
pub fn fill(config: &mut Config) {
    match Btf::from_sys_fs(STRUCTS, MEMBERS, ENUMERATORS) {
        Ok(btf) => fill_from(config, &btf, thread_size()),
        Err(err) => log::warn!(
            "cannot read the kernel's BTF ({err}): events will lack the victim's tgid, cgroup and the OOM constraint; counts stay exact"
        ),
    }
}

/// Fills `config` from `btf`; separate from [`fill`] so that tests can hand in any BTF.
pub fn fill_from(config: &mut Config, btf: &Btf, thread_size: u32) {
    let off = |s: &str, m: &str| btf.member_offset(s, m);
    if let (Some(pid), Some(tgid), Some(comm), Some(leader), Some(signal), Some(oom_mm)) = (
        off("task_struct", "pid"),
        off("task_struct", "tgid"),
        off("task_struct", "comm"),
        off("task_struct", "group_leader"),
        off("task_struct", "signal"),
        off("signal_struct", "oom_mm"),
    ) {
        config.task_pid = pid;
        config.task_tgid = tgid;
        config.task_comm = comm;
        config.task_group_leader = leader;
        config.task_signal = signal;
        config.signal_oom_mm = oom_mm;
        config.features |= feature::TASK;
    }
    if let (true, Some(real_cred), Some(uid), Some(adj)) = (
        config.features & feature::TASK != 0,
        off("task_struct", "real_cred"),
        off("cred", "uid"),
        off("signal_struct", "oom_score_adj"),
    ) {
        config.task_real_cred = real_cred;
        config.cred_uid = uid;
        config.signal_oom_score_adj = adj;
        config.features |= feature::CRED;
    }
    // Linux 6.15 renamed kernfs_node.parent to __parent.
    let kn_parent = off("kernfs_node", "parent").or_else(|| off("kernfs_node", "__parent"));
    if let (
        Some(cgroups),
        Some(subsys),
        Some(id),
        Some(css_cgroup),
        Some(kn),
        Some(name),
        Some(parent),
        Some(kn_id),
    ) = (
        off("task_struct", "cgroups"),
        off("css_set", "subsys"),
        btf.enum_value("memory_cgrp_id"),
        off("cgroup_subsys_state", "cgroup"),
        off("cgroup", "kn"),
        off("kernfs_node", "name"),
        kn_parent,
        off("kernfs_node", "id"),
    ) {
        config.task_cgroups = cgroups;
        config.css_set_subsys = subsys;
        config.memory_cgrp_id = id as u32;
        config.css_cgroup = css_cgroup;
        config.cgroup_kn = kn;
        config.kn_name = name;
        config.kn_parent = parent;
        config.kn_id = kn_id;
        config.features |= feature::CGROUP;
    }
    let oc = |m: &str| off("oom_control", m);
    if let (
        Some(stack),
        Some(memcg),
        Some(chosen),
        Some(constraint),
        Some(order),
        Some(zonelist),
        Some(nodemask),
        Some(gfp_mask),
        Some(totalpages),
    ) = (
        off("task_struct", "stack"),
        oc("memcg"),
        oc("chosen"),
        oc("constraint"),
        oc("order"),
        oc("zonelist"),
        oc("nodemask"),
        oc("gfp_mask"),
        oc("totalpages"),
    ) {
        // The programs copy at most OC_BYTES of a candidate `oom_control` and read its members
        // at these offsets: 8-byte members 8-aligned, 4-byte ones 4-aligned, all inside the copy.
        let fits =
            |offset: u32, size: u32| offset.is_multiple_of(size) && offset + size <= OC_BYTES;
        if fits(memcg, 8)
            && fits(chosen, 8)
            && fits(zonelist, 8)
            && fits(nodemask, 8)
            && fits(totalpages, 8)
            && fits(constraint, 4)
            && fits(order, 4)
            && fits(gfp_mask, 4)
        {
            config.task_stack = stack;
            config.oc_memcg = memcg;
            config.oc_chosen = chosen;
            config.oc_constraint = constraint;
            config.oc_order = order;
            config.oc_zonelist = zonelist;
            config.oc_nodemask = nodemask;
            config.oc_gfp_mask = gfp_mask;
            config.oc_totalpages = totalpages;
            config.thread_size = thread_size;
            config.features |= feature::OOM_CONTROL;
        }
    }
    fill_mm(config, btf);
    config.page_kb = (nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
        / 1024) as u32;
}

/// The mm counters the new `mark_victim` layout reports, for the raw `mark_victim` program: an
/// array of atomics in `struct mm_rss_stat` before Linux 6.2, an array of `struct percpu_counter`
/// since, whose `count` is what the tracepoint itself reads (`percpu_counter_read_positive`).
fn fill_mm(config: &mut Config, btf: &Btf) {
    let off = |s: &str, m: &str| btf.member_offset(s, m);
    let index = |name: &str| btf.enum_value(name).and_then(|v| u32::try_from(v).ok());
    // Where counter `i` sits relative to `mm_struct.rss_stat`: (stride, offset within).
    let layout = match off("mm_rss_stat", "count") {
        Some(count) => Some((8, count)),
        None => btf
            .struct_size("percpu_counter")
            .zip(off("percpu_counter", "count")),
    };
    if let (true, Some((stride, within)), Some(mm), Some(total_vm), Some(rss_stat), Some(pgtables)) = (
        config.features & feature::CRED != 0,
        layout,
        off("task_struct", "mm"),
        off("mm_struct", "total_vm"),
        off("mm_struct", "rss_stat"),
        off("mm_struct", "pgtables_bytes"),
    ) && let (Some(file), Some(anon), Some(shmem)) = (
        index("MM_FILEPAGES"),
        index("MM_ANONPAGES"),
        index("MM_SHMEMPAGES"),
    ) {
        let counter = |i: u32| rss_stat + stride * i + within;
        config.task_mm = mm;
        config.mm_total_vm = total_vm;
        config.mm_rss_anon = counter(anon);
        config.mm_rss_file = counter(file);
        config.mm_rss_shmem = counter(shmem);
        config.mm_pgtables_bytes = pgtables;
        config.features |= feature::MM;
    }
}

/// The size of a kernel stack: 16 KiB on x86_64 and arm64, twice that with KASAN.
fn thread_size() -> u32 {
    let config = format!("/boot/config-{}", crate::tracefs::kernel_release());
    let kasan = std::fs::read_to_string(config)
        .map(|text| text.lines().any(|l| l == "CONFIG_KASAN=y"))
        .unwrap_or(false);
    if kasan { 32 * 1024 } else { 16 * 1024 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_every_feature() {
        if !std::path::Path::new(crate::btf::VMLINUX).exists() {
            eprintln!(
                "skipped: this kernel ({}) has no BTF",
                crate::tracefs::kernel_release()
            );
            return;
        }
        let btf = Btf::from_sys_fs(STRUCTS, MEMBERS, ENUMERATORS).unwrap();
        let mut config = Config::default();
        fill_from(&mut config, &btf, 16384);
        let all =
            feature::TASK | feature::CRED | feature::CGROUP | feature::OOM_CONTROL | feature::MM;
        assert_eq!(config.features, all, "{config:?}");
        assert_eq!(config.task_tgid, config.task_pid + 4);
    }

    #[test]
    fn missing_members_leave_features_off() {
        let mut config = Config::default();
        fill_from(&mut config, &Btf::default(), 16384);
        assert_eq!(config.features, 0);
    }
}
