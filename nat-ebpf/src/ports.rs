//! Who holds each external port: the inbound half of every dynamic mapping,
//! one `PORT_OWNERS` slot per (protocol, port). A new mapping claims its
//! port with one compare-and-swap of the slot's owner word from 0 (free),
//! so of two CPUs claiming one port exactly one wins, as a `BPF_NOEXIST`
//! insert would decide it, but with no hash-table element to take from a
//! free list and link under a bucket lock; a reply finds its internal
//! endpoint by indexing the array instead of hashing a key.
//!
//! A slot is released by the mapping's creator when its outbound half
//! lost a race (right after claiming it), or by the sweep when the mapping
//! has aged out. `seen_ns` is cleared before the owner word, and a new
//! claimant stamps it only after its compare-and-swap: the sweep leaves a
//! slot alone while it reads 0 there, so it never judges a claim by its
//! predecessor's age.
use nat_common::{BindingKey, PortOwner, port_slot};

use crate::{maps::PORT_OWNERS, parse::Endpoint};

#[inline(always)]
fn slot(proto: u8, port: u16) -> Option<*mut PortOwner> {
    PORT_OWNERS.get_ptr_mut(port_slot(proto, port)?)
}

/// `slot`'s owner word, read once (the kernel's `READ_ONCE`): an aligned
/// 8-byte load, which no CPU tears, so it is one owner or none.
#[inline(always)]
fn read_owner(slot: *mut PortOwner) -> u64 {
    // SAFETY: `slot` points at a live `PORT_OWNERS` value (an array's
    // values live as long as the map, which outlives the program run), and
    // `owner` is its first field: 8-byte aligned, as the kernel aligns
    // every map value.
    unsafe { core::ptr::read_volatile(&raw const (*slot).owner) }
}

/// Swaps `slot`'s owner word from `current` to `new` if it still is
/// `current` (`BPF_CMPXCHG`, a locked compare-and-swap on x86).
#[inline(always)]
fn swap_owner(slot: *mut PortOwner, current: u64, new: u64) -> bool {
    // The BPF target declares no compare-and-swap (the oldest BPF CPUs had
    // none), so `AtomicU64::compare_exchange` does not exist there; the
    // kernels this runs on (5.12+) all verify `BPF_CMPXCHG`.
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering, atomic_cxchg};
        // SAFETY: as in `read_owner`.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*slot).owner,
                current,
                new,
            )
            .1
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: as in `read_owner`.
        unsafe { AtomicU64::from_ptr(&raw mut (*slot).owner) }
            .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// Adds `delta` (wrapping: -1 is `u32::MAX`) to `slot`'s count of
/// remapped mappings (`PortOwner::remapped`), atomically: many CPUs'
/// mappings and the sweep share one port's count.
#[inline(always)]
fn add_remapped(slot: *mut PortOwner, delta: u32) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering, atomic_xadd};
        // SAFETY: as in `read_owner`; `remapped` is 4-byte aligned.
        unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*slot).remapped, delta);
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU32, Ordering};
        // SAFETY: as in `read_owner`.
        unsafe { AtomicU32::from_ptr(&raw mut (*slot).remapped) }
            .fetch_add(delta, Ordering::SeqCst);
    }
}

/// Counts a remapped mapping of an endpoint on `own_port` (a `BINDINGS`
/// entry), before its entry is inserted.
#[inline(always)]
pub fn count_remapped(proto: u8, own_port: u16) {
    if let Some(slot) = slot(proto, own_port) {
        add_remapped(slot, 1);
    }
}

/// Takes back one [`count_remapped`], after its entry was removed or its
/// insert failed.
#[inline(always)]
pub fn uncount_remapped(proto: u8, own_port: u16) {
    if let Some(slot) = slot(proto, own_port) {
        add_remapped(slot, u32::MAX);
    }
}

