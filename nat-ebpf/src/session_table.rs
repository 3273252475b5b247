//! The datapath's two session tables, `SESSIONS` (the dynamic sessions) and
//! `FORWARD_SESSIONS` (the conversations through forwarded ports): each an
//! open-addressing table in an array of `nat_common::SessionSlot`s, a key,
//! its state word and its session in one cache line. A key lives in its home slot
//! (`nat_common::session_home`: a hash of the remote endpoint plus the
//! external port, so that one remote's sessions lie side by side; in
//! `FORWARD_SESSIONS`, `forward_session_home`, the same with the ports'
//! parts swapped, the external port being the rule's), or, if
//! that was taken when the session was made, in one of the
//! `SESSION_PROBES` slots of its second window (`session_spill_probes`,
//! spread over the table by a hash of the whole key), counted in its home
//! slot's `spilled`. A lookup reads the home slot; only if the key is not
//! there and `spilled` is not 0 does it read the second window. With many flows this is one cache
//! miss a packet, often not even that, where the kernel's hash map takes
//! two or three (its bucket array, then an element that straddles lines).
//!
//! Writers: a packet making a session claims a free slot by compare-and-
//! swap of its state from `SLOT_EMPTY` to `SLOT_CLAIMED`, fills it in, then
//! publishes it by swapping the state to `SLOT_LIVE` (or
//! `SLOT_LIVE_SPILLED`; an atomic swap, a full barrier, so the key and
//! session are seen before the state on any CPU); a spilled session's
//! home count goes up before its slot is claimed. Whoever removes a live
//! session (the sweep, an eviction, the daemon) first takes its slot by
//! compare-and-swap of the state it saw to `SLOT_CLAIMED`, and only then
//! reads the key it now owns: so two removers never count one spilled
//! session down twice, even when the slot was freed and filled again
//! between one's look and its swap. It then counts a spilled one down at
//! its home and swaps the state to `SLOT_EMPTY` (or fills the slot with
//! its own session). The sweep's move of a spilled session home
//! (`bring_home`) is made of these same steps. Nothing else changes the
//! state word.
//!
//! When a `FORWARD_SESSIONS` window is full (a flood of new remotes on a
//! forwarded port has filled the table), a new conversation a remote
//! opens takes the
//! slot of the older of two of its window's sessions, picked at random:
//! the table keeps up with whoever is talking, as the LRU hash map it
//! replaced did, and a flood there never touches `SESSIONS`.
//!
//! What this allows, as the kernel's preallocated hash map allows it too
//! (its elements are reused at once when deleted): a packet holding a slot
//! that the sweep frees and another packet claims may still count into
//! it. The sweep frees only a session idle past its timeout, so that
//! packet raced the session's last instant; an eviction, only when the
//! forwarded table is full, so that packet's conversation was thrown out
//! at that instant anyway. What it writes is a count or a timestamp. Two CPUs making the same session at one instant may both
//! get a slot (one the home, the other in the second window): lookups find
//! the home one, and the other, refreshed by nobody, ages out.
use nat_common::{
    HOMECOMING_MARGIN_NS, NatConfig, SESSION_PROBES, SLOT_CLAIMED, SLOT_EMPTY, SLOT_LIVE,
    SLOT_LIVE_SPILLED, Session, SessionKey, SessionSlot, SessionTableKind, session_spill_probes,
    slot_is_live,
};

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_loop},
    maps::Array,
};

use crate::maps::{FORWARD_SESSIONS, SESSIONS};

/// One of the session tables: its array and its shape's place in
/// `NatConfig` (both share `session_seed`).
pub trait SlotTable {
    const KIND: SessionTableKind;

    fn slots() -> &'static Array<SessionSlot>;
    fn mask(config: &NatConfig) -> u32;

    /// `key`'s home slot (before the mask).
    #[inline(always)]
    fn home(seed: u32, key: &SessionKey) -> u32 {
        Self::KIND.home(seed, key)
    }

    #[inline(always)]
    fn shape(config: &NatConfig) -> TableShape {
        TableShape {
            seed: config.session_seed,
            mask: Self::mask(config),
        }
    }
}

/// `SESSIONS`.
pub struct Dynamic;

