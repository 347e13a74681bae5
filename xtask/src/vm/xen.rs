//! `cargo xtask xen-test`: oomcount on a real Xen hypervisor, under QEMU TCG.
//!
//! Debian's Xen 4.17 (its hypervisor is a 32-bit multiboot ELF, which QEMU's `-kernel` takes)
//! boots Debian's 6.1 `amd64` kernel (CONFIG_XEN_DOM0) as a PV dom0 with an initramfs of
//! busybox, Debian's Xen tools and their libraries, and the oomcount daemon. dom0 starts
//! oxenstored and two PV guests with the same kernel; each guest runs the oomcount daemon in
//! guest mode (through `/dev/xen/xenbus`) and makes OOM kills in a memory cgroup, and writes its
//! own `/proc/vmstat` delta beside, as the oracle. The second then stops its daemon and writes
//! garbage into its `data/oomcount/`. dom0 prints `oomcount guests --json` before and after
//! `xl destroy` of the first guest, and the `--watch` lines between; the host judges them:
//!
//! - the first guest's `kills` equal its own `/proc/vmstat` delta, its last victim's comm is
//!   `xenvictim`, its verdict is there and every key is valid;
//! - the garbled guest is listed as invalid (its kills null), and the others stay right;
//! - dom0's own row (from its daemon) comes first;
//! - after `xl destroy`, the first guest is gone from the list, and `--watch` said so.
//!
//! Everything is fetched with `apt-get download` (the VM cache's own apt lists) and unpacked
//! with `dpkg -x`, never installed. Boots take 1.5-3 minutes on 2 cores.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use serde_json::Value;

use super::{cpio::Cpio, kernel::Archive};

/// Debian 12's Xen 4.17 (from bookworm-security: the hypervisor, the tools and the libraries
/// they link), and busybox; each named with its suite, since the VM cache's lists also hold
/// sid's newer Xen.
const XEN_PACKAGES: &[&str] = &[
    "xen-hypervisor-4.17-amd64/bookworm-security",
    "xen-utils-4.17/bookworm-security",
    "xen-utils-common/bookworm-security",
    "xenstore-utils/bookworm-security",
    "libxenstore4/bookworm-security",
    "libxenmisc4.17/bookworm-security",
    "libxenevtchn1/bookworm-security",
    "libxengnttab1/bookworm-security",
    "libxentoolcore1/bookworm-security",
    "libxentoollog1/bookworm-security",
    "libxencall1/bookworm-security",
    "libxenforeignmemory1/bookworm-security",
    "libxendevicemodel1/bookworm-security",
    "libxenhypfs1/bookworm-security",
    "libyajl2/bookworm",
    "busybox-static/bookworm",
];
/// The Xen tools dom0 runs.
const DOM0_TOOLS: &[&str] = &[
    "xl",
    "oxenstored",
    "xenconsoled",
    "xen-init-dom0",
    "libxl-save-helper",
];
const DOM0_MODULES: &[&str] = &[
    "xenfs",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
];

