//! Read-only handles on the tables the datapath writes: mappings, sessions
//! and counters, for the NAT table, the statistics and the rule
//! transaction's check for live mappings.
use aya::maps::{HashMap, MapData, PerCpuArray};
use nat_common::{
    Binding, Counter, CounterValue, EndpointKey, RuleCounters, Session, SessionKey, maps as names,
};

use super::{Result, is_not_found, map_error};

pub struct MapView {
    pub(super) bindings: HashMap<MapData, EndpointKey, Binding>,
    pub(super) sessions: HashMap<MapData, SessionKey, Session>,
    pub(super) forward_sessions: HashMap<MapData, SessionKey, Session>,
    pub(super) counters: PerCpuArray<MapData, CounterValue>,
    pub(super) rule_counters: PerCpuArray<MapData, RuleCounters>,
}

impl MapView {
    pub fn binding(&self, key: &EndpointKey) -> Result<Option<Binding>> {
        match self.bindings.get(key, 0) {
            Ok(binding) => Ok(Some(binding)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(map_error(names::BINDINGS)(error)),
        }
    }

    pub fn bindings(&self) -> &HashMap<MapData, EndpointKey, Binding> {
        &self.bindings
    }

    pub fn sessions(&self) -> &HashMap<MapData, SessionKey, Session> {
        &self.sessions
    }

    pub fn forward_sessions(&self) -> &HashMap<MapData, SessionKey, Session> {
        &self.forward_sessions
    }

    /// Removes the conversations through these (protocol, external port)
    /// pairs: the one write natctl makes to a table the datapath fills,
    /// when a rule's schedule closes it. Returns how many went.
    pub fn forget_forward_sessions(
        &mut self,
        ports: &std::collections::HashSet<(u8, u16)>,
    ) -> Result<usize> {
        let mut doomed = Vec::new();
        super::for_each_in(&self.forward_sessions, |key: &SessionKey, _: &Session| {
            if ports.contains(&(key.proto, key.external_port)) {
                doomed.push(*key);
            }
        })
        .map_err(|source| super::DatapathError::Walk {
            name: names::FORWARD_SESSIONS,
            source,
        })?;
        let mut removed = 0;
        for key in doomed {
            match self.forward_sessions.remove(&key) {
                Ok(()) => removed += 1,
                // Aged out meanwhile.
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(map_error(names::FORWARD_SESSIONS)(error)),
            }
        }
        Ok(removed)
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
/// do).
#[cfg(feature = "harness")]
impl MapView {
    pub fn bindings_mut(&mut self) -> &mut HashMap<MapData, EndpointKey, Binding> {
        &mut self.bindings
    }

    pub fn sessions_mut(&mut self) -> &mut HashMap<MapData, SessionKey, Session> {
        &mut self.sessions
    }

    pub fn forward_sessions_mut(&mut self) -> &mut HashMap<MapData, SessionKey, Session> {
        &mut self.forward_sessions
    }
}

fn add(a: CounterValue, b: CounterValue) -> CounterValue {
    CounterValue {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}
