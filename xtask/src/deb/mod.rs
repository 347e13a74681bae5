//! `cargo xtask deb`: the Debian package, `target/debian/oomcount_<version>_amd64.deb`.
//!
//! cargo-deb (pinned, installed by setup beside bpf-linker) builds it from
//! `[package.metadata.deb]` in oomcount/Cargo.toml. What it packs that is not in the repository
//! is written here first, into `target/debian/assets`, from the sources the binary itself uses,
//! so that none can drift from it:
//! - oomcount(8) and oomcount.toml(5) (clap_mangen over `oomcount-args`, the binary's clap
//!   definitions; the FIELDS tables from the README; the configuration keys from
//!   `oomcount_args::config_keys`, which the parser's tests hold to the parser);
//! - the bash, zsh and fish completions (clap_complete);
//! - /etc/oomcount/oomcount.toml, every key commented out with its default;
//! - the systemd unit, contrib/systemd/oomcount.service with the package's paths.
pub mod install_test;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::CommandFactory as _;

use crate::{setup, workspace_root};

#[derive(clap::Args)]
pub struct DebArgs {
    /// The Debian version to give the package instead of the crate's (the tests build N+1).
    #[arg(long, value_name = "VERSION")]
    pub deb_version: Option<String>,
    /// Package the release binary already built, without building it again.
    #[arg(long)]
    pub no_build: bool,
    /// Then lint it, install, upgrade and purge it on this machine: the package's part of
    /// `cargo xtask test`, alone.
    #[arg(long)]
    pub test: bool,
}

pub fn run(args: DebArgs) -> anyhow::Result<PathBuf> {
    setup::run(setup::Needs::Build)?;
    let cargo_deb = setup::ensure_cargo_deb()?;
    let root = workspace_root();
    let assets = root.join("target/debian/assets");
    write_assets(&root, &assets)?;
    let out = root.join("target/debian");
    let mut cmd = Command::new(cargo_deb);
    // cargo-deb runs as a cargo subcommand: its first argument is its own name.
    cmd.current_dir(&root)
        .args(["deb", "--package", "oomcount", "--output"])
        .arg(&out);
    if let Some(version) = &args.deb_version {
        cmd.args(["--deb-version", version]);
    }
    if args.no_build {
        cmd.arg("--no-build");
    }
    let output = cmd.output().context("run cargo-deb")?;
    if !output.status.success() {
        bail!(
            "cargo-deb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    eprintln!("deb: {}", deb.display());
    Ok(deb)
}

/// Writes every generated file the package holds into `dir`.
pub fn write_assets(root: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("completions"))
        .with_context(|| format!("create {}", dir.display()))?;
    let write = |name: &str, text: &[u8]| {
        std::fs::write(dir.join(name), text).with_context(|| format!("write {name}"))
    };
    let readme = std::fs::read_to_string(root.join("README.md")).context("read README.md")?;
    write("oomcount.8", man_oomcount(&readme)?.as_bytes())?;
    write("oomcount.toml.5", man_config().as_bytes())?;
    write(
        "oomcount.toml",
        oomcount_args::config_keys::commented_file().as_bytes(),
    )?;
    let unit = std::fs::read_to_string(root.join("contrib/systemd/oomcount.service"))
        .context("read contrib/systemd/oomcount.service")?;
    write("oomcount.service", package_unit(&unit).as_bytes())?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "oomcount"),
        (clap_complete::Shell::Zsh, "_oomcount"),
        (clap_complete::Shell::Fish, "oomcount.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(
            shell,
            &mut oomcount_args::Cli::command(),
            "oomcount",
            &mut text,
        );
        write(&format!("completions/{name}"), &text)?;
    }
    Ok(())
}

