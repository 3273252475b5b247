//! NAT behaviour the RFCs require of a router (RFC 4787, 5382, 5508), as
//! packet tests through `BPF_PROG_TEST_RUN`; each test names the REQ it
//! checks, as docs/rfc-compliance.md does.
mod common;

use std::time::Duration;

use common::*;
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use nat_common::{
    EndpointKey, PROTO_TCP, PROTO_UDP, TCP_STATE_CLOSED, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED,
    TCP_STATE_HALF_CLOSED_BY_OPENER, TCP_STATE_OPENING,
};
use nat_ctl::{
    aging::{datapath_now_ns, sweep_params},
    config::Timeouts,
};
use nat_tests::packet::*;

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
        view.bindings_mut().insert(key, binding, 0).unwrap();
    }
    let sessions: Vec<_> = view.sessions().iter().map(Result::unwrap).collect();
    for (key, mut session) in sessions {
        session.last_seen_ns = now - idle;
        view.sessions_mut().insert(key, session, 0).unwrap();
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
    view.binding(&EndpointKey::inbound(PROTO_UDP, external_port))
        .unwrap()
        .is_some()
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
    let sessions: Vec<_> = lab
        .datapath
        .maps()
        .view()
        .sessions()
        .iter()
        .map(Result::unwrap)
        .collect();
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
        params.tcp_transitory_ns
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