impl SlotTable for Dynamic {
    const KIND: SessionTableKind = SessionTableKind::Dynamic;

    #[inline(always)]
    fn slots() -> &'static Array<SessionSlot> {
        &SESSIONS
    }

    #[inline(always)]
    fn mask(config: &NatConfig) -> u32 {
        config.session_mask
    }
}

/// `FORWARD_SESSIONS`.
pub struct Forwarded;

impl SlotTable for Forwarded {
    const KIND: SessionTableKind = SessionTableKind::Forwarded;

    #[inline(always)]
    fn slots() -> &'static Array<SessionSlot> {
        &FORWARD_SESSIONS
    }

    #[inline(always)]
    fn mask(config: &NatConfig) -> u32 {
        config.forward_session_mask
    }
}

/// A key as three words, compared and copied word by word: a struct
/// compare or copy between two places LLVM cannot tell apart becomes a
/// call to the BPF target's byte-at-a-time `memcmp` or `memmove`.
#[inline(always)]
fn key_words(key: &SessionKey) -> [u32; 3] {
    // SAFETY: SessionKey is repr(C), 12 bytes of plain integers and its
    // padding, which every key is built with as zero (`session::key_of`);
    // the transmute fails to compile if its size changes.
    unsafe { core::mem::transmute::<SessionKey, [u32; 3]>(*key) }
}

#[inline(always)]
fn holds(slot: *const SessionSlot, want: &[u32; 3]) -> bool {
    // SAFETY: a pointer returned by a map lookup; the key is 4-aligned in
    // the slot (offset 8).
    unsafe {
        let key = (&raw const (*slot).key).cast::<u32>();
        slot_is_live(core::ptr::read_volatile(&raw const (*slot).state))
            && *key == want[0]
            && *key.add(1) == want[1]
            && *key.add(2) == want[2]
    }
}

#[inline(always)]
pub(crate) fn slot_at<T: SlotTable>(index: u32) -> Option<*mut SessionSlot> {
    T::slots().get_ptr_mut(index)
}

/// A walk of a second window through `bpf_loop`: `probe_window` is
/// verified once, where a loop written out would be walked by the verifier
/// 32 times at every call, on every path to it (which took `nat_lan` past
/// the verifier's limit). The callback only reads this: the probe that hit
/// is told by how many iterations ran, so the verifier sees the same
/// context at every iteration and settles at once. The kernel inlines the
/// helper into a plain loop.
#[repr(C)]
struct WindowWalk {
    start: u32,
    step: u32,
    mask: u32,
    want: [u32; 3],
    /// 1: claim the first free slot; 0: find the live one under `want`.
    claim: u32,
}

impl WindowWalk {
    #[inline(always)]
    fn index(&self, probe: u32) -> u32 {
        self.start.wrapping_add(probe.wrapping_mul(self.step)) & self.mask
    }
}

extern "C" fn probe_window<T: SlotTable>(probe: u64, walk: *const WindowWalk) -> i64 {
    // The iteration after the last probe: nothing hit.
    if probe >= u64::from(SESSION_PROBES) {
        return 1;
    }
    // SAFETY: `bpf_loop` hands over the context `walk_window` gave it, on
    // its stack.
    let walk = unsafe { &*walk };
    let Some(slot) = slot_at::<T>(walk.index(probe as u32)) else {
        return 1;
    };
    let hit = if walk.claim != 0 {
        claim(slot)
    } else {
        holds(slot, &walk.want)
    };
    i64::from(hit)
}

/// The walk of `key`'s second window: for the slot that holds it
/// (`claim` false) or a free one to claim for it (`claim` true).
#[inline(always)]
fn window_of<T: SlotTable>(config: &NatConfig, key: &SessionKey, claim: bool) -> WindowWalk {
    window_in(&T::shape(config), key, claim)
}

#[inline(always)]
fn window_in(shape: &TableShape, key: &SessionKey, claim: bool) -> WindowWalk {
    let (start, step) = session_spill_probes(shape.seed, key);
    WindowWalk {
        start,
        step,
        mask: shape.mask,
        want: key_words(key),
        claim: u32::from(claim),
    }
}

