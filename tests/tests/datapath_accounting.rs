//! Packet tests of the datapath's accounting through `BPF_PROG_TEST_RUN`:
//! packet and byte counts of dynamic sessions, the conversations through
//! forwarded ports (`FORWARD_SESSIONS`) and their TCP state, the
//! new-connection events of `NEW_CONNECTIONS`, the per-rule counters, and
//! rules that allow several remote prefixes.
//!
//! Every test builds its own `PacketLab` (its own namespace and maps), so
//! the tables start empty and the counters at zero. Byte counts are the
//! length of the frame as it reached the datapath, i.e. of the test frame.
mod common;

use std::{mem::size_of, net::Ipv4Addr};

use nat_ctl::datapath::TableSizes;

use common::*;
use nat_common::{
    ConnectionEvent, CounterValue, FILTER_ADDRESS_DEPENDENT, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    RuleCounters, Session, SessionKey, TCP_STATE_CLOSED, TCP_STATE_ESTABLISHED,
    TCP_STATE_HALF_CLOSED_BY_ANSWERER, TCP_STATE_HALF_CLOSED_BY_OPENER, TCP_STATE_NONE,
    TCP_STATE_OPENING, UNSOLICITED_DROP,
};
use nat_tests::packet::*;

/// A host outside every prefix the tests allow.
const STRANGER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const ALLOWED_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const NEXT_TO_ALLOWED_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 8);
const IN_ALLOWED_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

fn fresh_lab() -> PacketLab {
    PacketLab::new().unwrap()
}

fn key(remote: Ipv4Addr, remote_port: u16, external_port: u16, proto: u8) -> SessionKey {
    SessionKey {
        remote_addr: remote.octets(),
        remote_port,
        external_port,
        proto,
        _pad: [0; 3],
    }
}

fn dynamic_sessions(lab: &PacketLab) -> Vec<(SessionKey, Session)> {
    lab.datapath.maps().view().sessions().entries()
}

fn forward_sessions(lab: &PacketLab) -> Vec<(SessionKey, Session)> {
    lab.datapath.maps().view().forward_sessions().entries()
}

/// The only entry of a session map, which must hold exactly one.
fn only(all: Vec<(SessionKey, Session)>, what: &str) -> (SessionKey, Session) {
    assert_eq!(
        all.len(),
        1,
        "{what}: expected exactly one entry, got {all:?}"
    );
    all[0]
}

fn session(lab: &PacketLab, key: SessionKey) -> Session {
    lab.datapath
        .maps()
        .view()
        .sessions()
        .get(&key)
        .unwrap_or_else(|| panic!("no session {key:?}; all: {:?}", dynamic_sessions(lab)))
}

fn forward_session(lab: &PacketLab, key: SessionKey) -> Session {
    lab.datapath
        .maps()
        .view()
        .forward_sessions()
        .get(&key)
        .unwrap_or_else(|| {
            panic!(
                "no forward session {key:?}; all: {:?}",
                forward_sessions(lab)
            )
        })
}

/// Checks what a session holds, except its last-seen time.
#[track_caller]
fn assert_session(
    got: Session,
    internal: (Ipv4Addr, u16),
    packets: u64,
    bytes: usize,
    tcp_state: u8,
) {
    assert_eq!(
        (
            Ipv4Addr::from(got.internal_addr),
            got.internal_port,
            got.packets,
            got.bytes,
            got.tcp_state,
        ),
        (internal.0, internal.1, packets, bytes as u64, tcp_state),
        "(internal addr, internal port, packets, bytes, tcp_state) of {got:?}"
    );
    assert_ne!(got.last_seen_ns, 0, "last_seen_ns of {got:?}");
}

/// Every event waiting in `NEW_CONNECTIONS`, oldest first.
fn events(lab: &mut PacketLab) -> Vec<ConnectionEvent> {
    let ring = lab.datapath.maps_mut().new_connections_mut();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(
            item.len(),
            size_of::<ConnectionEvent>(),
            "size of a NEW_CONNECTIONS record"
        );
        // SAFETY: a ConnectionEvent is plain integers, and the length was
        // just checked.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnectionEvent>()) });
    }
    out
}

fn event(
    remote: (Ipv4Addr, u16),
    external_port: u16,
    internal: (Ipv4Addr, u16),
    proto: u8,
    rule_id: u32,
) -> ConnectionEvent {
    ConnectionEvent {
        remote_addr: remote.0.octets(),
        internal_addr: internal.0.octets(),
        remote_port: remote.1,
        external_port,
        internal_port: internal.1,
        proto,
        _pad: 0,
        rule_id,
    }
}

fn rule(lab: &PacketLab, id: u32) -> RuleCounters {
    lab.datapath.maps().view().rule_counters(id).unwrap()
}

fn cv(packets: u64, bytes: usize) -> CounterValue {
    CounterValue {
        packets,
        bytes: bytes as u64,
    }
}

#[track_caller]
fn assert_rule(lab: &PacketLab, id: u32, inbound: CounterValue, outbound: CounterValue) {
    assert_eq!(
        rule(lab, id),
        RuleCounters { inbound, outbound },
        "counters of rule {id}"
    );
}

