//! Header rewrites, each keeping every checksum it touches right.
use core::ptr::addr_of_mut;

use nat_common::{PROTO_ICMP, PROTO_UDP};

use crate::{
    checksum::{CsumDelta, load16, store16},
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

/// Rewrites the address and port of `side` and the checksums covering
/// them. Returns the delta of every byte changed, for an enclosing checksum.
#[inline(always)]
pub fn rewrite_endpoint(packet: &Ipv4Packet, side: Side, to: Endpoint) -> CsumDelta {
    let (addr_delta, mut changed) = rewrite_addr(packet, side, to.addr);

    let port_ptr = packet.port_ptr(side);
    let mut port_delta = CsumDelta::default();
    port_delta.word(load16(port_ptr), to.port);
    store16(port_ptr, to.port);
    changed.merge(port_delta);

    if let Some(check) = packet.l4_check {
        let old = load16(check);
        let new = match packet.proto {
            // A zero UDP checksum means "none" and must stay so.
            PROTO_UDP if old == 0 => 0,
            // ICMP has no pseudo-header: only the id moved.
            PROTO_ICMP => port_delta.apply(old),
            proto => {
                let mut delta = addr_delta;
                delta.merge(port_delta);
                let new = delta.apply(old);
                // 0 would read as "no checksum" (RFC 768).
                if proto == PROTO_UDP && new == 0 {
                    0xffff
                } else {
                    new
                }
            }
        };
        store16(check, new);
        changed.word(old, new);
    }
    changed
}

/// Applies `delta` to the checksum of the ICMP message in `packet`.
#[inline(always)]
pub fn adjust_icmp_check(packet: &Ipv4Packet, delta: CsumDelta) {
    if let Some(check) = packet.l4_check {
        store16(check, delta.apply(load16(check)));
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
