//! Packet tests of the XDP datapath through `BPF_PROG_TEST_RUN`: a crafted
//! frame in, the verdict and the rewritten frame out. Every test builds its
//! own `PacketLab` (its own network namespace and maps), so they run in
//! parallel and start from empty tables and zero counters.
//!
//! Every frame that comes out translated is checked field by field
//! (addresses, ports or ICMP id, TTL, MACs, everything else unchanged) and
//! all of its checksums are recomputed with etherparse (`common`).
mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Type, IpFragOffset, PacketBuilder, VlanId,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};
use nat_common::{
    FILTER_ADDRESS_DEPENDENT, FILTER_ENDPOINT_INDEPENDENT, NatConfig, PROTO_TCP, PROTO_UDP,
    UNSOLICITED_DROP,
};
use nat_tests::packet::*;

fn fresh_lab() -> PacketLab {
    PacketLab::new().unwrap()
}

fn lab_with(adjust: impl FnOnce(&mut NatConfig)) -> PacketLab {
    PacketLab::with_config(adjust).unwrap()
}

fn in_range(lab: &PacketLab, port: u16) -> bool {
    (lab.config.port_min..=lab.config.port_max).contains(&port)
}

/// Sends `frame` from the LAN and expects it out of the WAN NIC from the
/// WAN address, destination unchanged; returns the external port.
fn snat(lab: &mut PacketLab, frame: &[u8]) -> u16 {
    let inp = parse(frame);
    let v = lab.from_lan(frame).unwrap();
    assert_eq!(v.action, XDP_REDIRECT, "SNAT verdict");
    let port = assert_checksums_ok(&v.frame).src().port();
    // An ICMP query's id stands for both ports.
    let dst = match inp.l4 {
        L4::Icmp(_) => ep(*inp.dst().ip(), port),
        _ => inp.dst(),
    };
    assert_routed(&v, frame, Egress::Wan, ep(WAN_ADDR, port), dst);
    // A system port stays one (kept, or in the low range); ICMP ids are no
    // ports.
    let system = inp.src().port() < 1024 && !matches!(inp.l4, L4::Icmp(_));
    assert!(
        if system {
            (1..1024).contains(&port)
        } else {
            in_range(lab, port)
        },
        "external port {port} outside the range"
    );
    port
}

/// The datagram as it left the LAN host but one hop further on: what an
/// ICMP error about it must quote once translated back.
fn after_one_hop(frame: &[u8]) -> Vec<u8> {
    datagram(&with_ip(frame, |ip| ip.time_to_live -= 1)).to_vec()
}

// ---------------------------------------------------------------------------
// 1. Outbound: source translation and the creation of mappings.

#[test]
fn outbound_tcp_keeps_a_free_source_port() {
    let mut lab = fresh_lab();
    let syn = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b"");
    let v = lab.from_lan(&syn).unwrap();
    assert_routed(&v, &syn, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 443));
    assert_counters(&lab, &[("lan_rx", 1), ("snat", 1), ("new_binding", 1)]);

    // The rest of the connection uses the same mapping.
    let data = tcp(
        ep(LAN_HOST, 40000),
        ep(REMOTE, 443),
        ACK | PSH,
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    );
    let v = lab.from_lan(&data).unwrap();
    assert_routed(&v, &data, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 443));
    assert_counters(&lab, &[("lan_rx", 2), ("snat", 2), ("new_binding", 1)]);
}

#[test]
fn outbound_udp_keeps_a_free_source_port() {
    let mut lab = fresh_lab();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"a DNS query");
    let v = lab.from_lan(&query).unwrap();
    assert_routed(&v, &query, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 53));
    assert_counters(&lab, &[("lan_rx", 1), ("snat", 1), ("new_binding", 1)]);
}

#[test]
fn tcp_and_udp_have_separate_port_spaces() {
    let mut lab = fresh_lab();
    let u = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"x");
    let t = tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 80), SYN, b"");
    assert_eq!(snat(&mut lab, &u), 40000);
    assert_eq!(snat(&mut lab, &t), 40000);
    assert_counters(&lab, &[("new_binding", 2)]);
}

#[test]
fn second_host_with_the_same_port_gets_another_external_port() {
    for proto in [PROTO_TCP, PROTO_UDP] {
        let mut lab = fresh_lab();
        let frame = |host| match proto {
            PROTO_TCP => tcp(ep(host, 40000), ep(REMOTE, 80), SYN, b""),
            _ => udp(ep(host, 40000), ep(REMOTE, 53), b"x"),
        };
        assert_eq!(snat(&mut lab, &frame(LAN_HOST)), 40000);
        let second = snat(&mut lab, &frame(LAN_HOST2));
        assert_ne!(second, 40000, "proto {proto}: the two mappings collide");
        // Both mappings stay in place: each host keeps its own port.
        assert_eq!(snat(&mut lab, &frame(LAN_HOST)), 40000);
        assert_eq!(snat(&mut lab, &frame(LAN_HOST2)), second);
        assert_counters(&lab, &[("new_binding", 2), ("snat", 4)]);

        // And replies to each external port reach the right host.
        let reply = |port| match proto {
            PROTO_TCP => tcp(ep(REMOTE, 80), ep(WAN_ADDR, port), SYN | ACK, b""),
            _ => udp(ep(REMOTE, 53), ep(WAN_ADDR, port), b"y"),
        };
        let remote_port = if proto == PROTO_TCP { 80 } else { 53 };
        for (host, port) in [(LAN_HOST, 40000), (LAN_HOST2, second)] {
            let r = reply(port);
            let v = lab.from_wan(&r).unwrap();
            assert_routed(
                &v,
                &r,
                Egress::Lan(host),
                ep(REMOTE, remote_port),
                ep(host, 40000),
            );
        }
    }
}

#[test]
fn mapping_is_endpoint_independent() {
    let mut lab = fresh_lab();
    // Let .12 hold 40000 so that .13's mapping is a remapped one.
    snat(&mut lab, &udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"x"));
    let first = snat(&mut lab, &udp(ep(LAN_HOST2, 40000), ep(REMOTE, 53), b"x"));
    let second = snat(
        &mut lab,
        &udp(ep(LAN_HOST2, 40000), ep(OTHER_REMOTE, 123), b"x"),
    );
    let third = snat(&mut lab, &udp(ep(LAN_HOST2, 40000), ep(REMOTE, 5060), b"x"));
    assert_eq!(first, second, "same internal endpoint, another remote");
    assert_eq!(first, third, "same internal endpoint, another remote port");
    assert_counters(&lab, &[("new_binding", 2), ("snat", 4)]);
}

#[test]
fn port_outside_the_dynamic_range_is_remapped_into_it() {
    let mut lab = lab_with(|c| {
        c.port_min = 20000;
        c.port_max = 20099;
    });
    // A port inside the range is kept (asked first: a remapped port below
    // could take it by chance).
    assert_eq!(
        snat(&mut lab, &udp(ep(LAN_HOST2, 20050), ep(REMOTE, 53), b"x")),
        20050
    );
    let mut udp_ports = vec![20050];
    let mut tcp_ports = Vec::new();
    // Ports of 1024 and above: a system port goes to the low range
    // (`system_ports_are_mapped_to_system_ports`).
    for (i, port) in [1024u16, 19999, 20100, 65535, 5353, 20050]
        .into_iter()
        .enumerate()
    {
        let (frame, seen) = if i % 2 == 0 {
            (
                udp(ep(LAN_HOST, port), ep(REMOTE, 53), b"x"),
                &mut udp_ports,
            )
        } else {
            let frame = tcp(ep(LAN_HOST, port), ep(REMOTE, 443), SYN, b"");
            (frame, &mut tcp_ports)
        };
        let external = snat(&mut lab, &frame);
        assert!((20000..=20099).contains(&external), "{port} -> {external}");
        assert!(!seen.contains(&external), "{external} handed out twice");
        seen.push(external);
    }
    assert_counters(&lab, &[("new_binding", 7)]);
}

#[test]
fn system_ports_are_mapped_to_system_ports_and_others_above_them() {
    let mut lab = fresh_lab();
    system_ports_are_mapped_to_system_ports(&mut lab, snat);
}

#[test]
fn a_port_held_by_a_static_forward_is_never_taken() {
    let mut lab = fresh_lab();
    lab.forward("tcp/40000=192.168.0.12:80").unwrap();
    let external = snat(
        &mut lab,
        &tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 443), SYN, b""),
    );
    assert_ne!(external, 40000);
    // The forward is TCP only: UDP 40000 is free.
    assert_eq!(
        snat(&mut lab, &udp(ep(LAN_HOST2, 40000), ep(REMOTE, 53), b"x")),
        40000
    );
    // A configuration written again (a reload) keeps the rule's port held.
    lab.rewrite_config().unwrap();
    assert_ne!(
        snat(
            &mut lab,
            &tcp(
                ep(Ipv4Addr::new(192, 168, 0, 21), 40000),
                ep(REMOTE, 443),
                SYN,
                b""
            )
        ),
        40000
    );
    // Once the rule is gone, its port is a new mapping's again.
    lab.unforward("tcp/40000=192.168.0.12:80").unwrap();
    assert_eq!(
        snat(
            &mut lab,
            &tcp(
                ep(Ipv4Addr::new(192, 168, 0, 22), 40000),
                ep(REMOTE, 443),
                SYN,
                b""
            )
        ),
        40000
    );

    // With the forwarded port the whole range, there is nothing to take.
    let mut lab = lab_with(|c| {
        c.port_min = 40000;
        c.port_max = 40000;
    });
    lab.forward("tcp/40000=192.168.0.12:80").unwrap();
    let syn = tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 443), SYN, b"");
    let v = lab.from_lan(&syn).unwrap();
    assert_prohibited(&v, &syn, Mode::Xdp);
    assert_counters(
        &lab,
        &[("drop_port_exhausted", 1), ("new_binding", 0), ("snat", 0)],
    );
}

#[test]
fn exhausted_port_range_is_answered_with_icmp_prohibited() {
    let mut lab = lab_with(|c| {
        c.port_min = 50000;
        c.port_max = 50000;
    });
    assert_eq!(
        snat(&mut lab, &udp(ep(LAN_HOST, 50000), ep(REMOTE, 53), b"x")),
        50000
    );
    for frame in [
        udp(ep(LAN_HOST2, 50000), ep(REMOTE, 53), b"x"),
        udp(ep(LAN_HOST, 1234), ep(REMOTE, 53), b"x"),
    ] {
        let v = lab.from_lan(&frame).unwrap();
        assert_prohibited(&v, &frame, Mode::Xdp);
    }
    assert_counters(
        &lab,
        &[
            ("drop_port_exhausted", 2),
            ("icmp_prohibited_sent", 2),
            ("icmp_prohibited_rate_limited", 0),
            ("new_binding", 1),
            ("snat", 1),
        ],
    );
    // The existing mapping is unaffected.
    assert_eq!(
        snat(&mut lab, &udp(ep(LAN_HOST, 50000), ep(REMOTE, 53), b"x")),
        50000
    );
    let reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, 50000), b"y");
    let v = lab.from_wan(&reply).unwrap();
    assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 53),
        ep(LAN_HOST, 50000),
    );
}

