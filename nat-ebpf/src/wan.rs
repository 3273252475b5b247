//! WAN ingress: destination translation of replies on dynamic mappings and
//! of new connections on static forwarding entries.
use nat_common::{Counter, NatConfig, PROTO_ICMP, PROTO_TCP, UNSOLICITED_DROP};
use network_types::eth::EthHdr;

use crate::{
    context::NatContext,
    counters::{count, count_rule},
    egress::{redirect, route},
    lookup::{Target, config, inbound_target, local_socket_wants, now_ns, remote_allowed},
    parse::{
        ICMP_ECHO_REPLY, IcmpKind, Ipv4Packet, Side, TCP_ACK, TCP_SYN, frame_len, parse_frame,
        parse_quoted,
    },
    session::{Conversation, forward_session_inbound, session_inbound_allowed},
    translate::{adjust_icmp_check, rewrite_addr, rewrite_endpoint, rewrite_quoted_endpoint},
};

/// What becomes of a packet to the WAN address that no mapping or rule
/// lets in: the router's own sockets get theirs; a TCP SYN is never
/// answered, so that TCP hole punching and simultaneous open work (RFC 5382
/// REQ-4); the rest goes to the router's stack or is dropped, as
/// `unsolicited` says.
#[inline(always)]
fn unsolicited(ctx: &impl NatContext, config: &NatConfig, packet: &Ipv4Packet) -> Counter {
    if local_socket_wants(ctx, packet) {
        Counter::UnsolicitedPass
    } else if packet.proto == PROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        Counter::DropUnsolicited
    } else if config.unsolicited == UNSOLICITED_DROP {
        Counter::DropUnsolicited
    } else {
        Counter::UnsolicitedPass
    }
}

pub fn try_nat_wan(ctx: &impl NatContext) -> Result<u32, Counter> {
    let len = frame_len(ctx);
    count(Counter::WanRx, len);
    let config = config().ok_or(Counter::PassLocal)?;
    let (eth, packet) = parse_frame(ctx)?;
    if packet.addr(Side::Destination) != config.wan_addr {
        return Err(Counter::PassLocal);
    }
    if packet.ttl() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    match packet.icmp {
        IcmpKind::Error => return icmp_error_inbound(ctx, config, eth, &packet, len),
        IcmpKind::Other => return Err(Counter::PassLocal),
        // Echo requests are for the router itself.
        IcmpKind::Query if packet.icmp_type() != ICMP_ECHO_REPLY => {
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
    let target = inbound_target(packet.proto, external_port)
        .ok_or_else(|| unsolicited(ctx, config, &packet))?;
    let counter = match target {
        Target::Forward(forward) => {
            if !remote_allowed(&forward, remote.addr) {
                count(Counter::RemoteNotAllowed, len);
                return Err(unsolicited(ctx, config, &packet));
            }
            Counter::Forwarded
        }
        Target::Binding(_) => {
            if !session_inbound_allowed(config, &conversation, now, len) {
                return Err(unsolicited(ctx, config, &packet));
            }
            Counter::Dnat
        }
    };
    let to = target.endpoint();
    let route = route(ctx, &packet, remote.addr, to.addr)?;
    if route.ifindex != config.lan_ifindex {
        return Err(Counter::PassLocal);
    }
    if let Target::Forward(forward) = target {
        // After the route check: a conversation is logged only once it is
        // actually let through to the server.
        forward_session_inbound(&conversation, to, &forward, now, len);
        count_rule(forward.rule_id, true, len);
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
    let quoted = parse_quoted(ctx, packet)?;
    if quoted.addr(Side::Source) != config.wan_addr
        || (quoted.proto == PROTO_ICMP && quoted.icmp != IcmpKind::Query)
    {
        return Err(Counter::PassLocal);
    }
    // An error never refreshes the mapping it is about (RFC 5508 REQ-6).
    let to = inbound_target(quoted.proto, quoted.port(Side::Source))
        .ok_or(Counter::PassLocal)?
        .endpoint();
    let route = route(ctx, packet, packet.addr(Side::Source), to.addr)?;
    if route.ifindex != config.lan_ifindex {
        return Err(Counter::PassLocal);
    }
    let quoted_delta = rewrite_quoted_endpoint(&quoted, Side::Source, to);
    rewrite_addr(packet, Side::Destination, to.addr);
    adjust_icmp_check(ctx, packet, quoted_delta);
    redirect(ctx, eth, packet, &route, Counter::IcmpErrorIn, len)
}
