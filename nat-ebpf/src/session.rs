//! Sessions: one external port talking to one remote endpoint. Dynamic
//! sessions let replies through the filter and carry the TCP state that
//! aging needs; forward sessions record conversations through static rules
//! for the table and the connection log. Both count packets and bytes.
use nat_common::{
    ConnectionEvent, Counter, FILTER_ADDRESS_DEPENDENT, FILTER_ENDPOINT_INDEPENDENT, Forward,
    NatConfig, PROTO_ICMP, PROTO_TCP, Session, SessionKey, TCP_STATE_CLOSED, TCP_STATE_CLOSING,
    TCP_STATE_ESTABLISHED, TCP_STATE_HALF_CLOSED_BY_ANSWERER, TCP_STATE_HALF_CLOSED_BY_OPENER,
    TCP_STATE_NONE, TCP_STATE_OPENING,
};

use crate::{
    counters::count,
    maps::NEW_CONNECTIONS,
    parse::{Endpoint, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    session_table::{self, Dynamic, Forwarded, Placed},
};

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
pub fn session_key(config: &NatConfig, conversation: &Conversation) -> SessionKey {
    let proto = conversation.proto;
    let remote_port = if proto == PROTO_ICMP || config.filtering == FILTER_ADDRESS_DEPENDENT {
        0
    } else {
        conversation.remote.port
    };
    key_of(
        conversation.remote.addr,
        remote_port,
        conversation.external_port,
        proto,
    )
}

/// A session key built from three words: a literal `_pad: [0; 3]` becomes
/// a call to the BPF target's byte-at-a-time `memset` on every packet.
#[inline(always)]
pub fn key_of(remote_addr: [u8; 4], remote_port: u16, external_port: u16, proto: u8) -> SessionKey {
    let [rp0, rp1] = remote_port.to_ne_bytes();
    let [ep0, ep1] = external_port.to_ne_bytes();
    let words = [
        u32::from_ne_bytes(remote_addr),
        u32::from_ne_bytes([rp0, rp1, ep0, ep1]),
        u32::from_ne_bytes([proto, 0, 0, 0]),
    ];
    // SAFETY: SessionKey is repr(C), 12 bytes of plain integers laid out
    // as the words above (address, the two ports, the protocol, padding);
    // the transmute fails to compile if its size changes.
    unsafe { core::mem::transmute::<[u32; 3], SessionKey>(words) }
}

// The layout `key_of` writes: a change to SessionKey must change it too.
const _: () = {
    assert!(core::mem::offset_of!(SessionKey, remote_port) == 4);
    assert!(core::mem::offset_of!(SessionKey, external_port) == 6);
    assert!(core::mem::offset_of!(SessionKey, proto) == 8);
};

/// `from_opener`: the packet comes from the side expected to open
/// connections (the LAN host on a dynamic mapping, the remote on a forward).
#[inline(always)]
fn next_tcp_state(state: u8, flags: u8, from_opener: bool) -> u8 {
    if flags & TCP_RST != 0 {
        TCP_STATE_CLOSED
    } else if flags & TCP_FIN != 0 {
        // One FIN half-closes the connection, the other side's closes it.
        match (state, from_opener) {
            (TCP_STATE_HALF_CLOSED_BY_OPENER, false)
            | (TCP_STATE_HALF_CLOSED_BY_ANSWERER, true)
            | (TCP_STATE_CLOSING, _) => TCP_STATE_CLOSING,
            (TCP_STATE_HALF_CLOSED_BY_OPENER | TCP_STATE_HALF_CLOSED_BY_ANSWERER, _) => state,
            (_, true) => TCP_STATE_HALF_CLOSED_BY_OPENER,
            (_, false) => TCP_STATE_HALF_CLOSED_BY_ANSWERER,
        }
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A SYN opens a connection on a fresh or finished conversation; on
        // a live one it is a stray duplicate that must not shorten its
        // timeout.
        if from_opener && state != TCP_STATE_ESTABLISHED {
            TCP_STATE_OPENING
        } else {
            state
        }
    } else if state == TCP_STATE_OPENING && !from_opener {
        TCP_STATE_ESTABLISHED
    } else if state == TCP_STATE_NONE || state == TCP_STATE_CLOSED {
        // Picked up mid-stream (e.g. the table was flushed), or data after
        // an RST (a spoofed or lost one, RFC 7857): the connection lives.
        TCP_STATE_ESTABLISHED
    } else {
        state
    }
}

#[inline(always)]
fn touch_session(
    session: *mut Session,
    conversation: &Conversation,
    from_opener: bool,
    now: u64,
    frame_len: usize,
) {
    // Plain adds, not `lock xadd`: with many flows the session's line is
    // often not in the cache, and a locked add waits for it with every
    // memory access after it held back, where a plain one lets the rest of
    // the packet go on meanwhile. Two CPUs counting one session at the
    // same instant (its two directions on two RX queues) may lose one of
    // their increments: the counts are statistics, which nothing decides
    // by.
    // SAFETY: a pointer returned by a map lookup.
    unsafe {
        (*session).packets += 1;
        (*session).bytes += frame_len as u64;
        if conversation.proto == PROTO_TCP {
            let state = next_tcp_state((*session).tcp_state, conversation.tcp_flags, from_opener);
            if state != (*session).tcp_state {
                (*session).tcp_state = state;
                (*session).last_seen_ns = now;
                return;
            }
        }
        if now.wrapping_sub((*session).last_seen_ns) > nat_common::TOUCH_GRANULARITY_NS {
            (*session).last_seen_ns = now;
        }
    }
}

/// Whether the conversation has a session, as `internal`'s: then this
/// packet from it refreshed it. Under endpoint-independent mapping that
/// session proves `internal`'s mapping is on the conversation's external
/// port (a session is made with its mapping's endpoint and never outlives
/// it), without looking the mapping up (`lookup::established_outbound`).
#[inline(always)]
pub fn session_outbound_existing(
    config: &NatConfig,
    conversation: &Conversation,
    internal: Endpoint,
    now: u64,
    frame_len: usize,
) -> bool {
    let key = session_key(config, conversation);
    let Some(session) = session_table::find::<Dynamic>(config, &key) else {
        return false;
    };
    // SAFETY: a pointer returned by a map lookup.
    let ours = unsafe {
        (*session).internal_addr == internal.addr && (*session).internal_port == internal.port
    };
    if ours {
        touch_session(session, conversation, true, now, frame_len);
    }
    ours
}

/// Records that `internal` (seen outside as `external_port`) talked to
/// `remote`, which is what lets the remote's replies through the filter.
/// `new_mapping`: the external port was claimed by this packet, so no
/// session can be on it yet (none outlives its mapping) and none is looked
/// up.
#[inline(always)]
pub fn session_outbound(
    config: &NatConfig,
    conversation: &Conversation,
    internal: Endpoint,
    new_mapping: bool,
    now: u64,
    frame_len: usize,
) {
    let key = session_key(config, conversation);
    if !new_mapping && let Some(session) = session_table::find::<Dynamic>(config, &key) {
        touch_session(session, conversation, true, now, frame_len);
        return;
    }
    let tcp_state = if conversation.proto == PROTO_TCP {
        next_tcp_state(TCP_STATE_NONE, conversation.tcp_flags, true)
    } else {
        TCP_STATE_NONE
    };
    let session = new_session(internal, tcp_state, now, frame_len);
    // Racing CPUs may both insert; either value is right.
    if !session_table::insert::<Dynamic>(config, &key, &session) {
        count(Counter::SessionTableFull, frame_len);
    }
}

#[inline(always)]
pub fn new_session(internal: Endpoint, tcp_state: u8, now: u64, frame_len: usize) -> Session {
    Session {
        last_seen_ns: now,
        packets: 1,
        bytes: frame_len as u64,
        internal_addr: internal.addr,
        internal_port: internal.port,
        tcp_state,
        _pad: 0,
    }
}

/// The internal endpoint of the conversation's session, refreshed by
/// this packet from its remote; `None` without a session. A session is
/// made with its mapping's internal endpoint and never outlives its
/// mapping (the sweep keeps a mapping while a session on its port lives),
/// so a reply finds its LAN endpoint here without looking the mapping up.
#[inline(always)]
pub fn session_inbound(
    config: &NatConfig,
    conversation: &Conversation,
    now: u64,
    frame_len: usize,
) -> Option<Endpoint> {
    let key = session_key(config, conversation);
    let session = session_table::find::<Dynamic>(config, &key)?;
    touch_session(session, conversation, false, now, frame_len);
    // SAFETY: a pointer returned by a map lookup.
    unsafe {
        Some(Endpoint {
            addr: (*session).internal_addr,
            port: (*session).internal_port,
        })
    }
}

/// Whether the configured filtering lets the conversation's remote in.
#[inline(always)]
pub fn session_inbound_allowed(
    config: &NatConfig,
    conversation: &Conversation,
    now: u64,
    frame_len: usize,
) -> bool {
    session_inbound(config, conversation, now, frame_len).is_some()
        || config.filtering == FILTER_ENDPOINT_INDEPENDENT
}

#[inline(always)]
fn forward_session_key(conversation: &Conversation) -> SessionKey {
    key_of(
        conversation.remote.addr,
        conversation.remote.port,
        conversation.external_port,
        conversation.proto,
    )
}

/// A remote's packet to a forwarded port. A conversation seen for the first
/// time is reported to the controller, which logs it.
#[inline(always)]
pub fn forward_session_inbound(
    config: &NatConfig,
    conversation: &Conversation,
    server: Endpoint,
    forward: &Forward,
    now: u64,
    frame_len: usize,
    router_socket_wants: impl FnOnce() -> bool,
) -> Result<(), Counter> {
    let key = forward_session_key(conversation);
    if let Some(session) = session_table::find::<Forwarded>(config, &key) {
        // A SYN after either side's FIN (or an RST) is a new connection on
        // the same ports.
        // SAFETY: a pointer returned by a map lookup.
        let finished = unsafe {
            matches!(
                (*session).tcp_state,
                TCP_STATE_CLOSING
                    | TCP_STATE_CLOSED
                    | TCP_STATE_HALF_CLOSED_BY_OPENER
                    | TCP_STATE_HALF_CLOSED_BY_ANSWERER
            )
        };
        let reopened = conversation.proto == PROTO_TCP
            && finished
            && conversation.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        touch_session(session, conversation, true, now, frame_len);
        if reopened {
            // The remote reused its port for a new connection: log it too.
            report_connection(conversation, server, forward, frame_len);
        }
        return Ok(());
    }
    // A conversation the rule has not carried yet may be one of the
    // router's own: a service that listens on the port now (started after
    // the rule was made), or a connection the router made from it. The
    // router's socket wins, so a rule never steals the router's traffic;
    // conversations already going keep going to the server. Asked only
    // here, so a forwarded flow pays the socket lookup once, not per packet.
    if router_socket_wants() {
        return Err(Counter::ForwardYieldedToRouter);
    }
    let tcp_state = if conversation.proto == PROTO_TCP {
        next_tcp_state(TCP_STATE_NONE, conversation.tcp_flags, true)
    } else {
        TCP_STATE_NONE
    };
    let session = new_session(server, tcp_state, now, frame_len);
    // Two CPUs making it at one instant both report it (and the later
    // slot ages out unused); one that found no room does not.
    if forward_session_insert(config, &key, &session, frame_len) {
        report_connection(conversation, server, forward, frame_len);
    }
    Ok(())
}

#[inline(always)]
fn report_connection(
    conversation: &Conversation,
    server: Endpoint,
    forward: &Forward,
    frame_len: usize,
) {
    let event = ConnectionEvent {
        remote_addr: conversation.remote.addr,
        internal_addr: server.addr,
        remote_port: conversation.remote.port,
        external_port: conversation.external_port,
        internal_port: server.port,
        proto: conversation.proto,
        _pad: 0,
        rule_id: forward.rule_id,
    };
    if NEW_CONNECTIONS
        .output::<ConnectionEvent>(&event, 0)
        .is_err()
    {
        count(Counter::ConnectionEventLost, frame_len);
    }
}

/// A forwarded server's packet to a remote. The server may also be the one
/// that opens (a game server, a peer), so an unknown conversation is added,
/// but not reported: the log is about who comes in.
#[inline(always)]
pub fn forward_session_outbound(
    config: &NatConfig,
    conversation: &Conversation,
    server: Endpoint,
    now: u64,
    frame_len: usize,
) {
    let key = forward_session_key(conversation);
    if let Some(session) = session_table::find::<Forwarded>(config, &key) {
        touch_session(session, conversation, false, now, frame_len);
        return;
    }
    let tcp_state = if conversation.proto == PROTO_TCP {
        next_tcp_state(TCP_STATE_NONE, conversation.tcp_flags, true)
    } else {
        TCP_STATE_NONE
    };
    let session = new_session(server, tcp_state, now, frame_len);
    // Not at another conversation's cost, as an inbound one is: what is
    // left out is only the record of a conversation the server opened,
    // made by the remote's first answer instead; and the eviction's
    // branches in `nat_lan` would take the verifier within its headroom
    // (tests/tests/verifier.rs).
    if !session_table::insert::<Forwarded>(config, &key, &session) {
        count(Counter::SessionTableFull, frame_len);
    }
}

/// Adds a conversation a remote opened to `FORWARD_SESSIONS`, at an
/// older one's cost if the table is full there; `false` if there was no
/// room even so.
#[inline(always)]
fn forward_session_insert(
    config: &NatConfig,
    key: &SessionKey,
    session: &Session,
    frame_len: usize,
) -> bool {
    match session_table::insert_evicting::<Forwarded>(config, key, session) {
        Some(Placed::Free) => true,
        Some(Placed::Evicting) => {
            count(Counter::ForwardSessionEvicted, frame_len);
            true
        }
        None => {
            count(Counter::SessionTableFull, frame_len);
            false
        }
    }
}

/// Whether `remote` came in on forwarded `external_port` and is still in
/// conversation with its server: the server's replies must leave by that
/// port.
#[inline(always)]
pub fn forward_conversation_exists(
    config: &NatConfig,
    proto: u8,
    external_port: u16,
    remote: Endpoint,
) -> bool {
    let key = key_of(remote.addr, remote.port, external_port, proto);
    session_table::find::<Forwarded>(config, &key).is_some()
}

/// The session of another IP protocol (no ports) with `remote`: keyed with
/// both ports 0, its internal endpoint the one LAN host it belongs to.
#[inline(always)]
fn address_session_key(proto: u8, remote: [u8; 4]) -> SessionKey {
    key_of(remote, 0, 0, proto)
}

/// `host` sends `proto` to `remote`: its session, made or refreshed, unless
/// another host holds it (`drop_proto_busy`: one host per protocol and
/// remote at a time, until the sweep ages that one out).
#[inline(always)]
pub fn address_session_outbound(
    config: &NatConfig,
    proto: u8,
    host: [u8; 4],
    remote: [u8; 4],
    now: u64,
    frame_len: usize,
) -> Result<(), Counter> {
    let key = address_session_key(proto, remote);
    let conversation = Conversation {
        proto,
        external_port: 0,
        remote: Endpoint {
            addr: remote,
            port: 0,
        },
        tcp_flags: 0,
    };
    if let Some(session) = session_table::find::<Dynamic>(config, &key) {
        // SAFETY: a pointer returned by a map lookup.
        if unsafe { (*session).internal_addr } != host {
            return Err(Counter::DropProtoBusy);
        }
        touch_session(session, &conversation, true, now, frame_len);
        return Ok(());
    }
    let internal = Endpoint {
        addr: host,
        port: 0,
    };
    let session = new_session(internal, TCP_STATE_NONE, now, frame_len);
    // Two hosts racing for it at one instant may both get a slot; from
    // their next packet on, both find the earlier slot of the window, so
    // one host holds the pair and the other's packets are dropped as busy
    // while its unused slot ages out.
    if !session_table::insert::<Dynamic>(config, &key, &session) {
        return Err(Counter::DropTableFull);
    }
    count(Counter::NewBinding, frame_len);
    Ok(())
}

/// The LAN host that talks `proto` with `remote`, if one does; its
/// session is refreshed.
#[inline(always)]
pub fn address_session_inbound(
    config: &NatConfig,
    proto: u8,
    remote: [u8; 4],
    now: u64,
    frame_len: usize,
) -> Option<[u8; 4]> {
    let key = address_session_key(proto, remote);
    let session = session_table::find::<Dynamic>(config, &key)?;
    let conversation = Conversation {
        proto,
        external_port: 0,
        remote: Endpoint {
            addr: remote,
            port: 0,
        },
        tcp_flags: 0,
    };
    touch_session(session, &conversation, false, now, frame_len);
    // SAFETY: a pointer returned by a map lookup.
    Some(unsafe { (*session).internal_addr })
}

/// The LAN host that talks `proto` with `remote`, if one does, its session
/// left as it is: for an ICMP error about it, which refreshes nothing (RFC
/// 5508 REQ-6).
#[inline(always)]
pub fn address_session_host(config: &NatConfig, proto: u8, remote: [u8; 4]) -> Option<[u8; 4]> {
    let session = session_table::find::<Dynamic>(config, &address_session_key(proto, remote))?;
    // SAFETY: a pointer into a map value, read at once.
    Some(unsafe { (*session).internal_addr })
}
