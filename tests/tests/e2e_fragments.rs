//! End to end through the real `natctl`: fragmented UDP both ways (in
//! order and reordered by netem), a TCP transfer over a WAN link with a
//! smaller MTU and hosts that do not set DF, and ICMP timestamp. Every lab
//! also checks that nothing left the WAN NIC with a LAN source.
use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
};

use anyhow::Result;
use nat_tests::{
    join,
    lab::{LAN_CLIENT, LAN_SERVER, Lab, ROUTER_WAN, WAN_HOST},
    netns::Netns,
    traffic::{
        IO_TIMEOUT, accept, connect, icmp_message, internet_checksum, pattern, raw_recv,
        raw_socket, uninterrupted,
    },
};

fn counter(lab: &Lab, label: &str) -> u64 {
    lab.counters().expect("natctl stats")[label]
}

fn udp(netns: &Netns, addr: std::net::Ipv4Addr, port: u16) -> UdpSocket {
    let socket = join(netns.spawn(move || Ok(UdpSocket::bind((addr, port))?)));
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket
}

/// Sends `len` bytes from `from` to `to` and checks that `at` receives
/// exactly them; returns the source `at` saw.
fn datagram(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, len: usize, seed: u64) -> SocketAddr {
    let data = pattern(len, seed);
    from.send_to(&data, to).unwrap();
    let mut buffer = vec![0u8; 65536];
    let (got, source) = uninterrupted(|| at.recv_from(&mut buffer)).unwrap();
    assert!(
        buffer[..got] == data[..],
        "{len}-byte datagram: {got} bytes, or different ones"
    );
    source
}

#[test]
fn fragmented_udp_both_ways_byte_for_byte() {
    let lab = Lab::start().unwrap();
    let wan = udp(&lab.wan, WAN_HOST, 9200);
    let lan = udp(&lab.lan, LAN_SERVER, 0);
    for (i, len) in [4096, 16384].into_iter().enumerate() {
        let seed = i as u64 * 10;
        // Out (the LAN host fragments it), and back to where it came from.
        let outside = datagram(&lan, (WAN_HOST, 9200).into(), &wan, len, seed + 1);
        assert_eq!(outside.ip(), ROUTER_WAN);
        let inside = datagram(&wan, outside, &lan, len, seed + 2);
        assert_eq!(inside, SocketAddr::from((WAN_HOST, 9200)));
    }
    // In through a forwarded port, and the server's answer out.
    lab.run("add big --proto udp --external 9300 --internal 192.168.0.12:9300");
    let server = udp(&lab.lan, LAN_SERVER, 9300);
    for len in [4096, 16384] {
        let client = datagram(&wan, (ROUTER_WAN, 9300).into(), &server, len, 7);
        assert_eq!(client, SocketAddr::from((WAN_HOST, 9200)));
        let seen = datagram(&server, client, &wan, len, 8);
        assert_eq!(seen, SocketAddr::from((ROUTER_WAN, 9300)));
    }
    // 4 KiB is 3 fragments at 1500, 16 KiB 12: 6 datagrams each way.
    assert!(
        counter(&lab, "frag_translated") >= 2 * (2 + 11) * 2,
        "{:?}",
        lab.counters()
    );
    assert!(counter(&lab, "frag_tracked") >= 8, "{:?}", lab.counters());
}

