//! Frame parsing: Ethernet, then IPv4 and its L4 header. The same IPv4 parser
//! reads the header embedded in an ICMP error.
use core::{mem::size_of, ptr::addr_of_mut};

use nat_common::{Counter, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::context::NatContext;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

const TCP_HEADER_LEN: usize = 20;
/// What an ICMP error must quote of the offending datagram (RFC 792): its IP
/// header and the first 8 bytes of data, which hold both ports or the ICMP id.
const L4_PREFIX_LEN: usize = 8;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// An ICMP message is either a query (whose id is mapped like a port) or an
/// error (which quotes the packet it is about).

/// TCP header flags, as `Ipv4Packet::tcp_flags` holds them.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    NotIcmp,
    Query,
    Error,
    Other,
}

/// Pointers into the frame, every one bounds-checked against `data_end`.
pub struct Ipv4Packet {
    pub ip: *mut Ipv4Hdr,
    /// The first 8 bytes of the L4 header: ports, or ICMP type/code/csum/id.
    pub l4: *mut [u8; L4_PREFIX_LEN],
    pub proto: u8,
    pub icmp: IcmpKind,
    pub tcp_flags: u8,
    /// `None` when the checksum lies beyond the bytes an ICMP error quoted.
    pub l4_check: Option<*mut [u8; 2]>,
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &impl NatContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn frame_len(ctx: &impl NatContext) -> usize {
    ctx.packet_len()
}

/// Parses an Ethernet frame carrying IPv4; anything else is for the kernel.
#[inline(always)]
pub fn parse_frame(ctx: &impl NatContext) -> Result<(*mut EthHdr, Ipv4Packet), Counter> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Counter::PassMalformed)?;
    // SAFETY: `eth` was bounds-checked above.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    match ether_type {
        ETH_P_IP => {}
        ETH_P_8021Q | ETH_P_8021AD => return Err(Counter::PassVlan),
        _ => return Err(Counter::PassNotIpv4),
    }
    let packet = parse_ipv4(ctx, EthHdr::LEN, None)?;
    Ok((eth, packet))
}

