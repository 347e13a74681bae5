//! The kernel-structure offsets oomcount's programs follow, read from the kernel's BTF.
//!
//! [`TABLE`] names, once, every BTF name the programs need (struct members, enumerators, struct
//! sizes), the feature ([`oomcount_common::feature`]) each belongs to, and where its value goes:
//! the BTF reader is asked for exactly the table's names, and the loader fills [`Config`] from
//! it. A feature is handed to the programs only when all of its names were found; a missing one
//! is logged with the feature it turns off. A kernel without BTF, or with a layout this code does
//! not know, gets fewer event details (their flags clear) and the same exact counts.
use oomcount_common::{Config, OC_BYTES, feature};

use crate::probe::btf::Btf;

/// Where a value comes from in BTF.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// A member of a struct, by the first of its names that the kernel has (members get
    /// renamed: `kernfs_node.parent` became `__parent` in 6.15).
    Member(&'static str, &'static [&'static str]),
    /// An enumerator's value.
    Enum(&'static str),
    /// A struct's size in bytes.
    Size(&'static str),
}

impl Source {
    fn lookup(self, btf: &Btf) -> Option<u32> {
        match self {
            Source::Member(of, names) => names.iter().find_map(|m| btf.member_offset(of, m)),
            Source::Enum(name) => btf.enum_value(name).and_then(|v| u32::try_from(v).ok()),
            Source::Size(of) => btf.struct_size(of),
        }
    }

    fn describe(self) -> String {
        match self {
            Source::Member(of, names) => format!("{of}.{}", names.join("/")),
            Source::Enum(name) => format!("enum value {name}"),
            Source::Size(of) => format!("the size of struct {of}"),
        }
    }
}

/// What the table fills: the programs' offsets, and the inputs of the few that are computed
/// (the mm counters' places).
#[derive(Default)]
struct Found {
    config: Config,
    rss_stat: u32,
    /// `mm_rss_stat.count` (before 6.2), or `struct percpu_counter`'s size and `count` (since).
    atomic_count: Option<u32>,
    percpu_size: Option<u32>,
    percpu_count: Option<u32>,
    mm_filepages: u32,
    mm_anonpages: u32,
    mm_shmempages: u32,
}

/// One name of the table.
struct Entry {
    feature: u32,
    source: Source,
    /// Optional entries are alternatives a computed offset chooses between.
    required: bool,
    put: fn(&mut Found, u32),
}

/// One required struct member of [`TABLE`], on one line: `FEATURE, struct.[names] => field`,
/// `field` a path in [`Found`].
macro_rules! member {
    ($feature:expr, $of:literal . [$($name:literal),+] => $($field:ident).+) => {
        Entry {
            feature: $feature,
            source: Source::Member($of, &[$($name),+]),
            required: true,
            put: |f, v| f.$($field).+ = v,
        }
    };
}

use feature::{CGROUP, CRED, MM, OOM_CONTROL, TASK};

/// Every BTF name the programs need, once.
#[rustfmt::skip]
const TABLE: &[Entry] = &[
    member!(TASK, "task_struct".["pid"] => config.task.pid),
    member!(TASK, "task_struct".["tgid"] => config.task.tgid),
    member!(TASK, "task_struct".["comm"] => config.task.comm),
    member!(TASK, "task_struct".["group_leader"] => config.task.group_leader),
    member!(TASK, "task_struct".["signal"] => config.task.signal),
    member!(TASK, "signal_struct".["oom_mm"] => config.signal.oom_mm),
    member!(CRED, "task_struct".["real_cred"] => config.task.real_cred),
    member!(CRED, "cred".["uid"] => config.cred.uid),
    member!(CRED, "signal_struct".["oom_score_adj"] => config.signal.oom_score_adj),
    member!(CGROUP, "task_struct".["cgroups"] => config.task.cgroups),
    member!(CGROUP, "css_set".["subsys"] => config.css_set.subsys),
    Entry { feature: CGROUP, source: Source::Enum("memory_cgrp_id"), required: true, put: |f, v| f.config.css_set.memory_cgrp_id = v },
    member!(CGROUP, "cgroup_subsys_state".["cgroup"] => config.css.cgroup),
    member!(CGROUP, "cgroup".["kn"] => config.cgroup.kn),
    member!(CGROUP, "kernfs_node".["name"] => config.kernfs_node.name),
    member!(CGROUP, "kernfs_node".["parent", "__parent"] => config.kernfs_node.parent),
    member!(CGROUP, "kernfs_node".["id"] => config.kernfs_node.id),
    member!(OOM_CONTROL, "task_struct".["stack"] => config.task.stack),
    member!(OOM_CONTROL, "oom_control".["memcg"] => config.oom_control.memcg),
    member!(OOM_CONTROL, "oom_control".["chosen"] => config.oom_control.chosen),
    member!(OOM_CONTROL, "oom_control".["constraint"] => config.oom_control.constraint),
    member!(OOM_CONTROL, "oom_control".["order"] => config.oom_control.order),
    member!(OOM_CONTROL, "oom_control".["zonelist"] => config.oom_control.zonelist),
    member!(OOM_CONTROL, "oom_control".["nodemask"] => config.oom_control.nodemask),
    member!(OOM_CONTROL, "oom_control".["gfp_mask"] => config.oom_control.gfp_mask),
    member!(OOM_CONTROL, "oom_control".["totalpages"] => config.oom_control.totalpages),
    member!(MM, "task_struct".["mm"] => config.task.mm),
    member!(MM, "mm_struct".["total_vm"] => config.mm.total_vm),
    member!(MM, "mm_struct".["pgtables_bytes"] => config.mm.pgtables_bytes),
    member!(MM, "mm_struct".["rss_stat"] => rss_stat),
    Entry { feature: MM, source: Source::Enum("MM_FILEPAGES"), required: true, put: |f, v| f.mm_filepages = v },
    Entry { feature: MM, source: Source::Enum("MM_ANONPAGES"), required: true, put: |f, v| f.mm_anonpages = v },
    Entry { feature: MM, source: Source::Enum("MM_SHMEMPAGES"), required: true, put: |f, v| f.mm_shmempages = v },
    // One of two layouts of the mm counters (see fill_from): optional each.
    Entry { feature: MM, source: Source::Member("mm_rss_stat", &["count"]), required: false, put: |f, v| f.atomic_count = Some(v) },
    Entry { feature: MM, source: Source::Size("percpu_counter"), required: false, put: |f, v| f.percpu_size = Some(v) },
    Entry { feature: MM, source: Source::Member("percpu_counter", &["count"]), required: false, put: |f, v| f.percpu_count = Some(v) },
];

/// What each feature gives, for the line that says it is off.
fn gives(feature: u32) -> &'static str {
    match feature {
        TASK => {
            "the raw signal program (memory.oom.group's second kill of a victim, the victim's tgid)"
        }
        CRED => "the victim's uid and oom_score_adj on the old layout, and the memory fields",
        CGROUP => "the victim's memory cgroup path",
        OOM_CONTROL => "the kill's constraint and the cgroup whose limit was hit",
        MM => "the memory fields from the raw mark_victim program",
        _ => "details",
    }
}

/// The names the BTF reader keeps, from [`TABLE`].
pub(crate) struct Names {
    pub(crate) structs: Vec<&'static str>,
    pub(crate) members: Vec<&'static str>,
    pub(crate) enumerators: Vec<&'static str>,
}

impl Names {
    pub(crate) fn of_table() -> Names {
        let mut names = Names {
            structs: Vec::new(),
            members: Vec::new(),
            enumerators: Vec::new(),
        };
        let add = |list: &mut Vec<&'static str>, name: &'static str| {
            if !list.contains(&name) {
                list.push(name);
            }
        };
        for entry in TABLE {
            match entry.source {
                Source::Member(of, members) => {
                    add(&mut names.structs, of);
                    for m in members {
                        add(&mut names.members, m);
                    }
                }
                Source::Size(of) => add(&mut names.structs, of),
                Source::Enum(name) => add(&mut names.enumerators, name),
            }
        }
        names
    }
}

/// Fills the BTF part of `config` from the running kernel, setting the `features` found.
pub(crate) fn fill(config: &mut Config) {
    let names = Names::of_table();
    match Btf::from_sys_fs(&names.structs, &names.members, &names.enumerators) {
        Ok(btf) => fill_from(config, &btf, thread_size()),
        Err(err) => log::warn!(
            "cannot read the kernel's BTF ({err}): events will lack the victim's tgid, cgroup and the OOM constraint; counts stay exact"
        ),
    }
}

/// Fills `config` from `btf`; separate from [`fill`] so that tests can hand in any BTF.
pub(crate) fn fill_from(config: &mut Config, btf: &Btf, thread_size: u32) {
    let mut found = Found {
        config: *config,
        ..Found::default()
    };
    let mut absent = Vec::new();
    for entry in TABLE {
        match entry.source.lookup(btf) {
            Some(value) => (entry.put)(&mut found, value),
            None if entry.required => absent.push((entry.feature, entry.source.describe())),
            None => {}
        }
    }
    // The mm counters: an array of atomics in `struct mm_rss_stat` before Linux 6.2, an array of
    // `struct percpu_counter` since, whose `count` is what the tracepoint itself reads
    // (`percpu_counter_read_positive`). Where counter `i` sits relative to `rss_stat`.
    let layout = match (found.atomic_count, found.percpu_size, found.percpu_count) {
        (Some(count), _, _) => Some((8, count)),
        (None, Some(size), Some(count)) => Some((size, count)),
        _ => {
            absent.push((
                MM,
                "mm_rss_stat.count, or percpu_counter and its count".to_owned(),
            ));
            None
        }
    };
    if let Some((stride, within)) = layout {
        // Past u32 only in a malformed BTF.
        let counter = |i: u32| {
            stride
                .checked_mul(i)?
                .checked_add(found.rss_stat)?
                .checked_add(within)
        };
        match (
            counter(found.mm_anonpages),
            counter(found.mm_filepages),
            counter(found.mm_shmempages),
        ) {
            (Some(anon), Some(file), Some(shmem)) => {
                found.config.mm.rss_anon = anon;
                found.config.mm.rss_file = file;
                found.config.mm.rss_shmem = shmem;
            }
            _ => absent.push((MM, "mm counters at offsets that fit in 32 bits".to_owned())),
        }
    }
    // The programs copy at most OC_BYTES of a candidate `oom_control` and read its members at
    // these offsets: 8-byte members 8-aligned, 4-byte ones 4-aligned, all inside the copy.
    let oc = found.config.oom_control;
    let fits = |offset: u32, size: u32| offset.is_multiple_of(size) && offset + size <= OC_BYTES;
    let oc_fits = [oc.memcg, oc.chosen, oc.zonelist, oc.nodemask, oc.totalpages]
        .iter()
        .all(|&o| fits(o, 8))
        && [oc.constraint, oc.order, oc.gfp_mask]
            .iter()
            .all(|&o| fits(o, 4));
    if !oc_fits {
        absent.push((
            OOM_CONTROL,
            format!("an oom_control whose members fit in {OC_BYTES} bytes"),
        ));
    }
    let mut said = Vec::new();
    found.config.features |= resolve_features(&absent, &mut said);
    for line in said {
        log::warn!("{line}");
    }
    found.config.thread_size = thread_size;
    found.config.page_kb = (nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
        / 1024) as u32;
    *config = found.config;
}

/// The features whose names were all found (CRED needs TASK, MM needs CRED), and a line for
/// each one that is off, naming what is missing and what it turns off.
fn resolve_features(absent: &[(u32, String)], said: &mut Vec<String>) -> u32 {
    let mut features = 0;
    for (feature, needs) in [
        (TASK, 0),
        (CRED, TASK),
        (CGROUP, 0),
        (OOM_CONTROL, 0),
        (MM, CRED),
    ] {
        let missing: Vec<&str> = absent
            .iter()
            .filter(|(f, _)| *f == feature)
            .map(|(_, name)| name.as_str())
            .collect();
        if missing.is_empty() && features & needs == needs {
            features |= feature;
        } else if !missing.is_empty() {
            said.push(format!(
                "the kernel's BTF lacks {}: off: {}",
                missing.join(", "),
                gives(feature)
            ));
        }
    }
    features
}

/// The size of a kernel stack: 16 KiB on x86_64 and arm64, twice that with KASAN.
fn thread_size() -> u32 {
    let config = format!("/boot/config-{}", crate::probe::tracefs::kernel_release());
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
        if !std::path::Path::new(crate::probe::btf::VMLINUX).exists() {
            eprintln!(
                "skipped: this kernel ({}) has no BTF",
                crate::probe::tracefs::kernel_release()
            );
            return;
        }
        let names = Names::of_table();
        let btf = Btf::from_sys_fs(&names.structs, &names.members, &names.enumerators).unwrap();
        let mut config = Config::default();
        fill_from(&mut config, &btf, 16384);
        let all =
            feature::TASK | feature::CRED | feature::CGROUP | feature::OOM_CONTROL | feature::MM;
        assert_eq!(config.features, all, "{config:?}");
        assert_eq!(config.task.tgid, config.task.pid + 4);
    }

    #[test]
    fn the_fuzz_seed_holds_every_feature() {
        // The `btf` fuzz target's seed, a slice of Linux 6.18's BTF: it must hold every name of
        // the table, or the fuzzer starts far from what the daemon reads.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/btf/vmlinux-6.18-slice"
        );
        let names = Names::of_table();
        let btf = Btf::from_path(
            std::path::Path::new(path),
            &names.structs,
            &names.members,
            &names.enumerators,
        )
        .unwrap_or_else(|err| panic!("{path}: {err}"));
        let mut config = Config::default();
        fill_from(&mut config, &btf, 16384);
        let all =
            feature::TASK | feature::CRED | feature::CGROUP | feature::OOM_CONTROL | feature::MM;
        assert_eq!(
            config.features, all,
            "{path} lacks names of the table: make it again with fuzz/btf_slice.py"
        );
        assert_eq!((config.task.pid, config.task.tgid), (1264, 1268));
    }

    /// Found by the `btf` fuzz target: an enumerator's index times the counters' stride
    /// overflowed.
    #[test]
    fn counters_past_u32_leave_mm_off() {
        let blob = |shmem_index: i32| {
            let mut blob = crate::probe::btf::testing::Blob::default();
            blob.int();
            let members: [(&str, &[&str]); 5] = [
                (
                    "task_struct",
                    &[
                        "pid",
                        "tgid",
                        "comm",
                        "group_leader",
                        "signal",
                        "real_cred",
                        "mm",
                    ],
                ),
                ("signal_struct", &["oom_mm", "oom_score_adj"]),
                ("cred", &["uid"]),
                ("mm_struct", &["total_vm", "rss_stat", "pgtables_bytes"]),
                ("mm_rss_stat", &["count"]),
            ];
            for (name, members) in members {
                let at: Vec<(&str, u32)> = (0..)
                    .step_by(8)
                    .zip(members.iter().copied())
                    .map(|(o, m)| (m, o))
                    .collect();
                blob.structure(name, 64, &at);
            }
            blob.enumeration(
                "",
                &[
                    ("MM_FILEPAGES", 0),
                    ("MM_ANONPAGES", 1),
                    ("MM_SHMEMPAGES", shmem_index),
                ],
            );
            let names = Names::of_table();
            let btf = Btf::read(
                std::io::Cursor::new(blob.bytes()),
                &names.structs,
                &names.members,
                &names.enumerators,
            )
            .unwrap();
            let mut config = Config::default();
            fill_from(&mut config, &btf, 16384);
            config
        };
        let sane = blob(3);
        assert_eq!(sane.features & feature::MM, feature::MM, "{sane:?}");
        assert_eq!(sane.mm.rss_shmem, 8 + 3 * 8);
        let huge = blob(i32::MAX);
        assert_eq!(huge.features & feature::CRED, feature::CRED, "{huge:?}");
        assert_eq!(huge.features & feature::MM, 0, "{huge:?}");
    }

    #[test]
    fn missing_members_leave_features_off() {
        let mut config = Config::default();
        fill_from(&mut config, &Btf::default(), 16384);
        assert_eq!(config.features, 0);
    }

    #[test]
    fn every_name_the_table_asks_for_is_read() {
        let names = Names::of_table();
        for entry in TABLE {
            match entry.source {
                Source::Member(of, alternatives) => {
                    assert!(names.structs.contains(&of), "{of}");
                    for m in alternatives {
                        assert!(names.members.contains(m), "{of}.{m}");
                    }
                }
                Source::Size(of) => assert!(names.structs.contains(&of), "{of}"),
                Source::Enum(e) => assert!(names.enumerators.contains(&e), "{e}"),
            }
        }
        // Each kernel-structure offset of the programs is set by exactly one entry: the table
        // filled with distinct values leaves no offset of a feature at zero.
        let mut found = Found::default();
        for (i, entry) in TABLE.iter().enumerate() {
            (entry.put)(&mut found, 1000 + i as u32);
        }
        let c = found.config;
        for (name, value) in [
            ("task.pid", c.task.pid),
            ("task.mm", c.task.mm),
            ("cred.uid", c.cred.uid),
            ("signal.oom_mm", c.signal.oom_mm),
            ("css_set.memory_cgrp_id", c.css_set.memory_cgrp_id),
            ("kernfs_node.parent", c.kernfs_node.parent),
            ("oom_control.totalpages", c.oom_control.totalpages),
            ("mm.pgtables_bytes", c.mm.pgtables_bytes),
        ] {
            assert_ne!(value, 0, "{name} is set by no entry");
        }
    }

    #[test]
    fn a_missing_member_turns_off_its_feature_and_says_which() {
        // Every name but kernfs_node.id: CGROUP goes, the others stay.
        let mut missing = Vec::new();
        let features = resolve_features(
            &[(feature::CGROUP, "kernfs_node.id".to_owned())],
            &mut missing,
        );
        assert_eq!(features & feature::CGROUP, 0);
        assert_ne!(features & feature::TASK, 0);
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("kernfs_node.id"), "{missing:?}");
        assert!(missing[0].contains("cgroup"), "{missing:?}");
    }
}