/// The slot the walk found (or claimed), `NO_SLOT` if none.
#[inline(always)]
fn walk_window<T: SlotTable>(walk: &WindowWalk) -> u32 {
    // SAFETY: the callback's signature is what `bpf_loop` calls, and `walk`
    // lives on the caller's frame for the whole call.
    let iterations = unsafe {
        bpf_loop(
            SESSION_PROBES + 1,
            probe_window::<T> as *mut c_void,
            walk as *const WindowWalk as *mut c_void,
            0,
        )
    };
    // The callback stops the loop at the probe that hit, or at the one
    // past the last.
    match u32::try_from(iterations) {
        Ok(ran @ 1..=SESSION_PROBES) => walk.index(ran - 1),
        _ => NO_SLOT,
    }
}

/// No slot: past the end of any table, so that looking it up finds
/// nothing.
const NO_SLOT: u32 = u32::MAX;

/// The session under `key`, if there is one. Every way of finding it
/// ends in one slot index, looked up once: the verifier then carries the
/// caller on from one state, not one per way.
#[inline(always)]
pub fn find<T: SlotTable>(config: &NatConfig, key: &SessionKey) -> Option<*mut Session> {
    let slot = slot_at::<T>(find_index::<T>(config, key))?;
    // SAFETY: a pointer returned by a map lookup.
    Some(unsafe { &raw mut (*slot).session })
}

#[inline(always)]
fn find_index<T: SlotTable>(config: &NatConfig, key: &SessionKey) -> u32 {
    let want = key_words(key);
    let index = T::home(config.session_seed, key) & T::mask(config);
    let Some(home) = slot_at::<T>(index) else {
        return NO_SLOT;
    };
    if holds(home, &want) {
        return index;
    }
    // SAFETY: a pointer returned by a map lookup.
    if unsafe { core::ptr::read_volatile(&raw const (*home).spilled) } == 0 {
        return NO_SLOT;
    }
    walk_window::<T>(&window_of::<T>(config, key, false))
}

/// Adds `session` under `key`, which the caller looked up and did not
/// find: in its home slot if free, else in the first free slot of its
/// second window; `false` when that too is full.
#[inline(always)]
pub fn insert<T: SlotTable>(config: &NatConfig, key: &SessionKey, session: &Session) -> bool {
    insert_or_evict::<T>(config, key, session, false).is_some()
}

/// How `insert_evicting` found room.
pub enum Placed {
    Free,
    /// In the slot of an older session, which is gone.
    Evicting,
}

/// As `insert`, but a full second window gives up the older of two of its
/// sessions, picked at random, to this one; `None` only when other CPUs
/// changed both first.
#[inline(always)]
pub fn insert_evicting<T: SlotTable>(
    config: &NatConfig,
    key: &SessionKey,
    session: &Session,
) -> Option<Placed> {
    insert_or_evict::<T>(config, key, session, true)
}

#[inline(always)]
fn insert_or_evict<T: SlotTable>(
    config: &NatConfig,
    key: &SessionKey,
    session: &Session,
    evict: bool,
) -> Option<Placed> {
    let mask = T::mask(config);
    let home = slot_at::<T>(T::home(config.session_seed, key) & mask)?;
    if claim(home) {
        fill(home, &key_words(key), session);
        // SAFETY: a pointer returned by a map lookup.
        publish(unsafe { &raw mut (*home).state }, SLOT_LIVE);
        return Some(Placed::Free);
    }
    spill::<T>(&T::shape(config), home, key, session, evict).map(|(_, placed)| placed)
}

/// Puts `session` in a free slot of `key`'s second window, its home slot
/// `home` taken; with `evict`, in a full window, in the slot of the older
/// of two sessions there. Returns the slot's index and how it was got.
#[inline(always)]
fn spill<T: SlotTable>(
    shape: &TableShape,
    home: *mut SessionSlot,
    key: &SessionKey,
    session: &Session,
    evict: bool,
) -> Option<(u32, Placed)> {
    // Counted before the session exists, so that no lookup that could
    // see the session skips the second window.
    // SAFETY: a pointer returned by a map lookup.
    count_spilled(unsafe { &raw mut (*home).spilled }, 1);
    let walk = window_in(shape, key, true);
    let mut index = walk_window::<T>(&walk);
    let mut placed = Placed::Free;
    if index == NO_SLOT && evict {
        index = evict_from::<T>(shape, &walk);
        placed = Placed::Evicting;
    }
    if let Some(slot) = slot_at::<T>(index) {
        fill(slot, &walk.want, session);
        // SAFETY: as above.
        publish(unsafe { &raw mut (*slot).state }, SLOT_LIVE_SPILLED);
        return Some((index, placed));
    }
    // SAFETY: as above.
    count_spilled(unsafe { &raw mut (*home).spilled }, -1);
    None
}

