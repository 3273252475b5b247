//! Table lookups: configuration, static forwards, dynamic bindings (created
//! here on the first outbound packet) and the sessions that filtering and
//! aging need.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns};
use nat_common::{
    Binding, Counter, EndpointKey, FILTER_ADDRESS_DEPENDENT, FILTER_ENDPOINT_INDEPENDENT, Forward,
    NatConfig, PROTO_ICMP, PROTO_TCP, Session, SessionKey, TCP_STATE_CLOSED, TCP_STATE_CLOSING,
    TCP_STATE_ESTABLISHED, TCP_STATE_NONE, TCP_STATE_OPENING,
};

use crate::{
    counters::count,
    maps::{BINDINGS, CONFIG, FORWARDS, SESSIONS},
    translate::Endpoint,
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// How many external ports a new mapping tries before giving up. Bounded so
/// that a nearly full range costs a fixed worst case per packet.
const PORT_PROBES: u32 = 16;

/// Last-seen times are rewritten at most this often: aging works in seconds,
/// and not dirtying the entry on every packet keeps its cache line shared.
const TOUCH_GRANULARITY_NS: u64 = 250_000_000;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    CONFIG.get(0).filter(|config| config.wan_addr != [0; 4])
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn in_prefix(addr: [u8; 4], net: [u8; 4], prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix_len.min(32)));
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(net) & mask
}

#[inline(always)]
pub fn forward_inbound(proto: u8, external_port: u16) -> Option<Forward> {
    // SAFETY: only the controller writes FORWARDS; a concurrent update can at
    // worst hand this packet the old or the new rule.
    unsafe {
        FORWARDS
            .get(EndpointKey::inbound(proto, external_port))
            .copied()
    }
}

/// The external port of a static rule whose internal server is `internal`.
#[inline(always)]
pub fn forward_outbound(proto: u8, internal: Endpoint) -> Option<u16> {
    let key = EndpointKey::outbound(proto, internal.addr, internal.port);
    // SAFETY: as for `forward_inbound`.
    unsafe { FORWARDS.get(key).map(|forward| forward.port) }
}

#[inline(always)]
fn touch(binding: *mut Binding, now: u64) {
    // SAFETY: a pointer returned by a map lookup; a torn last-seen time is
    // harmless (aging re-reads it).
    unsafe {
        if now.wrapping_sub((*binding).last_seen_ns) > TOUCH_GRANULARITY_NS {
            (*binding).last_seen_ns = now;
        }
    }
}

/// The internal endpoint behind a dynamic mapping's external port.
#[inline(always)]
pub fn binding_inbound(proto: u8, external_port: u16, now: u64) -> Option<Endpoint> {
    let binding = BINDINGS.get_ptr_mut(EndpointKey::inbound(proto, external_port))?;
    touch(binding, now);
    // SAFETY: a pointer returned by a map lookup.
    let (addr, port) = unsafe { ((*binding).addr, (*binding).port) };
    Some(Endpoint { addr, port })
}

/// The external port of `internal`'s existing dynamic mapping.
#[inline(always)]
pub fn binding_outbound(proto: u8, internal: Endpoint, now: u64) -> Option<u16> {
    let key = EndpointKey::outbound(proto, internal.addr, internal.port);
    let binding = BINDINGS.get_ptr_mut(key)?;
    touch(binding, now);
    // SAFETY: a pointer returned by a map lookup.
    Some(unsafe { (*binding).port })
}

/// The external port of `internal`, from a static rule, an existing mapping,
/// or a new endpoint-independent mapping.
#[inline(always)]
pub fn external_port_for(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    now: u64,
    frame_len: usize,
) -> Result<(u16, bool), Counter> {
    if let Some(port) = forward_outbound(proto, internal) {
        return Ok((port, true));
    }
    if let Some(port) = binding_outbound(proto, internal, now) {
        return Ok((port, false));
    }
    let port = create_binding(config, proto, internal, now)?;
    count(Counter::NewBinding, frame_len);
    Ok((port, false))
}