#[track_caller]
fn assert_rule_untouched(lab: &PacketLab, id: u32) {
    assert_rule(lab, id, cv(0, 0), cv(0, 0));
}

#[track_caller]
fn redirected(v: &Verdict) {
    assert_eq!(v.action, XDP_REDIRECT, "verdict");
}

/// A frame from the WAN that must reach the forwarded server unchanged but
/// for its destination.
#[track_caller]
fn forward_in(lab: &mut PacketLab, frame: &[u8], server: (Ipv4Addr, u16)) {
    let v = lab.from_wan(frame).unwrap();
    let inp = parse(frame);
    assert_routed(
        &v,
        frame,
        Egress::Lan(server.0),
        inp.src(),
        ep(server.0, server.1),
    );
}

/// A frame from a forwarded server that must leave from `external_port`.
#[track_caller]
fn forward_out(lab: &mut PacketLab, frame: &[u8], external_port: u16) {
    let v = lab.from_lan(frame).unwrap();
    let inp = parse(frame);
    assert_routed(
        &v,
        frame,
        Egress::Wan,
        ep(WAN_ADDR, external_port),
        inp.dst(),
    );
}

/// A frame from the WAN refused by the forward's allowed remotes: a TCP SYN
/// is dropped unanswered (RFC 5382 REQ-4), anything else handed to the
/// kernel as it came (the default is to pass unsolicited packets).
#[track_caller]
fn refused(lab: &mut PacketLab, frame: &[u8]) {
    let verdict = lab.from_wan(frame).unwrap();
    if is_syn(frame) {
        assert_dropped(&verdict);
    } else {
        assert_passed_untouched(&verdict, frame);
    }
}

/// A TCP SYN without ACK (in a frame without IP options).
fn is_syn(frame: &[u8]) -> bool {
    const IP: usize = 14;
    frame.get(IP + 9) == Some(&6) && frame.get(IP + 20 + 13).is_some_and(|f| f & 0x12 == SYN)
}

// ---------------------------------------------------------------------------
// 1. Dynamic sessions count both directions.

#[test]
fn udp_session_counts_packets_and_bytes_both_ways() {
    let mut lab = fresh_lab();
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"a short query");
    let v = lab.from_lan(&query).unwrap();
    assert_routed(&v, &query, Egress::Wan, ep(WAN_ADDR, 40000), ep(REMOTE, 53));
    let k = key(REMOTE, 53, 40000, PROTO_UDP);
    assert_session(
        session(&lab, k),
        (LAN_HOST, 40000),
        1,
        query.len(),
        TCP_STATE_NONE,
    );

    let answer = udp(
        ep(REMOTE, 53),
        ep(WAN_ADDR, 40000),
        &[0x5a; 300], // a longer answer, so that the two lengths differ
    );
    let v = lab.from_wan(&answer).unwrap();
    assert_routed(
        &v,
        &answer,
        Egress::Lan(LAN_HOST),
        ep(REMOTE, 53),
        ep(LAN_HOST, 40000),
    );
    let (got_key, got) = only(dynamic_sessions(&lab), "SESSIONS");
    assert_eq!(got_key, k, "session key");
    assert_session(
        got,
        (LAN_HOST, 40000),
        2,
        query.len() + answer.len(),
        TCP_STATE_NONE,
    );

    // A packet the filter refuses (another remote port) counts nowhere.
    let stray = udp(ep(REMOTE, 54), ep(WAN_ADDR, 40000), &[1; 100]);
    assert_passed_untouched(&lab.from_wan(&stray).unwrap(), &stray);
    assert_session(
        session(&lab, k),
        (LAN_HOST, 40000),
        2,
        query.len() + answer.len(),
        TCP_STATE_NONE,
    );

    // And the conversation goes on adding up, Ethernet padding included
    // (the length is that of the frame, not of the datagram).
    let mut again = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q2");
    again.resize(60, 0);
    redirected(&lab.from_lan(&again).unwrap());
    assert_session(
        session(&lab, k),
        (LAN_HOST, 40000),
        3,
        query.len() + answer.len() + again.len(),
        TCP_STATE_NONE,
    );
    assert!(
        forward_sessions(&lab).is_empty(),
        "dynamic traffic made forward sessions"
    );
    assert!(events(&mut lab).is_empty(), "dynamic traffic made events");
}

#[test]
fn tcp_session_counts_and_follows_the_handshake() {
    let mut lab = fresh_lab();
    let k = key(REMOTE, 443, 40000, PROTO_TCP);
    let mut bytes = 0;
    let steps: [(bool, u8, &[u8], u64, u8); 5] = [
        (true, SYN, b"", 1, TCP_STATE_OPENING),
        (false, SYN | ACK, b"", 2, TCP_STATE_ESTABLISHED),
        (
            true,
            ACK | PSH,
            b"GET / HTTP/1.1\r\n\r\n",
            3,
            TCP_STATE_ESTABLISHED,
        ),
        // The remote's FIN half-closes it; the LAN host may still send.
        (
            false,
            FIN | ACK,
            b"bye",
            4,
            TCP_STATE_HALF_CLOSED_BY_ANSWERER,
        ),
        (true, RST, b"", 5, TCP_STATE_CLOSED),
    ];
    for (from_lan, flags, payload, packets, state) in steps {
        let frame = if from_lan {
            tcp(ep(LAN_HOST, 40000), ep(REMOTE, 443), flags, payload)
        } else {
            tcp(ep(REMOTE, 443), ep(WAN_ADDR, 40000), flags, payload)
        };
        let v = if from_lan {
            lab.from_lan(&frame).unwrap()
        } else {
            lab.from_wan(&frame).unwrap()
        };
        redirected(&v);
        bytes += frame.len();
        assert_session(session(&lab, k), (LAN_HOST, 40000), packets, bytes, state);
    }
    only(dynamic_sessions(&lab), "SESSIONS");
}

