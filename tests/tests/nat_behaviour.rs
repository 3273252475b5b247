//! NAT behaviour the RFCs require of a router (RFC 4787, 5382, 5508), as
//! packet tests through `BPF_PROG_TEST_RUN`, and where what a remote host
//! sees is the point, end to end through the real `natctl` (`Lab`); each
//! test names the REQ it checks, as docs/rfc-compliance.md does.
mod common;

use std::time::Duration;

use common::*;
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use nat_common::{
    BindingKey, FILTER_ADDRESS_AND_PORT_DEPENDENT, MAPPING_ADDRESS_AND_PORT_DEPENDENT,
    MAPPING_ADDRESS_DEPENDENT, NatConfig, PROTO_TCP, PROTO_UDP, TCP_STATE_CLOSED,
    TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED, TCP_STATE_HALF_CLOSED_BY_OPENER, TCP_STATE_OPENING,
    UNSOLICITED_DROP, UNSOLICITED_PASS,
};
use nat_ctl::{
    aging::{datapath_now_ns, sweep_params},
    config::Timeouts,
};
use nat_tests::{
    join,
    lab::{LAN_CLIENT, LAN_SERVER, Lab, ROUTER_WAN, WAN_HOST},
    packet::*,
    traffic::uninterrupted,
};

/// RFC 4787 REQ-4: a port the random fallback picks has the parity of the
/// LAN host's own port.
#[test]
fn remapped_ports_keep_their_parity() {
    let mut lab = PacketLab::with_config(|c| {
        c.port_min = 20000;
        c.port_max = 20063;
    })
    .unwrap();
    // Source ports outside the range are all remapped at random.
    for port in 5000u16..5040 {
        let frame = udp(ep(LAN_HOST, port), ep(REMOTE, 3478), b"x");
        let verdict = lab.from_lan(&frame).unwrap();
        assert_eq!(verdict.action, XDP_REDIRECT, "source port {port}");
        let external = assert_checksums_ok(&verdict.frame).src().port();
        assert!(
            (20000..=20063).contains(&external),
            "{port} -> {external}: outside the range"
        );
        assert_eq!(
            external % 2,
            port % 2,
            "{port} -> {external}: parity not kept"
        );
    }
}

/// Stamps every mapping and session as last seen `idle` ago, as if the
/// LAN host had gone quiet that long.
fn go_quiet(lab: &mut PacketLab, idle: Duration) {
    let now = datapath_now_ns();
    let idle = idle.as_nanos() as u64;
    assert!(
        now > idle,
        "the machine has been up for less than {idle} ns"
    );
    let view = lab.datapath.maps_mut().view_mut();
    let bindings: Vec<_> = view.bindings().iter().map(Result::unwrap).collect();
    for (key, mut binding) in bindings {
        binding.last_seen_ns = now - idle;
        view.put_binding(key, binding).unwrap();
    }
    for (proto, port, mut owner) in view.held_ports().unwrap() {
        owner.seen_ns = now - idle;
        view.set_port_owner(proto, port, owner).unwrap();
    }
    let sessions = view.sessions().entries();
    for (key, mut session) in sessions {
        session.last_seen_ns = now - idle;
        view.sessions_mut().insert(key, session).unwrap();
    }
}

/// Runs the daemon's sweep now, with the default timeouts.
fn sweep(lab: &mut PacketLab, generation: u32) {
    lab.datapath
        .run_sweep(sweep_params(&Timeouts::default(), 0, generation))
        .unwrap();
}

fn has_mapping(lab: &PacketLab, external_port: u16) -> bool {
    let view = lab.datapath.maps().view();
    view.port_owner(PROTO_UDP, external_port).unwrap().is_some()
}

