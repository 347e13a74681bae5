//! The daemon's configuration file: the watchdog device, the rules that judge OOM activity, and
//! the hooks run for kills and changes of verdict.
//!
//! TOML, every key optional with the default documented on [`Watchdog`] and [`Rules`]. The file
//! is read once at start; a bad one stops the daemon before it touches the watchdog, with one
//! line naming the file, the line and the key (`oomcount config check FILE` says the same
//! without starting anything). The default path may be absent: the daemon then counts and
//! judges with the default rules, and pings no watchdog. A `[watchdog]` table turns the pinger
//! on, with `/dev/watchdog` unless `device` says otherwise. `[hooks]` is checked as the daemon
//! will use it (programs, user), before anything is attached.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::watchdog::rules::Rules;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/oomcount/oomcount.toml";

/// The shortest keepalive `interval`: drivers count their timeouts in seconds, so pinging more
/// often than this buys nothing and costs CPU (`interval = "1ns"` made the daemon write 51k
/// keepalives in 4 s).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `timeout`: WDIOC_SETTIMEOUT takes a C `int` of seconds (a larger value would be
/// cut to its low bits: `"4294967306s"` became 10 s).
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(libc::c_int::MAX as u64);

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `None` without a `[watchdog]` table: no device is opened.
    pub watchdog: Option<Watchdog>,
    pub rules: Rules,
    /// `[hooks]`: programs run for each kill and change of verdict (none by default).
    pub hooks: crate::notify::hooks::HookConfig,
    /// `[xenstore]`: publishing the counts in xenstore on a Xen guest (default: `mode = "auto"`).
    pub xenstore: Xenstore,
    /// `[metrics]`: the Prometheus outputs, off by default.
    pub metrics: crate::metrics::Settings,
    /// Where the file came from, for the one check made after parsing (the driver's timeout,
    /// read when the daemon opens the device): its error names the line as the others do.
    #[serde(skip)]
    source: Source,
}

/// A config's file and text. Not part of what a config says: any two are equal.
#[derive(Clone, Debug, Default)]
struct Source {
    path: PathBuf,
    text: String,
}

impl PartialEq for Source {
    fn eq(&self, _: &Source) -> bool {
        true
    }
}

/// `[watchdog]`: the device the daemon keeps alive while things are recoverable.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watchdog {
    /// `device`, default `/dev/watchdog`; `""` for none (the verdict is still served to
    /// `oomcount check` and systemd).
    pub device: PathBuf,
    /// `timeout`, set with WDIOC_SETTIMEOUT when given (whole seconds, 1 s to [`MAX_TIMEOUT`]);
    /// default: the driver's own.
    #[serde(deserialize_with = "crate::units::opt_duration")]
    pub timeout: Option<Duration>,
    /// `interval` between keepalives, default 10 s, at least [`MIN_INTERVAL`]; must be below the
    /// timeout: `timeout` where set (checked here), else the driver's, read from the device when
    /// the daemon opens it ([`Config::check_driver_timeout`]).
    #[serde(deserialize_with = "crate::units::duration")]
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

/// `[xenstore]`: the counts, verdict, last kill and vitals in the guest's xenstore home
/// (`data/oomcount/`), for dom0's `oomcount guests`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Xenstore {
    /// `mode`: `"auto"` (default: where `/proc/xen` or `/dev/xen/xenbus` shows a Xen guest; not in
    /// dom0, whose own row `oomcount guests` takes from the daemon), `"on"` (a xenstore that
    /// cannot be opened stops the daemon before it attaches), or `"off"`. In dom0 with
    /// `[metrics]` on, anything but `"off"` also exports every guest's count
    /// ([`crate::xen::dom0`]).
    pub mode: XenstoreMode,
    /// `interval` between two publications of the vitals, default 10 s, at least 1 s. Kills and
    /// verdict changes are published as they happen, at most a few times a second.
    #[serde(deserialize_with = "crate::units::duration")]
    pub interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XenstoreMode {
    Auto,
    On,
    Off,
}

