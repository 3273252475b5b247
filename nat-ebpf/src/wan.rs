//! WAN ingress: destination translation of replies on dynamic mappings and
//! of new connections on static forwarding entries.
use nat_common::{Counter, NatConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP, UNSOLICITED_DROP};
use network_types::eth::EthHdr;

use crate::{
    context::NatContext,
    counters::{count, count_rule},
    egress::{leaving_by, redirect, route, route_fragmentable},
    frag,
    lookup::{
        Target, config, in_prefix, inbound_admitted, inbound_target, local_socket_wants,
        note_admitted, now_ns, remote_allowed,
    },
    parse::{
        IcmpKind, Ipv4Packet, Quoted, Side, TCP_ACK, TCP_SYN, frame_len, parse_frame_header,
        parse_l4, parse_quoted_any,
    },
    proto,
    session::{Conversation, forward_session_inbound},
    translate::{adjust_icmp_check, rewrite_addr, rewrite_endpoint, rewrite_quoted_endpoint},
    validate,
};

/// What becomes of a packet to the WAN address that no mapping or rule
/// lets in: the router's own sockets get theirs; a TCP SYN is never
/// answered, so that TCP hole punching and simultaneous open work (RFC 5382
/// REQ-4); the rest goes to the router's stack or is dropped, as
/// `unsolicited` says. A first fragment handed to the router's stack is
/// recorded as the router's, so that the rest of its datagram goes there
/// too.
#[inline(always)]
fn unsolicited(
    ctx: &impl NatContext,
    config: &NatConfig,
    packet: &Ipv4Packet,
    now: u64,
    len: usize,
) -> Counter {
    let to_the_router = if local_socket_wants(ctx, packet) {
        true
    } else if packet.proto == PROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        false
    } else {
        config.unsolicited != UNSOLICITED_DROP
    };
    frag::withdraw_relay(packet);
    if !to_the_router {
        return Counter::DropUnsolicited;
    }
    frag::track_inbound(packet, config.wan_addr, now, len);
    Counter::UnsolicitedPass
}

/// Inlined into its entry point: as a call of its own it would return its
/// `Result` through the caller's stack, see `lan::nat_lan_call`.
#[inline(always)]
pub fn try_nat_wan(ctx: &impl NatContext) -> Result<u32, Counter> {
    let len = frame_len(ctx);
    count(Counter::WanRx, len);
    let config = config().ok_or(Counter::PassLocal)?;
    let (eth, hdr) = parse_frame_header(ctx)?;
    let dst = hdr.addr(Side::Destination);
    // Only the NAT reaches the LAN from outside: the kernel would forward
    // this into the LAN untranslated, or answer it from its LAN address
    // out of the WAN NIC.
    if in_prefix(dst, config.lan_net, config.lan_prefix_len) {
        return Err(Counter::DropToLanPrefix);
    }
    if dst != config.wan_addr {
        return Err(Counter::PassLocal);
    }
    if hdr.ttl() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    if hdr.is_later_fragment() {
        return frag::inbound(ctx, config, eth, &hdr, len);
    }
    if !matches!(hdr.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
        return proto::inbound(ctx, config, eth, &hdr, len);
    }
    let packet = parse_l4(ctx, hdr, None)?;
    match packet.icmp {
        IcmpKind::Error => {
            // Neither translated nor handed on when a checksum is bad.
            validate::icmp_error(ctx, &packet)?;
            return icmp_error_inbound(ctx, config, eth, &packet, len);
        }
        IcmpKind::Other => return Err(Counter::PassLocal),
        // Echo and timestamp requests are for the router itself.
        IcmpKind::Query if packet.is_icmp_request() => {
            return Err(Counter::PassLocal);
        }
        _ => {}
    }

    let now = now_ns();
    let remote = packet.endpoint(Side::Source);
    let external_port = packet.port(Side::Destination);
    let conversation = Conversation {
        proto: packet.proto,
        external_port,
        remote,
        tcp_flags: packet.tcp_flags,
    };
    let target = inbound_admitted(config, &conversation, now, len)
        .ok_or_else(|| unsolicited(ctx, config, &packet, now, len))?;
    let counter = match target {
        Target::Forward(forward) => {
            if !remote_allowed(&forward, remote.addr) {
                count(Counter::RemoteNotAllowed, len);
                return Err(unsolicited(ctx, config, &packet, now, len));
            }
            Counter::Forwarded
        }
        Target::Binding(internal) => {
            note_admitted(config, packet.proto, internal, remote, external_port);
            Counter::Dnat
        }
    };
    let to = target.endpoint();
    let route = leaving_by(
        route_fragmentable(ctx, &packet, remote.addr, to.addr)?,
        config.lan_ifindex,
    )?;
    if let Target::Forward(forward) = target {
        // After the route check: a conversation is logged only once it is
        // actually let through to the server. Before the fragment table
        // learns where the datagram goes: the router's socket may take it.
        if let Err(yielded) =
            forward_session_inbound(config, &conversation, to, &forward, now, len, || {
                local_socket_wants(ctx, &packet)
            })
        {
            frag::track_inbound(&packet, config.wan_addr, now, len);
            return Err(yielded);
        }
        count_rule(forward.rule_id, true, len);
    }
    // Its later fragments came first and are in the kernel: the whole
    // datagram goes there to be reassembled, and on to the relay.
    let relayed = frag::hand_to_relay(config, &packet, to, 0, now, len);
    if packet.is_fragment() {
        if !relayed {
            frag::track_inbound(&packet, to.addr, now, len);
        }
        frag::note_peer(remote.addr, packet.proto, to.addr, now);
    }
    if relayed {
        return Err(Counter::PassFragReassembly);
    }
    rewrite_endpoint(ctx, &packet, Side::Destination, to);
    redirect(ctx, eth, &packet, &route, counter, len)
}

/// An ICMP error (unreachable, fragmentation needed, time exceeded) about a
/// packet we translated on its way out: the quoted packet's source is our
/// external endpoint, which the LAN host must see as its own again.
#[inline(always)]
fn icmp_error_inbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    len: usize,
) -> Result<u32, Counter> {
    let quoted = match parse_quoted_any(ctx, packet)? {
        Quoted::Datagram(quoted) => quoted,
        // About another protocol we translated by address (e.g. "too big"
        // for an ESP packet, which IPsec's path MTU relies on).
        Quoted::Other(quoted) => {
            if quoted.addr(Side::Source) != config.wan_addr {
                return Err(Counter::PassLocal);
            }
            return proto::icmp_error_inbound(ctx, config, eth, packet, &quoted, len);
        }
    };
    if quoted.addr(Side::Source) != config.wan_addr
        || (quoted.proto == PROTO_ICMP && quoted.icmp != IcmpKind::Query)
    {
        return Err(Counter::PassLocal);
    }
    // An error never refreshes the mapping it is about (RFC 5508 REQ-6).
    let to = inbound_target(config, quoted.proto, quoted.port(Side::Source))
        .ok_or(Counter::PassLocal)?
        .endpoint();
    let route = leaving_by(
        route(ctx, packet, packet.addr(Side::Source), to.addr)?,
        config.lan_ifindex,
    )?;
    let quoted_delta = rewrite_quoted_endpoint(&quoted, Side::Source, to);
    rewrite_addr(packet, Side::Destination, to.addr);
    adjust_icmp_check(ctx, packet, quoted_delta);
    redirect(ctx, eth, packet, &route, Counter::IcmpErrorIn, len)
}