#[test]
fn a_syn_with_ip_options_and_a_ping_that_get_no_mapping_are_answered_quoting_their_header() {
    let mut lab = lab_with(|c| {
        c.port_min = 50000;
        c.port_max = 50000;
    });
    snat(
        &mut lab,
        &tcp(ep(LAN_HOST, 50000), ep(REMOTE, 443), SYN, b""),
    );
    snat(&mut lab, &echo_request(LAN_HOST, REMOTE, 50000, 1));
    // Record route, IHL 8: the quote is the whole 32-byte header and 8
    // bytes of TCP.
    let syn = with_ip(
        &tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 443), SYN, b""),
        |ip| {
            ip.options = [0x01, 0x07, 0x0b, 0x04, 0, 0, 0, 0, 0, 0, 0, 0][..]
                .try_into()
                .unwrap()
        },
    );
    let v = lab.from_lan(&syn).unwrap();
    assert_eq!(
        assert_prohibited(&v, &syn, Mode::Xdp)
            .quoted()
            .ip
            .header_len(),
        32
    );
    let ping = echo_request(LAN_HOST2, REMOTE, 7, 1);
    let v = lab.from_lan(&ping).unwrap();
    assert_prohibited(&v, &ping, Mode::Xdp);
    assert_counters(
        &lab,
        &[("drop_port_exhausted", 2), ("icmp_prohibited_sent", 2)],
    );
}

#[test]
fn icmp_prohibited_is_rate_limited_per_cpu() {
    // The budget is per CPU: stay on one for the whole burst.
    let cpu = nix::sched::sched_getcpu().unwrap();
    let mut only = nix::sched::CpuSet::new();
    only.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only).unwrap();
    let mut lab = lab_with(|c| {
        c.port_min = 50000;
        c.port_max = 50000;
    });
    snat(&mut lab, &udp(ep(LAN_HOST, 50000), ep(REMOTE, 53), b"x"));
    const TRIES: u64 = 40;
    let started = std::time::Instant::now();
    let mut answered = 0;
    for port in 0..TRIES as u16 {
        let frame = udp(ep(LAN_HOST2, 1024 + port), ep(REMOTE, 53), b"x");
        let v = lab.from_lan(&frame).unwrap();
        if v.action == XDP_TX {
            assert_prohibited(&v, &frame, Mode::Xdp);
            answered += 1;
        } else {
            assert_dropped(&v);
        }
    }
    // A burst of 10, then 100 a second (one per 10 ms).
    let earned = started.elapsed().as_millis() as u64 / 10 + 1;
    assert!(
        (10..=10 + earned).contains(&answered),
        "{answered} of {TRIES} answered in {:?}",
        started.elapsed()
    );
    assert_counters(
        &lab,
        &[
            ("drop_port_exhausted", TRIES),
            ("icmp_prohibited_sent", answered),
            ("icmp_prohibited_rate_limited", TRIES - answered),
        ],
    );
}

// ---------------------------------------------------------------------------
// 2. Inbound: replies on dynamic mappings, and filtering.

#[test]
fn udp_reply_is_translated_back() {
    let mut lab = fresh_lab();
    snat(&mut lab, &udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q"));
    let reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"an answer");
    let v = lab.from_wan(&reply).unwrap();
    assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 53),
        ep(LAN_HOST, 40000),
    );
    assert_counters(&lab, &[("wan_rx", 1), ("dnat", 1)]);
}

#[test]
fn tcp_reply_is_translated_back_to_a_remapped_port() {
    let mut lab = fresh_lab();
    snat(
        &mut lab,
        &tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b""),
    );
    let external = snat(
        &mut lab,
        &tcp(ep(LAN_HOST2, 40000), ep(REMOTE, 443), SYN, b""),
    );
    let syn_ack = tcp(ep(REMOTE, 443), ep(WAN_ADDR, external), SYN | ACK, b"");
    let v = lab.from_wan(&syn_ack).unwrap();
    assert_routed(
        &v,
        &syn_ack,
        Egress::Lan(LAN_HOST2),
        ep(REMOTE, 443),
        ep(LAN_HOST2, 40000),
    );
    let data = tcp(ep(REMOTE, 443), ep(WAN_ADDR, external), ACK | PSH, b"hello");
    let v = lab.from_wan(&data).unwrap();
    assert_routed(
        &v,
        &data,
        Egress::Lan(LAN_HOST2),
        ep(REMOTE, 443),
        ep(LAN_HOST2, 40000),
    );
    assert_counters(&lab, &[("dnat", 2)]);
}

/// Opens a UDP mapping .12:40000 -> REMOTE:53 (external port 40000).
fn open_udp(lab: &mut PacketLab) {
    assert_eq!(
        snat(lab, &udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q")),
        40000
    );
}

fn assert_refused(lab: &mut PacketLab, frame: &[u8], action: u32) {
    let v = lab.from_wan(frame).unwrap();
    assert_eq!(v.action, action, "refused packet verdict");
    if action == XDP_PASS {
        assert_eq!(v.frame, frame, "a passed frame must not be modified");
    }
}

fn assert_accepted(lab: &mut PacketLab, frame: &[u8], remote: SocketAddrV4) {
    let v = lab.from_wan(frame).unwrap();
    assert_routed(
        &v,
        frame,
        Egress::Lan(LAN_HOST),
        remote,
        ep(LAN_HOST, 40000),
    );
}

#[test]
fn address_and_port_dependent_filtering_is_the_default() {
    let mut lab = fresh_lab();
    open_udp(&mut lab);
    assert_refused(
        &mut lab,
        &udp(ep(REMOTE, 54), ep(WAN_ADDR, 40000), b"x"),
        XDP_PASS,
    );
    assert_refused(
        &mut lab,
        &udp(ep(REMOTE2, 53), ep(WAN_ADDR, 40000), b"x"),
        XDP_PASS,
    );
    assert_counters(&lab, &[("unsolicited_pass", 2), ("dnat", 0)]);
    assert_accepted(
        &mut lab,
        &udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"x"),
        ep(REMOTE, 53),
    );
    assert_counters(&lab, &[("unsolicited_pass", 2), ("dnat", 1)]);
}

#[test]
fn filtered_packets_are_dropped_when_so_configured() {
    let mut lab = lab_with(|c| c.unsolicited = UNSOLICITED_DROP);
    open_udp(&mut lab);
    assert_refused(
        &mut lab,
        &udp(ep(REMOTE, 54), ep(WAN_ADDR, 40000), b"x"),
        XDP_DROP,
    );
    assert_refused(
        &mut lab,
        &udp(ep(OTHER_REMOTE, 53), ep(WAN_ADDR, 40000), b"x"),
        XDP_DROP,
    );
    assert_counters(
        &lab,
        &[
            ("drop_unsolicited", 2),
            ("unsolicited_pass", 0),
            ("dnat", 0),
        ],
    );
}

#[test]
fn address_dependent_filtering() {
    let mut lab = lab_with(|c| c.filtering = FILTER_ADDRESS_DEPENDENT);
    open_udp(&mut lab);
    for port in [53, 54, 9999] {
        assert_accepted(
            &mut lab,
            &udp(ep(REMOTE, port), ep(WAN_ADDR, 40000), b"x"),
            ep(REMOTE, port),
        );
    }
    assert_refused(
        &mut lab,
        &udp(ep(REMOTE2, 53), ep(WAN_ADDR, 40000), b"x"),
        XDP_PASS,
    );
    assert_counters(&lab, &[("dnat", 3), ("unsolicited_pass", 1)]);
}

#[test]
fn endpoint_independent_filtering() {
    let mut lab = lab_with(|c| c.filtering = FILTER_ENDPOINT_INDEPENDENT);
    // Nothing is let in before the mapping exists.
    assert_refused(
        &mut lab,
        &udp(ep(OTHER_REMOTE, 7777), ep(WAN_ADDR, 40000), b"x"),
        XDP_PASS,
    );
    open_udp(&mut lab);
    for remote in [ep(REMOTE, 53), ep(REMOTE, 54), ep(OTHER_REMOTE, 7777)] {
        assert_accepted(&mut lab, &udp(remote, ep(WAN_ADDR, 40000), b"x"), remote);
    }
    assert_counters(&lab, &[("dnat", 3), ("unsolicited_pass", 1)]);
}

#[test]
fn unsolicited_packets_without_a_mapping() {
    let mut lab = fresh_lab();
    let frames = [
        udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"x"),
        tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 22), SYN, b""),
        echo_reply(REMOTE, WAN_ADDR, 4242, 1),
    ];
    // A SYN that no socket of the router wants is never answered (RFC 5382
    // REQ-4: hole punching, simultaneous open); the rest goes to the
    // router's stack.
    for (frame, verdict) in frames.iter().zip([XDP_PASS, XDP_DROP, XDP_PASS]) {
        assert_refused(&mut lab, frame, verdict);
    }
    assert_counters(
        &lab,
        &[
            ("unsolicited_pass", 2),
            ("drop_unsolicited", 1),
            ("wan_rx", 3),
        ],
    );

    let mut lab = lab_with(|c| c.unsolicited = UNSOLICITED_DROP);
    for frame in &frames {
        assert_refused(&mut lab, frame, XDP_DROP);
    }
    assert_counters(&lab, &[("drop_unsolicited", 3), ("unsolicited_pass", 0)]);
}

// ---------------------------------------------------------------------------
// 3. Static forwarding.

#[test]
fn forward_reaches_the_internal_server() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_wan(&syn).unwrap();
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 5555),
        ep(LAN_HOST, 80),
    );
    // Another remote too: no allow prefix.
    let syn = tcp(ep(OTHER_REMOTE, 6666), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_wan(&syn).unwrap();
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(OTHER_REMOTE, 6666),
        ep(LAN_HOST, 80),
    );
    // The rule is TCP only.
    assert_refused(
        &mut lab,
        &udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), b"x"),
        XDP_PASS,
    );
    assert_counters(&lab, &[("forwarded", 2), ("unsolicited_pass", 1)]);
}

#[test]
fn forward_range_maps_port_by_port() {
    let mut lab = fresh_lab();
    lab.forward("udp/5000-5002=192.168.0.13:6000-6002").unwrap();
    for offset in 0..3 {
        let frame = udp(ep(REMOTE, 3333), ep(WAN_ADDR, 5000 + offset), b"x");
        let v = lab.from_wan(&frame).unwrap();
        assert_routed(
            &v,
            &frame,
            Egress::Lan(LAN_HOST2),
            ep(REMOTE, 3333),
            ep(LAN_HOST2, 6000 + offset),
        );
    }
    for port in [4999, 5003] {
        assert_refused(
            &mut lab,
            &udp(ep(REMOTE, 3333), ep(WAN_ADDR, port), b"x"),
            XDP_PASS,
        );
    }
    // Replies leave from the matching external port.
    for offset in 0..3 {
        let frame = udp(ep(LAN_HOST2, 6000 + offset), ep(REMOTE, 3333), b"y");
        let v = lab.from_lan(&frame).unwrap();
        assert_routed(
            &v,
            &frame,
            Egress::Wan,
            ep(WAN_ADDR, 5000 + offset),
            ep(REMOTE, 3333),
        );
    }
    assert_counters(
        &lab,
        &[
            ("forwarded", 3),
            ("snat", 3),
            ("unsolicited_pass", 2),
            ("new_binding", 0),
        ],
    );
}

