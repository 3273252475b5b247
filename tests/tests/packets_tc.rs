//! Packet tests of the TC datapath (`nat_lan_tc`, `nat_wan_tc`) through
//! `BPF_PROG_TEST_RUN` on an skb: the same flow as XDP over the same maps,
//! with the checksums applied by `bpf_l4_csum_replace`. The harness and the
//! checks are those of `packets.rs` (`common`, `nat_tests::packet`): every
//! translated frame is checked field by field and all of its checksums are
//! recomputed with etherparse. BPF_PROG_TEST_RUN builds skbs with full
//! checksums (CHECKSUM_NONE); the CHECKSUM_PARTIAL and GSO traffic of a veth
//! is covered end to end (`e2e.rs`).
mod common;

use common::*;
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use nat_common::programs;
use nat_tests::packet::*;

fn tc_lab() -> PacketLab {
    PacketLab::tc().unwrap()
}

/// A TC lab whose dynamic range (20000-20999) lies above `port`, which is
/// then always remapped (a system port would be kept: RFC 4787 REQ-3a).
fn tc_lab_with_ports_above(port: u16) -> PacketLab {
    assert!((1024..20000).contains(&port));
    PacketLab::build(Mode::Tc, |c| {
        c.port_min = 20000;
        c.port_max = 20999;
    })
    .unwrap()
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

/// The datagram one hop further on than `frame`, as an ICMP error about it
/// must quote it once translated back.
fn after_one_hop(frame: &[u8]) -> Vec<u8> {
    datagram(&with_ip(frame, |ip| ip.time_to_live -= 1)).to_vec()
}

/// Sends `frame` from the LAN; expects it redirected out of the WAN NIC
/// from the WAN address with a TC action. Returns the external port.
fn snat(lab: &mut PacketLab, frame: &[u8]) -> u16 {
    let v = lab.from_lan(frame).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT, "TC verdict");
    let inp = parse(frame);
    let port = assert_checksums_ok(&v.frame).src().port();
    let dst = match inp.l4 {
        L4::Icmp(_) => ep(*inp.dst().ip(), port),
        _ => inp.dst(),
    };
    assert_routed(&v, frame, Egress::Wan, ep(WAN_ADDR, port), dst);
    port
}

#[test]
fn tc_snat_of_tcp_udp_and_ping() {
    let mut lab = tc_lab();
    let syn = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b"");
    assert_eq!(snat(&mut lab, &syn), 40000);
    let data = tcp(
        ep(LAN_HOST, 40000),
        ep(REMOTE, 443),
        ACK | PSH,
        b"some data",
    );
    assert_eq!(snat(&mut lab, &data), 40000);
    let query = udp(ep(LAN_HOST, 40001), ep(REMOTE, 53), b"a query");
    assert_eq!(snat(&mut lab, &query), 40001);
    // A port another host holds is remapped: the port's delta is applied
    // too.
    let taken = udp(ep(LAN_HOST2, 40001), ep(REMOTE, 53), b"taken port");
    assert_ne!(snat(&mut lab, &taken), 40001);
    let ping = echo_request(LAN_HOST, REMOTE, 0x1234, 1);
    snat(&mut lab, &ping);
    assert_counters(&lab, &[("lan_rx", 5), ("snat", 5), ("new_binding", 4)]);
}

#[test]
fn tc_udp_without_checksum_keeps_none() {
    let mut lab = tc_lab_with_ports_above(1500);
    let mut frame = udp(ep(LAN_HOST2, 1500), ep(REMOTE, 53), b"no checksum");
    // The UDP checksum field: Ethernet 14 + IPv4 20 + 6.
    frame[40..42].copy_from_slice(&[0, 0]);
    let v = lab.from_lan(&frame).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    let p = assert_checksums_ok(&v.frame);
    assert_eq!(p.l4_checksum(), 0, "a zero UDP checksum stays zero");
    assert_ne!(p.src().port(), 1500);
}

