//! The aging sweep, in the kernel. User space runs `nat_sweep` through
//! BPF_PROG_TEST_RUN: walking the tables here costs tens of nanoseconds an
//! entry where a user-space walk pays a syscall or two per expired entry,
//! and each entry is judged as it is at that instant, so a flow that just
//! sent a packet is never removed on a stale reading.
use core::ffi::c_void;

use aya_ebpf::helpers::bpf_for_each_map_elem;
use nat_common::{
    Binding, BindingKey, Counter, FragEntry, FragKey, PortOwner, SLOT_LIVE_SPILLED, Session,
    SessionKey, SessionSlot, SessionTableKind, SweepParams, SweepStats, idle_past, port_slot,
    slot_is_live, slot_port,
};

use crate::{
    counters::count,
    lookup::now_ns,
    maps::{
        BINDINGS, CONFIG, FORWARD_SESSIONS, FRAGS, LIVE_PORTS, PORT_OWNERS, SESSIONS, SWEEP_PARAMS,
        SWEEP_STATS,
    },
    ports,
    session_table::{self, Dynamic, Forwarded, SlotTable, TableShape},
};

/// Passed to every callback of one sweep.
struct Sweep {
    now: u64,
    params: SweepParams,
    /// `SWEEP_STATS`' value, counted into in place: the verifier tracks no
    /// value in a map, where counters on this stack, known to be 0 at the
    /// start, would be known numbers at each visit, and it would walk the
    /// callbacks again for each count rather than once for any.
    stats: *mut SweepStats,
    sessions: TableShape,
    forward_sessions: TableShape,
}

impl Sweep {
    #[inline(always)]
    fn stats(&mut self) -> &mut SweepStats {
        // SAFETY: a pointer returned by a map lookup; one sweep runs at a
        // time (the daemon's, or a test's).
        unsafe { &mut *self.stats }
    }

    #[inline(always)]
    fn expired(&self, key: &SessionKey, session: &Session) -> bool {
        session_expired(&self.params, self.now, key, session)
    }
}

#[inline(always)]
fn mark_live(sweep: &Sweep, proto: u8, port: u16) {
    if let Some(slot) = port_slot(proto, port)
        && let Some(mark) = LIVE_PORTS.get_ptr_mut(slot)
    {
        // SAFETY: a pointer returned by a map lookup; only the sweep
        // writes LIVE_PORTS.
        unsafe { *mark = sweep.params.generation };
    }
}

#[inline(always)]
fn is_live(sweep: &Sweep, proto: u8, port: u16) -> bool {
    port_slot(proto, port)
        .and_then(|slot| LIVE_PORTS.get(slot))
        .is_some_and(|mark| *mark == sweep.params.generation)
}

extern "C" fn visit_session(
    _map: *mut c_void,
    index: *const u32,
    slot: *mut SessionSlot,
    sweep: *mut Sweep,
) -> i64 {
    // SAFETY: the kernel passes this map's index and value and our
    // context.
    let (sweep, index) = unsafe { (&mut *sweep, *index) };
    match expire::<Dynamic>(sweep.sessions, index, slot, sweep) {
        Some(Expiry::Removed) => sweep.stats().sessions_removed += 1,
        Some(Expiry::Kept { key, moved_home }) => {
            sweep.stats().sessions_moved_home += u64::from(moved_home);
            mark_live(sweep, key.proto, key.external_port);
        }
        None => {}
    }
    0
}

extern "C" fn visit_forward_session(
    _map: *mut c_void,
    index: *const u32,
    slot: *mut SessionSlot,
    sweep: *mut Sweep,
) -> i64 {
    // SAFETY: as in `visit_session`.
    let (sweep, index) = unsafe { (&mut *sweep, *index) };
    match expire::<Forwarded>(sweep.forward_sessions, index, slot, sweep) {
        Some(Expiry::Removed) => sweep.stats().forward_sessions_removed += 1,
        Some(Expiry::Kept { moved_home, .. }) => {
            sweep.stats().forward_sessions_moved_home += u64::from(moved_home);
        }
        None => {}
    }
    0
}

/// What the sweep did with a live slot.
enum Expiry {
    Removed,
    /// Still live; `moved_home` when it was brought back from its second
    /// window (`session_table::bring_home`).
    Kept {
        key: SessionKey,
        moved_home: bool,
    },
}

