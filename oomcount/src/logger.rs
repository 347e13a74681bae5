//! A logger for the daemon: `oomcount: LEVEL: message` lines on stderr, which journald or the
//! terminal timestamps. A dozen lines here spare the daemon a logging crate's dependencies.
use std::io::Write as _;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Other crates' (aya's) debug output is about their internals, not the machine.
        let ours = metadata.target().starts_with("oomcount");
        metadata.level() <= log::max_level() && (ours || metadata.level() <= log::Level::Info)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            let _ = writeln!(
                std::io::stderr().lock(),
                "oomcount: {level}: {}",
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at `level` (once; later calls only change the level).
pub fn init(level: log::LevelFilter) {
    let _ = log::set_logger(&Stderr);
    log::set_max_level(level);
}
