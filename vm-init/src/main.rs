//! `/init` of oomcount's VM test guests (built static by `cargo xtask vm-test`).
//!
//! The kernel runs it as PID 1 on an initramfs that holds nothing else but oomcount's binaries:
//! no shell, no busybox. It mounts what BPF and cgroup2 memory control need, loads the modules
//! the host packed, runs every test with a deadline, reports each on the report port (see
//! `oomcount_vm_init::report`) and powers the guest off. Arguments come from the kernel command
//! line after `--`: `--test-timeout SECS`, any number of `--filter SUBSTRING`, and
//! `--run-ignored` (for the watchdog scenarios).
mod modules;
mod mounts;
mod power;
mod runner;
mod sweep;

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use oomcount_vm_init::report::Line;

/// What the host asked for on the kernel command line.
pub struct Config {
    pub test_timeout: Duration,
    pub filters: Vec<String>,
    /// Run the `#[ignore]`d tests the filters select (the watchdog scenarios, which reset the
    /// guest: one per boot).
    pub run_ignored: bool,
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("oomcount-vm-init is the /init of a VM test guest: run `cargo xtask vm-test`");
        std::process::exit(2);
    }
    let config = parse_args(std::env::args().skip(1));
    let mut errors = mounts::mount_all();
    errors.extend(mounts::user_database());
    errors.extend(mounts::loopback_up().err());
    let mut reporter = Reporter::open();
    let version = std::fs::read_to_string("/proc/version").unwrap_or_default();
    reporter.send(&Line::Booted {
        uptime: uptime(),
        version,
    });
    errors.extend(modules::load_all());
    for error in errors {
        reporter.send(&Line::Error(error));
    }
    runner::run_all(&config, &mut reporter);
    reporter.send(&Line::Done { uptime: uptime() });
    power::off()
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Config {
    let mut config = Config {
        test_timeout: Duration::from_secs(300),
        filters: Vec::new(),
        run_ignored: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--run-ignored" => config.run_ignored = true,
            "--test-timeout" => match args.next().map(|secs| secs.parse()) {
                Some(Ok(secs)) => config.test_timeout = Duration::from_secs(secs),
                _ => eprintln!("oomcount-vm: bad --test-timeout, keeping the default"),
            },
            "--filter" => config.filters.extend(args.next()),
            arg => eprintln!("oomcount-vm: unknown argument {arg}, ignored"),
        }
    }
    config
}

/// Sends report lines to the host's report file and echoes them on the console.
pub struct Reporter {
    port: Option<std::fs::File>,
}

impl Reporter {
    /// The guest's second serial port; QEMU writes it to the host's report file.
    const PORT: &str = "/dev/ttyS1";

    fn open() -> Reporter {
        let port = std::fs::OpenOptions::new().write(true).open(Self::PORT);
        if let Err(err) = &port {
            // The host finds no report and fails this kernel, pointing at the console log.
            println!(
                "oomcount-vm: cannot open the report port {}: {err}",
                Self::PORT
            );
        }
        Reporter { port: port.ok() }
    }

    pub fn send(&mut self, line: &Line) {
        let text = format!("{line}\n");
        print!("{text}");
        if let Some(port) = &mut self.port {
            // One write per line: nothing else writes to this port.
            if let Err(err) = port.write_all(text.as_bytes()) {
                println!("oomcount-vm: writing the report port: {err}");
            }
            // Out of the UART before anything else happens: the last line is followed by the
            // guest's exit, which would cut what the tty layer still holds.
            // SAFETY: tcdrain on an open descriptor of ours.
            unsafe { libc::tcdrain(port.as_raw_fd()) };
        }
    }
}

/// Seconds since boot, from `/proc/uptime` (0 when unreadable).
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
