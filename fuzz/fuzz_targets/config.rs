//! The configuration file's parser and checks on any text.
//!
//! A file is either accepted, and then keeps the promises the checks make, or refused with one
//! line that names a line of the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oomcount::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("/etc/oomcount/oomcount.toml"), text) {
        Ok(config) => {
            if let Some(watchdog) = &config.watchdog {
                assert!(!watchdog.interval.is_zero());
                if let Some(timeout) = watchdog.timeout {
                    assert!(watchdog.interval < timeout, "{watchdog:?}");
                }
            }
            assert!(!config.rules.window.is_zero());
        }
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains(char::is_control), "one line: {message:?}");
            if let ConfigError::Invalid { line, .. } = err {
                let lines = text.matches('\n').count() + 1;
                assert!((1..=lines).contains(&line), "line {line} of {lines}");
            }
        }
    }
});
