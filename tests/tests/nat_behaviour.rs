//! NAT behaviour the RFCs require of a router (RFC 4787, 5382, 5508), as
//! packet tests through `BPF_PROG_TEST_RUN`; each test names the REQ it
//! checks, as docs/rfc-compliance.md does.
mod common;

use std::time::Duration;

use common::*;
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use nat_common::{EndpointKey, PROTO_UDP};
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
