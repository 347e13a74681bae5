//! The machine's memory vitals: how much memory is left, and how much the lack of it stalls.
//!
//! An OOM kill comes after a squeeze that these show first: `MemAvailable` (what can be
//! allocated without swapping, page cache and reclaimable slab included) falling toward zero,
//! swap filling, and pressure stall information (PSI, Linux 4.20+) rising: the share of time
//! in which some (`some`) or all non-idle (`full`) tasks waited for memory. PSI is absent where
//! the kernel lacks it or has it off (`psi=0`, or `CONFIG_PSI_DEFAULT_DISABLED` without
//! `psi=1`); that is not an error. Values come from `/proc/meminfo` and
//! `/proc/pressure/memory`, read with `procfs`.
use std::{io, path::Path};

use procfs::{
    CpuPressure, Current as _, FromBufRead as _, Meminfo, MemoryPressure, PressureRecord, ProcError,
};
use serde::Serialize;

/// Where the kernel reports memory pressure.
pub(crate) const PRESSURE: &str = "/proc/pressure/memory";

/// What `oomcount status` reports about memory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Vitals {
    /// `MemTotal`, kB.
    pub mem_total_kb: u64,
    /// `MemAvailable`, kB (absent before Linux 3.14).
    pub mem_available_kb: Option<u64>,
    /// `SwapTotal` and `SwapFree`, kB.
    pub swap_total_kb: u64,
    pub swap_free_kb: u64,
    /// `/proc/pressure/memory`; `None` where the kernel has no PSI or has it off.
    pub psi: Option<MemoryPsi>,
}

/// Memory pressure stall information.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPsi {
    /// Some tasks stalled on memory.
    pub some: Psi,
    /// All non-idle tasks stalled on memory at once; `None` where the file has no `full` line.
    pub full: Option<Psi>,
}

/// One line of a PSI file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Psi {
    /// Percentage of the last 10, 60 and 300 seconds spent stalled.
    pub avg10: f32,
    pub avg60: f32,
    pub avg300: f32,
    /// Total stall time since boot, microseconds.
    pub total_us: u64,
}

impl From<PressureRecord> for Psi {
    fn from(r: PressureRecord) -> Self {
        Self {
            avg10: r.avg10,
            avg60: r.avg60,
            avg300: r.avg300,
            total_us: r.total,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VitalsError {
    #[error("cannot read /proc/meminfo")]
    Meminfo(#[source] ProcError),
    #[error("cannot read {PRESSURE}")]
    PressureRead(#[source] io::Error),
    #[error("cannot make sense of {PRESSURE}: {text:?}")]
    PressureParse {
        text: String,
        #[source]
        source: ProcError,
    },
}

/// This machine's memory vitals now.
pub fn read() -> Result<Vitals, VitalsError> {
    let meminfo = Meminfo::current().map_err(VitalsError::Meminfo)?;
    Ok(Vitals {
        mem_total_kb: meminfo.mem_total / 1024,
        mem_available_kb: meminfo.mem_available.map(|b| b / 1024),
        swap_total_kb: meminfo.swap_total / 1024,
        swap_free_kb: meminfo.swap_free / 1024,
        psi: pressure(Path::new(PRESSURE))?,
    })
}

/// The PSI file at `path`; `None` where there is none, or where the kernel has PSI off.
fn pressure(path: &Path) -> Result<Option<MemoryPsi>, VitalsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_pressure(&text).map(Some),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(None)
        }
        Err(err) => Err(VitalsError::PressureRead(err)),
    }
}

/// A memory PSI file's text. procfs's `MemoryPressure` wants both lines; where `full` is
/// missing, its `CpuPressure` (a `some` line alone, as `/proc/pressure/cpu` was before 5.13)
/// reads the `some` line.
fn parse_pressure(text: &str) -> Result<MemoryPsi, VitalsError> {
    if let Ok(both) = MemoryPressure::from_buf_read(text.as_bytes()) {
        return Ok(MemoryPsi {
            some: both.some.into(),
            full: Some(both.full.into()),
        });
    }
    CpuPressure::from_buf_read(text.as_bytes())
        .map(|only| MemoryPsi {
            some: only.some.into(),
            full: None,
        })
        .map_err(|source| VitalsError::PressureParse {
            text: text.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_lines() {
        let psi = parse_pressure(
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=176388169\n\
             full avg10=0.75 avg60=0.00 avg300=0.00 total=50542187\n",
        )
        .unwrap();
        assert_eq!(
            psi,
            MemoryPsi {
                some: Psi {
                    avg10: 1.5,
                    avg60: 0.25,
                    avg300: 0.0,
                    total_us: 176_388_169
                },
                full: Some(Psi {
                    avg10: 0.75,
                    avg60: 0.0,
                    avg300: 0.0,
                    total_us: 50_542_187
                }),
            }
        );
        assert_eq!(
            serde_json::to_string(&psi.some).unwrap(),
            r#"{"avg10":1.5,"avg60":0.25,"avg300":0.0,"total_us":176388169}"#
        );
    }

    #[test]
    fn full_may_be_absent() {
        let psi = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n").unwrap();
        assert_eq!(psi.some.total_us, 12);
        assert_eq!(psi.full, None);
    }

    #[test]
    fn garbage_is_an_error_that_shows_it() {
        let err = parse_pressure("pressure: lots\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot make sense of /proc/pressure/memory: "pressure: lots\n""#
        );
    }

    #[test]
    fn no_file_is_no_psi() {
        assert_eq!(
            pressure(Path::new("/nonexistent/pressure/memory")).unwrap(),
            None
        );
    }

    #[test]
    fn reads_this_machine() {
        let vitals = read().unwrap();
        assert!(vitals.mem_total_kb > 0);
        assert!(vitals.mem_available_kb.unwrap_or(0) <= vitals.mem_total_kb);
        assert!(vitals.swap_free_kb <= vitals.swap_total_kb);
        assert_eq!(
            vitals.psi.is_some(),
            std::fs::read_to_string(PRESSURE).is_ok(),
            "{vitals:?}"
        );
    }
}