#[derive(Args, Default)]
pub struct XenTestArgs {
    /// Seconds the whole boot may take [default: 900].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Where packages and kernels are kept between runs (as vm-test's --cache).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

pub fn run(args: XenTestArgs) -> anyhow::Result<()> {
    let target_dir = crate::workspace_root().join("target").join("vm");
    let out = target_dir.join("xen-test");
    std::fs::create_dir_all(&out)?;
    let (oomcount, hog) = super::build::bins(&target_dir)?;
    let cache = args.cache.clone().unwrap_or_else(super::default_cache);
    let archive = Archive::open(&cache)?;
    let kernel = archive.fetch("6.1", "amd64")?;
    let xen = cache.join("xen-4.17");
    if !xen.join("root/usr/lib/xen-4.17/bin/oxenstored").exists() {
        archive.unpack(XEN_PACKAGES, &xen.join("root"))?;
    }
    let root = xen.join("root");
    let hypervisor = out.join("xen");
    let gz = std::fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".gz") && p.to_string_lossy().contains("xen-4.17"))
        .context("no boot/xen-4.17*.gz in the hypervisor package")?;
    let elf = Command::new("gzip").arg("-dc").arg(&gz).output()?;
    ensure!(elf.status.success(), "gunzip {}", gz.display());
    std::fs::write(&hypervisor, elf.stdout)?;

    // The guests' initramfs, then dom0's, which carries it.
    let mut domu = Initramfs::new(&root);
    domu.base()?;
    domu.with_libs(&root.join("usr/bin/xenstore"), "usr/bin/xenstore")?;
    for c in ["read", "write", "exists", "list"] {
        domu.cpio
            .symlink(&format!("usr/bin/xenstore-{c}"), "xenstore");
    }
    domu.file(&oomcount, "bin/oomcount", 0o755)?;
    domu.file(&hog, "bin/oomcount-hog", 0o755)?;
    domu.cpio
        .file("init", 0o755, include_bytes!("xen/domu-init"));
    let domu = domu.cpio.finish();

    let mut dom0 = Initramfs::new(&root);
    dom0.base()?;
    dom0.with_libs(&root.join("usr/bin/xenstore"), "usr/bin/xenstore")?;
    for c in ["read", "write", "exists", "list", "ls"] {
        dom0.cpio
            .symlink(&format!("usr/bin/xenstore-{c}"), "xenstore");
    }
    for tool in DOM0_TOOLS {
        let path = format!("usr/lib/xen-4.17/bin/{tool}");
        dom0.with_libs(&root.join(&path), &path)?;
    }
    // glibc dlopens libgcc_s for pthread_cancel: `xl create` aborts at its end without it.
    dom0.file(
        Path::new("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
        0o644,
    )?;
    for f in ["oxenstored.conf", "xl.conf"] {
        dom0.file(
            &root.join("etc/xen").join(f),
            &format!("etc/xen/{f}"),
            0o644,
        )?;
    }
    dom0.tree(&root.join("etc/xen/scripts"), "etc/xen/scripts")?;
    dom0.cpio
        .file("etc/xen/domu1.cfg", 0o644, include_bytes!("xen/domu1.cfg"));
    dom0.cpio
        .file("etc/xen/domu2.cfg", 0o644, include_bytes!("xen/domu2.cfg"));
    dom0.file(&kernel.vmlinuz, "boot/vmlinuz", 0o644)?;
    dom0.cpio.file("boot/domu.cpio", 0o644, &domu);
    dom0.file(&oomcount, "bin/oomcount", 0o755)?;
    dom0.modules(&kernel.modules, &kernel.release)?;
    dom0.cpio
        .file("init", 0o755, include_bytes!("xen/dom0-init"));
    let initramfs = out.join("dom0.cpio");
    std::fs::write(&initramfs, dom0.cpio.finish())?;

    let log = out.join("serial.log");
    let timeout = Duration::from_secs(args.timeout.unwrap_or(900));
    eprintln!(
        "xen-test: booting Xen 4.17 + dom0 {} under QEMU TCG (serial log {})",
        kernel.release,
        log.display()
    );
    let started = Instant::now();
    boot(&hypervisor, &kernel.vmlinuz, &initramfs, &log, timeout)?;
    let text = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
    eprintln!("xen-test: boot and test took {:.0?}", started.elapsed());
    judge(&text).with_context(|| format!("xen-test failed; serial log: {}", log.display()))
}

/// Boots QEMU until dom0 prints `XENTEST DONE` and powers off, or `timeout`.
fn boot(
    xen: &Path,
    vmlinuz: &Path,
    initramfs: &Path,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(log);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "tcg", "-machine", "pc", "-cpu", "max", "-smp", "2", "-m", "3072",
        ])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-net",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(xen)
        .arg("-append")
        .arg("console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 noreboot")
        .arg("-initrd")
        .arg(format!(
            "{} console=hvc0 earlyprintk=xen loglevel=4,{}",
            vmlinuz.display(),
            initramfs.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            eprintln!("xen-test: qemu exited ({status})");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("Xen did not finish within {timeout:?}");
        }
        if std::fs::read(log).is_ok_and(|b| b.windows(12).any(|w| w == b"XENTEST DONE")) {
            // dom0 powers off by itself; give it a moment, then stop QEMU (ours, by pid).
            let grace = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `XENTEST JSON NAME ...` line's rows.
fn rows(text: &str, name: &str) -> anyhow::Result<Vec<Value>> {
    let prefix = format!("XENTEST JSON {name} ");
    let line = text
        .lines()
        .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .with_context(|| format!("no `{prefix}` line"))?;
    let value: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("oomcount guests --json printed {line:?}"))?;
    value
        .as_array()
        .cloned()
        .context("oomcount guests --json is not an array")
}

fn field<'a>(text: &'a str, line: &str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| l.contains(line))
        .find_map(|l| l.split(&format!("{key}=")).nth(1))
        .map(|v| v.split_whitespace().next().unwrap_or("").trim())
}

