//! The package's test: build it, install it on this machine, look at what it installed, upgrade
//! it, purge it, and run lintian and systemd-analyze on it. Part of `cargo xtask test`.
//!
//! No systemd runs here (a container): the package's scripts enable the unit but a policy-rc.d
//! that denies every start (`bench::install::PolicyGuard`) keeps them from starting anything, so
//! the test never starts a daemon beside the ones other tests run. The install is removed with
//! `dpkg --purge` whatever happened, and the test refuses to run where the package is already
//! installed or /run/oomcount exists (a daemon of someone's may be using it).
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use crate::bench::install::PolicyGuard;

/// What `dpkg -i` must have put where.
const FILES: &[&str] = &[
    "/usr/bin/oomcount",
    "/usr/bin/oomcount-check",
    "/etc/oomcount/oomcount.toml",
    "/usr/lib/systemd/system/oomcount.service",
    "/usr/share/man/man8/oomcount.8.gz",
    "/usr/share/man/man8/oomcount-check.8.gz",
    "/usr/share/man/man5/oomcount.toml.5.gz",
    "/usr/share/lintian/overrides/oomcount",
    "/usr/share/bash-completion/completions/oomcount",
    "/usr/share/zsh/vendor-completions/_oomcount",
    "/usr/share/fish/vendor_completions.d/oomcount.fish",
    "/usr/share/doc/oomcount/README.md",
    "/usr/share/doc/oomcount/copyright",
    "/usr/share/doc/oomcount/changelog.Debian.gz",
];

pub fn run() -> anyhow::Result<()> {
    eprintln!("test: the Debian package");
    let first = super::run(super::DebArgs {
        deb_version: None,
        no_build: false,
        test: false,
    })?;
    // cargo-deb removes the other versions of the package from its output folder: keep N aside.
    let first = keep(&first)?;
    lintian(&first)?;
    unit()?;
    let version = deb_field(&first, "Version")?;
    // N+1: the same binary, the next Debian revision.
    let next_revision = version
        .rsplit_once('-')
        .and_then(|(_, r)| r.parse::<u32>().ok())
        .map_or(2, |r| r + 1);
    let upstream = version.rsplit_once('-').map_or(&*version, |(u, _)| u);
    let second = super::run(super::DebArgs {
        deb_version: Some(format!("{upstream}-{next_revision}")),
        no_build: true,
        test: false,
    })?;
    if installed("oomcount") {
        eprintln!("test: the oomcount package is installed here: not installing over it");
        return Ok(());
    }
    if Path::new("/run/oomcount").exists() {
        eprintln!("test: /run/oomcount exists (a daemon's?): not installing the package");
        return Ok(());
    }
    let policy = PolicyGuard::deny_all().map_err(anyhow::Error::msg)?;
    let result = install_and_upgrade(&first, &second, upstream);
    let purged = purge();
    drop(policy);
    result?;
    purged
}