#[test]
fn ping_and_address_dependent_sessions_count_both_ways() {
    // An echo request and its reply: one session, remote port 0.
    let mut lab = fresh_lab();
    let request = echo_request(LAN_HOST, REMOTE, 4000, 1);
    redirected(&lab.from_lan(&request).unwrap());
    let reply = echo_reply(REMOTE, WAN_ADDR, 4000, 1);
    redirected(&lab.from_wan(&reply).unwrap());
    let (k, s) = only(dynamic_sessions(&lab), "SESSIONS after a ping");
    assert_eq!(k, key(REMOTE, 0, 4000, PROTO_ICMP), "ping session key");
    assert_session(
        s,
        (LAN_HOST, 4000),
        2,
        request.len() + reply.len(),
        TCP_STATE_NONE,
    );

    // Address-dependent filtering: replies from any port of the remote land
    // in the one session keyed with remote port 0.
    let mut lab = PacketLab::with_config(|c| c.filtering = FILTER_ADDRESS_DEPENDENT).unwrap();
    let out = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    redirected(&lab.from_lan(&out).unwrap());
    let back1 = udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"answer one");
    let back2 = udp(ep(REMOTE, 5353), ep(WAN_ADDR, 40000), b"answer number two");
    redirected(&lab.from_wan(&back1).unwrap());
    redirected(&lab.from_wan(&back2).unwrap());
    let (k, s) = only(dynamic_sessions(&lab), "SESSIONS, address-dependent");
    assert_eq!(k, key(REMOTE, 0, 40000, PROTO_UDP), "session key");
    assert_session(
        s,
        (LAN_HOST, 40000),
        3,
        out.len() + back1.len() + back2.len(),
        TCP_STATE_NONE,
    );
}

// ---------------------------------------------------------------------------
// 2. Forward sessions.

#[test]
fn forward_session_follows_a_tcp_connection_from_the_remote() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let server = (LAN_HOST, 80);
    let k = key(REMOTE, 5555, 8080, PROTO_TCP);

    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    forward_in(&mut lab, &syn, server);
    let (got_key, got) = only(forward_sessions(&lab), "FORWARD_SESSIONS after the SYN");
    assert_eq!(got_key, k, "forward session key");
    assert_session(got, server, 1, syn.len(), TCP_STATE_OPENING);

    let syn_ack = tcp(ep(LAN_HOST, 80), ep(REMOTE, 5555), SYN | ACK, b"");
    forward_out(&mut lab, &syn_ack, 8080);
    let mut bytes = syn.len() + syn_ack.len();
    assert_session(
        forward_session(&lab, k),
        server,
        2,
        bytes,
        TCP_STATE_ESTABLISHED,
    );

    let request = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), ACK | PSH, b"GET /");
    forward_in(&mut lab, &request, server);
    bytes += request.len();
    assert_session(
        forward_session(&lab, k),
        server,
        3,
        bytes,
        TCP_STATE_ESTABLISHED,
    );

    // A stray duplicate SYN must not make a live connection look like one
    // being opened (which would age it out on the short timeout).
    forward_in(&mut lab, &syn, server);
    bytes += syn.len();
    assert_session(
        forward_session(&lab, k),
        server,
        4,
        bytes,
        TCP_STATE_ESTABLISHED,
    );

    // The remote (the opener here) half-closes it.
    let fin = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), FIN | ACK, b"");
    forward_in(&mut lab, &fin, server);
    bytes += fin.len();
    assert_session(
        forward_session(&lab, k),
        server,
        5,
        bytes,
        TCP_STATE_HALF_CLOSED_BY_OPENER,
    );

    // An ACK after the FIN does not reopen it.
    let ack = tcp(ep(LAN_HOST, 80), ep(REMOTE, 5555), ACK, b"");
    forward_out(&mut lab, &ack, 8080);
    bytes += ack.len();
    assert_session(
        forward_session(&lab, k),
        server,
        6,
        bytes,
        TCP_STATE_HALF_CLOSED_BY_OPENER,
    );

    let rst = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), RST, b"");
    forward_in(&mut lab, &rst, server);
    bytes += rst.len();
    assert_session(forward_session(&lab, k), server, 7, bytes, TCP_STATE_CLOSED);

    only(forward_sessions(&lab), "FORWARD_SESSIONS at the end");
    assert!(
        dynamic_sessions(&lab).is_empty(),
        "forwarded traffic made dynamic sessions: {:?}",
        dynamic_sessions(&lab)
    );
    let view = lab.datapath.maps().view();
    assert_eq!(
        (
            view.bindings().keys().count(),
            view.held_ports().unwrap().len()
        ),
        (0, 0),
        "forwarded traffic made dynamic mappings"
    );
    assert_counters(&lab, &[("forwarded", 5), ("snat", 2), ("new_binding", 0)]);
}

