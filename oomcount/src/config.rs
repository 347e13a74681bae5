//! The daemon's configuration file: the watchdog device and the rules that judge OOM activity.
//!
//! TOML, every key optional with the default documented on [`Watchdog`] and [`Rules`]. The file
//! is read once at start; a bad one stops the daemon before it touches the watchdog, with one
//! line naming the file, the line and the key (`oomcount config check FILE` says the same
//! without starting anything). The default path may be absent: the daemon then counts and
//! judges with the default rules, and pings no watchdog. A `[watchdog]` table turns the pinger
//! on, with `/dev/watchdog` unless `device` says otherwise.
use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/oomcount/oomcount.toml";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `None` without a `[watchdog]` table: no device is opened.
    pub watchdog: Option<Watchdog>,
    pub rules: Rules,
}

/// `[watchdog]`: the device the daemon keeps alive while things are recoverable.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watchdog {
    /// `device`, default `/dev/watchdog`; `""` for none (the verdict is still served to
    /// `oomcount check` and systemd).
    pub device: PathBuf,
    /// `timeout`, set with WDIOC_SETTIMEOUT when given; default: the driver's own.
    #[serde(deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// `interval` between keepalives, default 10 s; must be below the timeout.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// `nowayout`, default false: when true, never write the magic 'V', so that stopping the
    /// daemon cannot disarm the watchdog.
    pub nowayout: bool,
    /// `realtime`, default false: run the daemon at SCHED_FIFO priority 1, as watchdog(8) does,
    /// so that keepalives and events are not delayed by busy processes. Its socket serves any
    /// local user, so requests then run at that priority too (bounded by the kernel's RT
    /// throttling, `sched_rt_runtime_us`).
    pub realtime: bool,
}

impl Default for Watchdog {
    fn default() -> Self {
        Self {
            device: PathBuf::from("/dev/watchdog"),
            timeout: None,
            interval: Duration::from_secs(10),
            nowayout: false,
            realtime: false,
        }
    }
}

/// Which kills the `max_kills` rule counts, by the OOM killer's constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Kills not caused by a memory cgroup's limit: the machine itself ran out.
    Global,
    /// Kills by a memory cgroup's limit.
    Memcg,
    /// Every kill.
    Any,
}

impl Scope {
    /// Whether a kill with this constraint (`None`: unknown) counts. A kill whose constraint
    /// could not be read (a `memory.oom.group` member, a lost event) counts only for `any`.
    pub fn counts(self, constraint: Option<&str>) -> bool {
        match self {
            Scope::Any => true,
            Scope::Global => constraint == Some("global"),
            Scope::Memcg => constraint == Some("memcg"),
        }
    }
}

impl fmt::Display for Scope {
    /// As an adjective before "OOM kills".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Global => "global ",
            Scope::Memcg => "memcg ",
            Scope::Any => "",
        })
    }
}

