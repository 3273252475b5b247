//! Packet tests of IP fragments through `BPF_PROG_TEST_RUN`: a datagram
//! split into fragments, each run through the datapath, and what comes out
//! put back together and checked as the whole datagram, every checksum
//! recomputed with etherparse. Each fragment is checked on its own too:
//! its new address, TTL, MACs, IPv4 header checksum, and that its id,
//! offset, MF flag and data did not change.
mod common;

use common::*;
use nat_common::{FRAGS_MAX, RelayTarget, SessionKey, UNSOLICITED_DROP};
use nat_tests::packet::*;

#[test]
fn outbound_fragments_follow_their_first_in_order() {
    for proto in ["udp", "tcp", "icmp"] {
        let mut lab = PacketLab::new().unwrap();
        let whole = datagram_of(proto, ep(LAN_HOST, 40000), ep(REMOTE, 53), 2000);
        // First, middle, last.
        let fragments = fragment(&whole, 800);
        assert_eq!(fragments.len(), 3);
        let out = through(&mut lab, true, &fragments);
        for (out, input) in out.iter().zip(&fragments) {
            assert_fragment_routed(out, input, Egress::Wan, WAN_ADDR.octets(), REMOTE.octets());
        }
        // Put back together it is the datagram translated as a whole,
        // its L4 checksum (in the first fragment) right for all of it.
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
}

#[test]
fn inbound_fragments_follow_their_first_to_the_lan_host() {
    for proto in ["udp", "tcp", "icmp"] {
        let mut lab = PacketLab::new().unwrap();
        // The mapping, by an unfragmented datagram out.
        let (remote_port, out) = match proto {
            "udp" => (53, udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q")),
            "tcp" => (443, tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b"")),
            _ => (40000, echo_request(LAN_HOST, REMOTE, 40000, 1)),
        };
        assert_eq!(lab.from_lan(&out).unwrap().action, XDP_REDIRECT);
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
    }
}

#[test]
fn inbound_fragments_to_a_forwarded_port() {
    let mut lab = PacketLab::new().unwrap();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let query = with_id(
        &udp(
            ep(REMOTE, 5555),
            ep(WAN_ADDR, 8053),
            &Rng::new(3).bytes(4000),
        ),
        ID,
    );
    let fragments = fragment(&query, 1480);
    let out = through(&mut lab, false, &fragments);
    let p = assert_checksums_ok(&reassemble(&out));
    assert_translated(&p, &query, ep(REMOTE, 5555), ep(LAN_HOST, 53), 1);
    assert_counters(&lab, &[("forwarded", 1), ("frag_translated", 2)]);
    // And the server's fragmented answer leaves from the forwarded port.
    let answer = with_id(
        &udp(ep(LAN_HOST, 53), ep(REMOTE, 5555), &Rng::new(4).bytes(4000)),
        ID,
    );
    let out = through(&mut lab, true, &fragment(&answer, 1480));
    let p = assert_checksums_ok(&reassemble(&out));
    assert_translated(&p, &answer, ep(WAN_ADDR, 8053), ep(REMOTE, 5555), 1);
}

#[test]
fn hairpinned_fragments_follow_their_first() {
    let mut lab = PacketLab::new().unwrap();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let query = with_id(
        &udp(
            ep(LAN_HOST2, 5555),
            ep(WAN_ADDR, 8053),
            &Rng::new(8).bytes(4000),
        ),
        ID,
    );
    let fragments = fragment(&query, 1480);
    let out = through(&mut lab, true, &fragments);
    for (out, input) in out.iter().zip(&fragments) {
        assert_fragment_routed(
            out,
            input,
            Egress::Lan(LAN_HOST),
            WAN_ADDR.octets(),
            LAN_HOST.octets(),
        );
    }
    let p = assert_checksums_ok(&reassemble(&out));
    let port = p.src().port();
    assert_translated(&p, &query, ep(WAN_ADDR, port), ep(LAN_HOST, 53), 1);
    assert_counters(
        &lab,
        &[("hairpin", 1), ("frag_tracked", 1), ("frag_translated", 2)],
    );
    // A later fragment to the WAN address whose first was not hairpinned:
    // the router's own datagram, for the kernel to reassemble.
    let own = with_id(
        &udp(
            ep(LAN_HOST2, 5556),
            ep(WAN_ADDR, 9999),
            &Rng::new(9).bytes(3000),
        ),
        ID + 1,
    );
    let later = &fragment(&own, 1480)[1];
    assert_passed_untouched(&lab.from_lan(later).unwrap(), later);
}

#[test]
fn a_hairpinned_datagrams_early_fragment_sends_it_to_the_relay() {
    // A LAN host's datagram to a forwarded port through the WAN address,
    // its last fragment first: the kernel holds that one and the rest;
    // the first fragment, judged and mapped as in order, is passed for the
    // kernel to reassemble, with its target and the port it leaves from
    // recorded for the relay.
    let mut lab = PacketLab::new().unwrap();
    lab.forward("udp/8053=192.168.0.12:53").unwrap();
    let query = with_id(
        &udp(
            ep(LAN_HOST2, 5555),
            ep(WAN_ADDR, 8053),
            &Rng::new(8).bytes(4000),
        ),
        ID,
    );
    let fragments = fragment(&query, 1480);
    for frame in [&fragments[2], &fragments[1], &fragments[0]] {
        assert_passed_untouched(&lab.from_lan(frame).unwrap(), frame);
    }
    assert_counters(
        &lab,
        &[
            ("pass_frag_reassembly", 1),
            ("hairpin", 0),
            ("frag_translated", 0),
        ],
    );
    let target = relay_target(&mut lab, ep(LAN_HOST2, 5555), 8053, 17).expect("a relay target");
    assert_eq!((target.addr, target.port), (LAN_HOST.octets(), 53));
    // The port of the client's mapping toward the WAN address: its answer
    // comes back to it by the fast path.
    assert_ne!(target.source_port, 0);
    let answer = udp(ep(LAN_HOST, 53), ep(WAN_ADDR, target.source_port), b"a");
    let out = lab.from_lan(&answer).unwrap();
    assert_eq!(out.action, XDP_REDIRECT);
    assert_translated(
        &assert_checksums_ok(&out.frame),
        &answer,
        ep(WAN_ADDR, 8053),
        ep(LAN_HOST2, 5555),
        1,
    );
}

#[test]
fn a_later_fragment_before_its_first() {
    // Leaving the LAN: every fragment's source becomes the WAN address,
    // so the order does not matter. Last, middle, then first.
    let mut lab = PacketLab::new().unwrap();
    let whole = datagram_of("udp", ep(LAN_HOST, 40000), ep(REMOTE, 53), 2000);
    let mut fragments = fragment(&whole, 800);
    fragments.reverse();
    let out = through(&mut lab, true, &fragments);
    let p = assert_checksums_ok(&reassemble(&out));
    assert_translated(&p, &whole, ep(WAN_ADDR, 40000), ep(REMOTE, 53), 1);
    assert_counters(&lab, &[("snat", 1), ("frag_translated", 2)]);

    // Arriving from outside, before any fragmented datagram between that
    // remote and a LAN host: nobody to give it to. Never a guess: the
    // kernel holds it (also with unsolicited drop) until its first
    // fragment's verdict.
    let mut lab = PacketLab::new().unwrap();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    let reply = |id| {
        with_id(
            &udp(
                ep(REMOTE, 53),
                ep(WAN_ADDR, 40000),
                &Rng::new(5).bytes(3000),
            ),
            id,
        )
    };
    let early = fragment(&reply(1), 1480);
    assert_passed_untouched(&lab.from_wan(&early[2]).unwrap(), &early[2]);
    assert_counters(&lab, &[("pass_fragment", 1), ("frag_translated", 0)]);
    let mut strict = PacketLab::with_config(|c| c.unsolicited = UNSOLICITED_DROP).unwrap();
    assert_passed_untouched(&strict.from_wan(&early[2]).unwrap(), &early[2]);
    assert_counters(&strict, &[("pass_fragment", 1), ("frag_tracked", 1)]);

    // Once the remote has sent this LAN host one fragmented datagram in
    // order, the host is its peer: a later datagram's fragments may come
    // in any order.
    through(&mut lab, false, &fragment(&reply(2), 1480));
    let mut late = fragment(&reply(3), 1480);
    late.swap(0, 2);
    let out = through(&mut lab, false, &late);
    let p = assert_checksums_ok(&reassemble(&out));
    assert_translated(&p, &reply(3), ep(REMOTE, 53), ep(LAN_HOST, 40000), 1);
}

/// Removes the mapping of `proto` on external `port` and its session with
/// `remote`, together as the sweep removes them: a session never outlives
/// its mapping, and a reply finds its LAN host by its session alone.
fn forget_mapping(lab: &mut PacketLab, proto: u8, remote: std::net::SocketAddrV4, port: u16) {
    let view = lab.datapath.maps_mut().view_mut();
    view.set_port_owner(proto, port, nat_common::PortOwner::default())
        .unwrap();
    let removed = view.sessions_mut().remove(&SessionKey {
        remote_addr: remote.ip().octets(),
        remote_port: remote.port(),
        external_port: port,
        proto,
        _pad: [0; 3],
    });
    assert!(removed, "no session of {remote} on port {port} to remove");
}

/// The relay's record of a datagram of `proto` from `remote` to external
/// port `port`.
fn relay_target(
    lab: &mut PacketLab,
    remote: std::net::SocketAddrV4,
    port: u16,
    proto: u8,
) -> Option<RelayTarget> {
    let key = SessionKey {
        remote_addr: remote.ip().octets(),
        remote_port: remote.port(),
        external_port: port,
        proto,
        _pad: [0; 3],
    };
    lab.datapath
        .maps_mut()
        .relay_mut()
        .targets
        .get(&key, 0)
        .ok()
}

#[test]
fn an_early_fragment_with_nobody_to_name_sends_its_datagram_to_the_kernel() {
    // No fragment peer: the last fragment first goes to the kernel, and
    // so does the rest of its datagram; its first fragment, let in by the
    // mapping's filter, is passed for the kernel to reassemble with its
    // target recorded for the relay.
    let mut lab = PacketLab::new().unwrap();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    let reply = with_id(
        &udp(
            ep(REMOTE, 53),
            ep(WAN_ADDR, 40000),
            &Rng::new(8).bytes(4000),
        ),
        9,
    );
    let fragments = fragment(&reply, 1480);
    assert_eq!(fragments.len(), 3);
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
    let target = relay_target(&mut lab, ep(REMOTE, 53), 40000, 17).expect("a relay target");
    assert_eq!((target.addr, target.port), (LAN_HOST.octets(), 40000));
    // The mapping gone, the remote's next datagram is unsolicited: the
    // record goes too, so the relay never sends the router's datagram on.
    forget_mapping(&mut lab, 17, ep(REMOTE, 53), 40000);
    let stray = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"late");
    assert_passed_untouched(&lab.from_wan(&stray).unwrap(), &stray);
    assert_counters(&lab, &[("unsolicited_pass", 1)]);
    assert!(relay_target(&mut lab, ep(REMOTE, 53), 40000, 17).is_none());

    // The same datagram in order never touches the kernel.
    let mut lab = PacketLab::new().unwrap();
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    through(&mut lab, false, &fragments);
    assert!(relay_target(&mut lab, ep(REMOTE, 53), 40000, 17).is_none());
    assert_counters(&lab, &[("pass_frag_reassembly", 0), ("dnat", 1)]);
}