#[test]
fn forward_session_closed_by_the_server() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    let server = (LAN_HOST, 80);
    let k = key(REMOTE, 6000, 8080, PROTO_TCP);
    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 6000), ep(WAN_ADDR, 8080), SYN, b""),
        server,
    );
    forward_out(
        &mut lab,
        &tcp(ep(LAN_HOST, 80), ep(REMOTE, 6000), SYN | ACK, b""),
        8080,
    );
    assert_eq!(forward_session(&lab, k).tcp_state, TCP_STATE_ESTABLISHED);
    forward_out(
        &mut lab,
        &tcp(ep(LAN_HOST, 80), ep(REMOTE, 6000), FIN | ACK, b""),
        8080,
    );
    // The server (the answerer here) half-closes it.
    assert_eq!(
        forward_session(&lab, k).tcp_state,
        TCP_STATE_HALF_CLOSED_BY_ANSWERER
    );
    forward_out(
        &mut lab,
        &tcp(ep(LAN_HOST, 80), ep(REMOTE, 6000), RST, b""),
        8080,
    );
    let s = forward_session(&lab, k);
    assert_eq!((s.tcp_state, s.packets), (TCP_STATE_CLOSED, 4));

    // The server's RST straight after the remote's SYN (port closed).
    let k2 = key(REMOTE, 6001, 8080, PROTO_TCP);
    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 6001), ep(WAN_ADDR, 8080), SYN, b""),
        server,
    );
    forward_out(
        &mut lab,
        &tcp(ep(LAN_HOST, 80), ep(REMOTE, 6001), RST | ACK, b""),
        8080,
    );
    let s = forward_session(&lab, k2);
    assert_eq!((s.tcp_state, s.packets), (TCP_STATE_CLOSED, 2));
    assert!(dynamic_sessions(&lab).is_empty(), "dynamic sessions made");
}

#[test]
fn udp_forward_session_has_no_tcp_state() {
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.13:53").unwrap();
    let server = (LAN_HOST2, 53);
    let query = udp(ep(REMOTE, 3333), ep(WAN_ADDR, 8053), b"which address?");
    forward_in(&mut lab, &query, server);
    let k = key(REMOTE, 3333, 8053, PROTO_UDP);
    let (got_key, got) = only(forward_sessions(&lab), "FORWARD_SESSIONS");
    assert_eq!(got_key, k, "forward session key");
    assert_session(got, server, 1, query.len(), TCP_STATE_NONE);

    let answer = udp(ep(LAN_HOST2, 53), ep(REMOTE, 3333), &[7; 200]);
    forward_out(&mut lab, &answer, 8053);
    assert_session(
        forward_session(&lab, k),
        server,
        2,
        query.len() + answer.len(),
        TCP_STATE_NONE,
    );
    assert!(dynamic_sessions(&lab).is_empty(), "dynamic sessions made");
}

#[test]
fn conversations_of_different_remotes_are_separate_forward_sessions() {
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.13:53").unwrap();
    let server = (LAN_HOST2, 53);
    let remotes = [(REMOTE, 3333), (REMOTE, 3334), (REMOTE2, 3333)];
    for (addr, port) in remotes {
        forward_in(
            &mut lab,
            &udp(ep(addr, port), ep(WAN_ADDR, 8053), b"x"),
            server,
        );
    }
    forward_in(
        &mut lab,
        &udp(ep(REMOTE, 3333), ep(WAN_ADDR, 8053), b"x"),
        server,
    );
    let all = forward_sessions(&lab);
    assert_eq!(all.len(), 3, "forward sessions: {all:?}");
    assert_eq!(
        forward_session(&lab, key(REMOTE, 3333, 8053, PROTO_UDP)).packets,
        2
    );
    assert_eq!(
        forward_session(&lab, key(REMOTE, 3334, 8053, PROTO_UDP)).packets,
        1
    );
    assert_eq!(
        forward_session(&lab, key(REMOTE2, 3333, 8053, PROTO_UDP)).packets,
        1
    );
}