/// Frees a slot of table `T` (of `shape`) if its session is idle past its
/// timeout; `None` for a slot with no session.
#[inline(always)]
fn expire<T: SlotTable>(
    shape: TableShape,
    index: u32,
    slot: *mut SessionSlot,
    sweep: &mut Sweep,
) -> Option<Expiry> {
    // SAFETY: a value the kernel's walk handed over; the state is read
    // before the rest, which its writer published after them.
    let state = unsafe { core::ptr::read_volatile(&raw const (*slot).state) };
    if !slot_is_live(state) {
        return None;
    }
    sweep.stats().scanned += 1;
    // SAFETY: as above.
    let (key, session) = unsafe { ((*slot).key, (*slot).session) };
    if !sweep.expired(&key, &session) {
        let (seed, mask, now) = (shape.seed, shape.mask, sweep.now);
        let moved_home = state == SLOT_LIVE_SPILLED
            && match T::KIND {
                SessionTableKind::Dynamic => nat_bring_session_home(index, seed, mask, now),
                SessionTableKind::Forwarded => {
                    nat_bring_forward_session_home(index, seed, mask, now)
                }
            } != 0;
        return Some(Expiry::Kept { key, moved_home });
    }
    if !session_table::take(slot, state) {
        // Removed or refreshed meanwhile: left to the next sweep.
        return Some(Expiry::Kept {
            key,
            moved_home: false,
        });
    }
    // Owned now: judged again, in case the slot was freed and filled with
    // another session between the look and the take.
    // SAFETY: as above.
    let (key, session) = unsafe { ((*slot).key, (*slot).session) };
    if !sweep.expired(&key, &session) {
        session_table::put_back(slot, state);
        return Some(Expiry::Kept {
            key,
            moved_home: false,
        });
    }
    session_table::free::<T>(&shape, slot, state);
    Some(Expiry::Removed)
}

/// Whether `key`'s `session` is idle past its timeout at `now`.
#[inline(always)]
fn session_expired(params: &SweepParams, now: u64, key: &SessionKey, session: &Session) -> bool {
    idle_past(
        session.last_seen_ns,
        now,
        params.session_timeout_ns(key.proto, session.tcp_state),
    )
}

/// Brings the live spilled session in slot `index` of `SESSIONS` home
/// (`session_table::bring_home`), judged at `now` by this sweep's
/// `SWEEP_PARAMS`: 1 if it moved. A home's occupant that is idle past its
/// timeout is left where it is for the walk to free, rather than shelved
/// in a slot the walk may have passed; this session then comes home once
/// the walk has freed it, in this sweep or the next. A global function, so
/// that the verifier checks it once, on its own with any arguments, where
/// inlined it was walked again in every state the callback reached it in,
/// past the verifier's budget. It reads the slot again: the caller's look
/// only spares the call for the slots that are not spilled.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_bring_session_home(index: u32, seed: u32, mask: u32, now: u64) -> u32 {
    bring_home_at::<Dynamic>(index, &TableShape { seed, mask }, now)
}

/// The same for `FORWARD_SESSIONS`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_bring_forward_session_home(
    index: u32,
    seed: u32,
    mask: u32,
    now: u64,
) -> u32 {
    bring_home_at::<Forwarded>(index, &TableShape { seed, mask }, now)
}

#[inline(always)]
fn bring_home_at<T: SlotTable>(index: u32, shape: &TableShape, now: u64) -> u32 {
    let (Some(params), Some(slot)) = (SWEEP_PARAMS.get(0), session_table::slot_at::<T>(index))
    else {
        return 0;
    };
    // SAFETY: a pointer returned by a map lookup; `bring_home` takes the
    // slot before it trusts what it read.
    let (state, key) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*slot).state),
            (*slot).key,
        )
    };
    let expired = |key: &SessionKey, session: &Session| session_expired(params, now, key, session);
    u32::from(
        state == SLOT_LIVE_SPILLED && session_table::bring_home::<T>(shape, slot, &key, &expired),
    )
}

/// A mapping is an inbound half (its external port's `PORT_OWNERS` slot:
/// port -> internal endpoint) and an outbound half (the `BINDINGS` entry:
/// internal endpoint -> port), implied by the slot when the port is the
/// endpoint's own. The inbound half decides for both, as old as its claim
/// (or, for an own-port mapping, its last outbound packet); an outbound
/// half is only looked at on its own when its partner is gone (an orphan,
/// e.g. a daemon's stray write).
extern "C" fn visit_port_owner(
    _map: *mut c_void,
    slot: *const u32,
    value: *mut PortOwner,
    sweep: *mut Sweep,
) -> i64 {
    // SAFETY: as in `visit_session`.
    let (slot, owner, sweep) = unsafe { (*slot, *value, &mut *sweep) };
    let Some((proto, port)) = slot_port(slot) else {
        return 0;
    };
    // A free port, or one whose claimant has not stamped it yet.
    let Some(outbound) = owner.outbound_partner(proto) else {
        return 0;
    };
    sweep.stats().scanned += 1;
    if owner.seen_ns == 0 {
        return 0;
    }
    let timeout = sweep.params.binding_timeout_ns(proto);
    if !idle_past(owner.seen_ns, sweep.now, timeout) || is_live(sweep, proto, port) {
        return 0;
    }
    // A mapping on its endpoint's own port has no outbound half: its
    // stamp, just judged, is its last outbound packet's.
    // SAFETY: a map lookup, copied out at once.
    if outbound.port != port
        && let Some(partner) = unsafe { BINDINGS.get(outbound) }.copied()
        && partner.port == port
    {
        if !idle_past(partner.last_seen_ns, sweep.now, timeout) {
            return 0;
        }
        // The outbound half first: a new packet of the flow then makes a
        // fresh mapping rather than using a half-removed one.
        remove_binding(sweep, &outbound);
    }
    if ports::release_slot(value, owner.owner) {
        // Two halves, as every mapping counts, the outbound one implied
        // when the mapping kept its endpoint's port.
        sweep.stats().bindings_removed += if outbound.port == port { 2 } else { 1 };
    }
    0
}

