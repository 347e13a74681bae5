//! The daemon's keepalive: weighs each kill as it arrives, and at each interval judges the
//! machine and pings the watchdog (and systemd) only while the verdict is recoverable.
//!
//! Event-driven where it can be: a kill is judged the moment the kernel reports it, so that an
//! unrecoverable verdict stops the very next keepalive. The interval timer exists only when
//! something must be pinged (a device, `--dry-run`, or systemd's `WatchdogSec`); without one the
//! daemon judges only when asked (`oomcount check`, `status`).
use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    probe::event::monotonic,
    watchdog::{
        device::{Device, WDIOF_MAGICCLOSE, WatchdogError},
        rules::{Health, Kill, Monitor, Pressure, Verdict},
    },
};

/// What `oomcount status` and `check --explain` show of the keepalive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperState {
    /// The watchdog device pinged, if any.
    pub device: Option<String>,
    /// Its driver's identity (GETSUPPORT), where it has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub identity: Option<String>,
    /// The driver's timeout in seconds, where it says.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout_secs: Option<u64>,
    /// Milliseconds between keepalives, when something is pinged.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub interval_ms: Option<u64>,
    /// Deciding and logging without a device.
    pub dry_run: bool,
    /// Pinging systemd's service watchdog (`WATCHDOG=1`).
    pub systemd: bool,
    /// Whether keepalives still go out (false once unrecoverable).
    pub pinging: bool,
    pub keepalives: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_keepalive: Option<String>,
}

impl std::fmt::Display for KeeperState {
    /// One line: what is pinged, how often, and whether it still is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut what = Vec::new();
        if let Some(device) = &self.device {
            let mut text = device.clone();
            if let Some(identity) = self.identity.as_ref().filter(|i| !i.is_empty()) {
                text += &format!(" ({identity})");
            }
            if let Some(timeout) = self.timeout_secs {
                text += &format!(" timeout {timeout}s");
            }
            what.push(text);
        }
        if self.dry_run {
            what.push("dry run (no device)".to_owned());
        }
        if self.systemd {
            what.push("systemd WatchdogSec".to_owned());
        }
        let Some(interval) = self.interval_ms else {
            return f.write_str("nothing pinged (no [watchdog] in the config)");
        };
        write!(
            f,
            "{}, every {}, {} keepalives",
            what.join(" and "),
            humantime::format_duration(std::time::Duration::from_millis(interval)),
            self.keepalives
        )?;
        if let Some(last) = &self.last_keepalive {
            write!(f, ", last at {last}")?;
        }
        f.write_str(if self.pinging {
            ""
        } else {
            "; stopped: unrecoverable"
        })
    }
}

pub(crate) struct Keeper {
    monitor: Monitor,
    device: Option<Device>,
    dry_run: bool,
    nowayout: bool,
    /// systemd's service watchdog period (`$WATCHDOG_USEC`), when it asks for pings.
    systemd: Option<Duration>,
    interval: Option<Duration>,
    verdict: Verdict,
    keepalives: u64,
    last_keepalive: Option<SystemTime>,
    /// The last keepalive error, logged once until it changes.
    ping_error: Option<String>,
    /// When this daemon latched the unrecoverable verdict, until the daemon has kept it with
    /// the pins ([`Keeper::take_newly_latched`]).
    newly_latched: Option<SystemTime>,
    /// The last change of health not yet taken by the daemon (for `on_verdict`): the health
    /// before, and the verdict now.
    change: Option<(Health, Verdict)>,
    /// The likely next victims' names, most likely first, as last ranked
    /// ([`Keeper::set_likely`]): judging never scans /proc itself.
    likely: Vec<String>,
}

