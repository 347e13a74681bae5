//! The baselines the bench runs beside oomcount, installed with apt where missing, idempotently
//! and without starting their services: while apt runs, `/usr/sbin/policy-rc.d` exits 101 (the
//! Debian way to tell `invoke-rc.d` and `deb-systemd-invoke` not to start anything), and
//! watchdog(8) is then disabled at boot, so that nothing installed here may ever reboot the
//! machine. A package that cannot be installed is reported absent with the reason; the bench
//! goes on without it.
use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

/// The bench's name for each baseline, and its Debian package.
pub const BASELINES: &[(&str, &str)] = &[
    ("bpftrace", "bpftrace"),
    ("node_exporter", "prometheus-node-exporter"),
    ("watchdog", "watchdog"),
];

const POLICY: &str = "/usr/sbin/policy-rc.d";
const DENY_ALL: &str =
    "#!/bin/sh\n# cargo xtask bench: install without starting services\nexit 101\n";
const WATCHDOG_DEFAULTS: &str = "/etc/default/watchdog";

/// Installs what is missing; returns the baselines that are absent, with the reason.
pub fn baselines() -> Vec<(String, String)> {
    let missing: Vec<(&str, &str)> = BASELINES
        .iter()
        .copied()
        .filter(|(_, package)| !crate::setup::dpkg_installed(package))
        .collect();
    let mut absent = Vec::new();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        eprintln!(
            "bench: installing the baselines {} (apt-get, services not started)",
            packages.join(" ")
        );
        let policy = PolicyGuard::deny_all();
        if let Err(why) = &policy {
            eprintln!("bench: {why}; not installing");
        }
        let updated = policy.is_ok() && apt(&["update", "-q"]).is_ok();
        for (name, package) in missing {
            let outcome = if !updated {
                Err("apt-get update failed or services could not be held back".to_owned())
            } else {
                apt(&["install", "-y", "-q", "--no-install-recommends", package])
            };
            if let Err(why) = outcome {
                absent.push((
                    name.to_owned(),
                    format!("{package} could not be installed: {why}"),
                ));
            }
        }
        drop(policy);
    }
    if crate::setup::dpkg_installed("watchdog") {
        disable_watchdog_at_boot();
    }
    absent
}

fn apt(args: &[&str]) -> Result<(), String> {
    let output = Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args)
        .output()
        .map_err(|err| format!("apt-get: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!(
        "apt-get {} ({}): {last}",
        args.join(" "),
        output.status
    ))
}

/// `/usr/sbin/policy-rc.d` that denies every start, put back as it was on drop.
pub(crate) struct PolicyGuard {
    previous: Option<(Vec<u8>, u32)>,
    changed: bool,
}

impl PolicyGuard {
    pub(crate) fn deny_all() -> Result<PolicyGuard, String> {
        let previous = std::fs::read(POLICY).ok().map(|text| {
            let mode = std::fs::metadata(POLICY).map_or(0o755, |m| m.permissions().mode());
            (text, mode)
        });
        let already = previous.as_ref().is_some_and(|(text, _)| {
            String::from_utf8_lossy(text)
                .trim_end()
                .ends_with("exit 101")
        });
        if !already {
            std::fs::write(POLICY, DENY_ALL)
                .and_then(|()| {
                    std::fs::set_permissions(POLICY, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|err| format!("cannot write {POLICY}: {err}"))?;
        }
        Ok(PolicyGuard {
            previous,
            changed: !already,
        })
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        let restored = match &self.previous {
            Some((text, mode)) => std::fs::write(POLICY, text).and_then(|()| {
                std::fs::set_permissions(POLICY, std::fs::Permissions::from_mode(*mode))
            }),
            None => std::fs::remove_file(POLICY),
        };
        if let Err(err) = restored {
            eprintln!("bench: cannot restore {POLICY}: {err}");
        }
    }
}

/// Debian starts watchdog(8) and wd_keepalive at boot (sysvinit and systemd both read
/// `run_watchdog` and `run_wd_keepalive` in /etc/default/watchdog): turn both off.
fn disable_watchdog_at_boot() {
    let path = Path::new(WATCHDOG_DEFAULTS);
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let fixed: String = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key @ ("run_watchdog" | "run_wd_keepalive"), _)) => format!("{key}=0\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    if fixed != text {
        eprintln!("bench: disabling watchdog(8) at boot in {WATCHDOG_DEFAULTS}");
        if let Err(err) = std::fs::write(path, fixed) {
            eprintln!("bench: cannot write {WATCHDOG_DEFAULTS}: {err}");
        }
    }
}