/// A flood of new remotes on a forwarded port fills `FORWARD_SESSIONS`
/// (here 32 sessions, 64 slots): every new conversation still gets its
/// session and its event, each at an older one's cost once the table is
/// full there; the table never holds more than its slots, its homes'
/// counts of spilled sessions stay right, and the dynamic sessions are
/// untouched.
#[test]
fn a_flood_of_remotes_on_a_forwarded_port_evicts_older_conversations() {
    const REMOTES: u16 = 512;
    let sizes = TableSizes {
        forward_sessions: 32,
        ..TableSizes::default()
    };
    let mut lab = PacketLab::build_sized(Mode::Xdp, sizes, |_| {}).unwrap();
    lab.forward("udp/8053=192.168.0.13:53").unwrap();
    let server = (Ipv4Addr::new(192, 168, 0, 13), 53);
    let slots = lab.datapath.maps().view().forward_sessions().slots();
    assert_eq!(slots, 64, "FORWARD_SESSIONS' slots");
    let mut reported = 0;
    for i in 0..REMOTES {
        let remote = Ipv4Addr::new(198, 51, (i >> 8) as u8, i as u8);
        forward_in(
            &mut lab,
            &udp(ep(remote, 40000 + i), ep(WAN_ADDR, 8053), b"x"),
            server,
        );
        // The newest conversation is always there.
        forward_session(&lab, key(remote, 40000 + i, 8053, PROTO_UDP));
        reported += events(&mut lab).len();
    }
    assert_eq!(reported, usize::from(REMOTES), "connection events");
    let table = lab.datapath.maps().view().forward_sessions();
    let held = table.len();
    assert!(held <= slots as usize, "{held} sessions in {slots} slots");
    let (in_window, counted) = table.spilled();
    assert_eq!(
        in_window, counted,
        "spilled sessions and their homes' counts"
    );
    let evicted = counter(&lab, "forward_session_evicted");
    assert!(
        evicted > 0 && evicted as usize + held >= usize::from(REMOTES),
        "{evicted} evicted, {held} held of {REMOTES}"
    );
    assert_eq!(counter(&lab, "session_table_full"), 0);
    assert!(dynamic_sessions(&lab).is_empty(), "dynamic sessions made");
}

// ---------------------------------------------------------------------------
// 3. New-connection events.

#[test]
fn a_new_conversation_on_a_forwarded_port_is_reported_once() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap(); // rule 1
    lab.forward("udp/8053=192.168.0.13:53").unwrap(); // rule 2
    assert!(events(&mut lab).is_empty(), "events before any packet");

    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    forward_in(&mut lab, &syn, (LAN_HOST, 80));
    assert_eq!(
        events(&mut lab),
        vec![event((REMOTE, 5555), 8080, (LAN_HOST, 80), PROTO_TCP, 1)],
        "events after the first SYN"
    );

    // The rest of the same conversation, both ways: nothing more.
    forward_out(
        &mut lab,
        &tcp(ep(LAN_HOST, 80), ep(REMOTE, 5555), SYN | ACK, b""),
        8080,
    );
    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), ACK, b""),
        (LAN_HOST, 80),
    );
    // Even a retransmitted SYN.
    forward_in(&mut lab, &syn, (LAN_HOST, 80));
    assert_eq!(events(&mut lab), vec![], "events of a known conversation");

    // Another port of the same remote, another remote, another rule.
    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 5556), ep(WAN_ADDR, 8080), SYN, b""),
        (LAN_HOST, 80),
    );
    forward_in(
        &mut lab,
        &tcp(ep(OTHER_REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b""),
        (LAN_HOST, 80),
    );
    forward_in(
        &mut lab,
        &udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), b"q"),
        (LAN_HOST2, 53),
    );
    assert_eq!(
        events(&mut lab),
        vec![
            event((REMOTE, 5556), 8080, (LAN_HOST, 80), PROTO_TCP, 1),
            event((OTHER_REMOTE, 5555), 8080, (LAN_HOST, 80), PROTO_TCP, 1),
            event((REMOTE, 5555), 8053, (LAN_HOST2, 53), PROTO_UDP, 2),
        ],
        "events of three new conversations"
    );
    forward_in(
        &mut lab,
        &udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8053), b"q again"),
        (LAN_HOST2, 53),
    );
    assert_eq!(events(&mut lab), vec![], "events of known conversations");
    assert_counters(&lab, &[("connection_event_lost", 0), ("forwarded", 7)]);

    // The remote closes and opens a new connection from the same port: a
    // new connection, logged again.
    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), FIN | ACK, b""),
        (LAN_HOST, 80),
    );
    assert_eq!(events(&mut lab), vec![], "events after the FIN");
    forward_in(&mut lab, &syn, (LAN_HOST, 80));
    assert_eq!(
        events(&mut lab),
        vec![event((REMOTE, 5555), 8080, (LAN_HOST, 80), PROTO_TCP, 1)],
        "events of a new connection from a reused port"
    );
}

#[test]
fn event_carries_the_mapped_ports_of_a_range() {
    let mut lab = fresh_lab();
    lab.forward("tcp/9000-9001=192.168.0.13:7000-7001,name=range")
        .unwrap();
    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 1234), ep(WAN_ADDR, 9001), SYN, b""),
        (LAN_HOST2, 7001),
    );
    assert_eq!(
        events(&mut lab),
        vec![event((REMOTE, 1234), 9001, (LAN_HOST2, 7001), PROTO_TCP, 1)]
    );
}

