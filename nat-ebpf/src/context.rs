//! What the datapath needs of the program it runs in, so that one flow
//! (`lan`, `wan`) serves both attach modes:
//!
//! - XDP (`XdpContext`): the frame is all there is; checksums are rewritten
//!   in place and the packet leaves through the `EGRESS` devmap.
//! - TC (`TcPacket`, over a `sched_cls` skb): the skb may carry
//!   CHECKSUM_PARTIAL (a veth, tap or virtio NIC with offloads hands those
//!   over: the L4 checksum field holds only the pseudo-header sum, the rest
//!   is summed on transmit) or be a GSO packet of many segments. Only the
//!   kernel knows which, so the L4 checksum deltas are recorded during the
//!   rewrite and applied at the end with `bpf_l4_csum_replace` (the
//!   addresses with `BPF_F_PSEUDO_HDR`, the ports without: under
//!   CHECKSUM_PARTIAL the kernel then updates only the pseudo-header part).
//!   They are applied last because the helper invalidates every packet
//!   pointer the flow still holds. The packet leaves with `bpf_redirect`.
//!
//! Everything else (parsing, lookups, bindings, sessions, header rewrites,
//! the FIB lookup, counters) is the same code for both.
// The TC_ACT_* constants are `i32` in the BPF target's bindings and `u32`
// in the host's (where clippy checks this file).
#![allow(clippy::unnecessary_cast)]

use core::{cell::Cell, ffi::c_void};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action,
    },
    helpers::{
        bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::{TcContext, XdpContext},
};
use nat_common::PROTO_UDP;

use crate::{
    checksum::{CsumDelta, load16, store16},
    maps::EGRESS,
    parse::{Datagram, ptr_at},
};

/// The few things that differ between XDP and TC.
pub trait NatContext {
    /// The action that hands the packet to the kernel's stack.
    const PASS: u32;
    /// The action that drops it.
    const DROP: u32;

    /// Start of the bytes the program may access directly (the Ethernet
    /// header).
    fn data(&self) -> usize;
    /// End of them: in TC only the linear part of the skb.
    fn data_end(&self) -> usize;
    /// The packet's whole length (in TC, all the segments of a GSO packet).
    fn packet_len(&self) -> usize;
    /// The NIC the packet arrived on.
    fn ifindex(&self) -> u32;
    /// The raw context, for helpers such as `bpf_fib_lookup`.
    fn raw(&self) -> *mut c_void;
    /// The length `bpf_fib_lookup` checks against the egress MTU: the IP
    /// datagram's, or for a GSO packet that of its segments.
    fn fib_tot_len(&self, packet: &impl Datagram) -> u16;
    /// Updates the packet's own L4 checksum at `check` for a rewrite that
    /// moved pseudo-header words by `pseudo` (zero for ICMP) and words the
    /// checksum covers by `covered`.
    fn l4_checksum(&self, check: *mut [u8; 2], proto: u8, pseudo: CsumDelta, covered: CsumDelta);
    /// Sends the finished packet out of `ifindex`; the action to return.
    fn redirect(&self, ifindex: u32) -> Option<u32>;
    /// Whether the packet may carry a checksum still to be summed on its
    /// way out (CHECKSUM_PARTIAL: in TC, from a veth, tap or virtio NIC):
    /// a reply built in its place must leave that sum unchanged
    /// (`reject`, `checksum::partial_fixed_point`).
    const MAY_BE_PARTIAL: bool;

    /// Makes the packet `len` bytes long, starting `grow` bytes before its
    /// present start, for a reply built in its place (`reject`); every
    /// packet pointer is stale afterwards. `false`: not done (the packet
    /// may be half reshaped, and is to be dropped).
    fn reshape(&self, grow: usize, len: usize) -> bool;
    /// Copies `len` bytes (at most `N`) from `offset` into `to`, through
    /// the load helper: a copy whose length the verifier need not follow
    /// through pointer arithmetic.
    fn load<const N: usize>(&self, offset: usize, to: &mut [u8; N], len: usize) -> bool;
    /// Writes `bytes` at `offset`, keeping the packet's checksum state
    /// right (TC: `skb->csum` of a CHECKSUM_COMPLETE skb); every packet
    /// pointer is stale afterwards.
    fn store<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> bool;
    /// Sends the packet back out of the NIC it came in by; the action to
    /// return.
    fn bounce(&self) -> u32;
}