/// `[rules]`: when OOM activity stops being recoverable.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// `max_kills`, default 3: more kills than this within `window` is unrecoverable.
    pub max_kills: u32,
    /// `window`, default 5 min.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// `constraint`, default `global`: which kills `max_kills` counts.
    pub constraint: Scope,
    /// `critical`, default none: one kill of a process matching one of these is unrecoverable:
    /// a name (`comm`), `cgroup:/PATH` or `unit:NAME.service` ([`crate::rules::Critical`]).
    pub critical: Vec<String>,
    /// `critical_top`, default 0 (off): degraded while a critical process is among this many
    /// likely next victims (by `oom_score`).
    pub critical_top: usize,
    /// `quiet`, default 10 min: how long after the last kill or strain things stay degraded.
    #[serde(deserialize_with = "duration")]
    pub quiet: Duration,
    /// `mem_available_min`, default 32 MiB: degraded below this MemAvailable; `0` for off.
    #[serde(deserialize_with = "bytes")]
    pub mem_available_min: u64,
    /// `psi_full_avg10_max`, default 60.0: degraded above this share of time (%) in which every
    /// task stalled on memory (where /proc/pressure/memory exists); 100 for off.
    pub psi_full_avg10_max: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_kills: 3,
            window: Duration::from_secs(300),
            constraint: Scope::Global,
            critical: Vec::new(),
            critical_top: 0,
            quiet: Duration::from_secs(600),
            mem_available_min: 32 << 20,
            psi_full_avg10_max: 60.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path} ({source}): fix the path given with --config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path:line: key: what`, one line.
    #[error("{path}:{line}: {key}{message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads `path`; `None` means the default path, which may be absent (defaults, no watchdog).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, optional) = match path {
            Some(path) => (path, false),
            None => (Path::new(DEFAULT_PATH), true),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(err) if optional && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and checks `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| {
            let at = err.span().map_or(0, |span| span.start);
            invalid(path, text, at, err.message().trim())
        })?;
        config.check(path, text)?;
        Ok(config)
    }

    /// What types cannot say: values that contradict each other or make no sense.
    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let fail = |table: &str, key: &str, message: String| {
            let at = locate(text, table, key);
            Err(invalid(path, text, at, &message))
        };
        if let Some(watchdog) = &self.watchdog {
            if watchdog.interval.is_zero() {
                return fail("watchdog", "interval", "must be above 0".to_owned());
            }
            if let Some(timeout) = watchdog.timeout {
                if timeout < Duration::from_secs(1) || timeout.subsec_nanos() != 0 {
                    return fail(
                        "watchdog",
                        "timeout",
                        "must be whole seconds, at least 1s (the driver counts seconds)".to_owned(),
                    );
                }
                if watchdog.interval >= timeout {
                    return fail(
                        "watchdog",
                        "interval",
                        format!(
                            "{} is not below the timeout {}: the watchdog would fire between keepalives",
                            humantime::format_duration(watchdog.interval),
                            humantime::format_duration(timeout)
                        ),
                    );
                }
            }
        }
        let rules = &self.rules;
        if rules.max_kills as usize >= crate::rules::MAX_REMEMBERED {
            return fail(
                "rules",
                "max_kills",
                format!(
                    "must be below {} (the kills the rules remember)",
                    crate::rules::MAX_REMEMBERED
                ),
            );
        }
        if rules.window.is_zero() {
            return fail("rules", "window", "must be above 0".to_owned());
        }
        if !(0.0..=100.0).contains(&rules.psi_full_avg10_max) {
            return fail(
                "rules",
                "psi_full_avg10_max",
                "is a percentage: 0 to 100 (100 for off)".to_owned(),
            );
        }
        if let Some(err) = rules
            .critical
            .iter()
            .find_map(|entry| crate::rules::Critical::parse(entry).err())
        {
            return fail("rules", "critical", err);
        }
        Ok(())
    }
}

/// An error at byte `at` of `text`: its line, and the key written there (or the table's).
fn invalid(path: &Path, text: &str, at: usize, message: &str) -> ConfigError {
    let at = at.min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let key = key_at(text, at);
    // toml's messages are sometimes several lines; one line is what an operator reads.
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        key: if key.is_empty() {
            String::new()
        } else {
            format!("{key}: ")
        },
        message,
    }
}

/// The dotted key written on the line that holds byte `at`: its table plus its own name.
fn key_at(text: &str, at: usize) -> String {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let table = text[..start]
        .lines()
        .rev()
        .find_map(header)
        .unwrap_or_default();
    if let Some(own) = header(line) {
        return own;
    }
    let name = line.split('=').next().unwrap_or("").trim();
    let name = if line.contains('=') { name } else { "" };
    match (table.is_empty(), name.is_empty()) {
        (_, true) => table,
        (true, false) => name.to_owned(),
        (false, false) => format!("{table}.{name}"),
    }
}

/// `[table]` on a line: the table's name.
fn header(line: &str) -> Option<String> {
    let line = line.trim();
    let inner = line.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim_matches(['[', ' ']).to_owned())
}