#[test]
fn an_early_fragments_datagram_the_filter_refuses_is_not_relayed() {
    let mut lab = PacketLab::with_config(|c| c.unsolicited = UNSOLICITED_DROP).unwrap();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    // Another port of the remote: address-and-port-dependent filtering.
    let stranger = with_id(
        &udp(
            ep(REMOTE, 54),
            ep(WAN_ADDR, 40000),
            &Rng::new(8).bytes(3000),
        ),
        10,
    );
    let fragments = fragment(&stranger, 1480);
    assert_passed_untouched(&lab.from_wan(&fragments[2]).unwrap(), &fragments[2]);
    assert_dropped(&lab.from_wan(&fragments[0]).unwrap());
    assert_counters(
        &lab,
        &[("drop_unsolicited", 1), ("pass_frag_reassembly", 0)],
    );
    assert!(relay_target(&mut lab, ep(REMOTE, 54), 40000, 17).is_none());
}

/// A TCP answer whose last fragment comes first, with nobody to name.
fn early_tcp_answer(lab: &mut PacketLab) -> Vec<Vec<u8>> {
    let syn = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), SYN, b"");
    assert_eq!(lab.from_lan(&syn).unwrap().action, XDP_REDIRECT);
    let answer = with_id(
        &tcp(
            ep(REMOTE, 443),
            ep(WAN_ADDR, 40000),
            SYN | ACK,
            &Rng::new(8).bytes(3000),
        ),
        11,
    );
    let fragments = fragment(&answer, 1480);
    assert_passed_untouched(&lab.from_wan(&fragments[2]).unwrap(), &fragments[2]);
    fragments
}

