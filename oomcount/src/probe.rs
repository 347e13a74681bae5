//! The kernel side, seen from userspace: loading and attaching oomcount's eBPF programs, reading
//! their counters and taking their event stream.
//!
//! The object is embedded in the binary (built by `build.rs`). It is loaded without the kernel's
//! BTF: the programs use classic tracepoints with offsets from the format files, so parsing the
//! kernel's 5 MB of BTF would only cost memory (about 14 MB of peak RSS, measured).
use std::time::SystemTime;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
};
use oomcount_common::{
    Config, GLOBAL_CONFIG, MAP_COUNTERS, MAP_EVENTS, PROG_MARK_VICTIM, PROG_SIGNAL_GENERATE,
    PROG_SIGNAL_GENERATE_RAW, TP_MARK_VICTIM, TP_SIGNAL_GENERATE, counter, feature,
};

use crate::{system, tracefs};

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
    #[error("cannot read the counter map")]
    Map(#[from] aya::maps::MapError),
}

/// The counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub kills: u64,
    pub marked: u64,
    pub events_dropped: u64,
    pub kill_events_dropped: u64,
    pub oom_signals: u64,
    pub kills_memcg: u64,
    pub kills_global: u64,
}

/// oomcount's programs, loaded and attached. Dropping it detaches them.
pub struct Probe {
    _ebpf: Ebpf,
    config: Config,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    attached_at: SystemTime,
}

impl Probe {
    /// Checks privileges, mounts tracefs if needed, reads the tracepoint layouts, loads the
    /// programs and attaches them (the signal program first, so no kill is marked before its
    /// signal can be seen).
    pub fn attach() -> Result<Self, ProbeError> {
        if !system::may_load_bpf() {
            return Err(ProbeError::NotPrivileged);
        }
        let tracefs = tracefs::ensure_mounted()?;
        let mut config = tracefs::load_config(&tracefs)?;
        crate::offsets::fill(&mut config);
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
        // The signal program first, so that no kill is marked before its signal can be seen.
        let raw_signal = config.features & feature::TASK != 0;
        if raw_signal {
            attach_raw(
                &mut ebpf,
                PROG_SIGNAL_GENERATE_RAW,
                TP_SIGNAL_GENERATE.1,
                &kernel,
            )?;
        } else {
            attach(&mut ebpf, PROG_SIGNAL_GENERATE, TP_SIGNAL_GENERATE, &kernel)?;
        }
        attach(&mut ebpf, PROG_MARK_VICTIM, TP_MARK_VICTIM, &kernel)?;
        let attached_at = SystemTime::now();
        let counters = ebpf
            .take_map(MAP_COUNTERS)
            .ok_or(ProbeError::Missing(MAP_COUNTERS))?
            .try_into()?;
        let events = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(ProbeError::Missing(MAP_EVENTS))?
            .try_into()?;
        Ok(Self {
            _ebpf: ebpf,
            config,
            counters,
            events: Some(events),
            attached_at,
        })
    }

    /// The configuration handed to the programs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When the programs were attached: counts start there.
    pub fn attached_at(&self) -> SystemTime {
        self.attached_at
    }

    /// The counters, each summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        let read = |index: u32| -> Result<u64, ProbeError> {
            Ok(self.counters.get(&index, 0)?.iter().sum())
        };
        Ok(Counters {
            kills: read(counter::KILLS)?,
            marked: read(counter::MARKED)?,
            events_dropped: read(counter::EVENTS_DROPPED)?,
            kill_events_dropped: read(counter::KILL_EVENTS_DROPPED)?,
            oom_signals: read(counter::OOM_SIGNALS)?,
            kills_memcg: read(counter::KILLS_MEMCG)?,
            kills_global: read(counter::KILLS_GLOBAL)?,
        })
    }

    /// The event ring buffer; `None` once taken.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }
}

/// Loads `program` and attaches it to the classic tracepoint `category/name`.
fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    (category, name): (&'static str, &'static str),
    kernel: &str,
) -> Result<(), ProbeError> {
    let prog_err = |source| ProbeError::Program {
        kernel: kernel.to_owned(),
        program,
        source: Box::new(source),
    };
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(prog_err)?;
    tracepoint.load().map_err(prog_err)?;
    tracepoint
        .attach(category, name)
        .map_err(|source| ProbeError::Attach {
            kernel: kernel.to_owned(),
            category,
            name,
            source: Box::new(source),
        })?;
    Ok(())
}

/// Loads `program` and attaches it to the raw tracepoint `name`.
fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    name: &'static str,
    kernel: &str,
) -> Result<(), ProbeError> {
    let prog_err = |source| ProbeError::Program {
        kernel: kernel.to_owned(),
        program,
        source: Box::new(source),
    };
    let tracepoint: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(prog_err)?;
    tracepoint.load().map_err(prog_err)?;
    tracepoint
        .attach(name)
        .map_err(|source| ProbeError::Attach {
            kernel: kernel.to_owned(),
            category: "raw",
            name,
            source: Box::new(source),
        })?;
    Ok(())
}