/// The fragments, each an IPv4 packet, of a UDP datagram from `src` to
/// `dst` carrying `data`, cut at 1480 data bytes (for a 1500 MTU), with IP
/// id `id`.
fn udp_fragments(src: SocketAddrV4, dst: SocketAddrV4, data: &[u8], id: u16) -> Vec<Vec<u8>> {
    let mut udp = Vec::with_capacity(8 + data.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(data);
    let mut pseudo = src.ip().octets().to_vec();
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let check = match internet_checksum(&pseudo) {
        0 => 0xffff,
        check => check,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    udp.chunks(1480)
        .enumerate()
        .map(|(i, piece)| {
            let more = (i + 1) * 1480 < udp.len();
            let frags = (i * 1480 / 8) as u16 | if more { 0x2000 } else { 0 };
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&id.to_be_bytes());
            ip.extend_from_slice(&frags.to_be_bytes());
            ip.extend_from_slice(&[64, 17, 0, 0]);
            ip.extend_from_slice(&src.ip().octets());
            ip.extend_from_slice(&dst.ip().octets());
            let check = internet_checksum(&ip);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            ip.extend_from_slice(piece);
            ip
        })
        .collect()
}

/// Sends `packets` (whole IPv4 packets, header included) as they are, in
/// that order, from `netns`.
fn send_raw(netns: &Netns, packets: Vec<Vec<u8>>) {
    join(netns.spawn(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        for packet in packets {
            let dst = std::net::Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            socket.send_to(&packet, &SocketAddr::from((dst, 0)).into())?;
        }
        Ok(())
    }));
}

#[test]
fn reordered_fragments_both_ways() {
    let lab = Lab::start().unwrap();
    let wan = udp(&lab.wan, WAN_HOST, 9201);
    let lan = udp(&lab.lan, LAN_SERVER, 0);
    let SocketAddr::V4(lan_addr) = lan.local_addr().unwrap() else {
        unreachable!()
    };
    // One exchange in order: the mapping, and the hosts as each other's
    // fragment peers.
    let outside = datagram(&lan, (WAN_HOST, 9201).into(), &wan, 16384, 1);
    datagram(&wan, outside, &lan, 16384, 2);
    let SocketAddr::V4(outside) = outside else {
        unreachable!()
    };
    let wan_addr = SocketAddrV4::new(WAN_HOST, 9201);
    let mut buffer = vec![0u8; 65536];
    // Crafted: each datagram's fragments sent last first, then middle,
    // first, rest. Out of the LAN, and in from the WAN host.
    for (round, (netns, src, dst, at)) in [
        (&lab.lan, lan_addr, wan_addr, &wan),
        (&lab.wan, wan_addr, outside, &lan),
    ]
    .into_iter()
    .enumerate()
    {
        for order in 0..2u16 {
            let data = pattern(16384, 200 + round as u64 * 10 + u64::from(order));
            let mut fragments = udp_fragments(src, dst, &data, 0x4000 + order);
            if order == 0 {
                fragments.reverse();
            } else {
                fragments.swap(0, 5);
                fragments.swap(1, 11);
            }
            send_raw(netns, fragments);
            let (len, from) = uninterrupted(|| at.recv_from(&mut buffer)).unwrap_or_else(|error| {
                panic!(
                    "round {round}, order {order}: {error}: {:?}",
                    lab.counters()
                )
            });
            assert!(
                buffer[..len] == data[..],
                "round {round}, order {order}: different bytes"
            );
            let expected = if round == 0 { ROUTER_WAN } else { WAN_HOST };
            assert_eq!(from.ip(), expected);
        }
    }
}

/// TC mode, the hosts' offloads on: the LAN host's TSO segments reach the
/// router as GSO packets, each one larger than the WAN MTU segment by
/// segment, passed translated whole (`pass_mtu_translated` counts it once)
/// for the kernel to segment and fragment.
#[test]
fn tcp_over_a_small_wan_mtu_with_df_clear_is_fragmented_translated() {
    let lab = Lab::start().unwrap();
    tcp_over_a_wan_mtu_of_1000(&lab);
    let bytes = counter_bytes(&lab, "pass_mtu_translated");
    assert!(
        bytes > TCP_LEN as u64,
        "{bytes} bytes: {:?}",
        lab.counters()
    );
}

/// XDP mode: every full segment is one packet too big for the WAN.
#[test]
fn tcp_over_a_small_wan_mtu_with_df_clear_is_fragmented_translated_in_xdp_mode() {
    let lab = Lab::start_xdp().unwrap();
    tcp_over_a_wan_mtu_of_1000(&lab);
    assert!(
        counter(&lab, "pass_mtu_translated") > 100,
        "{:?}",
        lab.counters()
    );
}