#[test]
fn forward_allow_prefix() {
    for unsolicited in [None, Some(UNSOLICITED_DROP)] {
        let mut lab = lab_with(|c| {
            if let Some(u) = unsolicited {
                c.unsolicited = u;
            }
        });
        lab.forward("tcp/8080=192.168.0.12:80,allow=198.51.100.0/24")
            .unwrap();
        for remote in [REMOTE, REMOTE2] {
            let syn = tcp(ep(remote, 5555), ep(WAN_ADDR, 8080), SYN, b"");
            let v = lab.from_wan(&syn).unwrap();
            assert_routed(
                &v,
                &syn,
                Egress::Lan(LAN_HOST),
                ep(remote, 5555),
                ep(LAN_HOST, 80),
            );
        }
        // A SYN from outside the prefix is dropped unanswered, whatever
        // `unsolicited` says (RFC 5382 REQ-4).
        let outside = tcp(ep(OTHER_REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
        assert_refused(&mut lab, &outside, XDP_DROP);
        assert_counters(
            &lab,
            &[
                ("forwarded", 2),
                ("remote_not_allowed", 1),
                ("unsolicited_pass", 0),
                ("drop_unsolicited", 1),
            ],
        );
    }
}

#[test]
fn forwarded_servers_reply_leaves_from_the_forwarded_port() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    assert_eq!(lab.from_wan(&syn).unwrap().action, XDP_REDIRECT);
    for flags in [SYN | ACK, ACK | PSH, FIN | ACK] {
        let reply = tcp(
            ep(LAN_HOST, 80),
            ep(REMOTE, 5555),
            flags,
            b"HTTP/1.1 200 OK",
        );
        let v = lab.from_lan(&reply).unwrap();
        assert_routed(
            &v,
            &reply,
            Egress::Wan,
            ep(WAN_ADDR, 8080),
            ep(REMOTE, 5555),
        );
    }
    assert_counters(&lab, &[("forwarded", 1), ("snat", 3), ("new_binding", 0)]);
}

// ---------------------------------------------------------------------------
// 4. ICMP echo.

#[test]
fn ping_id_is_mapped_and_the_reply_translated_back() {
    let mut lab = fresh_lab();
    // Id 7 lies outside the dynamic range (1024-65535): it must be remapped.
    let request = echo_request(LAN_HOST, REMOTE, 7, 1);
    let v = lab.from_lan(&request).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    let out = parse(&v.frame);
    let id = out.echo().id;
    assert!(in_range(&lab, id), "ICMP id {id} outside the range");
    assert_routed(&v, &request, Egress::Wan, ep(WAN_ADDR, id), ep(REMOTE, id));
    assert!(matches!(
        out.icmp().icmp_type,
        Icmpv4Type::EchoRequest(IcmpEchoHeader { seq: 1, .. })
    ));

    let reply = echo_reply(REMOTE, WAN_ADDR, id, 1);
    let v = lab.from_wan(&reply).unwrap();
    assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 7),
        ep(LAN_HOST, 7),
    );
    // The next ping of the same series uses the same id.
    let request = echo_request(LAN_HOST, REMOTE, 7, 2);
    let v = lab.from_lan(&request).unwrap();
    assert_routed(&v, &request, Egress::Wan, ep(WAN_ADDR, id), ep(REMOTE, id));
    assert_counters(&lab, &[("snat", 2), ("dnat", 1), ("new_binding", 1)]);
}

#[test]
fn pings_of_two_hosts_with_the_same_id_do_not_collide() {
    let mut lab = fresh_lab();
    let first = snat(&mut lab, &echo_request(LAN_HOST, REMOTE, 0x1234, 1));
    assert_eq!(first, 0x1234, "a free id in range is kept");
    let second = snat(&mut lab, &echo_request(LAN_HOST2, REMOTE, 0x1234, 1));
    assert_ne!(second, first);
    // Another remote's reply is not let in (filtering applies to ICMP).
    let stray = echo_reply(REMOTE2, WAN_ADDR, first, 1);
    assert_passed_untouched(&lab.from_wan(&stray).unwrap(), &stray);
    assert_counters(&lab, &[("unsolicited_pass", 1)]);
    for (host, id) in [(LAN_HOST, first), (LAN_HOST2, second)] {
        let reply = echo_reply(REMOTE, WAN_ADDR, id, 1);
        let v = lab.from_wan(&reply).unwrap();
        assert_routed(
            &v,
            &reply,
            Egress::Lan(host),
            ep(REMOTE, 0x1234),
            ep(host, 0x1234),
        );
    }
}

#[test]
fn echo_requests_to_the_router_go_to_the_kernel() {
    let mut lab = fresh_lab();
    let from_wan = echo_request(REMOTE, WAN_ADDR, 99, 1);
    assert_passed_untouched(&lab.from_wan(&from_wan).unwrap(), &from_wan);
    // From the LAN, to either of the router's addresses.
    for dst in [WAN_ADDR, LAN_ADDR] {
        let from_lan = echo_request(LAN_HOST, dst, 99, 1);
        assert_passed_untouched(&lab.from_lan(&from_lan).unwrap(), &from_lan);
    }
    // A LAN host's echo reply to the Internet opens nothing, and is not
    // handed to a kernel that would forward it with the host's address.
    let reply = echo_reply(LAN_HOST, REMOTE, 99, 1);
    assert_dropped(&lab.from_lan(&reply).unwrap());
    assert_counters(
        &lab,
        &[
            ("pass_local", 3),
            ("drop_icmp_untranslated", 1),
            ("snat", 0),
            ("new_binding", 0),
        ],
    );
}

// ---------------------------------------------------------------------------
// 5. ICMP errors.

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: mtu,
    })
}

fn ttl_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

#[test]
fn port_unreachable_about_a_udp_flow() {
    let mut lab = fresh_lab();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"a DNS query");
    let out = lab.from_lan(&query).unwrap();
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (REMOTE, LAN_HOST),
        ep(LAN_HOST, 40000),
        ep(REMOTE, 53),
    );
    assert!(p.quoted().is_complete());
    // The quote now reads as the datagram the host sent, checksums included.
    assert_eq!(p.payload, after_one_hop(&query));
    assert_counters(&lab, &[("icmp_error_in", 1), ("dnat", 0)]);
}

#[test]
fn fragmentation_needed_about_a_tcp_flow() {
    let mut lab = fresh_lab();
    let mut rng = Rng::new(42);
    let segment = tcp(
        ep(LAN_HOST, 40001),
        ep(REMOTE, 443),
        ACK | PSH,
        &rng.bytes(1400),
    );
    let segment = with_ip(&segment, |ip| ip.dont_fragment = true);
    let out = lab.from_lan(&segment).unwrap();
    assert_routed(
        &out,
        &segment,
        Egress::Wan,
        ep(WAN_ADDR, 40001),
        ep(REMOTE, 443),
    );
    // A complete quote, the 576-byte one Linux sends, and the RFC 792 minimum.
    let quotes = [
        datagram(&out.frame).to_vec(),
        datagram(&out.frame)[..548].to_vec(),
        minimal_quote(&out.frame).to_vec(),
    ];
    for quote in quotes {
        let error = icmp(HOP, WAN_ADDR, frag_needed(1280), &quote);
        let v = lab.from_wan(&error).unwrap();
        let p = assert_error_routed(
            &v,
            &error,
            Egress::Lan(LAN_HOST),
            (HOP, LAN_HOST),
            ep(LAN_HOST, 40001),
            ep(REMOTE, 443),
        );
        assert_eq!(p.icmp().icmp_type, frag_needed(1280), "next-hop MTU kept");
        let sent = after_one_hop(&segment);
        assert_eq!(
            p.payload,
            sent[..quote.len()],
            "quote of {} bytes",
            quote.len()
        );
    }
    assert_counters(&lab, &[("icmp_error_in", 3)]);
}

#[test]
fn time_exceeded_about_udp_and_a_ping() {
    let mut lab = fresh_lab();
    let probe = udp(ep(LAN_HOST2, 33434), ep(REMOTE, 33435), b"traceroute");
    let probe = with_ip(&probe, |ip| ip.time_to_live = 2);
    let out = lab.from_lan(&probe).unwrap();
    assert_routed(
        &out,
        &probe,
        Egress::Wan,
        ep(WAN_ADDR, 33434),
        ep(REMOTE, 33435),
    );
    let error = icmp(HOP, WAN_ADDR, ttl_exceeded(), minimal_quote(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST2),
        (HOP, LAN_HOST2),
        ep(LAN_HOST2, 33434),
        ep(REMOTE, 33435),
    );
    assert_eq!(p.payload, after_one_hop(&probe)[..28]);

    let ping = echo_request(LAN_HOST, REMOTE, 7, 3);
    let out = lab.from_lan(&ping).unwrap();
    let id = parse(&out.frame).echo().id;
    assert_ne!(id, 7);
    let error = icmp(HOP, WAN_ADDR, ttl_exceeded(), datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (HOP, LAN_HOST),
        ep(LAN_HOST, 7),
        ep(REMOTE, 7),
    );
    assert!(p.quoted().is_complete());
    assert_eq!(p.payload, after_one_hop(&ping));
    assert_counters(&lab, &[("icmp_error_in", 2)]);
}

#[test]
fn icmp_error_with_rfc4884_extensions_is_translated_around_them() {
    // RFC 4884: the original datagram zero-padded to 128 bytes, its length
    // in words in the ICMP header, then an extension structure (here an
    // MPLS label stack object, as traceroute meets). The error's checksum
    // covers the extensions, so it is summed over them and let in; the
    // translation touches the quote only (RFC 5508 REQ-3d).
    let mut lab = fresh_lab();
    let mut rng = Rng::new(4884);
    let probe = udp(ep(LAN_HOST, 40012), ep(REMOTE, 33434), &rng.bytes(300));
    let out = lab.from_lan(&probe).unwrap();
    let mut message = datagram(&out.frame)[..128].to_vec();
    let mpls_label_stack = [0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x41, 0xff];
    let extension = icmp_extension(&mpls_label_stack);
    message.extend_from_slice(&extension);
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), &message);
    let error = patch_icmp(&error, 5, &[128 / 4]);
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (REMOTE, LAN_HOST),
        ep(LAN_HOST, 40012),
        ep(REMOTE, 33434),
    );
    let icmp_header = 14 + 20;
    assert_eq!(v.frame[icmp_header + 5], 128 / 4, "the quote's length");
    assert_eq!(p.payload[..128], after_one_hop(&probe)[..128]);
    assert_eq!(p.payload[128..], extension[..], "the extensions as sent");
    assert_counters(&lab, &[("icmp_error_in", 1), ("drop_icmp_bad_checksum", 0)]);

    // The same error with an extension corrupted in flight is dropped.
    let mut corrupt = error.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    let v = lab.from_wan(&corrupt).unwrap();
    assert_eq!(v.action, XDP_DROP, "an error whose extensions fail the sum");
    assert_counters(&lab, &[("drop_icmp_bad_checksum", 1)]);
}