/// Takes, for a new session, the slot of the older of two sessions of a
/// full window (`walk`), picked at random: its index, claimed by this
/// CPU, or `NO_SLOT` if another CPU changed both first. Two choices
/// rather than one keep a talking conversation from being thrown out
/// about as well as the whole window's oldest would, at two reads.
#[inline(always)]
fn evict_from<T: SlotTable>(shape: &TableShape, walk: &WindowWalk) -> u32 {
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let first = walk.index(random % SESSION_PROBES);
    let second = walk.index((random >> 16) % SESSION_PROBES);
    let (Some(a), Some(b)) = (slot_at::<T>(first), slot_at::<T>(second)) else {
        return NO_SLOT;
    };
    // SAFETY: pointers returned by map lookups; a stale reading only
    // picks the younger.
    let (seen_a, seen_b) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*a).session.last_seen_ns),
            core::ptr::read_volatile(&raw const (*b).session.last_seen_ns),
        )
    };
    let (index, victim) = if seen_a <= seen_b {
        (first, a)
    } else {
        (second, b)
    };
    // SAFETY: as above.
    let state = unsafe { core::ptr::read_volatile(&raw const (*victim).state) };
    if slot_is_live(state) && take(victim, state) {
        disown::<T>(shape, victim, state);
        return index;
    }
    // Freed meanwhile (by the sweep, or another CPU's eviction, which
    // then filled it): free, it is as good.
    if claim(victim) { index } else { NO_SLOT }
}

/// Takes a free slot for this CPU to fill in.
#[inline(always)]
fn claim(slot: *mut SessionSlot) -> bool {
    // SAFETY: a pointer returned by a map lookup.
    let state = unsafe { &raw mut (*slot).state };
    // SAFETY: as above; a plain read first, so that a taken slot costs no
    // locked instruction.
    let free = unsafe { core::ptr::read_volatile(state) } == SLOT_EMPTY;
    free && swap_state(state, SLOT_EMPTY, SLOT_CLAIMED)
}

/// Writes a claimed slot's key and session, word by word (see `key_words`).
#[inline(always)]
fn fill(slot: *mut SessionSlot, key: &[u32; 3], session: &Session) {
    // SAFETY: a pointer returned by a map lookup, to a slot this CPU
    // claimed; the key is 4-aligned (offset 8), the session 8-aligned
    // (offset 24), and Session is repr(C), 32 bytes of plain integers and
    // explicit padding (the transmute fails to compile if its size
    // changes).
    unsafe {
        let to = (&raw mut (*slot).key).cast::<u32>();
        *to = key[0];
        *to.add(1) = key[1];
        *to.add(2) = key[2];
        (*slot)._pad = 0;
        let from = core::mem::transmute::<Session, [u64; 4]>(*session);
        let to = (&raw mut (*slot).session).cast::<u64>();
        *to = from[0];
        *to.add(1) = from[1];
        *to.add(2) = from[2];
        *to.add(3) = from[3];
    }
}

/// Takes a live slot whose state was `state` for this CPU, which then owns
/// its key: to free it (`free`) or fill it with another session.
#[inline(always)]
pub fn take(slot: *mut SessionSlot, state: u64) -> bool {
    // SAFETY: a pointer returned by a map lookup or walk.
    swap_state(unsafe { &raw mut (*slot).state }, state, SLOT_CLAIMED)
}

/// Puts back a slot taken with `take` but kept after all (its session,
/// read again once owned, was not the one judged).
#[inline(always)]
pub fn put_back(slot: *mut SessionSlot, state: u64) {
    // SAFETY: a pointer returned by a map lookup or walk.
    publish(unsafe { &raw mut (*slot).state }, state);
}

