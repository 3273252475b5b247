//! Every map of the datapath, opened from a freshly loaded object or from
//! its pins, and split into the handles of their owners.
use std::path::Path;

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, RingBuf, SockMap},
};
use nat_common::{RelayTarget, SessionKey, SessionTableKind, maps as names};

use super::{
    DatapathError, MapView, MapWriter, Result, SessionTable, SweepMaps, forward_ports::ForwardPorts,
};

/// Every map's name, as pinned in the pin directory.
pub const PINNED: [&str; 17] = [
    names::CONFIG,
    names::FORWARDS,
    names::FORWARD_HINTS,
    names::FORWARD_PORTS,
    names::BINDINGS,
    names::PORT_OWNERS,
    names::SESSIONS,
    names::COUNTERS,
    names::EGRESS,
    names::FORWARD_SESSIONS,
    names::ALLOWED_REMOTES,
    names::RULE_COUNTERS,
    names::NEW_CONNECTIONS,
    names::SWEEP_PARAMS,
    names::SWEEP_STATS,
    names::RELAY_TARGETS,
    names::RELAY_SOCKET,
];

/// The relay's maps (`crate::relay`): it reads the targets the datapath
/// recorded and is the only writer of the socket slot.
pub struct RelayMaps {
    pub targets: HashMap<MapData, SessionKey, RelayTarget>,
    pub socket: SockMap<MapData>,
}

/// All the map handles of one datapath, grouped by owner.
pub struct Maps {
    writer: MapWriter,
    view: MapView,
    sweep: SweepMaps,
    new_connections: RingBuf<MapData>,
    relay: RelayMaps,
}

/// The handles, each to go to its one owner.
pub struct MapParts {
    pub writer: MapWriter,
    pub view: MapView,
    pub sweep: SweepMaps,
    pub new_connections: RingBuf<MapData>,
    pub relay: RelayMaps,
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(name: &'static str, map: Map) -> Result<T> {
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

impl Maps {
    /// Takes the maps out of a freshly loaded object, pinning each under
    /// `pin_dir` when given.
    pub(super) fn take(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Self> {
        Self::from_source(true, |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
            if let Some(dir) = pin_dir {
                let path = dir.join(name);
                map.pin(&path)
                    .map_err(|source| DatapathError::Pin { path, source })?;
            }
            Ok(map)
        })
    }

    /// Opens the maps a running datapath pinned under `dir`. A pin whose
    /// key or value size differs from this build's is refused.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        Self::from_source(false, |name: &'static str| {
            MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(|source| DatapathError::Map { name, source })
        })
    }

    /// `fresh`: the maps were just made (their session table gets its
    /// seed), rather than opened from a running datapath's pins.
    fn from_source(
        fresh: bool,
        mut source: impl FnMut(&'static str) -> Result<Map>,
    ) -> Result<Self> {
        // A macro, not a closure: each map converts to a different type.
        macro_rules! open {
            ($name:expr) => {
                typed($name, source($name)?)?
            };
        }
        let rule_counters = source(names::RULE_COUNTERS)?;
        // The writer zeroes a new rule's counters, the view reads them: two
        // handles on one map.
        let rule_counters_view = second_handle(names::RULE_COUNTERS, &rule_counters)?;
        let mut writer = MapWriter {
            config: open!(names::CONFIG),
            egress: open!(names::EGRESS),
            forwards: open!(names::FORWARDS),
            forward_hints: open!(names::FORWARD_HINTS),
            hint_counts: Default::default(),
            forward_ports: ForwardPorts::open(source(names::FORWARD_PORTS)?)?,
            allowed_remotes: open!(names::ALLOWED_REMOTES),
            rule_counters: typed(names::RULE_COUNTERS, rule_counters)?,
        };
        writer.rebuild_rule_bitmaps()?;
        let mut sessions = SessionTable::open(
            names::SESSIONS,
            SessionTableKind::Dynamic,
            source(names::SESSIONS)?,
        )?;
        let mut forward_sessions = SessionTable::open(
            names::FORWARD_SESSIONS,
            SessionTableKind::Forwarded,
            source(names::FORWARD_SESSIONS)?,
        )?;
        let seed = writer.session_seed(sessions.slots(), forward_sessions.slots(), fresh)?;
        sessions.seed = seed;
        forward_sessions.seed = seed;
        Ok(Self {
            writer,
            view: MapView {
                bindings: open!(names::BINDINGS),
                port_owners: open!(names::PORT_OWNERS),
                sessions,
                forward_sessions,
                counters: open!(names::COUNTERS),
                rule_counters: typed(names::RULE_COUNTERS, rule_counters_view)?,
            },
            sweep: SweepMaps {
                params: open!(names::SWEEP_PARAMS),
                stats: open!(names::SWEEP_STATS),
            },
            new_connections: open!(names::NEW_CONNECTIONS),
            relay: RelayMaps {
                targets: open!(names::RELAY_TARGETS),
                socket: open!(names::RELAY_SOCKET),
            },
        })
    }

    /// Whether every map of a datapath is pinned under `dir`.
    pub fn all_pinned(dir: &Path) -> bool {
        PINNED.iter().all(|name| dir.join(name).exists())
    }

    /// Removes every map pin under `dir` (the maps live on while a program
    /// or a handle still uses them).
    pub fn unpin(dir: &Path) {
        for name in PINNED {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }

    /// The configuration and rule maps: their only writer.
    pub fn writer(&mut self) -> &mut MapWriter {
        &mut self.writer
    }

    /// Read-only handles on what the datapath writes.
    pub fn view(&self) -> &MapView {
        &self.view
    }

    /// Write access to the datapath's own tables, for tests and benchmarks
    /// that set up mappings and sessions directly.
    #[cfg(feature = "harness")]
    pub fn view_mut(&mut self) -> &mut MapView {
        &mut self.view
    }

    /// The new-connection ring, for tests that read its events themselves.
    #[cfg(feature = "harness")]
    pub fn new_connections_mut(&mut self) -> &mut RingBuf<MapData> {
        &mut self.new_connections
    }

    /// The relay's maps, for tests that drive the relay over a datapath
    /// they loaded themselves.
    #[cfg(feature = "harness")]
    pub fn relay_mut(&mut self) -> &mut RelayMaps {
        &mut self.relay
    }

    pub(super) fn sweep_maps_mut(&mut self) -> &mut SweepMaps {
        &mut self.sweep
    }

    pub fn into_parts(self) -> MapParts {
        MapParts {
            writer: self.writer,
            view: self.view,
            sweep: self.sweep,
            new_connections: self.new_connections,
            relay: self.relay,
        }
    }
}

fn second_handle(name: &'static str, map: &Map) -> Result<Map> {
    use std::os::fd::AsFd as _;
    let data = match map {
        Map::PerCpuArray(data) => data,
        _ => {
            return Err(DatapathError::Map {
                name,
                source: aya::maps::MapError::InvalidMapType { map_type: 0 },
            });
        }
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DatapathError::Walk { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| DatapathError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| DatapathError::Map { name, source })
}