#[test]
fn refused_remote_is_neither_reported_nor_recorded() {
    for unsolicited in [None, Some(UNSOLICITED_DROP)] {
        let mut lab = PacketLab::with_config(|c| {
            if let Some(u) = unsolicited {
                c.unsolicited = u;
            }
        })
        .unwrap();
        lab.forward("tcp/8080=192.168.0.12:80,allow=198.51.100.0/24")
            .unwrap();
        let syn = tcp(ep(OTHER_REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
        let v = lab.from_wan(&syn).unwrap();
        // A SYN is dropped unanswered, whatever `unsolicited` says (RFC
        // 5382 REQ-4).
        assert_eq!(v.action, XDP_DROP, "verdict on a refused remote");
        assert_eq!(events(&mut lab), vec![], "events of a refused remote");
        assert!(
            forward_sessions(&lab).is_empty(),
            "refused remote got a forward session: {:?}",
            forward_sessions(&lab)
        );
        assert!(dynamic_sessions(&lab).is_empty(), "dynamic sessions made");
        assert_rule_untouched(&lab, 1);
        assert_counters(&lab, &[("remote_not_allowed", 1), ("forwarded", 0)]);

        // The allowed remote still gets through, and is reported.
        let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
        forward_in(&mut lab, &syn, (LAN_HOST, 80));
        assert_eq!(
            events(&mut lab),
            vec![event((REMOTE, 5555), 8080, (LAN_HOST, 80), PROTO_TCP, 1)]
        );
    }
}

#[test]
fn conversation_the_server_opens_is_recorded_but_not_reported() {
    // session.rs: the server may open (a game server, a peer); the
    // conversation is added to FORWARD_SESSIONS but the log is about who
    // comes in, so no event, not even for the remote's answer.
    let mut lab = fresh_lab();
    lab.forward("udp/27015=192.168.0.12:27015").unwrap();
    let hello = udp(ep(LAN_HOST, 27015), ep(REMOTE, 4000), b"hello peer");
    forward_out(&mut lab, &hello, 27015);
    let k = key(REMOTE, 4000, 27015, PROTO_UDP);
    let (got_key, got) = only(forward_sessions(&lab), "FORWARD_SESSIONS");
    assert_eq!(got_key, k);
    assert_session(got, (LAN_HOST, 27015), 1, hello.len(), TCP_STATE_NONE);
    let answer = udp(ep(REMOTE, 4000), ep(WAN_ADDR, 27015), b"hello back");
    forward_in(&mut lab, &answer, (LAN_HOST, 27015));
    assert_session(
        forward_session(&lab, k),
        (LAN_HOST, 27015),
        2,
        hello.len() + answer.len(),
        TCP_STATE_NONE,
    );
    assert_eq!(events(&mut lab), vec![]);
    assert_rule(&lab, 1, cv(1, answer.len()), cv(1, hello.len()));
}

#[test]
fn forward_whose_server_is_not_routed_to_the_lan_is_not_reported() {
    // A rule pointing outside the LAN (ForwardRule::validate would refuse
    // it; the datapath must still not log what it does not let through).
    let mut lab = fresh_lab();
    lab.forward("tcp/8081=10.9.9.9:80").unwrap();
    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8081), SYN, b"");
    assert_passed_untouched(&lab.from_wan(&syn).unwrap(), &syn);
    assert_eq!(events(&mut lab), vec![]);
    assert!(forward_sessions(&lab).is_empty(), "forward session made");
    assert_rule_untouched(&lab, 1);
}

#[test]
fn a_full_ring_loses_events_but_not_packets() {
    // 256 KiB of ring holds 8192 records of 20 bytes (8-byte header,
    // rounded up to 32 bytes), or one less: the kernel refuses a record
    // that would fill the ring exactly. The rest are counted as lost.
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.13:53").unwrap();
    let capacity = nat_common::NEW_CONNECTIONS_BYTES as usize / 32;
    let sent = capacity + 10;
    for i in 0..sent {
        let remote = Ipv4Addr::new(198, 51, 100, 10 + (i / 60000) as u8);
        let port = 1024 + (i % 60000) as u16;
        let frame = udp(ep(remote, port), ep(WAN_ADDR, 8053), b"x");
        let v = lab.from_wan(&frame).unwrap();
        assert_eq!(v.action, XDP_REDIRECT, "verdict of conversation {i}");
    }
    let lost = counter(&lab, "connection_event_lost");
    let got = events(&mut lab);
    assert_eq!(got.len() as u64 + lost, sent as u64, "events + lost");
    assert!(
        (capacity - 1..=capacity).contains(&got.len()),
        "the ring held {} events, expected about {capacity}",
        got.len()
    );
    assert_eq!(
        got[0],
        event(
            (Ipv4Addr::new(198, 51, 100, 10), 1024),
            8053,
            (LAN_HOST2, 53),
            PROTO_UDP,
            1
        )
    );
    assert_eq!(counter(&lab, "forwarded"), sent as u64);
    // Once drained, the ring takes events again.
    let frame = udp(ep(REMOTE, 9), ep(WAN_ADDR, 8053), b"x");
    redirected(&lab.from_wan(&frame).unwrap());
    assert_eq!(
        events(&mut lab),
        vec![event((REMOTE, 9), 8053, (LAN_HOST2, 53), PROTO_UDP, 1)]
    );
    assert_eq!(counter(&lab, "connection_event_lost"), lost);
}

// ---------------------------------------------------------------------------
// 4. Per-rule counters.

