//! IP protocols other than TCP, UDP and ICMP (GRE for PPTP, ESP and AH
//! for IPsec, SCTP, IP-in-IP, ...). They have no ports to map, so they are
//! translated by address, as home routers pass VPNs through: the first
//! LAN host to send a protocol to a remote holds that (protocol, remote)
//! pair, a `SESSIONS` entry with both ports 0 (shown in `natctl table`,
//! aged by the sweep like a UDP session), and the remote's packets of that
//! protocol go to it; another host sending the same protocol to the same
//! remote meanwhile is `drop_proto_busy`. `other_protocols = "drop"` drops
//! them from the LAN instead (from the WAN they are then the router's).
//!
//! Protocols whose checksum covers the IP addresses (DCCP, UDP-Lite) would
//! leave with a wrong one: they are never translated by address.
use nat_common::{Counter, NatConfig, OTHER_PROTOCOLS_TRANSLATE, UNSOLICITED_DROP};
use network_types::eth::EthHdr;

use crate::{
    context::NatContext,
    egress::{leaving_by, redirect, route, route_fragmentable},
    frag,
    lookup::now_ns,
    parse::{IpHeader, Ipv4Packet, Side},
    session::{address_session_host, address_session_inbound, address_session_outbound},
    translate::{adjust_icmp_check, rewrite_addr},
};

const PROTO_DCCP: u8 = 33;
const PROTO_UDPLITE: u8 = 136;

#[inline(always)]
fn translated(config: &NatConfig, proto: u8) -> bool {
    config.other_protocols == OTHER_PROTOCOLS_TRANSLATE
        && proto != PROTO_DCCP
        && proto != PROTO_UDPLITE
}

/// From a LAN host to the outside: its source becomes the WAN address.
#[inline(always)]
pub fn outbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    hdr: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    if !translated(config, hdr.proto) {
        return Err(Counter::DropUnsupportedProto);
    }
    let remote = hdr.addr(Side::Destination);
    let route = leaving_by(
        route_fragmentable(ctx, hdr, config.wan_addr, remote)?,
        config.wan_ifindex,
    )?;
    let now = now_ns();
    let host = hdr.addr(Side::Source);
    address_session_outbound(config, hdr.proto, host, remote, now, len)?;
    frag::track_outbound(config.wan_addr, hdr, now, len)?;
    rewrite_addr(hdr, Side::Source, config.wan_addr);
    redirect(ctx, eth, hdr, &route, Counter::Snat, len)
}

/// From outside to the WAN address: to the LAN host that holds the
/// (protocol, remote) pair; none: the router's own.
#[inline(always)]
pub fn inbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    hdr: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    if !translated(config, hdr.proto) {
        return Err(Counter::PassUnsupportedProto);
    }
    let remote = hdr.addr(Side::Source);
    let now = now_ns();
    let Some(host) = address_session_inbound(config, hdr.proto, remote, now, len) else {
        return Err(if config.unsolicited == UNSOLICITED_DROP {
            Counter::DropUnsolicited
        } else {
            Counter::PassUnsupportedProto
        });
    };
    let route = leaving_by(
        route_fragmentable(ctx, hdr, remote, host)?,
        config.lan_ifindex,
    )?;
    frag::track_inbound(hdr, host, now, len);
    rewrite_addr(hdr, Side::Destination, host);
    redirect(ctx, eth, hdr, &route, Counter::Dnat, len)
}

/// An ICMP error from outside about a packet of another protocol that we
/// translated by address: the quoted source and the outer destination
/// become the LAN host again, the ICMP checksum follows the quote.
#[inline(always)]
pub fn icmp_error_inbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    quoted: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    if !translated(config, quoted.proto) {
        return Err(Counter::PassLocal);
    }
    let remote = quoted.addr(Side::Destination);
    // An error never refreshes the session it is about (RFC 5508 REQ-6).
    let host = address_session_host(config, quoted.proto, remote).ok_or(Counter::PassLocal)?;
    let route = leaving_by(
        route(ctx, packet, packet.addr(Side::Source), host)?,
        config.lan_ifindex,
    )?;
    let (_, quoted_delta) = rewrite_addr(quoted, Side::Source, host);
    rewrite_addr(packet, Side::Destination, host);
    adjust_icmp_check(ctx, packet, quoted_delta);
    redirect(ctx, eth, packet, &route, Counter::IcmpErrorIn, len)
}

/// A LAN host's ICMP error about a packet of another protocol that reached
/// it by address (e.g. "too big" for an inbound ESP packet): the quoted
/// destination and the outer source become the WAN address. About a pair
/// the host does not hold: dropped, never passed to a kernel that would
/// forward it with the host's address.
#[inline(always)]
pub fn icmp_error_outbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    quoted: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    let untranslated = Counter::DropIcmpUntranslated;
    let host = packet.addr(Side::Source);
    let remote = quoted.addr(Side::Source);
    if !translated(config, quoted.proto) || quoted.addr(Side::Destination) != host {
        return Err(untranslated);
    }
    // An error never refreshes the session it is about (RFC 5508 REQ-6).
    if address_session_host(config, quoted.proto, remote) != Some(host) {
        return Err(untranslated);
    }
    let route = leaving_by(
        route_fragmentable(ctx, packet, config.wan_addr, packet.addr(Side::Destination))?,
        config.wan_ifindex,
    )?;
    let (_, quoted_delta) = rewrite_addr(quoted, Side::Destination, config.wan_addr);
    rewrite_addr(packet, Side::Source, config.wan_addr);
    adjust_icmp_check(ctx, packet, quoted_delta);
    redirect(ctx, eth, packet, &route, Counter::IcmpErrorOut, len)
}
