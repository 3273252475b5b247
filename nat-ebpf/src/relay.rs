//! The steering half of the reassembly slow path (`frag::hand_to_relay`):
//! an `sk_lookup` program in the router's netns. The kernel runs it in its
//! UDP socket lookup, after `ip_local_deliver` has reassembled the
//! datagram, so it sees whole datagrams only. One addressed to the WAN
//! address from a remote endpoint whose first fragment the datapath let in
//! to a target (`RELAY_TARGETS`) goes to the daemon's relay socket
//! (`RELAY_SOCKET`); everything else takes the kernel's own lookup. A
//! recorded external port is a mapping's or a rule's, which no router
//! socket holds (the daemon never maps a port a router socket owns), so
//! no socket of the router's is ever passed over.
use aya_ebpf::{bindings::sk_action, programs::SkLookupContext};
use nat_common::{Counter, PROTO_UDP, RELAY_TIMEOUT_NS, SessionKey};

use crate::{
    counters::count,
    lookup::{config, now_ns},
    maps::{RELAY_SOCKET, RELAY_TARGETS},
};

const AF_INET: u32 = 2;

pub fn try_relay_lookup(ctx: &SkLookupContext) -> u32 {
    // SAFETY: the kernel's context for this program, read-only fields.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET || lookup.protocol != u32::from(PROTO_UDP) {
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
        proto: PROTO_UDP,
        _pad: [0; 3],
    };
    // SAFETY: a map lookup, copied out at once.
    let Some(target) = (unsafe { RELAY_TARGETS.get(key) }).copied() else {
        return sk_action::SK_PASS;
    };
    if now_ns().saturating_sub(target.created_ns) > RELAY_TIMEOUT_NS {
        return sk_action::SK_PASS;
    }
    match RELAY_SOCKET.redirect_sk_lookup(ctx, 0, 0) {
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
