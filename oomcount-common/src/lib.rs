//! The contract between oomcount's kernel program and its user side, written once.
//!
//! Everything both sides must agree on lives here and nowhere else: program and map names,
//! counter indexes, the load-time configuration the user side hands to the kernel, and the
//! layout of the records the kernel sends. Every shared struct is `#[repr(C)]`, made of
//! fixed-width integers with explicit padding (no `bool`, no `Option`), and its size is checked
//! at compile time so that a field added on one side cannot silently shift the other.
//!
//! The crate is `no_std` for the BPF target only, so host unit tests get `std`.
#![cfg_attr(target_arch = "bpf", no_std)]

use core::mem::size_of;

/// Program on `oom/mark_victim`: counts marks and, paired with the SIGKILL seen just before,
/// kills.
pub const PROG_MARK_VICTIM: &str = "oomcount_mark_victim";
/// Program on `signal/signal_generate`: remembers the SIGKILLs that the OOM killer sends.
pub const PROG_SIGNAL_GENERATE: &str = "oomcount_signal_generate";
/// The same as a raw tracepoint, which also sees the victim's `task_struct` (needs BTF offsets).
pub const PROG_SIGNAL_GENERATE_RAW: &str = "oomcount_signal_generate_raw";
/// `mark_victim` as a raw tracepoint, for kernels whose classic tracepoints cannot be pinned.
pub const PROG_MARK_VICTIM_RAW: &str = "oomcount_mark_victim_raw";
/// The same, its search for `oom_control` in a `bpf_loop` (Linux 5.17+): fewer instructions
/// for the verifier (README: Benchmarks, Start-up).
pub const PROG_MARK_VICTIM_RAW_LOOP: &str = "oomcount_mark_victim_raw_loop";

/// Tracepoints the programs attach to, as (category, name).
pub const TP_MARK_VICTIM: (&str, &str) = ("oom", "mark_victim");
pub const TP_SIGNAL_GENERATE: (&str, &str) = ("signal", "signal_generate");

/// `PerCpuArray<u64>` of counters, indexed by [`counter`]; the user side sums the CPUs.
pub const MAP_COUNTERS: &str = "OOMCOUNT_COUNTERS";
/// `LruHashMap<u32, Pending>`: per task (tid), the last OOM-style SIGKILL it sent.
pub const MAP_PENDING: &str = "OOMCOUNT_PENDING";
/// `RingBuf` of [`Event`] records, one per mark (kill or not).
pub const MAP_EVENTS: &str = "OOMCOUNT_EVENTS";
/// `ProgramArray` of one entry, the raw `mark_victim` program: the raw `signal_generate` program
/// tail-calls it for a kill that gets no mark of its own (see `AGAIN` in [`flags`]), so that the
/// kill's code is in one program and verified once.
pub const MAP_KILL_PROG: &str = "OOMCOUNT_KILL_PROG";
/// The load-time global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "OOMCOUNT_CONFIG";

/// Entries of the pending-signal map. Each task that sends an OOM-style SIGKILL takes one until
/// its next mark or until the LRU evicts it; a real kill uses its entry within microseconds, so
/// the map only has to outlast the tasks that are between the two tracepoints at once.
pub const PENDING_ENTRIES: u32 = 4096;

/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
/// 128 KiB holds 128 KiB / (size_of::<Event>() + 8 bytes of header) = 112 events waiting to be
/// read: kernel memory paid once, and at most as much resident in the daemon, which maps it and
/// copies each event out as it arrives. A burst larger than that while the daemon is slow or away
/// is counted as dropped; the counters stay exact.
pub const EVENTS_BYTES: u32 = 128 * 1024;

/// How long after an OOM-style SIGKILL a mark of the same pid by the same task still counts as
/// that kill. In `__oom_kill_process` the two are a few instructions apart in one task, with no
/// sleep between them, but a preemptible kernel may preempt it there, for as long as the load
/// (a storm of kills in a slow QEMU guest) makes it wait. The window only guards against a
/// stale entry (an mm-sharer's SIGKILL) matching a much later mark of the same pid by the same
/// task.
pub const PAIR_WINDOW_NS: u64 = 5_000_000_000;

/// Bytes of a candidate `struct oom_control` the kernel program copies to check it (72 bytes on
/// every kernel seen); the user side hands over its members' offsets only when they fit.
pub const OC_BYTES: u32 = 128;

