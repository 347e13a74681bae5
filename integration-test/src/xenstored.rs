//! A real xenstored (Debian's oxenstored from Xen 4.17) on a host without Xen, for the xenstore
//! client's tests.
//!
//! The packages are fetched with `apt-get download` and unpacked with `dpkg -x` into a cache
//! folder (`$OOMCOUNT_XEN_CACHE`, default `target/xen-cache` of the workspace): never installed.
//! oxenstored then runs in a private mount namespace where `/dev/xen` holds empty `privcmd` and
//! `gntdev` files and an `evtchn` FIFO, with a small LD_PRELOAD shim (`xs-shim.c`, built with
//! gcc) that lets its event-channel ioctls succeed; `/run/xenstored` there is a folder of the
//! test's own, so its socket is reached from the host at [`Xenstored::socket`] and nothing of the
//! host's is touched. Stopped (by its pid) when dropped.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait::{deadline, wait_until};

/// The Debian packages oxenstored needs (it links the Xen control libraries).
const PACKAGES: [&str; 12] = [
    "xen-utils-4.17",
    "libxenstore4",
    "libxenmisc4.17",
    "libxenevtchn1",
    "libxengnttab1",
    "libxentoolcore1",
    "libxentoollog1",
    "libxencall1",
    "libxenforeignmemory1",
    "libxendevicemodel1",
    "libxenhypfs1",
    "libyajl2",
];

const SHIM: &str = include_str!("xs-shim.c");

/// Why no oxenstored can run here, if so: the VM guests carry no apt, dpkg, gcc or unshare (the
/// protocol does not depend on the kernel: the host's run and `cargo xtask xen-test` check it).
pub fn unavailable() -> Option<String> {
    crate::in_vm().then(|| {
        format!(
            "no oxenstored in the VM guest ({}): the host's run and `cargo xtask xen-test` test xenstore",
            crate::kernel_release()
        )
    })
}

/// The cache folder of the Xen packages.
pub fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("OOMCOUNT_XEN_CACHE") {
        return dir.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("target/xen-cache")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fetches and unpacks the packages unless the cache has them; builds the shim. Returns the
/// unpacked root.
pub fn fetch() -> PathBuf {
    let cache = cache();
    let root = cache.join("root");
    let bin = root.join("usr/lib/xen-4.17/bin/oxenstored");
    if !bin.exists() {
        let debs = cache.join("deb");
        std::fs::create_dir_all(&debs).expect("create the xen cache");
        run(
            Command::new("apt-get")
                .current_dir(&debs)
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .args(PACKAGES),
            "downloading Debian's Xen 4.17 packages (apt-get update first if apt's lists are old)",
        );
        for deb in std::fs::read_dir(&debs).expect("read the debs") {
            let deb = deb.expect("a deb").path();
            if deb.extension().is_some_and(|e| e == "deb") {
                run(
                    Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
                    "dpkg -x",
                );
            }
        }
        assert!(bin.exists(), "no oxenstored in {}", root.display());
    }
    let shim = cache.join("xs-shim.so");
    let src = cache.join("xs-shim.c");
    if std::fs::read_to_string(&src).ok().as_deref() != Some(SHIM) || !shim.exists() {
        std::fs::write(&src, SHIM).expect("write the shim's source");
        run(
            Command::new("gcc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&shim)
                .arg(&src)
                .arg("-ldl"),
            "building the oxenstored shim (gcc)",
        );
    }
    root
}

/// A running oxenstored of the test's own.
pub struct Xenstored {
    child: Child,
    dir: PathBuf,
}

impl Xenstored {
    /// Starts oxenstored, and waits until its socket answers.
    pub fn start() -> Xenstored {
        let root = fetch();
        let dir = std::env::temp_dir().join(crate::unique_name("oomcount-xenstored"));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["xen", "run", "dev"] {
            std::fs::create_dir_all(dir.join(d)).expect("create the store's folder");
        }
        std::fs::write(dir.join("xen/privcmd"), "").unwrap();
        std::fs::write(dir.join("xen/gntdev"), "").unwrap();
        nix::unistd::mkfifo(
            &dir.join("xen/evtchn"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo evtchn");
        let d = dir.display();
        std::fs::write(
            dir.join("conf"),
            format!(
                "persistent = false\npid-file = {d}/pid\nxenstored-log-file = {d}/log\naccess-log-file = {d}/access.log\n"
            ),
        )
        .unwrap();
        let out = std::fs::File::create(dir.join("out")).unwrap();
        // In the namespace: /dev replaced by a tmpfs that links to the real nodes plus the fake
        // /dev/xen; /run a tmpfs whose /run/xenstored is the test's folder.
        let script = r#"set -e
mount --make-rprivate /
mount --rbind /dev "$0/dev"
mount -t tmpfs tmpfs /dev
ln -s "$0"/dev/* /dev/
cp -a "$0/xen" /dev/
mount -t tmpfs tmpfs /run
mkdir /run/xenstored
mount --bind "$0/run" /run/xenstored
exec "$1" --no-fork --no-domain-init --config-file "$0/conf""#;
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", script])
            .arg(&dir)
            .arg(root.join("usr/lib/xen-4.17/bin/oxenstored"))
            .env("LD_PRELOAD", cache().join("xs-shim.so"))
            .env("LD_LIBRARY_PATH", root.join("usr/lib/x86_64-linux-gnu"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start oxenstored under unshare");
        let mut store = Xenstored { child, dir };
        let socket = store.socket();
        wait_until(
            deadline(Duration::from_secs(20)),
            "oxenstored's socket",
            || {
                if let Ok(Some(status)) = store.child.try_wait() {
                    panic!("oxenstored ended ({status}): {}", store.output());
                }
                std::os::unix::net::UnixStream::connect(&socket).map_err(|e| e.to_string())
            },
        );
        store
    }

    /// The socket, as the host sees it.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("run/socket")
    }

    /// The daemon's pid (the shell `exec`s it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What oxenstored printed, and its log.
    pub fn output(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("out"), read("log"))
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