/// RFC 4787 REQ-6 and its section 4.3: only outbound packets and replies
/// the filter lets in keep a mapping alive; a stranger who keeps sending
/// to it, filtered, does not.
#[test]
fn filtered_packets_do_not_keep_a_mapping_alive() {
    for (from, kept) in [
        (ep(REMOTE, 5003), false),
        (ep(OTHER_REMOTE, 5002), false),
        (ep(REMOTE, 5002), true),
    ] {
        let mut lab = PacketLab::new().unwrap();
        let out = udp(ep(LAN_HOST, 40000), ep(REMOTE, 5002), b"hello");
        assert_eq!(lab.from_lan(&out).unwrap().action, XDP_REDIRECT);
        // Quiet for longer than the UDP timeout (300 s), but for `from`.
        go_quiet(&mut lab, Duration::from_secs(400));
        let inbound = udp(from, ep(WAN_ADDR, 40000), b"keep it open");
        let action = lab.from_wan(&inbound).unwrap().action;
        assert_eq!(
            action,
            if kept { XDP_REDIRECT } else { XDP_PASS },
            "{from}: the default filtering is address and port dependent"
        );
        sweep(&mut lab, 1);
        assert_eq!(
            has_mapping(&lab, 40000),
            kept,
            "after a packet from {from}, the mapping should {}",
            if kept { "stay" } else { "be gone" }
        );
    }
}

/// RFC 5508 REQ-6: an ICMP error about a mapping does not keep it alive.
#[test]
fn icmp_errors_do_not_keep_a_mapping_alive() {
    let mut lab = PacketLab::new().unwrap();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"a DNS query");
    let out = lab.from_lan(&query).unwrap();
    assert_eq!(out.action, XDP_REDIRECT);
    go_quiet(&mut lab, Duration::from_secs(400));
    let unreachable = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let error = icmp(REMOTE, WAN_ADDR, unreachable, datagram(&out.frame));
    assert_eq!(lab.from_wan(&error).unwrap().action, XDP_REDIRECT);
    sweep(&mut lab, 1);
    assert!(
        !has_mapping(&lab, 40000),
        "the error kept the mapping alive"
    );
}

/// The TCP state of the only dynamic session.
fn tcp_state(lab: &PacketLab) -> u8 {
    let sessions = lab.datapath.maps().view().sessions().entries();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    sessions[0].1.tcp_state
}

/// One TCP segment of the LAN host's connection to REMOTE:443, outbound or
/// inbound, which must be translated.
fn segment(lab: &mut PacketLab, from_lan: bool, flags: u8) {
    let (frame, verdict) = if from_lan {
        let frame = tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), flags, b"data");
        let verdict = lab.from_lan(&frame).unwrap();
        (frame, verdict)
    } else {
        let frame = tcp(ep(REMOTE, 443), ep(WAN_ADDR, 40000), flags, b"data");
        let verdict = lab.from_wan(&frame).unwrap();
        (frame, verdict)
    };
    assert_eq!(
        verdict.action,
        XDP_REDIRECT,
        "flags {flags:#04x} from {}: {frame:?}",
        if from_lan { "the LAN" } else { "outside" }
    );
}

/// RFC 5382 REQ-2 and RFC 7857: a half-closed connection still carries
/// data one way and keeps the established timeout; only the second FIN
/// makes it transitory.
#[test]
fn a_half_closed_connection_stays_established_until_the_second_fin() {
    let mut lab = PacketLab::new().unwrap();
    segment(&mut lab, true, SYN);
    segment(&mut lab, false, SYN | ACK);
    segment(&mut lab, true, ACK);
    assert_eq!(tcp_state(&lab), TCP_STATE_ESTABLISHED);
    // The LAN host is done sending; the remote goes on.
    segment(&mut lab, true, FIN | ACK);
    assert_eq!(tcp_state(&lab), TCP_STATE_HALF_CLOSED_BY_OPENER);
    segment(&mut lab, false, ACK | PSH);
    segment(&mut lab, true, ACK);
    assert_eq!(tcp_state(&lab), TCP_STATE_HALF_CLOSED_BY_OPENER);
    let params = sweep_params(&Timeouts::default(), 0, 0);
    assert_eq!(
        params.session_timeout_ns(PROTO_TCP, TCP_STATE_HALF_CLOSED_BY_OPENER),
        params.tcp_established_ns
    );
    // A retransmitted FIN from the same side changes nothing.
    segment(&mut lab, true, FIN | ACK);
    assert_eq!(tcp_state(&lab), TCP_STATE_HALF_CLOSED_BY_OPENER);
    // The remote's FIN closes it.
    segment(&mut lab, false, FIN | ACK);
    assert_eq!(tcp_state(&lab), TCP_STATE_CLOSING);
    assert_eq!(
        params.session_timeout_ns(PROTO_TCP, TCP_STATE_CLOSING),
        params.tcp_closing_ns
    );
}

