//! `FORWARD_PORTS`, the inbound rules by external port, written through a
//! memory map of the array so that each slot changes with one 8-byte
//! store. A `bpf_map_update_elem` would copy the value with the kernel's
//! `memcpy`, whose stores a packet on another CPU may see half done: the
//! old rule's server address with the new rule's port.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Map, MapData};
use memmap2::{MmapOptions, MmapRaw};
use nat_common::{
    BPF_F_MMAPABLE, EndpointKey, FORWARD_PORT_SLOTS, Forward, forward_port_slot, maps as names,
    slot_port,
};

use super::{DatapathError, Result};

const WORD_BYTES: usize = size_of::<u64>();

pub struct ForwardPorts {
    /// Held for its pin and its descriptor's lifetime; the mapping keeps
    /// the map alive on its own as well.
    _map: MapData,
    memory: MmapRaw,
}

impl ForwardPorts {
    /// Maps the array into memory, once it is the one this build expects:
    /// `FORWARD_PORT_SLOTS` words, created mappable.
    pub(super) fn open(map: Map) -> Result<Self> {
        let shape = |reason: String| DatapathError::MapShape {
            name: names::FORWARD_PORTS,
            reason,
        };
        let Map::Array(map) = map else {
            return Err(shape(format!("a {map:?}, not an array")));
        };
        let info = map.info().map_err(|source| DatapathError::Map {
            name: names::FORWARD_PORTS,
            source,
        })?;
        if info.value_size() as usize != WORD_BYTES
            || info.max_entries() != FORWARD_PORT_SLOTS
            || info.map_flags() & BPF_F_MMAPABLE == 0
        {
            return Err(shape(format!(
                "{} values of {} bytes, flags {:#x}; expected {FORWARD_PORT_SLOTS} of \
                 {WORD_BYTES}, mappable ({BPF_F_MMAPABLE:#x})",
                info.max_entries(),
                info.value_size(),
                info.map_flags()
            )));
        }
        let memory = MmapOptions::new()
            .len(FORWARD_PORT_SLOTS as usize * WORD_BYTES)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .map_err(|source| DatapathError::Mmap {
                name: names::FORWARD_PORTS,
                source,
            })?;
        Ok(Self { _map: map, memory })
    }

    fn word(&self, slot: u32) -> &AtomicU64 {
        assert!(slot < FORWARD_PORT_SLOTS, "FORWARD_PORTS slot {slot}");
        // SAFETY: the slot is within the mapping (checked above, the
        // mapping being FORWARD_PORT_SLOTS words long), which is
        // page-aligned, so 8-byte aligned; the memory lives as long as
        // `self`. The datapath and this process access it only atomically
        // (the datapath with aligned 8-byte loads).
        unsafe { AtomicU64::from_ptr(self.memory.as_mut_ptr().cast::<u64>().add(slot as usize)) }
    }

    fn slot_of(key: &EndpointKey) -> Result<u32> {
        forward_port_slot(key.proto, key.port).ok_or(DatapathError::UnforwardableKey(*key))
    }

    /// The rule on an inbound key's port, if any.
    pub fn get(&self, key: &EndpointKey) -> Result<Option<Forward>> {
        let word = self.word(Self::slot_of(key)?).load(Ordering::Acquire);
        Ok(Forward::from_port_word(word))
    }

    /// Puts `forward` on the inbound key's port, in place of any rule there.
    pub fn put(&self, key: &EndpointKey, forward: &Forward) -> Result<()> {
        let word = forward
            .to_port_word()
            .ok_or(DatapathError::UnpackableForward(*forward))?;
        self.word(Self::slot_of(key)?)
            .store(word, Ordering::Release);
        Ok(())
    }

    /// Takes the rule off the inbound key's port (none there: nothing done).
    pub fn remove(&self, key: &EndpointKey) -> Result<()> {
        self.word(Self::slot_of(key)?).store(0, Ordering::Release);
        Ok(())
    }

    /// Every inbound rule, by its key.
    pub fn entries(&self) -> Vec<(EndpointKey, Forward)> {
        (0..FORWARD_PORT_SLOTS)
            .filter_map(|slot| {
                let forward = Forward::from_port_word(self.word(slot).load(Ordering::Acquire))?;
                let (proto, port) = slot_port(slot)?;
                Some((EndpointKey::inbound(proto, port), forward))
            })
            .collect()
    }
}