#[test]
fn an_early_tcp_fragments_first_stays_on_the_fast_path_while_no_relay_runs() {
    // Without the relay's TCP sink, a TCP segment reassembled by the
    // router would be answered by its own stack (an RST, which would end
    // the LAN host's connection): TCP's first fragment is translated as
    // ever, and the datagram is lost (TCP retransmits).
    let mut lab = PacketLab::new().unwrap();
    let fragments = early_tcp_answer(&mut lab);
    assert_eq!(lab.from_wan(&fragments[0]).unwrap().action, XDP_REDIRECT);
    assert_counters(&lab, &[("pass_frag_reassembly", 0), ("dnat", 1)]);
    assert!(relay_target(&mut lab, ep(REMOTE, 443), 40000, 6).is_none());
}

#[test]
fn an_early_tcp_fragments_datagram_goes_to_the_relay_while_it_holds_its_sink() {
    let mut lab = PacketLab::new().unwrap();
    // The relay's sink: any listening TCP socket in its slot.
    let sink = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
    lab.datapath
        .maps_mut()
        .relay_mut()
        .socket
        .set(nat_common::RELAY_SLOT_TCP_SINK, &sink, 0)
        .unwrap();
    let fragments = early_tcp_answer(&mut lab);
    assert_passed_untouched(&lab.from_wan(&fragments[0]).unwrap(), &fragments[0]);
    assert_passed_untouched(&lab.from_wan(&fragments[1]).unwrap(), &fragments[1]);
    assert_counters(
        &lab,
        &[
            ("pass_fragment", 2),
            ("pass_frag_reassembly", 1),
            ("dnat", 0),
        ],
    );
    let target = relay_target(&mut lab, ep(REMOTE, 443), 40000, 6).expect("a relay target");
    assert_eq!((target.addr, target.port), (LAN_HOST.octets(), 40000));
    // An unsolicited segment from that remote endpoint withdraws it.
    forget_mapping(&mut lab, 6, ep(REMOTE, 443), 40000);
    let stray = tcp(ep(REMOTE, 443), ep(WAN_ADDR, 40000), ACK, b"late");
    lab.from_wan(&stray).unwrap();
    assert!(relay_target(&mut lab, ep(REMOTE, 443), 40000, 6).is_none());
}

