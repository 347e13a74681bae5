//! The tracefs `format` parser and the layout built from it, on any text.
//!
//! An input is two format files, `oom/mark_victim`'s and `signal/signal_generate`'s, joined by a
//! NUL byte (the seeds are this machine's and the pre-6.9 layout). A layout that is accepted
//! must come from fields of the named sizes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oomcount::fuzzing::{Field, config_from_formats, parse_format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mark, signal) = text.split_once('\0').unwrap_or((text, ""));
    let (mark, signal) = (parse_format(mark), parse_format(signal));
    for field in mark.iter().chain(&signal) {
        assert!(
            !field
                .name
                .contains(|c: char| c.is_whitespace() || c == '*' || c == '['),
            "{field:?}"
        );
    }
    let Ok(config) = config_from_formats(
        &mark,
        &signal,
        Path::new("mark_victim/format"),
        Path::new("signal_generate/format"),
    ) else {
        return;
    };
    let has = |fields: &[Field], name: &str, size: u32, offset: u32| {
        fields
            .iter()
            .any(|f| f.name == name && f.size == size && f.offset == offset)
    };
    assert!(has(&mark, "pid", 4, config.mark_victim.pid));
    assert!(has(&signal, "sig", 4, config.signal_generate.sig));
    assert!(has(&signal, "code", 4, config.signal_generate.code));
    assert!(has(&signal, "comm", 16, config.signal_generate.comm));
    assert!(has(&signal, "pid", 4, config.signal_generate.pid));
    assert!(has(&signal, "group", 4, config.signal_generate.group));
});
