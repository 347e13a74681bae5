//! BPF run-time statistics: `kernel.bpf_stats_enabled` on only while measuring (a guard puts
//! the previous value back, on error and panic too), and each program's `run_time_ns` and
//! `run_cnt` as `/proc/PID/fdinfo` shows them for the BPF program fds a process holds. Names
//! come from `/proc/kallsyms`, where a JITed program is `bpf_prog_TAG_NAME`.
use std::{collections::HashMap, fs};

use crate::procfs::Sysctl;

/// Statistics on until the guard is dropped; then the value found before.
pub fn stats_on() -> Result<Sysctl, String> {
    Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")
}

/// One BPF program held by a process, at one moment.
#[derive(Clone, Debug)]
pub struct Prog {
    pub id: u64,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// The BPF programs process `pid` holds (by fd), with their statistics now.
pub fn programs(pid: u32) -> Result<Vec<Prog>, String> {
    let names = jited_names();
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).map_err(|err| format!("read {dir}: {err}"))?;
    let mut progs = Vec::new();
    for entry in entries.flatten() {
        let is_prog = fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(&info) else {
            continue; // closed meanwhile
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
        };
        let number = |key: &str| field(key).parse::<u64>().unwrap_or(0);
        let tag = field("prog_tag:");
        let id = number("prog_id:");
        if progs.iter().any(|p: &Prog| p.id == id) {
            continue; // the same program through another fd
        }
        progs.push(Prog {
            id,
            name: names
                .get(tag)
                .cloned()
                .unwrap_or_else(|| format!("tag {tag}")),
            run_time_ns: number("run_time_ns:"),
            run_cnt: number("run_cnt:"),
        });
    }
    Ok(progs)
}

/// The change of one program's statistics between two snapshots.
#[derive(Clone, Debug)]
pub struct Cost {
    pub name: String,
    pub runs: u64,
    pub ns_per_run: Option<f64>,
}

/// The programs of `after` with what they cost since `before` (matched by id).
pub fn costs(before: &[Prog], after: &[Prog]) -> Vec<Cost> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt);
            let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns);
            Cost {
                name: a.name.clone(),
                runs,
                ns_per_run: (runs > 0).then(|| ns as f64 / runs as f64),
            }
        })
        .collect()
}

/// Tag -> name of every JITed BPF program in `/proc/kallsyms` (`bpf_prog_TAG_NAME`).
fn jited_names() -> HashMap<String, String> {
    let text = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    text.lines()
        .filter(|l| l.ends_with("[bpf]"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|sym| sym.strip_prefix("bpf_prog_"))
        .filter_map(|rest| rest.split_once('_'))
        .map(|(tag, name)| (tag.to_owned(), name.to_owned()))
        .filter(|(_, name)| name != "memset" && name != "memcpy")
        .collect()
}
