//! Benchmark-only programs (`natbench`, `cargo xtask bench`); `natctl` never
//! loads them. Names are in `nat_common::bench`.
//!
//! - `bench_gen`: the traffic generator. Driven by `BPF_PROG_TEST_RUN` in
//!   live-frames mode on a sending host's veth, it copies a frame template
//!   into every packet (the kernel recycles the pages without resetting
//!   them), varies the source port per packet for many flows, and returns
//!   `XDP_TX`.
//! - `bench_sink`: counts and drops; attached to the receiving host's veth
//!   (which also makes that veth accept redirected frames).
//! - `bench_fwd`: a plain XDP forwarder, the limit of this machine: the
//!   same parser and egress stage (FIB lookup, TTL, MAC rewrite,
//!   `EGRESS` redirect) as the NAT, without any translation.
//! - `bench_fwd_cached`: the same, routed by the NAT's route cache (the
//!   egress stage as the NAT runs it), for the report to say what the
//!   NAT's own work costs beside a forwarder that caches routes too.
//! - `bench_inserts`: the table writes a new mapping makes when it keeps
//!   the LAN port (its port's `PORT_OWNERS` claim, which is then the whole
//!   mapping, and its `SESSIONS` entry), under the keys `nat_lan` gives
//!   the packet's flow, and nothing else: what a new
//!   flow's cost owes to the kernel's tables rather than to the NAT's own
//!   work.
//! - `bench_redirect`: one `EGRESS` redirect by ingress ifindex and
//!   nothing else, the lab's fixed per-packet cost.
//! - `bench_restore`: for per-packet cost through `BPF_PROG_TEST_RUN` with
//!   `repeat`, where every run would otherwise see the frame the run before
//!   rewrote. It restores the template (moving the port on as the generator
//!   does), then tail-calls the program user space put in `BENCH_NEXT`: the
//!   real, unmodified `nat_lan` or `nat_wan`, `bench_fwd`, or `xdp_pass` for
//!   the baseline, so that every case pays the same restore and tail call.
//! - `bench_restore_tc`: the same for the TC programs on an skb, through
//!   `BENCH_NEXT_TC`: `nat_lan_tc`, `nat_wan_tc`, or `bench_tc_pass` (which
//!   only returns `TC_ACT_OK`) for the baseline.
// The TC_ACT_* constants are `i32` in the BPF target's bindings and `u32`
// in the host's (where clippy checks this file).
#![allow(clippy::unnecessary_cast)]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use nat_common::{
    Counter, TCP_STATE_NONE,
    bench::{BenchTemplate, TEMPLATE_MAX},
};

use crate::{
    checksum::{CsumDelta, load16, store16},
    context::{NatContext, TcPacket},
    counters::settle,
    egress::{redirect, route, route_uncached},
    lookup::{config, mapping_key, now_ns},
    maps::EGRESS,
    parse::{Side, frame_len, parse_frame, ptr_at},
    ports,
    session::{Conversation, new_session, session_key},
    session_table,
};

#[map(name = "BENCH_TEMPLATE")]
static BENCH_TEMPLATE: Array<BenchTemplate> = Array::with_max_entries(1, 0);

/// Packets generated so far: picks the next flow. One counter, not one
/// per CPU: a BPF_PROG_TEST_RUN loop may move to another CPU when it
/// yields, and a per-CPU count would then replay the flows from that CPU's
/// count, so that a run of "new" flows met mappings of its own. Only one
/// generator or test run uses it at a time.
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: Array<u64> = Array::with_max_entries(1, 0);

/// Slot 0: the program `bench_restore` hands the packet to.
#[map(name = "BENCH_NEXT")]
static BENCH_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: the TC program `bench_restore_tc` hands the skb to.
#[map(name = "BENCH_NEXT_TC")]
static BENCH_NEXT_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Frames the sink received, per CPU.
#[map(name = "BENCH_RX")]
static BENCH_RX: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const WORDS: usize = TEMPLATE_MAX / 4;
/// Offsets are masked so that the verifier sees them bounded.
const OFFSET_MASK: u32 = (TEMPLATE_MAX as u32) - 1;

