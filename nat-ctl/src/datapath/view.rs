//! Read-only handles on the tables the datapath writes: mappings, sessions
//! and counters, for the NAT table, the statistics and the rule
//! transaction's check for live mappings.
use std::os::fd::AsFd as _;

use aya::maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray};
use nat_common::{
    Binding, BindingKey, Counter, CounterValue, PortOwner, RuleCounters, maps as names, port_slot,
    slot_port,
};

use super::{Result, SessionTable, is_not_found, map_error};

/// Slots per batch of a `PORT_OWNERS` walk: 48 syscalls for the whole.
const PORT_WALK_CHUNK: u32 = 4096;

pub struct MapView {
    pub(super) bindings: HashMap<MapData, BindingKey, Binding>,
    pub(super) port_owners: Array<MapData, PortOwner>,
    pub(super) sessions: SessionTable,
    pub(super) forward_sessions: SessionTable,
    pub(super) counters: PerCpuArray<MapData, CounterValue>,
    pub(super) rule_counters: PerCpuArray<MapData, RuleCounters>,
}

impl MapView {
    pub fn binding(&self, key: &BindingKey) -> Result<Option<Binding>> {
        match self.bindings.get(key, 0) {
            Ok(binding) => Ok(Some(binding)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(map_error(names::BINDINGS)(error)),
        }
    }

    pub fn bindings(&self) -> &HashMap<MapData, BindingKey, Binding> {
        &self.bindings
    }

    pub fn port_owners(&self) -> &Array<MapData, PortOwner> {
        &self.port_owners
    }

    /// Every held port: (protocol, port, owner), one per dynamic mapping,
    /// in one batch walk of `PORT_OWNERS` (196,608 slots of 32 bytes, ~6.3 MB).
    pub fn held_ports(&self) -> Result<Vec<(u8, u16, PortOwner)>> {
        let mut held = Vec::new();
        super::for_each_entry(
            self.port_owners.map().fd().as_fd(),
            PORT_WALK_CHUNK,
            |slot: &u32, owner: &PortOwner| {
                if owner.endpoint().is_some()
                    && let Some((proto, port)) = slot_port(*slot)
                {
                    held.push((proto, port, *owner));
                }
            },
        )
        .map_err(|source| super::DatapathError::Walk {
            name: names::PORT_OWNERS,
            source,
        })?;
        Ok(held)
    }

    /// The external port of `key`'s dynamic mapping (its outbound half's
    /// key), wherever it is kept: in its port's slot when it kept its
    /// endpoint's own port, else in `BINDINGS`.
    pub fn mapped_port(&self, key: &BindingKey) -> Result<Option<u16>> {
        if self.has_own_port_mapping(key)? {
            return Ok(Some(key.port));
        }
        Ok(self.binding(key)?.map(|binding| binding.port))
    }

    /// Whether `key`'s mapping is its own port's slot alone.
    fn has_own_port_mapping(&self, key: &BindingKey) -> Result<bool> {
        Ok(self
            .port_owner(key.proto, key.port)?
            .is_some_and(|owner| owner.own_port_mapping_of(key)))
    }

    /// Who holds a dynamic mapping's external port (its inbound half),
    /// `None` when nobody does or the protocol has no mappings.
    pub fn port_owner(&self, proto: u8, port: u16) -> Result<Option<PortOwner>> {
        let Some(slot) = port_slot(proto, port) else {
            return Ok(None);
        };
        let owner = self
            .port_owners
            .get(&slot, 0)
            .map_err(map_error(names::PORT_OWNERS))?;
        Ok(owner.endpoint().is_some().then_some(owner))
    }

    /// How many outbound halves in `BINDINGS` belong to endpoints on
    /// `own_port` (`PortOwner::remapped`), held or not.
    pub fn remapped_on(&self, proto: u8, own_port: u16) -> Result<u32> {
        let Some(slot) = port_slot(proto, own_port) else {
            return Ok(0);
        };
        Ok(self
            .port_owners
            .get(&slot, 0)
            .map_err(map_error(names::PORT_OWNERS))?
            .remapped)
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    pub fn forward_sessions(&self) -> &SessionTable {
        &self.forward_sessions
    }

    /// Removes the conversations through these (protocol, external port)
    /// pairs: the one write natctl makes to a table the datapath fills,
    /// when a rule's schedule closes it. Returns how many went.
    pub fn forget_forward_sessions(
        &mut self,
        ports: &std::collections::HashSet<(u8, u16)>,
    ) -> usize {
        self.forward_sessions
            .remove_where(|key| ports.contains(&(key.proto, key.external_port)))
    }

    /// A rule's packets and bytes, summed over the CPUs.
    pub fn rule_counters(&self, rule_id: u32) -> Result<RuleCounters> {
        let per_cpu = self
            .rule_counters
            .get(&rule_id, 0)
            .map_err(map_error(names::RULE_COUNTERS))?;
        Ok(per_cpu
            .iter()
            .fold(RuleCounters::default(), |sum, value| RuleCounters {
                inbound: add(sum.inbound, value.inbound),
                outbound: add(sum.outbound, value.outbound),
            }))
    }

    /// Every counter, summed over the CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, CounterValue)>> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = self
                    .counters
                    .get(&(counter as u32), 0)
                    .map_err(map_error(names::COUNTERS))?;
                let total = per_cpu
                    .iter()
                    .fold(CounterValue::default(), |sum, value| add(sum, *value));
                Ok((counter, total))
            })
            .collect()
    }
}