const TCP_LEN: usize = 2 << 20;

/// `natctl stats`' byte count of `label`.
fn counter_bytes(lab: &Lab, label: &str) -> u64 {
    let stats = lab.natctl(&["stats", "--json"]).expect("natctl stats");
    let json: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    json["counters"][label]["bytes"].as_u64().unwrap_or(0)
}

/// TCP both ways, 2 MiB each, with DF clear over a WAN MTU of 1000.
fn tcp_over_a_wan_mtu_of_1000(lab: &Lab) {
    // The WAN link carries 1000 bytes, the WAN host still offers an MSS
    // for 1500 (as one behind a tunnel would), and the LAN host does not
    // set DF: its full segments are too big for the WAN, and the router
    // must fragment them, translated.
    lab.router
        .ip(&["link", "set", "wan0", "mtu", "1000"])
        .unwrap();
    lab.wan.ip(&["link", "set", "eth0", "mtu", "1000"]).unwrap();
    lab.wan
        .ip(&[
            "route",
            "replace",
            "203.0.113.0/24",
            "dev",
            "eth0",
            "advmss",
            "1460",
        ])
        .unwrap();
    lab.lan.sysctl("net.ipv4.ip_no_pmtu_disc", "1").unwrap();
    let listener = join(lab.wan.spawn(|| Ok(TcpListener::bind((WAN_HOST, 9400))?)));
    const LEN: usize = TCP_LEN;
    let upload = pattern(LEN, 11);
    let download = pattern(LEN, 12);
    let server_download = download.clone();
    let server = std::thread::spawn(move || -> Result<(Vec<u8>, SocketAddr)> {
        let (mut stream, peer) = accept(&listener)?;
        let mut received = Vec::with_capacity(LEN);
        (&mut stream).take(LEN as u64).read_to_end(&mut received)?;
        stream.write_all(&server_download)?;
        Ok((received, peer))
    });
    let mut stream = join(lab.lan.spawn(|| connect((WAN_HOST, 9400).into())));
    stream.write_all(&upload).unwrap();
    let mut received = Vec::with_capacity(LEN);
    (&mut stream)
        .take(LEN as u64)
        .read_to_end(&mut received)
        .unwrap();
    let (server_received, peer) = join(server);
    assert!(server_received == upload, "upload corrupted or cut short");
    assert!(received == download, "download corrupted or cut short");
    assert_eq!(peer.ip(), ROUTER_WAN);
}

#[test]
fn icmp_timestamp_is_answered_through_the_nat() {
    let lab = Lab::start().unwrap();
    let (reply, from) = join(lab.lan.spawn(|| {
        let socket = raw_socket(libc::IPPROTO_ICMP, LAN_SERVER)?;
        let wan: SocketAddr = (WAN_HOST, 0).into();
        // Timestamp request, id 0x7777, seq 1, originate 1234.
        let mut body = 1234u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 8]);
        socket.send_to(&icmp_message(13, 0, [0x77, 0x77, 0, 1], &body), &wan.into())?;
        raw_recv(&socket, |datagram| {
            let icmp = &datagram[usize::from(datagram[0] & 0x0f) * 4..];
            icmp[0] == 14 && icmp[4..6] == [0x77, 0x77]
        })
    }));
    assert_eq!(from, WAN_HOST);
    let icmp = &reply[usize::from(reply[0] & 0x0f) * 4..];
    assert_eq!(icmp[8..12], 1234u32.to_be_bytes(), "originate timestamp");
    assert!(
        counter(&lab, "new_binding") >= 1 && counter(&lab, "dnat") >= 1,
        "{:?}",
        lab.counters()
    );
}