#[test]
fn an_early_echo_replys_datagram_goes_to_the_relay() {
    // The router's ICMP ignores an echo reply it asked nothing for: no
    // sink needed, the relay reads it from its raw ICMP socket.
    let mut lab = PacketLab::new().unwrap();
    let query = echo_request(LAN_HOST, REMOTE, 40000, 1);
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    let mut reply = Vec::new();
    ip_builder(REMOTE, WAN_ADDR)
        .icmpv4_echo_reply(40000, 1)
        .write(&mut reply, &Rng::new(9).bytes(3000))
        .unwrap();
    let fragments = fragment(&with_id(&reply, 12), 1480);
    for frame in [&fragments[2], &fragments[1], &fragments[0]] {
        assert_passed_untouched(&lab.from_wan(frame).unwrap(), frame);
    }
    assert_counters(&lab, &[("pass_frag_reassembly", 1), ("dnat", 0)]);
    // An ICMP query's key: its id as both ports.
    let target = relay_target(&mut lab, ep(REMOTE, 40000), 40000, 1).expect("a relay target");
    assert_eq!((target.addr, target.port), (LAN_HOST.octets(), 40000));
}

#[test]
fn two_lan_peers_of_one_remote_make_an_early_fragment_nobodys() {
    let mut lab = PacketLab::new().unwrap();
    for host in [LAN_HOST, LAN_HOST2] {
        let query = udp(ep(host, 40000), ep(REMOTE, 53), b"q");
        assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    }
    // Each host gets one fragmented answer in order; their ports differ.
    let second = {
        let v = lab
            .from_lan(&udp(ep(LAN_HOST2, 40000), ep(REMOTE, 53), b"q"))
            .unwrap();
        parse(&v.frame).src().port()
    };
    assert_ne!(second, 40000);
    for (id, port) in [(1, 40000), (2, second)] {
        let answer = with_id(
            &udp(ep(REMOTE, 53), ep(WAN_ADDR, port), &Rng::new(6).bytes(3000)),
            id,
        );
        through(&mut lab, false, &fragment(&answer, 1480));
    }
    // A third answer's last fragment first: whose? Not guessed.
    let third = with_id(
        &udp(
            ep(REMOTE, 53),
            ep(WAN_ADDR, 40000),
            &Rng::new(7).bytes(3000),
        ),
        3,
    );
    let early = fragment(&third, 1480);
    assert_passed_untouched(&lab.from_wan(&early[2]).unwrap(), &early[2]);
    assert_counters(&lab, &[("pass_fragment", 1), ("frag_translated", 4)]);
}