#[test]
fn tc_replies_are_translated_back() {
    let mut lab = tc_lab();
    snat(
        &mut lab,
        &tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b""),
    );
    let external = snat(
        &mut lab,
        &tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 443), SYN, b""),
    );
    assert_ne!(external, 40000);
    for (flags, payload) in [(SYN | ACK, &b""[..]), (ACK | PSH, b"hello")] {
        let reply = tcp(ep(REMOTE, 443), ep(WAN_ADDR, external), flags, payload);
        let v = lab.from_wan(&reply).unwrap();
        assert_eq!(v.program_action, TC_ACT_REDIRECT);
        assert_routed(
            &v,
            &reply,
            Egress::Lan(LAN_HOST2),
            ep(REMOTE, 443),
            ep(LAN_HOST2, 40000),
        );
    }
    snat(&mut lab, &echo_request(LAN_HOST, REMOTE, 0x1234, 1));
    let pong = echo_reply(REMOTE, WAN_ADDR, 0x1234, 1);
    let v = lab.from_wan(&pong).unwrap();
    assert_routed(
        &v,
        &pong,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 0x1234),
        ep(LAN_HOST, 0x1234),
    );
    assert_counters(&lab, &[("wan_rx", 3), ("dnat", 3)]);
}

#[test]
fn tc_forward_and_the_servers_reply() {
    let mut lab = tc_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_wan(&syn).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 5555),
        ep(LAN_HOST, 80),
    );
    let syn_ack = tcp(ep(LAN_HOST, 80), ep(REMOTE, 5555), SYN | ACK, b"");
    let v = lab.from_lan(&syn_ack).unwrap();
    assert_routed(
        &v,
        &syn_ack,
        Egress::Wan,
        ep(WAN_ADDR, 8080),
        ep(REMOTE, 5555),
    );
    assert_counters(&lab, &[("forwarded", 1), ("snat", 1)]);
}

#[test]
fn tc_hairpin_rewrites_both_ends() {
    let mut lab = tc_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let syn = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_lan(&syn).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    let port = parse(&v.frame).src().port();
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, port),
        ep(LAN_HOST, 80),
    );
    let reply = tcp(ep(LAN_HOST, 80), ep(WAN_ADDR, port), SYN | ACK, b"hi");
    let v = lab.from_lan(&reply).unwrap();
    assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST2),
        ep(WAN_ADDR, 8080),
        ep(LAN_HOST2, 45000),
    );
    assert_counters(&lab, &[("hairpin", 2)]);
}

#[test]
fn tc_icmp_errors_both_ways() {
    let mut lab = tc_lab();
    // From outside, about a LAN host's UDP query.
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"a DNS query");
    let out = lab.from_lan(&query).unwrap();
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (REMOTE, LAN_HOST),
        ep(LAN_HOST, 40000),
        ep(REMOTE, 53),
    );
    assert_eq!(p.payload, after_one_hop(&query));

    // From a LAN host, about a forwarded flow.
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let query = udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), b"query");
    let delivered = lab.from_wan(&query).unwrap();
    assert_eq!(delivered.program_action, TC_ACT_REDIRECT);
    let error = icmp(
        LAN_HOST,
        REMOTE,
        port_unreachable(),
        datagram(&delivered.frame),
    );
    let v = lab.from_lan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Wan,
        (WAN_ADDR, REMOTE),
        ep(REMOTE, 5555),
        ep(WAN_ADDR, 8053),
    );
    assert_eq!(p.payload, after_one_hop(&query));
    assert_counters(&lab, &[("icmp_error_in", 1), ("icmp_error_out", 1)]);
}

