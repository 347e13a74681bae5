//! `oomcount config check [FILE]`: validates the daemon's configuration without starting it.
//!
//! The same parser and checks as the daemon's, so that a file that passes here cannot stop the
//! daemon at start; the error names the file, the line and the key.
use std::path::PathBuf;

use oomcount::config::{Config, DEFAULT_PATH};

pub use oomcount_args::config::Args;

pub use oomcount_args::config::Command;

pub fn run(args: Args) -> anyhow::Result<()> {
    let Command::Check { file } = args.command;
    // As the daemon reads it: the default file may be absent, a named one may not.
    let config = Config::load(file.as_deref())?;
    let path = file.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    if path.exists() {
        println!("{}: ok", path.display());
    } else {
        println!("{}: absent, so the defaults apply", path.display());
    }
    match &config.watchdog {
        Some(w) if !w.device.as_os_str().is_empty() => println!(
            "watchdog: {} timeout {} keepalive every {}{}",
            w.device.display(),
            w.timeout.map_or(
                "(the driver's; the daemon refuses to start unless interval is below it)"
                    .to_owned(),
                |t| humantime::format_duration(t).to_string()
            ),
            humantime::format_duration(w.interval),
            if w.nowayout { ", nowayout" } else { "" }
        ),
        Some(_) => println!("watchdog: no device (device = \"\"); the verdict is served"),
        None => println!("watchdog: none (no [watchdog] table); the verdict is served"),
    }
    let h = &config.hooks;
    if h.on_kill.is_none() && h.on_verdict.is_none() {
        println!("hooks: none");
    } else {
        let show = |argv: &Option<Vec<String>>| {
            argv.as_ref()
                .map_or("none".to_owned(), |argv| format!("{argv:?}"))
        };
        println!(
            "hooks: on_kill {} on_verdict {}, as user {}, at most {} at once, killed after {}",
            show(&h.on_kill),
            show(&h.on_verdict),
            h.user,
            h.max_running,
            humantime::format_duration(h.timeout)
        );
    }
    let r = &config.rules;
    println!(
        "rules: unrecoverable above {} {}OOM kills within {}{}; degraded for {} after one, below {} MemAvailable, above {}% PSI full avg10{}",
        r.max_kills,
        r.constraint,
        humantime::format_duration(r.window),
        if r.critical.is_empty() {
            String::new()
        } else {
            format!(", or one kill of {}", r.critical.join(", "))
        },
        humantime::format_duration(r.quiet),
        bytesize::ByteSize(r.mem_available_min).display().iec(),
        r.psi_full_avg10_max,
        if r.critical_top > 0 && !r.critical.is_empty() {
            format!(
                ", or with a critical process among the {} likely next victims",
                r.critical_top
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