/// RFC 7857: an RST does not end a connection that goes on (the RST was
/// spoofed, or lost on its way): data after it brings it back.
#[test]
fn data_after_a_reset_brings_the_connection_back() {
    let mut lab = PacketLab::new().unwrap();
    segment(&mut lab, true, SYN);
    segment(&mut lab, false, SYN | ACK);
    segment(&mut lab, true, ACK);
    segment(&mut lab, false, RST);
    assert_eq!(tcp_state(&lab), TCP_STATE_CLOSED);
    segment(&mut lab, true, ACK | PSH);
    assert_eq!(tcp_state(&lab), TCP_STATE_ESTABLISHED);
}

/// RFC 5382 REQ-2a: simultaneous open. Both ends send a SYN; the remote's
/// arrives after the LAN host's went out, answers it with SYN+ACK, and the
/// connection is established.
#[test]
fn simultaneous_open_reaches_established() {
    let mut lab = PacketLab::new().unwrap();
    segment(&mut lab, true, SYN);
    assert_eq!(tcp_state(&lab), TCP_STATE_OPENING);
    segment(&mut lab, false, SYN);
    segment(&mut lab, true, SYN | ACK);
    segment(&mut lab, false, SYN | ACK);
    assert_eq!(tcp_state(&lab), TCP_STATE_ESTABLISHED);
}

/// RFC 5382 REQ-4 and issue 11: what no mapping or rule takes goes to a
/// socket of the router's own if one wants it (its services, its own DNS
/// or NTP), even with `unsolicited = "drop"`; an unsolicited SYN nobody
/// wants is dropped unanswered, so that hole punching works.
#[test]
fn the_routers_own_sockets_get_their_packets_and_stray_syns_no_answer() {
    for unsolicited in [UNSOLICITED_PASS, UNSOLICITED_DROP] {
        let mut lab = PacketLab::with_config(|c| c.unsolicited = unsolicited).unwrap();
        // The router's SSH server and one of its own UDP client sockets.
        let (ssh, ntp) = lab
            .netns
            .spawn(|| {
                let ssh = std::net::TcpListener::bind((WAN_ADDR, 22))?;
                let ntp = std::net::UdpSocket::bind((WAN_ADDR, 40123))?;
                ntp.connect((REMOTE, 123))?;
                Ok((ssh, ntp))
            })
            .join()
            .unwrap()
            .unwrap();
        for (frame, verdict, what) in [
            (
                tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 22), SYN, b""),
                XDP_PASS,
                "a SYN to the router's SSH",
            ),
            (
                udp(ep(REMOTE, 123), ep(WAN_ADDR, 40123), b"ntp"),
                XDP_PASS,
                "the router's NTP answer",
            ),
            (
                tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 2222), SYN, b""),
                XDP_DROP,
                "a SYN nobody listens for",
            ),
        ] {
            assert_eq!(
                lab.from_wan(&frame).unwrap().action,
                verdict,
                "{what}, unsolicited = {unsolicited}"
            );
        }
        // Nothing listens: UDP goes to the stack or the floor as configured.
        let stray = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40999), b"x");
        let expected = if unsolicited == UNSOLICITED_DROP {
            XDP_DROP
        } else {
            XDP_PASS
        };
        assert_eq!(
            lab.from_wan(&stray).unwrap().action,
            expected,
            "unsolicited = {unsolicited}"
        );
        drop((ssh, ntp));
    }
}

/// The external port of `frame`, sent from the LAN and translated out.
fn external_port(lab: &mut PacketLab, frame: &[u8]) -> u16 {
    let verdict = lab.from_lan(frame).unwrap();
    assert_eq!(verdict.action, XDP_REDIRECT, "outbound verdict");
    let out = assert_checksums_ok(&verdict.frame);
    assert_eq!(*out.src().ip(), WAN_ADDR);
    out.src().port()
}

