//! The BTF reader on any bytes, asked for what the daemon asks the kernel's BTF for, and the
//! program configuration filled from the answers (`offsets::fill_from`).
//!
//! The kernel's BTF is trusted (root-owned, from the kernel itself), but a reader that panics,
//! hangs or grows on a malformed or unexpected file would stop the daemon at start. What it
//! fills must keep the programs' contract: `oom_control` members inside the bytes they copy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomcount_common::{OC_BYTES, feature};

fuzz_target!(|data: &[u8]| {
    let Ok(config) = oomcount::fuzzing::btf(data) else {
        return;
    };
    if config.features & feature::OOM_CONTROL != 0 {
        for (offset, size) in [
            (config.oom_control.memcg, 8),
            (config.oom_control.chosen, 8),
            (config.oom_control.zonelist, 8),
            (config.oom_control.nodemask, 8),
            (config.oom_control.totalpages, 8),
            (config.oom_control.constraint, 4),
            (config.oom_control.order, 4),
            (config.oom_control.gfp_mask, 4),
        ] {
            assert!(
                offset % size == 0 && offset + size <= OC_BYTES,
                "{config:?}"
            );
        }
    }
});