#[test]
fn icmp_error_followed_by_ethernet_padding() {
    // Bytes after the IP datagram (a trailer some NICs leave) are not part
    // of the ICMP message: neither rewritten nor summed.
    let mut lab = fresh_lab();
    let syn = tcp(ep(LAN_HOST, 40002), ep(REMOTE, 443), SYN, b"");
    let out = lab.from_lan(&syn).unwrap();
    let mut error = icmp(
        REMOTE,
        WAN_ADDR,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
        minimal_quote(&out.frame),
    );
    error.extend_from_slice(&[0xa5; 16]);
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (REMOTE, LAN_HOST),
        ep(LAN_HOST, 40002),
        ep(REMOTE, 443),
    );
    assert_eq!(p.trailer, [0xa5; 16]);
    assert_eq!(p.payload, after_one_hop(&syn)[..28]);

    // The same from a LAN host, about a forwarded flow.
    lab.forward("tcp/8080=192.168.0.13:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    let delivered = lab.from_wan(&syn).unwrap();
    let mut error = icmp(
        LAN_HOST2,
        REMOTE,
        port_unreachable(),
        minimal_quote(&delivered.frame),
    );
    error.extend_from_slice(&[0x5a; 16]);
    let v = lab.from_lan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Wan,
        (WAN_ADDR, REMOTE),
        ep(REMOTE, 5555),
        ep(WAN_ADDR, 8080),
    );
    assert_eq!(p.trailer, [0x5a; 16]);

    // A quote too short to hold the ports is not completed from the
    // trailer: there is nothing to translate it by.
    let mut error = icmp(
        REMOTE,
        WAN_ADDR,
        port_unreachable(),
        &minimal_quote(&out.frame)[..24],
    );
    error.extend_from_slice(&[0xa5; 16]);
    assert_passed_untouched(&lab.from_wan(&error).unwrap(), &error);
    assert_counters(
        &lab,
        &[
            ("icmp_error_in", 1),
            ("icmp_error_out", 1),
            ("pass_malformed", 1),
        ],
    );
}

#[test]
fn icmp_error_about_a_forwarded_servers_reply() {
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let answer = udp(ep(LAN_HOST, 53), ep(REMOTE, 5555), b"answer");
    let out = lab.from_lan(&answer).unwrap();
    assert_routed(
        &out,
        &answer,
        Egress::Wan,
        ep(WAN_ADDR, 8053),
        ep(REMOTE, 5555),
    );
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (REMOTE, LAN_HOST),
        ep(LAN_HOST, 53),
        ep(REMOTE, 5555),
    );
    assert_eq!(p.payload, after_one_hop(&answer));
}

#[test]
fn lan_hosts_icmp_error_about_a_forwarded_flow() {
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let query = udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), b"query");
    let delivered = lab.from_wan(&query).unwrap();
    assert_eq!(delivered.action, XDP_REDIRECT);
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
    // The remote sees its own datagram quoted, as it reached us.
    assert_eq!(p.payload, after_one_hop(&query));
    assert_counters(&lab, &[("icmp_error_out", 1), ("snat", 0)]);
}

#[test]
fn lan_hosts_icmp_error_about_a_reply_on_a_dynamic_mapping() {
    let mut lab = lab_with(|c| {
        c.port_min = 20000;
        c.port_max = 20999;
    });
    let external = snat(&mut lab, &udp(ep(LAN_HOST, 1500), ep(REMOTE, 53), b"q"));
    assert_ne!(external, 1500, "1500 lies below the dynamic range");
    let reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, external), b"late answer");
    let delivered = lab.from_wan(&reply).unwrap();
    assert_eq!(delivered.action, XDP_REDIRECT);
    let error = icmp(
        LAN_HOST,
        REMOTE,
        port_unreachable(),
        minimal_quote(&delivered.frame),
    );
    let v = lab.from_lan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Wan,
        (WAN_ADDR, REMOTE),
        ep(REMOTE, 53),
        ep(WAN_ADDR, external),
    );
    assert_eq!(p.payload, after_one_hop(&reply)[..28]);
    assert_counters(&lab, &[("icmp_error_out", 1)]);
}

/// Symmetric mapping with endpoint-independent filtering: a remote may
/// come in on a mapping made for another remote. The host's error about
/// that packet is translated by the mapping that let it in, the port the
/// remote sent to, though no mapping is keyed by that remote.
#[test]
fn lan_hosts_icmp_error_about_a_stranger_admitted_by_endpoint_independent_filtering() {
    let mut lab = lab_with(|c| {
        c.mapping = nat_common::MAPPING_ADDRESS_AND_PORT_DEPENDENT;
        c.filtering = FILTER_ENDPOINT_INDEPENDENT;
    });
    let first = snat(&mut lab, &udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q"));
    // A second mapping of the endpoint, for another remote, on another port.
    let second = snat(&mut lab, &udp(ep(LAN_HOST, 40000), ep(REMOTE2, 53), b"q"));
    assert_ne!(first, second);
    for (stranger, external) in [
        (ep(OTHER_REMOTE, 7000), first),
        (ep(OTHER_REMOTE, 7001), second),
    ] {
        let packet = udp(stranger, ep(WAN_ADDR, external), b"hello");
        let delivered = lab.from_wan(&packet).unwrap();
        assert_eq!(delivered.action, XDP_REDIRECT, "let in by the filter");
        let error = icmp(
            LAN_HOST,
            *stranger.ip(),
            port_unreachable(),
            minimal_quote(&delivered.frame),
        );
        let v = lab.from_lan(&error).unwrap();
        assert_error_routed(
            &v,
            &error,
            Egress::Wan,
            (WAN_ADDR, *stranger.ip()),
            stranger,
            ep(WAN_ADDR, external),
        );
    }
    assert_counters(&lab, &[("icmp_error_out", 2), ("new_binding", 2)]);
}

#[test]
fn icmp_errors_with_a_bad_checksum_or_quoted_header_checksum_are_dropped() {
    let mut lab = fresh_lab();
    icmp_errors_with_bad_checksums_are_dropped(&mut lab);
}

#[test]
fn icmp_errors_about_nothing_we_translated_go_to_the_kernel() {
    let mut lab = fresh_lab();
    // About a datagram the router itself sent (no mapping for the port).
    let own = udp(ep(WAN_ADDR, 12345), ep(REMOTE, 53), b"q");
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&own));
    assert_passed_untouched(&lab.from_wan(&error).unwrap(), &error);
    // About a datagram from another source address.
    let other = udp(
        ep(Ipv4Addr::new(203, 0, 113, 9), 40000),
        ep(REMOTE, 53),
        b"q",
    );
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&other));
    assert_passed_untouched(&lab.from_wan(&error).unwrap(), &error);
    // From a LAN host about a flow that never came through the NAT: the
    // kernel would forward it with the host's address, so it is dropped.
    let stray = udp(ep(REMOTE, 53), ep(LAN_HOST, 40000), b"q");
    let error = icmp(LAN_HOST, REMOTE, port_unreachable(), datagram(&stray));
    assert_dropped(&lab.from_lan(&error).unwrap());
    assert_counters(
        &lab,
        &[
            ("pass_local", 2),
            ("drop_icmp_untranslated", 1),
            ("icmp_error_in", 0),
            ("icmp_error_out", 0),
        ],
    );
}

// ---------------------------------------------------------------------------
// 6. Hairpin.

#[test]
fn hairpin_to_a_forwarded_port_and_back() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let syn = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_lan(&syn).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    let port = parse(&v.frame).src().port();
    assert!(in_range(&lab, port));
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, port),
        ep(LAN_HOST, 80),
    );

    for flags in [SYN | ACK, ACK | PSH] {
        let reply = tcp(ep(LAN_HOST, 80), ep(WAN_ADDR, port), flags, b"hi");
        let v = lab.from_lan(&reply).unwrap();
        assert_routed(
            &v,
            &reply,
            Egress::Lan(LAN_HOST2),
            ep(WAN_ADDR, 8080),
            ep(LAN_HOST2, 45000),
        );
    }
    let ack = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), ACK, b"");
    let v = lab.from_lan(&ack).unwrap();
    assert_routed(
        &v,
        &ack,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, port),
        ep(LAN_HOST, 80),
    );
    assert_counters(&lab, &[("hairpin", 4), ("snat", 0), ("new_binding", 1)]);

    // The server reaching its own forwarded port.
    let syn = tcp(ep(LAN_HOST, 46000), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_lan(&syn).unwrap();
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, 46000),
        ep(LAN_HOST, 80),
    );
    let syn_ack = tcp(ep(LAN_HOST, 80), ep(WAN_ADDR, 46000), SYN | ACK, b"");
    let v = lab.from_lan(&syn_ack).unwrap();
    assert_routed(
        &v,
        &syn_ack,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, 8080),
        ep(LAN_HOST, 46000),
    );
}

#[test]
fn a_rule_for_another_port_never_re_ports_a_live_mappings_flows() {
    // RFC 4787 REQ-11: .12:3074 talks out on its mapping (3074); then a
    // rule forwards 5000 to it. Its flows stay on 3074, to old remotes and
    // new ones alike; only the remotes that come in on 5000 are answered
    // from 5000.
    let mut lab = fresh_lab();
    let game = ep(LAN_HOST, 3074);
    assert_eq!(snat(&mut lab, &udp(game, ep(REMOTE, 3478), b"stun")), 3074);
    lab.forward("udp/5000=192.168.0.12:3074").unwrap();
    assert_eq!(snat(&mut lab, &udp(game, ep(REMOTE, 3478), b"again")), 3074);
    assert_eq!(
        snat(&mut lab, &udp(game, ep(OTHER_REMOTE, 53), b"new")),
        3074
    );
    // A player comes in on the rule's port and is answered from it.
    let player = ep(REMOTE2, 6000);
    let join = udp(player, ep(WAN_ADDR, 5000), b"join");
    let v = lab.from_wan(&join).unwrap();
    assert_routed(&v, &join, Egress::Lan(LAN_HOST), player, game);
    assert_eq!(snat(&mut lab, &udp(game, player, b"welcome")), 5000);
    // And the mapping's remote still reaches the game on 3074.
    let reply = udp(ep(REMOTE, 3478), ep(WAN_ADDR, 3074), b"binding");
    let v = lab.from_wan(&reply).unwrap();
    assert_routed(&v, &reply, Egress::Lan(LAN_HOST), ep(REMOTE, 3478), game);
}

#[test]
fn hairpin_off_leaves_it_to_the_kernel() {
    let mut lab = lab_with(|c| c.hairpin = 0);
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let syn = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), SYN, b"");
    assert_passed_untouched(&lab.from_lan(&syn).unwrap(), &syn);
    assert_counters(&lab, &[("hairpin", 0), ("pass_local", 1)]);
}

#[test]
fn hairpin_to_another_hosts_dynamic_mapping_follows_filtering() {
    // Endpoint-independent filtering: .13 may reach .12's mapping.
    let mut lab = lab_with(|c| c.filtering = FILTER_ENDPOINT_INDEPENDENT);
    open_udp(&mut lab);
    let frame = udp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 40000), b"p2p");
    let v = lab.from_lan(&frame).unwrap();
    assert_routed(
        &v,
        &frame,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, 45000),
        ep(LAN_HOST, 40000),
    );
    let back = udp(ep(LAN_HOST, 40000), ep(WAN_ADDR, 45000), b"p2p back");
    let v = lab.from_lan(&back).unwrap();
    assert_routed(
        &v,
        &back,
        Egress::Lan(LAN_HOST2),
        ep(WAN_ADDR, 40000),
        ep(LAN_HOST2, 45000),
    );
    assert_counters(&lab, &[("hairpin", 2)]);

    // Address-and-port-dependent: .12 never sent to .13's side of it. The
    // filter refuses it as it would from outside (RFC 4787 REQ-9), and it
    // is dropped: the router's own stack would answer it with a reset or a
    // port unreachable.
    let mut lab = fresh_lab();
    open_udp(&mut lab);
    assert_eq!(lab.from_lan(&frame).unwrap().action, XDP_DROP);
    assert_counters(&lab, &[("hairpin", 0), ("drop_unsolicited", 1)]);
}