#[test]
fn df_set_and_too_big_gets_fragmentation_needed_back_at_the_lan_host() {
    let lab = Lab::start().unwrap();
    lab.router
        .ip(&["link", "set", "wan0", "mtu", "1400"])
        .unwrap();
    let mtu = join(lab.lan.spawn(|| {
        use std::os::fd::AsRawFd;
        let socket = UdpSocket::bind((LAN_SERVER, 0))?;
        socket.connect((WAN_HOST, 9500))?;
        let fd = socket.as_raw_fd();
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: a valid socket and option pointer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as u32,
            );
        }
        // A full-size datagram with DF: the router's kernel answers
        // "fragmentation needed" quoting it as sent, which only this
        // socket's kernel can match to the socket. Bounded retries.
        let mut mtu: libc::c_int = 0;
        for _ in 0..20 {
            let _ = socket.send(&pattern(1472, 5));
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut len = size_of::<libc::c_int>() as u32;
            // SAFETY: as above.
            unsafe {
                libc::getsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_MTU,
                    (&raw mut mtu).cast(),
                    &mut len,
                );
            }
            if mtu == 1400 {
                break;
            }
        }
        Ok(mtu)
    }));
    assert_eq!(mtu, 1400, "{:?}", lab.counters());
    assert!(counter(&lab, "pass_mtu_exceeded") >= 1);
}

#[test]
fn fragmented_pings_both_ways() {
    let lab = Lab::start().unwrap();
    // 4000 bytes of ICMP echo: three fragments each way, the id mapped by
    // the first, the rest by the fragment table.
    let output = lab
        .lan
        .exec(
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                "-s",
                "4000",
                "203.0.113.2",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("3 received"), "{text}");
    assert!(
        counter(&lab, "frag_translated") >= 12,
        "{:?}",
        lab.counters()
    );
}

/// Sends a UDP datagram of `len` bytes from `from` to `to` as crafted
/// fragments, the last first, and returns what it carried.
fn send_last_first(
    lab: &Lab,
    from: SocketAddrV4,
    to: SocketAddrV4,
    len: usize,
    id: u16,
) -> Vec<u8> {
    let data = pattern(len, u64::from(id));
    let mut fragments = udp_fragments(from, to, &data, id);
    fragments.reverse();
    send_raw(&lab.wan, fragments);
    data
}

/// Receives one datagram at `at` and checks it is `data` from `from`.
fn received_from(lab: &Lab, at: &UdpSocket, data: &[u8], from: SocketAddrV4) {
    let mut buffer = vec![0u8; 65536];
    let (got, source) = uninterrupted(|| at.recv_from(&mut buffer)).unwrap_or_else(|error| {
        panic!(
            "{}-byte datagram: {error}: {:?}\n{}",
            data.len(),
            lab.counters(),
            lab.natctl_log()
        )
    });
    assert!(
        buffer[..got] == data[..],
        "{}-byte datagram: {got} bytes, or different ones",
        data.len()
    );
    assert_eq!(source, SocketAddr::from(from));
}

fn relay_figure(lab: &Lab, figure: &str) -> u64 {
    lab.status().expect("natctl status")["relay"][figure]
        .as_u64()
        .unwrap_or_else(|| panic!("no relay figure {figure}"))
}

/// A datagram from outside whose last fragment comes first, when that
/// remote has exchanged no fragmented datagram with a LAN host (so there is
/// no fragment peer to name): the router's kernel reassembles it, and the
/// relay sends it on to the mapping's (or the rule's) LAN host, from the
/// remote's own address and port.
/// The remote (a WAN host socket on `port`), a LAN host's socket with a
/// mapping toward it, and that mapping's outside endpoint. Both LAN hosts
/// exchange a fragmented datagram with the remote in order first: two
/// fragment peers, so that an early fragment names nobody.
fn two_peers_of(lab: &Lab, port: u16) -> (UdpSocket, UdpSocket, SocketAddrV4) {
    let wan = udp(&lab.wan, WAN_HOST, port);
    let lan = udp(&lab.lan, LAN_SERVER, 0);
    let other = udp(&lab.lan, LAN_CLIENT, 0);
    let remote = SocketAddr::from((WAN_HOST, port));
    let mut outside = Vec::new();
    for (seed, host) in [(1, &lan), (3, &other)] {
        let seen = datagram(host, remote, &wan, 3000, seed);
        assert_eq!(datagram(&wan, seen, host, 3000, seed + 1), remote);
        let SocketAddr::V4(seen) = seen else {
            unreachable!()
        };
        outside.push(seen);
    }
    (wan, lan, outside[0])
}

