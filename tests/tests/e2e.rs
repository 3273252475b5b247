//! End-to-end: real TCP, UDP and ping between namespaces through the router,
//! with the real `natctl` binary running the datapath and no nftables NAT on
//! the router, so only the datapath can translate. The labs run
//! `--attach auto` with the hosts' veth offloads at their defaults (TC mode);
//! `tcp_transfer_through_the_nat_keeps_every_byte` shows XDP mode.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use anyhow::Result;
use nat_tests::{
    join,
    lab::{LAN_CLIENT, LAN_SERVER, Lab, LabMode, ROUTER_LAN, ROUTER_WAN, WAN_HOST},
    traffic::{IO_TIMEOUT, accept, connect, connect_from, pattern, uninterrupted},
};

fn counter(lab: &Lab, label: &str) -> u64 {
    lab.counters().expect("natctl stats")[label]
}

/// Sends `LEN` bytes each way between a LAN host and the WAN host over one
/// TCP connection and checks them byte for byte, and that the WAN host saw
/// the WAN address.
fn tcp_transfer_both_ways(lab: &Lab) {
    let listener = join(lab.wan.spawn(|| Ok(TcpListener::bind((WAN_HOST, 9000))?)));
    let upload = pattern(LEN, 1);
    let download = pattern(LEN, 2);

    let server_download = download.clone();
    let server = std::thread::spawn(move || -> Result<(Vec<u8>, SocketAddr)> {
        let (mut stream, peer) = accept(&listener)?;
        let mut received = Vec::with_capacity(LEN);
        (&mut stream).take(LEN as u64).read_to_end(&mut received)?;
        stream.write_all(&server_download)?;
        Ok((received, peer))
    });
    let mut stream = join(lab.lan.spawn(move || connect((WAN_HOST, 9000).into())));
    stream.write_all(&upload).unwrap();
    let mut received = Vec::with_capacity(LEN);
    (&mut stream)
        .take(LEN as u64)
        .read_to_end(&mut received)
        .unwrap();
    let (server_received, peer) = join(server);

    assert!(server_received == upload, "upload corrupted or cut short");
    assert!(received == download, "download corrupted or cut short");
    assert_eq!(
        peer.ip(),
        ROUTER_WAN,
        "the WAN host must see the WAN address"
    );
}

const LEN: usize = 6 << 20;

/// The hosts' veths as they come: TX checksum offload and TSO on, so the
/// router gets CHECKSUM_PARTIAL and GSO packets; `auto` attaches TC.
#[test]
fn tcp_transfer_with_offloads_on_takes_the_tc_path() {
    let mut lab = Lab::start().unwrap();
    for host in [&lab.lan, &lab.wan] {
        let features = host.exec("ethtool", &["-k", "eth0"]).unwrap();
        let features = String::from_utf8_lossy(&features.stdout).into_owned();
        for on in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
            assert!(features.contains(on), "{on} expected:\n{features}");
        }
    }
    let status = lab.status().unwrap();
    for nic in ["lan", "wan"] {
        assert_eq!(status["attach"][nic]["mode"], "tc", "{status:#}");
        let reason = status["attach"][nic]["reason"].as_str().unwrap();
        assert!(reason.contains("veth"), "{reason}");
    }
    let log = lab.natctl_log();
    assert!(
        log.contains("LAN lan0: TC (sched_cls ingress) mode"),
        "{log}"
    );
    assert!(
        log.contains("WAN wan0: TC (sched_cls ingress) mode"),
        "{log}"
    );

    tcp_transfer_both_ways(&lab);

    // Every byte of both directions took the fast path (GSO packets count
    // once each, so packets are fewer than segments; bytes are not).
    let bytes = lab.counter_bytes().unwrap();
    let packets = lab.counters().unwrap();
    for verdict in ["snat", "dnat"] {
        assert!(bytes[verdict] as usize > LEN, "{bytes:?}");
        // Larger than any frame on a 1500-byte MTU on average: GSO packets
        // crossed the router whole.
        let average = bytes[verdict] / packets[verdict].max(1);
        assert!(average > 1514, "{verdict}: {bytes:?} {packets:?}");
    }
    assert_eq!(lab.tc_ingress_programs("lan0").unwrap(), ["nat_lan_tc"]);
    assert_eq!(lab.tc_ingress_programs("wan0").unwrap(), ["nat_wan_tc"]);
    // A restarted daemon picks the TC links up from their pins.
    lab.stop().unwrap();
    assert_eq!(lab.tc_ingress_programs("lan0").unwrap(), ["nat_lan_tc"]);
    lab.start_daemon().unwrap();
    let status = lab.status().unwrap();
    assert_eq!(status["picked_up_pinned_datapath"], true, "{status:#}");
    for nic in ["lan", "wan"] {
        assert_eq!(status["attach"][nic]["mode"], "tc", "{status:#}");
    }
    let output = lab.down().unwrap();
    assert!(output.contains("datapath detached"), "{output}");
    for dev in ["lan0", "wan0"] {
        let attached = lab.tc_ingress_programs(dev).unwrap();
        assert_eq!(attached, Vec::<String>::new(), "{dev} still attached");
    }
}