#[test]
fn a_hairpinned_packets_icmp_error_goes_back_to_its_sender() {
    // RFC 5508 REQ-7: .13 reaches .12's mapping through the WAN address;
    // .12 answers port unreachable to what it saw, the WAN address. .13
    // gets it as from outside: from the WAN address, quoting what it sent.
    let mut lab = lab_with(|c| c.filtering = FILTER_ENDPOINT_INDEPENDENT);
    open_udp(&mut lab);
    let frame = udp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 40000), b"p2p");
    let delivered = lab.from_lan(&frame).unwrap();
    assert_eq!(delivered.action, XDP_REDIRECT);
    let error = icmp(
        LAN_HOST,
        WAN_ADDR,
        port_unreachable(),
        datagram(&delivered.frame),
    );
    let v = lab.from_lan(&error).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    let out = &v.frame;
    let (smac, dmac) = Egress::Lan(LAN_HOST2).macs();
    assert_eq!(
        (out[6..12].to_vec(), out[..6].to_vec()),
        (smac.to_vec(), dmac.to_vec())
    );
    assert_eq!(out[26..30], WAN_ADDR.octets(), "outer source");
    assert_eq!(out[30..34], LAN_HOST2.octets(), "outer destination");
    let sum = nat_tests::traffic::internet_checksum;
    assert_eq!(sum(&out[14..34]), 0, "outer IP header checksum");
    assert_eq!(sum(&out[34..]), 0, "ICMP checksum");
    assert_eq!(out[42..], after_one_hop(&frame)[..], "the quote");
    assert_counters(&lab, &[("hairpin", 1), ("icmp_error_in", 1)]);

    // An error about the router's own traffic stays the router's.
    let own = udp(ep(WAN_ADDR, 5353), ep(LAN_HOST, 40000), b"the router's");
    let error = icmp(LAN_HOST, WAN_ADDR, port_unreachable(), datagram(&own));
    assert_passed_untouched(&lab.from_lan(&error).unwrap(), &error);
}

// ---------------------------------------------------------------------------
// 7. Checksums.

#[test]
fn udp_without_checksum_stays_without() {
    let mut lab = fresh_lab();
    let mut query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"no checksum");
    query[40..42].fill(0);
    let v = lab.from_lan(&query).unwrap();
    let p = assert_routed(&v, &query, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 53));
    assert_eq!(p.l4_checksum(), 0);

    let mut reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"none either");
    reply[40..42].fill(0);
    let v = lab.from_wan(&reply).unwrap();
    let p = assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 53),
        ep(LAN_HOST, 40000),
    );
    assert_eq!(p.l4_checksum(), 0);

    // Quoted in an ICMP error, it stays zero as well.
    let out = lab.from_lan(&query).unwrap();
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (REMOTE, LAN_HOST),
        ep(LAN_HOST, 40000),
        ep(REMOTE, 53),
    );
    assert_eq!(p.quoted().l4_checksum(), 0);
}

/// A payload whose first word makes the one's complement sum of `after`
/// (the segment as translated) 0xffff, so that its checksum comes out zero.
fn payload_for_zero_checksum(after: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut payload = b"\0\0 checksum zero".to_vec();
    // With the word at 0 the checksum is !S; adding !S makes the sum 0xffff.
    let check = parse(&after(&payload)).l4_checksum();
    payload[..2].copy_from_slice(&check.to_be_bytes());
    payload
}

#[test]
fn udp_checksum_that_comes_out_zero_is_sent_as_ffff() {
    let mut lab = fresh_lab();
    let payload = payload_for_zero_checksum(|p| udp(ep(WAN_ADDR, 40000), ep(REMOTE, 53), p));
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), &payload);
    let v = lab.from_lan(&query).unwrap();
    let p = assert_routed(&v, &query, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 53));
    assert_eq!(p.l4_checksum(), 0xffff);

    let payload = payload_for_zero_checksum(|p| udp(ep(REMOTE, 53), ep(LAN_HOST, 40000), p));
    let reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), &payload);
    let v = lab.from_wan(&reply).unwrap();
    let p = assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 53),
        ep(LAN_HOST, 40000),
    );
    assert_eq!(p.l4_checksum(), 0xffff);
}

#[test]
fn tcp_checksum_that_comes_out_zero_is_sent_as_zero() {
    // TCP has no "no checksum" value: a zero stays zero (and 0xffff, its
    // other one's complement form, would be wrong to etherparse).
    let mut lab = fresh_lab();
    let payload =
        payload_for_zero_checksum(|p| tcp(ep(WAN_ADDR, 40000), ep(REMOTE, 443), ACK | PSH, p));
    let segment = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), ACK | PSH, &payload);
    let v = lab.from_lan(&segment).unwrap();
    let p = assert_routed(
        &v,
        &segment,
        Egress::Wan,
        ep(WAN_ADDR, 40000),
        ep(REMOTE, 443),
    );
    assert_eq!(p.l4_checksum(), 0);

    let payload =
        payload_for_zero_checksum(|p| tcp(ep(REMOTE, 443), ep(LAN_HOST, 40000), ACK | PSH, p));
    let segment = tcp(ep(REMOTE, 443), ep(WAN_ADDR, 40000), ACK | PSH, &payload);
    let v = lab.from_wan(&segment).unwrap();
    let p = assert_routed(
        &v,
        &segment,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 443),
        ep(LAN_HOST, 40000),
    );
    assert_eq!(p.l4_checksum(), 0);
}

#[test]
fn checksums_stay_right_on_random_payloads() {
    let mut lab = lab_with(|c| c.filtering = FILTER_ENDPOINT_INDEPENDENT);
    let mut rng = Rng::new(0x5eed);
    let sizes = [0, 1, 2, 3, 7, 8, 63, 64, 255, 256, 511, 1000, 1399, 1460];
    for (i, &size) in sizes.iter().enumerate() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            let host = if i % 2 == 0 { LAN_HOST } else { LAN_HOST2 };
            // Ports all over the range, some kept, some remapped.
            let port = (rng.next_u64() % 65535) as u16 + 1;
            let remote = ep(
                Ipv4Addr::new(198, 51, 100, (rng.next_u64() % 250) as u8 + 1),
                (rng.next_u64() % 65535) as u16 + 1,
            );
            let build = |src, dst, payload: &[u8]| match proto {
                PROTO_TCP => tcp(src, dst, ACK | PSH, payload),
                _ => udp(src, dst, payload),
            };
            let out = build(ep(host, port), remote, &rng.bytes(size));
            let external = snat(&mut lab, &out);
            let back = build(remote, ep(WAN_ADDR, external), &rng.bytes(size));
            let v = lab.from_wan(&back).unwrap();
            assert_routed(&v, &back, Egress::Lan(host), remote, ep(host, port));
        }
    }
}

// ---------------------------------------------------------------------------
// 8. What goes to the kernel.

/// A UDP query from .12 and, once it is mapped, a reply: frames that would
/// be translated if they were whole and well formed.
fn mapped_pair(lab: &mut PacketLab) -> (Vec<u8>, Vec<u8>) {
    let query = udp(
        ep(LAN_HOST, 40000),
        ep(REMOTE, 53),
        b"a query of some length",
    );
    open_udp(lab);
    let reply = udp(
        ep(REMOTE, 53),
        ep(WAN_ADDR, 40000),
        b"a reply of some length",
    );
    (query, reply)
}

#[test]
fn non_ipv4_goes_to_the_kernel() {
    let mut lab = fresh_lab();
    let mut arp = Ethernet2Header {
        source: LAN_HOST_MAC,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    }
    .to_bytes()
    .to_vec();
    // who-has 192.168.0.1 tell 192.168.0.12
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&LAN_HOST_MAC);
    arp.extend_from_slice(&LAN_HOST.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&LAN_ADDR.octets());
    arp.resize(60, 0);
    let mut ipv6 = Vec::new();
    PacketBuilder::ethernet2(LAN_HOST_MAC, LAN_MAC)
        .ipv6([0xfd; 16], [0x20; 16], 64)
        .udp(40000, 53)
        .write(&mut ipv6, b"x")
        .unwrap();
    let mut zeros = [0u8; 60].to_vec();
    zeros[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
    for frame in [&arp, &ipv6, &zeros] {
        assert_passed_untouched(&lab.from_lan(frame).unwrap(), frame);
        assert_passed_untouched(&lab.from_wan(frame).unwrap(), frame);
    }
    assert_counters(&lab, &[("pass_not_ipv4", 6), ("lan_rx", 3), ("wan_rx", 3)]);
}

#[test]
fn vlan_tagged_frames_go_to_the_kernel() {
    let mut lab = fresh_lab();
    let (query, reply) = mapped_pair(&mut lab);
    let tag = |frame: &[u8], tpid: u16| {
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&tpid.to_be_bytes());
        tagged.extend_from_slice(&10u16.to_be_bytes());
        tagged.extend_from_slice(&frame[12..]);
        tagged
    };
    let mut built = Vec::new();
    PacketBuilder::ethernet2(LAN_HOST_MAC, LAN_MAC)
        .single_vlan(VlanId::try_new(10).unwrap())
        .ipv4(LAN_HOST.octets(), REMOTE.octets(), 64)
        .udp(40000, 53)
        .write(&mut built, b"x")
        .unwrap();
    for frame in [&built, &tag(&query, 0x8100), &tag(&query, 0x88a8)] {
        assert_passed_untouched(&lab.from_lan(frame).unwrap(), frame);
    }
    for frame in [tag(&reply, 0x8100), tag(&reply, 0x88a8)] {
        assert_passed_untouched(&lab.from_wan(&frame).unwrap(), &frame);
    }
    assert_counters(&lab, &[("pass_vlan", 5)]);
}