/// Where `key` is written inside `[table]` (0 when absent: the error then names line 1).
fn locate(text: &str, table: &str, key: &str) -> usize {
    let mut offset = 0;
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if let Some(name) = header(line) {
            current = name;
        } else if current == table && line.split('=').next().map(str::trim) == Some(key) {
            return offset;
        }
        offset += line.len();
    }
    0
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|err| {
        de::Error::custom(format!(
            "{text:?} is not a duration ({err}): write it like \"90s\", \"5m\" or \"1h 30m\""
        ))
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|size| size.as_u64())
            .map_err(|err| {
                de::Error::custom(format!(
                    "{text:?} is not a size ({err}): write it like \"32MiB\" or \"512KiB\""
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/oomcount/oomcount.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_all_defaults_without_watchdog() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        assert!(config.watchdog.is_none());
        assert_eq!(config.rules.max_kills, 3);
        assert_eq!(config.rules.mem_available_min, 32 << 20);
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse(
            r#"
[watchdog]
device = "/dev/watchdog"   # or "" for none
timeout = "60s"            # WDIOC_SETTIMEOUT when set
interval = "10s"           # keepalive period
nowayout = false
[rules]
max_kills = 3              # more than this many kills ...
window = "5m"              # ... in this sliding window is unrecoverable
constraint = "global"      # which kills count: "global", "memcg" or "any"
critical = ["xenstored"]   # one kill of a process with this comm is unrecoverable
quiet = "10m"              # how long things must stay calm to be healthy again
mem_available_min = "32MiB"
psi_full_avg10_max = 60.0  # where /proc/pressure/memory exists
"#,
        )
        .unwrap();
        let watchdog = config.watchdog.unwrap();
        assert_eq!(watchdog.device, PathBuf::from("/dev/watchdog"));
        assert_eq!(watchdog.timeout, Some(Duration::from_secs(60)));
        assert_eq!(watchdog.interval, Duration::from_secs(10));
        assert_eq!(config.rules.window, Duration::from_secs(300));
        assert_eq!(config.rules.critical, ["xenstored"]);
        assert_eq!(config.rules.mem_available_min, 32 * 1024 * 1024);
    }

    #[test]
    fn a_watchdog_table_alone_means_dev_watchdog() {
        let config = parse("[watchdog]\n").unwrap();
        assert_eq!(config.watchdog, Some(Watchdog::default()));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            (
                "[rules]\nwindow = \"5 fortnights\"\n",
                "/etc/oomcount/oomcount.toml:2: rules.window: \"5 fortnights\" is not a duration",
            ),
            (
                "[rules]\nmax_kills = -1\n",
                "/etc/oomcount/oomcount.toml:2: rules.max_kills: ",
            ),
            (
                "[rules]\nconstraint = \"local\"\n",
                ":2: rules.constraint: unknown variant `local`",
            ),
            (
                "[watchdog]\n\ntimeout = \"5s\"\ninterval = \"5s\"\n",
                ":4: watchdog.interval: 5s is not below the timeout 5s",
            ),
            (
                "[watchdog]\ntimeout = \"1500ms\"\n",
                ":2: watchdog.timeout: must be whole seconds",
            ),
            (
                "[rules]\nmax_kils = 3\n",
                ":2: rules.max_kils: unknown field `max_kils`",
            ),
            ("[rule]\n", ":1: rule: unknown field `rule`"),
            (
                "[rules]\nmem_available_min = \"lots\"\n",
                ":2: rules.mem_available_min: \"lots\" is not a size",
            ),
            (
                "[rules]\npsi_full_avg10_max = 120.0\n",
                ":2: rules.psi_full_avg10_max: is a percentage",
            ),
            (
                "[rules]\ncritical = [\"a-name-longer-than-15\"]\n",
                ":2: rules.critical: \"a-name-longer-than-15\" is not a process name",
            ),
            ("[rules\n", ":1: rules: "),
            (
                "[rules]\nmax_kills = 5000\n",
                ":2: rules.max_kills: must be below 4096",
            ),
            (
                "nowayout = true\n",
                ":1: nowayout: unknown field `nowayout`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(expected),
                "{text:?}:\n  got  {err}\n  want {expected}"
            );
            assert!(!err.contains('\n'), "{text:?}: not one line: {err}");
        }
    }

    #[test]
    fn default_path_may_be_absent_but_a_named_one_may_not() {
        // The default path on this machine may exist; the named one certainly does not.
        let missing = Path::new("/nonexistent/oomcount.toml");
        let err = Config::load(Some(missing)).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read /nonexistent/oomcount.toml"),
            "{err}"
        );
    }

    #[test]
    fn sizes_take_units_and_plain_bytes() {
        for (text, bytes) in [
            ("\"32MiB\"", 32 << 20),
            ("\"512KiB\"", 512 << 10),
            ("\"1GiB\"", 1 << 30),
            ("1048576", 1 << 20),
            ("0", 0),
        ] {
            let config = parse(&format!("[rules]\nmem_available_min = {text}\n")).unwrap();
            assert_eq!(config.rules.mem_available_min, bytes, "{text}");
        }
    }
}
