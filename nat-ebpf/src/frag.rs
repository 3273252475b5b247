//! IP fragments (RFC 4787 REQ-14, RFC 5382, RFC 7857). A datagram's first
//! fragment carries the L4 header: it is translated like a whole datagram,
//! by the same mapping, and recorded here (`track`) by the datagram's
//! identity as it arrived, (source, destination, protocol, IP id). Its later
//! fragments carry no L4 header and are translated by that record: only an
//! address changes (the L4 checksum is in the first fragment, whose
//! translation already accounted for the whole datagram).
//!
//! Out of order:
//! - leaving the LAN, every fragment gets the same source, the WAN address:
//!   a later fragment before its first is translated all the same (and
//!   recorded, for the ones after it);
//! - arriving from outside, a later fragment before its first cannot name
//!   its LAN host. The one LAN host that recently exchanged fragmented
//!   datagrams with that remote in that protocol (`note_peer`, the same
//!   map under a key with no destination) gets it. With none, or two of
//!   them, it goes to the kernel (`pass_fragment`), recorded as held
//!   there, and so do its datagram's other fragments: XDP cannot hold a
//!   packet, the kernel can. Its first fragment still gets the datapath's
//!   own verdict (mapping, filter); a UDP, TCP or ICMP datagram let in is
//!   then passed too (`hand_to_relay`: `pass_frag_reassembly`), its target
//!   recorded in `RELAY_TARGETS`, and once the kernel has reassembled it,
//!   the daemon's relay gets it (`relay.rs`: steered by `nat_relay_lookup`
//!   for UDP, read through `nat_relay_filter` for TCP and ICMP) and sends
//!   it on to that target. Never a guess, never a second NAT.
//! - from a LAN host to the WAN address (hairpin), a later fragment before
//!   its first goes to the kernel, recorded as held there; its first
//!   fragment, hairpinned, hands the datagram to the relay alike, with
//!   the port it leaves the WAN address from.
//!
//! Leaving the LAN, every datagram leaves from the one WAN address, so two
//! LAN hosts' datagrams to one remote with the same protocol and IP id
//! would be one datagram to the remote's reassembly. The first to leave
//! holds its id (`claim_id`, an entry keyed by the datagram as the remote
//! sees it); another host's datagram gets a random free id, the same for
//! all its fragments (`frag_id_rewritten`), or is dropped when none is
//! found in a few tries (`drop_frag_id_busy`).
//!
//! `FRAGS` is an LRU of `FRAGS_MAX` entries; an entry older than
//! `FRAG_TIMEOUT_NS` is not used (`frag_expired`) and the sweep removes it.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use nat_common::{
    Counter, FRAG_PEER_TIMEOUT_NS, FRAG_TIMEOUT_NS, FragEntry, FragKey, NatConfig, PROTO_TCP,
    RelayTarget, SessionKey,
};
use network_types::eth::EthHdr;

use crate::{
    context::NatContext,
    counters::count,
    egress::{leaving_by, redirect, route_fragmentable},
    lookup::now_ns,
    maps::{FRAGS, RELAY_TARGETS},
    parse::{Endpoint, IpHeader, Ipv4Packet, Side},
    relay,
    translate::{rewrite_addr, rewrite_id},
};

#[inline(always)]
fn datagram_key(hdr: &IpHeader) -> FragKey {
    FragKey {
        src: hdr.addr(Side::Source),
        dst: hdr.addr(Side::Destination),
        id: hdr.id(),
        proto: hdr.proto,
        _pad: 0,
    }
}

/// The key of a remote's one LAN peer for `proto`: no destination, no id,
/// so that it never equals a datagram's.
#[inline(always)]
fn peer_key(remote: [u8; 4], proto: u8) -> FragKey {
    FragKey {
        src: remote,
        dst: [0; 4],
        id: 0,
        proto,
        _pad: 0,
    }
}

#[inline(always)]
fn insert(key: &FragKey, addr: [u8; 4], id: u16, now: u64) {
    let entry = FragEntry {
        created_ns: now,
        addr,
        fragments: 1,
        id,
    };
    // Full or not, an LRU takes it (evicting the least recently used).
    let _ = FRAGS.insert(key, entry, 0);
}