fn symmetric(config: &mut NatConfig) {
    config.mapping = MAPPING_ADDRESS_AND_PORT_DEPENDENT;
    config.filtering = FILTER_ADDRESS_AND_PORT_DEPENDENT;
    config.unsolicited = UNSOLICITED_DROP;
}

/// RFC 4787 section 4.1 (and REQ-3/4): under address-and-port-dependent
/// mapping ("symmetric") each remote endpoint gets a mapping of its own,
/// the first the host's own port, the others another port of the same
/// parity; a reply finds its host by the port alone, and the filter keeps
/// each remote to its own mapping.
#[test]
fn address_and_port_dependent_mapping_gives_each_remote_its_own_port() {
    for proto in [PROTO_UDP, PROTO_TCP] {
        let mut lab = PacketLab::with_config(symmetric).unwrap();
        let out = |remote| match proto {
            PROTO_TCP => tcp(ep(LAN_HOST, 40000), remote, SYN, b""),
            _ => udp(ep(LAN_HOST, 40000), remote, b"binding request"),
        };
        let (a, b, c) = (ep(REMOTE, 3478), ep(REMOTE, 3479), ep(OTHER_REMOTE, 3478));
        let port_a = external_port(&mut lab, &out(a));
        let port_b = external_port(&mut lab, &out(b));
        let port_c = external_port(&mut lab, &out(c));
        assert_eq!(port_a, 40000, "proto {proto}: the first keeps its port");
        assert_ne!(port_b, port_a, "proto {proto}: another remote port");
        assert_ne!(port_c, port_a, "proto {proto}: another remote address");
        assert_ne!(port_c, port_b, "proto {proto}");
        for port in [port_b, port_c] {
            assert_eq!(port % 2, 0, "proto {proto}: {port} lost the parity");
        }
        // Each mapping stays as it is.
        assert_eq!(external_port(&mut lab, &out(b)), port_b);
        assert_eq!(external_port(&mut lab, &out(a)), port_a);
        assert_counters(&lab, &[("new_binding", 3), ("snat", 5)]);

        let reply = |from, port| match proto {
            PROTO_TCP => tcp(from, ep(WAN_ADDR, port), SYN | ACK, b""),
            _ => udp(from, ep(WAN_ADDR, port), b"binding response"),
        };
        for (from, port) in [(a, port_a), (b, port_b), (c, port_c)] {
            let frame = reply(from, port);
            let verdict = lab.from_wan(&frame).unwrap();
            assert_routed(
                &verdict,
                &frame,
                Egress::Lan(LAN_HOST),
                from,
                ep(LAN_HOST, 40000),
            );
        }
        // B's reply to A's port, and A's to B's: dropped.
        for (from, port) in [(b, port_a), (a, port_b), (c, port_a)] {
            assert_dropped(&lab.from_wan(&reply(from, port)).unwrap());
        }
        assert_counters(&lab, &[("dnat", 3), ("drop_unsolicited", 3)]);
    }
}

/// Address-dependent mapping: one mapping per remote address, whatever
/// its port.
#[test]
fn address_dependent_mapping_shares_a_port_per_remote_address() {
    let mut lab = PacketLab::with_config(|c| c.mapping = MAPPING_ADDRESS_DEPENDENT).unwrap();
    let out = |remote| udp(ep(LAN_HOST, 40000), remote, b"x");
    let first = external_port(&mut lab, &out(ep(REMOTE, 3478)));
    assert_eq!(first, 40000);
    assert_eq!(external_port(&mut lab, &out(ep(REMOTE, 3479))), first);
    let other = external_port(&mut lab, &out(ep(OTHER_REMOTE, 3478)));
    assert_ne!(other, first, "another remote address, another mapping");
    assert_eq!(external_port(&mut lab, &out(ep(OTHER_REMOTE, 9))), other);
    assert_counters(&lab, &[("new_binding", 2)]);
}