fn last_fragment_first_reaches_the_lan_host(lab: &Lab) {
    let (wan, lan, outside) = two_peers_of(lab, 9202);
    let remote = SocketAddrV4::new(WAN_HOST, 9202);
    for (id, len) in [(0x5000, 4096), (0x5001, 16384)] {
        let data = send_last_first(lab, remote, outside, len, id);
        received_from(lab, &lan, &data, remote);
    }
    // The LAN host's answer goes out by the mapping, as ever.
    let seen = datagram(&lan, remote.into(), &wan, 100, 5);
    assert_eq!(seen, SocketAddr::V4(outside));

    // In through a forwarded port.
    lab.run("add reordered --proto udp --external 9302 --internal 192.168.0.12:9302");
    let server = udp(&lab.lan, LAN_SERVER, 9302);
    for (id, len) in [(0x5100, 4096), (0x5101, 16384)] {
        let data = send_last_first(lab, remote, SocketAddrV4::new(ROUTER_WAN, 9302), len, id);
        received_from(lab, &server, &data, remote);
    }
    let counters = lab.counters().unwrap();
    assert_eq!(counters["pass_frag_reassembly"], 4, "{counters:?}");
    assert_eq!(counters["relay_steered"], 4, "{counters:?}");
    assert_eq!(counters["drop_relay_down"], 0, "{counters:?}");
    assert_eq!(relay_figure(lab, "relayed"), 4);
    assert_eq!(
        relay_figure(lab, "relayed_bytes"),
        2 * (4096 + 16384) as u64
    );
}

#[test]
fn last_fragment_first_reaches_the_lan_host_through_the_relay() {
    last_fragment_first_reaches_the_lan_host(&Lab::start().unwrap());
}

#[test]
fn last_fragment_first_reaches_the_lan_host_through_the_relay_in_xdp_mode() {
    last_fragment_first_reaches_the_lan_host(&Lab::start_xdp().unwrap());
}

/// A LAN host's datagram to a forwarded port through the WAN address
/// (hairpin), its last fragment first: the router's kernel reassembles
/// it, and the relay sends it on to the server from the WAN address and
/// the client's mapping, as the fast path would; the server's answer
/// comes back by that mapping.
#[test]
fn a_hairpinned_datagram_last_fragment_first_reaches_the_server_through_the_relay() {
    let lab = Lab::start().unwrap();
    lab.run("add hairpin-reordered --proto udp --external 9303 --internal 192.168.0.12:9303");
    let server = udp(&lab.lan, LAN_SERVER, 9303);
    let client = udp(&lab.lan, LAN_CLIENT, 9304);
    let mut buffer = vec![0u8; 65536];
    let mut sources = Vec::new();
    for (id, len) in [(0x5400u16, 4096), (0x5401, 16384)] {
        let data = pattern(len, u64::from(id));
        let mut fragments = udp_fragments(
            SocketAddrV4::new(LAN_CLIENT, 9304),
            SocketAddrV4::new(ROUTER_WAN, 9303),
            &data,
            id,
        );
        fragments.reverse();
        send_raw(&lab.lan, fragments);
        let (got, source) =
            uninterrupted(|| server.recv_from(&mut buffer)).unwrap_or_else(|error| {
                panic!(
                    "{len}-byte datagram: {error}: {:?}\n{}",
                    lab.counters(),
                    lab.natctl_log()
                )
            });
        assert!(
            buffer[..got] == data[..],
            "{len}-byte datagram: {got} bytes, or different ones"
        );
        assert_eq!(source.ip(), ROUTER_WAN);
        sources.push(source);
    }
    assert_eq!(sources[0], sources[1], "one mapping for the client");
    let seen = datagram(&server, sources[0], &client, 100, 9);
    assert_eq!(seen, SocketAddr::from((ROUTER_WAN, 9303)));
    let counters = lab.counters().unwrap();
    assert_eq!(counters["pass_frag_reassembly"], 2, "{counters:?}");
    assert_eq!(counters["relay_steered"], 2, "{counters:?}");
    assert_eq!(relay_figure(&lab, "relayed"), 2);
}