/// A fresh entry's (address, id); an expired one is removed and counted.
#[inline(always)]
fn fresh(key: &FragKey, timeout: u64, now: u64, len: usize) -> Option<([u8; 4], u16)> {
    let entry = FRAGS.get_ptr_mut(key)?;
    // SAFETY: a pointer returned by a map lookup; `fragments` is for the
    // table only, a lost increment between CPUs is harmless.
    unsafe {
        if now.saturating_sub((*entry).created_ns) > timeout {
            let _ = FRAGS.remove(key);
            count(Counter::FragExpired, len);
            return None;
        }
        (*entry).fragments = (*entry).fragments.wrapping_add(1);
        Some(((*entry).addr, (*entry).id))
    }
}

/// Tries at another IP id before a datagram is dropped: with ids drawn at
/// random, a miss means thousands of datagrams in flight to one remote.
const ID_TRIES: u32 = 4;

/// The key under which the remote sees a datagram that left the LAN: from
/// the WAN address, with the id it left with. It never equals a datagram's
/// own key (no LAN host has the WAN address) nor a peer key.
#[inline(always)]
fn outside_key(wan_addr: [u8; 4], dst: [u8; 4], proto: u8, id: u16) -> FragKey {
    FragKey {
        src: wan_addr,
        dst,
        id,
        proto,
        _pad: 0,
    }
}

/// The IP id a LAN host's datagram leaves with for `dst` (the remote, or
/// the LAN host a hairpinned datagram goes to). Every LAN datagram leaves
/// from the one WAN address, so two hosts' datagrams to one remote with
/// the same id and protocol would be reassembled as one there (RFC 6864
/// section 4.1): the first to leave holds the id for `FRAG_TIMEOUT_NS`,
/// and another host's datagram takes a random free id instead.
#[inline(always)]
fn claim_id(
    wan_addr: [u8; 4],
    hdr: &IpHeader,
    dst: [u8; 4],
    now: u64,
    len: usize,
) -> Result<u16, Counter> {
    let host = hdr.addr(Side::Source);
    let mut id = hdr.id();
    for _ in 0..ID_TRIES {
        let key = outside_key(wan_addr, dst, hdr.proto, id);
        // SAFETY: a map lookup, copied out at once.
        let holder = unsafe { FRAGS.get(key) }.copied();
        match holder {
            Some(entry)
                if entry.addr != host
                    && now.saturating_sub(entry.created_ns) <= FRAG_TIMEOUT_NS =>
            {
                // SAFETY: a helper without arguments.
                id = unsafe { bpf_get_prandom_u32() } as u16;
            }
            _ => {
                insert(&key, host, id, now);
                if id != hdr.id() {
                    count(Counter::FragIdRewritten, len);
                }
                return Ok(id);
            }
        }
    }
    Err(Counter::DropFragIdBusy)
}

/// A fragment (first or later) of a datagram leaving the LAN: the id its
/// datagram leaves with, the first of its fragments to arrive choosing it.
#[inline(always)]
fn outbound_id(wan_addr: [u8; 4], hdr: &IpHeader, now: u64, len: usize) -> Result<u16, Counter> {
    let key = datagram_key(hdr);
    if let Some((_, id)) = fresh(&key, FRAG_TIMEOUT_NS, now, len) {
        return Ok(id);
    }
    let id = claim_id(wan_addr, hdr, hdr.addr(Side::Destination), now, len)?;
    insert(&key, wan_addr, id, now);
    count(Counter::FragTracked, len);
    Ok(id)
}

/// A first fragment leaving the LAN, translated to the WAN address: its
/// datagram recorded for the fragments after it, and the IP id it leaves
/// with set. Nothing for a whole datagram.
#[inline(always)]
pub fn track_outbound(
    wan_addr: [u8; 4],
    hdr: &IpHeader,
    now: u64,
    len: usize,
) -> Result<(), Counter> {
    if !hdr.is_fragment() {
        return Ok(());
    }
    let id = outbound_id(wan_addr, hdr, now, len)?;
    rewrite_id(hdr, id);
    Ok(())
}

/// A first fragment from a LAN host to the WAN address, hairpinned to the
/// LAN host `to`: its datagram recorded (under its key as it arrived,
/// destination the WAN address, which no outbound datagram has) so that
/// the fragments after it follow, and the IP id it reaches `to` with set.
/// Nothing for a whole datagram.
#[inline(always)]
pub fn track_hairpin(
    wan_addr: [u8; 4],
    hdr: &IpHeader,
    to: [u8; 4],
    now: u64,
    len: usize,
) -> Result<(), Counter> {
    if !hdr.is_fragment() {
        return Ok(());
    }
    let id = claim_id(wan_addr, hdr, to, now, len)?;
    insert(&datagram_key(hdr), to, id, now);
    count(Counter::FragTracked, len);
    rewrite_id(hdr, id);
    Ok(())
}

