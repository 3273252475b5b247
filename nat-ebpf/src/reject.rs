//! What the router answers a LAN host whose new flow it cannot map (no free
//! external port, or a full mapping table): ICMP destination unreachable,
//! code 13, "communication administratively prohibited", and the packet
//! dropped (RFC 5508 REQ-8). The error is built in place of the packet
//! ([`NatContext::reshape`]) and sent back out of the NIC it came in by, at
//! most [`ERRORS_PER_SEC`] a second per CPU with bursts of [`BURST`]
//! (RFC 1812 section 4.3.2.8 asks a router to limit the errors it sends).
use core::ptr::addr_of_mut;

use aya_ebpf::helpers::bpf_get_prandom_u32;
use nat_common::{Counter, NatConfig, PROTO_ICMP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    checksum::{CsumDelta, load16, store16},
    context::NatContext,
    counters::count,
    lookup::now_ns,
    maps::ICMP_ERROR_BUDGET,
    parse::{ICMP_DEST_UNREACHABLE, Ipv4Packet, Side, ptr_at},
};

/// "Communication administratively prohibited" (RFC 1812 section 5.2.7.1).
const CODE_PROHIBITED: u8 = 13;
/// What the error quotes beyond the offending IP header: the 8 bytes RFC
/// 792 asks for, which hold the ports (or the ICMP id) the host's stack
/// finds its socket by.
const QUOTED_L4_LEN: usize = 8;
/// The IP and ICMP headers put in front of the quote.
const PREFIX_LEN: usize = Ipv4Hdr::LEN + 8;
/// The longest quoted IP header (with 40 bytes of options).
const MAX_IP_HEADER_LEN: usize = 60;

/// Steady rate of the errors, per CPU.
pub const ERRORS_PER_SEC: u64 = 100;
/// How many may go at once after a quiet spell, per CPU.
pub const BURST: u64 = 10;
const INTERVAL_NS: u64 = 1_000_000_000 / ERRORS_PER_SEC;

/// A token bucket kept in nanoseconds of credit: one error costs
/// `INTERVAL_NS`, time earns credit up to `BURST` errors. Per CPU, so it
/// needs neither atomics nor a lock; the whole router sends at most the
/// number of CPUs times the rate.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ErrorBudget {
    credit_ns: u64,
    last_ns: u64,
}

/// Whether this CPU may send one more error now (and if so, spends it).
#[inline(always)]
fn take_budget(now: u64) -> bool {
    let Some(budget) = ICMP_ERROR_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, touched only by this CPU while the program
    // runs.
    unsafe {
        let earned = now.wrapping_sub((*budget).last_ns);
        let credit = (*budget)
            .credit_ns
            .saturating_add(earned)
            .min(BURST * INTERVAL_NS);
        (*budget).last_ns = now;
        if credit < INTERVAL_NS {
            (*budget).credit_ns = credit;
            return false;
        }
        (*budget).credit_ns = credit - INTERVAL_NS;
    }
    true
}

/// Whether an error may be sent about `packet` at all (RFC 1812 section
/// 4.3.2.7): never about a frame sent to a link-layer group address, and
/// only to a single host (not the LAN's network or broadcast address).
/// The callers already keep out what else that section names: ICMP errors,
/// later fragments, and IP multicast or broadcast destinations.
#[inline(always)]
fn may_answer(config: &NatConfig, eth: *mut EthHdr, packet: &Ipv4Packet) -> bool {
    // SAFETY: `eth` was bounds-checked by the parser.
    let group = unsafe { (*eth).dst_addr[0] } & 1 != 0;
    let src = u32::from_be_bytes(packet.addr(Side::Source));
    let host_bits = match config.lan_prefix_len {
        len @ 1..=30 => u32::MAX >> len,
        _ => 0,
    };
    let not_a_host = host_bits != 0 && (src & host_bits == 0 || src & host_bits == host_bits);
    config.lan_addr != [0; 4] && !group && !not_a_host
}

/// Answers `packet`, which could get no mapping for `reason`, with ICMP
/// "communication administratively prohibited" back to its sender, from
/// the router's LAN address. `reason` is counted either way (the packet
/// itself is dropped); the error, or that the budget was spent, besides.
#[inline(always)]
pub fn prohibited<C: NatContext>(
    ctx: &C,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &Ipv4Packet,
    reason: Counter,
    len: usize,
) -> Result<u32, Counter> {
    if !may_answer(config, eth, packet) {
        return Err(reason);
    }
    if !take_budget(now_ns()) {
        count(Counter::IcmpProhibitedRateLimited, len);
        return Err(reason);
    }
    // SAFETY: `eth` was bounds-checked by the parser.
    let (host_mac, router_mac) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    let host = packet.addr(Side::Source);
    // SAFETY: in bounds by construction of `IpHeader`.
    let tos = unsafe { (*packet.ip).tos };
    let quote_len = packet.header_len() + QUOTED_L4_LEN;
    let error_len = EthHdr::LEN + PREFIX_LEN + quote_len;
    // Every packet pointer is stale from here on.
    if !ctx.reshape(PREFIX_LEN, error_len) {
        return Err(reason);
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(reason)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(reason)?;
    let icmp: *mut [u8; 8] = ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN).ok_or(reason)?;
    let quote_at = EthHdr::LEN + PREFIX_LEN;
    let mut icmp_sum = CsumDelta::default();
    icmp_sum.word(0, u16::from_be_bytes([ICMP_DEST_UNREACHABLE, CODE_PROHIBITED]));
    for i in 0..(MAX_IP_HEADER_LEN + QUOTED_L4_LEN) / 2 {
        if 2 * i >= quote_len {
            break;
        }
        let word: *mut [u8; 2] = ptr_at(ctx, quote_at + 2 * i).ok_or(reason)?;
        icmp_sum.word(0, load16(word));
    }
    // SAFETY: all three bounds-checked just above.
    unsafe {
        (*eth).dst_addr = host_mac;
        (*eth).src_addr = router_mac;
        (*eth).ether_type = 0x0800u16.to_be();
        *icmp = [ICMP_DEST_UNREACHABLE, CODE_PROHIBITED, 0, 0, 0, 0, 0, 0];
        store16(addr_of_mut!((*icmp)[2]).cast(), icmp_sum.apply(0xffff));
        let tot_len = (PREFIX_LEN + quote_len) as u16;
        // Precedence 6, "internetwork control", and the offending packet's
        // type of service (RFC 1812 section 4.3.2.5).
        let tos = 0xc0 | (tos & 0x1c);
        *ip = Ipv4Hdr {
            vihl: 0x45,
            tos,
            tot_len: tot_len.to_be_bytes(),
            // A datagram that may be fragmented needs an id of its own
            // (RFC 6864); a random one, as no other state is kept.
            id: (bpf_get_prandom_u32() as u16).to_be_bytes(),
            frags: [0; 2],
            ttl: 64,
            proto: PROTO_ICMP,
            check: [0; 2],
            src_addr: config.lan_addr,
            dst_addr: host,
        };
        let mut ip_sum = CsumDelta::default();
        for word in 0..Ipv4Hdr::LEN / 2 {
            let at = (ip as usize + 2 * word) as *const [u8; 2];
            ip_sum.word(0, load16(at));
        }
        store16(addr_of_mut!((*ip).check), ip_sum.apply(0xffff));
    }
    count(reason, len);
    count(Counter::IcmpProhibitedSent, error_len);
    Ok(ctx.bounce())
}