/// The checksum field of a datagram rewritten in place, for XDP and for a
/// datagram quoted inside an ICMP error (which is payload, whatever the
/// skb's checksum state). Returns the delta of the field itself, for the
/// checksum of an enclosing ICMP error.
#[inline(always)]
pub fn rewrite_check(
    check: *mut [u8; 2],
    proto: u8,
    pseudo: CsumDelta,
    covered: CsumDelta,
) -> CsumDelta {
    let old = load16(check);
    let new = match proto {
        // A zero UDP checksum means "none" and must stay so.
        PROTO_UDP if old == 0 => 0,
        proto => {
            let mut delta = pseudo;
            delta.merge(covered);
            let new = delta.apply(old);
            // 0 would read as "no checksum" (RFC 768).
            if proto == PROTO_UDP && new == 0 {
                0xffff
            } else {
                new
            }
        }
    };
    store16(check, new);
    let mut changed = CsumDelta::default();
    changed.word(old, new);
    changed
}

impl NatContext for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const MAY_BE_PARTIAL: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn packet_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn fib_tot_len(&self, packet: &impl Datagram) -> u16 {
        packet.ip_header().tot_len()
    }

    #[inline(always)]
    fn l4_checksum(&self, check: *mut [u8; 2], proto: u8, pseudo: CsumDelta, covered: CsumDelta) {
        rewrite_check(check, proto, pseudo, covered);
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Option<u32> {
        EGRESS.redirect(ifindex, 0).ok()
    }

    #[inline(always)]
    fn reshape(&self, grow: usize, len: usize) -> bool {
        // SAFETY: the context is the program's; the helpers check the
        // deltas against the frame's head- and tailroom.
        unsafe {
            if bpf_xdp_adjust_head(self.ctx, -(grow as i32)) != 0 {
                return false;
            }
            // Opaque, or LLVM folds `len - (end - start)` into arithmetic
            // on the end pointer, which the verifier refuses.
            let now = core::hint::black_box(XdpContext::data_end(self) - XdpContext::data(self));
            bpf_xdp_adjust_tail(self.ctx, len as i32 - now as i32) == 0
        }
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, to: &mut [u8; N], len: usize) -> bool {
        let len = len.min(N) as u32;
        // SAFETY: the helper checks the range against the frame; `to`
        // holds at least `len` bytes.
        len != 0
            && unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, to.as_mut_ptr().cast(), len) }
                == 0
    }

    #[inline(always)]
    fn store<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> bool {
        let Some(to) = ptr_at::<[u8; N]>(self, offset) else {
            return false;
        };
        // SAFETY: bounds-checked just above.
        unsafe { *to = *bytes };
        true
    }

    #[inline(always)]
    fn bounce(&self) -> u32 {
        xdp_action::XDP_TX
    }
}

/// The L4 checksum update a TC program owes the packet, applied by
/// [`TcPacket::finish`].
#[derive(Clone, Copy, Default)]
struct PendingCheck {
    /// Offset of the checksum field from the start of the frame; 0: none.
    offset: u32,
    proto: u8,
    pseudo: CsumDelta,
    covered: CsumDelta,
}

/// A delta as the kernel's checksum helpers sum: 16-bit words read from
/// memory in the CPU's order, where `CsumDelta` reads them big-endian (the
/// one's-complement sum commutes with swapping the bytes of every word).
#[inline(always)]
fn kernel_order(delta: CsumDelta) -> u32 {
    u32::from(u16::from_ne_bytes((delta.value() as u16).to_be_bytes()))
}

/// Enough for the Ethernet header, an IPv4 header with options, an ICMP
/// header and the datagram it quotes (IPv4 header with options, 8 bytes):
/// `bpf_skb_pull_data` makes that much linear when it is not. Only paged
/// skbs pay for it (on veth a GSO packet, whose linear part holds just its
/// headers: once per tens of KB).
const HEADERS_LEN: u32 = 14 + 60 + 8 + 60 + 8;

/// A `sched_cls` skb on a NIC's ingress.
pub struct TcPacket {
    ctx: TcContext,
    pending: Cell<PendingCheck>,
}

impl TcPacket {
    /// Wraps the skb, first making its headers linear where they are not
    /// (direct access reaches only the linear part).
    #[inline(always)]
    pub fn new(ctx: TcContext) -> Self {
        let want = ctx.len().min(HEADERS_LEN);
        if ((ctx.data_end() - ctx.data()) as u32) < want {
            // On failure the parser finds the headers short: pass_malformed.
            let _ = ctx.pull_data(want);
        }
        Self {
            ctx,
            pending: Cell::new(PendingCheck::default()),
        }
    }

    /// The skb, for helpers such as a tail call.
    #[inline(always)]
    pub fn context(&self) -> &TcContext {
        &self.ctx
    }