fn install_and_upgrade(first: &Path, second: &Path, upstream: &str) -> anyhow::Result<()> {
    dpkg(&[Path::new("-i"), first])?;
    for file in FILES {
        ensure!(
            Path::new(file).symlink_metadata().is_ok(),
            "{file} is not installed"
        );
    }
    let link = std::fs::read_link("/usr/bin/oomcount-check").context("oomcount-check")?;
    ensure!(
        link == Path::new("oomcount") || link == Path::new("/usr/bin/oomcount"),
        "oomcount-check points at {}",
        link.display()
    );
    ensure!(
        Path::new("/etc/systemd/system/multi-user.target.wants/oomcount.service").exists(),
        "the unit is not enabled"
    );
    let conffiles = std::fs::read_to_string("/var/lib/dpkg/info/oomcount.conffiles")
        .context("the package has no conffiles")?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l == "/etc/oomcount/oomcount.toml"),
        "/etc/oomcount/oomcount.toml is not a conffile: {conffiles}"
    );
    let out = output(Command::new("/usr/bin/oomcount").arg("--version"))?;
    ensure!(
        out.trim() == format!("oomcount {upstream}"),
        "oomcount --version says {out:?}, the package is {upstream}"
    );
    output(Command::new("/usr/bin/oomcount").args(["config", "check"]))
        .context("config check of the shipped file")?;
    for page in [
        "/usr/share/man/man8/oomcount.8.gz",
        "/usr/share/man/man5/oomcount.toml.5.gz",
    ] {
        let out = Command::new("man")
            .env("MANWIDTH", "80")
            .args(["--warnings", "-l", page])
            .stdin(Stdio::null())
            .output()
            .context("man")?;
        let warnings = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && warnings.trim().is_empty() && !out.stdout.is_empty(),
            "man --warnings -l {page} ({}): {}",
            out.status,
            warnings.trim()
        );
    }
    let subcommands = complete(&["oomcount", ""])?;
    for sub in ["daemon", "count", "check", "config", "status"] {
        ensure!(
            subcommands.iter().any(|w| w == sub),
            "bash completes no {sub}: {subcommands:?}"
        );
    }
    let flags = complete(&["oomcount", "count", "--"])?;
    for flag in ["--json", "--socket", "--pin-dir"] {
        ensure!(
            flags.iter().any(|w| w == flag),
            "bash completes no {flag} after count: {flags:?}"
        );
    }
    // The restart after the upgrade, by hand: no systemd runs here. A daemon of the package's on
    // pins of its own (not the default ones, which another daemon may hold) before the upgrade,
    // another after it: the second counts on from the first's pins.
    let scratch = std::env::temp_dir().join(format!("oomcount-deb-{}", std::process::id()));
    let pins = format!("/sys/fs/bpf/oomcount-deb-test-{}", std::process::id());
    std::fs::create_dir_all(&scratch)?;
    let socket = scratch.join("oomcount.sock");
    let before = with_daemon(&socket, &pins, || count(&socket));
    // Upgrade to N+1 with the conffile changed: the change is kept.
    let conf = "/etc/oomcount/oomcount.toml";
    let text = std::fs::read_to_string(conf)?;
    let changed = text
        .replace("#[rules]\n", "[rules]\n")
        .replace("#max_kills = 3\n", "max_kills = 5\n");
    ensure!(
        changed != text,
        "the shipped file has no `#max_kills = 3` under `#[rules]`"
    );
    std::fs::write(conf, &changed)?;
    dpkg(&[Path::new("-i"), second])?;
    ensure!(
        std::fs::read_to_string(conf)? == changed,
        "the upgrade did not keep the changed {conf}"
    );
    let out = output(Command::new("/usr/bin/oomcount").args(["config", "check"]))?;
    ensure!(out.contains('5'), "config check after the upgrade: {out}");
    let after = before.and_then(|before| {
        with_daemon(&socket, &pins, || count(&socket)).map(|after| (before, after))
    });
    let _ = Command::new("/usr/bin/oomcount")
        .args(["detach", "--pin-dir", &pins])
        .output();
    let _ = std::fs::remove_dir_all(&scratch);
    let (before, after) = after?;
    for key in ["attached_at", "kills", "marked"] {
        ensure!(
            before[key] == after[key],
            "{key} before the upgrade's restart {}, after it {}",
            before[key],
            after[key]
        );
    }
    eprintln!(
        "test: installed, upgraded (the changed conffile kept; the restarted daemon kept \
         attached_at {} and kills {})",
        after["attached_at"], after["kills"]
    );
    Ok(())
}

/// Runs `/usr/bin/oomcount daemon` on `socket` and `pins` while `f` runs, then stops it with
/// SIGTERM (as systemd does) and waits for it.
fn with_daemon<T>(
    socket: &Path,
    pins: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut daemon = Command::new("/usr/bin/oomcount")
        .arg("daemon")
        .arg("--socket")
        .arg(socket)
        .args(["--pin-dir", pins, "--dry-run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start /usr/bin/oomcount daemon")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut ready = false;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = daemon.try_wait() {
            bail!("the packaged daemon exited at start ({status})");
        }
        // The socket appears once the probe is attached and the daemon serves.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let result = if ready {
        f()
    } else {
        Err(anyhow::anyhow!(
            "the packaged daemon did not serve within 30 s"
        ))
    };
    // SAFETY: kill(2) on the pid of the child this function started and has not reaped.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    daemon.wait().context("wait for the daemon")?;
    result
}

