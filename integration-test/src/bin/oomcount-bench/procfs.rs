//! What `/proc` says about a process: memory (`status`, `smaps`) and CPU time (`stat`).
use std::{collections::BTreeMap, fs};

/// `VmRSS`, `VmHWM` and `VmLck` of `/proc/PID/status`, in kB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub locked_kb: u64,
}

pub fn memory(pid: u32) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|err| format!("read {path}: {err}"))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        locked_kb: field("VmLck:"),
    })
}

/// User plus system CPU time of the process (all its threads), in clock ticks (`USER_HZ`).
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// User and system CPU time of the process, in clock ticks.
pub fn cpu_split(pid: u32) -> Result<(u64, u64), String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|err| format!("read {path}: {err}"))?;
    // The fields after the command name, which may hold spaces and parentheses.
    let rest = text
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: {text:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the state.
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => Ok((user, system)),
        _ => Err(format!("{path}: no utime/stime in {text:?}")),
    }
}

/// Milliseconds per clock tick.
pub fn ms_per_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1000.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Where the resident set goes: `Rss` of `/proc/PID/smaps` summed by what each mapping is
/// (the executable's code, its read-only data, its writable data, each shared library, the
/// heap, stacks, BPF maps, other anonymous memory), in kB.
pub fn rss_by_mapping(pid: u32) -> Result<BTreeMap<String, u64>, String> {
    let path = format!("/proc/{pid}/smaps");
    let text = fs::read_to_string(&path).map_err(|err| format!("read {path}: {err}"))?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut sums = BTreeMap::new();
    let mut kind = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let perms = words.next().unwrap_or("");
            let name = words.nth(3).unwrap_or("");
            kind = classify(name, perms, &exe);
        } else if first == "Rss:" {
            let kb: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if kb > 0 {
                *sums.entry(kind.clone()).or_insert(0) += kb;
            }
        }
    }
    Ok(sums)
}

fn classify(name: &str, perms: &str, exe: &str) -> String {
    let part = if perms.contains('x') {
        "code"
    } else if perms.contains('w') {
        "data"
    } else {
        "read-only data"
    };
    if !exe.is_empty() && name.starts_with(exe) {
        return format!("executable {part}");
    }
    if name.starts_with('/') {
        let file = name.rsplit('/').next().unwrap_or(name);
        let lib = file.split(".so").next().unwrap_or(file);
        return format!("{lib} {part}");
    }
    match name {
        "[heap]" => "heap".to_owned(),
        "[stack]" => "main stack".to_owned(),
        "[vdso]" | "[vvar]" | "[vsyscall]" => "vdso".to_owned(),
        n if n.starts_with("anon_inode:bpf") => "BPF maps (ring buffer)".to_owned(),
        "" => "anonymous (malloc arenas, thread stacks)".to_owned(),
        other => other.to_owned(),
    }
}

/// A sysctl set for a measurement: the value found before is put back when dropped (on error
/// and panic too).
pub struct Sysctl {
    path: &'static str,
    previous: String,
}

impl Sysctl {
    pub fn set(path: &'static str, value: &str) -> Result<Sysctl, String> {
        let previous = fs::read_to_string(path)
            .map_err(|err| format!("read {path}: {err}"))?
            .trim()
            .to_owned();
        fs::write(path, value).map_err(|err| format!("write {value} to {path}: {err}"))?;
        Ok(Sysctl { path, previous })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(err) = fs::write(self.path, &self.previous) {
            eprintln!(
                "bench: cannot restore {} to {}: {err}",
                self.path, self.previous
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_mappings() {
        let exe = "/t/release/oomcount";
        assert_eq!(classify(exe, "r-xp", exe), "executable code");
        assert_eq!(classify(exe, "r--p", exe), "executable read-only data");
        assert_eq!(
            classify("/usr/lib/x86_64-linux-gnu/libc.so.6", "r-xp", exe),
            "libc code"
        );
        assert_eq!(
            classify("anon_inode:bpf-map", "r--s", exe),
            "BPF maps (ring buffer)"
        );
        assert_eq!(classify("[heap]", "rw-p", exe), "heap");
    }
}