/// Write access for tests and benchmarks that set up mappings and sessions
/// themselves; natctl never writes these tables (the datapath and the sweep
/// do). Each write reads a slot and writes it back whole, so it is only
/// for tables no packet is changing meanwhile.
#[cfg(feature = "harness")]
impl MapView {
    /// Writes (or, with `PortOwner::default()`, frees) a port's slot. Its
    /// `remapped` count is kept: it counts `BINDINGS` entries, which only
    /// [`Self::put_binding`] and [`Self::remove_binding`] change.
    pub fn set_port_owner(&mut self, proto: u8, port: u16, owner: PortOwner) -> Result<()> {
        let remapped = self.remapped_on(proto, port)?;
        self.write_slot(proto, port, PortOwner { remapped, ..owner })
    }

    fn write_slot(&mut self, proto: u8, port: u16, owner: PortOwner) -> Result<()> {
        let slot = port_slot(proto, port).expect("a protocol with mappings");
        self.port_owners
            .set(slot, owner, 0)
            .map_err(map_error(names::PORT_OWNERS))
    }

    /// Adds `delta` to the `remapped` count on `key`'s own port.
    fn count_remapped(&mut self, key: &BindingKey, delta: i32) -> Result<()> {
        let Some(slot) = port_slot(key.proto, key.port) else {
            return Ok(());
        };
        let mut owner = self
            .port_owners
            .get(&slot, 0)
            .map_err(map_error(names::PORT_OWNERS))?;
        owner.remapped = owner.remapped.wrapping_add_signed(delta);
        self.write_slot(key.proto, key.port, owner)
    }

    /// Inserts or replaces an outbound half; a new one is counted on its
    /// endpoint's own port first, as the datapath counts its own.
    pub fn put_binding(&mut self, key: BindingKey, binding: Binding) -> Result<()> {
        let new = self.binding(&key)?.is_none();
        if new {
            self.count_remapped(&key, 1)?;
        }
        let inserted = self
            .bindings
            .insert(key, binding, 0)
            .map_err(map_error(names::BINDINGS));
        if inserted.is_err() && new {
            self.count_remapped(&key, -1)?;
        }
        inserted
    }

    /// Removes an outbound half, if there is one, and its count.
    pub fn remove_binding(&mut self, key: &BindingKey) -> Result<()> {
        match self.bindings.remove(key) {
            Ok(()) => self.count_remapped(key, -1),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(map_error(names::BINDINGS)(error)),
        }
    }

    /// Writes a whole mapping as the datapath makes one: that port held by
    /// `key`'s endpoint since `seen_ns` and, unless it is the endpoint's own
    /// port, `key`'s outbound half to `external_addr:external_port`, last
    /// seen at `last_seen_ns`.
    pub fn insert_mapping(
        &mut self,
        key: BindingKey,
        external_addr: [u8; 4],
        external_port: u16,
        seen_ns: u64,
        last_seen_ns: u64,
    ) -> Result<()> {
        self.set_port_owner(
            key.proto,
            external_port,
            PortOwner {
                owner: PortOwner::owner_word(key.addr, key.port),
                remote_addr: key.remote_addr,
                remote_port: key.remote_port,
                seen_ns,
                ..PortOwner::default()
            },
        )?;
        if external_port == key.port {
            // All in the slot, as the datapath keeps such a mapping.
            return Ok(());
        }
        self.put_binding(
            key,
            Binding {
                addr: external_addr,
                port: external_port,
                _pad: [0; 2],
                last_seen_ns,
            },
        )
    }

    /// Removes `key`'s mapping, both halves, if it has one.
    pub fn remove_mapping(&mut self, key: &BindingKey) -> Result<()> {
        if self.has_own_port_mapping(key)? {
            return self.set_port_owner(key.proto, key.port, PortOwner::default());
        }
        let Some(binding) = self.binding(key)? else {
            return Ok(());
        };
        self.remove_binding(key)?;
        if self
            .port_owner(key.proto, binding.port)?
            .and_then(|owner| owner.outbound_partner(key.proto))
            == Some(*key)
        {
            self.set_port_owner(key.proto, binding.port, PortOwner::default())?;
        }
        Ok(())
    }

    pub fn sessions_mut(&mut self) -> &mut SessionTable {
        &mut self.sessions
    }

    pub fn forward_sessions_mut(&mut self) -> &mut SessionTable {
        &mut self.forward_sessions
    }
}

fn add(a: CounterValue, b: CounterValue) -> CounterValue {
    CounterValue {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}