/// Indexes into [`MAP_COUNTERS`].
pub mod counter {
    /// Victims killed by the OOM killer: what `/proc/vmstat` `oom_kill` counts.
    pub const KILLS: u32 = 0;
    /// Every `mark_victim` event, including threads of a victim and victims already dying.
    pub const MARKED: u32 = 1;
    /// Events that did not fit in the ring buffer (the counters are exact regardless).
    pub const EVENTS_DROPPED: u32 = 2;
    /// OOM-style SIGKILLs seen (SIGKILL, SI_KERNEL, to the whole group): kills and mm-sharers.
    pub const OOM_SIGNALS: u32 = 3;
    /// Of the dropped events, those of kills.
    pub const KILL_EVENTS_DROPPED: u32 = 4;
    /// Kills by a memory cgroup's limit, read from the OOM killer's `oom_control`.
    pub const KILLS_MEMCG: u32 = 5;
    /// Kills with any other constraint: the whole machine (or a cpuset or memory policy).
    pub const KILLS_GLOBAL: u32 = 6;
    /// Of the dropped kill events, those of kills counted in [`KILLS_MEMCG`]: the rules weigh
    /// a lost kill with its constraint. (The rest of the split is at [`KILL_EVENTS_DROPPED_GLOBAL`],
    /// past the user side's slots: the map's layout is pinned.)
    pub const KILL_EVENTS_DROPPED_MEMCG: u32 = 7;
    /// Slots the user side keeps beside the counters, on CPU 0, so that they outlive a daemon
    /// with the pinned map: the layout version of the pins, when the probe was attached (Unix
    /// ns), the last event sequence number, and the drops already reported. Never touched by the
    /// programs. The version slot stays at this index in every version.
    pub const VERSION: u32 = 8;
    pub const ATTACHED_AT_NS: u32 = 9;
    pub const SEQ: u32 = 10;
    pub const DROPS_SEEN: u32 = 11;
    /// When a daemon judged the machine unrecoverable (Unix ns; 0: never). The verdict is
    /// latched across daemons: one restarted after it (by systemd's `Restart=`, say) must not
    /// ping the watchdog again and cancel the reset. Older daemons ignore the slot.
    pub const UNRECOVERABLE_AT: u32 = 12;
    /// Of the dropped kill events, those of kills counted in [`KILLS_GLOBAL`]. Programs of older
    /// oomcounts (adopted pins) leave this and [`KILL_EVENTS_DROPPED_MEMCG`] at 0: their lost
    /// kills are weighed without a constraint, as before.
    pub const KILL_EVENTS_DROPPED_GLOBAL: u32 = 13;
    /// Number of slots; the size of the map.
    pub const COUNT: u32 = 16;
}

/// The layout version recorded with pinned maps and links: bumped whenever a pinned map or the
/// meaning of a counter changes, so that a daemon recognises pins it cannot adopt. Version 0 is
/// "no version recorded" (pins of a probe whose daemon died before writing it).
pub const PIN_VERSION: u64 = 2;
// Version 2: cgroup names of 128 bytes a level in `Event` (the ring buffer's records grew).

/// Names of the pinned objects, in the pin folder (`/sys/fs/bpf/oomcount` by default).
pub mod pin {
    pub const COUNTERS: &str = "counters";
    pub const EVENTS: &str = "events";
    pub const LINK_SIGNAL: &str = "link_signal_generate";
    pub const LINK_MARK: &str = "link_mark_victim";
    pub const ALL: [&str; 4] = [COUNTERS, EVENTS, LINK_SIGNAL, LINK_MARK];
}

/// Values of `si_code` and signal numbers the kernel program compares against.
pub const SIGKILL: i32 = 9;
/// `SI_KERNEL`: the code of a signal sent with `SEND_SIG_PRIV`, as `__oom_kill_process` does.
pub const SI_KERNEL: i32 = 0x80;

/// "This field is absent on this kernel" for a tracepoint offset in [`Config`]. Offset 0 is the
/// common trace header, never a field of an event's own, so it is free to mean absent.
pub const ABSENT: u32 = 0;