/// Frees a slot taken with `take` from `state`, in a table of `shape`.
#[inline(always)]
pub fn free<T: SlotTable>(shape: &TableShape, slot: *mut SessionSlot, state: u64) {
    disown::<T>(shape, slot, state);
    // SAFETY: a pointer returned by a map lookup or walk.
    publish(unsafe { &raw mut (*slot).state }, SLOT_EMPTY);
}

/// The session in a slot this CPU took from `state` is gone: a spilled
/// one is counted down at its home. The key is read only now, when no
/// other CPU can be changing it.
#[inline(always)]
fn disown<T: SlotTable>(shape: &TableShape, slot: *mut SessionSlot, state: u64) {
    if state != SLOT_LIVE_SPILLED {
        return;
    }
    // SAFETY: a pointer returned by a map lookup or walk, to a slot this
    // CPU claimed.
    let key = unsafe { (*slot).key };
    if let Some(home) = slot_at::<T>(T::home(shape.seed, &key) & shape.mask) {
        // SAFETY: a pointer returned by a map lookup.
        count_spilled(unsafe { &raw mut (*home).spilled }, -1);
    }
}

/// Takes a live slot whose state was `state` if it still holds `key`:
/// between a look at a slot and the take, its session may have been freed
/// and another made there.
#[inline(always)]
fn take_holding(slot: *mut SessionSlot, state: u64, key: &[u32; 3]) -> bool {
    if !take(slot, state) {
        return false;
    }
    // SAFETY: a pointer returned by a map lookup, to a slot this CPU
    // took; the key is 4-aligned (offset 8).
    let held = unsafe { key_words(&(*slot).key) };
    if held[0] == key[0] && held[1] == key[1] && held[2] == key[2] {
        return true;
    }
    put_back(slot, state);
    false
}

/// Brings the session under `key`, which lives in `slot` of its second
/// window (its home was taken when it was made), back to its home slot
/// when that is free, or holds a session last seen
/// `HOMECOMING_MARGIN_NS` or more before this one, which then goes to its
/// own second window: the sweep's way of keeping the sessions that talk
/// at one slot a lookup (the spilled ones cost a second, far away), where
/// a home taken once would otherwise hold its session out for good.
/// Whether it moved.
///
/// Neither session is ever missing from the table meanwhile: the home's
/// occupant is copied into its window, counted at its home, before its
/// slot is taken; this one is written into its home and published before
/// its old slot is freed, and lookups find the home copy first. A packet
/// counting into a copy that is then freed loses that count, as with any
/// slot the sweep frees; a TCP state change it made there is carried over.
#[inline(always)]
pub fn bring_home<T: SlotTable>(
    shape: &TableShape,
    slot: *mut SessionSlot,
    key: &SessionKey,
    expired: &impl Fn(&SessionKey, &Session) -> bool,
) -> bool {
    let Some(home) = slot_at::<T>(T::home(shape.seed, key) & shape.mask) else {
        return false;
    };
    // SAFETY: pointers returned by map lookups.
    let (home_state, seen) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*home).state),
            core::ptr::read_volatile(&raw const (*slot).session.last_seen_ns),
        )
    };
    let room = if home_state == SLOT_EMPTY {
        claim(home)
    } else {
        make_room::<T>(shape, home, home_state, seen, expired)
    };
    if !room {
        return false;
    }
    let want = key_words(key);
    // SAFETY: as above; the home is this CPU's now.
    let session = unsafe { (*slot).session };
    fill(home, &want, &session);
    // SAFETY: as above.
    publish(unsafe { &raw mut (*home).state }, SLOT_LIVE);
    if take_holding(slot, SLOT_LIVE_SPILLED, &want) {
        // SAFETY: as above; a packet may still be writing the old copy.
        unsafe {
            let tcp_state = core::ptr::read_volatile(&raw const (*slot).session.tcp_state);
            if tcp_state != session.tcp_state {
                (*home).session.tcp_state = tcp_state;
            }
        }
        free::<T>(shape, slot, SLOT_LIVE_SPILLED);
        return true;
    }
    // Removed meanwhile (by the daemon): so goes the copy at home.
    if take_holding(home, SLOT_LIVE, &want) {
        free::<T>(shape, home, SLOT_LIVE);
    }
    false
}

