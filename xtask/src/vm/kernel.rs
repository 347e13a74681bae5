//! Debian kernels for the matrix, from Debian's archive, kept in a cache between runs.
//!
//! `apt-get download` with apt lists of our own (bullseye, bookworm, sid and their security
//! suites) under the cache folder: the host's apt sources are neither needed nor changed, and no
//! kernel is ever installed on the host; `dpkg -x` unpacks the packages into the cache. A series
//! (`6.1`) picks the newest ABI of that series the lists know; an exact ABI (`5.10.0-32`, or
//! `6.12.117+deb12`) picks that one. sid splits its image into `linux-binary-*`,
//! `linux-modules-*` and `linux-base-*` packages, fetched along with it.
mod series;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use series::{in_series, version_cmp};

/// One unpacked kernel.
pub struct Kernel {
    /// The kernel release, as `uname -r` says (`5.10.0-32-cloud-amd64`).
    pub release: String,
    /// The Debian package's version (`5.10.223-1`).
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/RELEASE` of the unpacked packages.
    pub modules: PathBuf,
}

impl Kernel {
    /// The upstream version, the column header of the results (`5.10.223`).
    pub fn upstream(&self) -> &str {
        self.version
            .split_once('-')
            .map_or(&self.version, |(upstream, _)| upstream)
    }
}

const SUITES: &[&str] = &["bullseye", "bookworm", "sid"];
/// How old the apt lists may get before a run refreshes them.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Debian's archive, through apt lists kept in the cache.
pub struct Archive {
    cache: PathBuf,
}

impl Archive {
    /// Makes the cache's folders and refreshes its apt lists when they are a day old.
    pub fn open(cache: &Path) -> anyhow::Result<Archive> {
        let archive = Archive {
            cache: cache.to_path_buf(),
        };
        for dir in [
            "apt/lists/partial",
            "apt/cache/archives/partial",
            "apt/parts",
            "deb",
            "kernels",
        ] {
            let dir = cache.join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let stamp = cache.join("apt/updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < LISTS_MAX_AGE);
        if !fresh {
            archive.update().or_else(|err| {
                let lists = std::fs::read_dir(cache.join("apt/lists"))?;
                if lists.count() > 2 {
                    eprintln!("vm-test: {err:#}; using the older lists in the cache");
                    Ok(())
                } else {
                    Err(err)
                }
            })?;
            std::fs::write(&stamp, b"").with_context(|| format!("write {}", stamp.display()))?;
        }
        Ok(archive)
    }

    fn update(&self) -> anyhow::Result<()> {
        let mirror = host_mirror();
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut sources = String::new();
        for suite in SUITES {
            sources.push_str(&format!(
                "deb [signed-by={keyring}] {mirror} {suite} main\n"
            ));
            if *suite != "sid" {
                let line =
                    format!("deb [signed-by={keyring}] {mirror}-security {suite}-security main\n");
                sources.push_str(&line);
            }
        }
        let list = self.cache.join("apt/sources.list");
        std::fs::write(&list, sources).with_context(|| format!("write {}", list.display()))?;
        eprintln!(
            "vm-test: refreshing the apt lists of {} ({mirror})",
            self.cache.display()
        );
        let status = self.apt("apt-get").args(["-q", "update"]).status();
        match status {
            Ok(status) if status.success() => Ok(()),
            _ => bail!(
                "could not refresh Debian's package lists into {} (apt-get update; is {mirror} \
                 reachable?)",
                self.cache.display()
            ),
        }
    }

    /// `program` (apt-get or apt-cache) on the cache's lists instead of the host's.
    fn apt(&self, program: &str) -> Command {
        let apt = self.cache.join("apt");
        let mut cmd = Command::new(program);
        for (key, value) in [
            ("Dir::Etc::SourceList", apt.join("sources.list")),
            ("Dir::Etc::SourceParts", apt.join("parts")),
            ("Dir::State::Lists", apt.join("lists")),
            ("Dir::Cache", apt.join("cache")),
            ("APT::Sandbox::User", PathBuf::from("root")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        cmd
    }

    /// Downloads `packages` and unpacks them all into `root` (for the Xen test).
    pub fn unpack(&self, packages: &[&str], root: &Path) -> anyhow::Result<()> {
        eprintln!("xen-test: downloading {}", packages.join(" "));
        let debs = self.cache.join("deb");
        let mut cmd = self.apt("apt-get");
        cmd.current_dir(&debs)
            .args(["-q", "download"])
            .args(packages);
        crate::check(&mut cmd)
            .context("download the Xen packages (is Debian's archive reachable?)")?;
        let partial = root.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("create {}", partial.display()))?;
        for package in packages {
            // `NAME/SUITE` picks the suite; the file is named after NAME.
            let name = package.split('/').next().unwrap_or(package);
            let deb = find_deb(&debs, name)?;
            crate::check(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
            let _ = std::fs::remove_file(&deb);
        }
        let _ = std::fs::remove_dir_all(root);
        std::fs::rename(&partial, root).with_context(|| format!("rename to {}", root.display()))
    }

    /// The kernel of `series` and `flavour`, downloaded and unpacked unless the cache has it.
    pub fn fetch(&self, series: &str, flavour: &str) -> anyhow::Result<Kernel> {
        let image = self.image_package(series, flavour)?;
        let release = image.trim_start_matches("linux-image-").to_owned();
        let dir = self.cache.join("kernels").join(&release);
        if !dir.join("version").exists() {
            self.download(&image, &release, &dir)?;
        }
        let version = std::fs::read_to_string(dir.join("version"))?
            .trim()
            .to_owned();
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|base| dir.join(base).join(&release))
            .find(|path| path.is_dir())
            .with_context(|| format!("no lib/modules/{release} in {}", dir.display()))?;
        let vmlinuz = [
            dir.join("boot").join(format!("vmlinuz-{release}")),
            modules.join("vmlinuz"),
        ]
        .into_iter()
        .find(|path| path.is_file())
        .with_context(|| format!("no vmlinuz in {}", dir.display()))?;
        Ok(Kernel {
            release,
            version,
            vmlinuz,
            modules,
        })
    }

    /// `linux-image-RELEASE` for an exact ABI, or the newest of a series.
    fn image_package(&self, series: &str, flavour: &str) -> anyhow::Result<String> {
        if series.contains(['-', '+']) {
            return Ok(format!("linux-image-{series}-{flavour}"));
        }
        let prefix = format!("linux-image-{series}");
        let out = self.apt("apt-cache").args(["pkgnames", &prefix]).output()?;
        let names = String::from_utf8_lossy(&out.stdout);
        let mut candidates: Vec<&str> = names
            .lines()
            .filter(|name| in_series(name, series, flavour))
            .collect();
        candidates.sort_by(|a, b| version_cmp(a, b));
        // pkgnames also knows names that no list offers any more: take the newest one that is.
        candidates
            .into_iter()
            .rev()
            .find(|name| self.package_version(name).is_some())
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "no Debian package linux-image-{series}.*-{flavour} in bullseye, bookworm or \
                     sid: name a series (5.10, 6.1, 6.12, 7.2) or an exact ABI (5.10.0-32)"
                )
            })
    }

    /// The candidate version of `package`, if the lists have it.
    fn package_version(&self, package: &str) -> Option<String> {
        let out = self
            .apt("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|line| line.strip_prefix("Version: "))?;
        out.status.success().then(|| version.trim().to_owned())
    }

    fn download(&self, image: &str, release: &str, dir: &Path) -> anyhow::Result<()> {
        let version = self.package_version(image).with_context(|| {
            format!("Debian has no package {image}: name another series or ABI")
        })?;
        let mut packages = vec![image.to_owned()];
        for part in ["linux-binary", "linux-modules", "linux-base"] {
            let name = format!("{part}-{release}");
            if self.package_version(&name).is_some() {
                packages.push(name);
            }
        }
        eprintln!("vm-test: downloading {} ({version})", packages.join(" "));
        let debs = self.cache.join("deb");
        let mut cmd = self.apt("apt-get");
        cmd.current_dir(&debs)
            .args(["-q", "download"])
            .args(&packages);
        crate::check(&mut cmd)
            .context("download the kernel packages (is Debian's archive reachable?)")?;
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        for package in &packages {
            let deb = find_deb(&debs, package)?;
            crate::check(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
            // The unpacked folder is the cache; the package would only take the space twice.
            let _ = std::fs::remove_file(&deb);
        }
        std::fs::write(partial.join("version"), format!("{version}\n"))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&partial, dir).with_context(|| format!("rename to {}", dir.display()))
    }
}

/// The `.deb` that `apt-get download` left for `package` (`PACKAGE_VERSION_ARCH.deb`).
fn find_deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .collect();
    debs.sort();
    debs.pop().with_context(|| {
        format!(
            "apt-get download left no {prefix}*.deb in {}",
            dir.display()
        )
    })
}

/// The Debian mirror this host's apt uses (Debian's CDN when none is found).
fn host_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
                .map(|w| w.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}