/// Bits of [`Config::features`]: which groups of kernel-structure offsets (from BTF) were found.
/// A group is used only when all of its offsets were.
pub mod feature {
    /// `task_struct` pid, tgid, comm, group_leader, signal and `signal_struct.oom_mm`: the raw
    /// `signal_generate` program can run.
    pub const TASK: u32 = 1 << 0;
    /// `task_struct.real_cred` -> `cred.uid`, `signal_struct.oom_score_adj`.
    pub const CRED: u32 = 1 << 1;
    /// The memory cgroup of a task and the names of its kernfs nodes.
    pub const CGROUP: u32 = 1 << 2;
    /// `oom_control` on the OOM invoker's stack: constraint and the cgroup whose limit was hit.
    pub const OOM_CONTROL: u32 = 1 << 3;
    /// `task_struct.mm` and the `mm_struct` counters: the raw `mark_victim` program can give
    /// the new layout's memory fields.
    pub const MM: u32 = 1 << 4;
}

/// Where the fields the programs read sit: in each tracepoint's record (read by the user side
/// from the tracepoints' `format` files) and in kernel structures (read from the kernel's BTF),
/// handed to the kernel as a global at load time. Layouts differ between kernels (`mark_victim`
/// had only `pid` before 6.9), so nothing here is ever a compile-time constant. Grouped by the
/// record or structure each offset is in ([`offsets`]); the user side's `offsets.rs` names, once,
/// the BTF member behind each kernel-structure offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub mark_victim: offsets::MarkVictim,
    pub signal_generate: offsets::SignalGenerate,
    /// [`feature`] bits: which groups of kernel-structure offsets below were all found.
    pub features: u32,
    pub task: offsets::Task,
    pub cred: offsets::Cred,
    pub signal: offsets::Signal,
    pub css_set: offsets::CssSet,
    pub css: offsets::Css,
    pub cgroup: offsets::Cgroup,
    pub kernfs_node: offsets::KernfsNode,
    pub oom_control: offsets::OomControl,
    pub mm: offsets::Mm,
    /// 1 when the raw `mark_victim` arguments are `(task, uid)` (new layout), 0 for `(pid)`.
    pub mark_raw_task: u32,
    /// The size of a kernel stack (feature::OOM_CONTROL).
    pub thread_size: u32,
    /// kB per page.
    pub page_kb: u32,
    /// See [`PAIR_WINDOW_NS`].
    pub pair_window_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 208);
// No implicit padding: 50 offsets of 4 bytes, then the window.
const _: () = assert!(core::mem::offset_of!(Config, pair_window_ns) == 50 * 4);

/// The groups of [`Config`]: byte offsets of fields in one tracepoint record or one kernel
/// structure each, all `u32`.
pub mod offsets {
    /// `oom/mark_victim`'s record (from tracefs): `int pid`; on the new layout (6.9+ and
    /// backports) also `__data_loc char[] comm`, `unsigned long total_vm, anon_rss, file_rss,
    /// shmem_rss, pgtables` (kB), `uid_t uid`, `short oom_score_adj`; else [`crate::ABSENT`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MarkVictim {
        pub pid: u32,
        pub comm: u32,
        pub total_vm: u32,
        pub anon_rss: u32,
        pub file_rss: u32,
        pub shmem_rss: u32,
        pub pgtables: u32,
        pub uid: u32,
        pub oom_score_adj: u32,
    }

    /// `signal/signal_generate`'s record (from tracefs): `int sig`, `int code`,
    /// `char comm[16]`, `pid_t pid`, `int group`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SignalGenerate {
        pub sig: u32,
        pub code: u32,
        pub comm: u32,
        pub pid: u32,
        pub group: u32,
    }

    /// `struct task_struct` (feature::TASK: pid .. signal; CRED: real_cred; CGROUP: cgroups;
    /// OOM_CONTROL: stack; MM: mm).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Task {
        pub pid: u32,
        pub tgid: u32,
        pub comm: u32,
        pub group_leader: u32,
        pub real_cred: u32,
        pub signal: u32,
        pub cgroups: u32,
        pub stack: u32,
        pub mm: u32,
    }

    /// `struct cred` (feature::CRED).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Cred {
        pub uid: u32,
    }

    /// `struct signal_struct` (oom_score_adj: feature::CRED; oom_mm: TASK).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Signal {
        pub oom_score_adj: u32,
        pub oom_mm: u32,
    }

    /// `struct css_set`: `subsys`, and the memory controller's index in it (`memory_cgrp_id`)
    /// (feature::CGROUP).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CssSet {
        pub subsys: u32,
        pub memory_cgrp_id: u32,
    }

    /// `struct cgroup_subsys_state` (feature::CGROUP).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Css {
        pub cgroup: u32,
    }

    /// `struct cgroup` (feature::CGROUP).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Cgroup {
        pub kn: u32,
    }

    /// `struct kernfs_node` (feature::CGROUP).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct KernfsNode {
        pub name: u32,
        pub parent: u32,
        pub id: u32,
    }

    /// `struct oom_control` (feature::OOM_CONTROL): what a kill's constraint and cgroup are read
    /// from (memcg, chosen, constraint), and what tells a real one from stack words that resemble
    /// it (the rest).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OomControl {
        pub memcg: u32,
        pub chosen: u32,
        pub constraint: u32,
        pub order: u32,
        pub zonelist: u32,
        pub nodemask: u32,
        pub gfp_mask: u32,
        pub totalpages: u32,
    }

    /// `struct mm_struct` (feature::MM): total_vm, the anon/file/shmem rss counters (each where
    /// its count sits) and pgtables_bytes.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Mm {
        pub total_vm: u32,
        pub rss_anon: u32,
        pub rss_file: u32,
        pub rss_shmem: u32,
        pub pgtables_bytes: u32,
    }
}