impl Keeper {
    /// Opens (and arms) the configured device, unless `dry_run`, or unless an earlier daemon
    /// judged the machine unrecoverable at `latched` (kept with the pins): then the verdict
    /// starts there, and the device is left alone, since opening it (and setting its timeout)
    /// would ping it and put off the reset that verdict called for.
    pub(crate) fn new(
        config: &Config,
        dry_run: bool,
        latched: Option<SystemTime>,
    ) -> Result<Keeper, WatchdogError> {
        let watchdog = config.watchdog.clone().unwrap_or_default();
        let path: Option<PathBuf> = config
            .watchdog
            .as_ref()
            .filter(|w| !w.device.as_os_str().is_empty())
            .map(|w| w.device.clone());
        let mut monitor = Monitor::new(config.rules.clone());
        let mut verdict = Verdict {
            health: Health::Healthy,
            reason: String::new(),
        };
        if let Some(at) = latched {
            verdict = monitor.latch(format!(
                "judged unrecoverable at {} by an earlier oomcount daemon (its log says why); latched until reboot or `oomcount detach`",
                humantime::format_rfc3339_seconds(at)
            ));
            log::error!(
                "{}{}",
                verdict.reason,
                match (&path, dry_run) {
                    (Some(path), false) => format!(
                        "; {} is not opened, so that its reset comes",
                        path.display()
                    ),
                    _ => String::new(),
                }
            );
        }
        let device = match (&path, dry_run, latched) {
            (Some(path), false, None) => Some(open(config, path)?),
            _ => None,
        };
        if watchdog.realtime {
            crate::host::system::realtime();
        }
        let systemd = sd_notify::watchdog_enabled();
        // The device's interval, and half of systemd's WATCHDOG_USEC (it asks for a ping
        // within it): the shorter of those that apply.
        let own = (device.is_some() || dry_run).then_some(watchdog.interval);
        let interval = own.into_iter().chain(systemd.map(|usec| usec / 2)).min();
        if let Some(device) = &device {
            let timeout = device
                .timeout()
                .map_or("the driver's timeout".to_owned(), |t| {
                    format!("timeout {}s", t.as_secs())
                });
            log::info!(
                "watchdog {} ({}) armed, {timeout}, keepalive every {}",
                device.path().display(),
                if device.has_ioctls() {
                    device.identity()
                } else {
                    "no ioctls: pinged by writes".to_owned()
                },
                humantime::format_duration(watchdog.interval)
            );
        } else if dry_run {
            log::info!(
                "dry run: judging every {} without a watchdog device",
                humantime::format_duration(watchdog.interval)
            );
        }
        Ok(Keeper {
            monitor,
            device,
            dry_run,
            nowayout: watchdog.nowayout,
            systemd,
            interval,
            verdict,
            keepalives: 0,
            last_keepalive: None,
            ping_error: None,
            newly_latched: None,
            change: None,
            likely: Vec::new(),
        })
    }

    /// How often [`Keeper::tick`] must run; `None` when nothing is pinged.
    pub(crate) fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// How many likely next victims the rules look at (0: no need to rank processes).
    pub(crate) fn likely_needed(&self) -> usize {
        let rules = self.monitor.rules();
        if rules.critical.is_empty() {
            0
        } else {
            rules.critical_top
        }
    }

    /// Records a kill; the next [`Keeper::judge`] (the daemon's, right after each batch of
    /// events) weighs it.
    pub(crate) fn kill(&mut self, kill: Kill) {
        self.monitor.kill(kill);
    }

    /// States a fault that leaves the rules in part blind: never healthy from now on.
    pub(crate) fn fault(&mut self, reason: String) {
        self.monitor.fault(reason);
    }

    /// The likely next victims' names, most likely first, for the judgements from now on.
    ///
    /// Ranking them is a scan of /proc, which takes milliseconds to seconds with the number of
    /// processes: the daemon does it on a thread of its own, at most once a second, and hands
    /// the result in here, so that neither a keepalive nor an answer to `check` waits for one.
    pub(crate) fn set_likely(&mut self, likely: Vec<String>) {
        self.likely = likely;
    }

    /// Judges now, from memory as it is now and the likely victims as last ranked, logging each
    /// change of health once.
    pub(crate) fn judge(&mut self) -> Verdict {
        let pressure = pressure();
        let likely = std::mem::take(&mut self.likely);
        let verdict = self.judge_with(monotonic(), pressure, &likely);
        self.likely = likely;
        verdict
    }