#[test]
fn truncated_frames_go_to_the_kernel() {
    let mut lab = fresh_lab();
    let (query, reply) = mapped_pair(&mut lab);
    let syn = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 80), SYN, b"");
    let ping = echo_request(LAN_HOST, REMOTE, 4000, 1);
    // An ICMP error about the mapped flow, to be cut inside the quote.
    let sent = udp(ep(WAN_ADDR, 40000), ep(REMOTE, 53), b"a query");
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&sent));
    let (mut malformed, mut dropped) = (0, 0);
    let cases: [(&[u8], &[usize], bool); 5] = [
        (&query, &[14, 15, 33, 34, 41], true),
        (&syn, &[14, 33, 34, 41, 53], true),
        (&ping, &[14, 33, 34, 41], true),
        (&reply, &[14, 33, 34, 41], false),
        // Quoted IP header cut; quoted ports cut.
        (&error, &[52, 61, 66], false),
    ];
    for (frame, cuts, lan) in cases {
        for &cut in cuts {
            let cut_frame = &frame[..cut];
            // Cut as it is, and with a total length that agrees with the
            // cut (a well-formed IP header, a short L4 header).
            let mut variants = vec![cut_frame.to_vec()];
            if cut >= 34 {
                let len = (cut - 14) as u16;
                variants.push(patch_ip(cut_frame, 2, &len.to_be_bytes()));
            }
            for (i, variant) in variants.into_iter().enumerate() {
                // From the LAN, a well-formed IP header (the kernel would
                // forward it) with an L4 header too short to translate is
                // dropped; the rest goes to the kernel, which drops it.
                if lan && i == 1 {
                    assert_dropped(&lab.from_lan(&variant).unwrap());
                    dropped += 1;
                    continue;
                }
                let v = if lan {
                    lab.from_lan(&variant).unwrap()
                } else {
                    lab.from_wan(&variant).unwrap()
                };
                assert_passed_untouched(&v, &variant);
                malformed += 1;
            }
        }
    }
    assert_counters(
        &lab,
        &[
            ("pass_malformed", malformed),
            ("drop_malformed", dropped),
            ("snat", 1),
            ("dnat", 0),
        ],
    );

    // Shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses such a
    // frame (EINVAL, as NICs drop runts); should a kernel run the program
    // on it, it must pass it.
    for len in [0, 1, 13] {
        if let Ok(v) = lab.from_lan(&query[..len]) {
            assert_passed_untouched(&v, &query[..len]);
        }
    }
}

#[test]
fn malformed_ip_headers_go_to_the_kernel() {
    let mut lab = fresh_lab();
    let (query, reply) = mapped_pair(&mut lab);
    let broken = |frame: &[u8]| {
        let total = (frame.len() - 14) as u16;
        [
            patch_ip(frame, 0, &[0x44]),                    // IHL 4
            patch_ip(frame, 0, &[0x40]),                    // IHL 0
            patch_ip(frame, 0, &[0x65]),                    // version 6
            patch_ip(frame, 0, &[0x4f]),                    // IHL 15, beyond the datagram
            patch_ip(frame, 2, &(total + 1).to_be_bytes()), // longer than the frame
            patch_ip(frame, 2, &19u16.to_be_bytes()),       // shorter than the header
            patch_ip(frame, 2, &0u16.to_be_bytes()),        // zero
        ]
    };
    for frame in broken(&query) {
        assert_passed_untouched(&lab.from_lan(&frame).unwrap(), &frame);
    }
    for frame in broken(&reply) {
        assert_passed_untouched(&lab.from_wan(&frame).unwrap(), &frame);
    }
    assert_counters(&lab, &[("pass_malformed", 14), ("snat", 1), ("dnat", 0)]);
}

#[test]
fn ip_options_are_translated_using_the_header_length() {
    let mut lab = fresh_lab();
    // Router alert (RFC 2113), IHL 6; and a NOP-padded record route, IHL 8.
    let options: [&[u8]; 2] = [
        &[0x94, 0x04, 0x00, 0x00],
        &[0x01, 0x07, 0x0b, 0x04, 0, 0, 0, 0, 0, 0, 0, 0],
    ];
    for (i, opts) in options.into_iter().enumerate() {
        let port = 40000 + i as u16;
        let query = with_ip(&udp(ep(LAN_HOST, port), ep(REMOTE, 53), b"opts"), |ip| {
            ip.options = opts.try_into().unwrap()
        });
        assert_eq!(usize::from(query[14] & 0x0f) * 4, 20 + opts.len());
        let out = lab.from_lan(&query).unwrap();
        let p = assert_routed(
            &out,
            &query,
            Egress::Wan,
            ep(WAN_ADDR, port),
            ep(REMOTE, 53),
        );
        assert_eq!(p.ip.options.as_slice(), opts);

        let reply = with_ip(
            &udp(ep(REMOTE, 53), ep(WAN_ADDR, port), b"opts back"),
            |ip| ip.options = opts.try_into().unwrap(),
        );
        let v = lab.from_wan(&reply).unwrap();
        assert_routed(
            &v,
            &reply,
            Egress::Lan(LAN_HOST),
            ep(REMOTE, 53),
            ep(LAN_HOST, port),
        );

        // An ICMP error quoting the datagram with its options.
        let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&out.frame));
        let v = lab.from_wan(&error).unwrap();
        let p = assert_error_routed(
            &v,
            &error,
            Egress::Lan(LAN_HOST),
            (REMOTE, LAN_HOST),
            ep(LAN_HOST, port),
            ep(REMOTE, 53),
        );
        assert_eq!(p.payload, after_one_hop(&query));

        // And one that carries options itself.
        let error = with_ip(&error, |ip| ip.options = opts.try_into().unwrap());
        let v = lab.from_wan(&error).unwrap();
        let p = assert_error_routed(
            &v,
            &error,
            Egress::Lan(LAN_HOST),
            (REMOTE, LAN_HOST),
            ep(LAN_HOST, port),
            ep(REMOTE, 53),
        );
        assert_eq!(p.ip.options.as_slice(), opts);
        assert_eq!(p.payload, after_one_hop(&query));
    }
}

#[test]
fn icmp_errors_quoting_fragments() {
    // (Fragments themselves: `fragments.rs`.)
    let mut lab = fresh_lab();
    let (query, _) = mapped_pair(&mut lab);
    // Don't-fragment is no fragment: translated as usual.
    let df = with_ip(&query, |ip| ip.dont_fragment = true);
    let v = lab.from_lan(&df).unwrap();
    assert_routed(&v, &df, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 53));

    // An ICMP error quoting a first fragment still has the ports: it is
    // translated. One quoting a later fragment has none: the kernel's.
    let first = with_ip(&v.frame, |ip| ip.more_fragments = true);
    let error = icmp(HOP, WAN_ADDR, ttl_exceeded(), minimal_quote(&first));
    let v = lab.from_wan(&error).unwrap();
    let p = assert_error_routed(
        &v,
        &error,
        Egress::Lan(LAN_HOST),
        (HOP, LAN_HOST),
        ep(LAN_HOST, 40000),
        ep(REMOTE, 53),
    );
    let sent = with_ip(&df, |ip| ip.more_fragments = true);
    assert_eq!(p.payload, after_one_hop(&sent)[..28]);
    let later = with_ip(&first, |ip| {
        ip.fragment_offset = IpFragOffset::try_new(185).unwrap();
    });
    let error = icmp(HOP, WAN_ADDR, ttl_exceeded(), minimal_quote(&later));
    assert_passed_untouched(&lab.from_wan(&error).unwrap(), &error);
    assert_counters(&lab, &[("pass_fragment", 1), ("icmp_error_in", 1)]);
}

#[test]
fn expiring_ttl_goes_to_the_kernel() {
    let mut lab = fresh_lab();
    let (query, reply) = mapped_pair(&mut lab);
    for ttl in [0, 1] {
        let frame = with_ip(&query, |ip| ip.time_to_live = ttl);
        assert_passed_untouched(&lab.from_lan(&frame).unwrap(), &frame);
        let frame = with_ip(&reply, |ip| ip.time_to_live = ttl);
        assert_passed_untouched(&lab.from_wan(&frame).unwrap(), &frame);
    }
    assert_counters(&lab, &[("pass_ttl_expired", 4), ("dnat", 0)]);
    // TTL 2 still makes it, with TTL 1.
    let frame = with_ip(&reply, |ip| ip.time_to_live = 2);
    let v = lab.from_wan(&frame).unwrap();
    let p = assert_routed(
        &v,
        &frame,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 53),
        ep(LAN_HOST, 40000),
    );
    assert_eq!(p.ttl(), 1);
}

#[test]
fn unresolved_lan_neighbour_goes_to_the_kernel_translated() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8081=192.168.0.99:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8081), SYN, b"");
    let v = lab.from_wan(&syn).unwrap();
    assert_eq!(v.action, XDP_PASS);
    let p = assert_checksums_ok(&v.frame);
    // Translated, but not routed: the kernel forwards it (TTL, MACs).
    assert_translated(&p, &syn, ep(REMOTE, 5555), ep(LAN_UNRESOLVED, 80), 0);
    assert_eq!(p.eth.source, GATEWAY_MAC);
    assert_eq!(p.eth.destination, WAN_MAC);
    assert_counters(&lab, &[("pass_no_neighbour", 1), ("forwarded", 0)]);
}

#[test]
fn larger_than_the_egress_mtu_goes_to_the_kernel() {
    // The kernel fragments it, or sends the "fragmentation needed" that
    // path MTU discovery relies on; the datapath must not translate it.
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let mut rng = Rng::new(7);
    let big = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), &rng.bytes(1600));
    assert_passed_untouched(&lab.from_lan(&big).unwrap(), &big);
    let big = udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), &rng.bytes(1600));
    assert_passed_untouched(&lab.from_wan(&big).unwrap(), &big);
    assert_counters(
        &lab,
        &[
            ("pass_mtu_exceeded", 2),
            ("new_binding", 0),
            ("forwarded", 0),
        ],
    );
    // Exactly the MTU still goes through.
    let full = udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), &rng.bytes(1500 - 28));
    let v = lab.from_wan(&full).unwrap();
    assert_routed(
        &v,
        &full,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 5555),
        ep(LAN_HOST, 53),
    );
}

#[test]
fn unroutable_and_lan_routed_destinations_go_to_the_kernel() {
    let mut lab = fresh_lab();
    let netns = &lab.netns;
    netns
        .ip(&["route", "add", "unreachable", "198.18.0.0/15"])
        .unwrap();
    netns
        .ip(&["route", "add", "blackhole", "198.51.100.128/25"])
        .unwrap();
    // A network behind a LAN router: not for the WAN, not for the NAT.
    netns
        .ip(&["route", "add", "10.20.0.0/16", "via", "192.168.0.13"])
        .unwrap();
    for dst in [
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 51, 100, 200),
    ] {
        let frame = udp(ep(LAN_HOST, 40000), ep(dst, 53), b"x");
        assert_passed_untouched(&lab.from_lan(&frame).unwrap(), &frame);
    }
    let frame = tcp(
        ep(LAN_HOST, 40000),
        ep(Ipv4Addr::new(10, 20, 0, 5), 443),
        SYN,
        b"",
    );
    assert_passed_untouched(&lab.from_lan(&frame).unwrap(), &frame);
    // No mapping was created for any of them.
    assert_counters(
        &lab,
        &[("pass_no_route", 2), ("pass_local", 1), ("new_binding", 0)],
    );
}