/// What the signal programs remember for the task that sent an OOM-style SIGKILL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The pid (thread id) the SIGKILL was sent to.
    pub victim_pid: u32,
    /// 1 when the kill was counted (and its event sent) at the signal already: its victim was
    /// an OOM victim before, so no mark may follow.
    pub counted: u32,
    /// `bpf_ktime_get_ns()` when it was sent.
    pub at_ns: u64,
    /// The victim's `task_struct`, where the raw program saw it (0 otherwise).
    pub task: u64,
    /// The victim's comm as the signal tracepoint saw it (every kernel has it there).
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<Pending>() == 40);

/// Kinds of [`Event`].
pub mod kind {
    /// A victim killed by the OOM killer (counted in `kills`).
    pub const KILL: u32 = 1;
    /// A mark without a kill: another thread of a victim, or a victim already dying.
    pub const MARK: u32 = 2;
}

/// Bits of [`Event::flags`]: which optional fields hold what the kernel said. A field whose bit
/// is clear could not be had exactly on this kernel and is absent, never guessed.
pub mod flags {
    /// `comm` holds the victim's comm.
    pub const COMM: u32 = 1 << 0;
    /// The memory fields (`total_vm_kb` .. `pgtables_kb`) came from the tracepoint.
    pub const MEMORY: u32 = 1 << 1;
    /// `uid` holds the victim's uid.
    pub const UID: u32 = 1 << 2;
    /// `oom_score_adj` holds the victim's.
    pub const OOM_SCORE_ADJ: u32 = 1 << 3;
    /// `tgid` holds the victim's thread group id.
    pub const TGID: u32 = 1 << 4;
    /// `cgroup` holds the victim's memory cgroup path (leaf first), `cgroup_id` its id.
    pub const CGROUP: u32 = 1 << 5;
    /// The victim's cgroup is deeper than [`CGROUP_DEPTH`]: its top levels are missing.
    pub const CGROUP_TRUNCATED: u32 = 1 << 6;
    /// `constraint` came from the OOM killer's own `oom_control`.
    pub const CONSTRAINT: u32 = 1 << 7;
    /// `oom_cgroup_level` and `oom_cgroup_id` name the cgroup whose limit was hit.
    pub const OOM_CGROUP: u32 = 1 << 8;
    /// The victim was already an OOM victim when the OOM killer killed it (again): a
    /// `memory.oom.group` kill reaches its first victim twice, and the kernel counts both. The
    /// event comes from the signal, so the tracepoint's memory fields are absent.
    pub const AGAIN: u32 = 1 << 9;
}

/// Values of [`Event::constraint`]: the kernel's `enum oom_constraint`.
pub mod constraint {
    pub const NONE: u16 = 0;
    pub const CPUSET: u16 = 1;
    pub const MEMORY_POLICY: u16 = 2;
    pub const MEMCG: u16 = 3;
}

/// Levels of the victim's cgroup path carried in an event, and bytes per level name: 128, so
/// that a container's scope arrives whole (`cri-containerd-<64 hex>.scope` is 92 bytes; 64 cut
/// every runtime's container id).
pub const CGROUP_DEPTH: usize = 8;
pub const CGROUP_NAME: usize = 128;

