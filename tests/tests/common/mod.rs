//! Frame builders and an independent verifier for the packet tests.
//!
//! Frames are built with etherparse and every checksum of a frame the
//! datapath hands back is recomputed with etherparse, never with the
//! datapath's own checksum code.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpHeaders, IpNumber,
    Ipv4Header, PacketBuilder, PacketBuilderStep, TcpHeader, UdpHeader,
    icmpv4::DestUnreachableHeader,
};
use nat_tests::packet::*;

/// `REMOTE2` is inside 198.51.100.0/24 (the allow prefix the tests use),
/// `OTHER_REMOTE` outside it; `HOP` sends ICMP errors in transit.
#[allow(unused_imports)] // not every test file uses all three
pub use nat_tests::plan::{HOP, OTHER_REMOTE, REMOTE2};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

const ETH_LEN: usize = 14;

pub fn ep(addr: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(addr, port)
}

pub fn is_lan(addr: Ipv4Addr) -> bool {
    nat_tests::plan::is_lan(addr)
}

/// The MAC of a LAN host (made up for hosts the lab has no neighbour for).
pub fn host_mac(addr: Ipv4Addr) -> [u8; 6] {
    match addr {
        LAN_HOST => LAN_HOST_MAC,
        LAN_HOST2 => LAN_HOST2_MAC,
        _ => [0x02, 0, 0, 0, 0x0f, addr.octets()[3]],
    }
}

/// Ethernet source and destination of a frame as it reaches the router:
/// from a LAN host to the LAN NIC, or from the gateway to the WAN NIC.
pub fn ingress_macs(src: Ipv4Addr) -> ([u8; 6], [u8; 6]) {
    if is_lan(src) {
        (host_mac(src), LAN_MAC)
    } else {
        (GATEWAY_MAC, WAN_MAC)
    }
}

pub fn ip_builder(src: Ipv4Addr, dst: Ipv4Addr) -> PacketBuilderStep<IpHeaders> {
    let (smac, dmac) = ingress_macs(src);
    PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), 64)
}

pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    ip_builder(*src.ip(), *dst.ip())
        .udp(src.port(), dst.port())
        .write(&mut frame, payload)
        .unwrap();
    frame
}

pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = TcpHeader::new(src.port(), dst.port(), 0x1234_5678, 64240);
    header.fin = flags & FIN != 0;
    header.syn = flags & SYN != 0;
    header.rst = flags & RST != 0;
    header.psh = flags & PSH != 0;
    header.ack = flags & ACK != 0;
    if header.ack {
        header.acknowledgment_number = 0x0bad_cafe;
    }
    let mut frame = Vec::new();
    ip_builder(*src.ip(), *dst.ip())
        .tcp_header(header)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

pub const PING_DATA: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz!";

pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    ip_builder(src, dst)
        .icmpv4_echo_request(id, seq)
        .write(&mut frame, PING_DATA)
        .unwrap();
    frame
}

pub fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    ip_builder(src, dst)
        .icmpv4_echo_reply(id, seq)
        .write(&mut frame, PING_DATA)
        .unwrap();
    frame
}

/// An ICMP message whose body is `quote` (for an error: the offending IP
/// datagram, or its beginning).
pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, kind: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    ip_builder(src, dst)
        .icmpv4(kind)
        .write(&mut frame, quote)
        .unwrap();
    frame
}

/// An IPv4 packet of any protocol with an opaque payload.
pub fn raw_ip(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    ip_builder(src, dst)
        .write(&mut frame, IpNumber(proto), payload)
        .unwrap();
    frame
}

/// The IP datagram a frame carries (without Ethernet header or trailer).
pub fn datagram(frame: &[u8]) -> &[u8] {
    let total_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    &frame[ETH_LEN..ETH_LEN + total_len]
}

/// What an ICMP error quotes at least (RFC 792): the IP header and the
/// first 8 bytes of data.
pub fn minimal_quote(frame: &[u8]) -> &[u8] {
    let header_len = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    &frame[ETH_LEN..ETH_LEN + header_len + 8]
}

