//! Loading and attaching the XDP datapath, and typed access to its maps.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLinkId,
    },
    util::nr_cpus,
};
use nat_common::{
    AllowedRemote, Binding, Counter, CounterValue, EndpointKey, Forward, NatConfig, RuleCounters,
    Session, SessionKey, SweepParams, SweepStats, maps, programs,
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
    #[error("reading map {name}: {source}")]
    Walk {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the object has no map named {0}")]
    MissingMap(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinning the XDP link of {program}: {reason}")]
    PinLink {
        program: &'static str,
        reason: String,
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
    pub forward_sessions: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            forwards: nat_common::DEFAULT_FORWARDS_MAX,
            bindings: nat_common::DEFAULT_BINDINGS_MAX,
            sessions: nat_common::DEFAULT_SESSIONS_MAX,
            forward_sessions: nat_common::DEFAULT_FORWARD_SESSIONS_MAX,
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
            .map_max_entries(maps::FORWARD_SESSIONS, sizes.forward_sessions)
            .load(OBJECT)?;
        for name in [
            programs::LAN,
            programs::WAN,
            programs::PASS,
            programs::SWEEP,
        ] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let maps = Maps::take(&mut ebpf, pin_dir)?;
        Ok(Self { ebpf, maps })
    }

    /// The maps, once the programs are attached and their links pinned:
    /// the programs then live on in the kernel without this object.
    pub fn into_maps(self) -> Maps {
        self.maps
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

impl Datapath {
    /// Pins the link of an attached program at `path`, so that the program
    /// stays attached after this process exits (or is killed) until the
    /// pin is removed: a restarted daemon then finds the datapath running.
    pub fn pin_link(&mut self, name: &'static str, link_id: XdpLinkId, path: &Path) -> Result<()> {
        let link = self
            .program(name)?
            .take_link(link_id)
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd_link = FdLink::try_from(link).map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!(
                "{error} (this kernel attached XDP without a bpf_link, which cannot be pinned)"
            ),
        })?;
        fd_link.pin(path).map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!("{}: {error}", path.display()),
        })?;
        Ok(())
    }
}

impl Datapath {
    /// Runs the loaded sweep program once (tests and benchmarks; the daemon
    /// uses a pinned one, see `aging::KernelSweep`).
    pub fn run_sweep(
        &mut self,
        params: nat_common::SweepParams,
    ) -> Result<crate::aging::SweepReport> {
        let program = program(&mut self.ebpf, programs::SWEEP)?;
        crate::aging::run_sweep_program(program, &mut self.maps, params)
    }

    /// Pins a loaded program (the sweep) so that a restarted daemon can run
    /// it without loading the object again.
    pub fn pin_program(&mut self, name: &'static str, path: &Path) -> Result<()> {
        self.program(name)?
            .pin(path)
            .map_err(|source| DatapathError::Pin {
                path: path.to_owned(),
                source,
            })
    }
}

/// Detaches a program pinned by [`Datapath::pin_link`]: removing the last
/// reference to the link detaches it. Returns whether there was a pin.
pub fn unpin_link(path: &Path) -> std::io::Result<bool> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => {
            drop(pinned.unpin()?);
            Ok(true)
        }
        Err(_) if !path.exists() => Ok(false),
        Err(error) => Err(std::io::Error::other(error)),
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
    pub forward_sessions: HashMap<MapData, SessionKey, Session>,
    pub allowed_remotes: LpmTrie<MapData, AllowedRemote, u8>,
    pub rule_counters: PerCpuArray<MapData, RuleCounters>,
    /// Taken by whoever logs new connections.
    pub new_connections: Option<RingBuf<MapData>>,
    pub sweep_params: Array<MapData, SweepParams>,
    pub sweep_stats: Array<MapData, SweepStats>,
}

pub const PINNED: [&str; 12] = [
    maps::CONFIG,
    maps::FORWARDS,
    maps::BINDINGS,
    maps::SESSIONS,
    maps::COUNTERS,
    maps::EGRESS,
    maps::FORWARD_SESSIONS,
    maps::ALLOWED_REMOTES,
    maps::RULE_COUNTERS,
    maps::NEW_CONNECTIONS,
    maps::SWEEP_PARAMS,
    maps::SWEEP_STATS,
];

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &'static str, map: Map) -> Result<T> {
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

