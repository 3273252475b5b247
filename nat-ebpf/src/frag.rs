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
//!   map under a key with no destination) gets it; with none, or two of
//!   them, it is the router's (`pass_fragment`) or dropped by
//!   `unsolicited = drop` (`drop_frag_untracked`), never misdelivered.
//!
//! `FRAGS` is an LRU of `FRAGS_MAX` entries; an entry older than
//! `FRAG_TIMEOUT_NS` is not used (`frag_expired`) and the sweep removes it.
use nat_common::{
    Counter, FRAG_PEER_TIMEOUT_NS, FRAG_TIMEOUT_NS, FragEntry, FragKey, NatConfig, UNSOLICITED_DROP,
};
use network_types::eth::EthHdr;

use crate::{
    context::NatContext,
    counters::count,
    egress::{redirect, route_fragmentable},
    lookup::now_ns,
    maps::FRAGS,
    parse::{IpHeader, Side},
    translate::rewrite_addr,
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
fn insert(key: &FragKey, addr: [u8; 4], now: u64) {
    let entry = FragEntry {
        created_ns: now,
        addr,
        fragments: 1,
        _pad: [0; 2],
    };
    // Full or not, an LRU takes it (evicting the least recently used).
    let _ = FRAGS.insert(key, entry, 0);
}

/// The address of a fresh entry; an expired one is removed and counted.
#[inline(always)]
fn fresh(key: &FragKey, timeout: u64, now: u64, len: usize) -> Option<[u8; 4]> {
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
        Some((*entry).addr)
    }
}

/// A first fragment's verdict is known: its later fragments are to be
/// translated to `addr` (the source leaving the LAN, the destination
/// arriving from outside; the WAN address itself: the router's own).
/// Nothing for a whole datagram.
#[inline(always)]
pub fn track(hdr: &IpHeader, addr: [u8; 4], now: u64, len: usize) {
    if !hdr.is_fragment() {
        return;
    }
    insert(&datagram_key(hdr), addr, now);
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
    insert(&key, addr, now);
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
    let route = route_fragmentable(ctx, hdr, config.wan_addr, hdr.addr(Side::Destination))?;
    if route.ifindex != config.wan_ifindex {
        return Err(Counter::PassLocal);
    }
    let now = now_ns();
    let key = datagram_key(hdr);
    let addr = match fresh(&key, FRAG_TIMEOUT_NS, now, len) {
        Some(addr) => addr,
        None => {
            insert(&key, config.wan_addr, now);
            count(Counter::FragTracked, len);
            config.wan_addr
        }
    };
    rewrite_addr(hdr, Side::Source, addr);
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
        Some(addr) => addr,
        None => {
            // Before its first fragment: the remote's one LAN peer, if any.
            let peer = fresh(&peer_key(remote, hdr.proto), FRAG_PEER_TIMEOUT_NS, now, len)
                .filter(|addr| *addr != [0; 4]);
            let Some(peer) = peer else {
                return Err(untracked(config));
            };
            insert(&key, peer, now);
            count(Counter::FragTracked, len);
            peer
        }
    };
    if to == config.wan_addr {
        // The router's own datagram: the kernel reassembles it.
        return Err(Counter::PassFragment);
    }
    let route = route_fragmentable(ctx, hdr, remote, to)?;
    if route.ifindex != config.lan_ifindex {
        return Err(Counter::PassLocal);
    }
    rewrite_addr(hdr, Side::Destination, to);
    redirect(ctx, eth, hdr, &route, Counter::FragTranslated, len)
}

/// A later fragment from outside that no datagram or peer accounts for: the
/// router's own (the kernel reassembles it), or dropped as unsolicited.
#[inline(always)]
fn untracked(config: &NatConfig) -> Counter {
    if config.unsolicited == UNSOLICITED_DROP {
        Counter::DropFragUntracked
    } else {
        Counter::PassFragment
    }
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