    fn judge_with(&mut self, now: Duration, pressure: Pressure, likely: &[String]) -> Verdict {
        let verdict = self.monitor.judge(now, pressure, likely);
        if verdict.health != self.verdict.health {
            match verdict.health {
                Health::Unrecoverable => {
                    let what = match (&self.device, self.dry_run) {
                        (Some(device), _) => format!(
                            "no more keepalives: {} resets the machine within {}",
                            device.path().display(),
                            device
                                .timeout()
                                .map_or("its timeout".to_owned(), |t| format!("{}s", t.as_secs()))
                        ),
                        (None, true) => "dry run: keepalives would stop here".to_owned(),
                        (None, false) => "oomcount check now fails".to_owned(),
                    };
                    log::error!("unrecoverable: {}; {what}", verdict.reason);
                    self.newly_latched = Some(SystemTime::now());
                }
                Health::Degraded => log::warn!("degraded: {}", verdict.reason),
                Health::Healthy => log::info!("healthy again"),
            }
            // Several changes between two looks: the health before the first, the last verdict.
            let before = self.change.take().map_or(self.verdict.health, |(b, _)| b);
            self.change = Some((before, verdict.clone()));
        }
        self.verdict = verdict.clone();
        verdict
    }

    /// The verdict last judged (without judging again).
    pub(crate) fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// At each interval: judge, then ping while recoverable.
    pub(crate) fn tick(&mut self) {
        let verdict = self.judge();
        if !verdict.health.recoverable() {
            return;
        }
        if let Some(device) = &mut self.device {
            match device.keepalive() {
                Ok(()) => self.ping_error = None,
                Err(err) => {
                    let err = err.to_string();
                    if self.ping_error.as_ref() != Some(&err) {
                        log::error!("keepalive to {}: {err}", device.path().display());
                        self.ping_error = Some(err);
                    }
                    return;
                }
            }
        }
        if self.systemd.is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        self.keepalives += 1;
        self.last_keepalive = Some(SystemTime::now());
        log::debug!("keepalive {} ({})", self.keepalives, verdict.health);
    }

    /// When this daemon judged the machine unrecoverable, once (then `None`): for the daemon
    /// to keep with the pins, so that a daemon started after this one keeps the verdict.
    pub(crate) fn take_newly_latched(&mut self) -> Option<SystemTime> {
        self.newly_latched.take()
    }

    /// The health last judged (by a keepalive, a batch of events or a request).
    pub(crate) fn health(&self) -> Health {
        self.verdict.health
    }

    /// Keepalives sent, where something is pinged.
    pub(crate) fn keepalives(&self) -> Option<u64> {
        self.interval.map(|_| self.keepalives)
    }

    /// The change of health since the last call, if any: the health before, the verdict now.
    pub(crate) fn take_change(&mut self) -> Option<(Health, Verdict)> {
        self.change.take()
    }

    pub(crate) fn state(&self) -> KeeperState {
        KeeperState {
            device: self.device.as_ref().map(|d| d.path().display().to_string()),
            identity: self
                .device
                .as_ref()
                .filter(|d| d.has_ioctls())
                .map(Device::identity),
            timeout_secs: self
                .device
                .as_ref()
                .and_then(Device::timeout)
                .map(|t| t.as_secs()),
            interval_ms: self.interval.map(|i| i.as_millis() as u64),
            dry_run: self.dry_run,
            systemd: self.systemd.is_some(),
            pinging: self.interval.is_some() && self.verdict.health.recoverable(),
            keepalives: self.keepalives,
            last_keepalive: self
                .last_keepalive
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        }
    }

