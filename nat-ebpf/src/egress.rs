//! The last stage: route by the kernel's FIB, rewrite the MACs, decrement the
//! TTL and redirect out of the egress NIC (the `EGRESS` devmap in XDP,
//! `bpf_redirect` in TC: [`NatContext::redirect`]).
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};
use nat_common::Counter;
use network_types::eth::EthHdr;

use crate::{
    context::NatContext,
    counters::count,
    parse::{Datagram, IpHeader},
    translate::decrement_ttl,
};

const AF_INET: u8 = 2;

pub struct Route {
    pub ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
    neighbour_known: bool,
    /// Larger than the egress MTU (DF clear): for the kernel to fragment.
    oversize: bool,
}

/// Looks up the route the packet will take once translated to `src -> dst`.
/// Done before any rewrite, so that a packet the fast path cannot finish
/// reaches the kernel as it arrived.
#[inline(always)]
pub fn route<C: NatContext>(
    ctx: &C,
    packet: &impl Datagram,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Route, Counter> {
    let tot_len = ctx.fib_tot_len(packet);
    lookup(ctx, packet.ip_header().proto, tot_len, src, dst)
}

/// `route`, if it leaves by `ifindex` (the WAN NIC for what goes out,
/// the LAN NIC for what comes in); routed elsewhere, the packet is not
/// ours to translate and goes to the kernel (`pass_local`).
#[inline(always)]
pub fn leaving_by(route: Route, ifindex: u32) -> Result<Route, Counter> {
    if route.ifindex == ifindex {
        Ok(route)
    } else {
        Err(Counter::PassLocal)
    }
}

/// As `route`, for a packet that may be fragmented on its way: larger than
/// the egress MTU with DF clear, it is routed all the same (by a lookup
/// that skips the MTU check), and `redirect` hands it to the kernel once
/// translated, to be fragmented with the translated header
/// (`pass_mtu_translated`). With DF set it stays `pass_mtu_exceeded`,
/// untranslated, so that the kernel's "fragmentation needed" goes back to
/// the sender quoting what it sent.
#[inline(always)]
pub fn route_fragmentable<C: NatContext>(
    ctx: &C,
    packet: &impl Datagram,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Route, Counter> {
    match route(ctx, packet, src, dst) {
        Err(Counter::PassMtuExceeded) if !packet.ip_header().dont_fragment() => {
            let hdr = packet.ip_header();
            // A length that fits any MTU: the lookup without its MTU
            // check. Not 0, which in TC would check the skb itself.
            let mut route = lookup(ctx, hdr.proto, hdr.header_len() as u16, src, dst)?;
            route.oversize = true;
            Ok(route)
        }
        other => other,
    }
}

/// `bpf_fib_lookup`'s parameters on an 8-byte boundary, so that they can be
/// cleared a word at a time (the verifier refuses misaligned stack stores).
#[repr(C, align(8))]
struct AlignedFibParams(FibParams);

const FIB_PARAMS_WORDS: usize = size_of::<FibParams>() / 8;
const _: () = assert!(size_of::<FibParams>().is_multiple_of(8));

/// The lookup's parameters, all zeroes, cleared by eight 8-byte stores. A
/// plain `zeroed()` becomes a call to the BPF target's `memset`, a loop of
/// one-byte stores: some 320 instructions on every packet. The stores are
/// volatile so that LLVM cannot turn them back into that call.
#[inline(always)]
fn zeroed_fib_params(scratch: &mut MaybeUninit<AlignedFibParams>) -> &mut FibParams {
    let words = scratch.as_mut_ptr().cast::<u64>();
    for i in 0..FIB_PARAMS_WORDS {
        // SAFETY: within `scratch`, 8-byte aligned by `AlignedFibParams`.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was just written; all zeroes is a valid value of
    // this plain C struct.
    unsafe { &mut (*scratch.as_mut_ptr()).0 }
}

#[inline(always)]
fn lookup<C: NatContext>(
    ctx: &C,
    proto: u8,
    tot_len: u16,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Route, Counter> {
    let mut scratch = MaybeUninit::<AlignedFibParams>::uninit();
    let params = zeroed_fib_params(&mut scratch);
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ifindex();
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: `params` is a valid, correctly sized bpf_fib_lookup.
    let rc = unsafe { bpf_fib_lookup(ctx.raw(), params, size_of::<FibParams>() as i32, 0) };
    let neighbour_known = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        // The egress is known; the kernel will resolve the next hop's MAC.
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Counter::PassMtuExceeded),
        BPF_FIB_LKUP_RET_NOT_FWDED => return Err(Counter::PassLocal),
        _ => return Err(Counter::PassNoRoute),
    };
    Ok(Route {
        ifindex: params.ifindex,
        smac: params.smac,
        dmac: params.dmac,
        neighbour_known,
        oversize: false,
    })
}

/// Sends the translated packet on its way and counts it under `counter`.
#[inline(always)]
pub fn redirect<C: NatContext>(
    ctx: &C,
    eth: *mut EthHdr,
    packet: &IpHeader,
    route: &Route,
    counter: Counter,
    frame_len: usize,
) -> Result<u32, Counter> {
    if route.oversize {
        // Translated already: the kernel fragments and forwards it.
        return Err(Counter::PassMtuTranslated);
    }
    if !route.neighbour_known {
        // Translated already: the kernel forwards it (and decrements the
        // TTL) while it resolves the neighbour for the packets after it.
        return Err(Counter::PassNoNeighbour);
    }
    decrement_ttl(packet);
    // SAFETY: `eth` was bounds-checked by the parser.
    unsafe {
        (*eth).src_addr = route.smac;
        (*eth).dst_addr = route.dmac;
    }
    let action = ctx
        .redirect(route.ifindex)
        .ok_or(Counter::PassRedirectFailed)?;
    count(counter, frame_len);
    Ok(action)
}