#[test]
fn two_lan_hosts_datagrams_with_one_id_leave_with_two() {
    // Both leave from the WAN address: with one id, the remote would
    // reassemble them as one datagram (RFC 6864 section 4.1).
    let mut lab = PacketLab::new().unwrap();
    let first = with_id(
        &datagram_of("udp", ep(LAN_HOST, 40000), ep(REMOTE, 53), 2000),
        7,
    );
    let second = with_id(
        &datagram_of("udp", ep(LAN_HOST2, 40001), ep(REMOTE, 53), 2000),
        7,
    );
    let out_first = through(&mut lab, true, &fragment(&first, 800));
    // The second's last fragment first: the id is chosen by whichever
    // fragment comes first, and kept for the rest.
    let mut fragments = fragment(&second, 800);
    fragments.reverse();
    let out_second = through(&mut lab, true, &fragments);
    let id = |frame: &Vec<u8>| fragment_fields(frame).2;
    assert!(out_first.iter().all(|frame| id(frame) == 7));
    let moved = id(&out_second[0]);
    assert_ne!(moved, 7, "the second host's datagram keeps the held id");
    assert!(out_second.iter().all(|frame| id(frame) == moved));
    let p = assert_checksums_ok(&reassemble(&out_first));
    assert_translated(&p, &first, ep(WAN_ADDR, 40000), ep(REMOTE, 53), 1);
    let p = assert_checksums_ok(&reassemble(&out_second));
    assert_translated(
        &p,
        &with_id(&second, moved),
        ep(WAN_ADDR, 40001),
        ep(REMOTE, 53),
        1,
    );
    assert_counters(
        &lab,
        &[
            ("snat", 2),
            ("frag_tracked", 2),
            ("frag_translated", 4),
            ("frag_id_rewritten", 1),
        ],
    );

    // The first host's own next datagram with that id (a wrapped counter)
    // is its own business: it keeps it.
    let again = with_id(
        &datagram_of("udp", ep(LAN_HOST, 40000), ep(REMOTE, 53), 1800),
        7,
    );
    let out = through(&mut lab, true, &fragment(&again, 800));
    assert!(out.iter().all(|frame| id(frame) == 7));
    // Another remote: no conflict, no new id.
    let elsewhere = with_id(
        &datagram_of("udp", ep(LAN_HOST2, 40001), ep(REMOTE2, 53), 2000),
        7,
    );
    let out = through(&mut lab, true, &fragment(&elsewhere, 800));
    assert!(out.iter().all(|frame| id(frame) == 7));
    assert_counters(&lab, &[("frag_id_rewritten", 1)]);
}

#[test]
fn duplicate_and_overlapping_fragments_are_translated_alike() {
    let mut lab = PacketLab::new().unwrap();
    let whole = datagram_of("udp", ep(LAN_HOST, 40000), ep(REMOTE, 53), 2000);
    let fragments = fragment(&whole, 800);
    let out = through(&mut lab, true, &fragments);
    // The middle one again: the same out (the receiver drops one).
    let again = through(&mut lab, true, &fragments[1..2]);
    assert_eq!(again[0], out[1]);
    // One overlapping the middle and the last (offset 400, 800 bytes):
    // the receiver's reassembly decides; the NAT only moves the address.
    let mut overlap = fragments[1].clone();
    overlap[20..22].copy_from_slice(&(0x2000u16 | 50).to_be_bytes());
    overlap[24..26].copy_from_slice(&[0, 0]);
    let sum = nat_tests::traffic::internet_checksum(&overlap[14..34]);
    overlap[24..26].copy_from_slice(&sum.to_be_bytes());
    let v = through(&mut lab, true, &[overlap.clone()]);
    assert_fragment_routed(
        &v[0],
        &overlap,
        Egress::Wan,
        WAN_ADDR.octets(),
        REMOTE.octets(),
    );
    assert_counters(&lab, &[("frag_translated", 4)]);

    // A TCP fragment at offset 8 could only rewrite the flags after the
    // first was judged (RFC 1858): dropped, both ways.
    let segment = datagram_of("tcp", ep(LAN_HOST, 40001), ep(REMOTE, 443), 2000);
    let mut tiny = fragment(&segment, 8)[1].clone();
    tiny.truncate(34 + 8);
    tiny[16..18].copy_from_slice(&28u16.to_be_bytes());
    tiny[24..26].copy_from_slice(&[0, 0]);
    let sum = nat_tests::traffic::internet_checksum(&tiny[14..34]);
    tiny[24..26].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(lab.from_lan(&tiny).unwrap().action, XDP_DROP);
    assert_counters(&lab, &[("drop_malformed", 1)]);
}

