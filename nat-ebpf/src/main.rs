//! The XDP NAT datapath. A packet goes through parse -> lookup -> binding
//! creation (first outbound packet only) -> session/filter -> translate
//! (with checksum) -> egress, each stage a small function in the file named
//! for it:
//!
//! - `parse`: Ethernet, IPv4 and the L4 header, also inside ICMP errors;
//!   what it yields (`Ipv4Packet`, `Endpoint`);
//! - `lookup`: table reads (configuration, static forwards and their
//!   allowed remotes, existing bindings; "forward rule, else binding" in
//!   both directions);
//! - `binding`: new dynamic mappings (port choice, bounded probes,
//!   `BPF_NOEXIST` claims);
//! - `session`: per-conversation state (filtering, TCP state, counts,
//!   new-connection events);
//! - `translate` and `checksum`: header rewrites and their incremental
//!   checksum updates;
//! - `frag`: IP fragments, the first by its L4 header, the later ones by
//!   the record of their datagram (`FRAGS`);
//! - `proto`: other IP protocols (GRE, ESP, ...), by address;
//! - `relay`: the `sk_lookup` program that steers datagrams the kernel
//!   reassembled for the fast path to the daemon's relay, and the socket
//!   filter of the relay's raw sockets;
//! - `egress`: FIB lookup, MAC rewrite, TTL, DEVMAP redirect;
//! - `validate`: the checksums of an ICMP error and of the header it
//!   quotes, before it is translated (RFC 5508 REQ-3, 3a);
//! - `reject`: the ICMP error the router sends a LAN host whose new flow
//!   it cannot map (RFC 5508 REQ-8);
//! - `counters`: per-CPU counters and the final verdict.
//!
//! `lan` and `wan` hold the per-direction flow (`try_nat_lan`,
//! `try_nat_wan`), `aging` the sweep (`try_nat_sweep`); the entry points
//! below are thin shims over them, in XDP (`nat_lan`, `nat_wan`) and in TC
//! (`nat_lan_tc`, `nat_wan_tc`), the difference between the two held by
//! `context`. `maps` declares the maps, `bench` the
//! benchmark-only programs.
// Built for the BPF target by nat-ctl's build script. `cargo clippy
// --workspace` also checks it for the host, where it is an ordinary std
// program with an empty main.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `ports`: the compare-and-swap the BPF target's atomics lack.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod aging;
mod bench;
mod binding;
mod checksum;
mod context;
mod counters;
mod egress;
mod frag;
mod lan;
mod lookup;
mod maps;
mod parse;
mod ports;
mod proto;
mod reject;
mod relay;
mod session;
mod session_table;
mod translate;
mod validate;
mod wan;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, sk_lookup, socket_filter, xdp},
    programs::{SkBuffContext, SkLookupContext, TcContext, XdpContext},
};
use context::TcPacket;

/// LAN ingress.
#[xdp]
pub fn nat_lan(ctx: XdpContext) -> u32 {
    let outcome = lan::try_nat_lan(&ctx);
    counters::settle(&ctx, reject::answer_unmapped(&ctx, outcome))
}

/// WAN ingress.
#[xdp]
pub fn nat_wan(ctx: XdpContext) -> u32 {
    counters::settle(&ctx, wan::try_nat_wan(&ctx))
}

/// LAN ingress in TC mode (`sched_cls`), for NICs that may hand over
/// partial checksums or GSO packets: the same flow over the same maps.
#[classifier]
pub fn nat_lan_tc(ctx: TcContext) -> i32 {
    let packet = TcPacket::new(ctx);
    let outcome = reject::answer_unmapped(&packet, lan::try_nat_lan(&packet));
    packet.finish(counters::settle(&packet, outcome)) as i32
}

/// WAN ingress in TC mode.
#[classifier]
pub fn nat_wan_tc(ctx: TcContext) -> i32 {
    let packet = TcPacket::new(ctx);
    let outcome = wan::try_nat_wan(&packet);
    packet.finish(counters::settle(&packet, outcome)) as i32
}

/// In the router's netns: reassembled datagrams for a recorded target to
/// the daemon's relay socket.
#[sk_lookup]
pub fn nat_relay_lookup(ctx: SkLookupContext) -> u32 {
    relay::try_relay_lookup(&ctx)
}

/// On the relay's raw TCP and ICMP sockets: only the reassembled datagrams
/// it sends on.
#[socket_filter]
pub fn nat_relay_filter(ctx: SkBuffContext) -> i64 {
    relay::try_relay_filter(&ctx)
}

/// The aging sweep; never attached, run through BPF_PROG_TEST_RUN.
#[xdp]
pub fn nat_sweep(_ctx: XdpContext) -> u32 {
    aging::try_nat_sweep()
}

/// For a veth peer, which accepts XDP-redirected frames only while it has an
/// XDP program of its own.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_fib_lookup is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