#[test]
fn tc_passes_and_drops_with_the_same_reasons() {
    let mut lab = PacketLab::build(Mode::Tc, |c| {
        c.port_min = 50000;
        c.port_max = 50000;
    })
    .unwrap();
    // Unsolicited: to the kernel, untouched, as TC_ACT_OK.
    let stray = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"stray");
    let v = lab.from_wan(&stray).unwrap();
    assert_eq!(v.program_action, TC_ACT_OK);
    assert_passed_untouched(&v, &stray);
    // No port left: dropped, and answered with ICMP code 13 (RFC 5508
    // REQ-8) redirected back out of the LAN NIC.
    snat(&mut lab, &udp(ep(LAN_HOST, 50000), ep(REMOTE, 53), b"x"));
    let unmapped = udp(ep(LAN_HOST2, 50000), ep(REMOTE, 53), b"x");
    let v = lab.from_lan(&unmapped).unwrap();
    assert_prohibited(&v, &unmapped, Mode::Tc);
    // An unresolved neighbour: translated (checksums included), then to the
    // kernel.
    lab.forward("tcp/8081=192.168.0.99:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8081), SYN, b"");
    let v = lab.from_wan(&syn).unwrap();
    assert_eq!(v.program_action, TC_ACT_OK);
    let p = assert_checksums_ok(&v.frame);
    assert_translated(&p, &syn, ep(REMOTE, 5555), ep(LAN_UNRESOLVED, 80), 0);
    assert_counters(
        &lab,
        &[
            ("unsolicited_pass", 1),
            ("drop_port_exhausted", 1),
            ("pass_no_neighbour", 1),
        ],
    );
}

#[test]
fn tc_and_xdp_write_the_same_bytes() {
    // The same translation code: with full checksums both modes must give
    // byte-identical frames (ports inside the range are kept, so no random
    // port choice differs).
    let mut xdp = PacketLab::new().unwrap();
    let mut tc = tc_lab();
    for lab in [&mut xdp, &mut tc] {
        lab.forward("udp/8053=192.168.0.12:53").unwrap();
    }
    let mut rng = Rng::new(11);
    let frames: Vec<(bool, Vec<u8>)> = vec![
        (true, tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b"")),
        (
            true,
            udp(ep(LAN_HOST2, 40999), ep(REMOTE, 53), &rng.bytes(300)),
        ),
        (true, echo_request(LAN_HOST, REMOTE, 40007, 1)),
        (
            false,
            udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), &rng.bytes(100)),
        ),
        (
            false,
            tcp(ep(REMOTE, 443), ep(WAN_ADDR, 40000), SYN | ACK, b""),
        ),
    ];
    for (from_lan, frame) in &frames {
        let (a, b) = if *from_lan {
            (xdp.from_lan(frame).unwrap(), tc.from_lan(frame).unwrap())
        } else {
            (xdp.from_wan(frame).unwrap(), tc.from_wan(frame).unwrap())
        };
        assert_eq!(a.action, XDP_REDIRECT);
        assert_eq!(b.action, a.action);
        assert_eq!(b.frame, a.frame, "TC and XDP frames differ");
    }
}

#[test]
fn tc_gso_packet_larger_than_the_mtu_is_translated() {
    // A GSO skb (TSO on the sender, GRO) is longer than the MTU while each
    // of its segments fits: TC checks the segments' length against the
    // egress MTU. (XDP never sees GSO packets; an oversized frame there goes
    // to the kernel, `pass_mtu_exceeded`.)
    let mut lab = tc_lab();
    snat(
        &mut lab,
        &tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b""),
    );
    let mut rng = Rng::new(3);
    let big = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), ACK, &rng.bytes(2896));
    let meta = SkbMeta {
        gso_size: 1448,
        gso_segs: 2,
    };
    let lan = lab.lan_ifindex;
    let v = lab.run_tc(programs::LAN_TC, lan, &big, meta).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    assert_routed(&v, &big, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 443));
    // The same bytes without GSO do not fit: to the kernel, untouched.
    let v = lab.from_lan(&big).unwrap();
    assert_passed_untouched(&v, &big);
    // Nor do segments larger than the MTU (20 + 20 + 1461 > 1500): the
    // kernel sends "fragmentation needed".
    let meta = SkbMeta {
        gso_size: 1461,
        gso_segs: 2,
    };
    let v = lab.run_tc(programs::LAN_TC, lan, &big, meta).unwrap();
    assert_passed_untouched(&v, &big);
    // Exactly the MTU still goes through.
    let meta = SkbMeta {
        gso_size: 1460,
        gso_segs: 2,
    };
    let v = lab.run_tc(programs::LAN_TC, lan, &big, meta).unwrap();
    assert_routed(&v, &big, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 443));
    assert_counters(&lab, &[("snat", 3), ("pass_mtu_exceeded", 2)]);
}