    /// A clean stop: disarm with the magic 'V', unless `nowayout`, or unless the machine was
    /// judged unrecoverable (stopping the daemon must not cancel that reset).
    pub(crate) fn stop(&mut self) {
        let Some(device) = self.device.take() else {
            return;
        };
        let path = device.path().display().to_string();
        if !self.verdict.health.recoverable() {
            log::warn!(
                "leaving {path} armed: the machine was judged unrecoverable ({})",
                self.verdict.reason
            );
            device.leave_armed();
        } else if self.nowayout {
            log::warn!("leaving {path} armed (nowayout): it fires unless someone else pings it");
            device.leave_armed();
        } else {
            let magic = device.options() & WDIOF_MAGICCLOSE != 0 || !device.has_ioctls();
            match device.disarm() {
                Ok(_) if magic => log::info!("{path} disarmed (magic close)"),
                Ok(_) => log::warn!(
                    "{path} closed, but its driver has no magic close: it may still fire"
                ),
                Err(err) => log::error!("cannot disarm {path} ({err}): it may still fire"),
            }
        }
    }
}

/// Opens (arms) the configured device and checks the keepalive interval against the timeout
/// the driver then reports, before any keepalive: an interval at or above it would let the
/// watchdog fire between keepalives, a reset nobody asked for. Refused, the device is closed with
/// the magic 'V' (as when the driver refuses the timeout): nothing was pinged, so this start
/// leaves the device as it found it where the driver allows.
fn open(config: &Config, path: &std::path::Path) -> Result<Device, WatchdogError> {
    let timeout = config.watchdog.as_ref().and_then(|w| w.timeout);
    let device = Device::open(path, timeout)?;
    if let Some(driver) = device.timeout()
        && let Err(err) = config.check_driver_timeout(path, driver)
    {
        if let Err(close) = device.disarm() {
            log::error!("cannot disarm {} ({close}): it may fire", path.display());
        }
        return Err(err.into());
    }
    Ok(device)
}

/// Memory now; a figure the kernel does not give is left out of the judgement.
fn pressure() -> Pressure {
    match crate::host::vitals::read() {
        Ok(vitals) => Pressure {
            mem_available: vitals.mem_available_kb.map(|kb| kb * 1024),
            psi_full_avg10: vitals
                .psi
                .and_then(|psi| psi.full)
                .map(|full| f64::from(full.avg10)),
        },
        Err(err) => {
            log::debug!("memory figures: {err}");
            Pressure::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(device: &str) -> Config {
        let text = format!("[watchdog]\ndevice = \"{device}\"\ninterval = \"1s\"\n");
        Config::parse(Path::new("test.toml"), &text).unwrap()
    }

    #[test]
    fn a_verdict_kept_by_an_earlier_daemon_holds_and_the_device_is_not_opened() {
        // A device that cannot be opened: the latched keeper must not try.
        let config = config("/nonexistent/oomcount-test-watchdog");
        assert!(
            Keeper::new(&config, false, None).is_err(),
            "without a latch the device is opened"
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut keeper = Keeper::new(&config, false, Some(at)).expect("nothing is opened");
        let verdict = keeper.judge_with(Duration::from_secs(1), Pressure::default(), &[]);
        assert_eq!(verdict.health, Health::Unrecoverable);
        assert!(
            verdict
                .reason
                .contains("2027-01-15T08:00:00Z by an earlier oomcount daemon"),
            "{}",
            verdict.reason
        );
        assert_eq!(keeper.state().device, None);
        assert!(!keeper.state().pinging);
        // Not this daemon's to keep again.
        assert_eq!(keeper.take_newly_latched(), None);
    }

    #[test]
    fn this_daemon_latching_is_handed_out_once() {
        let config = Config::parse(
            Path::new("test.toml"),
            "[rules]\ncritical = [\"xenstored\"]\nconstraint = \"any\"\n",
        )
        .unwrap();
        let mut keeper = Keeper::new(&config, true, None).unwrap();
        keeper.kill(Kill {
            at: Duration::from_secs(1),
            pid: 42,
            comm: Some("xenstored".into()),
            constraint: Some(crate::probe::event::Constraint::Memcg),
            cgroup: None,
        });
        let verdict = keeper.judge_with(Duration::from_secs(2), Pressure::default(), &[]);
        assert_eq!(verdict.health, Health::Unrecoverable);
        assert!(keeper.take_newly_latched().is_some());
        keeper.judge_with(Duration::from_secs(3), Pressure::default(), &[]);
        assert_eq!(keeper.take_newly_latched(), None);
    }
}
