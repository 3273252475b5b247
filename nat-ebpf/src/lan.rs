//! LAN ingress: source translation toward the WAN, and hairpin back into
//! the LAN for a LAN host that reaches the WAN address.
use nat_common::{COUNTER_COUNT, Counter, NatConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use network_types::eth::EthHdr;

use crate::{
    binding::external_port_for,
    context::NatContext,
    counters::{count, count_rule},
    egress::{leaving_by, redirect, route, route_fragmentable},
    frag,
    lookup::{
        Target, binding_inbound, config, config_without_wan, established_outbound, forward_inbound,
        in_prefix, inbound_target, note_admitted, now_ns, outbound_external_unrefreshed,
    },
    parse::{
        Endpoint, IcmpKind, Ipv4Packet, Quoted, Side, frame_len, parse_frame_header, parse_l4,
        parse_quoted_any,
    },
    proto,
    session::{Conversation, forward_session_outbound, session_inbound_allowed, session_outbound},
    translate::{adjust_icmp_check, rewrite_addr, rewrite_endpoint, rewrite_quoted_endpoint},
    validate,
};

#[inline(always)]
fn is_multicast_or_broadcast(addr: [u8; 4]) -> bool {
    addr[0] >= 224 || addr == [255; 4]
}

/// The LAN flow. Its body is a call of its own ([`nat_lan_call`]), so that
/// its stack is apart from the answer `reject` builds after it.
#[inline(always)]
pub fn try_nat_lan(ctx: &impl NatContext) -> Result<u32, Counter> {
    let outcome = nat_lan_call(ctx);
    let code = (outcome >> 32) as u32;
    if code == 0 {
        return Ok(outcome as u32);
    }
    // SAFETY: `nat_lan_call` packed a `Counter` (repr(u32)) below it.
    Err(unsafe { core::mem::transmute::<u32, Counter>(code.min(COUNTER_COUNT) - 1) })
}

/// [`nat_lan`] as a call, its outcome packed into the one register a BPF
/// call returns: `Ok(action)` as the action, `Err(counter)` as the
/// counter's index plus one in the upper half. Returned as a `Result`, it
/// goes through the caller's stack, and R0 keeps whatever the body last
/// put there, which the verifier refuses when that is a stack pointer. A
/// shim over an inlined body, not the body itself marked `inline(never)`:
/// LLVM lays that one's frame out larger, and `nat_lan_tc`'s two frames
/// then exceed the 512 bytes they share.
#[inline(never)]
fn nat_lan_call(ctx: &impl NatContext) -> u64 {
    match nat_lan(ctx) {
        Ok(action) => u64::from(action),
        Err(counter) => (u64::from(counter as u32) + 1) << 32,
    }
}

#[inline(always)]
fn nat_lan(ctx: &impl NatContext) -> Result<u32, Counter> {
    let len = frame_len(ctx);
    count(Counter::LanRx, len);
    let Some(config) = config() else {
        return Err(without_wan_address(ctx));
    };
    let (eth, hdr) = parse_frame_header(ctx)?;
    let src = hdr.addr(Side::Source);
    let dst = hdr.addr(Side::Destination);
    let lan = |addr| in_prefix(addr, config.lan_net, config.lan_prefix_len);
    if !lan(src) || lan(dst) || is_multicast_or_broadcast(dst) {
        return Err(Counter::PassLocal);
    }
    if hdr.ttl() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let to_router = dst == config.wan_addr;
    // From here on, what is passed to the kernel untranslated is for the
    // router itself or routed elsewhere than the WAN: anything else the
    // kernel would forward out of the WAN NIC with its LAN source, so it is
    // translated first or dropped.
    if hdr.is_later_fragment() {
        if to_router {
            return frag::hairpin(ctx, config, eth, &hdr, len);
        }
        return frag::outbound(ctx, config, eth, &hdr, len);
    }
    if !matches!(hdr.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
        if to_router {
            return Err(Counter::PassUnsupportedProto);
        }
        return proto::outbound(ctx, config, eth, &hdr, len);
    }
    let packet = match parse_l4(ctx, hdr, None) {
        Ok(packet) => packet,
        Err(reason) if to_router => return Err(reason),
        Err(Counter::PassMalformed) => return Err(Counter::DropMalformed),
        Err(Counter::PassUnsupportedProto) => return Err(Counter::DropUnsupportedProto),
        Err(reason) => return Err(reason),
    };
    match packet.icmp {
        IcmpKind::Error => {
            // Neither translated nor handed on when a checksum is bad.
            validate::icmp_error(ctx, &packet)?;
            // An error to the router itself is the kernel's to read,
            // unless it is about a packet hairpinned to the host.
            if to_router {
                return hairpin_icmp_error(ctx, config, eth, &packet, len);
            }
            return icmp_error_outbound(ctx, config, eth, &packet, len);
        }
        _ if to_router => return hairpin(ctx, config, eth, &packet, len),
        IcmpKind::Other => return Err(Counter::DropIcmpUnknown),
        // Only a request opens a query mapping; a LAN host's reply answers
        // nobody we forwarded to it.
        IcmpKind::Query if !packet.is_icmp_request() => {
            return Err(Counter::DropIcmpUntranslated);
        }
        _ => {}
    }

    let route = leaving_by(
        route_fragmentable(ctx, &packet, config.wan_addr, dst)?,
        config.wan_ifindex,
    )?;
    let now = now_ns();
    frag::track_outbound(config.wan_addr, &packet, now, len)?;
    let internal = packet.endpoint(Side::Source);
    let remote = packet.endpoint(Side::Destination);
    let mut conversation = Conversation {
        proto: packet.proto,
        external_port: internal.port,
        remote,
        tcp_flags: packet.tcp_flags,
    };
    if !established_outbound(config, &conversation, internal, now, len) {
        // No mapping (no port, or no room): answered by `reject`, after the
        // flow returns.
        let external = external_port_for(ctx, config, packet.proto, internal, remote, now, len)?;
        conversation.external_port = external.port;
        if external.rule_id == 0 {
            session_outbound(
                config,
                &conversation,
                internal,
                external.new_mapping,
                now,
                len,
            );
        } else {
            forward_session_outbound(config, &conversation, internal, now, len);
            count_rule(external.rule_id, false, len);
        }
    }
    if packet.is_fragment() {
        frag::note_peer(dst, packet.proto, src, now);
    }
    rewrite_endpoint(
        ctx,
        &packet,
        Side::Source,
        Endpoint {
            addr: config.wan_addr,
            port: conversation.external_port,
        },
    );
    redirect(ctx, eth, &packet, &route, Counter::Snat, len)
}

/// Nothing to translate to (the WAN NIC has no address, or no
/// configuration yet): what LAN hosts send to the outside is dropped, as
/// the kernel would forward it untranslated; the rest is the kernel's.
#[inline(always)]
fn without_wan_address(ctx: &impl NatContext) -> Counter {
    let Some(config) = config_without_wan() else {
        return Counter::PassLocal;
    };
    let Ok((_, hdr)) = parse_frame_header(ctx) else {
        return Counter::PassLocal;
    };
    let dst = hdr.addr(Side::Destination);
    let lan = |addr| in_prefix(addr, config.lan_net, config.lan_prefix_len);
    if lan(hdr.addr(Side::Source)) && !lan(dst) && !is_multicast_or_broadcast(dst) {
        Counter::DropNoWanAddress
    } else {
        Counter::PassLocal
    }
}

/// A LAN host reaching the WAN address on a forwarded port, or on another
/// LAN host's mapping: both ends are translated so that the server's reply
/// comes back through the router and not straight to the client.
#[inline(always)]
fn hairpin(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    len: usize,
) -> Result<u32, Counter> {
    // The router answers pings to its own address itself.
    if config.hairpin == 0 || packet.proto == PROTO_ICMP {
        return Err(Counter::PassLocal);
    }
    let now = now_ns();
    let target_port = packet.port(Side::Destination);
    // Nobody's port: the router's own, for its stack, and no mapping made.
    if inbound_target(config, packet.proto, target_port).is_none() {
        return Err(Counter::PassLocal);
    }
    let internal = packet.endpoint(Side::Source);
    // What each side sees of the other is the WAN address and a port.
    let remote = Endpoint {
        addr: config.wan_addr,
        port: target_port,
    };
    let source = external_port_for(ctx, config, packet.proto, internal, remote, now, len)?;
    let source_outside = Endpoint {
        addr: config.wan_addr,
        port: source.port,
    };
    // Looked up again rather than kept from above: held across the
    // mapping's creation, the target and its route would take `nat_lan`'s
    // stack past the verifier's limit in TC mode. (A route that fails now
    // leaves the mapping to age out, as an unanswered flow's does.)
    let target = inbound_target(config, packet.proto, target_port).ok_or(Counter::PassLocal)?;
    let to = target.endpoint();
    let route = leaving_by(
        route(ctx, packet, config.wan_addr, to.addr)?,
        config.lan_ifindex,
    )?;
    if source.rule_id != 0 {
        // A forwarded server answering a LAN client through the WAN address.
        count_rule(source.rule_id, false, len);
    } else {
        let conversation = Conversation {
            proto: packet.proto,
            external_port: source.port,
            remote,
            tcp_flags: packet.tcp_flags,
        };
        session_outbound(
            config,
            &conversation,
            internal,
            source.new_mapping,
            now,
            len,
        );
    }
    // The target's side of the same conversation, for its filter.
    let reverse = Conversation {
        proto: packet.proto,
        external_port: target_port,
        remote: source_outside,
        tcp_flags: packet.tcp_flags,
    };
    match target {
        // A rule's allowed remotes restrict the outside; LAN hosts may
        // always use it.
        Target::Forward(forward) => count_rule(forward.rule_id, true, len),
        Target::Binding(target) => {
            // Refused as it would be from outside; passed to the router's
            // own stack it would be answered with a reset instead.
            if !session_inbound_allowed(config, &reverse, now, len) {
                return Err(Counter::DropUnsolicited);
            }
            note_admitted(config, packet.proto, target, source_outside, target_port);
        }
    }
    // Its later fragments came first and are in the kernel: the whole
    // datagram goes there to be reassembled, and on to the relay.
    if frag::hand_to_relay(config, packet, to, source.port, now, len) {
        return Err(Counter::PassFragReassembly);
    }
    frag::track_hairpin(config.wan_addr, packet, to.addr, now, len)?;
    rewrite_endpoint(ctx, packet, Side::Source, source_outside);
    rewrite_endpoint(ctx, packet, Side::Destination, to);
    redirect(ctx, eth, packet, &route, Counter::Hairpin, len)
}

/// A LAN host's ICMP error about a packet hairpinned to it (from the WAN
/// address and another LAN host's external port): back to that host as an
/// error from outside would come, from the WAN address, quoting what that
/// host sent (RFC 5508 REQ-7). About anything else: the router's own.
#[inline(always)]
fn hairpin_icmp_error(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    len: usize,
) -> Result<u32, Counter> {
    let own = Counter::PassLocal;
    if config.hairpin == 0 {
        return Err(own);
    }
    let Quoted::Datagram(quoted) = parse_quoted_any(ctx, packet).map_err(|_| own)? else {
        return Err(own);
    };
    if quoted.addr(Side::Source) != config.wan_addr
        || quoted.addr(Side::Destination) != packet.addr(Side::Source)
        || quoted.proto == PROTO_ICMP
    {
        return Err(own);
    }
    // The sender, behind the external port the hairpinned packet came from.
    // Not through `inbound_target`: here LLVM spills the `Target` tag from
    // the register that holds the rule's map pointer, at the tag's width,
    // which the verifier refuses ("invalid size of register spill").
    let port = quoted.port(Side::Source);
    let sender = match forward_inbound(config, quoted.proto, port) {
        Some(forward) => Endpoint {
            addr: forward.addr,
            port: forward.port,
        },
        None => binding_inbound(quoted.proto, port).ok_or(own)?,
    };
    // What the sender addressed: the erring host's external endpoint.
    let erring_port = outbound_external_unrefreshed(
        config,
        quoted.proto,
        quoted.endpoint(Side::Destination),
        Endpoint {
            addr: config.wan_addr,
            port: quoted.port(Side::Source),
        },
    )
    .ok_or(own)?;
    let route = leaving_by(
        route(ctx, packet, config.wan_addr, sender.addr)?,
        config.lan_ifindex,
    )?;
    let mut quoted_delta = rewrite_quoted_endpoint(&quoted, Side::Source, sender);
    quoted_delta.merge(rewrite_quoted_endpoint(
        &quoted,
        Side::Destination,
        Endpoint {
            addr: config.wan_addr,
            port: erring_port,
        },
    ));
    rewrite_addr(packet, Side::Source, config.wan_addr);
    rewrite_addr(packet, Side::Destination, sender.addr);
    adjust_icmp_check(ctx, packet, quoted_delta);
    redirect(ctx, eth, packet, &route, Counter::IcmpErrorIn, len)
}

/// A LAN host's ICMP error about a packet that reached it through the NAT:
/// the quoted packet's destination is the host's own endpoint, which must
/// read as the external one outside.
#[inline(always)]
fn icmp_error_outbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    len: usize,
) -> Result<u32, Counter> {
    // About nothing the NAT translated: dropped, never passed to a kernel
    // that would forward it with the host's address.
    let untranslated = Counter::DropIcmpUntranslated;
    let quoted = match parse_quoted_any(ctx, packet).map_err(|_| untranslated)? {
        Quoted::Datagram(quoted) => quoted,
        // About a packet of another protocol that came in by address.
        Quoted::Other(quoted) => {
            return proto::icmp_error_outbound(ctx, config, eth, packet, &quoted, len);
        }
    };
    if quoted.proto == PROTO_ICMP && quoted.icmp != IcmpKind::Query {
        return Err(untranslated);
    }
    let internal = quoted.endpoint(Side::Destination);
    let about = quoted.endpoint(Side::Source);
    let external_port =
        outbound_external_unrefreshed(config, quoted.proto, internal, about).ok_or(untranslated)?;
    let remote = packet.addr(Side::Destination);
    let route = leaving_by(
        route_fragmentable(ctx, packet, config.wan_addr, remote)?,
        config.wan_ifindex,
    )?;
    let quoted_delta = rewrite_quoted_endpoint(
        &quoted,
        Side::Destination,
        Endpoint {
            addr: config.wan_addr,
            port: external_port,
        },
    );
    rewrite_addr(packet, Side::Source, config.wan_addr);
    adjust_icmp_check(ctx, packet, quoted_delta);
    redirect(ctx, eth, packet, &route, Counter::IcmpErrorOut, len)
}
