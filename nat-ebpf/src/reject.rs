//! What the router answers a LAN host whose new flow it cannot map (no free
//! external port, a full mapping table, or for a protocol translated by
//! address, its remote held by another LAN host): ICMP destination unreachable,
//! code 13, "communication administratively prohibited", and the packet
//! dropped (RFC 5508 REQ-8). The error is built in place of the packet
//! ([`NatContext::reshape`]) and sent back out of the NIC it came in by, at
//! most [`ERRORS_PER_SEC`] a second per CPU with bursts of [`BURST`]
//! (RFC 1812 section 4.3.2.8 asks a router to limit the errors it sends).
use aya_ebpf::helpers::bpf_get_prandom_u32;
use nat_common::{Counter, NatConfig, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    checksum::{CsumDelta, partial_fixed_point},
    context::NatContext,
    counters::count,
    lookup::{config, now_ns},
    maps::ICMP_ERROR_BUDGET,
    parse::{ICMP_DEST_UNREACHABLE, IpHeader, Side, frame_len, parse_frame_header},
};

/// "Communication administratively prohibited" (RFC 1812 section 5.2.7.1).
const CODE_PROHIBITED: u8 = 13;
/// What the error quotes beyond the offending IP header: the 8 bytes RFC
/// 792 asks for, which hold the ports (or the ICMP id) the host's stack
/// finds its socket by (TCP: `TCP_QUOTED_LEN`).
const QUOTED_L4_LEN: usize = 8;
/// The quoted TCP header: up to and with its checksum field, which a
/// pending partial checksum writes to (and `bpf_skb_change_tail` refuses
/// to cut).
const TCP_QUOTED_LEN: usize = 20;
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