#[test]
fn the_routers_own_fragmented_datagrams_stay_its_own() {
    let mut lab = PacketLab::new().unwrap();
    // To a port nobody mapped: the kernel's, all of it.
    let datagram = with_id(
        &udp(
            ep(REMOTE, 53),
            ep(WAN_ADDR, 33333),
            &Rng::new(8).bytes(3000),
        ),
        ID,
    );
    for frame in fragment(&datagram, 1480) {
        assert_passed_untouched(&lab.from_wan(&frame).unwrap(), &frame);
    }
    assert_counters(
        &lab,
        &[
            ("unsolicited_pass", 1),
            ("frag_tracked", 1),
            ("pass_fragment", 2),
        ],
    );
}

#[test]
fn fragment_records_expire() {
    let mut lab = PacketLab::new().unwrap();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    let reply = with_id(
        &udp(
            ep(REMOTE, 53),
            ep(WAN_ADDR, 40000),
            &Rng::new(9).bytes(3000),
        ),
        ID,
    );
    let fragments = fragment(&reply, 1480);
    through(&mut lab, false, &fragments[..1]);
    // The sweep, as of 6 s later (past FRAG_TIMEOUT_NS), removes it. The
    // peer record (30 s) stays and takes over: the host gets it still.
    let now = nat_ctl::aging::datapath_now_ns() + 6_000_000_000;
    let params = nat_ctl::aging::sweep_params(&Default::default(), now, 1);
    lab.datapath.run_sweep(params).unwrap();
    assert_counters(&lab, &[("frag_expired", 1)]);
    // As of 40 s later, the peer too.
    let now = nat_ctl::aging::datapath_now_ns() + 40_000_000_000;
    let params = nat_ctl::aging::sweep_params(&Default::default(), now, 2);
    lab.datapath.run_sweep(params).unwrap();
    assert_counters(&lab, &[("frag_expired", 2)]);
    assert_passed_untouched(&lab.from_wan(&fragments[1]).unwrap(), &fragments[1]);
    assert_counters(&lab, &[("pass_fragment", 1), ("frag_translated", 0)]);
}

#[test]
fn too_many_in_flight_evicts_the_oldest() {
    let mut lab = PacketLab::new().unwrap();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    assert_eq!(lab.from_lan(&query).unwrap().action, XDP_REDIRECT);
    let reply = |id: u16| {
        with_id(
            &udp(
                ep(REMOTE2, 53),
                ep(WAN_ADDR, 40000),
                &Rng::new(1).bytes(2000),
            ),
            id,
        )
    };
    // Endpoint-independent filtering is not the default: let REMOTE2 in.
    let open = udp(ep(LAN_HOST, 40000), ep(REMOTE2, 53), b"q");
    assert_eq!(lab.from_lan(&open).unwrap().action, XDP_REDIRECT);
    // Three tables' worth of first fragments, none completed.
    let in_flight = 3 * FRAGS_MAX as usize;
    let mut first = fragment(&reply(0), 1480).remove(0);
    for id in 0..in_flight as u16 {
        first[18..20].copy_from_slice(&id.to_be_bytes());
        first[24..26].copy_from_slice(&[0, 0]);
        let sum = nat_tests::traffic::internet_checksum(&first[14..34]);
        first[24..26].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(lab.from_wan(&first).unwrap().action, XDP_REDIRECT);
    }
    // The newest is still tracked by its own record.
    let last = |id: u16| fragment(&reply(id), 1480).remove(1);
    let v = lab.from_wan(&last(in_flight as u16 - 1)).unwrap();
    assert_eq!(v.action, XDP_REDIRECT);
    assert_counters(&lab, &[("frag_tracked", in_flight as u64)]);
    // The oldest record was evicted: its last fragment is placed by the
    // remote's peer record (one more record made), which names LAN_HOST.
    let v = lab.from_wan(&last(0)).unwrap();
    assert_eq!(v.action, XDP_REDIRECT, "the peer record stands in");
    assert_eq!(v.frame[30..34], LAN_HOST.octets());
    assert_counters(&lab, &[("frag_tracked", in_flight as u64 + 1)]);
}
