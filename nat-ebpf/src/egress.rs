//! The last stage: route by the kernel's FIB, rewrite the MACs, decrement the
//! TTL and redirect out of the egress NIC (the `EGRESS` devmap in XDP,
//! `bpf_redirect` in TC: [`NatContext::redirect`]).
//!
//! A FIB lookup is the largest single cost of a packet (some 100 ns of an
//! established flow's ~250 here), and nearly every packet asks the one
//! before it asked. Each CPU keeps the routes it looked up last
//! (`ROUTE_CACHE`) and reuses one while it is younger than
//! `ROUTE_CACHE_NS`, of the configuration's current `route_epoch` (which
//! the daemon moves on whenever the kernel reports a change of routes,
//! rules, neighbours, links or addresses), and the packet is no longer
//! than one the lookup let through. Only complete answers are kept: a
//! route whose next hop has no neighbour entry yet, or that needs
//! fragmentation, is looked up every time.
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
    lookup::now_ns,
    maps::{CONFIG, FIB_SCRATCH, ROUTE_CACHE},
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

/// `route` by a FIB lookup every time, never the cache: the benchmark's
/// plain forwarder.
#[inline(always)]
pub fn route_uncached<C: NatContext>(
    ctx: &C,
    packet: &impl Datagram,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Route, Counter> {
    let tot_len = ctx.fib_tot_len(packet);
    fib_lookup(ctx, packet.ip_header().proto, tot_len, src, dst)
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
pub struct AlignedFibParams(FibParams);

const FIB_PARAMS_WORDS: usize = size_of::<FibParams>() / 8;
const _: () = assert!(size_of::<FibParams>().is_multiple_of(8));

/// The lookup's parameters, all zeroes, cleared by eight 8-byte stores. A
/// plain `zeroed()` becomes a call to the BPF target's `memset`, a loop of
/// one-byte stores: some 320 instructions on every packet. The stores are
/// volatile so that LLVM cannot turn them back into that call.
#[inline(always)]
fn zeroed_fib_params<'a>(scratch: *mut AlignedFibParams) -> &'a mut FibParams {
    let words = scratch.cast::<u64>();
    for i in 0..FIB_PARAMS_WORDS {
        // SAFETY: within `scratch`, 8-byte aligned by `AlignedFibParams`.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was just written; all zeroes is a valid value of
    // this plain C struct. The caller holds the reference no longer than
    // its scratch (a per-CPU map value, or its own stack).
    unsafe { &mut (*scratch).0 }
}

/// How long a cached route is used: the longest a change the daemon does
/// not report (none is running, or its netlink socket overflowed) takes to
/// reach the fast path. At a million packets a second it leaves one FIB
/// lookup in some hundred thousand.
const ROUTE_CACHE_NS: u64 = 100_000_000;

pub const ROUTE_CACHE_SLOTS: u32 = 1 << ROUTE_CACHE_BITS;
const ROUTE_CACHE_BITS: u32 = 10;

/// One route a CPU looked up, with what it was looked up for.
#[repr(C)]
pub struct CachedRoute {
    /// When it was looked up (`now_ns`).
    stamp_ns: u64,
    src: [u8; 4],
    dst: [u8; 4],
    /// The NIC the packet came in on (the lookup's `ifindex`).
    iif: u32,
    /// The NIC it leaves by; 0 while the lookup is not complete (never
    /// made, in progress, or without an answer to keep).
    ifindex: u32,
    /// `NatConfig::route_epoch` when it was looked up.
    epoch: u32,
    /// The IP total length of the packet the lookup let through: the
    /// route's MTU is at least that.
    fits: u16,
    proto: u8,
    _pad: u8,
    smac: [u8; 6],
    dmac: [u8; 6],
    _pad2: [u8; 4],
}

/// The slot of `ROUTE_CACHE` for a lookup: a multiplicative hash of the
/// addresses, the ingress NIC and the protocol.
#[inline(always)]
fn route_slot(proto: u8, iif: u32, src: [u8; 4], dst: [u8; 4]) -> u32 {
    let word = ((u64::from(u32::from_ne_bytes(dst)) << 32) | u64::from(u32::from_ne_bytes(src)))
        ^ ((u64::from(iif) << 8) | u64::from(proto));
    (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ROUTE_CACHE_BITS)) as u32
}

/// The route for `proto` from `src` to `dst`, a packet of `tot_len`
/// bytes: this CPU's cached answer while it holds (see the module's
/// comment), else a FIB lookup, kept when it is complete.
#[inline(always)]
fn lookup<C: NatContext>(
    ctx: &C,
    proto: u8,
    tot_len: u16,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Route, Counter> {
    let iif = ctx.ifindex();
    let epoch = CONFIG.get(0).map_or(0, |config| config.route_epoch);
    let now = now_ns();
    let entry = ROUTE_CACHE
        .get_ptr_mut(route_slot(proto, iif, src, dst))
        .ok_or(Counter::PassNoRoute)?;
    // Off the stack, which the LAN flow's frames fill to the verifier's
    // limit already.
    let scratch = FIB_SCRATCH.get_ptr_mut(0).ok_or(Counter::PassNoRoute)?;
    let params = fib_params(scratch, proto, tot_len, iif, src, dst);
    // SAFETY (the blocks below): a per-CPU slot, only touched by this CPU
    // while the program runs.
    let hit = unsafe {
        (*entry).ifindex != 0
            && now.wrapping_sub((*entry).stamp_ns) < ROUTE_CACHE_NS
            && (*entry).epoch == epoch
            && (*entry).dst == dst
            && (*entry).src == src
            && (*entry).iif == iif
            && (*entry).proto == proto
            && tot_len <= (*entry).fits
    };
    // A hit fills in what the lookup would have, and both go on by the
    // same code: two ways to the same state, which the verifier explores
    // once, where two `Route`s built apart would double every path of the
    // program after this. A miss claims the slot before the lookup, so
    // that only the slot's pointer is kept across the call (the LAN flow
    // has no stack to spare for more), and completes it after.
    let rc = if hit {
        unsafe {
            params.ifindex = (*entry).ifindex;
            write_mac(&raw mut params.smac, (*entry).smac);
            write_mac(&raw mut params.dmac, (*entry).dmac);
        }
        i64::from(BPF_FIB_LKUP_RET_SUCCESS)
    } else {
        unsafe {
            (*entry).ifindex = 0;
            (*entry).stamp_ns = now;
            (*entry).src = src;
            (*entry).dst = dst;
            (*entry).iif = iif;
            (*entry).epoch = epoch;
            // Only a miss by length finds the slot fresh and of the same
            // key: `tot_len` is then the longest that fits yet.
            (*entry).fits = tot_len;
            (*entry).proto = proto;
        }
        // SAFETY: `params` is a valid, correctly sized bpf_fib_lookup.
        unsafe { bpf_fib_lookup(ctx.raw(), params, size_of::<FibParams>() as i32, 0) }
    };
    let route = route_of(params, rc)?;
    // A miss is known by its slot, not by `hit`: one value fewer kept
    // across the call.
    if route.neighbour_known && unsafe { (*entry).ifindex } == 0 {
        unsafe {
            write_mac(&raw mut (*entry).smac, route.smac);
            write_mac(&raw mut (*entry).dmac, route.dmac);
            (*entry).ifindex = route.ifindex;
        }
    }
    Ok(route)
}

/// `bpf_fib_lookup` itself, for the benchmark's plain forwarder.
#[inline(always)]
fn fib_lookup<C: NatContext>(
    ctx: &C,
    proto: u8,
    tot_len: u16,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Route, Counter> {
    let mut scratch = MaybeUninit::<AlignedFibParams>::uninit();
    let params = fib_params(
        scratch.as_mut_ptr(),
        proto,
        tot_len,
        ctx.ifindex(),
        src,
        dst,
    );
    // SAFETY: `params` is a valid, correctly sized bpf_fib_lookup.
    let rc = unsafe { bpf_fib_lookup(ctx.raw(), params, size_of::<FibParams>() as i32, 0) };
    route_of(params, rc)
}

/// The lookup's parameters for `proto` from `src` to `dst`, arriving on
/// `iif`.
#[inline(always)]
fn fib_params<'a>(
    scratch: *mut AlignedFibParams,
    proto: u8,
    tot_len: u16,
    iif: u32,
    src: [u8; 4],
    dst: [u8; 4],
) -> &'a mut FibParams {
    let params = zeroed_fib_params(scratch);
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = iif;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    params
}

/// The route a lookup's answer `rc` and its parameters say.
#[inline(always)]
fn route_of(params: &FibParams, rc: i64) -> Result<Route, Counter> {
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

/// Writes a MAC address byte by byte. As an array assignment between two
/// places LLVM cannot tell apart (a map value, the frame, the FIB
/// scratch), it becomes a `memmove`, which the BPF target has only as a
/// call to a byte-at-a-time loop: two of them on every established
/// packet, from the route cache into the lookup's parameters.
#[inline(always)]
fn write_mac(to: *mut [u8; 6], mac: [u8; 6]) {
    let to = to.cast::<u8>();
    // SAFETY: the caller's `to` is six writable bytes.
    unsafe {
        to.write(mac[0]);
        to.add(1).write(mac[1]);
        to.add(2).write(mac[2]);
        to.add(3).write(mac[3]);
        to.add(4).write(mac[4]);
        to.add(5).write(mac[5]);
    }
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
        write_mac(&raw mut (*eth).src_addr, route.smac);
        write_mac(&raw mut (*eth).dst_addr, route.dmac);
    }
    let action = ctx
        .redirect(route.ifindex)
        .ok_or(Counter::PassRedirectFailed)?;
    count(counter, frame_len);
    Ok(action)
}
