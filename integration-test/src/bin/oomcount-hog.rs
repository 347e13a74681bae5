//! `oomcount-hog`: makes the OOM killer kill, in the shapes the tests need (see the library's
//! `victim` module). Modes:
//!
//!     oomcount-hog alloc   --cgroup DIR [--adj N] [--mb N [--hold]]   touch memory (until killed)
//!                          [--comm NAME|--comm-hex HEX] [--uid N]      renamed, as another user
//!     oomcount-hog alloc   --global [--adj N]                          the VM's global OOM only
//!     oomcount-hog threads N --cgroup DIR                              N threads touching memory
//!     oomcount-hog vmshare --cgroup DIR                                clone(CLONE_VM) pair
//!     oomcount-hog storm   --cgroup DIR... --kills-each K              forking producers
//!     oomcount-hog dying   --cgroup DIR --mb N                         the already-dying victim
//!     oomcount-hog nobody  OP ARGS...                                  another user's steps
//!     oomcount-hog hook-probe DIR [--sleep-ms N] [--hang] ...         a hook that records
//!
//! `nobody` runs one step as uid and gid 65534 without groups, with no tool of the machine's
//! (the VM guest has none): `mkdir PATH`, `rm PATH`, `ln TARGET LINK`, `ls DIR`, and
//! `forge-sigkill N` (N children, each sending itself SIGKILL through `rt_sigqueueinfo` with
//! `si_code` SI_KERNEL, as any process may); against the daemon's socket (the library's
//! `attacker` module) `connect SOCKET N KIND SECONDS` (N connections of KIND held SECONDS after
//! `ready N`: idle, watch-never-read, half-closed, pipelining, pipelining-never-read), `slots
//! SOCKET` and `stall SOCKET`; and `exec PROGRAM ARGS...` (runs PROGRAM as nobody). It exits 0
//! when the step worked, 1 with the error when it did not.
//!
//! Anything that touches memory without bound needs a cgroup (whose limit ends it), or
//! `--global` together with `OOMCOUNT_VM=1`: a global OOM is allowed only in the VM guest.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use oomcount_integration_test::{attacker, hook_probe, victim, wait::in_vm};

#[derive(Default)]
struct Options {
    cgroups: Vec<PathBuf>,
    adj: Option<i32>,
    mb: Option<u64>,
    hold: bool,
    global: bool,
    kills_each: Option<u64>,
    comm: Option<Vec<u8>>,
    uid: Option<u32>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("oomcount-hog: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let (mode, rest) = args
        .split_first()
        .ok_or("name a mode: alloc, threads, vmshare, storm, dying or nobody")?;
    if mode == "nobody" {
        return nobody(rest);
    }
    // A hook for the hook tests (the library's `hook_probe`): shipped in the hog so that the VM
    // guests have it too.
    if mode == "hook-probe" {
        return hook_probe::main(rest);
    }
    let (count, rest) = match (mode.as_str(), rest.split_first()) {
        ("threads", Some((n, rest))) => (
            Some(
                n.parse::<usize>()
                    .map_err(|e| format!("threads {n}: {e}"))?,
            ),
            rest,
        ),
        _ => (None, rest),
    };
    let o = parse(rest)?;
    if (o.comm.is_some() || o.uid.is_some()) && mode != "alloc" {
        return Err("--comm and --uid are for alloc".into());
    }
    let unbounded = !(matches!(mode.as_str(), "alloc" | "dying") && o.mb.is_some());
    if unbounded && o.cgroups.is_empty() && !(o.global && in_vm()) {
        return Err("refusing to touch memory without bound outside a memory cgroup (give --cgroup; --global needs OOMCOUNT_VM=1)".into());
    }
    // The storm's producers and the dying victim's tracer stay outside; their children join.
    let stays_outside = matches!(mode.as_str(), "storm" | "dying");
    if let (false, Some(dir)) = (stays_outside, o.cgroups.first()) {
        victim::join_cgroup(dir);
    }
    if let Some(adj) = o.adj {
        victim::set_oom_score_adj(adj);
    }
    // After the cgroup and oom_score_adj: a negative one needs root.
    if let Some(comm) = &o.comm {
        victim::set_comm_bytes(comm);
    }
    if let Some(uid) = o.uid {
        victim::become_user(uid);
    }
    match (mode.as_str(), o.mb) {
        ("alloc", Some(mb)) => {
            victim::touch_mb(mb);
            if o.hold {
                victim::hold();
            }
            Ok(ExitCode::SUCCESS)
        }
        ("alloc", None) => victim::touch_forever(),
        ("threads", _) => victim::threads(count.unwrap_or(8)),
        ("vmshare", _) => victim::vmshare(),
        ("dying", Some(mb)) => {
            let dir = o.cgroups.first().ok_or("dying needs --cgroup")?;
            victim::dying(dir, mb).map(|()| ExitCode::SUCCESS)
        }
        ("storm", _) => {
            let each = o.kills_each.ok_or("storm needs --kills-each K")?;
            match victim::storm(&o.cgroups, each) {
                Ok(kills) => {
                    println!("killed {kills}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    eprintln!("oomcount-hog storm: {err}");
                    Ok(ExitCode::from(victim::EXIT_STORM_CHILD as u8))
                }
            }
        }
        (other, _) => Err(format!("unknown mode {other:?}")),
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--cgroup" => o.cgroups.push(PathBuf::from(value()?)),
            "--adj" => o.adj = Some(number(flag, value()?)?),
            "--mb" => o.mb = Some(number(flag, value()?)?),
            "--kills-each" => o.kills_each = Some(number(flag, value()?)?),
            "--comm" => o.comm = Some(value()?.clone().into_bytes()),
            // Any bytes (a newline, invalid UTF-8), which an argument as a String cannot hold.
            "--comm-hex" => o.comm = Some(hex(value()?)?),
            "--uid" => o.uid = Some(number(flag, value()?)?),
            "--hold" => o.hold = true,
            "--global" => o.global = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

fn hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("--comm-hex {text:?}: an even number of hex digits"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| format!("--comm-hex {text:?}: not hex"))
        })
        .collect()
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value:?} is not a number"))
}