impl Default for Xenstore {
    fn default() -> Self {
        Self {
            mode: XenstoreMode::Auto,
            interval: crate::xen::guest::VITALS_INTERVAL,
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
            Err(err) if optional && err.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                source: Source {
                    path: path.to_owned(),
                    text: String::new(),
                },
                ..Config::default()
            }),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and checks `text`, read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|err| {
            let at = err.span().map_or(0, |span| span.start);
            invalid(path, text, at, err.message().trim())
        })?;
        config.check(path, text)?;
        config.source = Source {
            path: path.to_owned(),
            text: text.to_owned(),
        };
        Ok(config)
    }

    /// What types cannot say: values that contradict each other or make no sense.
    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let fail = |table: &str, key: &str, message: String| {
            let at = locate(text, table, key).unwrap_or(0);
            Err(invalid(path, text, at, &message))
        };
        if let Some(watchdog) = &self.watchdog {
            let interval = humantime::format_duration(watchdog.interval);
            if watchdog.interval < MIN_INTERVAL {
                return fail(
                    "watchdog",
                    "interval",
                    format!(
                        "{interval} is below {}: drivers count seconds, so keepalives that often only cost CPU; write it like \"10s\"",
                        humantime::format_duration(MIN_INTERVAL)
                    ),
                );
            }
            if watchdog.interval >= MAX_TIMEOUT {
                return fail(
                    "watchdog",
                    "interval",
                    format!(
                        "{}s cannot be below any watchdog's timeout (at most {}s, a C int of seconds); write it like \"10s\"",
                        watchdog.interval.as_secs(),
                        MAX_TIMEOUT.as_secs()
                    ),
                );
            }
            if let Some(timeout) = watchdog.timeout {
                if timeout < Duration::from_secs(1) || timeout.subsec_nanos() != 0 {
                    return fail(
                        "watchdog",
                        "timeout",
                        "must be whole seconds, at least 1s (the driver counts seconds)".to_owned(),
                    );
                }
                if timeout > MAX_TIMEOUT {
                    return fail(
                        "watchdog",
                        "timeout",
                        format!(
                            "{}s does not fit the driver's timeout, a C int of seconds: at most {}s",
                            timeout.as_secs(),
                            MAX_TIMEOUT.as_secs()
                        ),
                    );
                }
                if watchdog.interval >= timeout {
                    return Err(at_key(
                        path,
                        text,
                        "watchdog",
                        "interval",
                        &format!(
                            "{interval}{} is not below watchdog.timeout {}: the watchdog would fire between keepalives; lower interval or raise timeout",
                            default_note(text, "watchdog", "interval"),
                            humantime::format_duration(timeout)
                        ),
                    ));
                }
            }
        }
        if self.xenstore.interval < Duration::from_secs(1) {
            return fail(
                "xenstore",
                "interval",
                "must be at least 1s: xenstored is shared by every domain; write it like \"10s\""
                    .to_owned(),
            );
        }
        let rules = &self.rules;
        if rules.max_kills as usize >= crate::watchdog::rules::MAX_REMEMBERED {
            return fail(
                "rules",
                "max_kills",
                format!(
                    "must be below {} (the kills the rules remember)",
                    crate::watchdog::rules::MAX_REMEMBERED
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
            .find_map(|entry| crate::watchdog::rules::Critical::parse(entry).err())
        {
            return fail("rules", "critical", err);
        }
        let metrics = &self.metrics;
        if let Some(Err(err)) = metrics.listen_addr() {
            return fail("metrics", "listen", err);
        }
        if !(1..=crate::metrics::publish::MAX_SERIES).contains(&metrics.max_series) {
            return fail(
                "metrics",
                "max_series",
                format!(
                    "must be 1 to {} (each row is a series on every machine)",
                    crate::metrics::publish::MAX_SERIES
                ),
            );
        }
        if metrics.cgroup_depth > crate::metrics::publish::MAX_DEPTH {
            return fail(
                "metrics",
                "cgroup_depth",
                format!(
                    "must be 0 to {} (the levels of a cgroup the kernel's record holds)",
                    crate::metrics::publish::MAX_DEPTH
                ),
            );
        }
        if let Err(err) = self.hooks.check() {
            // The error names `hooks.KEY` itself; at_key puts it at the key's line (or the
            // table's, for a default such as `user`).
            let key = err.key();
            let message = err.to_string();
            let message = message
                .strip_prefix(&format!("hooks.{key}: "))
                .unwrap_or(&message);
            return Err(at_key(path, text, "hooks", key, message));
        }
        Ok(())
    }
}

impl Config {
    /// What only the machine can tell of `[metrics]`, before the daemon attaches (and in
    /// `oomcount config check`): the textfile's folder exists, and the port can be bound, which
    /// it returns bound. The error names the file, the line and the key, as a parse error does.
    pub fn bind_metrics(&self) -> Result<Option<std::net::TcpListener>, ConfigError> {
        let Source { path, text } = &self.source;
        let metrics = &self.metrics;
        if let Some(textfile) = &metrics.textfile
            && let Err(err) = crate::metrics::textfile::check(textfile)
        {
            return Err(at_key(path, text, "metrics", "textfile", &err.to_string()));
        }
        let Some(addr) = metrics.listen_addr() else {
            return Ok(None);
        };
        let bound =
            addr.and_then(|addr| crate::metrics::http::bind(addr).map_err(|err| err.to_string()));
        bound
            .map(Some)
            .map_err(|err| at_key(path, text, "metrics", "listen", &err))
    }
}

impl Config {
    /// At start, with the device open and before its first keepalive: the keepalive `interval`
    /// against the timeout the driver reports (WDIOC_GETTIMEOUT), which the file cannot know
    /// when `timeout` is unset, or when the driver took another timeout than asked. The error
    /// names the file, the line and the keys, as a parse error does.
    pub(crate) fn check_driver_timeout(
        &self,
        device: &Path,
        driver: Duration,
    ) -> Result<(), ConfigError> {
        let Some(watchdog) = &self.watchdog else {
            return Ok(());
        };
        if watchdog.interval < driver {
            return Ok(());
        }
        let Source { path, text } = &self.source;
        let asked = match watchdog.timeout {
            None => "watchdog.timeout is unset".to_owned(),
            Some(timeout) => format!(
                "the driver took it for watchdog.timeout {}",
                humantime::format_duration(timeout)
            ),
        };
        Err(at_key(
            path,
            text,
            "watchdog",
            "interval",
            &format!(
                "{}{} is not below the driver's timeout {}s, read from {} ({asked}): the watchdog would fire between keepalives; set interval below it, or set timeout, under [watchdog]",
                humantime::format_duration(watchdog.interval),
                default_note(text, "watchdog", "interval"),
                driver.as_secs(),
                device.display()
            ),
        ))
    }
}

/// " (the default)" when `key` is not written in `[table]`.
fn default_note(text: &str, table: &str, key: &str) -> &'static str {
    if locate(text, table, key).is_none() {
        " (the default)"
    } else {
        ""
    }
}

