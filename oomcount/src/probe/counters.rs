//! The counter map: the kernel's counts and the daemon's slots, one per-CPU `u64` array.
//!
//! The programs add to their own CPU's copy of a counter without atomics; a count is the sum
//! of the copies. This is the one place that sums them and the one place that writes a slot,
//! for the daemon's probe and for pins read without a daemon alike.
use std::os::fd::{AsFd as _, BorrowedFd};

use aya::maps::{IterableMap as _, MapData, MapError, PerCpuArray, PerCpuValues};
use oomcount_common::counter;

/// The counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub kills: u64,
    pub marked: u64,
    pub events_dropped: u64,
    pub kill_events_dropped: u64,
    pub oom_signals: u64,
    pub kills_memcg: u64,
    pub kills_global: u64,
    /// Of `kill_events_dropped`, those the kernel split as memcg and as other (global) kills.
    pub kill_events_dropped_memcg: u64,
    pub kill_events_dropped_global: u64,
}

/// Counter values by index, carried from old pins to new ones.
pub(crate) type ValuesByIndex = Vec<(u32, u64)>;

/// The counter map, loaded or opened from its pin.
pub(crate) struct CounterMap(PerCpuArray<MapData, u64>);

impl CounterMap {
    pub(crate) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self(map)
    }

    /// Counter or slot `index`, summed over CPUs.
    pub(crate) fn get(&self, index: u32) -> Result<u64, MapError> {
        Ok(self.0.get(&index, 0)?.iter().sum())
    }

    /// Writes `value` to CPU 0's copy of slot `index` and zero to the others, so that the sum
    /// is `value`.
    pub(crate) fn set(&mut self, index: u32, value: u64) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| MapError::IoError(err))?;
        let mut values = vec![0u64; cpus];
        values[0] = value;
        let values = PerCpuValues::try_from(values).map_err(MapError::IoError)?;
        self.0.set(index, values, 0)
    }

    /// Every counter the programs keep.
    pub(crate) fn counters(&self) -> Result<Counters, MapError> {
        Ok(Counters {
            kills: self.get(counter::KILLS)?,
            marked: self.get(counter::MARKED)?,
            events_dropped: self.get(counter::EVENTS_DROPPED)?,
            kill_events_dropped: self.get(counter::KILL_EVENTS_DROPPED)?,
            oom_signals: self.get(counter::OOM_SIGNALS)?,
            kills_memcg: self.get(counter::KILLS_MEMCG)?,
            kills_global: self.get(counter::KILLS_GLOBAL)?,
            kill_events_dropped_memcg: self.get(counter::KILL_EVENTS_DROPPED_MEMCG)?,
            kill_events_dropped_global: self.get(counter::KILL_EVENTS_DROPPED_GLOBAL)?,
        })
    }

    /// The map's descriptor, to pin it or hold it.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.map().fd().as_fd()
    }
}