/// Rules (admin, UPnP, NAT-PMP, PCP) stay endpoint-independent whatever
/// the mapping behaviour: a forwarded server reaches every remote from its
/// external port, and makes no dynamic mapping.
#[test]
fn forwarded_ports_stay_endpoint_independent_under_symmetric_mapping() {
    let mut lab = PacketLab::with_config(symmetric).unwrap();
    lab.forward("udp/5000=192.168.0.12:6000").unwrap();
    for remote in [ep(REMOTE, 3478), ep(REMOTE, 3479), ep(OTHER_REMOTE, 1)] {
        let frame = udp(ep(LAN_HOST, 6000), remote, b"x");
        assert_eq!(external_port(&mut lab, &frame), 5000, "to {remote}");
    }
    assert_counters(&lab, &[("new_binding", 0)]);
}

/// RFC 4787 REQ-1: one mapping per endpoint, its port kept when free. A
/// mapping that keeps its endpoint's port is all in that port's slot (no
/// `BINDINGS` entry); one that could not keep it has both halves. Either
/// way a second remote reuses it, and the sweep keeps it while it is
/// used and removes it, both halves, once it is not.
#[test]
fn an_endpoint_keeps_its_mapping_for_every_remote_wherever_it_is_kept() {
    let mut lab = PacketLab::new().unwrap();
    // Port 40002 is another LAN host's already.
    lab.datapath
        .maps_mut()
        .view_mut()
        .insert_mapping(
            BindingKey::outbound(PROTO_UDP, LAN_HOST2.octets(), 40002),
            ROUTER_WAN.octets(),
            40002,
            datapath_now_ns(),
            datapath_now_ns(),
        )
        .unwrap();
    let out = |port, remote| udp(ep(LAN_HOST, port), remote, b"x");
    let own = external_port(&mut lab, &out(40000, ep(REMOTE, 3478)));
    let moved = external_port(&mut lab, &out(40002, ep(REMOTE, 3478)));
    assert_eq!(own, 40000, "a free port is kept");
    assert_ne!(moved, 40002, "a held port is not shared");
    for remote in [ep(REMOTE, 3479), ep(OTHER_REMOTE, 53)] {
        assert_eq!(external_port(&mut lab, &out(40000, remote)), own);
        assert_eq!(external_port(&mut lab, &out(40002, remote)), moved);
    }
    let view = lab.datapath.maps().view();
    let key = |port| BindingKey::outbound(PROTO_UDP, LAN_HOST.octets(), port);
    assert_eq!(view.binding(&key(40000)).unwrap(), None, "no outbound half");
    assert_eq!(view.mapped_port(&key(40000)).unwrap(), Some(40000));
    assert_eq!(
        view.binding(&key(40002)).unwrap().map(|b| b.port),
        Some(moved)
    );
    assert_eq!(
        view.held_ports().unwrap().len(),
        3,
        "the two and the other host's"
    );
    // Quiet past the UDP timeout, then the own-port one talks again: it
    // stays, the other (and the other host's) go.
    go_quiet(&mut lab, Duration::from_secs(400));
    assert_eq!(external_port(&mut lab, &out(40000, ep(REMOTE, 3478))), own);
    sweep(&mut lab, 1);
    assert!(
        has_mapping(&lab, own),
        "a refreshed own-port mapping was swept"
    );
    assert!(
        !has_mapping(&lab, moved),
        "an idle mapping outlived its timeout"
    );
    let view = lab.datapath.maps().view();
    assert_eq!(view.held_ports().unwrap().len(), 1);
    assert_eq!(
        view.bindings().keys().count(),
        0,
        "its outbound half is gone too"
    );
}

