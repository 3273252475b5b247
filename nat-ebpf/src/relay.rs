//! The kernel half of the reassembly slow path (`frag::hand_to_relay`),
//! in the router's netns, on whole datagrams only (after `ip_defrag`):
//!
//! - `nat_relay_lookup`, an `sk_lookup` program the kernel runs in its UDP
//!   and TCP socket lookup. A datagram addressed to the WAN address from a
//!   remote endpoint whose first fragment the datapath let in to a target
//!   (`RELAY_TARGETS`) goes to the daemon's relay (`RELAY_SOCKET`): a UDP
//!   one to its UDP socket, which reads it; a TCP one to its sink, a
//!   listener whose drop-all filter discards it silently before the
//!   router's TCP looks at it (with no socket, that TCP would answer the
//!   remote with an RST and end the LAN host's connection). Everything
//!   else takes the kernel's own lookup. A recorded external port is a
//!   mapping's or a rule's, which no router socket holds (the daemon never
//!   maps a port a router socket owns), so no socket of the router's is
//!   ever passed over.
//! - `nat_relay_filter`, the socket filter of the relay's raw TCP and ICMP
//!   sockets: of the copy of every local TCP or ICMP datagram a raw socket
//!   gets (`raw_local_deliver`, before the protocol's own handler), it
//!   keeps only those with a fresh recorded target, the ones the relay
//!   sends on.
use aya_ebpf::{
    bindings::sk_action,
    helpers::{bpf_map_lookup_elem, bpf_sk_release},
    programs::{SkBuffContext, SkLookupContext},
};
use nat_common::{
    Counter, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RELAY_SLOT_TCP_SINK, RELAY_SLOT_UDP,
    RELAY_TIMEOUT_NS, SessionKey,
};

use crate::{
    counters::count,
    lookup::{config, now_ns},
    maps::{RELAY_SOCKET, RELAY_TARGETS},
};

const AF_INET: u32 = 2;

/// Whether `key` has a target recorded within `RELAY_TIMEOUT_NS`.
#[inline(always)]
fn fresh_target(key: &SessionKey) -> bool {
    // SAFETY: a map lookup, copied out at once.
    let Some(target) = (unsafe { RELAY_TARGETS.get(key) }).copied() else {
        return false;
    };
    now_ns().saturating_sub(target.created_ns) <= RELAY_TIMEOUT_NS
}

pub fn try_relay_lookup(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the kernel's context for this program, read-only fields.
    let lookup = unsafe { &*ctx.lookup };
    let slot = match lookup.protocol {
        protocol if protocol == u32::from(PROTO_UDP) => RELAY_SLOT_UDP,
        protocol if protocol == u32::from(PROTO_TCP) => RELAY_SLOT_TCP_SINK,
        _ => return sk_action::SK_PASS,
    };
    if lookup.family != AF_INET {
        return sk_action::SK_PASS;
    }
    let Some(config) = config() else {
        return sk_action::SK_PASS;
    };
    if lookup.local_ip4.to_ne_bytes() != config.wan_addr {
        return sk_action::SK_PASS;
    }
    let key = SessionKey {
        remote_addr: lookup.remote_ip4.to_ne_bytes(),
        remote_port: u16::from_be(lookup.remote_port),
        external_port: lookup.local_port as u16,
        proto: lookup.protocol as u8,
        _pad: [0; 3],
    };
    if !fresh_target(&key) {
        return sk_action::SK_PASS;
    }
    match RELAY_SOCKET.redirect_sk_lookup(ctx, slot, 0) {
        Ok(()) => {
            count(Counter::RelaySteered, 0);
            sk_action::SK_PASS
        }
        // The port is a mapping's: the router's stack has nothing for it.
        Err(_) => {
            count(Counter::DropRelayDown, 0);
            sk_action::SK_DROP
        }
    }
}

/// Whether the daemon's relay holds its TCP sink, without which a TCP
/// datagram reassembled by the router would be answered by the router's
/// own TCP.
#[inline(always)]
pub fn sink_held() -> bool {
    let slot = RELAY_SLOT_TCP_SINK;
    // SAFETY: a lookup in a sockmap by a valid key; a socket it returns
    // holds a reference, released at once.
    unsafe {
        let sock = bpf_map_lookup_elem(
            core::ptr::from_ref(&RELAY_SOCKET).cast_mut().cast(),
            core::ptr::from_ref(&slot).cast(),
        );
        if sock.is_null() {
            return false;
        }
        bpf_sk_release(sock);
    }
    true
}

/// IPv4 header offsets.
const IP_PROTOCOL: usize = 9;
const IP_SOURCE: usize = 12;
const IP_DESTINATION: usize = 16;
/// The ICMP replies a query mapping lets in.
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_TIMESTAMP_REPLY: u8 = 14;
/// ICMP query offsets: the id, which is both "ports" of its key.
const ICMP_ID: usize = 4;

/// Bytes of the datagram to keep: all of it for a datagram with a fresh
/// relay target, none (the socket never sees it) otherwise. A raw socket's
/// data starts at the IP header.
pub fn try_relay_filter(ctx: &SkBuffContext) -> i64 {
    if relayed(ctx).unwrap_or(false) {
        i64::from(ctx.len())
    } else {
        0
    }
}

#[inline(always)]
fn relayed(ctx: &SkBuffContext) -> Result<bool, i64> {
    let first: u8 = ctx.load(0)?;
    let l4 = usize::from(first & 0x0f) * 4;
    let proto: u8 = ctx.load(IP_PROTOCOL)?;
    let remote_addr: [u8; 4] = ctx.load(IP_SOURCE)?;
    let local_addr: [u8; 4] = ctx.load(IP_DESTINATION)?;
    let Some(config) = config() else {
        return Ok(false);
    };
    if local_addr != config.wan_addr || l4 < 20 {
        return Ok(false);
    }
    let (remote_port, external_port) = match proto {
        PROTO_TCP => {
            let ports: [u8; 4] = ctx.load(l4)?;
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            )
        }
        PROTO_ICMP => {
            let kind: u8 = ctx.load(l4)?;
            if !matches!(kind, ICMP_ECHO_REPLY | ICMP_TIMESTAMP_REPLY) {
                return Ok(false);
            }
            let id: [u8; 2] = ctx.load(l4 + ICMP_ID)?;
            (u16::from_be_bytes(id), u16::from_be_bytes(id))
        }
        _ => return Ok(false),
    };
    Ok(fresh_target(&SessionKey {
        remote_addr,
        remote_port,
        external_port,
        proto,
        _pad: [0; 3],
    }))
}