#[test]
fn local_and_multicast_traffic_goes_to_the_kernel() {
    let mut lab = fresh_lab();
    let from_lan = [
        udp(ep(LAN_HOST, 40000), ep(LAN_HOST2, 53), b"x"),
        tcp(ep(LAN_HOST, 40000), ep(LAN_ADDR, 22), SYN, b""),
        tcp(ep(LAN_HOST, 40000), ep(WAN_ADDR, 22), SYN, b""),
        udp(
            ep(LAN_HOST, 40000),
            ep(Ipv4Addr::new(239, 255, 255, 250), 1900),
            b"M-SEARCH",
        ),
        udp(
            ep(LAN_HOST, 68),
            ep(Ipv4Addr::BROADCAST, 67),
            b"DHCPDISCOVER",
        ),
        udp(
            ep(LAN_HOST, 137),
            ep(Ipv4Addr::new(192, 168, 0, 255), 137),
            b"x",
        ),
        // Not from the LAN prefix.
        udp(ep(Ipv4Addr::new(10, 9, 9, 9), 40000), ep(REMOTE, 53), b"x"),
    ];
    for frame in &from_lan {
        assert_passed_untouched(&lab.from_lan(frame).unwrap(), frame);
    }
    // From the WAN to a LAN address: only the NAT reaches the LAN; the
    // kernel would forward it there untranslated (or answer it from its
    // own LAN address).
    let to_lan = udp(ep(REMOTE, 53), ep(LAN_HOST, 40000), b"x");
    assert_dropped(&lab.from_wan(&to_lan).unwrap());
    let to_router_lan = tcp(ep(REMOTE, 5555), ep(LAN_ADDR, 5000), SYN, b"");
    assert_dropped(&lab.from_wan(&to_router_lan).unwrap());
    let from_wan = [
        udp(
            ep(REMOTE, 53),
            ep(Ipv4Addr::new(203, 0, 113, 77), 40000),
            b"x",
        ),
        udp(
            ep(REMOTE, 5353),
            ep(Ipv4Addr::new(224, 0, 0, 251), 5353),
            b"x",
        ),
    ];
    for frame in &from_wan {
        assert_passed_untouched(&lab.from_wan(frame).unwrap(), frame);
    }
    assert_counters(
        &lab,
        &[
            ("pass_local", 9),
            ("drop_to_lan_prefix", 2),
            ("new_binding", 0),
        ],
    );
}

#[test]
fn other_protocols_are_translated_by_address_one_host_per_remote() {
    let mut lab = fresh_lab();
    // GRE (PPTP), ESP and AH (IPsec), SCTP, IP-in-IP: out and back.
    for proto in [47u8, 50, 51, 132, 4] {
        let out = raw_ip(LAN_HOST, REMOTE, proto, &[0, 0, 0x08, 0, 1, 2, 3, 4]);
        let v = lab.from_lan(&out).unwrap();
        assert_addr_routed(&v, &out, Egress::Wan, WAN_ADDR, REMOTE);
        let back = raw_ip(REMOTE, WAN_ADDR, proto, &[0, 0, 0x08, 0, 5, 6, 7, 8]);
        let v = lab.from_wan(&back).unwrap();
        assert_addr_routed(&v, &back, Egress::Lan(LAN_HOST), REMOTE, LAN_HOST);
    }
    assert_counters(&lab, &[("snat", 5), ("dnat", 5), ("new_binding", 5)]);
    // One LAN host per protocol and remote: another host's GRE to the
    // same remote is dropped, and answered as a port shortage would be
    // (RFC 5508 REQ-8); to another remote it is its own.
    let gre = |src, dst| raw_ip(src, dst, 47, &[0, 0, 0x08, 0, 9, 9, 9, 9]);
    let busy = gre(LAN_HOST2, REMOTE);
    assert_prohibited_by_address(&lab.from_lan(&busy).unwrap(), &busy, Mode::Xdp);
    let out = gre(LAN_HOST2, REMOTE2);
    assert_addr_routed(
        &lab.from_lan(&out).unwrap(),
        &out,
        Egress::Wan,
        WAN_ADDR,
        REMOTE2,
    );
    let back = gre(REMOTE2, WAN_ADDR);
    let v = lab.from_wan(&back).unwrap();
    assert_addr_routed(&v, &back, Egress::Lan(LAN_HOST2), REMOTE2, LAN_HOST2);
    // From a remote nobody talks to, and to the router itself: the
    // router's own.
    let stray = gre(OTHER_REMOTE, WAN_ADDR);
    assert_passed_untouched(&lab.from_wan(&stray).unwrap(), &stray);
    let to_router = gre(LAN_HOST, WAN_ADDR);
    assert_passed_untouched(&lab.from_lan(&to_router).unwrap(), &to_router);
    // DCCP's checksum covers the addresses: never translated by address.
    let dccp = raw_ip(LAN_HOST, REMOTE, 33, &[0; 16]);
    assert_dropped(&lab.from_lan(&dccp).unwrap());
    assert_counters(
        &lab,
        &[
            ("drop_proto_busy", 1),
            ("icmp_prohibited_sent", 1),
            ("drop_unsupported_proto", 1),
            ("pass_unsupported_proto", 2),
        ],
    );
    // Aged like a UDP session: once the sweep removes LAN_HOST's, the
    // remote's GRE is nobody's and LAN_HOST2 may take the pair.
    let now = nat_ctl::aging::datapath_now_ns() + 301_000_000_000;
    let params = nat_ctl::aging::sweep_params(&Default::default(), now, 1);
    lab.datapath.run_sweep(params).unwrap();
    let back = gre(REMOTE, WAN_ADDR);
    assert_passed_untouched(&lab.from_wan(&back).unwrap(), &back);
    let out = gre(LAN_HOST2, REMOTE);
    assert_addr_routed(
        &lab.from_lan(&out).unwrap(),
        &out,
        Egress::Wan,
        WAN_ADDR,
        REMOTE,
    );
}

#[test]
fn icmp_errors_about_other_protocols_come_back_by_address() {
    let mut lab = fresh_lab();
    // ESP out; "fragmentation needed" about it from a hop on the way.
    let esp = raw_ip(LAN_HOST, REMOTE, 50, &[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb]);
    let out = lab.from_lan(&esp).unwrap();
    assert_addr_routed(&out, &esp, Egress::Wan, WAN_ADDR, REMOTE);
    let error = icmp(HOP, WAN_ADDR, frag_needed(1400), datagram(&out.frame));
    let v = lab.from_wan(&error).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    let frame = &v.frame;
    let (smac, dmac) = Egress::Lan(LAN_HOST).macs();
    assert_eq!(
        (frame[6..12].to_vec(), frame[..6].to_vec()),
        (smac.to_vec(), dmac.to_vec())
    );
    assert_eq!(frame[30..34], LAN_HOST.octets(), "outer destination");
    let sum = nat_tests::traffic::internet_checksum;
    assert_eq!(sum(&frame[14..34]), 0, "outer IP header checksum");
    assert_eq!(sum(&frame[34..]), 0, "ICMP checksum");
    // The quote reads as the packet the host sent, one hop on.
    assert_eq!(frame[42..], after_one_hop(&esp)[..], "the quote");
    // About ESP nobody on the LAN sends to that remote: the router's.
    let other = raw_ip(WAN_ADDR, OTHER_REMOTE, 50, &[0, 0, 0, 2, 0, 0, 0, 1]);
    let error = icmp(HOP, WAN_ADDR, frag_needed(1400), datagram(&other));
    assert_passed_untouched(&lab.from_wan(&error).unwrap(), &error);
    assert_counters(&lab, &[("icmp_error_in", 1), ("pass_local", 1)]);
}

#[test]
fn lan_hosts_icmp_error_about_another_protocol_goes_out_by_address() {
    let mut lab = fresh_lab();
    // The host holds (ESP, REMOTE); the remote's ESP comes in to it.
    let esp = raw_ip(LAN_HOST, REMOTE, 50, &[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb]);
    assert_eq!(lab.from_lan(&esp).unwrap().action, XDP_REDIRECT);
    let esp_in = raw_ip(REMOTE, WAN_ADDR, 50, &[0, 0, 0, 3, 0, 0, 0, 9, 0xcc]);
    let delivered = lab.from_wan(&esp_in).unwrap();
    assert_eq!(delivered.action, XDP_REDIRECT);
    // The host cannot take it (say, no SA: "protocol unreachable").
    let unreachable =
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Protocol);
    let error = icmp(
        LAN_HOST,
        REMOTE,
        unreachable.clone(),
        datagram(&delivered.frame),
    );
    let v = lab.from_lan(&error).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    let frame = &v.frame;
    let (smac, dmac) = Egress::Wan.macs();
    assert_eq!(
        (frame[6..12].to_vec(), frame[..6].to_vec()),
        (smac.to_vec(), dmac.to_vec())
    );
    assert_eq!(frame[26..30], WAN_ADDR.octets(), "outer source");
    assert_eq!(frame[30..34], REMOTE.octets(), "outer destination");
    let sum = nat_tests::traffic::internet_checksum;
    assert_eq!(sum(&frame[14..34]), 0, "outer IP header checksum");
    assert_eq!(sum(&frame[34..]), 0, "ICMP checksum");
    // The quote reads as the packet the remote sent, one hop on.
    assert_eq!(frame[42..], after_one_hop(&esp_in)[..], "the quote");

    // Another host's error about that pair, or one about a pair nobody
    // holds, names a LAN address: dropped, never passed on.
    let error = icmp(
        LAN_HOST2,
        REMOTE,
        unreachable.clone(),
        datagram(&delivered.frame),
    );
    assert_dropped(&lab.from_lan(&error).unwrap());
    let stray = raw_ip(OTHER_REMOTE, LAN_HOST, 47, &[0, 0, 0x08, 0, 1, 2, 3, 4]);
    let error = icmp(LAN_HOST, OTHER_REMOTE, unreachable, datagram(&stray));
    assert_dropped(&lab.from_lan(&error).unwrap());
    assert_counters(
        &lab,
        &[("icmp_error_out", 1), ("drop_icmp_untranslated", 2)],
    );
}

#[test]
fn other_protocols_can_be_dropped_instead() {
    let mut lab = lab_with(|c| c.other_protocols = nat_common::OTHER_PROTOCOLS_DROP);
    let gre = raw_ip(LAN_HOST, REMOTE, 47, &[0, 0, 0x08, 0, 1, 2, 3, 4]);
    assert_dropped(&lab.from_lan(&gre).unwrap());
    let gre = raw_ip(REMOTE, WAN_ADDR, 47, &[0, 0, 0x08, 0, 1, 2, 3, 4]);
    assert_passed_untouched(&lab.from_wan(&gre).unwrap(), &gre);
    assert_counters(
        &lab,
        &[
            ("drop_unsupported_proto", 1),
            ("pass_unsupported_proto", 1),
            ("new_binding", 0),
        ],
    );
}

fn timestamp(id: u16, reply: bool) -> Icmpv4Type {
    let message = etherparse::icmpv4::TimestampMessage {
        id,
        seq: 1,
        originate_timestamp: 1000,
        receive_timestamp: if reply { 2000 } else { 0 },
        transmit_timestamp: if reply { 2001 } else { 0 },
    };
    if reply {
        Icmpv4Type::TimestampReply(message)
    } else {
        Icmpv4Type::TimestampRequest(message)
    }
}