/// Takes a live home slot (of state `state`) for a session last seen at
/// `seen`, if its occupant was last seen `HOMECOMING_MARGIN_NS` or more
/// before and is not `expired` (that one is the sweep's to free): the
/// occupant first goes to its own second window. On `true` the home is
/// this CPU's, as if claimed.
#[inline(always)]
fn make_room<T: SlotTable>(
    shape: &TableShape,
    home: *mut SessionSlot,
    state: u64,
    seen: u64,
    expired: &impl Fn(&SessionKey, &Session) -> bool,
) -> bool {
    // Claimed by another CPU, being filled or freed.
    if !slot_is_live(state) {
        return false;
    }
    // SAFETY: a pointer returned by a map lookup; a torn read is caught
    // once the slot is taken.
    let (key, session) = unsafe { ((*home).key, (*home).session) };
    if session.last_seen_ns.saturating_add(HOMECOMING_MARGIN_NS) > seen || expired(&key, &session) {
        return false;
    }
    let Some(shelf) = slot_at::<T>(shelve::<T>(shape, &key, &session)) else {
        return false;
    };
    let want = key_words(&key);
    if take_holding(home, state, &want) {
        // SAFETY: as above, the slot this CPU's now.
        let now_seen = unsafe { (*home).session.last_seen_ns };
        if now_seen == session.last_seen_ns {
            disown::<T>(shape, home, state);
            return true;
        }
        // Refreshed since it was copied: it stays.
        put_back(home, state);
    }
    if take_holding(shelf, SLOT_LIVE_SPILLED, &want) {
        free::<T>(shape, shelf, SLOT_LIVE_SPILLED);
    }
    false
}

/// Copies `key`'s session into a free slot of its second window, counted
/// at its home first (as `insert` counts): that slot's index, `NO_SLOT`
/// if the window is full.
#[inline(always)]
fn shelve<T: SlotTable>(shape: &TableShape, key: &SessionKey, session: &Session) -> u32 {
    let Some(home) = slot_at::<T>(T::home(shape.seed, key) & shape.mask) else {
        return NO_SLOT;
    };
    spill::<T>(shape, home, key, session, false).map_or(NO_SLOT, |(index, _)| index)
}

/// A table's seed and mask (`NatConfig::session_seed`, `session_mask`,
/// `forward_session_mask`), for the sweep, which keeps no `NatConfig`
/// (24 KiB) on its stack.
#[derive(Clone, Copy)]
pub struct TableShape {
    pub seed: u32,
    pub mask: u32,
}

/// Adds `delta` to a home slot's count of spilled sessions (`BPF_ADD`,
/// atomic: two CPUs may spill from one home at once).
#[inline(always)]
fn count_spilled(spilled: *mut u64, delta: i64) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering, atomic_xadd};
        // SAFETY: a word inside a map value, 8-aligned.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(spilled, delta as u64) };
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: as above.
        unsafe { AtomicU64::from_ptr(spilled) }.fetch_add(delta as u64, Ordering::SeqCst);
    }
}

/// Swaps a state word from `current` to `new` if it still is `current`
/// (`BPF_CMPXCHG`; see `ports::swap_owner`).
#[inline(always)]
fn swap_state(state: *mut u64, current: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering, atomic_cxchg};
        // SAFETY: a state word inside a map value, 8-aligned.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                state, current, new,
            )
            .1
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: as above.
        unsafe { AtomicU64::from_ptr(state) }
            .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// Makes a filled slot live, as `state` (`SLOT_LIVE` or
/// `SLOT_LIVE_SPILLED`): an atomic swap (`BPF_XCHG`), fully ordered, so
/// that no CPU sees the state before the key and session written ahead of
/// it.
#[inline(always)]
fn publish(slot_state: *mut u64, state: u64) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering, atomic_xchg};
        // SAFETY: as in `swap_state`.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(slot_state, state) };
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: as in `swap_state`.
        unsafe { AtomicU64::from_ptr(slot_state) }.swap(state, Ordering::SeqCst);
    }
}
