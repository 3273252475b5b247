//! `SESSIONS` and `FORWARD_SESSIONS` seen from user space: the
//! datapath's open-addressing tables of `SessionSlot`s
//! (`nat-ebpf/src/session_table.rs`), read and written through a memory
//! map of the array (natctl removes the conversations of a rule whose
//! schedule closed it; tests and benchmarks make sessions). The slot
//! protocol is the datapath's: a key is in its home slot, or, counted in
//! its home's `spilled`, in its second window; a slot is claimed by
//! compare-and-swap of its state word from empty, filled in, then made
//! live by an atomic swap; a remover takes a live slot by compare-and-swap
//! to claimed, reads the key it now owns, counts a spilled one down and
//! swaps the state to empty. Reading a whole table is one pass over
//! memory, no syscall per entry.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Map, MapData};
use memmap2::{MmapOptions, MmapRaw};
#[cfg(feature = "harness")]
use nat_common::SLOT_LIVE;
use nat_common::{
    BPF_F_MMAPABLE, SESSION_PROBES, SLOT_CLAIMED, SLOT_EMPTY, SLOT_LIVE_SPILLED, Session,
    SessionKey, SessionSlot, SessionTableKind, session_spill_probes, slot_is_live,
};

use super::{DatapathError, Result};

const SLOT_BYTES: usize = size_of::<SessionSlot>();

pub struct SessionTable {
    /// `SESSIONS` or `FORWARD_SESSIONS`.
    name: &'static str,
    kind: SessionTableKind,
    /// Held for its descriptor's lifetime; the mapping keeps the map
    /// alive on its own as well.
    map: MapData,
    memory: MmapRaw,
    slots: u32,
    pub(super) seed: u32,
}

impl SessionTable {
    /// Maps the array `name`, a table of `kind`, into memory, once it is the shape this build
    /// expects: slots of `SessionSlot`, a power of two of them, created
    /// mappable. Its seed (`NatConfig::session_seed`) is set once `CONFIG`
    /// is read.
    pub(super) fn open(name: &'static str, kind: SessionTableKind, map: Map) -> Result<Self> {
        let shape = |reason: String| DatapathError::MapShape { name, reason };
        let Map::Array(map) = map else {
            return Err(shape(format!("a {map:?}, not an array")));
        };
        let info = map
            .info()
            .map_err(|source| DatapathError::Map { name, source })?;
        let slots = info.max_entries();
        if info.value_size() as usize != SLOT_BYTES
            || !slots.is_power_of_two()
            || slots < SESSION_PROBES
            || info.map_flags() & BPF_F_MMAPABLE == 0
        {
            return Err(shape(format!(
                "{slots} values of {} bytes, flags {:#x}; expected a power of two (at least \
                 {SESSION_PROBES}) of {SLOT_BYTES}, mappable ({BPF_F_MMAPABLE:#x})",
                info.value_size(),
                info.map_flags()
            )));
        }
        let memory = MmapOptions::new()
            .len(slots as usize * SLOT_BYTES)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .map_err(|source| DatapathError::Mmap { name, source })?;
        Ok(Self {
            name,
            kind,
            map,
            memory,
            slots,
            seed: 0,
        })
    }

    /// The array itself (its descriptor, for its fdinfo).
    pub fn map(&self) -> &MapData {
        &self.map
    }

