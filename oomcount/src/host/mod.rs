//! Readings of the host outside the probe: the kernel's own counters and the daemon's
//! protection of itself ([`system`]), memory vitals ([`vitals`]), and the ranking of the likely
//! next victims ([`victims`]).
pub mod system;
pub mod victims;
pub mod vitals;