/// XDP mode: the hosts' TX checksum offload is off (XDP cannot keep a
/// partial checksum right, see `Lab::start_xdp`), as on physical NICs.
#[test]
fn tcp_transfer_through_the_nat_keeps_every_byte() {
    let mut lab = Lab::start_xdp().unwrap();
    let status = lab.status().unwrap();
    for nic in ["lan", "wan"] {
        assert_eq!(status["attach"][nic]["mode"], "xdp", "{status:#}");
    }
    let ruleset = lab.router.exec("nft", &["list", "ruleset"]).unwrap();
    assert!(
        ruleset.stdout.is_empty(),
        "the router must have no nftables rules"
    );

    tcp_transfer_both_ways(&lab);

    // Thousands of segments each way: they must have taken the XDP path.
    assert!(counter(&lab, "snat") > 1000, "{:?}", lab.counters());
    assert!(counter(&lab, "dnat") > 1000, "{:?}", lab.counters());
    let table = lab.table().unwrap();
    assert!(
        table.iter().any(|entry| entry["type"] == "DYNAMIC"
            && entry["protocol"] == "TCP"
            && entry["remote_port"] == 9000
            && entry["local_ip"] == "192.168.0.12"),
        "{table:#?}"
    );
    let output = lab.down().unwrap();
    assert!(output.contains("datapath detached"), "{output}");
}

#[test]
fn udp_both_ways_and_icmp_errors_come_back_translated() {
    let lab = Lab::start().unwrap();
    let wan_socket = join(lab.wan.spawn(|| Ok(UdpSocket::bind((WAN_HOST, 9001))?)));
    wan_socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let lan_socket = join(lab.lan.spawn(|| {
        let socket = UdpSocket::bind((LAN_SERVER, 0))?;
        socket.connect((WAN_HOST, 9001))?;
        Ok(socket)
    }));
    lan_socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    lan_socket.send(b"ping over udp").unwrap();
    let mut buffer = [0u8; 64];
    let (len, from) = uninterrupted(|| wan_socket.recv_from(&mut buffer)).unwrap();
    assert_eq!(&buffer[..len], b"ping over udp");
    assert_eq!(from.ip(), ROUTER_WAN);
    wan_socket.send_to(b"pong over udp", from).unwrap();
    let len = uninterrupted(|| lan_socket.recv(&mut buffer)).unwrap();
    assert_eq!(&buffer[..len], b"pong over udp");

    // A closed port on the WAN host answers with ICMP port unreachable,
    // quoting our translated packet; only if the datapath translates it
    // back does the LAN socket learn of it (ECONNREFUSED).
    lan_socket.connect((WAN_HOST, 9)).unwrap();
    let refused = (0..10).any(|_| {
        let _ = lan_socket.send(b"anyone?");
        matches!(lan_socket.recv(&mut buffer), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
    });
    assert!(refused, "port unreachable never reached the LAN host");
    assert!(counter(&lab, "icmp_error_in") >= 1, "{:?}", lab.counters());
}

#[test]
fn ping_works_and_ttl_expiry_is_reported_by_the_router() {
    let lab = Lab::start().unwrap();
    lab.lan
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "203.0.113.2"])
        .unwrap();
    assert!(counter(&lab, "dnat") >= 2, "{:?}", lab.counters());

    // TTL 1: the router must not forward it, and the kernel it is handed
    // to answers "time to live exceeded" from the router's LAN address.
    let output = lab
        .lan
        .command("ping")
        .args(["-c", "1", "-t", "1", "-W", "2", "203.0.113.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Time to live exceeded") && text.contains(&ROUTER_LAN.to_string()),
        "{text}"
    );
    assert!(counter(&lab, "pass_ttl_expired") >= 1);
}