/// `oomcount count --json` from the daemon on `socket`.
fn count(socket: &Path) -> anyhow::Result<serde_json::Value> {
    let out = output(
        Command::new("/usr/bin/oomcount")
            .args(["count", "--json", "--socket"])
            .arg(socket),
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// Purges the package: the configuration and /run/oomcount go, and the pins are left.
fn purge() -> anyhow::Result<()> {
    if !installed("oomcount") && !Path::new("/etc/oomcount").exists() {
        return Ok(());
    }
    dpkg(&[Path::new("--purge"), Path::new("oomcount")])?;
    for gone in [
        "/etc/oomcount",
        "/run/oomcount",
        "/usr/bin/oomcount",
        "/usr/bin/oomcount-check",
        "/etc/systemd/system/multi-user.target.wants/oomcount.service",
    ] {
        ensure!(
            Path::new(gone).symlink_metadata().is_err(),
            "{gone} is left after purge"
        );
    }
    Ok(())
}

/// A copy of `deb` in target/debian/install-test, which cargo-deb leaves alone.
fn keep(deb: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = crate::workspace_root().join("target/debian/install-test");
    std::fs::create_dir_all(&dir)?;
    let kept = dir.join(deb.file_name().context("a .deb file")?);
    std::fs::copy(deb, &kept).with_context(|| format!("copy {}", deb.display()))?;
    Ok(kept)
}

/// The unit as packaged passes `systemd-analyze verify`, and its exposure
/// (`systemd-analyze security --offline=yes`) is the one the README states.
fn unit() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let unit = std::fs::read_to_string(root.join("target/debian/assets/oomcount.service"))?;
    let Some(exposure) = crate::test::verify_unit_text("the packaged oomcount.service", &unit)?
    else {
        return Ok(());
    };
    // "oomcount.service: 3.8 OK 🙂"
    let figure = exposure.split_whitespace().nth(1).unwrap_or_default();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    ensure!(
        readme.contains(&format!("exposure {figure} ")),
        "systemd-analyze security --offline=yes gives the unit {figure}, which the README \
         (Install) does not state as `exposure {figure} `"
    );
    eprintln!("test: the unit's exposure is {figure}, as the README says");
    // Debian's own, where installed, measured the same way (the README compares them).
    for theirs in ["prometheus-node-exporter.service", "watchdog.service"] {
        let path = Path::new("/lib/systemd/system").join(theirs);
        if !path.exists() {
            continue;
        }
        if let Ok(out) = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path)
            .output()
        {
            let said = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = said.lines().find(|l| l.contains("Overall exposure level")) {
                eprintln!("test: Debian's {line}");
            }
        }
    }
    Ok(())
}

/// What bash completion offers for `words`, the cursor on the last.
fn complete(words: &[&str]) -> anyhow::Result<Vec<String>> {
    let script = format!(
        "source /usr/share/bash-completion/completions/oomcount\n\
         COMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
         _oomcount oomcount \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1
    );
    let out = output(Command::new("bash").args(["--norc", "-c", &script]))?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// lintian on the package: no error, and no warning that is not overridden (with its reason) in
/// the package's overrides.
pub fn lintian(deb: &Path) -> anyhow::Result<()> {
    eprintln!("test: lintian {}", deb.display());
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("lintian (apt-get install lintian)")?;
    let said = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    ensure!(
        bad.is_empty(),
        "lintian {}:\n{}",
        deb.display(),
        bad.join("\n")
    );
    Ok(())
}

fn deb_field(deb: &Path, field: &str) -> anyhow::Result<String> {
    Ok(
        output(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field))?
            .trim()
            .to_owned(),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.ends_with(b"install ok installed"))
}

fn dpkg(args: &[&Path]) -> anyhow::Result<()> {
    let out = Command::new("dpkg")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("dpkg")?;
    if !out.status.success() {
        bail!(
            "dpkg {} ({}): {}",
            args.iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `cmd`, and returns its stdout when it succeeds.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