impl Maps {
    /// Takes the maps out of a freshly loaded object, pinning each under
    /// `pin_dir` when given (so that `natctl table` and `stats` can read them).
    fn take(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Self> {
        let take = |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
            if let Some(dir) = pin_dir {
                let path = dir.join(name);
                map.pin(&path)
                    .map_err(|source| DatapathError::Pin { path, source })?;
            }
            Ok::<_, DatapathError>(map)
        };
        Self::from_source(take)
    }

    /// Opens the maps a running datapath pinned under `dir`. A pin whose
    /// key or value size differs from this build's is refused.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Self::from_source(|name: &'static str| {
            MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(|source| DatapathError::Map { name, source })
        })
    }

    fn from_source(mut source: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        // A macro, not a closure: each map converts to a different type.
        macro_rules! open {
            ($name:expr) => {
                typed($name, source($name)?)?
            };
        }
        Ok(Self {
            config: open!(maps::CONFIG),
            forwards: open!(maps::FORWARDS),
            bindings: open!(maps::BINDINGS),
            sessions: open!(maps::SESSIONS),
            counters: open!(maps::COUNTERS),
            egress: open!(maps::EGRESS),
            forward_sessions: open!(maps::FORWARD_SESSIONS),
            allowed_remotes: open!(maps::ALLOWED_REMOTES),
            rule_counters: open!(maps::RULE_COUNTERS),
            new_connections: Some(open!(maps::NEW_CONNECTIONS)),
            sweep_params: open!(maps::SWEEP_PARAMS),
            sweep_stats: open!(maps::SWEEP_STATS),
        })
    }

    /// Whether every map of a datapath is pinned under `dir`.
    pub fn all_pinned(dir: &Path) -> bool {
        PINNED.iter().all(|name| dir.join(name).exists())
    }

    pub fn config(&self) -> Result<NatConfig> {
        self.config.get(&0, 0).map_err(|source| DatapathError::Map {
            name: maps::CONFIG,
            source,
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

    /// Adds a rule's entries: its allowed remotes first, so that a
    /// restricted forward is never briefly open to everyone.
    pub fn insert_rule(&mut self, entries: &crate::rules::RuleEntries) -> Result<()> {
        for allowed in &entries.allowed {
            self.insert_allowed(&allowed.key())?;
        }
        for &(key, value) in &entries.forwards {
            self.insert_forward(key, value)?;
        }
        Ok(())
    }

    /// Makes FORWARDS and ALLOWED_REMOTES hold exactly `desired`, by the
    /// smallest set of changes from what they hold now (so that a restarted
    /// daemon leaves unchanged entries alone). All or nothing: after a
    /// failed step, the steps already taken are undone.
    pub fn sync_rules(&mut self, desired: &crate::rules::RuleEntries) -> Result<()> {
        use crate::rules::{AllowEntry, RuleEntries};

        let forwards: Vec<(EndpointKey, Forward)> = self
            .forwards
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DatapathError::Map {
                name: maps::FORWARDS,
                source,
            })?;
        let allowed: Vec<AllowEntry> = self
            .allowed_remotes
            .keys()
            .map(|key| {
                key.map(|key| AllowEntry {
                    prefix_len: key.prefix_len(),
                    remote: key.data(),
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|source| DatapathError::Map {
                name: maps::ALLOWED_REMOTES,
                source,
            })?;
        self.change_rules(&RuleEntries { forwards, allowed }, desired)
    }

    /// Moves FORWARDS and ALLOWED_REMOTES from `current` (what they hold,
    /// as the only writer knows it) to `desired`, touching only the entries
    /// that differ. All or nothing, as [`Maps::sync_rules`].
    pub fn change_rules(
        &mut self,
        current: &crate::rules::RuleEntries,
        desired: &crate::rules::RuleEntries,
    ) -> Result<()> {
        use std::collections::{HashMap as Map_, HashSet};

        use crate::rules::AllowEntry;

        let current_forwards: Map_<EndpointKey, Forward> =
            current.forwards.iter().copied().collect();
        let current_allowed: HashSet<AllowEntry> = current.allowed.iter().copied().collect();
        let desired_forwards: Map_<EndpointKey, Forward> =
            desired.forwards.iter().copied().collect();
        let desired_allowed: HashSet<AllowEntry> = desired.allowed.iter().copied().collect();

        enum Undo {
            PutForward(EndpointKey, Forward),
            RemoveForward(EndpointKey),
            PutAllowed(AllowEntry),
            RemoveAllowed(AllowEntry),
        }
        let mut undo = Vec::new();
        let mut apply = || -> Result<()> {
            // Allowed remotes go in before the forwards that need them and
            // come out after, so no restricted port is ever open to all.
            for entry in desired_allowed.difference(&current_allowed) {
                self.insert_allowed(&entry.key())?;
                undo.push(Undo::RemoveAllowed(*entry));
            }
            for (key, value) in &desired_forwards {
                let old = current_forwards.get(key);
                if old == Some(value) {
                    continue;
                }
                self.insert_forward(*key, *value)?;
                undo.push(match old {
                    Some(old) => Undo::PutForward(*key, *old),
                    None => Undo::RemoveForward(*key),
                });
            }
            for (key, value) in &current_forwards {
                if !desired_forwards.contains_key(key) {
                    self.remove_forward(key)?;
                    undo.push(Undo::PutForward(*key, *value));
                }
            }
            for entry in current_allowed.difference(&desired_allowed) {
                self.remove_allowed(&entry.key())?;
                undo.push(Undo::PutAllowed(*entry));
            }
            Ok(())
        };
        let outcome = apply();
        if outcome.is_err() {
            for step in undo.into_iter().rev() {
                // Best effort: these restore entries that were just there.
                let _ = match step {
                    Undo::PutForward(key, value) => self.insert_forward(key, value),
                    Undo::RemoveForward(key) => self.remove_forward(&key),
                    Undo::PutAllowed(entry) => self.insert_allowed(&entry.key()),
                    Undo::RemoveAllowed(entry) => self.remove_allowed(&entry.key()),
                };
            }
        }
        outcome
    }

    pub fn remove_forward(&mut self, key: &EndpointKey) -> Result<()> {
        match self.forwards.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map {
                name: maps::FORWARDS,
                source,
            }),
        }
    }

    pub fn insert_allowed(&mut self, key: &Key<AllowedRemote>) -> Result<()> {
        self.allowed_remotes
            .insert(key, 1, 0)
            .map_err(|source| DatapathError::Map {
                name: maps::ALLOWED_REMOTES,
                source,
            })
    }

    pub fn remove_allowed(&mut self, key: &Key<AllowedRemote>) -> Result<()> {
        match self.allowed_remotes.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map {
                name: maps::ALLOWED_REMOTES,
                source,
            }),
        }
    }

    /// A rule's packets and bytes, summed over the CPUs.
    pub fn rule_counters(&self, rule_id: u32) -> Result<RuleCounters> {
        let per_cpu = self
            .rule_counters
            .get(&rule_id, 0)
            .map_err(|source| DatapathError::Map {
                name: maps::RULE_COUNTERS,
                source,
            })?;
        Ok(per_cpu
            .iter()
            .fold(RuleCounters::default(), |sum, value| RuleCounters {
                inbound: add(sum.inbound, value.inbound),
                outbound: add(sum.outbound, value.outbound),
            }))
    }

    /// Zeroes a rule id's counters before the id is given to a new rule.
    pub fn reset_rule_counters(&mut self, rule_id: u32) -> Result<()> {
        let map_error = |source| DatapathError::Map {
            name: maps::RULE_COUNTERS,
            source,
        };
        let cpus =
            nr_cpus().map_err(|(_, error)| map_error(aya::maps::MapError::IoError(error)))?;
        let zeroes = PerCpuValues::try_from(vec![RuleCounters::default(); cpus])
            .map_err(|error| map_error(aya::maps::MapError::IoError(error)))?;
        self.rule_counters
            .set(rule_id, zeroes, 0)
            .map_err(map_error)
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
                let total = per_cpu
                    .iter()
                    .fold(CounterValue::default(), |sum, value| add(sum, *value));
                Ok((counter, total))
            })
            .collect()
    }
}

fn add(a: CounterValue, b: CounterValue) -> CounterValue {
    CounterValue {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}