/// The one's-complement sum of `bytes` as 16-bit words.
#[inline(always)]
fn sum_of<const N: usize>(bytes: &[u8; N]) -> CsumDelta {
    let mut sum = CsumDelta::default();
    for word in bytes.chunks_exact(2) {
        sum.word_folded(0, u16::from_be_bytes([word[0], word[1]]));
    }
    sum
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
/// The callers already keep out what else that section names: ICMP errors
/// and IP multicast or broadcast destinations; `answer` later fragments.
#[inline(always)]
fn may_answer(config: &NatConfig, eth: *mut EthHdr, packet: &IpHeader) -> bool {
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

/// The LAN flow's outcome, with a packet that got no mapping (no free
/// port, or no room in the table) answered. Done here, after the flow has
/// returned, rather than where the mapping failed: there the verifier
/// walked the answer for every way out of the port probes, past its limit
/// of a million instructions. The packet is still as it arrived (nothing
/// is rewritten before a mapping is found), so it is parsed again.
#[inline(always)]
pub fn answer_unmapped<C: NatContext>(
    ctx: &C,
    outcome: Result<u32, Counter>,
) -> Result<u32, Counter> {
    match outcome {
        Err(
            reason @ (Counter::DropPortExhausted | Counter::DropTableFull | Counter::DropProtoBusy),
        ) => answer(ctx, reason),
        other => other,
    }
}

/// A call of its own, so that its stack is not added to the LAN flow's.
#[inline(never)]
fn answer<C: NatContext>(ctx: &C, reason: Counter) -> Result<u32, Counter> {
    let Some(config) = config() else {
        return Err(reason);
    };
    // The IP header is enough: the flow parsed the rest when it had one,
    // and another protocol (GRE, ESP, ...) has none to parse.
    let Ok((eth, packet)) = parse_frame_header(ctx) else {
        return Err(reason);
    };
    // Only the first fragment of a datagram is answered (RFC 1812 section
    // 4.3.2.7).
    if packet.is_later_fragment() {
        return Err(reason);
    }
    prohibited(ctx, config, eth, &packet, reason, frame_len(ctx))
}

/// Answers `packet`, which could get no mapping for `reason`, with ICMP
/// "communication administratively prohibited" back to its sender, from
/// the router's LAN address. `reason` is counted either way (the packet
/// itself is dropped); the error, or that the budget was spent, besides.
///
/// The quote is the offending IP header and its first 8 bytes of data, or
/// for TCP its 20-byte header: the bytes up to and with its checksum
/// field. Where the packet may carry a pending partial checksum (TC), that
/// sum is still done on the way out, from the quoted L4 header into its
/// checksum field: the field is given the value the sum leaves unchanged
/// (`partial_fixed_point`), so the error is right whether or not the sum
/// is done. The quoted checksum is meaningless either way (RFC 5508 REQ-3c:
/// never validated).
#[inline(always)]
fn prohibited<C: NatContext>(
    ctx: &C,
    config: &NatConfig,
    eth: *mut EthHdr,
    packet: &IpHeader,
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
    // Where a pending partial checksum would write: TCP, UDP and ICMP
    // only (a protocol translated by address is never offloaded so).
    let (l4_len, check_at) = match packet.proto {
        PROTO_TCP => (TCP_QUOTED_LEN, Some(16)),
        PROTO_UDP => (QUOTED_L4_LEN, Some(6)),
        PROTO_ICMP => (QUOTED_L4_LEN, Some(2)),
        _ => (QUOTED_L4_LEN, None),
    };
    // From the IHL nibble, not `header_len()`: a bound the verifier can
    // follow into the helpers' lengths and offsets below.
    // SAFETY: in bounds by construction of `IpHeader`.
    let header_len = usize::from(unsafe { (*packet.ip).vihl } & 0x0f) * 4;
    let quote_len = header_len + l4_len;
    let error_len = EthHdr::LEN + PREFIX_LEN + quote_len;
    // The quote, copied out (zeros past its end add nothing to a sum): its
    // IP header, and its L4 bytes, which a pending partial checksum covers.
    let mut ip_bytes = [0u8; MAX_IP_HEADER_LEN];
    let mut l4_bytes = [0u8; TCP_QUOTED_LEN];
    if !ctx.load(EthHdr::LEN, &mut ip_bytes, header_len)
        || !ctx.load(EthHdr::LEN + header_len, &mut l4_bytes, l4_len)
    {
        return Err(reason);
    }
    let mut icmp_sum = sum_of(&ip_bytes);
    let mut l4_sum = sum_of(&l4_bytes);
    let mut field = match packet.proto {
        PROTO_TCP => u16::from_be_bytes([l4_bytes[16], l4_bytes[17]]),
        PROTO_UDP => u16::from_be_bytes([l4_bytes[6], l4_bytes[7]]),
        _ => u16::from_be_bytes([l4_bytes[2], l4_bytes[3]]),
    };
    let partial = C::MAY_BE_PARTIAL && check_at.is_some();
    if partial {
        let mut others = l4_sum;
        others.word(field, 0);
        let fixed = partial_fixed_point(others.value() as u16).ok_or(reason)?;
        l4_sum = others;
        l4_sum.word(0, fixed);
        field = fixed;
    }
    icmp_sum.merge(l4_sum);
    icmp_sum.word(
        0,
        u16::from_be_bytes([ICMP_DEST_UNREACHABLE, CODE_PROHIBITED]),
    );
    let tot_len = ((PREFIX_LEN + quote_len) as u16).to_be_bytes();
    // A datagram that may be fragmented needs an id of its own (RFC
    // 6864); a random one, as no other state is kept.
    // SAFETY: a helper without arguments.
    let id = (unsafe { bpf_get_prandom_u32() } as u16).to_be_bytes();
    let (lan, to) = (config.lan_addr, host);
    let mut ip_header = [
        0x45,
        // Precedence 6, "internetwork control", and the offending packet's
        // type of service (RFC 1812 section 4.3.2.5).
        0xc0 | (tos & 0x1c),
        tot_len[0],
        tot_len[1],
        id[0],
        id[1],
        0,
        0,
        64,
        PROTO_ICMP,
        0,
        0,
        lan[0],
        lan[1],
        lan[2],
        lan[3],
        to[0],
        to[1],
        to[2],
        to[3],
    ];
    let ip_check = sum_of(&ip_header).apply(0xffff).to_be_bytes();
    ip_header[10] = ip_check[0];
    ip_header[11] = ip_check[1];
    let icmp_check = icmp_sum.apply(0xffff).to_be_bytes();
    let mut headers = [0u8; EthHdr::LEN + PREFIX_LEN];
    headers[..6].copy_from_slice(&host_mac);
    headers[6..12].copy_from_slice(&router_mac);
    headers[12..14].copy_from_slice(&[0x08, 0x00]);
    headers[14..34].copy_from_slice(&ip_header);
    headers[34..42].copy_from_slice(&[
        ICMP_DEST_UNREACHABLE,
        CODE_PROHIBITED,
        icmp_check[0],
        icmp_check[1],
        0,
        0,
        0,
        0,
    ]);
    // Every packet pointer is stale from here on.
    if !ctx.reshape(PREFIX_LEN, error_len) {
        return Err(reason);
    }
    let l4_at = EthHdr::LEN + PREFIX_LEN + header_len;
    if let (true, Some(check_at)) = (partial, check_at)
        && !ctx.store(l4_at + check_at, &field.to_be_bytes())
    {
        return Err(reason);
    }
    if !ctx.store(0, &headers) {
        return Err(reason);
    }
    count(reason, len);
    count(Counter::IcmpProhibitedSent, error_len);
    Ok(ctx.bounce())
}