/// Parses the IPv4 header at `offset` and the L4 header after it.
///
/// `quoted_end` is set for the datagram inside an ICMP error, to the offset
/// where the enclosing ICMP message ends: the quote is truncated by design,
/// so only its first 8 L4 bytes are required and its total length is not
/// checked. Whatever lies past that end (an Ethernet trailer) is not part of
/// the message and must be neither rewritten nor added to its checksum.
#[inline(always)]
fn parse_ipv4(
    ctx: &impl NatContext,
    offset: usize,
    quoted_end: Option<usize>,
) -> Result<Ipv4Packet, Counter> {
    let quoted = quoted_end.is_some();
    let ip: *mut Ipv4Hdr = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
    // SAFETY: `ip` was bounds-checked above.
    let (vihl, tot_len, frags, proto) = unsafe {
        (
            (*ip).vihl,
            usize::from(u16::from_be_bytes((*ip).tot_len)),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    let header_len = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || tot_len < header_len {
        return Err(Counter::PassMalformed);
    }
    if !quoted && offset + tot_len > frame_len(ctx) {
        return Err(Counter::PassMalformed);
    }
    // Later fragments carry no L4 header to translate by; the kernel gets
    // them all (a quoted first fragment still has its ports).
    let offset_bits = frags & IP_OFFSET_MASK;
    if offset_bits != 0 || (!quoted && frags & IP_MORE_FRAGMENTS != 0) {
        return Err(Counter::PassFragment);
    }

    let l4_offset = offset + header_len;
    // Whether the first `len` L4 bytes lie inside the enclosing ICMP
    // message. A datagram that is not quoted had its total length checked
    // against the frame already; checking again would let the compiler
    // prove the `ptr_at` checks redundant and drop them, which the verifier
    // cannot follow.
    let in_message = |len: usize| quoted_end.is_none_or(|end| l4_offset + len <= end);
    let l4: *mut [u8; L4_PREFIX_LEN] = ptr_at(ctx, l4_offset).ok_or(Counter::PassMalformed)?;
    if !in_message(L4_PREFIX_LEN) {
        return Err(Counter::PassMalformed);
    }
    let l4_len = tot_len - header_len;
    let (check_offset, min_len) = match proto {
        PROTO_TCP => (16, TCP_HEADER_LEN),
        PROTO_UDP => (6, L4_PREFIX_LEN),
        PROTO_ICMP => (2, L4_PREFIX_LEN),
        _ => return Err(Counter::PassUnsupportedProto),
    };
    if l4_len < min_len {
        return Err(Counter::PassMalformed);
    }
    let l4_check: Option<*mut [u8; 2]> =
        ptr_at(ctx, l4_offset + check_offset).filter(|_| in_message(check_offset + 2));
    if !quoted && l4_check.is_none() {
        return Err(Counter::PassMalformed);
    }

    let mut tcp_flags = 0;
    let mut icmp = IcmpKind::NotIcmp;
    // SAFETY: `l4` holds 8 checked bytes; the TCP header is checked below.
    unsafe {
        if proto == PROTO_TCP && !quoted {
            let tcp: *mut [u8; TCP_HEADER_LEN] =
                ptr_at(ctx, l4_offset).ok_or(Counter::PassMalformed)?;
            tcp_flags = (*tcp)[13];
        }
        if proto == PROTO_ICMP {
            icmp = match (*l4)[0] {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => IcmpKind::Query,
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    IcmpKind::Error
                }
                _ => IcmpKind::Other,
            };
        }
    }
    Ok(Ipv4Packet {
        ip,
        l4,
        proto,
        icmp,
        tcp_flags,
        l4_check,
    })
}

/// Parses the datagram quoted by the ICMP error `packet`, within the bounds
/// of the ICMP message.
#[inline(always)]
pub fn parse_quoted(ctx: &impl NatContext, packet: &Ipv4Packet) -> Result<Ipv4Packet, Counter> {
    let ip_offset = packet.ip as usize - ctx.data();
    let end = ip_offset + usize::from(packet.tot_len());
    parse_ipv4(
        ctx,
        packet.l4 as usize - ctx.data() + L4_PREFIX_LEN,
        Some(end),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// One end of a flow: an address and a port, or for an ICMP query its id,
/// which stands for the port on both ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u8; 4],
    pub port: u16,
}

impl Ipv4Packet {
    #[inline(always)]
    pub fn addr_ptr(&self, side: Side) -> *mut [u8; 4] {
        // SAFETY: in bounds by construction of `Ipv4Packet`.
        unsafe {
            match side {
                Side::Source => addr_of_mut!((*self.ip).src_addr),
                Side::Destination => addr_of_mut!((*self.ip).dst_addr),
            }
        }
    }

    #[inline(always)]
    pub fn addr(&self, side: Side) -> [u8; 4] {
        // SAFETY: as for `addr_ptr`.
        unsafe { *self.addr_ptr(side) }
    }

    /// The port of `side`; for an ICMP query its id, which stands for the
    /// port on both sides.
    #[inline(always)]
    pub fn port_ptr(&self, side: Side) -> *mut [u8; 2] {
        let offset = match (self.proto, side) {
            (PROTO_ICMP, _) => 4,
            (_, Side::Source) => 0,
            (_, Side::Destination) => 2,
        };
        (self.l4 as usize + offset) as *mut [u8; 2]
    }

    #[inline(always)]
    pub fn port(&self, side: Side) -> u16 {
        crate::checksum::load16(self.port_ptr(side))
    }

    #[inline(always)]
    pub fn endpoint(&self, side: Side) -> Endpoint {
        Endpoint {
            addr: self.addr(side),
            port: self.port(side),
        }
    }

    /// Meaningful only when `icmp` is not `NotIcmp`.
    #[inline(always)]
    pub fn icmp_type(&self) -> u8 {
        // SAFETY: `l4` holds 8 checked bytes.
        unsafe { (*self.l4)[0] }
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        // SAFETY: in bounds by construction.
        unsafe { (*self.ip).ttl }
    }

    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        // SAFETY: in bounds by construction.
        unsafe { u16::from_be_bytes((*self.ip).tot_len) }
    }
}