/// The slow path judges the datagram as the fast path does, by its first
/// fragment: from a remote the mapping's filter does not let in, it is
/// dropped and counted, whatever order its fragments come in.
#[test]
fn last_fragment_first_from_a_filtered_remote_is_dropped() {
    let lab = Lab::start_with_config("[nat]\nunsolicited = \"drop\"\n").unwrap();
    let wan = udp(&lab.wan, WAN_HOST, 9203);
    let lan = udp(&lab.lan, LAN_SERVER, 0);
    let outside = datagram(&lan, (WAN_HOST, 9203).into(), &wan, 16, 1);
    let SocketAddr::V4(outside) = outside else {
        unreachable!()
    };
    // Address-and-port-dependent filtering (the default): another port
    // of the same remote is refused.
    let stranger = SocketAddrV4::new(WAN_HOST, 9204);
    let before = counter(&lab, "drop_unsolicited");
    send_last_first(&lab, stranger, outside, 4096, 0x5200);
    // Then the mapping's own remote, so that the wait below ends on
    // something that does arrive.
    let remote = SocketAddrV4::new(WAN_HOST, 9203);
    let data = send_last_first(&lab, remote, outside, 4096, 0x5201);
    received_from(&lab, &lan, &data, remote);
    let counters = lab.counters().unwrap();
    assert_eq!(counters["drop_unsolicited"], before + 1, "{counters:?}");
    assert_eq!(counters["pass_frag_reassembly"], 1, "{counters:?}");
    assert_eq!(relay_figure(&lab, "relayed"), 1);
}

/// Between two daemons the pinned `nat_relay_lookup` drops such a
/// datagram (`drop_relay_down`: its port is a mapping's, the router's
/// stack has nothing for it); a daemon that picks the datapath up relays
/// again.
#[test]
fn the_relay_picks_up_after_a_daemon_restart() {
    let mut lab = Lab::start().unwrap();
    let (_wan, lan, outside) = two_peers_of(&lab, 9205);
    let remote = SocketAddrV4::new(WAN_HOST, 9205);
    lab.kill_daemon().unwrap();
    send_last_first(&lab, remote, outside, 4096, 0x5300);
    lab.start_daemon().unwrap();
    // The datagram sent while no daemon ran never arrives: the first to
    // come is the one sent now.
    let data = send_last_first(&lab, remote, outside, 16384, 0x5301);
    received_from(&lab, &lan, &data, remote);
    let counters = lab.counters().unwrap();
    assert_eq!(counters["drop_relay_down"], 1, "{counters:?}");
    assert_eq!(counters["relay_steered"], 1, "{counters:?}");
    assert_eq!(relay_figure(&lab, "relayed"), 1);
}

/// On `netns`'s `dev`, every datagram's first fragment (MF set, offset 0)
/// is held back behind the rest of its datagram: a class of its own,
/// slowed to a few hundred fragments a second (this kernel has no netem),
/// so that a burst's first fragments queue while their later fragments
/// leave at once.
fn first_fragments_last(netns: &Netns, dev: &str) {
    let tc = |args: &[&str]| {
        let mut full = vec!["tc"];
        full.extend_from_slice(args);
        netns.exec(full[0], &full[1..]).unwrap();
    };
    tc(&[
        "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
    ]);
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit",
    ]);
    tc(&[
        "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", "3mbit",
        "burst", "2k", "cburst", "2k",
    ]);
    tc(&[
        "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match",
        "u16", "0x2000", "0x3fff", "at", "6", "flowid", "1:20",
    ]);
}