/// The unit as the package installs it: the binary in /usr/bin, and the header that told how to
/// install it by hand left out.
fn package_unit(unit: &str) -> String {
    let mut text = String::from(
        "# oomcount: the OOM killer's exact body count, and an OOM-aware watchdog.\n\
         # The rules and the watchdog device are in /etc/oomcount/oomcount.toml (oomcount.toml(5)).\n",
    );
    let body = &unit[unit.find("[Unit]").unwrap_or(0)..];
    text.push_str(
        &body
            .replace("/usr/local/sbin/oomcount", "/usr/bin/oomcount")
            .replace(
                "Documentation=man:watchdog(8)",
                "Documentation=man:oomcount(8) man:oomcount.toml(5)",
            ),
    );
    text
}

/// Escapes `text` for roff: backslashes, a leading dot or quote, and hyphens (to stay hyphens).
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

/// Markdown inline to roff: `code` in bold, the rest escaped.
fn inline(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("\\fB{}\\fR", roff(part))
            } else {
                roff(part)
            }
        })
        .collect()
}

/// The README's `### FIELDS of ...` sections, as roff subsections: the README is where the
/// fields are documented for the site, the man page repeats them.
fn fields(readme: &str) -> anyhow::Result<String> {
    let mut out = String::from(".SH FIELDS\n");
    let mut found = 0;
    let mut in_section = false;
    for line in readme.lines() {
        if let Some(title) = line.strip_prefix("### FIELDS of ") {
            in_section = true;
            found += 1;
            let _ = writeln!(out, ".SS {}", inline(title));
            continue;
        }
        if line.starts_with('#') {
            in_section = false;
        }
        if !in_section {
            continue;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split(" | ")
            .map(str::trim)
            .collect();
        if line.starts_with('|') {
            if cells.len() != 2 || cells[0] == "field" || cells[0].starts_with("---") {
                continue;
            }
            let _ = writeln!(out, ".TP\n{}\n{}", inline(cells[0]), inline(cells[1]));
        } else if !line.trim().is_empty() {
            let _ = writeln!(out, ".PP\n{}", inline(line.trim()));
        }
    }
    if found == 0 {
        bail!("README.md has no `### FIELDS of` section for the man page");
    }
    Ok(out)
}

/// Renders one clap command's sections into roff, turning its `.SH` headings into `.SS`
/// subheadings under the subcommand's own section.
fn subsections(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    render(&mut buf).expect("rendering into memory cannot fail");
    String::from_utf8_lossy(&buf).replace(".SH ", ".SS ")
}

/// oomcount(8): the command, a section per subcommand, FIELDS, EXIT STATUS, FILES.
fn man_oomcount(readme: &str) -> anyhow::Result<String> {
    let cli = oomcount_args::Cli::command();
    let version = cli.get_version().unwrap_or_default().to_owned();
    let man = clap_mangen::Man::new(cli.clone())
        .section("8")
        .date("")
        .source(format!("oomcount {version}"))
        .manual("System Administration");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    let mut page = String::from_utf8(page)?;
    page.push_str(
        ".PP\nAs \\fBoomcount\\-check\\fR (a link to the binary, for watchdog(8)'s \
         test\\-directory), it runs \\fBoomcount check\\fR.\n",
    );
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let _ = writeln!(page, ".SH \"OOMCOUNT {}\"", name.to_uppercase());
        let sub = sub.clone().bin_name(format!("oomcount {name}"));
        let man = clap_mangen::Man::new(sub.clone());
        page.push_str(&subsections(|buf| {
            man.render_synopsis_section(buf)?;
            man.render_description_section(buf)?;
            if sub.get_arguments().any(|a| !a.is_hide_set()) {
                man.render_options_section(buf)?;
            }
            if sub.has_subcommands() {
                man.render_subcommands_section(buf)?;
            }
            Ok(())
        }));
    }
    page.push_str(&fields(readme)?);
    page.push_str(".SH \"EXIT STATUS\"\n");
    page.push_str(
        "Every command exits 0 on success, 1 on an error (one line on stderr), 2 on a usage \
         error. \\fBoomcount check\\fR speaks in exit codes, watchdog(8)'s convention:\n",
    );
    for (code, meaning) in oomcount_args::check::EXIT_STATUS {
        let _ = writeln!(page, ".TP\n\\fB{code}\\fR\n{}", inline(meaning));
    }
    page.push_str(".PP\nNever 0 without the daemon's verdict.\n");
    let _ = write!(
        page,
        ".SH FILES\n.TP\n{}\nthe configuration, see oomcount.toml(5)\n.TP\n{}\nthe daemon's \
         socket\n.TP\n{}\nthe counts for anyone to read\n.TP\n{}\nthe probe's pins: they keep \
         counting while no daemon runs, across restarts and upgrades\n\
         .SH \"SEE ALSO\"\noomcount.toml(5), watchdog(8), systemd.service(5)\n",
        roff(oomcount_args::DEFAULT_CONFIG),
        roff(oomcount_args::DEFAULT_SOCKET),
        roff(oomcount_args::DEFAULT_STAT),
        roff(oomcount_args::DEFAULT_PIN_DIR),
    );
    Ok(page)
}

