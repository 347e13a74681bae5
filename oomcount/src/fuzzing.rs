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