fn judge(text: &str) -> anyhow::Result<()> {
    ensure!(
        text.contains("XENTEST DONE END"),
        "dom0 did not finish its steps: {}",
        text.lines()
            .filter(|l| l.contains("XENTEST"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let d1: u64 = field(text, "XENTEST domids", "domu1")
        .and_then(|v| v.parse().ok())
        .context("no domid for domu1")?;
    let d2: u64 = field(text, "XENTEST domids", "domu2")
        .and_then(|v| v.parse().ok())
        .context("no domid for domu2")?;
    let oracle: u64 = text
        .lines()
        .find(|l| l.contains(&format!("XENTEST ORACLE domid={d1} ")))
        .and_then(|l| l.split("vmstat_delta=").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .context("domu1 wrote no vmstat delta")?;
    ensure!(oracle > 0, "domu1 made no OOM kill (vmstat delta 0)");
    let before = rows(text, "before")?;
    let row = |rows: &[Value], d: u64| rows.iter().find(|r| r["domid"] == d).cloned();
    ensure!(
        before.first().is_some_and(|r| r["domid"] == 0),
        "dom0's row is not first: {before:?}"
    );
    let g1 = row(&before, d1).context("domu1 is not listed")?;
    ensure!(g1["valid"] == true, "domu1's keys are not all valid: {g1}");
    ensure!(
        g1["kills"] == oracle,
        "domu1: oomcount guests says {} kills, its /proc/vmstat delta is {oracle}",
        g1["kills"]
    );
    ensure!(
        g1["last_kill"]["comm"] == "xenvictim",
        "domu1's last victim: {g1}"
    );
    ensure!(g1["verdict"].is_string(), "domu1 has no verdict: {g1}");
    ensure!(g1["name"] == "domu1", "domu1's name: {g1}");
    let g2 = row(&before, d2).context("domu2 is not listed")?;
    ensure!(
        g2["valid"] == false && g2["kills"].is_null(),
        "domu2's garbage is not shown invalid: {g2}"
    );
    let after = rows(text, "after")?;
    ensure!(
        row(&after, d1).is_none(),
        "domu1 is still listed after xl destroy: {after:?}"
    );
    ensure!(
        row(&after, d2).is_some(),
        "domu2 left the list with domu1: {after:?}"
    );
    let gone = format!(r#""change":"gone","domid":{d1}"#);
    ensure!(
        text.contains(&gone),
        "oomcount guests --watch did not say domu1 went"
    );
    eprintln!(
        "xen-test: PASS: domu1 (domid {d1}) {oracle} kills = its /proc/vmstat delta, last victim xenvictim, verdict {}; domu2 (domid {d2}) invalid ({}); domu1 gone after xl destroy",
        g1["verdict"], g2["invalid"]
    );
    Ok(())
}

/// An initramfs being built from the host's and the unpacked packages' files.
struct Initramfs<'a> {
    cpio: Cpio,
    /// The unpacked packages (their libraries are taken from here first).
    root: &'a Path,
    added: std::collections::BTreeSet<String>,
}

impl<'a> Initramfs<'a> {
    fn new(root: &'a Path) -> Initramfs<'a> {
        Initramfs {
            cpio: Cpio::new(1),
            root,
            added: Default::default(),
        }
    }

    fn dirs_of(&mut self, dest: &str) {
        let mut at = String::new();
        for part in dest
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if self.added.insert(at.clone()) {
                self.cpio.dir(&at);
            }
        }
    }

    fn file(&mut self, src: &Path, dest: &str, mode: u32) -> anyhow::Result<()> {
        if !self.added.insert(dest.to_owned()) {
            return Ok(());
        }
        self.dirs_of(dest);
        let data = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        self.cpio.file(dest, mode, &data);
        Ok(())
    }

    /// Busybox and its applets, and the folders every init needs.
    fn base(&mut self) -> anyhow::Result<()> {
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "var", "etc",
            "lib64",
        ] {
            self.dirs_of(&format!("{d}/x"));
        }
        self.cpio.symlink("var/run", "../run");
        self.cpio.symlink("var/lock", "../run/lock");
        let busybox = self.root.join("bin/busybox");
        self.file(&busybox, "bin/busybox", 0o755)?;
        let list = Command::new(&busybox).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let dest = format!("bin/{applet}");
            if applet != "busybox" && self.added.insert(dest.clone()) {
                self.cpio.symlink(&dest, "busybox");
            }
        }
        Ok(())
    }

    /// `src` at `dest`, and every shared library `ldd` names for it (from the unpacked packages
    /// where they are, else the host's: the packages are Debian 12's, as the host).
    fn with_libs(&mut self, src: &Path, dest: &str) -> anyhow::Result<()> {
        self.file(src, dest, 0o755)?;
        let libdir = self.root.join("usr/lib/x86_64-linux-gnu");
        let out = Command::new("ldd")
            .arg(src)
            .env("LD_LIBRARY_PATH", &libdir)
            .output()
            .context("ldd")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split("=>").nth(1) {
                Some(rest) => rest.split_whitespace().next().unwrap_or(""),
                None => line.split_whitespace().next().unwrap_or(""),
            };
            if !path.starts_with('/') {
                continue;
            }
            let lib = Path::new(path);
            let dest = match lib.strip_prefix(self.root) {
                Ok(inside) => inside.to_path_buf(),
                Err(_) => lib.strip_prefix("/").unwrap_or(lib).to_path_buf(),
            };
            self.file(lib, &dest.to_string_lossy(), 0o755)?;
        }
        Ok(())
    }

    /// A folder's files, recursively (the hotplug scripts).
    fn tree(&mut self, src: &Path, dest: &str) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() {
                self.tree(&path, &format!("{dest}/{name}"))?;
            } else if path.is_file() {
                self.file(&path, &format!("{dest}/{name}"), 0o755)?;
            }
        }
        Ok(())
    }

    /// dom0's Xen modules, decompressed, with `depmod`'s index so that busybox modprobe finds
    /// them.
    fn modules(&mut self, modules: &Path, release: &str) -> anyhow::Result<()> {
        let staging =
            std::env::temp_dir().join(format!("oomcount-xen-modules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let base = staging.join("lib/modules").join(release);
        for name in DOM0_MODULES {
            let file = find(&modules.join("kernel"), name)
                .with_context(|| format!("{release} has no module {name}"))?;
            let rel = file.strip_prefix(modules)?.to_string_lossy().into_owned();
            let rel = rel
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .to_owned();
            let data = super::initramfs::decompress(&file)?;
            let dest = base.join(&rel);
            std::fs::create_dir_all(dest.parent().expect("a folder"))?;
            std::fs::write(&dest, data)?;
        }
        for f in [
            "modules.builtin",
            "modules.builtin.modinfo",
            "modules.order",
        ] {
            if modules.join(f).exists() {
                std::fs::copy(modules.join(f), base.join(f))?;
            }
        }
        crate::check(Command::new("depmod").arg("-b").arg(&staging).arg(release))?;
        self.tree_data(&staging, "")?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(())
    }

    fn tree_data(&mut self, src: &Path, dest: &str) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let d = if dest.is_empty() {
                name
            } else {
                format!("{dest}/{name}")
            };
            if entry.path().is_dir() {
                self.tree_data(&entry.path(), &d)?;
            } else {
                self.file(&entry.path(), &d, 0o644)?;
            }
        }
        Ok(())
    }
}

/// `NAME.ko[.xz|.zst]` below `dir`.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if let Some(file) = path.file_name().and_then(|n| n.to_str())
            && file
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(".ko"))
        {
            return Some(path);
        }
    }
    None
}