// Fragments and other protocols in TC: `frag` and `proto` run over the
// same `NatContext` as the rest of the flow. A first fragment's L4
// checksum change goes through `bpf_l4_csum_replace` like a whole
// datagram's; a later fragment's translation changes only its IPv4 header
// (address and header checksum), written in place.

#[test]
fn tc_fragments_out_first_and_later() {
    for proto in ["udp", "tcp", "icmp"] {
        let mut lab = tc_lab();
        let whole = datagram_of(proto, ep(LAN_HOST, 40000), ep(REMOTE, 53), 2000);
        let fragments = fragment(&whole, 800);
        assert_eq!(fragments.len(), 3);
        let out = through(&mut lab, true, &fragments);
        for (out, input) in out.iter().zip(&fragments) {
            assert_fragment_routed(out, input, Egress::Wan, WAN_ADDR.octets(), REMOTE.octets());
        }
        let p = assert_checksums_ok(&reassemble(&out));
        let dst = if proto == "icmp" {
            ep(REMOTE, 40000)
        } else {
            ep(REMOTE, 53)
        };
        assert_translated(&p, &whole, ep(WAN_ADDR, 40000), dst, 1);
        assert_counters(
            &lab,
            &[
                ("snat", 1),
                ("new_binding", 1),
                ("frag_tracked", 1),
                ("frag_translated", 2),
            ],
        );
    }
    // A remapped port: the first fragment carries the port's delta too;
    // the later ones arrive before it and are translated all the same.
    let mut lab = tc_lab_with_ports_above(1500);
    let whole = datagram_of("udp", ep(LAN_HOST2, 1500), ep(REMOTE, 53), 2000);
    let mut fragments = fragment(&whole, 800);
    fragments.reverse();
    let out: Vec<Vec<u8>> = through(&mut lab, true, &fragments)
        .into_iter()
        .rev()
        .collect();
    let p = assert_checksums_ok(&reassemble(&out));
    let port = p.src().port();
    assert_ne!(port, 1500);
    assert_translated(&p, &whole, ep(WAN_ADDR, port), ep(REMOTE, 53), 1);
}

#[test]
fn tc_fragments_in_first_and_later() {
    for proto in ["udp", "tcp", "icmp"] {
        let mut lab = tc_lab();
        let (remote_port, out) = match proto {
            "udp" => (53, udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q")),
            "tcp" => (443, tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b"")),
            _ => (40000, echo_request(LAN_HOST, REMOTE, 40000, 1)),
        };
        assert_eq!(snat(&mut lab, &out), 40000);
        let payload = Rng::new(9).bytes(3000);
        let reply = match proto {
            "udp" => udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), &payload),
            "tcp" => tcp(ep(REMOTE, 443), ep(WAN_ADDR, 40000), SYN | ACK, &payload),
            _ => {
                let mut frame = Vec::new();
                ip_builder(REMOTE, WAN_ADDR)
                    .icmpv4_echo_reply(40000, 1)
                    .write(&mut frame, &payload)
                    .unwrap();
                frame
            }
        };
        let reply = with_id(&reply, ID);
        let fragments = fragment(&reply, 1480);
        let out = through(&mut lab, false, &fragments);
        for (out, input) in out.iter().zip(&fragments) {
            assert_fragment_routed(
                out,
                input,
                Egress::Lan(LAN_HOST),
                REMOTE.octets(),
                LAN_HOST.octets(),
            );
        }
        let p = assert_checksums_ok(&reassemble(&out));
        assert_translated(&p, &reply, ep(REMOTE, remote_port), ep(LAN_HOST, 40000), 1);
        assert_counters(
            &lab,
            &[("dnat", 1), ("frag_tracked", 1), ("frag_translated", 2)],
        );
        // The host is now the remote's fragment peer: a later datagram's
        // last fragment may come first.
        let late_reply = with_id(&reply, ID + 1);
        let mut late = fragment(&late_reply, 1480);
        late.swap(0, 2);
        let mut out = through(&mut lab, false, &late);
        out.swap(0, 2);
        let p = assert_checksums_ok(&reassemble(&out));
        assert_translated(
            &p,
            &late_reply,
            ep(REMOTE, remote_port),
            ep(LAN_HOST, 40000),
            1,
        );
    }
}