/// A later fragment from a LAN host to the WAN address: to the LAN host
/// its first fragment was hairpinned to, from the WAN address. Without a
/// record (the router's own datagram, or its first fragment not seen yet):
/// the kernel's, which reassembles it for the router, and recorded as
/// held there, so that a first fragment hairpinned after it hands its
/// datagram to the relay (`hand_to_relay`).
#[inline(always)]
pub fn hairpin(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    hdr: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    if hdr.is_tcp_overlap() {
        return Err(Counter::DropMalformed);
    }
    let now = now_ns();
    let key = datagram_key(hdr);
    let Some((to, id)) = fresh(&key, FRAG_TIMEOUT_NS, now, len) else {
        insert(&key, config.wan_addr, hdr.id(), now);
        count(Counter::FragTracked, len);
        return Err(Counter::PassLocal);
    };
    if to == config.wan_addr {
        return Err(Counter::PassLocal);
    }
    let route = leaving_by(
        route_fragmentable(ctx, hdr, config.wan_addr, to)?,
        config.lan_ifindex,
    )?;
    rewrite_id(hdr, id);
    rewrite_addr(hdr, Side::Source, config.wan_addr);
    rewrite_addr(hdr, Side::Destination, to);
    redirect(ctx, eth, hdr, &route, Counter::FragTranslated, len)
}

/// A first fragment from outside has its verdict: its later fragments are
/// to go to `addr` (the WAN address itself: the router's own). Nothing for
/// a whole datagram.
#[inline(always)]
pub fn track_inbound(hdr: &IpHeader, addr: [u8; 4], now: u64, len: usize) {
    if !hdr.is_fragment() {
        return;
    }
    insert(&datagram_key(hdr), addr, hdr.id(), now);
    count(Counter::FragTracked, len);
}

/// `host` exchanges fragmented datagrams with `remote` in `proto`: the
/// remote's later fragments that come before their first may go to it,
/// unless another host does too (the entry then names nobody).
#[inline(always)]
pub fn note_peer(remote: [u8; 4], proto: u8, host: [u8; 4], now: u64) {
    let key = peer_key(remote, proto);
    // SAFETY: a map lookup, copied out at once.
    let addr = match unsafe { FRAGS.get(key) }.copied() {
        Some(peer)
            if peer.addr != host && now.saturating_sub(peer.created_ns) <= FRAG_PEER_TIMEOUT_NS =>
        {
            [0; 4]
        }
        // The same host (refreshed at most every timeout), or none yet.
        Some(peer)
            if peer.addr == host && now.saturating_sub(peer.created_ns) < FRAG_TIMEOUT_NS =>
        {
            return;
        }
        _ => host,
    };
    insert(&key, addr, 0, now);
}

/// A later fragment from a LAN host to the outside: its source becomes the
/// WAN address, whether or not its first fragment came first.
#[inline(always)]
pub fn outbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    hdr: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    if hdr.is_tcp_overlap() {
        return Err(Counter::DropMalformed);
    }
    let route = leaving_by(
        route_fragmentable(ctx, hdr, config.wan_addr, hdr.addr(Side::Destination))?,
        config.wan_ifindex,
    )?;
    let id = outbound_id(config.wan_addr, hdr, now_ns(), len)?;
    rewrite_id(hdr, id);
    rewrite_addr(hdr, Side::Source, config.wan_addr);
    redirect(ctx, eth, hdr, &route, Counter::FragTranslated, len)
}

