//! Header rewrites, each keeping every checksum it touches right.
use core::ptr::addr_of_mut;

use nat_common::PROTO_ICMP;

use crate::{
    checksum::{CsumDelta, load16, store16},
    context::{NatContext, rewrite_check},
    parse::{Endpoint, IpHeader, Ipv4Packet, Side},
};

/// Rewrites the address of `side`, fixing the IP header checksum. Returns
/// the delta of every byte changed (address and header checksum), for the
/// checksum of an enclosing ICMP error.
#[inline(always)]
pub fn rewrite_addr(packet: &IpHeader, side: Side, addr: [u8; 4]) -> (CsumDelta, CsumDelta) {
    let addr_ptr = packet.addr_ptr(side);
    let mut addr_delta = CsumDelta::default();
    // SAFETY: in bounds by construction of `IpHeader`.
    let check = unsafe {
        addr_delta.addr(*addr_ptr, addr);
        *addr_ptr = addr;
        addr_of_mut!((*packet.ip).check)
    };
    let old_check = load16(check);
    let new_check = addr_delta.apply(old_check);
    store16(check, new_check);
    let mut changed = addr_delta;
    changed.word(old_check, new_check);
    (addr_delta, changed)
}

/// Rewrites the IP id, fixing the IP header checksum; nothing if it is
/// already `id`.
#[inline(always)]
pub fn rewrite_id(packet: &IpHeader, id: u16) {
    let old = packet.id();
    if old == id {
        return;
    }
    let mut delta = CsumDelta::default();
    delta.word(old, id);
    // SAFETY: in bounds by construction of `IpHeader`.
    unsafe {
        (*packet.ip).id = id.to_be_bytes();
        let check = addr_of_mut!((*packet.ip).check);
        store16(check, delta.apply(load16(check)));
    }
}

/// Rewrites the address and port of `side` and the checksums covering
/// them: the L4 one through `ctx` (see [`NatContext::l4_checksum`]).
#[inline(always)]
pub fn rewrite_endpoint<C: NatContext>(ctx: &C, packet: &Ipv4Packet, side: Side, to: Endpoint) {
    let (addr_delta, _, port_delta) = rewrite_fields(packet, side, to);
    if let Some(check) = packet.l4_check {
        ctx.l4_checksum(check, packet.proto, pseudo(packet, addr_delta), port_delta);
    }
}

/// As [`rewrite_endpoint`], for the datagram quoted inside an ICMP error:
/// its checksum is part of the ICMP payload and always rewritten in place.
/// Returns the delta of every byte changed, for the ICMP checksum.
#[inline(always)]
pub fn rewrite_quoted_endpoint(quoted: &Ipv4Packet, side: Side, to: Endpoint) -> CsumDelta {
    let (addr_delta, mut changed, port_delta) = rewrite_fields(quoted, side, to);
    if let Some(check) = quoted.l4_check {
        changed.merge(rewrite_check(
            check,
            quoted.proto,
            pseudo(quoted, addr_delta),
            port_delta,
        ));
    }
    changed
}

/// Rewrites the address (with the IP header checksum) and the port of
/// `side`. Returns the address delta, the delta of every byte changed so
/// far, and the port delta.
#[inline(always)]
fn rewrite_fields(
    packet: &Ipv4Packet,
    side: Side,
    to: Endpoint,
) -> (CsumDelta, CsumDelta, CsumDelta) {
    let (addr_delta, mut changed) = rewrite_addr(packet, side, to.addr);
    let port_ptr = packet.port_ptr(side);
    let mut port_delta = CsumDelta::default();
    port_delta.word(load16(port_ptr), to.port);
    store16(port_ptr, to.port);
    changed.merge(port_delta);
    (addr_delta, changed, port_delta)
}

/// ICMP has no pseudo-header: only the id moves its checksum.
#[inline(always)]
fn pseudo(packet: &Ipv4Packet, addr_delta: CsumDelta) -> CsumDelta {
    if packet.proto == PROTO_ICMP {
        CsumDelta::default()
    } else {
        addr_delta
    }
}

/// Applies `delta` to the checksum of the ICMP message in `packet`.
#[inline(always)]
pub fn adjust_icmp_check<C: NatContext>(ctx: &C, packet: &Ipv4Packet, delta: CsumDelta) {
    if let Some(check) = packet.l4_check {
        ctx.l4_checksum(check, PROTO_ICMP, CsumDelta::default(), delta);
    }
}

/// Decrements the TTL as a router must, with the header checksum.
#[inline(always)]
pub fn decrement_ttl(packet: &IpHeader) {
    // SAFETY: in bounds by construction of `IpHeader`.
    unsafe {
        let ip = packet.ip;
        let ttl = (*ip).ttl;
        let proto = (*ip).proto;
        let mut delta = CsumDelta::default();
        delta.word(
            u16::from_be_bytes([ttl, proto]),
            u16::from_be_bytes([ttl - 1, proto]),
        );
        (*ip).ttl = ttl - 1;
        let check = addr_of_mut!((*ip).check);
        store16(check, delta.apply(load16(check)));
    }
}