/// A remapped endpoint (its own port was another host's when it mapped)
/// keeps its port once its own port is free again: its flow's lookup is
/// led to `BINDINGS` by the count on its own port's slot
/// (`PortOwner::remapped`), which the sweep takes back with the mapping,
/// and then the endpoint's next flow gets its own port.
#[test]
fn a_remapped_endpoint_keeps_its_port_when_its_own_port_is_freed() {
    let mut lab = PacketLab::new().unwrap();
    let other = BindingKey::outbound(PROTO_UDP, LAN_HOST2.octets(), 40002);
    let view = lab.datapath.maps_mut().view_mut();
    view.insert_mapping(
        other,
        ROUTER_WAN.octets(),
        40002,
        datapath_now_ns(),
        datapath_now_ns(),
    )
    .unwrap();
    let out = |remote| udp(ep(LAN_HOST, 40002), remote, b"x");
    let remapped_on = |lab: &PacketLab| {
        let view = lab.datapath.maps().view();
        view.remapped_on(PROTO_UDP, 40002).unwrap()
    };
    assert_eq!(remapped_on(&lab), 0, "nobody remapped yet");
    let moved = external_port(&mut lab, &out(ep(REMOTE, 3478)));
    assert_ne!(moved, 40002, "a held port is not shared");
    assert_eq!(remapped_on(&lab), 1, "the remapped endpoint is counted");

    // The other host's mapping goes: the own port is free, the count stays.
    let view = lab.datapath.maps_mut().view_mut();
    view.remove_mapping(&other).unwrap();
    assert!(!has_mapping(&lab, 40002));
    assert_eq!(remapped_on(&lab), 1);
    for remote in [ep(REMOTE, 3478), ep(OTHER_REMOTE, 53)] {
        assert_eq!(
            external_port(&mut lab, &out(remote)),
            moved,
            "the endpoint got a second mapping on its freed own port"
        );
    }
    assert!(!has_mapping(&lab, 40002), "its own port was claimed again");
    assert_counters(&lab, &[("new_binding", 1)]);

    // Swept: both halves and the count go; the next flow keeps its port.
    go_quiet(&mut lab, Duration::from_secs(400));
    sweep(&mut lab, 1);
    assert!(
        !has_mapping(&lab, moved),
        "an idle mapping outlived its timeout"
    );
    assert_eq!(remapped_on(&lab), 0, "the sweep left the count behind");
    assert_eq!(external_port(&mut lab, &out(ep(REMOTE, 3478))), 40002);
    assert_eq!(remapped_on(&lab), 0, "an own-port mapping is not remapped");
    let view = lab.datapath.maps().view();
    assert_eq!(view.bindings().keys().count(), 0, "no outbound half");
}

/// Per-remote mappings age like any other: the sweep removes both halves
/// of each once idle, and keeps one whose session is live.
#[test]
fn per_remote_mappings_are_swept() {
    let mut lab = PacketLab::with_config(symmetric).unwrap();
    let out = |remote| udp(ep(LAN_HOST, 40000), remote, b"x");
    let port_a = external_port(&mut lab, &out(ep(REMOTE, 3478)));
    let port_b = external_port(&mut lab, &out(ep(REMOTE, 3479)));
    let count = |lab: &PacketLab| lab.datapath.maps().view().held_ports().unwrap().len();
    assert_eq!(count(&lab), 2, "two mappings, a port each");
    go_quiet(&mut lab, Duration::from_secs(400));
    // B talks again: its mapping lives, A's goes.
    external_port(&mut lab, &out(ep(REMOTE, 3479)));
    sweep(&mut lab, 1);
    assert!(
        !has_mapping(&lab, port_a),
        "A's mapping outlived its timeout"
    );
    assert!(has_mapping(&lab, port_b), "B's live mapping was swept");
    assert_eq!(count(&lab), 1, "A's mapping is gone, B's is left");
    let view = lab.datapath.maps().view();
    let outbound = BindingKey::outbound_for(
        MAPPING_ADDRESS_AND_PORT_DEPENDENT,
        PROTO_UDP,
        LAN_HOST.octets(),
        40000,
        REMOTE.octets(),
        3479,
    );
    assert_eq!(view.mapped_port(&outbound).unwrap(), Some(port_b));
}

