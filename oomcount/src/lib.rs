//! oomcount: the OOM killer's exact body count, from eBPF.
//!
//! The library owns everything but argument parsing: loading and attaching the kernel programs
//! ([`probe`]), tracefs and tracepoint layouts ([`tracefs`]), the daemon ([`daemon`]) and its
//! socket protocol ([`protocol`]). The `oomcount` binary is a thin shell over [`cli`].
pub mod btf;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod event;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod keeper;
pub mod logger;
pub mod offsets;
pub mod pins;
pub mod probe;
pub mod protocol;
pub mod rules;
pub mod slots;
pub mod stat;
pub mod system;
pub mod tracefs;
pub mod victims;
pub mod vitals;
pub mod watchdog;
pub mod xen;
