//! The writer of the maps user space owns: the configuration, the egress
//! devices and the rule maps. Only the daemon's rule transaction holds one;
//! rules change only through [`MapWriter::apply`].
use aya::maps::{
    Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues, lpm_trie::LpmTrie,
};
use std::collections::HashMap as StdHashMap;

use nat_common::{
    AllowedRemote, DIR_INBOUND, EndpointKey, FORWARD_HINT_WORDS, Forward, NatConfig, RuleCounters,
    RulePorts, bit_position, maps as names,
};

use super::{
    DatapathError, MapChange, Result, Step, forward_ports::ForwardPorts, is_not_found, map_error,
};
use crate::rules::{AllowEntry, RuleEntries};

pub struct MapWriter {
    pub(super) config: Array<MapData, NatConfig>,
    pub(super) egress: DevMapHash<MapData>,
    /// The rules' outbound keys.
    pub(super) forwards: HashMap<MapData, EndpointKey, Forward>,
    pub(super) forward_hints: Array<MapData, u64>,
    /// How many `FORWARDS` keys each `FORWARD_HINTS` slot stands for, by
    /// slot (slots with none left out): the bitmap alone cannot say when
    /// a removal leaves its slot empty.
    pub(super) hint_counts: StdHashMap<u32, u32>,
    /// The rules' inbound keys, by external port.
    pub(super) forward_ports: ForwardPorts,
    pub(super) allowed_remotes: LpmTrie<MapData, AllowedRemote, u8>,
    pub(super) rule_counters: PerCpuArray<MapData, RuleCounters>,
}

impl MapWriter {
    /// Counts the slots of the keys `FORWARDS` holds (none in a fresh
    /// datapath; a pinned one's rules) and writes the bitmap they make, and
    /// the ports `FORWARD_PORTS` holds rules on: called once, when the maps
    /// are opened, before any change.
    pub(super) fn rebuild_rule_bitmaps(&mut self) -> Result<()> {
        let mut counts = StdHashMap::new();
        let mut rule_ports = RulePorts::default();
        for key in self.forwards.keys() {
            let key = key.map_err(map_error(names::FORWARDS))?;
            *counts.entry(key.hint_slot()).or_insert(0u32) += 1;
        }
        for (key, _) in self.forward_ports.entries() {
            rule_ports.set(key.proto, key.port, true);
        }
        self.write_rule_ports(&rule_ports)?;
        let mut words = vec![0u64; FORWARD_HINT_WORDS as usize];
        for slot in counts.keys() {
            let (word, bit) = bit_position(*slot);
            words[word as usize] |= bit;
        }
        for (index, word) in (0..).zip(words) {
            let error = map_error(names::FORWARD_HINTS);
            if self.forward_hints.get(&index, 0).map_err(error)? != word {
                self.forward_hints
                    .set(index, word, 0)
                    .map_err(map_error(names::FORWARD_HINTS))?;
            }
        }
        self.hint_counts = counts;
        Ok(())
    }

    pub fn config(&self) -> Result<NatConfig> {
        self.config.get(&0, 0).map_err(map_error(names::CONFIG))
    }

    /// Writes `config` with the next route epoch, the ports the rules
    /// hold now and the session tables' seed and masks (its own
    /// `route_epoch`, `rule_ports`, `session_seed`, `session_mask` and
    /// `forward_session_mask` are ignored): a new configuration may move
    /// the NICs or the WAN address, and the datapath's cached routes are
    /// then looked up afresh.
    pub fn set_config(&mut self, config: &NatConfig) -> Result<()> {
        let running = self.config()?;
        let config = NatConfig {
            route_epoch: running.route_epoch.wrapping_add(1),
            rule_ports: running.rule_ports,
            session_seed: running.session_seed,
            session_mask: running.session_mask,
            forward_session_mask: running.forward_session_mask,
            ..*config
        };
        self.write_config(&config)
    }