/// RFC 7857 section 2.1 and RFC 5382 REQ-5: a connection still opening and
/// one already closed age by timeouts of their own (`tcp_opening`,
/// `tcp_closing`), through the kernel sweep.
#[test]
fn opening_and_closing_connections_age_by_their_own_timeouts() {
    for (opening, closing) in [(240, 60), (60, 240)] {
        let mut lab = PacketLab::new().unwrap();
        // 40000 only sends its SYN; 40002 opens, then both sides close.
        let out = |port, flags| tcp(ep(LAN_HOST, port), ep(REMOTE, 443), flags, b"");
        let back = |port, flags| tcp(ep(REMOTE, 443), ep(WAN_ADDR, port), flags, b"");
        assert_eq!(external_port(&mut lab, &out(40000, SYN)), 40000);
        assert_eq!(external_port(&mut lab, &out(40002, SYN)), 40002);
        for (from_lan, flags) in [
            (false, SYN | ACK),
            (true, ACK),
            (true, FIN | ACK),
            (false, FIN | ACK),
            (true, ACK),
        ] {
            let frame = if from_lan {
                out(40002, flags)
            } else {
                back(40002, flags)
            };
            let verdict = if from_lan {
                lab.from_lan(&frame)
            } else {
                lab.from_wan(&frame)
            };
            assert_eq!(verdict.unwrap().action, XDP_REDIRECT, "flags {flags:#04x}");
        }
        let states: Vec<_> = {
            let view = lab.datapath.maps().view();
            let mut states: Vec<_> = view
                .sessions()
                .entries()
                .into_iter()
                .map(|(key, session)| (key.external_port, session.tcp_state))
                .collect();
            states.sort_unstable();
            states
        };
        assert_eq!(
            states,
            [(40000, TCP_STATE_OPENING), (40002, TCP_STATE_CLOSING)]
        );
        go_quiet(&mut lab, Duration::from_secs(100));
        let timeouts = Timeouts {
            tcp_opening: Some(Duration::from_secs(opening)),
            tcp_closing: Some(Duration::from_secs(closing)),
            below_rfc_minimums: true,
            ..Timeouts::default()
        };
        lab.datapath
            .run_sweep(sweep_params(&timeouts, 0, 1))
            .unwrap();
        let kept = |port| {
            lab.datapath
                .maps()
                .view()
                .port_owner(PROTO_TCP, port)
                .unwrap()
                .is_some()
        };
        // 100 s idle: past the 60 s timeout, within the 240 s one.
        assert_eq!(
            (kept(40000), kept(40002)),
            (opening > 100, closing > 100),
            "tcp_opening = {opening}, tcp_closing = {closing}"
        );
    }
}

/// RFC 4787 REQ-3a (and REQ-4), end to end: two LAN hosts' NTP clients both
/// send from UDP port 123. The WAN host sees the first on 123 itself and the
/// second on another odd system port of `[nat] low_ports` (600-1023 by
/// default), never on a port of 1024 or above; its answers reach both.
#[test]
fn a_system_source_port_reaches_the_wan_host_as_a_system_port() {
    let lab = Lab::start().unwrap();
    let server = join(
        lab.wan
            .spawn(|| Ok(std::net::UdpSocket::bind((WAN_HOST, 123))?)),
    );
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    for host in [LAN_SERVER, LAN_CLIENT] {
        let client = join(lab.lan.spawn(move || {
            let socket = std::net::UdpSocket::bind((host, 123))?;
            socket.connect((WAN_HOST, 123))?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            Ok(socket)
        }));
        let mut buffer = [0u8; 64];
        // UDP may be lost while the router learns its neighbours: bounded
        // retries.
        let from = (0..5)
            .find_map(|_| {
                client.send(b"ntp request").unwrap();
                server.recv_from(&mut buffer).ok()
            })
            .expect("the NTP request never reached the WAN host")
            .1;
        assert_eq!(from.ip(), std::net::IpAddr::V4(ROUTER_WAN));
        server.send_to(b"ntp answer", from).unwrap();
        let len = uninterrupted(|| client.recv(&mut buffer)).expect("the answer came back");
        assert_eq!(&buffer[..len], b"ntp answer");
        seen.push(from.port());
    }
    assert_eq!(seen[0], 123, "a free system port is kept: {seen:?}");
    let second = seen[1];
    assert!(
        (600..1024).contains(&second) && second % 2 == 1,
        "the second host's 123 came out as {second}"
    );
    assert!(counter_of(&lab, "new_binding") >= 2);
}

fn counter_of(lab: &Lab, label: &str) -> u64 {
    lab.counters().expect("natctl stats")[label]
}