/// A host beyond the WAN host, which routes for it.
const FAR_HOST: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 2);
const FAR_GATEWAY: &str = "198.51.100.1";

/// A host one hop beyond the WAN host, on a 1500-byte link, that does not
/// set DF: its full TCP segments are fragmented by the WAN host onto the
/// WAN link (MTU 1000), each one's first fragment last. The router's own
/// route to it is the test's (the lab has none beyond the WAN link).
fn far_host_behind_a_small_mtu(lab: &Lab) -> Netns {
    let far = Netns::new("far").unwrap();
    lab.wan.veth("far0", &far, "eth0").unwrap();
    lab.wan
        .ip(&["addr", "add", &format!("{FAR_GATEWAY}/24"), "dev", "far0"])
        .unwrap();
    lab.wan.sysctl("net.ipv4.ip_forward", "1").unwrap();
    lab.wan.ip(&["link", "set", "eth0", "mtu", "1000"]).unwrap();
    lab.router
        .ip(&["link", "set", "wan0", "mtu", "1000"])
        .unwrap();
    far.ip(&["addr", "add", &format!("{FAR_HOST}/24"), "dev", "eth0"])
        .unwrap();
    far.ip(&["route", "add", "default", "via", FAR_GATEWAY])
        .unwrap();
    far.sysctl("net.ipv4.ip_no_pmtu_disc", "1").unwrap();
    lab.router
        .ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &WAN_HOST.to_string(),
        ])
        .unwrap();
    first_fragments_last(&lab.wan, "eth0");
    far
}

const REORDERED_TCP_LEN: usize = 256 << 10;

/// TCP from outside whose segments arrive last fragment first, to two LAN
/// hosts at once (so that neither is the remote's one fragment peer and
/// no early fragment names a host): a download over a dynamic mapping and
/// an upload to a forwarded port, each compared byte for byte. The
/// router's kernel reassembles each segment, its sink keeps the router's
/// TCP from answering (an RST would end the connection), and the relay
/// sends it on from the remote's address and port.
fn reordered_tcp_reaches_the_lan_hosts(lab: &Lab) {
    let far = far_host_behind_a_small_mtu(lab);
    lab.run("add reordered-tcp --proto tcp --external 9410 --internal 192.168.0.12:9410");
    let download = pattern(REORDERED_TCP_LEN, 31);
    let upload = pattern(REORDERED_TCP_LEN, 32);
    let far_listener = join(far.spawn(|| Ok(TcpListener::bind((FAR_HOST, 9411))?)));
    let lan_listener = join(lab.lan.spawn(|| Ok(TcpListener::bind((LAN_SERVER, 9410))?)));

    let sent = download.clone();
    let far_server = std::thread::spawn(move || -> Result<SocketAddr> {
        let (mut stream, peer) = accept(&far_listener)?;
        stream.write_all(&sent)?;
        Ok(peer)
    });
    let lan_server = std::thread::spawn(move || -> Result<(Vec<u8>, SocketAddr)> {
        let (mut stream, peer) = accept(&lan_listener)?;
        let mut received = Vec::with_capacity(REORDERED_TCP_LEN);
        (&mut stream)
            .take(REORDERED_TCP_LEN as u64)
            .read_to_end(&mut received)?;
        Ok((received, peer))
    });
    let sending = upload.clone();
    let far_client = far.spawn(move || {
        let mut stream = connect((ROUTER_WAN, 9410).into())?;
        stream.write_all(&sending)?;
        // Until the server has it all: a close before then would be
        // data the server may never see acknowledged.
        let mut end = [0u8; 1];
        let _ = stream.read(&mut end);
        Ok(())
    });
    let mut stream = join(
        lab.lan
            .spawn(|| nat_tests::traffic::connect_from(LAN_CLIENT, (FAR_HOST, 9411).into())),
    );
    let mut received = Vec::with_capacity(REORDERED_TCP_LEN);
    let read = (&mut stream)
        .take(REORDERED_TCP_LEN as u64)
        .read_to_end(&mut received);
    let (uploaded, client) = join(lan_server);
    join(far_client);
    let peer = join(far_server);
    read.unwrap_or_else(|error| {
        panic!(
            "download: {error}: {:?} {}",
            lab.counters(),
            lab.status().unwrap()["relay"]
        )
    });
    assert!(received == download, "download corrupted or cut short");
    assert!(uploaded == upload, "upload corrupted or cut short");
    assert_eq!(peer.ip(), ROUTER_WAN);
    assert_eq!(client.ip(), FAR_HOST);
    // The relay's figure first: the kernel counts a steered segment before
    // the relay can have sent it, so a late retransmission between the two
    // reads cannot make the relayed outnumber the steered.
    let relayed = relay_figure(lab, "relayed_tcp");
    let counters = lab.counters().unwrap();
    // 256 KiB is some 180 full segments each way.
    assert!(relayed >= 50, "{relayed} relayed: {counters:?}");
    assert!(
        counters["relay_steered"] >= relayed,
        "{relayed} relayed: {counters:?} {}",
        lab.status().unwrap()["relay"]
    );
    assert_eq!(counters["drop_relay_down"], 0, "{counters:?}");
    assert_eq!(relay_figure(lab, "dropped_malformed"), 0);
    drop(far);
}