#[test]
fn tc_fragments_come_out_as_in_xdp() {
    let mut xdp = PacketLab::new().unwrap();
    let mut tc = tc_lab();
    for proto in ["udp", "tcp", "icmp"] {
        let whole = datagram_of(proto, ep(LAN_HOST, 41000), ep(REMOTE, 53), 2000);
        let fragments = fragment(&whole, 1000);
        let a = through(&mut xdp, true, &fragments);
        let b = through(&mut tc, true, &fragments);
        assert_eq!(a, b, "{proto}: TC and XDP fragments differ");
    }
    // An untracked later fragment from a remote with no fragment peer on
    // the LAN: the router's.
    let stray = fragment(
        &with_id(
            &udp(
                ep(REMOTE2, 53),
                ep(WAN_ADDR, 33333),
                &Rng::new(2).bytes(3000),
            ),
            ID,
        ),
        1480,
    );
    let v = tc.from_wan(&stray[2]).unwrap();
    assert_eq!(v.program_action, TC_ACT_OK);
    assert_passed_untouched(&v, &stray[2]);
    assert_counters(&tc, &[("frag_translated", 6), ("pass_fragment", 1)]);
}

#[test]
fn tc_oversize_fragment_is_translated_for_the_kernel_to_fragment() {
    // Larger than the WAN's MTU with DF clear: translated, then passed
    // (TC_ACT_OK) for the kernel to fragment, its L4 checksum applied by
    // `TcPacket::finish` on that path too.
    let mut lab = tc_lab();
    let big = with_id(
        &udp(
            ep(LAN_HOST, 40000),
            ep(REMOTE, 53),
            &Rng::new(7).bytes(1600),
        ),
        ID,
    );
    let v = lab.from_lan(&big).unwrap();
    assert_eq!(v.program_action, TC_ACT_OK);
    let p = assert_checksums_ok(&v.frame);
    assert_translated(&p, &big, ep(WAN_ADDR, 40000), ep(REMOTE, 53), 0);
    // A first fragment that large: the same, and recorded for the rest.
    let whole = with_id(
        &udp(
            ep(LAN_HOST, 40000),
            ep(REMOTE, 53),
            &Rng::new(8).bytes(4000),
        ),
        ID + 1,
    );
    let fragments = fragment(&whole, 2000);
    let v = lab.from_lan(&fragments[0]).unwrap();
    assert_eq!(v.program_action, TC_ACT_OK);
    assert_eq!(v.frame[26..30], WAN_ADDR.octets());
    let rest = through(&mut lab, true, &fragments[2..]);
    assert_fragment_routed(
        &rest[0],
        &fragments[2],
        Egress::Wan,
        WAN_ADDR.octets(),
        REMOTE.octets(),
    );
    assert_counters(
        &lab,
        &[
            ("pass_mtu_translated", 2),
            ("frag_tracked", 1),
            ("frag_translated", 1),
        ],
    );
}

