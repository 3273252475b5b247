//! Whether an ICMP error is worth translating: its own checksum, over the
//! whole ICMP message, and that of the IP header it quotes must both hold
//! (RFC 5508 REQ-3 and REQ-3a). The translation only adjusts checksums
//! (RFC 1624), so a bad one would leave as bad and its receiver would drop
//! it; but a NAT must not spend a lookup and a rewrite on it, nor let a
//! forged quote that the receiver would refuse reach the LAN at all.
//!
//! The sums are taken with `bpf_csum_diff` over copies (`NatContext::load`
//! into `SUM_SCRATCH`) of at most [`CHUNK`] bytes: the helper sums at most
//! 512 bytes, a multiple of 4, per call, and a copy reaches a TC skb's
//! paged part as well as its linear one.
use aya_ebpf::helpers::bpf_csum_diff;
use nat_common::Counter;
use network_types::eth::EthHdr;

use crate::{
    checksum::fold,
    context::NatContext,
    maps::{SUM_CHUNK, SUM_SCRATCH},
    parse::{Ipv4Packet, parse_quoted_any},
};

/// Bytes summed per helper call.
const CHUNK: usize = SUM_CHUNK;
/// The longest ICMP message that is verified. RFC 1812 (section 4.3.2.3)
/// keeps a router's errors within 576 bytes of IP datagram and Linux sends
/// no more; this is a whole Ethernet frame's worth and then some. A longer
/// one (only a jumbo-frame network's host would send it) is translated
/// unverified: its checksum is adjusted, not recomputed, so if bad it still
/// reaches its receiver bad, and is dropped there.
const MAX_VERIFIED_LEN: usize = 3 * CHUNK;
const CHUNKS: usize = MAX_VERIFIED_LEN / CHUNK;
/// Type, code, checksum and the 4 bytes before the quote.
const ICMP_HEADER_LEN: usize = 8;

/// `Err` with the drop reason when the ICMP error `packet`'s checksum is
/// bad (`drop_icmp_bad_checksum`), or that of the IP header it quotes
/// (`drop_icmp_bad_quoted_checksum`). A quote that does not parse is left
/// to the caller, which refuses it as it always did, unsummed.
///
/// A fragment of an error cannot be verified (its checksum covers the
/// whole message): it goes on unverified, as a too long message does. In
/// TC mode an skb whose ICMP checksum were still owed (CHECKSUM_PARTIAL)
/// would read as bad; `__sk_buff` does not show that state, but no stack
/// sends ICMP so (Linux sums it in software, and veth, tap and virtio
/// senders ask the offload for TCP and UDP), and the incremental
/// translation of such a packet would be wrong anyway.
#[inline(always)]
pub fn icmp_error(ctx: &impl NatContext, packet: &Ipv4Packet) -> Result<(), Counter> {
    if packet.is_fragment() {
        return Ok(());
    }
    // Offsets from the headers' lengths, not from pointer differences:
    // the verifier knows nothing of a difference of packet pointers, and
    // LLVM would reuse one where the parser adds its offsets back.
    let message_at = EthHdr::LEN + packet.ihl_len();
    let message_len = usize::from(packet.tot_len()) - packet.header_len();
    // A quote that does not parse is refused by the caller as it always
    // was (passed as malformed, or dropped as untranslatable).
    let Ok(quoted) = parse_quoted_any(ctx, packet) else {
        return Ok(());
    };
    if message_len <= MAX_VERIFIED_LEN && !sums_to_ones(ctx, message_at, message_len) {
        return Err(Counter::DropIcmpBadChecksum);
    }
    let quoted_at = message_at + ICMP_HEADER_LEN;
    if !sums_to_ones(ctx, quoted_at, quoted.ip_header().ihl_len()) {
        return Err(Counter::DropIcmpBadQuotedChecksum);
    }
    Ok(())
}

/// Whether the `len` bytes at `offset` (at most [`MAX_VERIFIED_LEN`]) sum
/// to 0xffff in one's complement, as a message with its checksum field
/// does.
#[inline(always)]
fn sums_to_ones<C: NatContext>(ctx: &C, offset: usize, len: usize) -> bool {
    let Some(chunk) = SUM_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, used only while this program runs on it.
    let chunk = unsafe { &mut *chunk };
    let words = len & !3;
    let mut sum = 0u32;
    // Counted down, so that the verifier sees each size as non-zero.
    let mut left = words;
    for index in 0..CHUNKS {
        if left == 0 {
            break;
        }
        let at = index * CHUNK;
        let size = left.min(CHUNK);
        left -= size;
        if !ctx.load(offset + at, chunk, size) {
            return false;
        }
        // SAFETY: the `size` bytes (a multiple of 4, at most CHUNK) of
        // `chunk` just copied.
        let partial = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                chunk.as_mut_ptr().cast(),
                size as u32,
                sum,
            )
        };
        if partial < 0 {
            return false;
        }
        sum = partial as u32;
    }
    // The last one to three bytes, zero-padded to a word as the checksum
    // pads an odd length.
    let rest = len & 3;
    if rest != 0 {
        let mut tail = [0u8; 4];
        if !ctx.load(offset + words, &mut tail, rest) {
            return false;
        }
        // SAFETY: four initialised bytes.
        let partial =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, tail.as_mut_ptr().cast(), 4, sum) };
        if partial < 0 {
            return false;
        }
        sum = partial as u32;
    }
    fold(sum) == 0xffff
}