#[test]
fn icmp_timestamp_is_mapped_by_id_like_echo() {
    let mut lab = fresh_lab();
    let request = icmp(LAN_HOST, REMOTE, timestamp(0x4321, false), b"");
    assert_eq!(snat(&mut lab, &request), 0x4321);
    let reply = icmp(REMOTE, WAN_ADDR, timestamp(0x4321, true), b"");
    let v = lab.from_wan(&reply).unwrap();
    assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 0x4321),
        ep(LAN_HOST, 0x4321),
    );
    // A second host with the same id gets another one, and its reply.
    let request = icmp(LAN_HOST2, REMOTE, timestamp(0x4321, false), b"");
    let id = snat(&mut lab, &request);
    assert_ne!(id, 0x4321);
    let reply = icmp(REMOTE, WAN_ADDR, timestamp(id, true), b"");
    let v = lab.from_wan(&reply).unwrap();
    assert_routed(
        &v,
        &reply,
        Egress::Lan(LAN_HOST2),
        ep(REMOTE, 0x4321),
        ep(LAN_HOST2, 0x4321),
    );
    // Requests from outside are the router's; a LAN host's reply to the
    // outside answers nobody we forwarded to it: dropped.
    let to_router = icmp(REMOTE, WAN_ADDR, timestamp(7, false), b"");
    assert_passed_untouched(&lab.from_wan(&to_router).unwrap(), &to_router);
    let stray = icmp(LAN_HOST, REMOTE, timestamp(7, true), b"");
    assert_dropped(&lab.from_lan(&stray).unwrap());
    assert_counters(
        &lab,
        &[
            ("snat", 2),
            ("dnat", 2),
            ("pass_local", 1),
            ("drop_icmp_untranslated", 1),
        ],
    );
}

#[test]
fn unknown_icmp_types_from_the_lan_are_dropped() {
    let mut lab = fresh_lab();
    // Information request (15), address mask request (17), router
    // solicitation (10), and an unassigned type.
    for kind in [15u8, 17, 10, 42] {
        let frame = icmp(
            LAN_HOST,
            REMOTE,
            Icmpv4Type::Unknown {
                type_u8: kind,
                code_u8: 0,
                bytes5to8: [0, 1, 0, 1],
            },
            b"",
        );
        assert_dropped(&lab.from_lan(&frame).unwrap());
    }
    assert_counters(&lab, &[("drop_icmp_unknown", 4), ("new_binding", 0)]);
}

#[test]
fn oversize_without_df_is_translated_then_left_to_the_kernel_to_fragment() {
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let mut rng = Rng::new(7);
    let no_df = |frame: &[u8]| with_ip(frame, |ip| ip.dont_fragment = false);
    let big = no_df(&udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), &rng.bytes(1600)));
    let v = lab.from_lan(&big).unwrap();
    assert_eq!(v.action, XDP_PASS);
    let p = assert_checksums_ok(&v.frame);
    // Translated, not routed: the kernel fragments and forwards it.
    assert_translated(&p, &big, ep(WAN_ADDR, 40000), ep(REMOTE, 53), 0);
    let big = no_df(&udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), &rng.bytes(1600)));
    let v = lab.from_wan(&big).unwrap();
    assert_eq!(v.action, XDP_PASS);
    let p = assert_checksums_ok(&v.frame);
    assert_translated(&p, &big, ep(REMOTE, 5555), ep(LAN_HOST, 53), 0);
    assert_counters(
        &lab,
        &[
            ("pass_mtu_translated", 2),
            ("pass_mtu_exceeded", 0),
            ("new_binding", 1),
        ],
    );
    // With DF: as it came, for the kernel's "fragmentation needed" to the
    // LAN host (`larger_than_the_egress_mtu_goes_to_the_kernel`).
    let df = udp(ep(LAN_HOST, 40001), ep(REMOTE, 53), &rng.bytes(1600));
    assert_passed_untouched(&lab.from_lan(&df).unwrap(), &df);
    assert_counters(&lab, &[("pass_mtu_exceeded", 1)]);
}

#[test]
fn ethernet_padding_is_kept_and_left_alone() {
    // A 42-byte UDP frame padded to the 60-byte Ethernet minimum.
    let mut lab = fresh_lab();
    for payload in [&b""[..], b"ab"] {
        let mut query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), payload);
        query.resize(60, 0xee);
        let v = lab.from_lan(&query).unwrap();
        let p = assert_routed(&v, &query, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 53));
        assert!(p.trailer.iter().all(|&b| b == 0xee));
    }
    let mut ping = Vec::new();
    ip_builder(LAN_HOST, REMOTE)
        .icmpv4_echo_request(5000, 1)
        .write(&mut ping, b"")
        .unwrap();
    ping.resize(60, 0xee);
    assert_eq!(snat(&mut lab, &ping), 5000);
}

// ---------------------------------------------------------------------------
// 9. Counters.

/// Runs a frame through one side of the router, counting it in `sent`.
fn send(lab: &mut PacketLab, sent: &mut u64, from_lan: bool, frame: &[u8]) -> Verdict {
    *sent += 1;
    if from_lan {
        lab.from_lan(frame).unwrap()
    } else {
        lab.from_wan(frame).unwrap()
    }
}

#[test]
fn counters_follow_every_frame() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let (mut lan, mut wan) = (0, 0);
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    // SNAT with a new binding, then one on it.
    let out = send(&mut lab, &mut lan, true, &query);
    send(&mut lab, &mut lan, true, &query);
    // Hairpin (a second binding, for .13).
    let syn = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), SYN, b"");
    send(&mut lab, &mut lan, true, &syn);
    // Passed: local, malformed.
    let local = udp(ep(LAN_HOST, 1), ep(LAN_HOST2, 2), b"x");
    send(&mut lab, &mut lan, true, &local);
    send(&mut lab, &mut lan, true, &query[..20]);

    // DNAT twice, a forward, an ICMP error in, an unsolicited packet.
    let reply = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"a");
    send(&mut lab, &mut wan, false, &reply);
    let delivered = send(&mut lab, &mut wan, false, &reply);
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    send(&mut lab, &mut wan, false, &syn);
    let error = icmp(REMOTE, WAN_ADDR, port_unreachable(), datagram(&out.frame));
    send(&mut lab, &mut wan, false, &error);
    let stray = udp(ep(REMOTE, 53), ep(WAN_ADDR, 1), b"a");
    send(&mut lab, &mut wan, false, &stray);

    // An ICMP error out.
    let error = icmp(
        LAN_HOST,
        REMOTE,
        port_unreachable(),
        datagram(&delivered.frame),
    );
    let v = send(&mut lab, &mut lan, true, &error);
    assert_eq!(v.action, XDP_REDIRECT);

    assert_counters(
        &lab,
        &[
            ("lan_rx", lan),
            ("wan_rx", wan),
            ("snat", 2),
            ("new_binding", 2),
            ("hairpin", 1),
            ("dnat", 2),
            ("forwarded", 1),
            ("icmp_error_in", 1),
            ("icmp_error_out", 1),
            ("unsolicited_pass", 1),
            ("pass_local", 1),
            ("pass_malformed", 1),
        ],
    );
    // Every frame got exactly one verdict, counted once.
    let counters = lab.counters().unwrap();
    let verdicts: u64 = counters
        .iter()
        .filter(|(label, _)| {
            !matches!(
                **label,
                "lan_rx"
                    | "wan_rx"
                    | "new_binding"
                    | "remote_not_allowed"
                    | "session_table_full"
                    | "forward_session_evicted"
            )
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(verdicts, lan + wan, "{counters:?}");
}

#[test]
fn without_a_wan_address_nothing_from_the_lan_goes_out() {
    // The daemon writes a zero WAN address (and the LAN prefix) while the
    // WAN NIC has none: nothing to translate to, and the kernel would
    // forward it untranslated.
    let mut lab = lab_with(|c| c.wan_addr = [0; 4]);
    let out = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    assert_dropped(&lab.from_lan(&out).unwrap());
    let local = udp(ep(LAN_HOST, 40000), ep(LAN_ADDR, 53), b"q");
    assert_passed_untouched(&lab.from_lan(&local).unwrap(), &local);
    let from_wan = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"a");
    assert_passed_untouched(&lab.from_wan(&from_wan).unwrap(), &from_wan);
    assert_counters(
        &lab,
        &[
            ("drop_no_wan_address", 1),
            ("pass_local", 2),
            ("new_binding", 0),
        ],
    );
}

// ---------------------------------------------------------------------------
// 10. The route cache: each CPU reuses the routes it looked up, until the
// route epoch moves on, the entry is 100 ms old, or a packet is longer than
// the one the lookup let through.

/// Where the router now sends what leaves for the WAN gateway: a next hop
/// that changed its MAC (a replaced modem, a failover pair).
const MOVED_GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x02];

fn move_gateway(lab: &PacketLab, to: [u8; 6]) {
    lab.netns
        .ip(&[
            "neigh",
            "replace",
            &GATEWAY.to_string(),
            "lladdr",
            &nat_tests::plan::mac(to),
            "dev",
            nat_tests::plan::ROUTER_WAN_IF,
            "nud",
            "permanent",
        ])
        .unwrap();
}

fn gateway_mac_of(lab: &mut PacketLab, frame: &[u8]) -> [u8; 6] {
    let v = lab.from_lan(frame).unwrap();
    assert_eq!(v.action, XDP_REDIRECT, "SNAT verdict");
    parse(&v.frame).eth.destination
}

#[test]
fn a_new_route_epoch_sends_the_next_packet_to_the_neighbours_new_mac() {
    let mut lab = fresh_lab();
    let out = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"query");
    snat(&mut lab, &out);
    assert_eq!(gateway_mac_of(&mut lab, &out), GATEWAY_MAC);
    move_gateway(&lab, MOVED_GATEWAY_MAC);
    // What the daemon does on the kernel's neighbour report.
    lab.datapath.maps_mut().writer().routes_changed().unwrap();
    assert_eq!(
        gateway_mac_of(&mut lab, &out),
        MOVED_GATEWAY_MAC,
        "the packet after the new epoch went by the route cached before it"
    );
    // Any write of the configuration is a new epoch too.
    move_gateway(&lab, GATEWAY_MAC);
    let config = lab.config;
    lab.datapath
        .maps_mut()
        .writer()
        .set_config(&config)
        .unwrap();
    assert_eq!(gateway_mac_of(&mut lab, &out), GATEWAY_MAC);
}

#[test]
fn an_unreported_neighbour_change_reaches_the_fast_path_within_the_cache_lifetime() {
    let mut lab = fresh_lab();
    let out = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"query");
    snat(&mut lab, &out);
    move_gateway(&lab, MOVED_GATEWAY_MAC);
    // No epoch: only the entry's age sends the packets to the new MAC.
    let start = std::time::Instant::now();
    let mut sent = 0;
    while gateway_mac_of(&mut lab, &out) != MOVED_GATEWAY_MAC {
        sent += 1;
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5) && sent < 5000,
            "after {sent} packets and {:?} the datapath still sends to the old MAC",
            start.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_packet_longer_than_the_cached_route_let_through_is_looked_up_again() {
    let mut lab = fresh_lab();
    let small = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"query");
    snat(&mut lab, &small);
    // The path's MTU drops with no report to the datapath (a PMTU the
    // kernel learned, a route the daemon did not hear of).
    lab.netns
        .ip(&[
            "route",
            "replace",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            nat_tests::plan::ROUTER_WAN_IF,
            "mtu",
            // Locked: a forwarded packet is checked against a route's MTU
            // only then (or with `ip_forward_use_pmtu`).
            "lock",
            "600",
        ])
        .unwrap();
    let big = with_ip(
        &udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), &[7; 1000]),
        |ip| ip.dont_fragment = true,
    );
    assert_passed_untouched(&lab.from_lan(&big).unwrap(), &big);
    assert_counters(&lab, &[("pass_mtu_exceeded", 1)]);
    // What fits the cached route's length still takes it.
    assert_eq!(gateway_mac_of(&mut lab, &small), GATEWAY_MAC);
}