#[test]
fn tc_other_protocols_by_address_and_their_icmp_errors() {
    let mut lab = tc_lab();
    for proto in [47u8, 50] {
        let out = raw_ip(LAN_HOST, REMOTE, proto, &[0, 0, 0x08, 0, 1, 2, 3, 4]);
        let v = lab.from_lan(&out).unwrap();
        assert_eq!(v.program_action, TC_ACT_REDIRECT);
        assert_addr_routed(&v, &out, Egress::Wan, WAN_ADDR, REMOTE);
        let back = raw_ip(REMOTE, WAN_ADDR, proto, &[0, 0, 0x08, 0, 5, 6, 7, 8]);
        let v = lab.from_wan(&back).unwrap();
        assert_addr_routed(&v, &back, Egress::Lan(LAN_HOST), REMOTE, LAN_HOST);
    }
    // "Fragmentation needed" about the ESP packet: back to the host, the
    // ICMP checksum following the quote through `ctx.l4_checksum`.
    let esp = raw_ip(LAN_HOST, REMOTE, 50, &[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb]);
    let out = lab.from_lan(&esp).unwrap();
    let too_big = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    let error = icmp(HOP, WAN_ADDR, too_big, datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    let frame = &v.frame;
    assert_eq!(frame[30..34], LAN_HOST.octets(), "outer destination");
    let sum = nat_tests::traffic::internet_checksum;
    assert_eq!(sum(&frame[14..34]), 0, "outer IP header checksum");
    assert_eq!(sum(&frame[34..]), 0, "ICMP checksum");
    assert_eq!(frame[42..], after_one_hop(&esp)[..], "the quote");
    // A fragmented GRE datagram: its later fragment by the table.
    let gre = with_id(&raw_ip(LAN_HOST, REMOTE, 47, &Rng::new(4).bytes(3000)), ID);
    let fragments = fragment(&gre, 1480);
    let out = through(&mut lab, true, &fragments);
    for (out, input) in out.iter().zip(&fragments) {
        assert_fragment_routed(out, input, Egress::Wan, WAN_ADDR.octets(), REMOTE.octets());
    }
    // Another host's ESP to the same remote gets no mapping: answered
    // with code 13 (RFC 5508 REQ-8).
    let busy = raw_ip(LAN_HOST2, REMOTE, 50, &[0, 0, 0, 2, 0, 0, 0, 1, 0xcc]);
    let v = lab.from_lan(&busy).unwrap();
    assert_prohibited_by_address(&v, &busy, Mode::Tc);
    assert_counters(
        &lab,
        &[
            ("snat", 4),
            ("dnat", 2),
            ("icmp_error_in", 1),
            ("frag_translated", 2),
            ("drop_proto_busy", 1),
            ("icmp_prohibited_sent", 1),
        ],
    );
}

/// Address-and-port-dependent mapping ("symmetric") in TC mode: a second
/// remote gets a port of its own, and its reply to the first one's port is
/// dropped, as in XDP (`nat_behaviour`).
#[test]
fn tc_icmp_errors_with_a_bad_checksum_or_quoted_header_checksum_are_dropped() {
    let mut lab = tc_lab();
    icmp_errors_with_bad_checksums_are_dropped(&mut lab);
}

#[test]
fn tc_system_ports_are_mapped_to_system_ports_and_others_above_them() {
    let mut lab = tc_lab();
    system_ports_are_mapped_to_system_ports(&mut lab, snat);
}

#[test]
fn tc_symmetric_mapping_gives_each_remote_its_own_port() {
    let mut lab = PacketLab::build(Mode::Tc, |c| {
        c.mapping = nat_common::MAPPING_ADDRESS_AND_PORT_DEPENDENT;
        c.unsolicited = nat_common::UNSOLICITED_DROP;
    })
    .unwrap();
    let (a, b) = (ep(REMOTE, 3478), ep(OTHER_REMOTE, 3478));
    let port_a = snat(&mut lab, &udp(ep(LAN_HOST, 40000), a, b"x"));
    let port_b = snat(&mut lab, &udp(ep(LAN_HOST, 40000), b, b"x"));
    assert_eq!(port_a, 40000);
    assert_ne!(port_b, port_a);
    let reply = udp(b, ep(WAN_ADDR, port_b), b"y");
    let v = lab.from_wan(&reply).unwrap();
    assert_eq!(v.program_action, TC_ACT_REDIRECT);
    assert_routed(&v, &reply, Egress::Lan(LAN_HOST), b, ep(LAN_HOST, 40000));
    let v = lab.from_wan(&udp(b, ep(WAN_ADDR, port_a), b"y")).unwrap();
    assert_eq!(v.program_action, TC_ACT_SHOT);
    assert_counters(
        &lab,
        &[("new_binding", 2), ("dnat", 1), ("drop_unsolicited", 1)],
    );
}

/// RFC 5508 REQ-8 in TC mode: a UDP datagram, a TCP SYN with IP options
/// and a ping that get no mapping are each answered with ICMP code 13,
/// built in place of the skb (`bpf_skb_adjust_room`, `bpf_skb_change_tail`)
/// and redirected back out of the LAN NIC, the quoted checksum field set
/// so that a pending partial checksum would leave the error unchanged.
#[test]
fn tc_packets_that_get_no_mapping_are_answered_with_icmp_prohibited() {
    let mut lab = PacketLab::build(Mode::Tc, |c| {
        c.port_min = 50000;
        c.port_max = 50000;
    })
    .unwrap();
    snat(&mut lab, &udp(ep(LAN_HOST, 50000), ep(REMOTE, 53), b"x"));
    snat(
        &mut lab,
        &tcp(ep(LAN_HOST, 50000), ep(REMOTE, 443), SYN, b""),
    );
    snat(&mut lab, &echo_request(LAN_HOST, REMOTE, 50000, 1));
    let frames = [
        udp(ep(LAN_HOST2, 50000), ep(REMOTE, 53), b"a datagram too many"),
        with_ip(
            &tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 443), SYN, b""),
            |ip| {
                ip.options = [0x01, 0x07, 0x0b, 0x04, 0, 0, 0, 0, 0, 0, 0, 0][..]
                    .try_into()
                    .unwrap()
            },
        ),
        echo_request(LAN_HOST2, REMOTE, 7, 1),
    ];
    for frame in &frames {
        let v = lab.from_lan(frame).unwrap();
        assert_prohibited(&v, frame, Mode::Tc);
    }
    // A GSO packet (UDP segmentation offload: three datagrams' worth) is
    // answered too, its segments given up with its tail.
    let gso = udp(ep(LAN_HOST2, 50000), ep(REMOTE, 443), &[0x17; 3000]);
    let meta = SkbMeta {
        gso_size: 1000,
        gso_segs: 3,
    };
    let lan = lab.lan_ifindex;
    let v = lab.run_tc(programs::LAN_TC, lan, &gso, meta).unwrap();
    assert_prohibited(&v, &gso, Mode::Tc);
    assert_counters(
        &lab,
        &[
            ("drop_port_exhausted", 4),
            ("icmp_prohibited_sent", 4),
            ("icmp_prohibited_rate_limited", 0),
        ],
    );
}

#[test]
fn tc_an_early_fragment_with_nobody_to_name_sends_its_datagram_to_the_kernel() {
    // As in XDP mode: the last fragment first, with no fragment peer, goes
    // to the kernel with the rest of its datagram, and its first fragment,
    // let in, is passed for the kernel to reassemble and the relay to send
    // on (untouched: the relay writes the translation).
    let mut lab = tc_lab();
    assert_eq!(
        snat(&mut lab, &udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q")),
        40000
    );
    let reply = with_id(
        &udp(
            ep(REMOTE, 53),
            ep(WAN_ADDR, 40000),
            &Rng::new(8).bytes(4000),
        ),
        ID,
    );
    let fragments = fragment(&reply, 1480);
    for frame in [&fragments[2], &fragments[1], &fragments[0]] {
        assert_passed_untouched(&lab.from_wan(frame).unwrap(), frame);
    }
    assert_counters(
        &lab,
        &[
            ("pass_fragment", 2),
            ("pass_frag_reassembly", 1),
            ("frag_translated", 0),
            ("dnat", 0),
        ],
    );
}