/// A later fragment from outside for the WAN address: to the LAN host its
/// first fragment went to.
#[inline(always)]
pub fn inbound(
    ctx: &impl NatContext,
    config: &NatConfig,
    eth: *mut EthHdr,
    hdr: &IpHeader,
    len: usize,
) -> Result<u32, Counter> {
    if hdr.is_tcp_overlap() {
        return Err(Counter::DropMalformed);
    }
    let now = now_ns();
    let key = datagram_key(hdr);
    let remote = hdr.addr(Side::Source);
    let to = match fresh(&key, FRAG_TIMEOUT_NS, now, len) {
        Some((addr, _)) => addr,
        None => {
            // Before its first fragment: the remote's one LAN peer, if any.
            let peer = fresh(&peer_key(remote, hdr.proto), FRAG_PEER_TIMEOUT_NS, now, len)
                .map(|(addr, _)| addr)
                .filter(|addr| *addr != [0; 4]);
            let Some(peer) = peer else {
                // Nobody to name: the kernel holds it, and the rest of
                // its datagram, until the first fragment's verdict.
                insert(&key, config.wan_addr, hdr.id(), now);
                count(Counter::FragTracked, len);
                return Err(Counter::PassFragment);
            };
            insert(&key, peer, hdr.id(), now);
            count(Counter::FragTracked, len);
            peer
        }
    };
    if to == config.wan_addr {
        // The router's own datagram: the kernel reassembles it.
        return Err(Counter::PassFragment);
    }
    let route = leaving_by(
        route_fragmentable(ctx, hdr, remote, to)?,
        config.lan_ifindex,
    )?;
    rewrite_addr(hdr, Side::Destination, to);
    redirect(ctx, eth, hdr, &route, Counter::FragTranslated, len)
}

/// A first fragment from outside let in to `to`, whose datagram's later
/// fragments came first and are held by the kernel (`inbound`): true when
/// its target is recorded for the relay (the caller passes it for the
/// kernel to reassemble). UDP and TCP datagrams are steered by
/// `nat_relay_lookup` after reassembly, TCP ones to the relay's sink so
/// that the router's stack never answers them; ICMP replies need no
/// steering (the router's stack ignores a reply it asked nothing for).
/// The relay reads the TCP and ICMP ones from its raw sockets
/// (`nat_relay_filter`). A TCP datagram while no relay holds the sink
/// stays on the fast path and is lost, as it would be without the relay
/// (TCP retransmits): reassembled, the router's stack would answer it with
/// an RST, which would end the LAN host's connection.
///
/// A first fragment from a LAN host hairpinned to `to` (`lan::hairpin`)
/// whose later fragments came first and went to the kernel (`hairpin`) is
/// handed over alike, with `source_port`, the WAN address's port it
/// leaves from (0 for a datagram from outside, which keeps its source).
#[inline(always)]
pub fn hand_to_relay(
    config: &NatConfig,
    packet: &Ipv4Packet,
    to: Endpoint,
    source_port: u16,
    now: u64,
    len: usize,
) -> bool {
    if !packet.is_fragment() {
        return false;
    }
    let held = matches!(
        fresh(&datagram_key(packet), FRAG_TIMEOUT_NS, now, len),
        Some((addr, _)) if addr == config.wan_addr
    );
    if !held || (packet.proto == PROTO_TCP && !relay::sink_held()) {
        return false;
    }
    let target = RelayTarget {
        created_ns: now,
        addr: to.addr,
        port: to.port,
        source_port,
    };
    // An LRU takes it, full or not.
    let _ = RELAY_TARGETS.insert(relay_key(packet), target, 0);
    true
}

/// A packet from outside that the datapath hands to the router's own
/// stack (unsolicited) or drops: the relay target recorded for its remote
/// endpoint and external port (or ICMP id), if any, is withdrawn, so that
/// nothing the datapath no longer lets in reaches a LAN host through the
/// relay (a mapping removed, a session expired since its first fragment).
#[inline(always)]
pub fn withdraw_relay(packet: &Ipv4Packet) {
    let _ = RELAY_TARGETS.remove(relay_key(packet));
}

/// The `RELAY_TARGETS` key of a UDP, TCP or ICMP query datagram from
/// outside (an ICMP query's "ports" are both its id), as `relay.rs` builds
/// it from the reassembled datagram.
#[inline(always)]
fn relay_key(packet: &Ipv4Packet) -> SessionKey {
    let remote = packet.endpoint(Side::Source);
    crate::session::key_of(
        remote.addr,
        remote.port,
        packet.port(Side::Destination),
        packet.proto,
    )
}

/// Removes an expired `FRAGS` entry for the sweep; whether it did.
#[inline(always)]
pub fn expire(key: &FragKey, entry: &FragEntry, now: u64) -> bool {
    let timeout = if key.dst == [0; 4] {
        FRAG_PEER_TIMEOUT_NS
    } else {
        FRAG_TIMEOUT_NS
    };
    now.saturating_sub(entry.created_ns) > timeout && FRAGS.remove(key).is_ok()
}