/// `nobody OP ARGS`: one step as uid 65534 (see the module doc).
fn nobody(args: &[String]) -> Result<ExitCode, String> {
    victim::become_user(65534);
    let arg = |i: usize| {
        args.get(i)
            .ok_or_else(|| format!("nobody {args:?}: too few arguments"))
    };
    let done = match args.first().map(String::as_str) {
        Some("mkdir") => std::fs::create_dir(arg(1)?),
        Some("rm") => std::fs::remove_file(arg(1)?),
        Some("ln") => std::os::unix::fs::symlink(arg(1)?, arg(2)?),
        Some("ls") => std::fs::read_dir(arg(1)?).map(|entries| {
            for entry in entries.flatten() {
                println!("{}", entry.file_name().to_string_lossy());
            }
        }),
        Some("connect") => {
            let n: usize = number("connect N", arg(2)?)?;
            let kind: attacker::Kind = arg(3)?.parse()?;
            let secs: f64 = number("connect SECONDS", arg(4)?)?;
            let hold = std::time::Duration::try_from_secs_f64(secs)
                .map_err(|err| format!("connect SECONDS {secs}: {err}"))?;
            attacker::hold(Path::new(arg(1)?), n, kind, hold).map(|f| {
                println!(
                    "figures connects={} closed_by_daemon={} sent={} read={}",
                    f.connects, f.closed_by_daemon, f.sent, f.read
                )
            })
        }
        Some("slots") => attacker::slots(Path::new(arg(1)?)),
        Some("stall") => attacker::stall(Path::new(arg(1)?)),
        Some("exec") => {
            use std::os::unix::process::CommandExt as _;
            // Returns only when it could not run PROGRAM.
            Err(std::process::Command::new(arg(1)?).args(&args[2..]).exec())
        }
        Some("forge-sigkill") => {
            let n: u32 = number("forge-sigkill", arg(1)?)?;
            victim::forge_sigkills(n).map_err(|err| format!("forge-sigkill: {err}"))?;
            println!("forged {n}");
            Ok(())
        }
        other => return Err(format!("nobody: unknown step {other:?}")),
    };
    match done {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("oomcount-hog nobody {args:?}: {err}");
            Ok(ExitCode::from(1))
        }
    }
}