#[test]
fn forwarding_entry_reaches_the_lan_server_and_nothing_else_gets_in() {
    let lab = Lab::start().unwrap();
    lab.natctl(&[
        "add",
        "web",
        "--proto",
        "tcp",
        "--external",
        "8080",
        "--internal",
        "192.168.0.12:8000",
    ])
    .unwrap();
    let web = join(lab.lan.spawn(|| Ok(TcpListener::bind((LAN_SERVER, 8000))?)));
    let other = join(lab.lan.spawn(|| Ok(TcpListener::bind((LAN_SERVER, 7000))?)));

    // From the WAN, through the forwarding entry.
    let client = lab.wan.spawn(|| {
        let mut stream = connect((ROUTER_WAN, 8080).into())?;
        stream.write_all(b"GET /")?;
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply)?;
        Ok(reply)
    });
    let (mut stream, peer) = accept(&web).unwrap();
    assert_eq!(peer.ip(), WAN_HOST, "the server sees the real client");
    let mut request = [0u8; 5];
    stream.read_exact(&mut request).unwrap();
    assert_eq!(&request, b"GET /");
    stream.write_all(b"hello").unwrap();
    assert_eq!(&join(client), b"hello");
    assert!(counter(&lab, "forwarded") >= 3, "{:?}", lab.counters());

    // Unsolicited: no entry for port 7000, so the LAN server there is
    // unreachable; nothing on the router listens there either, so the SYN
    // is dropped unanswered (RFC 5382 REQ-4) rather than reset.
    let attempt = join(lab.wan.spawn(|| {
        let addr = SocketAddr::from((ROUTER_WAN, 7000));
        Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_err())
    }));
    assert!(attempt, "a connection to an unforwarded port must fail");
    other.set_nonblocking(true).unwrap();
    assert!(
        matches!(other.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "an unsolicited connection reached the LAN"
    );
    assert!(
        counter(&lab, "drop_unsolicited") >= 1,
        "{:?}",
        lab.counters()
    );

    // Hairpin: a LAN host reaching the WAN address on the forwarded port.
    let client = lab
        .lan
        .spawn(|| connect_from(LAN_CLIENT, (ROUTER_WAN, 8080).into()));
    let (mut stream, peer) = accept(&web).unwrap();
    let mut hairpin_client = join(client);
    assert_eq!(
        peer.ip(),
        ROUTER_WAN,
        "hairpinned traffic comes from the WAN address"
    );
    hairpin_client.write_all(b"loop!").unwrap();
    stream.read_exact(&mut request).unwrap();
    assert_eq!(&request, b"loop!");
    stream.write_all(b"back!").unwrap();
    let mut reply = [0u8; 5];
    hairpin_client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"back!");
    assert!(counter(&lab, "hairpin") >= 3, "{:?}", lab.counters());

    let table = lab.table().unwrap();
    assert!(
        table.iter().any(|entry| entry["type"] == "STATIC"
            && entry["external_port"] == "8080"
            && entry["local_ip"] == "192.168.0.12"
            && entry["local_port"] == "8000"
            && entry["rule"] == "web"),
        "{table:#?}"
    );
}

