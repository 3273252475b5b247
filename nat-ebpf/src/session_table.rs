//! `SESSIONS`, the dynamic sessions: an open-addressing table in an array
//! of `nat_common::SessionSlot`s, each a key, its state word and its
//! session in one cache line. A key lives in its home slot
//! (`nat_common::session_home`: a hash of the remote endpoint plus the
//! external port, so that one remote's sessions lie side by side), or, if
//! that was taken when the session was made, in one of the
//! `SESSION_PROBES` slots of its second window (`session_spill_home`, a
//! hash of the whole key), counted in its home slot's `spilled`. A lookup
//! reads the home slot; only if the key is not there and `spilled` is not
//! 0 does it read the second window. With many flows this is one cache
//! miss a packet, often not even that, where the kernel's hash map takes
//! two or three (its bucket array, then an element that straddles lines).
//!
//! Writers: a packet making a session claims a free slot by compare-and-
//! swap of its state from `SLOT_EMPTY` to `SLOT_CLAIMED`, fills it in, then
//! publishes it by swapping the state to `SLOT_LIVE` (or
//! `SLOT_LIVE_SPILLED`; an atomic swap, a full barrier, so the key and
//! session are seen before the state on any CPU); a spilled session's
//! home count goes up before its slot is claimed. The sweep frees a live
//! slot by compare-and-swap back to `SLOT_EMPTY`, then counts a spilled
//! one down at its home. Nothing else changes the state word.
//!
//! What this allows, as the kernel's preallocated hash map allows it too
//! (its elements are reused at once when deleted): a packet holding a slot
//! that the sweep frees and another packet claims may still count into
//! it. The sweep frees only a session idle past its timeout, so that
//! packet raced the session's last instant; what it writes is a count or
//! a timestamp. Two CPUs making the same session at one instant may both
//! get a slot (one the home, the other in the second window): lookups find
//! the home one, and the other, refreshed by nobody, ages out.
use nat_common::{
    NatConfig, SESSION_PROBES, SLOT_CLAIMED, SLOT_EMPTY, SLOT_LIVE, SLOT_LIVE_SPILLED, Session,
    SessionKey, SessionSlot, session_home, session_spill_home, slot_is_live,
};

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;

use crate::maps::SESSIONS;

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
fn slot(config: &NatConfig, index: u32) -> Option<*mut SessionSlot> {
    SESSIONS.get_ptr_mut(index & config.session_mask)
}

/// A walk of a second window through `bpf_loop`: `probe_window` is
/// verified once, where a loop written out would be walked by the verifier
/// 32 times at every call, on every path to it (which took `nat_lan` past
/// the verifier's limit). The kernel inlines the helper into a plain loop.
#[repr(C)]
struct WindowWalk {
    start: u32,
    mask: u32,
    want: [u32; 3],
    /// 1: claim the first free slot; 0: find the live one under `want`.
    claim: u32,
    /// The slot found or claimed, `NO_SLOT` if none.
    found: u32,
    _pad: u32,
}

const NO_SLOT: u32 = u32::MAX;

extern "C" fn probe_window(probe: u64, walk: *mut WindowWalk) -> i64 {
    // SAFETY: `bpf_loop` hands over the context `walk_window` gave it, on
    // its stack.
    let walk = unsafe { &mut *walk };
    let index = walk.start.wrapping_add(probe as u32) & walk.mask;
    let Some(slot) = SESSIONS.get_ptr_mut(index) else {
        return 1;
    };
    let hit = if walk.claim != 0 {
        claim(slot)
    } else {
        holds(slot, &walk.want)
    };
    if hit {
        walk.found = index;
        return 1;
    }
    0
}

/// The slot of `key`'s second window that holds it (`claim` false) or
/// that this CPU claimed for it (`claim` true).
#[inline(always)]
fn walk_window(
    config: &NatConfig,
    key: &SessionKey,
    want: [u32; 3],
    claim: bool,
) -> Option<*mut SessionSlot> {
    let mut walk = WindowWalk {
        start: session_spill_home(config.session_seed, key),
        mask: config.session_mask,
        want,
        claim: u32::from(claim),
        found: NO_SLOT,
        _pad: 0,
    };
    // SAFETY: the callback's signature is what `bpf_loop` calls, and `walk`
    // lives on this frame for the whole call.
    unsafe {
        bpf_loop(
            SESSION_PROBES,
            probe_window as *mut c_void,
            &raw mut walk as *mut c_void,
            0,
        );
    }
    if walk.found == NO_SLOT {
        return None;
    }
    SESSIONS.get_ptr_mut(walk.found)
}

/// The session under `key`, if there is one.
#[inline(always)]
pub fn find(config: &NatConfig, key: &SessionKey) -> Option<*mut Session> {
    let want = key_words(key);
    let home = slot(config, session_home(config.session_seed, key))?;
    // SAFETY: a pointer returned by a map lookup.
    unsafe {
        if holds(home, &want) {
            return Some(&raw mut (*home).session);
        }
        if core::ptr::read_volatile(&raw const (*home).spilled) == 0 {
            return None;
        }
    }
    let slot = walk_window(config, key, want, false)?;
    // SAFETY: a pointer returned by a map lookup.
    Some(unsafe { &raw mut (*slot).session })
}

/// Adds `session` under `key`, which the caller looked up and did not
/// find: in its home slot if free, else in the first free slot of its
/// second window; `false` when that too is full.
#[inline(always)]
pub fn insert(config: &NatConfig, key: &SessionKey, session: &Session) -> bool {
    let words = key_words(key);
    let Some(home) = slot(config, session_home(config.session_seed, key)) else {
        return false;
    };
    if claim(home) {
        fill(home, &words, session);
        // SAFETY: a pointer returned by a map lookup.
        publish(unsafe { &raw mut (*home).state }, SLOT_LIVE);
        return true;
    }
    // Counted before the session exists, so that no lookup that could
    // see the session skips the second window.
    // SAFETY: as above.
    count_spilled(unsafe { &raw mut (*home).spilled }, 1);
    if let Some(slot) = walk_window(config, key, words, true) {
        fill(slot, &words, session);
        // SAFETY: a pointer returned by a map lookup.
        publish(unsafe { &raw mut (*slot).state }, SLOT_LIVE_SPILLED);
        return true;
    }
    // SAFETY: as above.
    count_spilled(unsafe { &raw mut (*home).spilled }, -1);
    false
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

/// Frees a live slot (the sweep, for an idle session) whose state was
/// `state` and key `key`; `false` if it was not that any more. A spilled
/// session is counted down at its home once its slot is free.
#[inline(always)]
pub fn release(shape: &TableShape, slot: *mut SessionSlot, state: u64, key: &SessionKey) -> bool {
    // SAFETY: a pointer the map's walk handed over.
    if !swap_state(unsafe { &raw mut (*slot).state }, state, SLOT_EMPTY) {
        return false;
    }
    if state == SLOT_LIVE_SPILLED
        && let Some(home) = SESSIONS.get_ptr_mut(session_home(shape.seed, key) & shape.mask)
    {
        // SAFETY: a pointer returned by a map lookup.
        count_spilled(unsafe { &raw mut (*home).spilled }, -1);
    }
    true
}

/// The table's seed and mask (`NatConfig::session_seed`, `session_mask`),
/// for the sweep, which keeps no `NatConfig` (24 KiB) on its stack.
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
