//! Frame parsing: Ethernet, then IPv4 and its L4 header. The same IPv4 parser
//! reads the header embedded in an ICMP error.
use core::{mem::size_of, ptr::addr_of_mut};

use nat_common::{Counter, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::context::NatContext;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IP_DONT_FRAGMENT: u16 = 0x4000;
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
pub const ICMP_TIMESTAMP_REQUEST: u8 = 13;
pub const ICMP_TIMESTAMP_REPLY: u8 = 14;

/// TCP header flags, as `Ipv4Packet::tcp_flags` holds them.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An ICMP message is either a query (echo or timestamp, whose id is mapped
/// like a port) or an error (which quotes the packet it is about).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    NotIcmp,
    Query,
    Error,
    Other,
}

/// The IPv4 header of a packet, bounds-checked against `data_end`: all a
/// later fragment (no L4 header) has to be translated by.
#[derive(Clone, Copy)]
pub struct IpHeader {
    pub ip: *mut Ipv4Hdr,
    pub proto: u8,
    /// Flags and fragment offset, host order.
    pub frags: u16,
    /// Offset of the L4 header in the frame.
    l4_offset: usize,
    /// Bytes after the IP header, by its total length.
    l4_len: usize,
}

/// Pointers into the frame, every one bounds-checked against `data_end`.
/// Its IP header (`hdr`, also reached through `Deref`) comes first.
pub struct Ipv4Packet {
    pub hdr: IpHeader,
    /// The first 8 bytes of the L4 header: ports, or ICMP type/code/csum/id.
    pub l4: *mut [u8; L4_PREFIX_LEN],
    pub proto: u8,
    pub icmp: IcmpKind,
    pub tcp_flags: u8,
    /// `None` when the checksum lies beyond the bytes an ICMP error quoted.
    pub l4_check: Option<*mut [u8; 2]>,
}

impl core::ops::Deref for Ipv4Packet {
    type Target = IpHeader;

    #[inline(always)]
    fn deref(&self) -> &IpHeader {
        &self.hdr
    }
}

/// A parsed packet as the FIB lookup sees it ([`NatContext::fib_tot_len`]):
/// its IP header and, where the parser got that far, the length of its L4
/// header. A later fragment or a packet of another protocol has only the
/// IP header (`IpHeader`); a datagram with its L4 header is an `Ipv4Packet`.
pub trait Datagram {
    fn ip_header(&self) -> &IpHeader;
    /// The L4 header's length; `None` for a packet parsed only to its IP
    /// header.
    fn l4_header_len(&self, ctx: &impl NatContext) -> Option<usize>;
}

impl Datagram for IpHeader {
    #[inline(always)]
    fn ip_header(&self) -> &IpHeader {
        self
    }

    #[inline(always)]
    fn l4_header_len(&self, _ctx: &impl NatContext) -> Option<usize> {
        None
    }
}

impl Datagram for Ipv4Packet {
    #[inline(always)]
    fn ip_header(&self) -> &IpHeader {
        &self.hdr
    }

    /// Read only when asked (a GSO packet in TC): TCP's data offset, else
    /// the 8 bytes of a UDP or ICMP header.
    #[inline(always)]
    fn l4_header_len(&self, ctx: &impl NatContext) -> Option<usize> {
        if self.proto != PROTO_TCP {
            return Some(L4_PREFIX_LEN);
        }
        // The data offset; `parse_l4` checked the 20-byte header, this
        // check is for the verifier.
        let offset = self.l4 as usize + 12;
        if offset + 1 > ctx.data_end() {
            return None;
        }
        // SAFETY: bounds-checked just above.
        Some(usize::from(unsafe { *(offset as *const u8) } >> 4) * 4)
    }
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
    let (eth, hdr) = parse_frame_header(ctx)?;
    Ok((eth, parse_l4(ctx, hdr, None)?))
}

/// Parses an Ethernet frame carrying IPv4 up to the IP header, for a
/// caller that decides what a fragment or an L4 header it cannot parse
/// becomes; `parse_l4` goes on from there.
#[inline(always)]
pub fn parse_frame_header(ctx: &impl NatContext) -> Result<(*mut EthHdr, IpHeader), Counter> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Counter::PassMalformed)?;
    // SAFETY: `eth` was bounds-checked above.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    match ether_type {
        ETH_P_IP => {}
        ETH_P_8021Q | ETH_P_8021AD => return Err(Counter::PassVlan),
        _ => return Err(Counter::PassNotIpv4),
    }
    let hdr = parse_ip_header(ctx, EthHdr::LEN, false)?;
    Ok((eth, hdr))
}

/// The IPv4 header at `offset`. `quoted`: the datagram inside an ICMP
/// error, whose total length is not checked (the quote is truncated by
/// design).
#[inline(always)]
fn parse_ip_header(
    ctx: &impl NatContext,
    offset: usize,
    quoted: bool,
) -> Result<IpHeader, Counter> {
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
    Ok(IpHeader {
        ip,
        proto,
        frags,
        l4_offset: offset + header_len,
        l4_len: tot_len - header_len,
    })
}