/// Removes an outbound half, and then its count on its endpoint's own
/// port (`ports::count_remapped`).
#[inline(always)]
fn remove_binding(sweep: &mut Sweep, key: &BindingKey) {
    if BINDINGS.remove(key).is_ok() {
        ports::uncount_remapped(key.proto, key.port);
        sweep.stats().bindings_removed += 1;
    }
}

/// An idle outbound half whose port another endpoint holds, or nobody:
/// left behind, so removed.
extern "C" fn visit_binding(
    _map: *mut c_void,
    key: *const BindingKey,
    value: *mut Binding,
    sweep: *mut Sweep,
) -> i64 {
    // SAFETY: as in `visit_session`.
    let (key, binding, sweep) = unsafe { (*key, *value, &mut *sweep) };
    sweep.stats().scanned += 1;
    let timeout = sweep.params.binding_timeout_ns(key.proto);
    if !idle_past(binding.last_seen_ns, sweep.now, timeout) {
        return 0;
    }
    let paired = ports::owner_of(key.proto, binding.port)
        .and_then(|owner| owner.outbound_partner(key.proto))
        .is_some_and(|partner| partner == key);
    if !paired {
        remove_binding(sweep, &key);
    }
    0
}

/// Fragment records outlive their datagram by a few seconds at most; an
/// expired one is counted as `frag_expired`.
extern "C" fn visit_frag(
    _map: *mut c_void,
    key: *const FragKey,
    value: *mut FragEntry,
    sweep: *mut Sweep,
) -> i64 {
    // SAFETY: as in `visit_session`.
    let (key, entry, sweep) = unsafe { (*key, *value, &mut *sweep) };
    sweep.stats().scanned += 1;
    if crate::frag::expire(&key, &entry, sweep.now) {
        count(Counter::FragExpired, 0);
    }
    0
}

#[inline(always)]
fn for_each<K, V>(
    map: *const c_void,
    callback: extern "C" fn(*mut c_void, *const K, *mut V, *mut Sweep) -> i64,
    sweep: &mut Sweep,
) {
    // SAFETY: `map` is one of our map definitions (the loader turns its
    // address into the map), `callback` matches the helper's callback
    // signature for that map, and `sweep` lives on this stack frame for
    // the whole call.
    unsafe {
        bpf_for_each_map_elem(
            map as *mut c_void,
            callback as *mut c_void,
            sweep as *mut Sweep as *mut c_void,
            0,
        );
    }
}

pub fn try_nat_sweep() -> u32 {
    let Some(params) = SWEEP_PARAMS.get(0).copied() else {
        return 1;
    };
    if params.generation == 0 {
        return 1;
    }
    // Read whether or not the WAN NIC has an address: sessions age either
    // way. Set when the table was made.
    let Some((sessions, forward_sessions)) = CONFIG
        .get(0)
        .map(|config| (Dynamic::shape(config), Forwarded::shape(config)))
    else {
        return 1;
    };
    let Some(stats) = SWEEP_STATS.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `Sweep::stats`.
    unsafe { *stats = SweepStats::default() };
    let mut sweep = Sweep {
        now: if params.now_ns != 0 {
            params.now_ns
        } else {
            now_ns()
        },
        params,
        stats,
        sessions,
        forward_sessions,
    };
    // Sessions first: they mark the ports whose mappings must stay.
    for_each(
        &SESSIONS as *const _ as *const c_void,
        visit_session,
        &mut sweep,
    );
    for_each(
        &FORWARD_SESSIONS as *const _ as *const c_void,
        visit_forward_session,
        &mut sweep,
    );
    // Then the mappings, inbound halves first: an outbound half is
    // judged an orphan only against what they left.
    for_each(
        &PORT_OWNERS as *const _ as *const c_void,
        visit_port_owner,
        &mut sweep,
    );
    for_each(
        &BINDINGS as *const _ as *const c_void,
        visit_binding,
        &mut sweep,
    );
    for_each(&FRAGS as *const _ as *const c_void, visit_frag, &mut sweep);
    0
}
