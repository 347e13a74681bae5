//! The kernel side, seen from userspace: loading and attaching oomcount's eBPF programs, pinning
//! them so that they outlive the daemon, adopting pins a previous daemon left, reading the
//! counters and taking the event stream.
//!
//! The object is embedded in the binary (built by `build.rs`). It is loaded without aya's parse
//! of the kernel's BTF: the few kernel-structure offsets the programs need come from
//! [`crate::probe::offsets`], and parsing the kernel's 5 MB of BTF would only cost memory.
use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{Program, RawTracePoint, TracePoint, links::FdLink},
};
use oomcount_common::{
    ABSENT, GLOBAL_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_KILL_PROG, PIN_VERSION, PROG_MARK_VICTIM,
    PROG_MARK_VICTIM_RAW, PROG_MARK_VICTIM_RAW_LOOP, PROG_SIGNAL_GENERATE,
    PROG_SIGNAL_GENERATE_RAW, TP_MARK_VICTIM, TP_SIGNAL_GENERATE, counter, feature, pin,
};

use crate::host::system;
use counters::{CounterMap, Counters};

pub(crate) mod btf;
pub mod counters;
pub mod event;
pub(crate) mod offsets;
pub mod pins;
pub(crate) mod tracefs;

/// The eBPF object, as `build.rs` left it.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomcount"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "loading eBPF needs root (CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON): run `oomcount daemon` as root"
    )]
    NotPrivileged,
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error(
        "the kernel ({kernel}) refused oomcount's eBPF maps or programs (is bpf() restricted here: lockdown, seccomp, a container?)"
    )]
    Load {
        kernel: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error(
        "the kernel ({kernel}) refused program {program} (is bpf() restricted here: lockdown, seccomp, a container?)"
    )]
    Program {
        kernel: String,
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot attach to tracepoint {category}/{name} on Linux {kernel}")]
    Attach {
        kernel: String,
        category: &'static str,
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("oomcount's eBPF object has no map or program {0}: the build is broken")]
    Missing(&'static str),
    #[error("cannot make the tracepoint's link pinnable")]
    Link(#[source] aya::programs::links::LinkError),
    #[error("cannot read or write the counter map")]
    Map(#[from] aya::maps::MapError),
}

/// How the probe came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Attached now, and pinned.
    Attached,
    /// Attached now, not pinned (`--no-pin`, or a kernel whose attachments cannot be pinned).
    Unpinned,
    /// Adopted from the pins a previous daemon left: its counts go on.
    Adopted,
    /// Attached now, replacing pins of another layout version, whose counts were carried over.
    Upgraded,
}

/// oomcount's programs, attached. Dropping it detaches them unless they are pinned.
pub(crate) struct Probe {
    /// The loaded object, when loaded by this process (not when adopted).
    _ebpf: Option<Ebpf>,
    /// Links taken from their programs but not pinned: dropping them detaches.
    _links: Vec<FdLink>,
    /// This process's own descriptors of its pinned maps and links, when pinned: the probe
    /// stays attached while they are held, whatever becomes of the pins.
    held: Option<pins::Held>,
    counters: CounterMap,
    events: Option<RingBuf<MapData>>,
    attached_at: SystemTime,
    origin: Origin,
}

impl Probe {
    /// Attaches the programs, pinning them under `pin_dir` when given: adopts the pins found
    /// there when their version is this one's, replaces them (keeping their counts and the
    /// watchdog's latch) when not, or when their links are missing.
    pub(crate) fn attach(pin_dir: Option<&Path>) -> Result<Self, ProbeError> {
        if !system::may_load_bpf() {
            return Err(ProbeError::NotPrivileged);
        }
        let Some(dir) = pin_dir else {
            return Self::load(None, None);
        };
        pins::ensure_dir(dir)?;
        match pins::Pinned::open(dir)? {
            Some(pinned) if pinned.version() == pin_version() && pinned.links_present() => {
                Self::adopt(pinned)
            }
            Some(pinned) => {
                log::info!(
                    "replacing pins of layout version {}{} in {} with version {}; their counts go on",
                    pinned.version(),
                    if pinned.links_present() {
                        ""
                    } else {
                        " without links"
                    },
                    dir.display(),
                    pin_version()
                );
                let mut probe = Self::load(Some(dir), Some(pinned))?;
                if probe.origin == Origin::Attached {
                    probe.origin = Origin::Upgraded;
                }
                Ok(probe)
            }
            None => Self::load(Some(dir), None),
        }
    }

    fn adopt(pinned: pins::Pinned) -> Result<Self, ProbeError> {
        let (counters, events, attached_ns, held) = pinned.into_parts()?;
        Ok(Self {
            _ebpf: None,
            _links: Vec::new(),
            held: Some(held),
            counters,
            events: Some(events),
            attached_at: UNIX_EPOCH + Duration::from_nanos(attached_ns),
            origin: Origin::Adopted,
        })
    }

    /// Loads and attaches the programs (the signal program first, so that no kill is marked
    /// before its signal can be seen), then pins them under `pin_dir` where the kernel allows,
    /// in place of the pins `replacing`, whose counts and latch go on in the new counter map.
    fn load(pin_dir: Option<&Path>, replacing: Option<pins::Pinned>) -> Result<Self, ProbeError> {
        let tracefs = tracefs::ensure_mounted()?;
        let mut config = tracefs::load_config(&tracefs)?;
        crate::probe::offsets::fill(&mut config);
        // Raw `mark_victim` arguments: `(task, uid)` on the new layout, `(pid)` on the old.
        config.mark_raw_task = u32::from(config.mark_victim.total_vm != ABSENT);
        // Both programs go on raw tracepoints wherever BTF gives the task's offsets. A classic
        // tracepoint's program is skipped while any BPF program or map syscall holds the CPU's
        // `bpf_prog_active` (a `bpf()` lookup of a per-CPU map does, and can be preempted): a
        // mark would be lost. A raw tracepoint only guards against its own recursion. Raw links
        // can also be pinned on every kernel; classic ones need BPF perf links (5.15+). The
        // classic programs remain for kernels without BTF.
        let perf_links = aya::features().bpf_perf_link();
        let raw_signal = config.features & feature::TASK != 0;
        let raw_mark = raw_signal && std::env::var_os("OOMCOUNT_TEST_CLASSIC_MARK").is_none();
        system::lift_memlock_limit();
        let kernel = tracefs::kernel_release();
        let mut loader = system::without_kernel_btf(EbpfLoader::new);
        let mut ebpf = loader
            .btf(None)
            .override_global(GLOBAL_CONFIG, &config, true)
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Load {
                kernel: kernel.clone(),
                source: Box::new(source),
            })?;
        let pinning = pin_dir.filter(|_| perf_links || raw_mark);
        if let Some(dir) = pin_dir
            && pinning.is_none()
        {
            log::warn!(
                "Linux {kernel} without BTF cannot keep oomcount's probe attached without the daemon (no BPF perf links before 5.15): the counts restart with the daemon; nothing is pinned in {}",
                dir.display()
            );
        }
        let counters: PerCpuArray<MapData, u64> = ebpf
            .take_map(MAP_COUNTERS)
            .ok_or(ProbeError::Missing(MAP_COUNTERS))?
            .try_into()?;
        let mut counters = CounterMap::new(counters);
        let events: RingBuf<MapData> = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(ProbeError::Missing(MAP_EVENTS))?
            .try_into()?;

        let signal = if raw_signal {
            PROG_SIGNAL_GENERATE_RAW
        } else {
            PROG_SIGNAL_GENERATE
        };
        // The raw mark program, attached where BTF is, is also what the raw signal program
        // tail-calls (loaded for that alone when the test asks for the classic mark).
        let raw_mark_program = raw_signal.then(raw_mark_program);
        let mark = match raw_mark_program {
            Some(raw) if raw_mark => raw,
            _ => PROG_MARK_VICTIM,
        };
        let extra = raw_mark_program.filter(|_| !raw_mark);
        let programs: Vec<&'static str> = [signal, mark].into_iter().chain(extra).collect();
        load_programs(&mut ebpf, &programs, &kernel)?;
        if let Some(raw) = raw_mark_program {
            set_kill_program(&mut ebpf, raw, &kernel)?;
        }

        // The pins being replaced: their counts and latch are read only now that the new
        // programs are verified (the slow part), so that the old probe counts until just before
        // it stops; they are in the new counter map before it is pinned.
        let mut carried_attach = None;
        if let Some(old) = replacing {
            for (index, value) in old.carry_over()? {
                counters.set(index, value)?;
                if index == counter::ATTACHED_AT_NS && value != 0 {
                    carried_attach = Some(UNIX_EPOCH + Duration::from_nanos(value));
                }
            }
            drop(old);
            if let Some(dir) = pin_dir {
                // The old programs stop; their maps are replaced just below (by rename), or
                // removed when this kernel cannot pin.
                if pinning.is_some() {
                    pins::remove_links(dir)?;
                } else {
                    pins::remove(dir)?;
                }
            }
        }
        if let Some(dir) = pinning {
            pins::pin_maps(dir, counters.fd(), events.as_fd())?;
            // The tests' stand-in for a crash between pinning the maps and the links.
            if std::env::var_os("OOMCOUNT_TEST_CRASH_AFTER_MAPS").is_some() {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        }

        let signal_link = if raw_signal {
            attach_raw(&mut ebpf, signal, TP_SIGNAL_GENERATE.1, &kernel)?
        } else {
            attach(&mut ebpf, signal, TP_SIGNAL_GENERATE, &kernel)?
        };
        let mark_link = if raw_mark {
            attach_raw(&mut ebpf, mark, TP_MARK_VICTIM.1, &kernel)?
        } else {
            attach(&mut ebpf, mark, TP_MARK_VICTIM, &kernel)?
        };
        let attached_at = carried_attach.unwrap_or_else(SystemTime::now);
        let attached_ns = attached_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        counters.set(counter::VERSION, pin_version())?;
        counters.set(counter::ATTACHED_AT_NS, attached_ns as u64)?;

        let mut origin = Origin::Unpinned;
        let mut links = Vec::new();
        let mut held = None;
        match (pinning, signal_link, mark_link) {
            (Some(dir), Some(signal), Some(mark)) => {
                let links = pins::pin_links(dir, signal, mark)?;
                let dup = |fd: BorrowedFd<'_>, name| {
                    fd.try_clone_to_owned()
                        .map_err(|err| pins::PinError::Pin(dir.join(name), err))
                };
                let maps = [
                    (pin::COUNTERS, dup(counters.fd(), pin::COUNTERS)?),
                    (pin::EVENTS, dup(events.as_fd(), pin::EVENTS)?),
                ];
                held = Some(pins::Held::new(dir, maps.into_iter().chain(links))?);
                origin = Origin::Attached;
            }
            // Not pinned: the links live as long as this probe.
            (_, signal, mark) => links.extend(signal.into_iter().chain(mark)),
        }
        Ok(Self {
            _ebpf: Some(ebpf),
            _links: links,
            held,
            counters,
            events: Some(events),
            attached_at,
            origin,
        })
    }

    /// The pin folder this probe is pinned in, if pinned.
    pub(crate) fn pin_dir(&self) -> Option<&Path> {
        self.held.as_ref().map(pins::Held::dir)
    }

    /// Looks at the pins after a change in their folder: pins again what was removed, reports
    /// pins that are not this probe's (see [`pins::Held::check`]).
    pub(crate) fn check_pins(&mut self) {
        if let Some(held) = &mut self.held {
            held.check();
        }
    }

    /// When the programs were attached: counts start there.
    pub(crate) fn attached_at(&self) -> SystemTime {
        self.attached_at
    }

    pub(crate) fn origin(&self) -> Origin {
        self.origin
    }

    /// The counters, each summed over all CPUs.
    pub(crate) fn counters(&self) -> Result<Counters, ProbeError> {
        Ok(self.counters.counters()?)
    }

    /// A user-side slot ([`counter::SEQ`], ...).
    pub(crate) fn slot(&self, index: u32) -> Result<u64, ProbeError> {
        Ok(self.counters.get(index)?)
    }

    /// Sets a user-side slot, kept with the pins.
    pub(crate) fn set_slot(&mut self, index: u32, value: u64) -> Result<(), ProbeError> {
        Ok(self.counters.set(index, value)?)
    }

    /// The event ring buffer; `None` once taken.
    pub(crate) fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// The layout version this daemon records with its pins: [`PIN_VERSION`], unless the tests ask
/// it to pose as another (older) oomcount through `OOMCOUNT_TEST_PIN_VERSION`, since no older
/// binary exists to test the upgrade path with.
fn pin_version() -> u64 {
    std::env::var("OOMCOUNT_TEST_PIN_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PIN_VERSION)
}

/// What a failure of `program` on Linux `kernel` is reported as.
fn program_error<'a>(
    kernel: &'a str,
    program: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> ProbeError + Copy + 'a {
    move |source| ProbeError::Program {
        kernel: kernel.to_owned(),
        program,
        source: Box::new(source),
    }
}

/// Attaches the loaded `program` to the classic tracepoint `category/name`; returns the link
/// as a pinnable one where the kernel has BPF perf links (5.15+).
fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    (category, name): (&'static str, &'static str),
    kernel: &str,
) -> Result<Option<FdLink>, ProbeError> {
    let prog_err = program_error(kernel, program);
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(prog_err)?;
    let id = tracepoint
        .attach(category, name)
        .map_err(|source| ProbeError::Attach {
            kernel: kernel.to_owned(),
            category,
            name,
            source: Box::new(source),
        })?;
    if !aya::features().bpf_perf_link() {
        // Not pinnable: the link stays with the program, attached while this process lives.
        return Ok(None);
    }
    let link = tracepoint.take_link(id).map_err(prog_err)?;
    let link = FdLink::try_from(link).map_err(ProbeError::Link)?;
    Ok(Some(link))
}

/// Attaches the loaded `program` to the raw tracepoint `name` (always a pinnable link).
fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    name: &'static str,
    kernel: &str,
) -> Result<Option<FdLink>, ProbeError> {
    let prog_err = program_error(kernel, program);
    let tracepoint: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(prog_err)?;
    let id = tracepoint
        .attach(name)
        .map_err(|source| ProbeError::Attach {
            kernel: kernel.to_owned(),
            category: "raw",
            name,
            source: Box::new(source),
        })?;
    let link = tracepoint.take_link(id).map_err(prog_err)?;
    Ok(Some(link.into()))
}