    /// The seed of the session tables, `SESSIONS` of `slots` and
    /// `FORWARD_SESSIONS` of `forward_slots`: new tables (`fresh`) get one
    /// at random, written into `CONFIG` with their masks before any packet
    /// can make a session; pinned ones keep the seed they were made with,
    /// and must be the sizes their masks say.
    pub(super) fn session_seed(
        &mut self,
        slots: u32,
        forward_slots: u32,
        fresh: bool,
    ) -> Result<u32> {
        let mut config = self.config()?;
        if fresh {
            config.session_seed = random_seed();
            config.session_mask = slots - 1;
            config.forward_session_mask = forward_slots - 1;
            self.write_config(&config)?;
            return Ok(config.session_seed);
        }
        for (name, slots, mask) in [
            (names::SESSIONS, slots, config.session_mask),
            (
                names::FORWARD_SESSIONS,
                forward_slots,
                config.forward_session_mask,
            ),
        ] {
            if mask != slots - 1 {
                return Err(super::DatapathError::MapShape {
                    name,
                    reason: format!("{slots} slots, but CONFIG's mask for it is {mask:#x}"),
                });
            }
        }
        Ok(config.session_seed)
    }

    fn write_config(&mut self, config: &NatConfig) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(map_error(names::CONFIG))
    }

    /// The kernel's routes, neighbours, links or addresses changed: the
    /// datapath looks up again every route it cached before.
    pub fn routes_changed(&mut self) -> Result<()> {
        let config = self.config()?;
        self.set_config(&config)
    }

    /// Lets the datapath redirect to `ifindex`.
    pub fn allow_egress(&mut self, ifindex: u32) -> Result<()> {
        self.egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(DatapathError::Egress)
    }

    /// The forward a pinned datapath holds for `key`, if any.
    pub fn forward(&self, key: &EndpointKey) -> Result<Option<Forward>> {
        if key.direction == DIR_INBOUND {
            return self.forward_ports.get(key);
        }
        match self.forwards.get(key, 0) {
            Ok(forward) => Ok(Some(forward)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(map_error(names::FORWARDS)(error)),
        }
    }

    /// What the rule maps hold now, read back from the kernel: the starting
    /// point of the first change after picking up a pinned datapath.
    pub fn entries(&self) -> Result<RuleEntries> {
        let mut forwards: Vec<_> = self
            .forwards
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_error(names::FORWARDS))?;
        forwards.extend(self.forward_ports.entries());
        let allowed = self
            .allowed_remotes
            .keys()
            .map(|key| {
                key.map(|key| AllowEntry {
                    prefix_len: key.prefix_len(),
                    remote: key.data(),
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(map_error(names::ALLOWED_REMOTES))?;
        Ok(RuleEntries { forwards, allowed })
    }

    /// Carries out `change`, all or nothing: after a failed step, the steps
    /// already taken are undone (best effort: they restore entries that
    /// were just there). Counters of fresh rule ids are zeroed first, so no
    /// packet of a new rule is counted for an old one.
    ///
    /// The ports the change's inbound keys hold are marked in
    /// `NatConfig::rule_ports` before any key goes in, and those of the keys
    /// it removes freed only once all of it is done (a configuration write
    /// each, not one per key: a rule for a range of 60,000 ports would
    /// otherwise write 24 KiB 60,000 times); a failed change puts the bits
    /// back as they were, with the entries.
    pub fn apply(&mut self, change: &MapChange) -> Result<()> {
        for &rule_id in change.fresh_rule_ids() {
            self.reset_rule_counters(rule_id)?;
        }
        let before = self.config()?.rule_ports;
        let mut marked = before;
        for step in change.steps() {
            if let Step::PutForward(key, _) = step
                && key.direction == DIR_INBOUND
            {
                marked.set(key.proto, key.port, true);
            }
        }
        self.write_rule_ports(&marked)?;
        for (done, step) in change.steps().enumerate() {
            if let Err(error) = self.step(step) {
                for undo in change.undo_of(done) {
                    let _ = self.step(undo);
                }
                // As they were, but for a key the undo could not take out.
                let mut restored = before;
                for step in change.steps() {
                    if let Step::PutForward(key, _) = step
                        && key.direction == DIR_INBOUND
                        && !matches!(self.forward(&key), Ok(None))
                    {
                        restored.set(key.proto, key.port, true);
                    }
                }
                let _ = self.write_rule_ports(&restored);
                return Err(error);
            }
        }
        // Every step done: the ports of the keys removed and not put back.
        let mut held = marked;
        for step in change.steps() {
            if let Step::RemoveForward(key) = step
                && key.direction == DIR_INBOUND
            {
                held.set(key.proto, key.port, false);
            }
        }
        for step in change.steps() {
            if let Step::PutForward(key, _) = step
                && key.direction == DIR_INBOUND
            {
                held.set(key.proto, key.port, true);
            }
        }
        self.write_rule_ports(&held)
    }

    /// `NatConfig::rule_ports` as `ports` says, the rest of the
    /// configuration as it is (no write when nothing changes).
    fn write_rule_ports(&mut self, ports: &RulePorts) -> Result<()> {
        let config = self.config()?;
        if config.rule_ports == *ports {
            return Ok(());
        }
        self.write_config(&NatConfig {
            rule_ports: *ports,
            ..config
        })
    }

    fn step(&mut self, step: Step) -> Result<()> {
        match step {
            Step::PutAllowed(entry) => self
                .allowed_remotes
                .insert(&entry.key(), 1, 0)
                .map_err(map_error(names::ALLOWED_REMOTES)),
            Step::RemoveAllowed(entry) => match self.allowed_remotes.remove(&entry.key()) {
                Err(error) if !is_not_found(&error) => {
                    Err(map_error(names::ALLOWED_REMOTES)(error))
                }
                _ => Ok(()),
            },
            // Its port is marked already (`apply`).
            Step::PutForward(key, value) if key.direction == DIR_INBOUND => {
                self.forward_ports.put(&key, &value)
            }
            Step::RemoveForward(key) if key.direction == DIR_INBOUND => {
                self.forward_ports.remove(&key)
            }
            Step::PutForward(key, value) => {
                // Counted before it is there, so that no packet skips it.
                let new_key = self.forward(&key)?.is_none();
                if new_key {
                    self.count_hint(&key, true)?;
                }
                self.forwards.insert(key, value, 0).map_err(|error| {
                    if new_key {
                        let _ = self.count_hint(&key, false);
                    }
                    map_error(names::FORWARDS)(error)
                })
            }
            Step::RemoveForward(key) => match self.forwards.remove(&key) {
                // Uncounted once it is gone; should that fail, the count
                // stays high, which costs a packet a lookup, never a rule.
                Ok(()) => self.count_hint(&key, false),
                Err(error) if !is_not_found(&error) => Err(map_error(names::FORWARDS)(error)),
                Err(_) => Ok(()),
            },
        }
    }

    /// One more (`up`) or one fewer `FORWARDS` key in `key`'s slot of
    /// `FORWARD_HINTS` (see `nat_common::FORWARD_HINT_BITS`): its bit set
    /// as its first key comes, cleared as its last goes. A
    /// read-modify-write of the bit's word: this writer is the map's only
    /// one.
    fn count_hint(&mut self, key: &EndpointKey, up: bool) -> Result<()> {
        let slot = key.hint_slot();
        let count = self.hint_counts.get(&slot).copied().unwrap_or(0);
        let count = if up {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        let occupied = count > 0;
        if occupied != self.hint_counts.contains_key(&slot) {
            let (index, bit) = bit_position(slot);
            let error = map_error(names::FORWARD_HINTS);
            let word = self.forward_hints.get(&index, 0).map_err(error)?;
            let word = if occupied { word | bit } else { word & !bit };
            self.forward_hints
                .set(index, word, 0)
                .map_err(map_error(names::FORWARD_HINTS))?;
        }
        if occupied {
            self.hint_counts.insert(slot, count);
        } else {
            self.hint_counts.remove(&slot);
        }
        Ok(())
    }

    fn reset_rule_counters(&mut self, rule_id: u32) -> Result<()> {
        let io = |error| map_error(names::RULE_COUNTERS)(aya::maps::MapError::IoError(error));
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| io(error))?;
        let zeroes = PerCpuValues::try_from(vec![RuleCounters::default(); cpus]).map_err(io)?;
        self.rule_counters
            .set(rule_id, zeroes, 0)
            .map_err(map_error(names::RULE_COUNTERS))
    }
}

#[cfg(feature = "harness")]
impl MapWriter {
    /// The configuration array itself, for tests of code that must refuse
    /// an array map.
    pub fn config_map(&self) -> &Array<MapData, NatConfig> {
        &self.config
    }
}

/// A seed nobody outside can guess: std's hasher keys come from the
/// operating system's random source.
fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