/// Rewrites the IP header through `change`, then fixes its total length
/// (the options may have changed size) and its checksum.
pub fn with_ip(frame: &[u8], change: impl FnOnce(&mut Ipv4Header)) -> Vec<u8> {
    let (eth, rest) = Ethernet2Header::from_slice(frame).unwrap();
    let (mut ip, rest) = Ipv4Header::from_slice(rest).unwrap();
    let (payload, trailer) = rest.split_at(usize::from(ip.payload_len().unwrap()));
    change(&mut ip);
    ip.set_payload_len(payload.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = eth.to_bytes().to_vec();
    out.extend_from_slice(&ip.to_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(trailer);
    out
}

/// The Internet checksum of `bytes`, for crafting broken input frames only.
fn inet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Overwrites raw bytes of the IP header (offsets relative to its start)
/// and fixes its checksum over the 20 base bytes, so that only the intended
/// field is wrong.
pub fn patch_ip(frame: &[u8], offset: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH_LEN + offset..ETH_LEN + offset + bytes.len()].copy_from_slice(bytes);
    out[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let check = inet_checksum(&out[ETH_LEN..ETH_LEN + 20]);
    out[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&check.to_be_bytes());
    out
}

/// The ICMP message of an untagged frame, from its header to the end of
/// the IP datagram.
fn icmp_message(frame: &[u8]) -> &[u8] {
    let header_len = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    &datagram(frame)[header_len..]
}

/// Overwrites raw bytes of an ICMP message (offsets relative to its
/// header; the IP header without options) and fixes the ICMP checksum over
/// the whole message, as a sender that set them would have.
pub fn patch_icmp(frame: &[u8], offset: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let icmp = ETH_LEN + 20;
    let total_len = usize::from(u16::from_be_bytes([out[ETH_LEN + 2], out[ETH_LEN + 3]]));
    out[icmp + offset..icmp + offset + bytes.len()].copy_from_slice(bytes);
    out[icmp + 2..icmp + 4].fill(0);
    let check = inet_checksum(&out[icmp..ETH_LEN + total_len]);
    out[icmp + 2..icmp + 4].copy_from_slice(&check.to_be_bytes());
    out
}

/// An RFC 4884 extension structure (version 2) holding `objects`, its
/// checksum set.
pub fn icmp_extension(objects: &[u8]) -> Vec<u8> {
    let mut structure = vec![0x20, 0, 0, 0];
    structure.extend_from_slice(objects);
    let check = inet_checksum(&structure);
    structure[2..4].copy_from_slice(&check.to_be_bytes());
    structure
}

/// A fixed-seed xorshift generator: "random" payloads that are the same on
/// every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(TcpHeader),
    Udp(UdpHeader),
    Icmp(Icmpv4Header),
}

/// The datagram quoted by an ICMP error.
#[derive(Clone, Debug)]
pub struct Quoted {
    pub ip: Ipv4Header,
    /// Whatever follows the quoted IP header (at least 8 bytes).
    pub data: Vec<u8>,
}

impl Quoted {
    fn port(&self, at: usize) -> u16 {
        if self.ip.protocol == IpNumber::ICMP {
            u16::from_be_bytes([self.data[4], self.data[5]])
        } else {
            u16::from_be_bytes([self.data[at], self.data[at + 1]])
        }
    }

    /// Source address and port (the id for an ICMP query).
    pub fn src(&self) -> SocketAddrV4 {
        ep(Ipv4Addr::from(self.ip.source), self.port(0))
    }

    pub fn dst(&self) -> SocketAddrV4 {
        ep(Ipv4Addr::from(self.ip.destination), self.port(2))
    }

    /// The quoted L4 checksum field.
    pub fn l4_checksum(&self) -> u16 {
        let at = match self.ip.protocol {
            IpNumber::TCP => 16,
            IpNumber::UDP => 6,
            _ => 2,
        };
        u16::from_be_bytes([self.data[at], self.data[at + 1]])
    }

    /// Whether the whole offending datagram was quoted.
    pub fn is_complete(&self) -> bool {
        self.data.len() == usize::from(self.ip.payload_len().unwrap())
    }
}

#[derive(Clone, Debug)]
pub struct Parsed {
    pub eth: Ethernet2Header,
    pub ip: Ipv4Header,
    pub l4: L4,
    /// The L4 payload (inside the IP total length).
    pub payload: Vec<u8>,
    /// Bytes of the frame after the IP datagram (Ethernet padding).
    pub trailer: Vec<u8>,
    pub quoted: Option<Quoted>,
}

impl Parsed {
    fn ports(&self) -> (u16, u16) {
        match &self.l4 {
            L4::Tcp(tcp) => (tcp.source_port, tcp.destination_port),
            L4::Udp(udp) => (udp.source_port, udp.destination_port),
            L4::Icmp(icmp) => match icmp.icmp_type {
                Icmpv4Type::EchoRequest(echo) | Icmpv4Type::EchoReply(echo) => (echo.id, echo.id),
                Icmpv4Type::TimestampRequest(ref ts) | Icmpv4Type::TimestampReply(ref ts) => {
                    (ts.id, ts.id)
                }
                _ => (0, 0),
            },
        }
    }

    /// Source address and port (the id for an ICMP query, 0 for others).
    pub fn src(&self) -> SocketAddrV4 {
        ep(Ipv4Addr::from(self.ip.source), self.ports().0)
    }

    pub fn dst(&self) -> SocketAddrV4 {
        ep(Ipv4Addr::from(self.ip.destination), self.ports().1)
    }

    pub fn ttl(&self) -> u8 {
        self.ip.time_to_live
    }

    pub fn icmp(&self) -> &Icmpv4Header {
        match &self.l4 {
            L4::Icmp(icmp) => icmp,
            other => panic!("not ICMP: {other:?}"),
        }
    }

    pub fn echo(&self) -> IcmpEchoHeader {
        match self.icmp().icmp_type {
            Icmpv4Type::EchoRequest(echo) | Icmpv4Type::EchoReply(echo) => echo,
            ref other => panic!("not an echo: {other:?}"),
        }
    }

    pub fn quoted(&self) -> &Quoted {
        self.quoted.as_ref().expect("not an ICMP error")
    }

    pub fn l4_checksum(&self) -> u16 {
        match &self.l4 {
            L4::Tcp(tcp) => tcp.checksum,
            L4::Udp(udp) => udp.checksum,
            L4::Icmp(icmp) => icmp.checksum,
        }
    }
}

fn is_icmp_error(kind: &Icmpv4Type) -> bool {
    matches!(
        kind,
        Icmpv4Type::DestinationUnreachable(_)
            | Icmpv4Type::TimeExceeded(_)
            | Icmpv4Type::ParameterProblem(_)
    )
}

/// Splits an Ethernet + IPv4 + TCP/UDP/ICMP frame into its parts.
pub fn parse(frame: &[u8]) -> Parsed {
    let (eth, rest) = Ethernet2Header::from_slice(frame).expect("Ethernet header");
    assert_eq!(eth.ether_type, EtherType::IPV4, "not IPv4");
    let (ip, rest) = Ipv4Header::from_slice(rest).expect("IPv4 header");
    let l4_len = usize::from(ip.payload_len().expect("IPv4 total length"));
    assert!(l4_len <= rest.len(), "IPv4 total length beyond the frame");
    let (l4_bytes, trailer) = rest.split_at(l4_len);
    let (l4, payload) = match ip.protocol {
        IpNumber::TCP => {
            let (tcp, payload) = TcpHeader::from_slice(l4_bytes).expect("TCP header");
            (L4::Tcp(tcp), payload)
        }
        IpNumber::UDP => {
            let (udp, payload) = UdpHeader::from_slice(l4_bytes).expect("UDP header");
            assert_eq!(usize::from(udp.length), l4_bytes.len(), "UDP length");
            (L4::Udp(udp), payload)
        }
        IpNumber::ICMP => {
            let (icmp, payload) = Icmpv4Header::from_slice(l4_bytes).expect("ICMP header");
            (L4::Icmp(icmp), payload)
        }
        other => panic!("unexpected protocol {other:?}"),
    };
    let quoted = match &l4 {
        L4::Icmp(icmp) if is_icmp_error(&icmp.icmp_type) => {
            let (qip, data) = Ipv4Header::from_slice(payload).expect("quoted IPv4 header");
            assert!(data.len() >= 8, "an ICMP error quotes 8 bytes of data");
            Some(Quoted {
                ip: qip,
                data: data.to_vec(),
            })
        }
        _ => None,
    };
    Parsed {
        eth,
        ip,
        l4,
        payload: payload.to_vec(),
        trailer: trailer.to_vec(),
        quoted,
    }
}

/// Verifies every checksum of the frame with etherparse: the IPv4 header,
/// TCP/UDP (with pseudo-header) or ICMP, and for an ICMP error the quoted
/// IPv4 header and, when the quote holds all of it, the quoted L4 checksum.
pub fn assert_checksums_ok(frame: &[u8]) -> Parsed {
    let p = parse(frame);
    assert_eq!(
        p.ip.header_checksum,
        p.ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    match &p.l4 {
        L4::Tcp(tcp) => assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv4(&p.ip, &p.payload).unwrap(),
            "TCP checksum"
        ),
        L4::Udp(udp) => {
            // Zero means "no checksum" (RFC 768).
            if udp.checksum != 0 {
                assert_eq!(
                    udp.checksum,
                    udp.calc_checksum_ipv4(&p.ip, &p.payload).unwrap(),
                    "UDP checksum"
                );
            }
        }
        // Summed over the raw message: etherparse's model of an error's
        // header has no room for RFC 4884's length byte.
        L4::Icmp(icmp) => assert_eq!(
            inet_checksum(icmp_message(frame)),
            0,
            "ICMP checksum {:#06x}",
            icmp.checksum
        ),
    }
    if let Some(q) = &p.quoted {
        assert_eq!(
            q.ip.header_checksum,
            q.ip.calc_header_checksum(),
            "quoted IPv4 header checksum"
        );
        if q.is_complete() {
            match q.ip.protocol {
                IpNumber::TCP => {
                    let (tcp, payload) = TcpHeader::from_slice(&q.data).unwrap();
                    assert_eq!(
                        tcp.checksum,
                        tcp.calc_checksum_ipv4(&q.ip, payload).unwrap(),
                        "quoted TCP checksum"
                    );
                }
                IpNumber::UDP => {
                    let (udp, payload) = UdpHeader::from_slice(&q.data).unwrap();
                    if udp.checksum != 0 {
                        assert_eq!(
                            udp.checksum,
                            udp.calc_checksum_ipv4(&q.ip, payload).unwrap(),
                            "quoted UDP checksum"
                        );
                    }
                }
                IpNumber::ICMP => {
                    let (icmp, payload) = Icmpv4Header::from_slice(&q.data).unwrap();
                    assert_eq!(
                        icmp.checksum,
                        icmp.icmp_type.calc_checksum(payload),
                        "quoted ICMP checksum"
                    );
                }
                _ => {}
            }
        }
    }
    p
}

/// Where a translated frame leaves the router.
#[derive(Clone, Copy, Debug)]
pub enum Egress {
    /// Out of the WAN NIC to the default gateway.
    Wan,
    /// Out of the LAN NIC to this LAN host.
    Lan(Ipv4Addr),
}

impl Egress {
    pub fn macs(self) -> ([u8; 6], [u8; 6]) {
        match self {
            Egress::Wan => (WAN_MAC, GATEWAY_MAC),
            Egress::Lan(host) => (LAN_MAC, host_mac(host)),
        }
    }
}

/// Checks a frame the datapath redirected: the verdict, the MACs of the
/// egress NIC and the next hop, the TTL decremented by one, the new
/// endpoints, every checksum, and that nothing else changed.
pub fn assert_routed(
    verdict: &Verdict,
    input: &[u8],
    egress: Egress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> Parsed {
    assert_eq!(verdict.action, XDP_REDIRECT, "verdict");
    let out = assert_checksums_ok(&verdict.frame);
    let (smac, dmac) = egress.macs();
    assert_eq!(out.eth.source, smac, "source MAC");
    assert_eq!(out.eth.destination, dmac, "destination MAC");
    assert_translated(&out, input, src, dst, 1);
    out
}

/// Checks a translated frame against the one that went in: endpoints as
/// given, TTL lower by `hops`, every other header field, the payload and
/// any trailer unchanged.
pub fn assert_translated(
    out: &Parsed,
    input: &[u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    hops: u8,
) {
    let inp = parse(input);
    assert_eq!(out.src(), src, "source endpoint");
    assert_eq!(out.dst(), dst, "destination endpoint");
    assert_eq!(out.ttl(), inp.ttl() - hops, "TTL");
    let mut expected_ip = inp.ip.clone();
    expected_ip.source = out.ip.source;
    expected_ip.destination = out.ip.destination;
    expected_ip.time_to_live = out.ip.time_to_live;
    expected_ip.header_checksum = out.ip.header_checksum;
    assert_eq!(out.ip, expected_ip, "other IPv4 header fields");
    let mut expected_l4 = inp.l4.clone();
    match (&mut expected_l4, &out.l4) {
        (L4::Tcp(e), L4::Tcp(o)) => {
            e.source_port = o.source_port;
            e.destination_port = o.destination_port;
            e.checksum = o.checksum;
        }
        (L4::Udp(e), L4::Udp(o)) => {
            e.source_port = o.source_port;
            e.destination_port = o.destination_port;
            e.checksum = o.checksum;
        }
        (L4::Icmp(e), L4::Icmp(o)) => {
            if let (
                Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e),
                Icmpv4Type::EchoRequest(o) | Icmpv4Type::EchoReply(o),
            ) = (&mut e.icmp_type, &o.icmp_type)
            {
                e.id = o.id;
            }
            if let (
                Icmpv4Type::TimestampRequest(e) | Icmpv4Type::TimestampReply(e),
                Icmpv4Type::TimestampRequest(o) | Icmpv4Type::TimestampReply(o),
            ) = (&mut e.icmp_type, &o.icmp_type)
            {
                e.id = o.id;
            }
            e.checksum = o.checksum;
        }
        _ => panic!("protocol changed"),
    }
    assert_eq!(out.l4, expected_l4, "other L4 header fields");
    if inp.quoted.is_none() {
        assert_eq!(out.payload, inp.payload, "payload");
    }
    assert_eq!(out.trailer, inp.trailer, "bytes after the datagram");
}

/// Checks an ICMP error the datapath redirected: the outer packet as
/// `assert_routed` does, the quoted endpoints, every checksum (quoted ones
/// included), and that the rest of the quote is unchanged.
pub fn assert_error_routed(
    verdict: &Verdict,
    input: &[u8],
    egress: Egress,
    outer: (Ipv4Addr, Ipv4Addr),
    quoted_src: SocketAddrV4,
    quoted_dst: SocketAddrV4,
) -> Parsed {
    let out = assert_routed(verdict, input, egress, ep(outer.0, 0), ep(outer.1, 0));
    let inp = parse(input);
    let (q, qin) = (out.quoted(), inp.quoted());
    assert_eq!(q.src(), quoted_src, "quoted source");
    assert_eq!(q.dst(), quoted_dst, "quoted destination");
    let mut expected_ip = qin.ip.clone();
    expected_ip.source = q.ip.source;
    expected_ip.destination = q.ip.destination;
    expected_ip.header_checksum = q.ip.header_checksum;
    assert_eq!(q.ip, expected_ip, "other quoted IPv4 header fields");
    assert_eq!(q.data.len(), qin.data.len(), "quote length");
    // Past the ports (or ICMP id) and the L4 checksum, the quote is as sent.
    let (ports, check) = match q.ip.protocol {
        IpNumber::TCP => (0..4, 16..18),
        IpNumber::UDP => (0..4, 6..8),
        _ => (4..6, 2..4),
    };
    for i in 0..q.data.len() {
        if !ports.contains(&i) && !check.contains(&i) {
            assert_eq!(q.data[i], qin.data[i], "quoted byte {i}");
        }
    }
    out
}

/// Checks that the datapath handed the frame to the kernel as it came.
pub fn assert_passed_untouched(verdict: &Verdict, input: &[u8]) {
    assert_eq!(verdict.action, XDP_PASS, "verdict");
    assert_eq!(verdict.frame, input, "a passed frame must not be modified");
}

/// Checks that the datapath dropped the frame.
pub fn assert_dropped(verdict: &Verdict) {
    assert_eq!(verdict.action, XDP_DROP, "verdict");
}

/// Counter value by label, 0 for a counter never hit.
pub fn counter(lab: &PacketLab, label: &str) -> u64 {
    let counters = lab.counters().unwrap();
    assert!(
        nat_common::Counter::ALL.iter().any(|c| c.label() == label),
        "no counter named {label}"
    );
    counters.get(label).copied().unwrap_or(0)
}

/// Asserts several counters at once, naming every mismatch.
pub fn assert_counters(lab: &PacketLab, expected: &[(&str, u64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|&(label, want)| {
            let got = counter(lab, label);
            (got != want).then(|| format!("{label}: expected {want}, got {got}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "counters: {}\nall: {:?}",
        wrong.join("; "),
        lab.counters().unwrap()
    );
}

/// The IPv4 header checksum of `header` (its checksum field included:
/// 0 when it is right).
fn ip_header_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn set_ip_checksum(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let sum = ip_header_sum(header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Splits the datagram of `frame` into fragments of at most `chunk` data
/// bytes (a multiple of 8), each a frame with its own IPv4 header: the
/// same id, DF clear, MF on all but the last.
pub fn fragment(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let data = &frame[14 + ihl..14 + total];
    data.chunks(chunk)
        .enumerate()
        .map(|(i, piece)| {
            let mut out = frame[..14 + ihl].to_vec();
            let offset = (i * chunk / 8) as u16;
            let more = (i + 1) * chunk < data.len();
            let len = (ihl + piece.len()) as u16;
            out[16..18].copy_from_slice(&len.to_be_bytes());
            out[20..22].copy_from_slice(&(offset | if more { 0x2000 } else { 0 }).to_be_bytes());
            set_ip_checksum(&mut out[14..14 + ihl]);
            out.extend_from_slice(piece);
            out
        })
        .collect()
}

/// The (MF, offset in bytes, id) of a fragment frame, checking its IPv4
/// header checksum.
pub fn fragment_fields(frame: &[u8]) -> (bool, usize, u16) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    assert_eq!(
        ip_header_sum(&frame[14..14 + ihl]),
        0,
        "IPv4 header checksum"
    );
    let frags = u16::from_be_bytes([frame[20], frame[21]]);
    (
        frags & 0x2000 != 0,
        usize::from(frags & 0x1fff) * 8,
        u16::from_be_bytes([frame[18], frame[19]]),
    )
}

/// Puts fragment frames (in any order) back together into the frame of
/// their whole datagram, with the first one's Ethernet and IPv4 headers;
/// every IPv4 header checksum is checked on the way.
pub fn reassemble(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut pieces: Vec<(usize, &[u8])> = frames
        .iter()
        .map(|frame| {
            let (_, offset, _) = fragment_fields(frame);
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            (offset, &frame[14 + ihl..14 + total])
        })
        .collect();
    pieces.sort_by_key(|(offset, _)| *offset);
    let first = frames
        .iter()
        .find(|frame| fragment_fields(frame).1 == 0)
        .expect("no first fragment");
    let ihl = usize::from(first[14] & 0x0f) * 4;
    let mut out = first[..14 + ihl].to_vec();
    for (offset, data) in pieces {
        assert_eq!(out.len() - 14 - ihl, offset, "a hole or an overlap");
        out.extend_from_slice(data);
    }
    let len = (out.len() - 14) as u16;
    out[16..18].copy_from_slice(&len.to_be_bytes());
    out[20..22].copy_from_slice(&0u16.to_be_bytes());
    set_ip_checksum(&mut out[14..14 + ihl]);
    out
}

/// Checks a frame of a protocol without ports that the datapath
/// redirected: the egress MACs, the new addresses, TTL one lower, the IPv4
/// header checksum, and every byte after the IPv4 header unchanged.
pub fn assert_addr_routed(
    verdict: &Verdict,
    input: &[u8],
    egress: Egress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    assert_eq!(verdict.action, XDP_REDIRECT, "verdict");
    let out = &verdict.frame;
    let (smac, dmac) = egress.macs();
    assert_eq!(out[6..12], smac, "source MAC");
    assert_eq!(out[..6], dmac, "destination MAC");
    assert_eq!(
        fragment_fields(out),
        fragment_fields(input),
        "id, MF, offset"
    );
    assert_eq!(out[26..30], src.octets(), "source address");
    assert_eq!(out[30..34], dst.octets(), "destination address");
    assert_eq!(out[22], input[22] - 1, "TTL");
    assert_eq!(out[34..], input[34..], "everything after the IPv4 header");
}

// Fragments, for `fragments.rs` and `packets_tc.rs`.

/// The IP id of the fragmented datagrams the tests build.
pub const ID: u16 = 0x1234;

/// `frame` with IP id `id` and DF clear: a datagram that may be
/// fragmented.
pub fn with_id(frame: &[u8], id: u16) -> Vec<u8> {
    with_ip(frame, |ip| {
        ip.identification = id;
        ip.dont_fragment = false;
    })
}

/// The datagram of each protocol, `len` bytes of payload, from `src` to
/// `dst` (the ICMP id is `src`'s port).
pub fn datagram_of(proto: &str, src: SocketAddrV4, dst: SocketAddrV4, len: usize) -> Vec<u8> {
    let payload = Rng::new(len as u64).bytes(len);
    let frame = match proto {
        "udp" => udp(src, dst, &payload),
        "tcp" => tcp(src, dst, ACK | PSH, &payload),
        _ => {
            let mut frame = Vec::new();
            ip_builder(*src.ip(), *dst.ip())
                .icmpv4_echo_request(src.port(), 1)
                .write(&mut frame, &payload)
                .unwrap();
            frame
        }
    };
    with_id(&frame, ID)
}

/// Runs `fragments` through one side in the order given; every one must
/// be redirected. Returns the frames that came out, in that order.
pub fn through(lab: &mut PacketLab, from_lan: bool, fragments: &[Vec<u8>]) -> Vec<Vec<u8>> {
    fragments
        .iter()
        .map(|frame| {
            let v = if from_lan {
                lab.from_lan(frame).unwrap()
            } else {
                lab.from_wan(frame).unwrap()
            };
            assert_eq!(
                v.action,
                XDP_REDIRECT,
                "fragment {:?}",
                fragment_fields(frame)
            );
            v.frame
        })
        .collect()
}

/// A fragment as it came out: addresses translated, TTL one lower, the
/// egress MACs, and its id, offset, MF and data (past an L4 header in the
/// first) unchanged.
pub fn assert_fragment_routed(
    out: &[u8],
    input: &[u8],
    egress: Egress,
    src: [u8; 4],
    dst: [u8; 4],
) {
    let (smac, dmac) = egress.macs();
    assert_eq!(out[6..12], smac, "source MAC");
    assert_eq!(out[..6], dmac, "destination MAC");
    assert_eq!(
        fragment_fields(out),
        fragment_fields(input),
        "id, MF, offset"
    );
    assert_eq!(out[26..30], src, "source address");
    assert_eq!(out[30..34], dst, "destination address");
    assert_eq!(out[22], input[22] - 1, "TTL");
    let (_, offset, _) = fragment_fields(input);
    let from = if offset == 0 { 34 + 20 } else { 34 };
    assert_eq!(out[from..], input[from..], "fragment data");
}

/// What the router answers a LAN host's `frame` that could get no mapping
/// (RFC 5508 REQ-8): sent back out of the NIC it came in by to the MAC it
/// came from, ICMP destination unreachable, code 13, from the router's LAN
/// address, quoting the packet's IP header and its first 8 bytes of data
/// (TCP: its 20-byte header) as they arrived; every checksum right.
/// In TC mode the quoted L4 checksum field is the value a pending partial
/// checksum (summed from the quoted L4 header into that field, as the
/// kernel or the NIC would) leaves as it is: checked by doing that sum.
pub fn assert_prohibited(v: &Verdict, frame: &[u8], mode: Mode) -> Parsed {
    let expected_action = match mode {
        Mode::Xdp => XDP_TX,
        Mode::Tc => TC_ACT_REDIRECT,
    };
    assert_eq!(
        v.program_action, expected_action,
        "answered out of the NIC it came in by"
    );
    let p = match mode {
        Mode::Xdp => assert_checksums_ok(&v.frame),
        // The quoted L4 checksum is the partial checksum's fixed point
        // (checked below), not the quoted segment's: every other one.
        Mode::Tc => {
            let p = parse(&v.frame);
            assert_eq!(p.ip.header_checksum, p.ip.calc_header_checksum());
            let icmp = p.icmp();
            assert_eq!(
                icmp.checksum,
                icmp.icmp_type.calc_checksum(&p.payload),
                "ICMP checksum"
            );
            let q = p.quoted();
            assert_eq!(q.ip.header_checksum, q.ip.calc_header_checksum());
            p
        }
    };
    let inp = parse(frame);
    assert_eq!(p.eth.source, LAN_MAC, "from the router's LAN MAC");
    assert_eq!(p.eth.destination, inp.eth.source, "to the sender's MAC");
    assert_eq!(Ipv4Addr::from(p.ip.source), LAN_ADDR);
    assert_eq!(p.ip.destination, inp.ip.source);
    assert_eq!(p.ip.time_to_live, 64);
    assert!(p.ip.options.is_empty());
    assert_eq!(
        p.icmp().icmp_type,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FilterProhibited),
        "code 13, communication administratively prohibited"
    );
    let header_len = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let (l4_len, check_at) = match inp.l4 {
        L4::Tcp(_) => (20, 16),
        L4::Udp(_) => (8, 6),
        L4::Icmp(_) => (8, 2),
    };
    let sent = &frame[ETH_LEN..ETH_LEN + header_len + l4_len];
    assert_eq!(p.payload.len(), sent.len(), "the quote's length");
    let field = header_len + check_at;
    for (i, (got, want)) in p.payload.iter().zip(sent).enumerate() {
        if mode == Mode::Xdp || !(field..field + 2).contains(&i) {
            assert_eq!(got, want, "quoted byte {i}");
        }
    }
    if mode == Mode::Tc {
        let l4 = &p.payload[header_len..];
        let mut sum: u32 = l4
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let completed = !(sum as u16);
        let held = u16::from_be_bytes([p.payload[field], p.payload[field + 1]]);
        assert_ne!(completed, 0, "the kernel would write 0xffff for 0");
        assert_eq!(
            completed, held,
            "a partial checksum's sum changes the quote"
        );
    }
    assert!(p.trailer.is_empty(), "nothing after the quote");
    p
}

/// Checks that `frame`, a packet of a protocol translated by address (GRE,
/// ESP, ...) that got no mapping, was answered as `assert_prohibited` says
/// for TCP, UDP and ICMP: code 13 from the router's LAN address, quoting
/// its IP header and 8 bytes as they arrived (no pending checksum to fix
/// up, in either mode).
pub fn assert_prohibited_by_address(v: &Verdict, frame: &[u8], mode: Mode) {
    let expected_action = match mode {
        Mode::Xdp => XDP_TX,
        Mode::Tc => TC_ACT_REDIRECT,
    };
    assert_eq!(v.program_action, expected_action, "answered");
    let p = assert_checksums_ok(&v.frame);
    assert_eq!(p.eth.destination, frame[6..12], "to the sender's MAC");
    assert_eq!(Ipv4Addr::from(p.ip.source), LAN_ADDR);
    assert_eq!(p.ip.destination, frame[26..30]);
    assert_eq!(
        p.icmp().icmp_type,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FilterProhibited),
        "code 13, communication administratively prohibited"
    );
    let header_len = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    assert_eq!(
        p.payload,
        frame[ETH_LEN..ETH_LEN + header_len + 8],
        "the quote"
    );
    assert!(p.trailer.is_empty(), "nothing after the quote");
}

/// RFC 5508 REQ-3 and REQ-3a, both ways: an ICMP error whose own checksum
/// is bad, or whose quoted IP header's checksum is bad, is dropped and
/// counted by its reason; the same errors with good checksums, short and
/// odd-sized or longer than one 512-byte summing chunk, are translated.
pub fn icmp_errors_with_bad_checksums_are_dropped(lab: &mut PacketLab) {
    let unreachable = || Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let short = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"a DNS query");
    let long = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), &[0x5a; 700]);
    let out_short = lab.from_lan(&short).unwrap();
    let out_long = lab.from_lan(&long).unwrap();
    assert_eq!(out_short.action, XDP_REDIRECT);
    assert_eq!(out_long.action, XDP_REDIRECT);
    let external = parse(&out_short.frame).src().port();
    // What the remote sent back, as the LAN host got it.
    let reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, external), b"an answer");
    let delivered = lab.from_wan(&reply).unwrap();
    assert_eq!(delivered.action, XDP_REDIRECT);

    // The ICMP checksum sits after the outer IP header's 20 bytes, type and
    // code; the quoted IP header after the ICMP header's 8.
    let icmp_at = ETH_LEN + 20;
    let bad_check = |error: &[u8]| {
        let mut error = error.to_vec();
        error[icmp_at + 2] ^= 0x5a;
        error
    };
    let bad_quote = |quote: &[u8]| {
        let mut quote = quote.to_vec();
        quote[10] ^= 0x5a;
        quote
    };
    let in_short = icmp(REMOTE, WAN_ADDR, unreachable(), datagram(&out_short.frame));
    let in_long = icmp(REMOTE, WAN_ADDR, unreachable(), datagram(&out_long.frame));
    let out_error = icmp(LAN_HOST, REMOTE, unreachable(), datagram(&delivered.frame));
    assert!(in_long.len() - icmp_at > 512, "two chunks to sum");
    // A byte of the quoted payload in the second chunk.
    let mut in_long_bad = in_long.clone();
    in_long_bad[icmp_at + 600] ^= 0x01;
    for (error, lan) in [
        (bad_check(&in_short), false),
        (in_long_bad, false),
        (bad_check(&out_error), true),
    ] {
        let v = if lan {
            lab.from_lan(&error).unwrap()
        } else {
            lab.from_wan(&error).unwrap()
        };
        assert_dropped(&v);
    }
    assert_counters(lab, &[("drop_icmp_bad_checksum", 3), ("icmp_error_in", 0)]);
    let in_bad_quote = icmp(
        REMOTE,
        WAN_ADDR,
        unreachable(),
        &bad_quote(datagram(&out_short.frame)),
    );
    assert_dropped(&lab.from_wan(&in_bad_quote).unwrap());
    let out_bad_quote = icmp(
        LAN_HOST,
        REMOTE,
        unreachable(),
        &bad_quote(datagram(&delivered.frame)),
    );
    assert_dropped(&lab.from_lan(&out_bad_quote).unwrap());
    assert_counters(
        lab,
        &[
            ("drop_icmp_bad_quoted_checksum", 2),
            ("icmp_error_in", 0),
            ("icmp_error_out", 0),
        ],
    );

    for error in [&in_short, &in_long] {
        let v = lab.from_wan(error).unwrap();
        assert_eq!(v.action, XDP_REDIRECT);
        assert_checksums_ok(&v.frame);
    }
    let v = lab.from_lan(&out_error).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    assert_checksums_ok(&v.frame);
    assert_counters(
        lab,
        &[
            ("icmp_error_in", 2),
            ("icmp_error_out", 1),
            ("drop_icmp_bad_checksum", 3),
            ("drop_icmp_bad_quoted_checksum", 2),
        ],
    );
}