    /// Applies the recorded L4 checksum update, after the flow is done with
    /// the packet's pointers (the helper invalidates them). Returns the
    /// action: `action`, or a drop if the checksum could not be written (the
    /// receiver would drop the packet anyway).
    #[inline(always)]
    pub fn finish(&self, action: u32) -> u32 {
        let pending = self.pending.get();
        if pending.offset == 0 {
            return action;
        }
        let offset = pending.offset as usize;
        // UDP: a zero checksum ("none") stays zero; a computed zero is sent
        // as 0xffff. Right under CHECKSUM_PARTIAL too: the field then holds
        // the folded pseudo-header sum, never 0 (the protocol number in it
        // is not), so the flag never skips an update there.
        let udp = if pending.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        // Size 0 in the flags: `to` is a checksum difference.
        let covered = match kernel_order(pending.covered) {
            0 => Ok(()),
            diff => self.ctx.l4_csum_replace(offset, 0, u64::from(diff), udp),
        };
        let pseudo = match kernel_order(pending.pseudo) {
            0 => Ok(()),
            diff => self.ctx.l4_csum_replace(
                offset,
                0,
                u64::from(diff),
                udp | u64::from(BPF_F_PSEUDO_HDR),
            ),
        };
        if covered.is_err() || pseudo.is_err() {
            return TC_ACT_SHOT as u32;
        }
        action
    }
}

impl NatContext for TcPacket {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    const MAY_BE_PARTIAL: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }

    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context is a valid __sk_buff.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.as_ptr()
    }

    /// A GSO packet (TSO on the sender, GRO) is longer than the MTU as a
    /// whole; what must fit is each segment: the IP and L4 headers and
    /// `gso_size` bytes of payload. A packet parsed only to its IP header
    /// (a later fragment, another protocol) is never GSO: its own length.
    #[inline(always)]
    fn fib_tot_len(&self, packet: &impl Datagram) -> u16 {
        let hdr = packet.ip_header();
        // SAFETY: the context is a valid __sk_buff.
        let gso_size = unsafe { (*self.ctx.skb.skb).gso_size } as usize;
        if gso_size == 0 {
            return hdr.tot_len();
        }
        let Some(l4_len) = packet.l4_header_len(self) else {
            return hdr.tot_len();
        };
        (hdr.header_len() + l4_len + gso_size).min(usize::from(u16::MAX)) as u16
    }

    #[inline(always)]
    fn l4_checksum(&self, check: *mut [u8; 2], proto: u8, pseudo: CsumDelta, covered: CsumDelta) {
        let mut pending = self.pending.get();
        pending.offset = (check as usize - self.ctx.data()) as u32;
        pending.proto = proto;
        pending.pseudo.merge(pseudo);
        pending.covered.merge(covered);
        self.pending.set(pending);
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> Option<u32> {
        // SAFETY: a plain helper call.
        let action = unsafe { bpf_redirect(ifindex, 0) };
        (action == TC_ACT_REDIRECT as i64).then_some(TC_ACT_REDIRECT as u32)
    }

    /// The tail cut first (`bpf_skb_change_tail`, which also makes a GSO
    /// packet a plain one: its segments would mean nothing once cut), then
    /// room after the Ethernet header (`bpf_skb_adjust_room`, which keeps
    /// `csum_start` on the bytes it pointed at: the old L4 header, now in
    /// the quote), then the whole of it made linear for direct access.
    #[inline(always)]
    fn reshape(&self, grow: usize, len: usize) -> bool {
        // SAFETY: a plain helper call on the program's skb.
        if unsafe { bpf_skb_change_tail(self.ctx.skb.skb, (len - grow) as u32, 0) } != 0 {
            return false;
        }
        if self
            .ctx
            .adjust_room(grow as i32, BPF_ADJ_ROOM_MAC, 0)
            .is_err()
        {
            return false;
        }
        self.ctx.pull_data(len as u32).is_ok()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, to: &mut [u8; N], len: usize) -> bool {
        let len = len.min(N) as u32;
        // SAFETY: as for XDP's.
        len != 0
            && unsafe {
                bpf_skb_load_bytes(
                    self.ctx.skb.skb.cast(),
                    offset as u32,
                    to.as_mut_ptr().cast(),
                    len,
                )
            } == 0
    }

    #[inline(always)]
    fn store<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> bool {
        self.ctx
            .store(offset, bytes, u64::from(BPF_F_RECOMPUTE_CSUM))
            .is_ok()
    }

    #[inline(always)]
    fn bounce(&self) -> u32 {
        self.redirect(self.ifindex()).unwrap_or(TC_ACT_SHOT as u32)
    }
}