/// One record per `mark_victim`, sent through [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`kind::KILL`] or [`kind::MARK`].
    pub kind: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the mark.
    pub ktime_ns: u64,
    /// The victim's pid (thread id) as the tracepoint gives it, and its tgid (flags::TGID).
    pub pid: u32,
    pub tgid: u32,
    /// The task that invoked the OOM killer (`current` at the mark): its tid and tgid.
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    /// The victim's uid (flags::UID).
    pub uid: u32,
    /// The CPU the mark ran on.
    pub cpu: u32,
    /// kB, as the kernel's "Killed process" line gives them (flags::MEMORY).
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    /// The victim's oom_score_adj (flags::OOM_SCORE_ADJ).
    pub oom_score_adj: i16,
    /// [`constraint`] (flags::CONSTRAINT).
    pub constraint: u16,
    /// How many levels of `cgroup` are filled (flags::CGROUP).
    pub cgroup_depth: u16,
    /// The level of `cgroup` whose limit was hit (flags::OOM_CGROUP); `u16::MAX` when that
    /// cgroup is not among the levels carried.
    pub oom_cgroup_level: u16,
    /// Kernfs ids (the directories' inode numbers) of the victim's memory cgroup and of the one
    /// whose limit was hit.
    pub cgroup_id: u64,
    pub oom_cgroup_id: u64,
    /// The victim's comm, NUL-padded (flags::COMM).
    pub comm: [u8; 16],
    /// The trigger's comm, NUL-padded.
    pub trigger_comm: [u8; 16],
    /// The victim's memory cgroup, leaf first, one NUL-terminated name per level.
    pub cgroup: [[u8; CGROUP_NAME]; CGROUP_DEPTH],
}
const _: () = assert!(size_of::<Event>() == 1160);

impl Default for Event {
    fn default() -> Self {
        // SAFETY: all fields are integers or arrays of integers, for which zero is valid.
        unsafe { core::mem::zeroed() }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding: every bit pattern is
    // a valid value and there is no implicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Pending {}
    unsafe impl aya::Pod for super::Event {}
}

impl Event {
    /// Reads an event from the bytes of a ring-buffer record; `None` if too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked above; `Event` is plain old data valid for any bits; the
        // read is unaligned because ring-buffer records are only 8-byte aligned by contract.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The bytes of this event, as the kernel writes them.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Event` has no implicit padding (checked by the size assertion), so every
        // byte is initialised.
        unsafe {
            core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
        }
    }
}

/// The text before the first NUL of a fixed-size C string field.
pub fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_bytes() {
        let mut event = Event {
            kind: kind::KILL,
            flags: flags::COMM | flags::MEMORY | flags::CGROUP,
            ktime_ns: 0x0102_0304_0506_0708,
            pid: 4242,
            tgid: 4240,
            trigger_pid: 17,
            trigger_tgid: 16,
            uid: 1000,
            total_vm_kb: 1,
            anon_rss_kb: 2,
            file_rss_kb: 3,
            shmem_rss_kb: 4,
            pgtables_kb: 5,
            oom_score_adj: -17,
            constraint: constraint::MEMCG,
            cgroup_depth: 2,
            oom_cgroup_level: 1,
            cgroup_id: 99,
            oom_cgroup_id: 98,
            cpu: 1,
            trigger_comm: *b"0123456789abcdef",
            ..Event::default()
        };
        event.comm[..3].copy_from_slice(b"hog");
        event.cgroup[0][..4].copy_from_slice(b"leaf");
        let bytes = event.as_bytes().to_vec();
        assert_eq!(bytes.len(), 1160);
        assert_eq!(Event::from_bytes(&bytes), Some(event));
        // The kernel writes native-endian; the pid sits at offset 16, the path at 136.
        assert_eq!(&bytes[16..20], &4242u32.to_ne_bytes());
        assert_eq!(&bytes[136..140], b"leaf");
        assert_eq!(Event::from_bytes(&bytes[..647]), None);
        assert_eq!(c_str(&event.comm), b"hog");
        assert_eq!(c_str(&event.trigger_comm), b"0123456789abcdef");
    }

    #[test]
    fn counter_indexes_fit_the_map() {
        for index in [
            counter::KILLS,
            counter::MARKED,
            counter::EVENTS_DROPPED,
            counter::OOM_SIGNALS,
            counter::KILL_EVENTS_DROPPED,
            counter::KILLS_MEMCG,
            counter::KILLS_GLOBAL,
            counter::VERSION,
            counter::ATTACHED_AT_NS,
            counter::SEQ,
            counter::DROPS_SEEN,
        ] {
            assert!(index < counter::COUNT);
        }
    }
}