/// RFC 4787 REQ-3a and RFC 5382 REQ-7a, with port parity (REQ-4): a
/// system port (below 1024) is kept when it is free, else mapped into the
/// low range (600-1023 in the lab), never above it; any other port is kept
/// or mapped into 1024-65535, never below it. A system port that a rule
/// or a socket of the router's own holds is not kept. ICMP ids are no
/// ports: a low one is mapped into the dynamic range. `snat` sends a frame
/// from the LAN and returns its external port.
pub fn system_ports_are_mapped_to_system_ports(
    lab: &mut PacketLab,
    mut snat: impl FnMut(&mut PacketLab, &[u8]) -> u16,
) {
    let low = 600..=1023;
    let ntp = |host| udp(ep(host, 123), ep(REMOTE, 123), b"ntp");
    let nfs = |host| tcp(ep(host, 1000), ep(REMOTE, 2049), SYN, b"");
    assert_eq!(snat(lab, &ntp(LAN_HOST)), 123, "a free system port is kept");
    assert_eq!(snat(lab, &nfs(LAN_HOST)), 1000);
    let second = snat(lab, &ntp(LAN_HOST2));
    assert!(low.contains(&second) && second % 2 == 1, "123 -> {second}");
    let second = snat(lab, &nfs(LAN_HOST2));
    assert!(
        low.contains(&second) && second.is_multiple_of(2),
        "1000 -> {second}"
    );
    for port in [40000, 40001, 1024] {
        let frame = udp(ep(LAN_HOST, port), ep(REMOTE, 9), b"x");
        assert_eq!(snat(lab, &frame), port, "a free port above them is kept");
        let frame = udp(ep(LAN_HOST2, port), ep(REMOTE, 9), b"x");
        let other = snat(lab, &frame);
        assert!(
            other >= 1024 && other != port && other % 2 == port % 2,
            "{port} -> {other}"
        );
    }
    // A rule's port, and the router's own sockets' (a UDP socket on every
    // address, a TCP listener), are not kept, but stay in the low range.
    lab.forward("udp/514=192.168.0.99:514").unwrap();
    let syslog = snat(lab, &udp(ep(LAN_HOST, 514), ep(REMOTE, 514), b"x"));
    assert!(
        low.contains(&syslog) && syslog.is_multiple_of(2),
        "514 -> {syslog}"
    );
    let _ike = std::net::UdpSocket::bind("0.0.0.0:500").unwrap();
    let _ssh = std::net::TcpListener::bind("0.0.0.0:22").unwrap();
    let ike = snat(lab, &udp(ep(LAN_HOST, 500), ep(REMOTE, 500), b"x"));
    assert!(low.contains(&ike) && ike.is_multiple_of(2), "500 -> {ike}");
    let ssh = snat(lab, &tcp(ep(LAN_HOST, 22), ep(REMOTE, 22), SYN, b""));
    assert!(low.contains(&ssh) && ssh.is_multiple_of(2), "22 -> {ssh}");
    // Not held by the router for TCP: UDP 22 is kept.
    assert_eq!(snat(lab, &udp(ep(LAN_HOST, 22), ep(REMOTE, 22), b"x")), 22);
    let ping = snat(lab, &echo_request(LAN_HOST, REMOTE, 100, 1));
    assert!(ping >= 1024, "id 100 -> {ping}");
}