/// oomcount.toml(5): every table and key, with its default and what it does.
fn man_config() -> String {
    let version = oomcount_args::Cli::command()
        .get_version()
        .unwrap_or_default()
        .to_owned();
    let mut page = format!(
        ".TH OOMCOUNT.TOML 5 \"\" \"oomcount {version}\" \"File Formats\"\n\
         .SH NAME\noomcount.toml \\- the configuration of the oomcount daemon\n\
         .SH SYNOPSIS\n{}\n\
         .SH DESCRIPTION\nTOML, read once by \\fBoomcount daemon\\fR at start. Every key is \
         optional; a file that is absent, or empty, means the defaults and no watchdog device. \
         A bad value stops the daemon before it attaches, with one line naming the file, the line \
         and the key; \\fBoomcount config check\\fR says the same without starting anything. \
         Durations are written like \"90s\", \"5m\" or \"1h 30m\"; sizes like \"32MiB\".\n",
        roff(oomcount_args::DEFAULT_CONFIG)
    );
    for table in oomcount_args::config_keys::TABLES {
        let _ = writeln!(page, ".SH \"[{}]\"\n{}", table.name, inline(table.doc));
        for key in table.keys {
            let default = match key.default {
                Some(default) => format!("default {}", roff(default)),
                None => format!("no default; for example {}", roff(key.example)),
            };
            let _ = writeln!(
                page,
                ".TP\n\\fB{}\\fR ({default})\n{}",
                roff(key.name),
                inline(key.doc)
            );
        }
    }
    page.push_str(
        ".SH EXAMPLE\n.nf\n[watchdog]\ntimeout = \"60s\"\n\n[rules]\nmax_kills = 5\n\
         critical = [\"unit:xenstored.service\"]\n.fi\n\
         .SH \"SEE ALSO\"\noomcount(8), watchdog(8)\n",
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_packaged_binary() {
        let unit = package_unit(
            "# Install: cp x /usr/local/sbin/\n[Unit]\nDocumentation=man:watchdog(8)\n\
             [Service]\nExecStart=/usr/local/sbin/oomcount daemon\n",
        );
        assert!(unit.contains("ExecStart=/usr/bin/oomcount daemon"));
        assert!(!unit.contains("/usr/local"));
        assert!(unit.contains("man:oomcount(8)"));
    }

    #[test]
    fn the_man_page_has_every_subcommand_fields_and_exit_status() {
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let page = man_oomcount(&readme).unwrap();
        for sub in oomcount_args::Cli::command().get_subcommands() {
            let heading = format!(".SH \"OOMCOUNT {}\"", sub.get_name().to_uppercase());
            assert!(page.contains(&heading), "{heading}");
        }
        for section in [".SH FIELDS", ".SH \"EXIT STATUS\"", "\\fBkills\\fR"] {
            assert!(page.contains(section), "{section}");
        }
        for (code, _) in oomcount_args::check::EXIT_STATUS {
            assert!(page.contains(&format!("\\fB{code}\\fR")), "{code}");
        }
    }

    #[test]
    fn roff_escapes_what_roff_would_read() {
        assert_eq!(roff(".x"), "\\&.x");
        assert_eq!(roff("a-b\\c"), "a\\-b\\ec");
        assert_eq!(inline("`a` b"), "\\fBa\\fR b");
    }
}