    /// The table's slots (twice the sessions it is sized for).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn slot(&self, index: u32) -> *mut SessionSlot {
        assert!(index < self.slots, "{} slot {index}", self.name);
        // SAFETY: within the mapping, `slots` slots long (checked in
        // `open`); the mapping is page-aligned and slots are 64 bytes, so
        // every slot is 8-aligned.
        unsafe {
            self.memory
                .as_mut_ptr()
                .cast::<SessionSlot>()
                .add(index as usize)
        }
    }

    fn state(&self, index: u32) -> &AtomicU64 {
        // SAFETY: an 8-aligned word of the mapping (see `slot`), which
        // lives as long as `self`; the datapath changes it only atomically.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(index)).state) }
    }

    /// A home slot's count of the sessions homed there that live in their
    /// second window.
    fn spilled_at(&self, index: u32) -> &AtomicU64 {
        // SAFETY: as in `state`.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(index)).spilled) }
    }

    /// A copy of a slot's key and session, if it is live. The datapath
    /// may be counting into it meanwhile; a count read half-way is still
    /// a count of that session.
    fn read(&self, index: u32) -> Option<(SessionKey, Session)> {
        if !slot_is_live(self.state(index).load(Ordering::Acquire)) {
            return None;
        }
        let slot = self.slot(index);
        // SAFETY: a slot of the mapping; volatile, as other CPUs write it.
        let copy = unsafe {
            (
                std::ptr::read_volatile(&raw const (*slot).key),
                std::ptr::read_volatile(&raw const (*slot).session),
            )
        };
        Some(copy)
    }

    fn home(&self, key: &SessionKey) -> u32 {
        self.kind.home(self.seed, key) & (self.slots - 1)
    }

    /// The second window of `key`: the slots it may be in when its home
    /// was taken, in probe order.
    fn window(&self, key: &SessionKey) -> impl Iterator<Item = u32> + use<> {
        let (start, step) = session_spill_probes(self.seed, key);
        let mask = self.slots - 1;
        (0..SESSION_PROBES).map(move |probe| start.wrapping_add(probe.wrapping_mul(step)) & mask)
    }

    fn holds(&self, index: u32, key: &SessionKey) -> bool {
        self.read(index).is_some_and(|(held, _)| held == *key)
    }

    fn find(&self, key: &SessionKey) -> Option<u32> {
        let home = self.home(key);
        if self.holds(home, key) {
            return Some(home);
        }
        if self.spilled_at(home).load(Ordering::Acquire) == 0 {
            return None;
        }
        self.window(key).find(|&index| self.holds(index, key))
    }

    /// The session under `key`, if there is one.
    pub fn get(&self, key: &SessionKey) -> Option<Session> {
        self.find(key)
            .and_then(|index| self.read(index))
            .map(|(_, session)| session)
    }

    /// Calls `f` with every live session; returns how many there were.
    pub fn for_each(&self, mut f: impl FnMut(&SessionKey, &Session)) -> usize {
        let mut seen = 0;
        for index in 0..self.slots {
            if let Some((key, session)) = self.read(index) {
                f(&key, &session);
                seen += 1;
            }
        }
        seen
    }

    /// Every live session.
    pub fn entries(&self) -> Vec<(SessionKey, Session)> {
        let mut entries = Vec::new();
        self.for_each(|key, session| entries.push((*key, *session)));
        entries
    }

    /// How many sessions the table holds.
    pub fn len(&self) -> usize {
        self.for_each(|_, _| {})
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the session under `key`; `false` if there was none.
    pub fn remove(&mut self, key: &SessionKey) -> bool {
        self.find(key).is_some_and(|index| self.free(index, key))
    }

    /// Removes every session `doomed` picks; returns how many went.
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&SessionKey) -> bool) -> usize {
        let mut removed = 0;
        for index in 0..self.slots {
            if let Some((key, _)) = self.read(index)
                && doomed(&key)
                && self.free(index, &key)
            {
                removed += 1;
            }
        }
        removed
    }

    /// Frees slot `index` if it holds `key`, as the datapath's sweep does:
    /// taken first, so that the key is read once it cannot change.
    fn free(&self, index: u32, key: &SessionKey) -> bool {
        let state = self.state(index).load(Ordering::Acquire);
        if !slot_is_live(state)
            || self
                .state(index)
                .compare_exchange(state, SLOT_CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return false;
        }
        // SAFETY: a slot of the mapping, claimed by this call.
        let held = unsafe { std::ptr::read_volatile(&raw const (*self.slot(index)).key) };
        if held != *key {
            // Freed and filled with another session since it was read.
            self.state(index).swap(state, Ordering::SeqCst);
            return false;
        }
        if state == SLOT_LIVE_SPILLED {
            self.spilled_at(self.home(key))
                .fetch_sub(1, Ordering::SeqCst);
        }
        self.state(index).swap(SLOT_EMPTY, Ordering::SeqCst);
        true
    }
}

/// Writes, for tests and benchmarks that set up sessions themselves;
/// natctl never makes sessions (the datapath does).
#[cfg(feature = "harness")]
impl SessionTable {
    /// Adds `session` under `key`, or replaces the one there, as the
    /// datapath would make it.
    pub fn insert(&mut self, key: SessionKey, session: Session) -> Result<()> {
        if let Some(index) = self.find(&key) {
            self.write(index, &key, &session);
            return Ok(());
        }
        let home = self.home(&key);
        if self.claim(home) {
            self.write(home, &key, &session);
            self.state(home).swap(SLOT_LIVE, Ordering::SeqCst);
            return Ok(());
        }
        self.spilled_at(home).fetch_add(1, Ordering::SeqCst);
        for index in self.window(&key) {
            if self.claim(index) {
                self.write(index, &key, &session);
                self.state(index).swap(SLOT_LIVE_SPILLED, Ordering::SeqCst);
                return Ok(());
            }
        }
        self.spilled_at(home).fetch_sub(1, Ordering::SeqCst);
        Err(DatapathError::SessionWindowFull {
            table: self.name,
            key,
            slots: self.slots,
        })
    }

    fn claim(&self, index: u32) -> bool {
        self.state(index)
            .compare_exchange(SLOT_EMPTY, SLOT_CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn write(&self, index: u32, key: &SessionKey, session: &Session) {
        let slot = self.slot(index);
        // SAFETY: a slot of the mapping that this call claimed or that
        // holds `key`; volatile, as other CPUs read it.
        unsafe {
            std::ptr::write_volatile(&raw mut (*slot).key, *key);
            std::ptr::write_volatile(&raw mut (*slot).session, *session);
        }
    }

    /// The home slot of `key` in this table.
    pub fn home_slot(&self, key: &SessionKey) -> u32 {
        self.home(key)
    }

    /// The slot that holds the session under `key`, if there is one.
    pub fn slot_of(&self, key: &SessionKey) -> Option<u32> {
        self.find(key)
    }

    /// Whether the session under `key` lives in its second window (its
    /// home was taken when it was made); `None` if there is none.
    pub fn in_second_window(&self, key: &SessionKey) -> Option<bool> {
        self.find(key).map(|index| index != self.home(key))
    }

    /// How many live sessions are in their second window, and the sum of
    /// every home's count of them: equal whenever no write is under way.
    pub fn spilled(&self) -> (u64, u64) {
        let mut in_window = 0;
        let mut counted = 0u64;
        for index in 0..self.slots {
            if self.state(index).load(Ordering::Acquire) == SLOT_LIVE_SPILLED {
                in_window += 1;
            }
            counted = counted.wrapping_add(self.spilled_at(index).load(Ordering::Acquire));
        }
        (in_window, counted)
    }
}
