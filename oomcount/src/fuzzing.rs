//! Entry points for the fuzz targets in `fuzz/` that the public API does not already offer.
//!
//! Each runs one parser on untrusted bytes the way the daemon runs it. Not an API: hidden from
//! the docs, and free to change with the fuzz targets.
use std::io::Cursor;

use oomcount_common::Config;

pub use crate::probe::tracefs::{Field, config_from_formats, parse_format};

use crate::{
    probe::btf::{Btf, BtfError},
    probe::offsets,
};

/// Reads `bytes` as BTF, asking for the names the daemon asks the kernel's BTF for, and fills a
/// program configuration from what was found, as the daemon does at start.
pub fn btf(bytes: &[u8]) -> Result<Config, BtfError> {
    let names = offsets::Names::of_table();
    let btf = Btf::read(
        Cursor::new(bytes),
        &names.structs,
        &names.members,
        &names.enumerators,
    )?;
    let mut config = Config::default();
    offsets::fill_from(&mut config, &btf, 16 * 1024);
    Ok(config)
}

/// Victims named by `data` (names split at each 0xFF byte; the first byte, the cgroup depth),
/// counted in the per-key tables as the daemon counts them, through the exposition as the port
/// and the textfile publish it; and `data` as the head of a request to the port.
pub fn metrics(data: &[u8]) -> String {
    use crate::metrics::{
        Snapshot,
        table::{Kill, Tally},
    };
    let (depth, names) = data
        .split_first()
        .map_or((0, data), |(d, rest)| (*d as usize, rest));
    let mut comms = Tally::new(8);
    let mut cgroups = Tally::new(8);
    for (n, name) in names.split(|&b| b == 0xFF).enumerate() {
        let kill = Kill {
            at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(n as u64),
            pid: n as u32,
            comm: Some(name),
        };
        comms.count_comm(kill);
        cgroups.count_cgroup(Some(name), depth % 10, kill);
    }
    crate::metrics::http::fuzz_head(data);
    crate::metrics::render(&Snapshot {
        kills: 0,
        by_constraint: Default::default(),
        marked: 0,
        events_dropped: 0,
        kernel_oom_kill: None,
        attached_at: std::time::UNIX_EPOCH,
        last_kill: None,
        verdict: None,
        keepalives: None,
        version: "0",
        cgroups: Some(&cgroups),
        comms: Some(&comms),
    })
}