/// Loads (the kernel verifies) each of `programs`, logging how long each took and how many
/// instructions its verifier went through: start-up is mostly that.
fn load_programs(
    ebpf: &mut Ebpf,
    programs: &[&'static str],
    kernel: &str,
) -> Result<(), ProbeError> {
    for &name in programs {
        let program = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
        let started = Instant::now();
        let loaded = match program {
            Program::RawTracePoint(p) => p.load().map(|()| p.info()),
            Program::TracePoint(p) => p.load().map(|()| p.info()),
            _ => return Err(ProbeError::Missing(name)),
        };
        let info = loaded.map_err(program_error(kernel, name))?;
        log::debug!(
            "{name}: loaded in {:.1} ms, {} instructions verified",
            started.elapsed().as_secs_f64() * 1e3,
            info.ok()
                .and_then(|i| i.verified_instruction_count())
                .map_or("?".to_owned(), |n| n.to_string())
        );
    }
    Ok(())
}

/// The build of the raw `mark_victim` program for this kernel: the one whose search for
/// `oom_control` is a `bpf_loop` where the helper exists (5.17+), which the verifier goes
/// through faster (its figures: README, Benchmarks, Start-up; `-v` logs them each start); the
/// unrolled one before.
fn raw_mark_program() -> &'static str {
    use aya::{programs::ProgramType, sys::BpfHelper};
    match aya::sys::is_helper_supported(ProgramType::RawTracePoint, BpfHelper::BPF_FUNC_loop) {
        Ok(true) => PROG_MARK_VICTIM_RAW_LOOP,
        _ => PROG_MARK_VICTIM_RAW,
    }
}

/// Puts the raw `mark_victim` program (`program`) in the array the raw `signal_generate`
/// program tail-calls for an `again` kill (before that program is attached: without it, such a
/// kill counts but loses its event).
fn set_kill_program(
    ebpf: &mut Ebpf,
    program: &'static str,
    kernel: &str,
) -> Result<(), ProbeError> {
    let prog_err = program_error(kernel, program);
    let mark: &RawTracePoint = ebpf
        .program(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(prog_err)?;
    let fd = mark
        .fd()
        .map_err(prog_err)?
        .try_clone()
        .map_err(aya::maps::MapError::IoError)?;
    let mut array: ProgramArray<&mut MapData> = ebpf
        .map_mut(MAP_KILL_PROG)
        .ok_or(ProbeError::Missing(MAP_KILL_PROG))?
        .try_into()?;
    Ok(array.set(0, &fd, 0)?)
}