/// Claims an external port for `internal`: its own port when that is in the
/// dynamic range and free, else a bounded number of pseudo-random probes.
/// Claims are atomic (`BPF_NOEXIST`) and skip ports held by static rules.
#[inline(always)]
fn create_binding(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    now: u64,
) -> Result<u16, Counter> {
    let port_min = u32::from(config.port_min);
    let span = u32::from(config.port_max).saturating_sub(port_min) + 1;
    let own_port = u32::from(internal.port);
    let keep_own = own_port >= port_min && own_port - port_min < span;
    let inbound_value = Binding {
        addr: internal.addr,
        port: internal.port,
        _pad: [0; 2],
        last_seen_ns: now,
    };
    for probe in 0..PORT_PROBES {
        let candidate = if probe == 0 && keep_own {
            own_port
        } else {
            // SAFETY: a helper without arguments.
            port_min + unsafe { bpf_get_prandom_u32() } % span
        };
        let port = candidate as u16;
        let inbound = EndpointKey::inbound(proto, port);
        if forward_inbound(proto, port).is_some() {
            continue;
        }
        match BINDINGS.insert(inbound, inbound_value, BPF_NOEXIST) {
            Ok(()) => {}
            Err(err) if err == -EEXIST => continue,
            Err(_) => return Err(Counter::DropTableFull),
        }
        let outbound = EndpointKey::outbound(proto, internal.addr, internal.port);
        let outbound_value = Binding {
            addr: config.wan_addr,
            port,
            _pad: [0; 2],
            last_seen_ns: now,
        };
        if BINDINGS
            .insert(outbound, outbound_value, BPF_NOEXIST)
            .is_ok()
        {
            return Ok(port);
        }
        // Another CPU mapped the same endpoint first: give our port back
        // and use theirs, so the mapping stays endpoint-independent.
        let _ = BINDINGS.remove(inbound);
        return binding_outbound(proto, internal, now).ok_or(Counter::DropTableFull);
    }
    Err(Counter::DropPortExhausted)
}

/// One external endpoint talking to one remote endpoint, as a packet of
/// that conversation shows it.
#[derive(Clone, Copy)]
pub struct Conversation {
    pub proto: u8,
    pub external_port: u16,
    pub remote: Endpoint,
    pub tcp_flags: u8,
}

#[inline(always)]
fn session_key(config: &NatConfig, conversation: &Conversation) -> SessionKey {
    let proto = conversation.proto;
    let remote_port = if proto == PROTO_ICMP || config.filtering == FILTER_ADDRESS_DEPENDENT {
        0
    } else {
        conversation.remote.port
    };
    SessionKey {
        remote_addr: conversation.remote.addr,
        remote_port,
        external_port: conversation.external_port,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn next_tcp_state(state: u8, flags: u8, outbound: bool) -> u8 {
    if flags & TCP_RST != 0 {
        TCP_STATE_CLOSED
    } else if flags & TCP_FIN != 0 {
        TCP_STATE_CLOSING
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        if outbound { TCP_STATE_OPENING } else { state }
    } else if state == TCP_STATE_OPENING && !outbound {
        TCP_STATE_ESTABLISHED
    } else if state == TCP_STATE_NONE {
        // Picked up mid-stream (e.g. the table was flushed).
        TCP_STATE_ESTABLISHED
    } else {
        state
    }
}

#[inline(always)]
fn touch_session(session: *mut Session, conversation: &Conversation, outbound: bool, now: u64) {
    // SAFETY: a pointer returned by a map lookup.
    unsafe {
        if conversation.proto == PROTO_TCP {
            let state = next_tcp_state((*session).tcp_state, conversation.tcp_flags, outbound);
            if state != (*session).tcp_state {
                (*session).tcp_state = state;
                (*session).last_seen_ns = now;
                return;
            }
        }
        if now.wrapping_sub((*session).last_seen_ns) > TOUCH_GRANULARITY_NS {
            (*session).last_seen_ns = now;
        }
    }
}

/// Records that `internal` (seen outside as `external_port`) talked to
/// `remote`, which is what lets the remote's replies through the filter.
#[inline(always)]
pub fn session_outbound(
    config: &NatConfig,
    conversation: &Conversation,
    internal: Endpoint,
    now: u64,
    frame_len: usize,
) {
    let key = session_key(config, conversation);
    if let Some(session) = SESSIONS.get_ptr_mut(key) {
        touch_session(session, conversation, true, now);
        return;
    }
    let tcp_state = if conversation.proto == PROTO_TCP {
        next_tcp_state(TCP_STATE_NONE, conversation.tcp_flags, true)
    } else {
        TCP_STATE_NONE
    };
    let session = Session {
        last_seen_ns: now,
        internal_addr: internal.addr,
        internal_port: internal.port,
        tcp_state,
        _pad: 0,
    };
    // Racing CPUs may both insert; either value is right.
    if SESSIONS.insert(key, session, 0).is_err() {
        count(Counter::SessionTableFull, frame_len);
    }
}

/// Whether the configured filtering lets the conversation's remote in.
#[inline(always)]
pub fn session_inbound_allowed(config: &NatConfig, conversation: &Conversation, now: u64) -> bool {
    let key = session_key(config, conversation);
    match SESSIONS.get_ptr_mut(key) {
        Some(session) => {
            touch_session(session, conversation, false, now);
            true
        }
        None => config.filtering == FILTER_ENDPOINT_INDEPENDENT,
    }
}