/// The L4 header after `hdr`.
///
/// `quoted_end` is set for the datagram inside an ICMP error, to the offset
/// where the enclosing ICMP message ends: only its first 8 L4 bytes are
/// required. Whatever lies past that end (an Ethernet trailer) is not part
/// of the message and must be neither rewritten nor added to its checksum.
/// A later
/// fragment has none (`pass_fragment`: its caller asked `frag` first); a
/// first fragment has its L4 header like a whole datagram.
#[inline(always)]
pub fn parse_l4(
    ctx: &impl NatContext,
    hdr: IpHeader,
    quoted_end: Option<usize>,
) -> Result<Ipv4Packet, Counter> {
    let quoted = quoted_end.is_some();
    if hdr.is_later_fragment() {
        return Err(Counter::PassFragment);
    }
    let (proto, l4_len, l4_offset) = (hdr.proto, hdr.l4_len, hdr.l4_offset);

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
                ICMP_ECHO_REQUEST
                | ICMP_ECHO_REPLY
                | ICMP_TIMESTAMP_REQUEST
                | ICMP_TIMESTAMP_REPLY => IcmpKind::Query,
                ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    IcmpKind::Error
                }
                _ => IcmpKind::Other,
            };
        }
    }
    Ok(Ipv4Packet {
        hdr,
        l4,
        proto,
        icmp,
        tcp_flags,
        l4_check,
    })
}

/// What an ICMP error quotes: a datagram with its L4 header, or the IP
/// header of another protocol (translated by address), which must lie
/// inside the ICMP message whole.
pub enum Quoted {
    Datagram(Ipv4Packet),
    Other(IpHeader),
}

impl Quoted {
    /// The quoted IP header, whatever follows it.
    #[inline(always)]
    pub fn ip_header(&self) -> &IpHeader {
        match self {
            Quoted::Datagram(datagram) => &datagram.hdr,
            Quoted::Other(hdr) => hdr,
        }
    }
}

/// Parses what the ICMP error `packet` quotes, within the bounds of the
/// ICMP message: the IP header parsed once whatever the protocol.
#[inline(always)]
pub fn parse_quoted_any(ctx: &impl NatContext, packet: &Ipv4Packet) -> Result<Quoted, Counter> {
    // Offsets from the headers' lengths (an error is never inside a
    // tunnel: its IP header follows the Ethernet header), not from
    // differences of packet pointers, which the verifier cannot bound.
    let ip_offset = EthHdr::LEN;
    let end = ip_offset + usize::from(packet.tot_len());
    let hdr = parse_ip_header(ctx, ip_offset + packet.ihl_len() + L4_PREFIX_LEN, true)?;
    if !matches!(hdr.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
        if hdr.l4_offset > end {
            return Err(Counter::PassMalformed);
        }
        return Ok(Quoted::Other(hdr));
    }
    Ok(Quoted::Datagram(parse_l4(ctx, hdr, Some(end))?))
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

impl IpHeader {
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

    /// The IP header's length, options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.tot_len()) - self.l4_len
    }

    /// The IP header's length, options included, from its IHL nibble: a
    /// bound (at most 60) that the verifier follows into offsets and
    /// helper lengths, where `header_len` is a difference it cannot.
    #[inline(always)]
    pub fn ihl_len(&self) -> usize {
        // SAFETY: in bounds by construction.
        usize::from(unsafe { (*self.ip).vihl } & 0x0f) * 4
    }

    /// The IP identification, host order.
    #[inline(always)]
    pub fn id(&self) -> u16 {
        // SAFETY: in bounds by construction.
        unsafe { u16::from_be_bytes((*self.ip).id) }
    }

    /// A fragment of a datagram, first or later.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frags & (IP_MORE_FRAGMENTS | IP_OFFSET_MASK) != 0
    }

    /// A fragment after the first: no L4 header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frags & IP_OFFSET_MASK != 0
    }

    /// A later fragment at offset 8 bytes of a TCP datagram: it could only
    /// be there to overwrite the header's flags after the first fragment
    /// was judged (RFC 1858), so it is no fragment to translate.
    #[inline(always)]
    pub fn is_tcp_overlap(&self) -> bool {
        self.proto == PROTO_TCP && self.frags & IP_OFFSET_MASK == 1
    }

    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.frags & IP_DONT_FRAGMENT != 0
    }
}

impl Ipv4Packet {
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

    /// An ICMP query that asks (echo or timestamp request), not one that
    /// answers.
    #[inline(always)]
    pub fn is_icmp_request(&self) -> bool {
        matches!(self.icmp_type(), ICMP_ECHO_REQUEST | ICMP_TIMESTAMP_REQUEST)
    }

    /// Meaningful only when `icmp` is not `NotIcmp`.
    #[inline(always)]
    pub fn icmp_type(&self) -> u8 {
        // SAFETY: `l4` holds 8 checked bytes.
        unsafe { (*self.l4)[0] }
    }
}