#[test]
fn rule_counters_count_each_direction_of_their_rule_only() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80,name=web").unwrap(); // rule 1
    lab.forward("udp/8053=192.168.0.13:53,name=dns").unwrap(); // rule 2
    let server = (LAN_HOST, 80);

    let syn = tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b"");
    let request = tcp(
        ep(REMOTE, 5555),
        ep(WAN_ADDR, 8080),
        ACK | PSH,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let syn_ack = tcp(ep(LAN_HOST, 80), ep(REMOTE, 5555), SYN | ACK, b"");
    let response = tcp(ep(LAN_HOST, 80), ep(REMOTE, 5555), ACK | PSH, &[b'z'; 500]);
    forward_in(&mut lab, &syn, server);
    assert_rule(&lab, 1, cv(1, syn.len()), cv(0, 0));
    forward_out(&mut lab, &syn_ack, 8080);
    forward_in(&mut lab, &request, server);
    forward_out(&mut lab, &response, 8080);
    assert_rule(
        &lab,
        1,
        cv(2, syn.len() + request.len()),
        cv(2, syn_ack.len() + response.len()),
    );
    assert_rule_untouched(&lab, 2);

    // Dynamic traffic counts in no rule.
    let query = udp(ep(LAN_HOST, 40000), ep(REMOTE, 53), b"q");
    redirected(&lab.from_lan(&query).unwrap());
    redirected(
        &lab.from_wan(&udp(ep(REMOTE, 53), ep(WAN_ADDR, 40000), b"a"))
            .unwrap(),
    );
    // Nor does a packet for the other protocol on the rule's port.
    refused(&mut lab, &udp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), b"u"));
    for id in [0, 2, 3] {
        assert_rule_untouched(&lab, id);
    }
    assert_rule(
        &lab,
        1,
        cv(2, syn.len() + request.len()),
        cv(2, syn_ack.len() + response.len()),
    );

    // Now rule 2, alone.
    let q = udp(ep(REMOTE2, 7777), ep(WAN_ADDR, 8053), b"dns query");
    forward_in(&mut lab, &q, (LAN_HOST2, 53));
    assert_rule(&lab, 2, cv(1, q.len()), cv(0, 0));
    assert_rule(
        &lab,
        1,
        cv(2, syn.len() + request.len()),
        cv(2, syn_ack.len() + response.len()),
    );
}

#[test]
fn hairpin_to_a_forwarded_port_counts_inbound_for_its_rule() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap(); // rule 1
    lab.forward("tcp/9090=192.168.0.13:90").unwrap(); // rule 2
    let syn = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), SYN, b"");
    let v = lab.from_lan(&syn).unwrap();
    redirected(&v);
    let port = parse(&v.frame).src().port();
    assert_routed(
        &v,
        &syn,
        Egress::Lan(LAN_HOST),
        ep(WAN_ADDR, port),
        ep(LAN_HOST, 80),
    );
    assert_eq!(rule(&lab, 1).inbound, cv(1, syn.len()), "rule 1 inbound");
    let ack = tcp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8080), ACK, b"data");
    redirected(&lab.from_lan(&ack).unwrap());
    assert_eq!(
        rule(&lab, 1).inbound,
        cv(2, syn.len() + ack.len()),
        "rule 1 inbound"
    );
    assert_rule_untouched(&lab, 2);
    // The server's hairpinned reply counts as the rule's outbound traffic.
    let reply = tcp(ep(LAN_HOST, 80), ep(WAN_ADDR, port), SYN | ACK, b"");
    redirected(&lab.from_lan(&reply).unwrap());
    assert_eq!(
        rule(&lab, 1).outbound,
        cv(1, reply.len()),
        "rule 1 outbound"
    );
    assert_rule_untouched(&lab, 2);
    assert_counters(&lab, &[("hairpin", 3)]);
    // Hairpin through a rule is allowed whatever its allowed remotes.
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.12:53,allow=198.51.100.0/24")
        .unwrap();
    let q = udp(ep(LAN_HOST2, 45000), ep(WAN_ADDR, 8053), b"q");
    redirected(&lab.from_lan(&q).unwrap());
    assert_eq!(rule(&lab, 1).inbound, cv(1, q.len()), "rule 1 inbound");
    assert_counters(&lab, &[("hairpin", 1), ("remote_not_allowed", 0)]);
}

// ---------------------------------------------------------------------------
// 5. Several allowed prefixes.

#[test]
fn rule_with_several_allowed_prefixes() {
    for unsolicited in [None, Some(UNSOLICITED_DROP)] {
        let mut lab = PacketLab::with_config(|c| {
            if let Some(u) = unsolicited {
                c.unsolicited = u;
            }
        })
        .unwrap();
        lab.forward("tcp/8080=192.168.0.12:80,allow=198.51.100.0/24,allow=192.0.2.7/32,name=web")
            .unwrap();
        for remote in [IN_ALLOWED_NET, ALLOWED_HOST, REMOTE] {
            forward_in(
                &mut lab,
                &tcp(ep(remote, 5555), ep(WAN_ADDR, 8080), SYN, b""),
                (LAN_HOST, 80),
            );
        }
        for remote in [NEXT_TO_ALLOWED_HOST, STRANGER] {
            let syn = tcp(ep(remote, 5555), ep(WAN_ADDR, 8080), SYN, b"");
            let v = lab.from_wan(&syn).unwrap();
            // Dropped unanswered, whatever `unsolicited` says.
            assert_eq!(v.action, XDP_DROP, "verdict for {remote}");
        }
        let (pass, drop) = (0, 2);
        assert_counters(
            &lab,
            &[
                ("forwarded", 3),
                ("remote_not_allowed", 2),
                ("unsolicited_pass", pass),
                ("drop_unsolicited", drop),
            ],
        );
        let reported: Vec<Ipv4Addr> = events(&mut lab)
            .iter()
            .map(|e| Ipv4Addr::from(e.remote_addr))
            .collect();
        assert_eq!(reported, vec![IN_ALLOWED_NET, ALLOWED_HOST, REMOTE]);
        assert_eq!(forward_sessions(&lab).len(), 3, "forward sessions");
    }
}