/// An error about `table.key`: at its line, or, where the key is not written (its default
/// applies), at the table's line, still naming the key.
fn at_key(path: &Path, text: &str, table: &str, key: &str, message: &str) -> ConfigError {
    if let Some(at) = locate(text, table, key) {
        return invalid(path, text, at, message);
    }
    let at = locate_table(text, table).unwrap_or(0);
    match invalid(path, text, at, message) {
        ConfigError::Invalid {
            path,
            line,
            message,
            ..
        } => ConfigError::Invalid {
            path,
            line,
            key: format!("{table}.{key}: "),
            message,
        },
        other => other,
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
            format!("{}: ", printable(&key))
        },
        message: printable(&message),
    }
}

/// `text` with its control characters escaped: the key and toml's message quote the file, and a
/// carriage return or an escape sequence from it must not rewrite the line an operator reads.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

/// Where `key` is written inside `[table]`.
fn locate(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if let Some(name) = header(line) {
            current = name;
        } else if current == table && line.split('=').next().map(str::trim) == Some(key) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// Where the `[table]` header is.
fn locate_table(text: &str, table: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if header(line).as_deref() == Some(table) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{probe::event::Constraint, watchdog::rules::Scope};

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
constraint = "global"      # which kills count: "global", "memcg", "cpuset", "mempolicy" or "any"
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
    fn xenstore_table() {
        assert_eq!(parse("").unwrap().xenstore.mode, XenstoreMode::Auto);
        let config = parse("[xenstore]\nmode = \"on\"\ninterval = \"30s\"\n").unwrap();
        assert_eq!(config.xenstore.mode, XenstoreMode::On);
        assert_eq!(config.xenstore.interval, Duration::from_secs(30));
        let err = parse("[xenstore]\nmode = \"yes\"\n").unwrap_err();
        assert!(err.contains(":2:") && err.contains("mode"), "{err}");
        let err = parse("\n[xenstore]\ninterval = \"10ms\"\n").unwrap_err();
        assert!(err.contains(":3: ") && err.contains("at least 1s"), "{err}");
    }

    /// Found by the `config` fuzz target: the key quoted from the file brought its control
    /// characters (a carriage return, NULs) into the one-line error.
    #[test]
    fn errors_escape_control_characters() {
        let err = parse("[r\rui\0\u{1}\t\0\u{1}\n").unwrap_err();
        assert!(!err.contains(char::is_control), "{err:?}");
        assert!(err.contains(r"r\rui\u{0}\u{1}\t"), "{err}");
        // toml's message quotes the file too.
        let err = parse("[rules]\n\"a\\u001b[2J\" = 1\n").unwrap_err();
        assert!(!err.contains(char::is_control), "{err:?}");
        assert!(err.contains(r"a\u{1b}[2J"), "{err}");
    }

    #[test]
    fn the_constraint_is_any_or_one_of_the_kernels() {
        for (text, scope) in [
            ("any", Scope::Any),
            ("global", Scope::Only(Constraint::Global)),
            ("memcg", Scope::Only(Constraint::Memcg)),
            ("cpuset", Scope::Only(Constraint::Cpuset)),
            ("mempolicy", Scope::Only(Constraint::Mempolicy)),
        ] {
            let config = parse(&format!("[rules]\nconstraint = \"{text}\"\n")).unwrap();
            assert_eq!(config.rules.constraint, scope, "{text}");
        }
        let err = parse("[rules]\nconstraint = \"unknown\"\n").unwrap_err();
        assert!(err.contains("expected one of `global`, `memcg`"), "{err}");
    }

    #[test]
    fn hooks_parse_and_bad_ones_name_their_key_and_line() {
        let config = parse(
            "[hooks]\non_kill = [\"/bin/true\", \"--flag\"]\nuser = \"root\"\nmax_running = 4\ntimeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(
            config.hooks.on_kill,
            Some(vec!["/bin/true".to_owned(), "--flag".to_owned()])
        );
        assert_eq!(config.hooks.max_running, 4);
        assert_eq!(config.hooks.timeout, Duration::from_secs(3));
        assert_eq!(parse("").unwrap().hooks.user, "nobody");
        for (text, want) in [
            (
                "[rules]\n\n[hooks]\non_kill = [\"hook.sh\"]\n",
                "oomcount.toml:4: hooks.on_kill: \"hook.sh\" is not an absolute path",
            ),
            (
                "[hooks]\non_verdict = [\"/nonexistent/hook\"]\n",
                "oomcount.toml:2: hooks.on_verdict: cannot use \"/nonexistent/hook\"",
            ),
            (
                "[hooks]\non_kill = [\"/bin/true\"]\nuser = \"no-such-user-here\"\n",
                "oomcount.toml:3: hooks.user: there is no user \"no-such-user-here\"",
            ),
            (
                "[hooks]\non_kill = [\"/bin/true\"]\nmax_running = 0\n",
                "oomcount.toml:3: hooks.max_running: give at least 1",
            ),
            (
                "[hooks]\non_kill = [\"/bin/true\"]\ntimeout = \"soon\"\n",
                "oomcount.toml:3: hooks.timeout: \"soon\" is not a duration",
            ),
            (
                "[hooks]\non_kil = []\n",
                "oomcount.toml:2: hooks.on_kil: unknown field",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
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
                ":4: watchdog.interval: 5s is not below watchdog.timeout 5s",
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

    /// Every value of `[watchdog]` that must not reach the device, and what is said of it.
    #[test]
    fn dangerous_watchdog_values_are_refused() {
        let cases = [
            // Keepalives faster than any driver counts: CPU for nothing.
            (
                "interval = \"1ns\"",
                ":2: watchdog.interval: 1ns is below 100ms",
            ),
            (
                "interval = \"0s\"",
                ":2: watchdog.interval: 0s is below 100ms",
            ),
            (
                "interval = \"99ms\"",
                ":2: watchdog.interval: 99ms is below 100ms",
            ),
            (
                "interval = \"99ms 999us 999ns\"",
                ":2: watchdog.interval: 99ms 999us 999ns is below 100ms",
            ),
            // No timeout a driver can take is above it.
            (
                "interval = \"2147483647s\"",
                ":2: watchdog.interval: 2147483647s cannot be below any watchdog's timeout (at most 2147483647s",
            ),
            // SETTIMEOUT takes a C int of seconds: 4294967306 would have become 10.
            (
                "timeout = \"4294967306s\"",
                ":2: watchdog.timeout: 4294967306s does not fit the driver's timeout, a C int of seconds: at most 2147483647s",
            ),
            (
                "timeout = \"2147483648s\"",
                ":2: watchdog.timeout: 2147483648s does not fit",
            ),
            (
                "timeout = \"0s\"",
                ":2: watchdog.timeout: must be whole seconds, at least 1s",
            ),
            (
                "timeout = \"999ms\"",
                ":2: watchdog.timeout: must be whole seconds",
            ),
            (
                "timeout = \"1s 1ns\"",
                ":2: watchdog.timeout: must be whole seconds",
            ),
            // The interval must be below the timeout, written or not.
            (
                "timeout = \"5s\"\ninterval = \"5s\"",
                ":3: watchdog.interval: 5s is not below watchdog.timeout 5s: the watchdog would fire between keepalives",
            ),
            (
                "interval = \"2s\"\ntimeout = \"1s\"",
                ":2: watchdog.interval: 2s is not below watchdog.timeout 1s",
            ),
            (
                "timeout = \"10s\"",
                ":1: watchdog.interval: 10s (the default) is not below watchdog.timeout 10s",
            ),
        ];
        for (keys, expected) in cases {
            let text = format!("[watchdog]\n{keys}\n");
            let err = parse(&text).expect_err(&text);
            assert!(
                err.contains(expected),
                "{text:?}:\n  got  {err}\n  want {expected}"
            );
            assert!(
                err.starts_with("/etc/oomcount/oomcount.toml:"),
                "{text:?}: {err}"
            );
            assert!(!err.contains('\n'), "{text:?}: not one line: {err}");
        }
    }

    /// The values at the edges of what is refused, which must pass.
    #[test]
    fn watchdog_values_at_the_bounds_pass() {
        let cases = [
            ("interval = \"100ms\"", None, Duration::from_millis(100)),
            (
                "interval = \"100ms\"\ntimeout = \"1s\"",
                Some(1),
                Duration::from_millis(100),
            ),
            (
                "interval = \"999ms\"\ntimeout = \"1s\"",
                Some(1),
                Duration::from_millis(999),
            ),
            ("timeout = \"11s\"", Some(11), Duration::from_secs(10)),
            (
                "timeout = \"2147483647s\"",
                Some(2_147_483_647),
                Duration::from_secs(10),
            ),
            (
                "interval = \"2147483646s\"\ntimeout = \"2147483647s\"",
                Some(2_147_483_647),
                Duration::from_secs(2_147_483_646),
            ),
            (
                "interval = \"2147483646s\"",
                None,
                Duration::from_secs(2_147_483_646),
            ),
        ];
        assert_eq!(MAX_TIMEOUT.as_secs(), 2_147_483_647, "a C int of seconds");
        for (keys, timeout, interval) in cases {
            let text = format!("[watchdog]\n{keys}\n");
            let watchdog = parse(&text)
                .unwrap_or_else(|err| panic!("{text:?}: {err}"))
                .watchdog
                .unwrap();
            assert_eq!(
                watchdog.timeout,
                timeout.map(Duration::from_secs),
                "{text:?}"
            );
            assert_eq!(watchdog.interval, interval, "{text:?}");
        }
    }

    /// What only the device can tell: its driver's timeout, against the interval.
    #[test]
    fn the_interval_must_be_below_the_drivers_timeout() {
        let device = Path::new("/dev/watchdog");
        let secs = Duration::from_secs;
        let cases: [(&str, u64, Option<&str>); 9] = [
            // timeout unset: the driver's own is the one that fires.
            (
                "[watchdog]\n",
                10,
                Some(
                    "/etc/oomcount/oomcount.toml:1: watchdog.interval: 10s (the default) is not below the driver's timeout 10s, read from /dev/watchdog (watchdog.timeout is unset): the watchdog would fire between keepalives; set interval below it, or set timeout, under [watchdog]",
                ),
            ),
            ("[watchdog]\n", 11, None),
            (
                "[rules]\nmax_kills = 1\n\n[watchdog]\ninterval = \"5s\"\n",
                5,
                Some(
                    "/etc/oomcount/oomcount.toml:5: watchdog.interval: 5s is not below the driver's timeout 5s, read from /dev/watchdog (watchdog.timeout is unset)",
                ),
            ),
            (
                "[watchdog]\ninterval = \"5s\"\n",
                1,
                Some(":2: watchdog.interval: 5s is not below the driver's timeout 1s"),
            ),
            ("[watchdog]\ninterval = \"5s\"\n", 6, None),
            ("[watchdog]\ninterval = \"100ms\"\n", 1, None),
            // A driver that took another timeout than asked: what it took is what fires.
            (
                "[watchdog]\ntimeout = \"60s\"\ninterval = \"9s\"\n",
                8,
                Some(
                    ":3: watchdog.interval: 9s is not below the driver's timeout 8s, read from /dev/watchdog (the driver took it for watchdog.timeout 1m)",
                ),
            ),
            (
                "[watchdog]\ntimeout = \"60s\"\ninterval = \"9s\"\n",
                10,
                None,
            ),
            // No [watchdog]: no device, nothing to check.
            ("[rules]\nmax_kills = 1\n", 0, None),
        ];
        for (text, driver, expected) in cases {
            let config = Config::parse(Path::new("/etc/oomcount/oomcount.toml"), text).unwrap();
            let got = config
                .check_driver_timeout(device, secs(driver))
                .map_err(|e| e.to_string());
            match (got, expected) {
                (Ok(()), None) => {}
                (Err(err), Some(want)) => {
                    assert!(
                        err.contains(want),
                        "{text:?} driver {driver}s:\n  got  {err}\n  want {want}"
                    );
                    assert!(!err.contains('\n'), "not one line: {err}");
                }
                (got, want) => panic!("{text:?} driver {driver}s: got {got:?}, want {want:?}"),
            }
        }
    }

    /// `realtime = true` is documented, so the shipped unit must let it work: SCHED_FIFO 1 needs
    /// CAP_SYS_NICE or an RTPRIO limit of 1, and no RestrictRealtime=yes (a seccomp filter that
    /// refuses it whatever the rest says).
    #[test]
    fn the_shipped_unit_lets_realtime_work() {
        let unit = include_str!("../../contrib/systemd/oomcount.service");
        let value = |key: &str| {
            unit.lines()
                .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
                .next_back()
                .map(str::trim)
        };
        assert!(
            !matches!(value("RestrictRealtime"), Some("yes" | "true" | "on" | "1")),
            "RestrictRealtime= turns realtime = true off"
        );
        let rtprio = value("LimitRTPRIO").map_or(0, |v| v.parse::<u32>().unwrap_or(99));
        let nice = value("AmbientCapabilities").is_some_and(|caps| caps.contains("CAP_SYS_NICE"));
        assert!(
            rtprio >= 1 || nice,
            "neither LimitRTPRIO=1 nor CAP_SYS_NICE: SCHED_FIFO 1 would be refused"
        );
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

    /// The keys the parser accepts in `[table]` (or at the top with ""), from serde's
    /// unknown-field error, which lists them.
    fn accepted_keys(table: &str) -> Vec<String> {
        let text = if table.is_empty() {
            "not_a_key = 1\n".to_owned()
        } else {
            format!("[{table}]\nnot_a_key = 1\n")
        };
        let err = parse(&text).unwrap_err();
        let (_, list) = err.split_once("expected").expect(&err);
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The package's commented file and the oomcount.toml(5) page come from
    /// `oomcount_args::config_keys`: it names every key this parser takes, no other, and its
    /// defaults are the parser's.
    #[test]
    fn the_shipped_keys_are_the_parsers() {
        use oomcount_args::config_keys::{TABLES, commented_file, uncommented_defaults};
        let tables: Vec<_> = TABLES.iter().map(|t| t.name.to_owned()).collect();
        assert_eq!(accepted_keys(""), tables);
        for table in TABLES {
            let keys: Vec<_> = table.keys.iter().map(|k| k.name.to_owned()).collect();
            assert_eq!(accepted_keys(table.name), keys, "[{}]", table.name);
            for key in table.keys {
                let line = format!("[{}]\n{} = {}\n", table.name, key.name, key.example);
                parse(&line).unwrap_or_else(|err| panic!("{line}: {err}"));
            }
        }
        // As shipped, the file is no file at all.
        assert_eq!(parse(&commented_file()).unwrap(), Config::default());
        // Uncommented, it sets the defaults (and turns the watchdog table on).
        assert_eq!(
            parse(&uncommented_defaults()).unwrap(),
            Config {
                watchdog: Some(Watchdog::default()),
                ..Config::default()
            }
        );
    }
}
