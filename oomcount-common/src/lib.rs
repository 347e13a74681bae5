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

/// Tracepoints the programs attach to, as (category, name).
pub const TP_MARK_VICTIM: (&str, &str) = ("oom", "mark_victim");
pub const TP_SIGNAL_GENERATE: (&str, &str) = ("signal", "signal_generate");

/// `PerCpuArray<u64>` of counters, indexed by [`counter`]; the user side sums the CPUs.
pub const MAP_COUNTERS: &str = "OOMCOUNT_COUNTERS";
/// `LruHashMap<u32, Pending>`: per task (tid), the last OOM-style SIGKILL it sent.
pub const MAP_PENDING: &str = "OOMCOUNT_PENDING";
/// `RingBuf` of [`Event`] records, one per mark (kill or not).
pub const MAP_EVENTS: &str = "OOMCOUNT_EVENTS";
/// The load-time global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "OOMCOUNT_CONFIG";

/// Entries of the pending-signal map. Each task that sends an OOM-style SIGKILL takes one until
/// its next mark or until the LRU evicts it; a real kill uses its entry within microseconds, so
/// the map only has to outlast the tasks that are between the two tracepoints at once.
pub const PENDING_ENTRIES: u32 = 4096;

/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
/// 64 KiB holds 64 KiB / (size_of::<Event>() + 8 bytes of header) = 512 events, kernel memory
/// that is paid once; userspace maps it and copies each event out as it arrives.
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// How long after an OOM-style SIGKILL a mark of the same pid by the same task still counts as
/// that kill. In `__oom_kill_process` the two are a few instructions apart in one task (no sleep
/// between them); the window only guards against a stale entry matching a much later mark.
pub const PAIR_WINDOW_NS: u64 = 50_000_000;

/// Indexes into [`MAP_COUNTERS`].
pub mod counter {
    /// Victims killed by the OOM killer: what `/proc/vmstat` `oom_kill` counts.
    pub const KILLS: u32 = 0;
    /// Every `mark_victim` event, including threads of a victim and victims already dying.
    pub const MARKED: u32 = 1;
    /// Events that did not fit in the ring buffer (the counters above are exact regardless).
    pub const EVENTS_DROPPED: u32 = 2;
    /// OOM-style SIGKILLs seen (SIGKILL, SI_KERNEL, to the whole group): kills and mm-sharers.
    pub const OOM_SIGNALS: u32 = 3;
    /// Number of counters; the size of the map.
    pub const COUNT: u32 = 8;
}

/// Values of `si_code` and signal numbers the kernel program compares against.
pub const SIGKILL: i32 = 9;
/// `SI_KERNEL`: the code of a signal sent with `SEND_SIG_PRIV`, as `__oom_kill_process` does.
pub const SI_KERNEL: i32 = 0x80;

/// "This field is absent on this kernel" for an offset in [`Config`]. Offset 0 is the common
/// trace header, never a field of an event's own, so it is free to mean absent.
pub const ABSENT: u32 = 0;

/// Where the fields the programs read sit in each tracepoint's record, read by the user side
/// from the tracepoints' `format` files at load time and handed to the kernel as a global.
/// Layouts differ between kernels (`mark_victim` had only `pid` before 6.9), so nothing here is
/// ever a compile-time constant.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `mark_victim`: `int pid`.
    pub mark_pid: u32,
    /// `mark_victim`: `__data_loc char[] comm` (new layout), or [`ABSENT`].
    pub mark_comm: u32,
    /// `mark_victim`: `unsigned long total_vm, anon_rss, file_rss, shmem_rss, pgtables` (kB).
    pub mark_total_vm: u32,
    pub mark_anon_rss: u32,
    pub mark_file_rss: u32,
    pub mark_shmem_rss: u32,
    pub mark_pgtables: u32,
    /// `mark_victim`: `uid_t uid`.
    pub mark_uid: u32,
    /// `mark_victim`: `short oom_score_adj`.
    pub mark_oom_score_adj: u32,
    /// `signal_generate`: `int sig`, `int code`, `char comm[16]`, `pid_t pid`, `int group`.
    pub sig_sig: u32,
    pub sig_code: u32,
    pub sig_comm: u32,
    pub sig_pid: u32,
    pub sig_group: u32,
    /// See [`PAIR_WINDOW_NS`].
    pub pair_window_ns: u64,
}
const _: () = assert!(size_of::<Config>() == 64);

/// What the signal program remembers for the task that sent an OOM-style SIGKILL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The pid (thread id) the SIGKILL was sent to.
    pub victim_pid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when it was sent.
    pub at_ns: u64,
    /// The victim's comm as `signal_generate` saw it (every kernel has it there).
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<Pending>() == 32);

/// Kinds of [`Event`].
pub mod kind {
    /// A victim killed by the OOM killer (counted in `kills`).
    pub const KILL: u32 = 1;
    /// A mark without a kill: another thread of a victim, or a victim already dying.
    pub const MARK: u32 = 2;
}

/// Bits of [`Event::flags`]: which optional fields were read from the kernel.
pub mod flags {
    /// `comm` holds the victim's comm.
    pub const COMM: u32 = 1 << 0;
    /// The memory fields, `uid` and `oom_score_adj` came from the tracepoint (new layout).
    pub const MEMORY: u32 = 1 << 1;
}

/// One record per `mark_victim`, sent through [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`kind::KILL`] or [`kind::MARK`].
    pub kind: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the mark.
    pub ktime_ns: u64,
    /// The victim's pid (thread id) as the tracepoint gives it.
    pub pid: u32,
    /// The task that invoked the OOM killer (`current` at the mark): its tid and tgid.
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    /// The victim's uid (flags::MEMORY).
    pub uid: u32,
    /// kB, as the kernel's "Killed process" line gives them (flags::MEMORY).
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    /// The victim's oom_score_adj (flags::MEMORY).
    pub oom_score_adj: i16,
    pub _pad: [u8; 2],
    /// The CPU the mark ran on.
    pub cpu: u32,
    /// The victim's comm, NUL-padded (flags::COMM).
    pub comm: [u8; 16],
    /// The trigger's comm, NUL-padded.
    pub trigger_comm: [u8; 16],
}
const _: () = assert!(size_of::<Event>() == 112);

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
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"hog\0");
        let event = Event {
            kind: kind::KILL,
            flags: flags::COMM | flags::MEMORY,
            ktime_ns: 0x0102_0304_0506_0708,
            pid: 4242,
            trigger_pid: 17,
            trigger_tgid: 16,
            uid: 1000,
            total_vm_kb: 1,
            anon_rss_kb: 2,
            file_rss_kb: 3,
            shmem_rss_kb: 4,
            pgtables_kb: 5,
            oom_score_adj: -17,
            cpu: 1,
            comm,
            trigger_comm: *b"0123456789abcdef",
            ..Event::default()
        };
        let bytes = event.as_bytes().to_vec();
        assert_eq!(bytes.len(), 112);
        assert_eq!(Event::from_bytes(&bytes), Some(event));
        // The kernel writes little-endian; the pid sits at offset 16.
        assert_eq!(&bytes[16..20], &4242u32.to_ne_bytes());
        assert_eq!(Event::from_bytes(&bytes[..111]), None);
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
        ] {
            assert!(index < counter::COUNT);
        }
    }
}