/// Writes the template over the packet and moves its port on to the next
/// flow. `None` when there is no template or the packet is shorter.
#[inline(always)]
fn restore_template(ctx: &impl NatContext) -> Option<()> {
    let template = BENCH_TEMPLATE.get(0)?;
    let len = template.len as usize;
    for i in 0..WORDS {
        let offset = i * 4;
        if offset + 4 > len {
            break;
        }
        let dst: *mut [u8; 4] = ptr_at(ctx, offset)?;
        // SAFETY: `dst` was bounds-checked; `offset + 4 <= TEMPLATE_MAX`.
        unsafe {
            *dst = *(template.frame.as_ptr().add(offset) as *const [u8; 4]);
        }
    }
    if template.flows > 1 {
        let seq = BENCH_SEQ.get_ptr_mut(0)?;
        // SAFETY: a map value; only the one running generator or test
        // run touches it.
        let n = unsafe {
            let n = *seq;
            *seq = n + 1;
            n
        };
        let port = template
            .base_port
            .wrapping_add((n % u64::from(template.flows)) as u16);
        let port_ptr: *mut [u8; 2] = ptr_at(ctx, (template.port_offset & OFFSET_MASK) as usize)?;
        let old = load16(port_ptr);
        store16(port_ptr, port);
        if template.check_offset != 0 {
            let check: *mut [u8; 2] = ptr_at(ctx, (template.check_offset & OFFSET_MASK) as usize)?;
            let value = load16(check);
            // A zero UDP checksum means "none" and stays so.
            if value != 0 {
                let mut delta = CsumDelta::default();
                delta.word(old, port);
                store16(check, delta.apply(value));
            }
        }
    }
    Some(())
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match restore_template(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = BENCH_RX.get_ptr_mut(0) {
        // SAFETY: a map value; only the one running generator or test
        // run touches it.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

/// Routes the packet as it is, by a FIB lookup or, `CACHED`, the route
/// cache: no lookup of any NAT table, no rewrite but the TTL and the MACs.
#[inline(always)]
fn try_bench_fwd<const CACHED: bool>(ctx: &XdpContext) -> Result<u32, Counter> {
    let len = frame_len(ctx);
    let (eth, packet) = parse_frame(ctx)?;
    if packet.ttl() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let (src, dst) = (packet.addr(Side::Source), packet.addr(Side::Destination));
    let route = if CACHED {
        route(ctx, &packet, src, dst)?
    } else {
        route_uncached(ctx, &packet, src, dst)?
    };
    redirect(ctx, eth, &packet, &route, Counter::Forwarded, len)
}

#[xdp]
pub fn bench_fwd(ctx: XdpContext) -> u32 {
    settle(&ctx, try_bench_fwd::<false>(&ctx))
}

#[xdp]
pub fn bench_fwd_cached(ctx: XdpContext) -> u32 {
    settle(&ctx, try_bench_fwd::<true>(&ctx))
}

/// A new mapping's table writes and nothing else: parsed as `nat_lan`
/// parses, keyed as `nat_lan` keys them (`mapping_key`, `session_key`),
/// the LAN port kept as the external one, as a new mapping keeps it when
/// free, so its port's claim (which is then the whole mapping) and its
/// session; the session has no TCP state, as the bench's flows are UDP.
#[inline(always)]
fn try_bench_inserts(ctx: &XdpContext) -> Result<(), Counter> {
    let config = config().ok_or(Counter::PassLocal)?;
    let (_, packet) = parse_frame(ctx)?;
    let now = now_ns();
    let internal = packet.endpoint(Side::Source);
    let remote = packet.endpoint(Side::Destination);
    let port = internal.port;
    let outbound = mapping_key(config, packet.proto, internal, remote);
    if !ports::claim(port, &outbound, now) {
        return Err(Counter::DropPortExhausted);
    }
    let conversation = Conversation {
        proto: packet.proto,
        external_port: port,
        remote,
        tcp_flags: packet.tcp_flags,
    };
    let session = new_session(internal, TCP_STATE_NONE, now, frame_len(ctx));
    if session_table::insert::<session_table::Dynamic>(
        config,
        &session_key(config, &conversation),
        &session,
    ) {
        Ok(())
    } else {
        Err(Counter::DropTableFull)
    }
}

/// `XDP_DROP` once both writes are made, `XDP_ABORTED` if one fails.
#[xdp]
pub fn bench_inserts(ctx: XdpContext) -> u32 {
    match try_bench_inserts(&ctx) {
        Ok(()) => xdp_action::XDP_DROP,
        Err(_) => xdp_action::XDP_ABORTED,
    }
}

/// The lab's fixed cost: no parsing, no rewrite, one devmap redirect. The
/// benchmark keys `EGRESS` by the ingress ifindex, its value the other NIC.
#[xdp]
pub fn bench_redirect(ctx: XdpContext) -> u32 {
    // SAFETY: reading the ingress ifindex of the program's own context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    EGRESS
        .redirect(ingress, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    if restore_template(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: BENCH_NEXT holds XDP programs only.
    unsafe { BENCH_NEXT.tail_call(&ctx, 0) };
    // Reached only when the slot is empty.
    xdp_action::XDP_ABORTED
}

#[classifier]
pub fn bench_restore_tc(ctx: TcContext) -> i32 {
    let packet = TcPacket::new(ctx);
    if restore_template(&packet).is_none() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: BENCH_NEXT_TC holds TC programs only.
    unsafe { BENCH_NEXT_TC.tail_call(packet.context(), 0) };
    // Reached only when the slot is empty.
    TC_ACT_SHOT as i32
}

/// The TC baseline: nothing but the verdict.
#[classifier]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}