/// Whether an endpoint on `own_port` may have a remapped mapping: `false`
/// spares its flow a `BINDINGS` lookup that could only miss.
#[inline(always)]
pub fn may_be_remapped(proto: u8, own_port: u16) -> bool {
    // SAFETY: as in `read_owner`; a count read while it changes is the
    // old or the new one, either of which the caller's lookup agrees with
    // (an insert counts first, a removal uncounts after).
    slot(proto, own_port)
        .is_some_and(|slot| unsafe { core::ptr::read_volatile(&raw const (*slot).remapped) } != 0)
}

/// The internal endpoint holding `port`, `None` when it is free (or the
/// protocol has no mappings).
#[inline(always)]
pub fn owner(proto: u8, port: u16) -> Option<Endpoint> {
    let word = read_owner(slot(proto, port)?);
    let (addr, port) = PortOwner::endpoint_of(word)?;
    Some(Endpoint { addr, port })
}

/// Claims `port` for the mapping whose outbound half `outbound` keys (its
/// internal endpoint and the remote it is for): `false` when another
/// mapping holds it.
#[inline(always)]
pub fn claim(port: u16, outbound: &BindingKey, now: u64) -> bool {
    let Some(slot) = slot(outbound.proto, port) else {
        return false;
    };
    if !swap_owner(slot, 0, PortOwner::owner_word(outbound.addr, outbound.port)) {
        return false;
    }
    // SAFETY: as in `read_owner`; the slot is ours until released, and
    // the sweep reads these fields only once `seen_ns` is set.
    unsafe {
        (*slot).remote_addr = outbound.remote_addr;
        (*slot).remote_port = outbound.remote_port;
        (*slot)._pad = [0; 2];
        (*slot).seen_ns = now;
    }
    true
}

/// Gives back a port `claim` just took, whose outbound half went to
/// another CPU's mapping. The slot is looked up again rather than kept:
/// a pointer live across the insert in between would cost `nat_lan` a
/// stack slot it does not have.
#[inline(always)]
pub fn unclaim(proto: u8, port: u16) {
    let Some(slot) = slot(proto, port) else {
        return;
    };
    // SAFETY: as in `read_owner`. The slot is ours (nobody else frees a
    // claim this fresh), so plain stores do; `seen_ns` first, as in
    // `release_slot`.
    unsafe {
        core::ptr::write_volatile(&raw mut (*slot).seen_ns, 0);
        core::ptr::write_volatile(&raw mut (*slot).owner, 0);
    }
}

/// The stamp of `key`'s mapping if it kept its endpoint's own port (and
/// so is all in its port's slot: `PortOwner::own_port_mapping_of`, asked
/// of the live slot with the owner word read once), for the packet to
/// refresh.
#[inline(always)]
pub fn own_port_mapping(key: &BindingKey) -> Option<*mut u64> {
    let slot = slot(key.proto, key.port)?;
    if read_owner(slot) != PortOwner::owner_word(key.addr, key.port) {
        return None;
    }
    // SAFETY: as in `read_owner`.
    unsafe {
        ((*slot).remote_addr == key.remote_addr && (*slot).remote_port == key.remote_port)
            .then_some(&raw mut (*slot).seen_ns)
    }
}

/// The whole slot of `proto`/`port`, copied: for the sweep, which also
/// reads the remote and the claim's age.
#[inline(always)]
pub fn owner_of(proto: u8, port: u16) -> Option<PortOwner> {
    let slot = slot(proto, port)?;
    // SAFETY: as in `read_owner`.
    Some(unsafe { *slot })
}

/// Frees `slot` if `word` still holds it. Besides a claim's own
/// `release`, only the sweep calls this, on a claim it judged idle: a fresh
/// claim is never idle, so the word does not change under it.
#[inline(always)]
pub fn release_slot(slot: *mut PortOwner, word: u64) -> bool {
    // SAFETY: as in `read_owner`.
    unsafe { (*slot).seen_ns = 0 };
    swap_owner(slot, word, 0)
}