/// RFC 5508 REQ-8 end to end: with every dynamic port held, a LAN host's
/// new flow is answered with ICMP "communication administratively
/// prohibited", which the host's kernel reports on the connected socket as
/// EHOSTUNREACH at once, instead of a silent loss. The flows holding the
/// ports go on.
fn a_flow_that_gets_no_port_is_refused(lab: &Lab) {
    const PORTS: std::ops::RangeInclusive<u16> = 40000..=40015;
    let wan_socket = join(lab.wan.spawn(|| Ok(UdpSocket::bind((WAN_HOST, 9001))?)));
    wan_socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // A socket on each port of the range keeps its own port: all held.
    let holders = join(lab.lan.spawn(|| {
        PORTS
            .map(|port| {
                let socket = UdpSocket::bind((LAN_SERVER, port))?;
                socket.connect((WAN_HOST, 9001))?;
                socket.send(b"holding")?;
                Ok(socket)
            })
            .collect::<Result<Vec<_>>>()
    }));
    let mut buffer = [0u8; 64];
    for _ in PORTS {
        let (_, from) = uninterrupted(|| wan_socket.recv_from(&mut buffer)).unwrap();
        assert!(PORTS.contains(&from.port()), "{from}");
    }
    let one_too_many = join(lab.lan.spawn(|| {
        let socket = UdpSocket::bind((LAN_SERVER, 50000))?;
        socket.connect((WAN_HOST, 9001))?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.send(b"one too many")?;
        Ok(uninterrupted(|| socket.recv(&mut [0u8; 64])).map_err(|error| error.kind()))
    }));
    assert_eq!(one_too_many, Err(ErrorKind::HostUnreachable));
    assert!(
        counter(lab, "icmp_prohibited_sent") >= 1 && counter(lab, "drop_port_exhausted") >= 1,
        "{:?}",
        lab.counters()
    );
    // The flows that hold the ports still work.
    wan_socket
        .send_to(b"still yours", (ROUTER_WAN, *PORTS.start()))
        .unwrap();
    holders[0].set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let len = uninterrupted(|| holders[0].recv(&mut buffer)).unwrap();
    assert_eq!(&buffer[..len], b"still yours");
}

const SIXTEEN_PORTS: &str = "[nat]\nports = \"40000-40015\"\n";

#[test]
fn a_flow_that_gets_no_port_is_refused_with_host_unreachable() {
    let lab = Lab::start_in(LabMode::Xdp, SIXTEEN_PORTS).unwrap();
    a_flow_that_gets_no_port_is_refused(&lab);
}

/// The same in TC mode, the host's offloads on: its datagram reaches the
/// router as CHECKSUM_PARTIAL, and the error built in its place keeps that
/// state. With the router's LAN NIC's TX checksum offload off, the kernel
/// does the pending sum in software on the way out, into the quote; the
/// host, which then checks the ICMP checksum, takes the error only if that
/// sum left it unchanged.
#[test]
fn tc_a_flow_that_gets_no_port_is_refused_with_host_unreachable_through_a_partial_checksum() {
    let lab = Lab::start_with_config(SIXTEEN_PORTS).unwrap();
    lab.router
        .exec("ethtool", &["-K", "lan0", "tx", "off"])
        .unwrap();
    a_flow_that_gets_no_port_is_refused(&lab);
}

/// The datapath's route epoch (`NatConfig::route_epoch`), read from its pin.
fn route_epoch(lab: &Lab) -> u32 {
    let data = aya::maps::MapData::from_pin(lab.pin_dir().join(nat_common::maps::CONFIG))
        .expect("the pinned CONFIG map");
    let config: aya::maps::Array<_, nat_common::NatConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("CONFIG as an array");
    config.get(&0, 0).expect("CONFIG's entry").route_epoch
}

/// The daemon hears of every change that may move a route the datapath
/// cached (rtnetlink's route, neighbour, link and address reports) and
/// moves the route epoch on, so that no CPU keeps a stale route; traffic
/// goes on through it.
#[test]
fn the_daemon_moves_the_route_epoch_on_when_a_neighbour_or_a_route_changes() {
    let lab = Lab::start().unwrap();
    let changes: [(&str, &[&str]); 4] = [
        (
            "a neighbour",
            &[
                "neigh",
                "replace",
                "203.0.113.77",
                "lladdr",
                "02:00:00:00:01:77",
                "dev",
                "wan0",
                "nud",
                "permanent",
            ],
        ),
        (
            "a route",
            &["route", "add", "198.18.0.0/15", "via", "203.0.113.2"],
        ),
        ("a link", &["link", "set", "lan0", "mtu", "1400"]),
        ("the link back", &["link", "set", "lan0", "mtu", "1500"]),
    ];
    for (what, change) in changes {
        let before = route_epoch(&lab);
        lab.router.ip(change).unwrap();
        nat_tests::wait_for(
            &format!("the route epoch to move on after {what} changed"),
            Duration::from_secs(10),
            || (route_epoch(&lab) != before).then_some(()),
        )
        .unwrap();
    }
    tcp_transfer_both_ways(&lab);
}