#[test]
fn reordered_tcp_fragments_reach_the_lan_hosts_through_the_relay() {
    reordered_tcp_reaches_the_lan_hosts(&Lab::start().unwrap());
}

#[test]
fn reordered_tcp_fragments_reach_the_lan_hosts_through_the_relay_in_xdp_mode() {
    reordered_tcp_reaches_the_lan_hosts(&Lab::start_xdp().unwrap());
}

/// Large pings from both LAN hosts at once (neither the WAN host's one
/// fragment peer), each echo reply arriving last fragment first: the
/// router's kernel reassembles it, its ICMP ignores it (no ping of its
/// own), and the relay sends it to the host whose query mapping it
/// answers, with that host's id.
#[test]
fn reordered_echo_replies_reach_the_lan_hosts_through_the_relay() {
    reordered_echo_replies_reach_the_lan_hosts(&Lab::start().unwrap());
}

#[test]
fn reordered_echo_replies_reach_the_lan_hosts_through_the_relay_in_xdp_mode() {
    reordered_echo_replies_reach_the_lan_hosts(&Lab::start_xdp().unwrap());
}

fn reordered_echo_replies_reach_the_lan_hosts(lab: &Lab) {
    lab.router
        .ip(&["link", "set", "wan0", "mtu", "1000"])
        .unwrap();
    lab.wan.ip(&["link", "set", "eth0", "mtu", "1000"]).unwrap();
    first_fragments_last(&lab.wan, "eth0");
    // Queries a millisecond apart, from both hosts at once: their
    // replies' first fragments queue behind each other on the WAN host.
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let pings: Vec<_> = [LAN_SERVER, LAN_CLIENT]
            .map(|from| {
                let mut ping = lab.lan.command("ping");
                ping.args([
                    "-c",
                    "20",
                    "-i",
                    "0.001",
                    "-W",
                    "3",
                    "-s",
                    "3000",
                    "-I",
                    &from.to_string(),
                    "203.0.113.2",
                ]);
                scope.spawn(move || (from, ping.output()))
            })
            .into_iter()
            .collect();
        pings.into_iter().map(|ping| ping.join().unwrap()).collect()
    });
    for (from, output) in outputs {
        let text = String::from_utf8_lossy(&output.expect("running ping").stdout).into_owned();
        assert!(
            text.contains(" 20 received"),
            "from {from}: {text}\n{:?}\n{}",
            lab.counters(),
            lab.status().unwrap()["relay"]
        );
    }
    let relayed = relay_figure(lab, "relayed_icmp");
    assert!(relayed >= 10, "{relayed} relayed: {:?}", lab.counters());
    assert_eq!(relay_figure(lab, "dropped_malformed"), 0);
}