#[test]
fn rule_without_allow_admits_anyone() {
    let mut lab = fresh_lab();
    lab.forward("tcp/8080=192.168.0.12:80").unwrap();
    for remote in [
        REMOTE,
        ALLOWED_HOST,
        NEXT_TO_ALLOWED_HOST,
        STRANGER,
        OTHER_REMOTE,
    ] {
        forward_in(
            &mut lab,
            &tcp(ep(remote, 5555), ep(WAN_ADDR, 8080), SYN, b""),
            (LAN_HOST, 80),
        );
    }
    assert_counters(&lab, &[("forwarded", 5), ("remote_not_allowed", 0)]);
}

#[test]
fn allowed_prefixes_of_two_rules_do_not_leak_into_each_other() {
    let mut lab = fresh_lab();
    // Rule 1 allows 198.51.100.0/24, rule 2 allows 192.0.2.7 only.
    lab.forward("tcp/8080=192.168.0.12:80,allow=198.51.100.0/24")
        .unwrap();
    lab.forward("tcp/9090=192.168.0.13:90,allow=192.0.2.7/32")
        .unwrap();
    // Rule 3 allows everyone and has ids on both sides of the others.
    lab.forward("udp/7070=192.168.0.13:70").unwrap();

    forward_in(
        &mut lab,
        &tcp(ep(REMOTE, 5555), ep(WAN_ADDR, 8080), SYN, b""),
        (LAN_HOST, 80),
    );
    forward_in(
        &mut lab,
        &tcp(ep(ALLOWED_HOST, 5555), ep(WAN_ADDR, 9090), SYN, b""),
        (LAN_HOST2, 90),
    );
    // Each rule's remote on the other rule's port.
    let cross = [
        tcp(ep(REMOTE, 5556), ep(WAN_ADDR, 9090), SYN, b""),
        tcp(ep(ALLOWED_HOST, 5556), ep(WAN_ADDR, 8080), SYN, b""),
        tcp(ep(IN_ALLOWED_NET, 5556), ep(WAN_ADDR, 9090), SYN, b""),
    ];
    for frame in &cross {
        refused(&mut lab, frame);
    }
    forward_in(
        &mut lab,
        &udp(ep(STRANGER, 5555), ep(WAN_ADDR, 7070), b"x"),
        (LAN_HOST2, 70),
    );
    assert_counters(&lab, &[("forwarded", 3), ("remote_not_allowed", 3)]);
    let reported: Vec<(Ipv4Addr, u32)> = events(&mut lab)
        .iter()
        .map(|e| (Ipv4Addr::from(e.remote_addr), e.rule_id))
        .collect();
    assert_eq!(
        reported,
        vec![(REMOTE, 1), (ALLOWED_HOST, 2), (STRANGER, 3)],
        "(remote, rule) of the events"
    );
    let a = rule(&lab, 1).inbound.packets;
    let b = rule(&lab, 2).inbound.packets;
    let c = rule(&lab, 3).inbound.packets;
    assert_eq!((a, b, c), (1, 1, 1), "inbound packets of rules 1, 2, 3");
}

#[test]
fn allowed_remotes_as_bare_addresses_and_loose_prefixes() {
    // `allow=` takes a bare address (a /32), and a prefix with host bits
    // set stands for its network.
    let mut lab = fresh_lab();
    lab.forward("udp/8053=192.168.0.13:53,allow=192.0.2.7,allow=198.51.100.77/30")
        .unwrap();
    for remote in [
        ALLOWED_HOST,
        Ipv4Addr::new(198, 51, 100, 76),
        Ipv4Addr::new(198, 51, 100, 79),
    ] {
        forward_in(
            &mut lab,
            &udp(ep(remote, 5555), ep(WAN_ADDR, 8053), b"x"),
            (LAN_HOST2, 53),
        );
    }
    for remote in [
        NEXT_TO_ALLOWED_HOST,
        Ipv4Addr::new(198, 51, 100, 75),
        Ipv4Addr::new(198, 51, 100, 80),
    ] {
        refused(&mut lab, &udp(ep(remote, 5555), ep(WAN_ADDR, 8053), b"x"));
    }
    assert_counters(&lab, &[("forwarded", 3), ("remote_not_allowed", 3)]);
    assert_eq!(events(&mut lab).len(), 3, "events");
}
