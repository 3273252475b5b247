//! Loading and attaching the XDP datapath, and typed access to its maps.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use nat_common::{
    Binding, Counter, CounterValue, EndpointKey, Forward, NatConfig, Session, SessionKey, maps,
    programs,
};

/// The XDP object, built by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NAT_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map EGRESS: {0}")]
    Egress(#[source] aya::maps::xdp::XdpMapError),
    #[error("the object has no map named {0}")]
    MissingMap(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("attaching {program} to {interface} failed in native and generic mode: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// How to attach: native (driver) XDP falls back to generic with a warning
/// under `Auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// Sizes of the tables, fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct TableSizes {
    pub forwards: u32,
    pub bindings: u32,
    pub sessions: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            forwards: nat_common::DEFAULT_FORWARDS_MAX,
            bindings: nat_common::DEFAULT_BINDINGS_MAX,
            sessions: nat_common::DEFAULT_SESSIONS_MAX,
        }
    }
}

/// A loaded (not yet attached) datapath: its programs, and its maps taken
/// out as typed handles.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
}

impl Datapath {
    pub fn load(sizes: TableSizes, pin_dir: Option<&Path>) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::FORWARDS, sizes.forwards)
            .map_max_entries(maps::BINDINGS, sizes.bindings)
            .map_max_entries(maps::SESSIONS, sizes.sessions)
            .load(OBJECT)?;
        for name in [programs::LAN, programs::WAN, programs::PASS] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let maps = Maps::take(&mut ebpf, pin_dir)?;
        Ok(Self { ebpf, maps })
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        program(&mut self.ebpf, name)
    }

    /// Attaches `name` to `ifindex`; returns the mode that worked.
    pub fn attach(
        &mut self,
        name: &'static str,
        interface: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, XdpMode)> {
        let program = self.program(name)?;
        let first = match mode {
            AttachMode::Generic => XdpMode::Skb,
            AttachMode::Auto | AttachMode::Native => XdpMode::Driver,
        };
        match program.attach_to_if_index(ifindex, first) {
            Ok(link) => Ok((link, first)),
            Err(native_error) if mode == AttachMode::Auto => {
                eprintln!(
                    "warning: native XDP on {interface} failed ({native_error}); using generic XDP, which is much slower"
                );
                program
                    .attach_to_if_index(ifindex, XdpMode::Skb)
                    .map(|link| (link, XdpMode::Skb))
                    .map_err(|source| DatapathError::Attach {
                        program: name,
                        interface: interface.to_owned(),
                        source,
                    })
            }
            Err(source) => Err(DatapathError::Attach {
                program: name,
                interface: interface.to_owned(),
                source,
            }),
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Typed handles on every map of the datapath, from a loaded object or from
/// pins in bpffs.
pub struct Maps {
    pub config: Array<MapData, NatConfig>,
    pub forwards: HashMap<MapData, EndpointKey, Forward>,
    pub bindings: HashMap<MapData, EndpointKey, Binding>,
    pub sessions: HashMap<MapData, SessionKey, Session>,
    pub counters: PerCpuArray<MapData, CounterValue>,
    pub egress: DevMapHash<MapData>,
}

pub const PINNED: [&str; 6] = [
    maps::CONFIG,
    maps::FORWARDS,
    maps::BINDINGS,
    maps::SESSIONS,
    maps::COUNTERS,
    maps::EGRESS,
];

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &'static str, map: Map) -> Result<T> {
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

impl Maps {
    /// Takes the maps out of a freshly loaded object, pinning each under
    /// `pin_dir` when given (so that `natctl table` and `stats` can read them).
    fn take(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Self> {
        let mut take = |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
            if let Some(dir) = pin_dir {
                let path = dir.join(name);
                map.pin(&path)
                    .map_err(|source| DatapathError::Pin { path, source })?;
            }
            Ok::<_, DatapathError>(map)
        };
        Ok(Self {
            config: typed(maps::CONFIG, take(maps::CONFIG)?)?,
            forwards: typed(maps::FORWARDS, take(maps::FORWARDS)?)?,
            bindings: typed(maps::BINDINGS, take(maps::BINDINGS)?)?,
            sessions: typed(maps::SESSIONS, take(maps::SESSIONS)?)?,
            counters: typed(maps::COUNTERS, take(maps::COUNTERS)?)?,
            egress: typed(maps::EGRESS, take(maps::EGRESS)?)?,
        })
    }

    /// Opens the maps a running datapath pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let open = |name: &'static str| {
            MapData::from_pin(dir.join(name)).map_err(|source| DatapathError::Map { name, source })
        };
        Ok(Self {
            config: typed(maps::CONFIG, Map::Array(open(maps::CONFIG)?))?,
            forwards: typed(maps::FORWARDS, Map::HashMap(open(maps::FORWARDS)?))?,
            bindings: typed(maps::BINDINGS, Map::HashMap(open(maps::BINDINGS)?))?,
            sessions: typed(maps::SESSIONS, Map::HashMap(open(maps::SESSIONS)?))?,
            counters: typed(maps::COUNTERS, Map::PerCpuArray(open(maps::COUNTERS)?))?,
            egress: typed(maps::EGRESS, Map::DevMapHash(open(maps::EGRESS)?))?,
        })
    }

    pub fn unpin(dir: &Path) {
        for name in PINNED {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }

    pub fn set_config(&mut self, config: &NatConfig) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(|source| DatapathError::Map {
                name: maps::CONFIG,
                source,
            })
    }

    pub fn allow_egress(&mut self, ifindex: u32) -> Result<()> {
        self.egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(DatapathError::Egress)
    }

    pub fn insert_forward(&mut self, key: EndpointKey, value: Forward) -> Result<()> {
        self.forwards
            .insert(key, value, 0)
            .map_err(|source| DatapathError::Map {
                name: maps::FORWARDS,
                source,
            })
    }

    /// Every counter, summed over the CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, CounterValue)>> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = self.counters.get(&(counter as u32), 0).map_err(|source| {
                    DatapathError::Map {
                        name: maps::COUNTERS,
                        source,
                    }
                })?;
                let total =
                    per_cpu
                        .iter()
                        .fold(CounterValue::default(), |sum, value| CounterValue {
                            packets: sum.packets + value.packets,
                            bytes: sum.bytes + value.bytes,
                        });
                Ok((counter, total))
            })
            .collect()
    }
}
