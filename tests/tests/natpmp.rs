//! End-to-end tests of the NAT-PMP (RFC 6886) and PCP (RFC 6887) server
//! `natctl daemon` runs on the LAN: the real `natpmpc` (libnatpmp) for the
//! address, mapping and deleting; a libtorrent session (python3-libtorrent)
//! with UPnP off getting its mapping by NAT-PMP/PCP; raw PCP for what no
//! packaged client does (MAP with options, THIRD_PARTY, the header's
//! address check). In each case a WAN host connects through the mapping.
//! PEER reports the datapath's dynamic mapping of a flow.
//! Also: lifetime expiry, secure mode between two LAN hosts, nothing
//! answering from the WAN side, the announcement after a WAN address
//! change, and a mapping that survives a daemon restart.
//!
//! Every test has a lab of its own; all traffic stays inside its
//! namespaces, every sending loop is bounded in count and time.
use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::Result;
use nat_tests::{
    join,
    lab::{LAN_CLIENT, LAN_SERVER, Lab, ROUTER_LAN, ROUTER_WAN, WAN_HOST},
    netns::Netns,
    wait_for,
};
use serde_json::Value;

const SERVICE_UP: &str = "NAT-PMP/PCP on lan0 (192.168.0.1:5351)";
const NATPMPC_TIMEOUT_SECS: &str = "20";

fn lab_with(extra: &str) -> Lab {
    let lab = Lab::start_with_config(&format!("[natpmp]\nmax_lifetime = 3600\n{extra}"))
        .expect("starting the lab");
    wait_log(&lab, SERVICE_UP, 1);
    lab
}

fn wait_log(lab: &Lab, needle: &str, count: usize) {
    wait_for(needle, Duration::from_secs(15), || {
        (lab.natctl_log().matches(needle).count() >= count).then_some(())
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
}

/// `natpmpc -g 192.168.0.1 ARGS` in the LAN host's namespace.
fn natpmpc(lab: &Lab, args: &[&str]) -> (bool, String) {
    let output: Output = lab
        .lan
        .command("timeout")
        .args([NATPMPC_TIMEOUT_SECS, "natpmpc", "-g", "192.168.0.1"])
        .args(args)
        .output()
        .expect("running natpmpc (is it installed? `cargo xtask setup`)");
    let text = format!(
        "`natpmpc {}`: {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn natpmpc_ok(lab: &Lab, args: &[&str]) -> String {
    let (ok, text) = natpmpc(lab, args);
    assert!(ok, "{text}\n{}", lab.natctl_log());
    text
}

fn rule<'a>(rules: &'a [Value], name: &str) -> Option<&'a Value> {
    rules.iter().find(|rule| rule["name"] == name)
}

fn tcp_listener(netns: &Netns, addr: Ipv4Addr, port: u16) -> TcpListener {
    join(netns.spawn(move || Ok(TcpListener::bind((addr, port))?)))
}

fn wan_connects(lab: &Lab, port: u16) -> bool {
    join(lab.wan.spawn(move || {
        Ok(TcpStream::connect_timeout(
            &SocketAddr::from((ROUTER_WAN, port)),
            Duration::from_secs(3),
        )
        .is_ok())
    }))
}

/// Sends `request` from `local` in `netns` to `to` up to three times, one
/// second apart, and returns the first answer.
fn exchange(netns: &Netns, local: Ipv4Addr, to: SocketAddr, request: Vec<u8>) -> Option<Vec<u8>> {
    join(netns.spawn(move || {
        let socket = UdpSocket::bind((local, 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buffer = [0u8; 1200];
        for _ in 0..3 {
            socket.send_to(&request, to)?;
            if let Ok((len, _)) = socket.recv_from(&mut buffer) {
                return Ok(Some(buffer[..len].to_vec()));
            }
        }
        Ok(None)
    }))
}

fn mapped(addr: Ipv4Addr) -> [u8; 16] {
    addr.to_ipv6_mapped().octets()
}

/// A PCP MAP request (RFC 6887 figures 2 and 9), built by hand.
fn pcp_map(
    client: Ipv4Addr,
    nonce: u8,
    internal: u16,
    suggested: u16,
    lifetime: u32,
    options: &[u8],
) -> Vec<u8> {
    let mut out = vec![2, 1, 0, 0];
    out.extend_from_slice(&lifetime.to_be_bytes());
    out.extend_from_slice(&mapped(client));
    out.extend_from_slice(&[nonce; 12]);
    out.extend_from_slice(&[6, 0, 0, 0]);
    out.extend_from_slice(&internal.to_be_bytes());
    out.extend_from_slice(&suggested.to_be_bytes());
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(options);
    out
}

/// (result code, lifetime, assigned external port, assigned address).
fn pcp_map_answer(answer: &[u8]) -> (u8, u32, u16, Ipv4Addr) {
    assert!(answer.len() >= 60, "short PCP answer {answer:?}");
    assert_eq!(&answer[..2], &[2, 0x81], "{answer:?}");
    (
        answer[3],
        u32::from_be_bytes(answer[4..8].try_into().unwrap()),
        u16::from_be_bytes([answer[42], answer[43]]),
        Ipv4Addr::new(answer[56], answer[57], answer[58], answer[59]),
    )
}

fn server() -> SocketAddr {
    SocketAddr::from((ROUTER_LAN, 5351))
}

// ---------------------------------------------------------------------------

#[test]
fn natpmpc_gets_the_address_maps_connects_and_deletes() {
    let lab = lab_with("");
    let text = natpmpc_ok(&lab, &[]);
    assert!(text.contains("Public IP address : 203.0.113.1"), "{text}");

    let listener = tcp_listener(&lab.lan, LAN_SERVER, 6881);
    let text = natpmpc_ok(&lab, &["-a", "7000", "6881", "tcp", "600"]);
    assert!(
        text.contains("Mapped public port 7000 protocol TCP to local port 6881"),
        "{text}"
    );
    let rules = lab.rules();
    let mapping = rule(&rules, "natpmp-tcp-7000").unwrap_or_else(|| panic!("{rules:#?}"));
    assert_eq!(mapping["internal_addr"], LAN_SERVER.to_string());
    assert_eq!(mapping["upnp"]["origin"], "natpmp");
    let table = lab.table_filtered(&["--type", "natpmp"]).unwrap();
    assert!(
        table
            .iter()
            .any(|row| row["external_port"].to_string().contains("7000") && row["type"] == "NATPMP"),
        "{table:#?}"
    );
    let peer = lab.wan_tcp_reaches(7000, &listener);
    assert_eq!(peer.ip(), std::net::IpAddr::V4(WAN_HOST));

    // The same request again renews the same mapping.
    natpmpc_ok(&lab, &["-a", "7000", "6881", "tcp", "600"]);
    assert_eq!(lab.rules().len(), 1);

    // Delete (lifetime 0): gone from the rules and from the datapath.
    natpmpc_ok(&lab, &["-a", "7000", "6881", "tcp", "0"]);
    assert!(lab.rules().is_empty(), "{:#?}", lab.rules());
    assert!(
        !wan_connects(&lab, 7000),
        "the deleted mapping still forwards"
    );

    // A UDP mapping, then "all of mine" (private port 0, lifetime 0).
    natpmpc_ok(&lab, &["-a", "7001", "7001", "udp", "600"]);
    natpmpc_ok(&lab, &["-a", "7002", "7002", "udp", "600"]);
    assert_eq!(lab.rules().len(), 2);
    natpmpc_ok(&lab, &["-a", "0", "0", "udp", "0"]);
    assert!(lab.rules().is_empty(), "{:#?}", lab.rules());
}

#[test]
fn a_mapping_expires_with_its_lifetime_and_natctl_remove_removes_one() {
    let lab = lab_with("");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 6900);
    natpmpc_ok(&lab, &["-a", "6900", "6900", "tcp", "3"]);
    lab.wan_tcp_reaches(6900, &listener);
    let started = Instant::now();
    wait_for("the lease to expire", Duration::from_secs(10), || {
        lab.rules().is_empty().then_some(())
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
    // Within a second of its lifetime (3 s from the mapping).
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        lab.natctl_log()
            .contains("NAT-PMP lease expired: removed natpmp-tcp-6900")
    );
    assert!(
        !wan_connects(&lab, 6900),
        "the expired mapping still forwards"
    );

    natpmpc_ok(&lab, &["-a", "6901", "6901", "tcp", "600"]);
    lab.run("remove natpmp-tcp-6901");
    assert!(lab.rules().is_empty());
}

#[test]
fn pcp_map_with_a_filter_connects_survives_a_restart_and_deletes() {
    let mut lab = lab_with("");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 6881);
    // FILTER: only the WAN host's /24 may come in.
    let mut filter = vec![3, 0, 0, 20, 0, 96 + 24, 0, 0];
    filter.extend_from_slice(&mapped(WAN_HOST));
    let request = pcp_map(LAN_SERVER, 5, 6881, 7100, 7200, &filter);
    let answer = exchange(&lab.lan, LAN_SERVER, server(), request.clone()).expect("a PCP answer");
    let (result, lifetime, port, addr) = pcp_map_answer(&answer);
    assert_eq!((result, lifetime, port, addr), (0, 3600, 7100, ROUTER_WAN));
    let rules = lab.rules();
    let mapping = rule(&rules, "pcp-tcp-7100").unwrap_or_else(|| panic!("{rules:#?}"));
    assert_eq!(mapping["allow"], serde_json::json!(["203.0.113.0/24"]));
    lab.wan_tcp_reaches(7100, &listener);

    // Let the epoch grow, so that its restart shows.
    let epoch = || {
        let answer = exchange(&lab.lan, LAN_SERVER, server(), vec![0, 0]).expect("an answer");
        u32::from_be_bytes(answer[4..8].try_into().unwrap())
    };
    let epoch_before = wait_for("the epoch to reach 3 s", Duration::from_secs(8), || {
        let seconds = epoch();
        (seconds >= 3).then_some(seconds)
    })
    .unwrap();
    // Saved, and restored with its remaining lifetime.
    lab.stop().unwrap();
    lab.start_daemon().unwrap();
    wait_log(&lab, SERVICE_UP, 2);
    let rules = lab.rules();
    let restored = rule(&rules, "pcp-tcp-7100").unwrap_or_else(|| panic!("{rules:#?}"));
    assert_eq!(restored["upnp"]["origin"], "pcp");
    lab.wan_tcp_reaches(7100, &listener);
    // The epoch began again: clients learn to re-map. The same client's
    // refresh (same nonce) gets its mapping back.
    let answer = exchange(&lab.lan, LAN_SERVER, server(), request).expect("a PCP answer");
    let (result, _, port, _) = pcp_map_answer(&answer);
    assert_eq!((result, port), (0, 7100));
    let epoch_after = u32::from_be_bytes(answer[8..12].try_into().unwrap());
    assert!(
        epoch_after < epoch_before,
        "epoch {epoch_before} -> {epoch_after}"
    );

    // Another nonce may not delete it; the right one does.
    let other = pcp_map(LAN_SERVER, 6, 6881, 0, 0, &[]);
    let answer = exchange(&lab.lan, LAN_SERVER, server(), other).expect("a PCP answer");
    assert_eq!(pcp_map_answer(&answer).0, 2, "NOT_AUTHORIZED");
    let delete = pcp_map(LAN_SERVER, 5, 6881, 0, 0, &[]);
    let answer = exchange(&lab.lan, LAN_SERVER, server(), delete).expect("a PCP answer");
    assert_eq!(pcp_map_answer(&answer).0, 0);
    assert!(lab.rules().is_empty(), "{:#?}", lab.rules());
    assert!(
        !wan_connects(&lab, 7100),
        "the deleted mapping still forwards"
    );
}

#[test]
fn another_lan_host_cannot_map_to_the_first_one() {
    let lab = lab_with("");
    // THIRD_PARTY in secure mode: NOT_AUTHORIZED.
    let mut third = vec![1, 0, 0, 16];
    third.extend_from_slice(&mapped(LAN_SERVER));
    let request = pcp_map(LAN_CLIENT, 1, 6881, 6881, 600, &third);
    let answer = exchange(&lab.lan, LAN_CLIENT, server(), request).expect("a PCP answer");
    assert_eq!(pcp_map_answer(&answer).0, 2, "NOT_AUTHORIZED: {answer:?}");
    // Claiming to be the first host in the header: ADDRESS_MISMATCH.
    let request = pcp_map(LAN_SERVER, 1, 6881, 6881, 600, &[]);
    let answer = exchange(&lab.lan, LAN_CLIENT, server(), request).expect("a PCP answer");
    assert_eq!(
        pcp_map_answer(&answer).0,
        12,
        "ADDRESS_MISMATCH: {answer:?}"
    );
    assert!(lab.rules().is_empty(), "{:#?}", lab.rules());

    // The first host's port is not given to the second, by either protocol.
    natpmpc_ok(&lab, &["-a", "7200", "6881", "tcp", "600"]);
    let prefer_failure = [2, 0, 0, 0];
    let request = pcp_map(LAN_CLIENT, 1, 6881, 7200, 600, &prefer_failure);
    let answer = exchange(&lab.lan, LAN_CLIENT, server(), request).expect("a PCP answer");
    assert_eq!(pcp_map_answer(&answer).0, 11, "CANNOT_PROVIDE_EXTERNAL");
    let mut pmp = vec![0, 2, 0, 0];
    pmp.extend_from_slice(&6881u16.to_be_bytes());
    pmp.extend_from_slice(&7200u16.to_be_bytes());
    pmp.extend_from_slice(&600u32.to_be_bytes());
    let answer = exchange(&lab.lan, LAN_CLIENT, server(), pmp).expect("a NAT-PMP answer");
    assert_eq!(&answer[..4], &[0, 130, 0, 0]);
    let port = u16::from_be_bytes([answer[10], answer[11]]);
    assert_ne!(port, 7200, "the second host got the first one's port");
    let rules = lab.rules();
    let first = rule(&rules, "natpmp-tcp-7200").unwrap();
    assert_eq!(first["internal_addr"], LAN_SERVER.to_string());
    let second = rule(&rules, &format!("natpmp-tcp-{port}")).unwrap();
    assert_eq!(second["internal_addr"], LAN_CLIENT.to_string());
}

#[test]
fn a_wan_host_gets_nothing() {
    let lab = lab_with("");
    // The probe works from the LAN.
    let answer = exchange(&lab.lan, LAN_SERVER, server(), vec![0, 0]);
    assert_eq!(
        answer.as_deref().map(|a| &a[..4]),
        Some(&[0u8, 128, 0, 0][..])
    );
    // From the WAN: to the WAN address, and to the LAN address routed via
    // the router.
    lab.wan
        .ip(&["route", "add", "192.168.0.1/32", "via", "203.0.113.1"])
        .unwrap();
    let wan_rx = || lab.counters().expect("natctl stats")["wan_rx"];
    for to in [ROUTER_WAN, ROUTER_LAN] {
        for request in [vec![0u8, 0], pcp_map(WAN_HOST, 1, 6881, 6881, 600, &[])] {
            let before = wan_rx();
            let answer = exchange(&lab.wan, WAN_HOST, SocketAddr::from((to, 5351)), request);
            assert_eq!(answer, None, "the WAN host got an answer from {to}");
            // The probe did reach the router: three tries came in on wan0.
            let arrived = wan_rx() - before;
            assert!(arrived >= 3, "only {arrived} frames to {to} reached wan0");
        }
    }
    assert!(lab.rules().is_empty());
}

#[test]
fn the_public_address_is_announced_on_the_lan_after_it_changes() {
    let lab = lab_with("");
    let listener = join(lab.lan.spawn(|| {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5350)).into())?;
        let _ = socket.join_multicast_v4(&Ipv4Addr::new(224, 0, 0, 1), &LAN_SERVER);
        let socket: UdpSocket = socket.into();
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(socket)
    }));
    let new_wan = "203.0.113.7";
    // Deleted first: deleting a primary address takes the secondaries of
    // its subnet with it.
    lab.router
        .ip(&["addr", "del", "203.0.113.1/24", "dev", "wan0"])
        .unwrap();
    lab.router
        .ip(&["addr", "add", &format!("{new_wan}/24"), "dev", "wan0"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = (false, false);
    let mut buffer = [0u8; 64];
    while Instant::now() < deadline && !(seen.0 && seen.1) {
        let Ok((len, from)) = listener.recv_from(&mut buffer) else {
            continue;
        };
        assert_eq!(from, SocketAddr::from((ROUTER_LAN, 5351)));
        match &buffer[..len] {
            [0, 128, 0, 0, _, _, _, _, 203, 0, 113, 7] => seen.0 = true,
            [2, 0x80, 0, 0, rest @ ..] if rest.len() == 20 => seen.1 = true,
            _ => {}
        }
    }
    assert!(
        seen.0,
        "no NAT-PMP announcement of {new_wan}: {}",
        lab.natctl_log()
    );
    assert!(seen.1, "no PCP ANNOUNCE: {}", lab.natctl_log());
}

#[test]
fn natctl_natpmp_off_closes_the_service_and_its_mappings() {
    let lab = lab_with("");
    natpmpc_ok(&lab, &["-a", "7300", "7300", "udp", "600"]);
    assert_eq!(lab.rules().len(), 1);
    let text = lab.run("natpmp off");
    assert!(text.contains("removed 1 mapping"), "{text}");
    assert!(lab.rules().is_empty());
    wait_log(&lab, "NAT-PMP/PCP on lan0: stopped", 1);
    assert_eq!(exchange(&lab.lan, LAN_SERVER, server(), vec![0, 0]), None);
    lab.run("natpmp on");
    wait_log(&lab, SERVICE_UP, 2);
    assert!(exchange(&lab.lan, LAN_SERVER, server(), vec![0, 0]).is_some());
}

const LIBTORRENT_SCRIPT: &str = r#"
import sys, time
import libtorrent as lt
s = lt.session({
    'listen_interfaces': '192.168.0.12:6881',
    'enable_upnp': False,
    'enable_natpmp': True,
    'enable_lsd': False,
    'enable_dht': False,
    'alert_mask': lt.alert.category_t.port_mapping_notification | lt.alert.category_t.error_notification,
})
deadline = time.time() + 30
while time.time() < deadline:
    s.wait_for_alert(500)
    for a in s.pop_alerts():
        print(type(a).__name__, a.message(), flush=True)
        if isinstance(a, lt.portmap_alert):
            print('MAPPED', a.external_port, flush=True)
sys.stdout.flush()
"#;

#[test]
fn libtorrent_with_upnp_off_gets_its_port_mapping() {
    let lab = lab_with("[upnp]\nenabled = false\n");
    let mut child = lab
        .lan
        .command("timeout")
        .args(["40", "/usr/bin/python3", "-c", LIBTORRENT_SCRIPT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running /usr/bin/python3 (python3-libtorrent: `cargo xtask setup`)");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut port = None;
    while Instant::now() < deadline && port.is_none() {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        if let Some(mapped) = line.strip_prefix("MAPPED ") {
            port = mapped.trim().parse::<u16>().ok();
        }
        seen.push(line);
    }
    let Some(port) = port else {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        panic!(
            "no portmap alert: {seen:#?}\nstderr: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            lab.natctl_log()
        );
    };
    // libtorrent (2.0) speaks PCP first (it maps pcp-tcp-6881 and
    // pcp-udp-6881 here) and NAT-PMP when PCP is refused: either
    // makes a mapping of its own type.
    let rules = lab.rules();
    assert!(
        rules.iter().any(|rule| ["natpmp", "pcp"]
            .iter()
            .any(|kind| rule["name"] == format!("{kind}-tcp-{port}"))),
        "{rules:#?}"
    );
    let names: Vec<&str> = rules
        .iter()
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    eprintln!("libtorrent's mappings: {names:?}");
    // The WAN host reaches libtorrent's listener through the mapping.
    let connected = wan_connects(&lab, port);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        connected,
        "the WAN host could not connect to port {port}: {seen:#?}"
    );
}

/// A PCP PEER request (RFC 6887 figure 10) for UDP.
fn pcp_peer(client: Ipv4Addr, internal: u16, remote: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(remote) = remote else {
        panic!("IPv4 only")
    };
    let mut out = pcp_map(client, 9, internal, 0, 600, &[]);
    out[1] = 2;
    out[36] = 17;
    out.extend_from_slice(&remote.port().to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&mapped(*remote.ip()));
    out
}

#[test]
fn pcp_peer_reports_the_dynamic_mapping_of_a_flow() {
    let lab = lab_with("");
    let remote = SocketAddr::from((WAN_HOST, 9999));
    // Before any traffic there is no mapping to report.
    let answer = exchange(
        &lab.lan,
        LAN_SERVER,
        server(),
        pcp_peer(LAN_SERVER, 5400, remote),
    )
    .expect("a PCP answer");
    assert_eq!(&answer[..2], &[2, 0x82]);
    assert_eq!(answer[3], 11, "CANNOT_PROVIDE_EXTERNAL: {answer:?}");

    // A flow out: the WAN host sees its external port.
    let wan = join(lab.wan.spawn(move || {
        let socket = UdpSocket::bind(remote)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(socket)
    }));
    let lan = join(lab.lan.spawn(|| Ok(UdpSocket::bind((LAN_SERVER, 5400))?)));
    let mut buffer = [0u8; 16];
    let mut seen = None;
    for _ in 0..5 {
        lan.send_to(b"out", remote).unwrap();
        if let Ok((_, from)) = wan.recv_from(&mut buffer) {
            seen = Some(from);
            break;
        }
    }
    let seen = seen.expect("the LAN host's datagram reached the WAN host");
    assert_eq!(seen.ip(), std::net::IpAddr::V4(ROUTER_WAN));

    let answer = exchange(
        &lab.lan,
        LAN_SERVER,
        server(),
        pcp_peer(LAN_SERVER, 5400, remote),
    )
    .expect("a PCP answer");
    assert_eq!(answer.len(), 80, "{answer:?}");
    assert_eq!(answer[3], 0, "SUCCESS: {answer:?}");
    assert_eq!(u16::from_be_bytes([answer[42], answer[43]]), seen.port());
    assert_eq!(&answer[56..60], &ROUTER_WAN.octets());
    // PEER made no rule: the mapping is the datapath's.
    assert!(lab.rules().is_empty());
}

/// Under address-and-port-dependent mapping ("symmetric") each remote gets
/// a mapping of its own: the first keeps the host's port, the second gets
/// another. PCP PEER reports the mapping toward the remote it names. A
/// NAT-PMP mapping for the port the host holds (toward its first remote)
/// adopts that mapping: the first remote sees the same port before and
/// after. The mapping toward the second remote is another mapping, for one
/// remote only, on another port: a rule (for all remotes) cannot adopt it
/// without re-porting the first one's flows, so it keeps its own port, and
/// a new remote gets the rule's.
#[test]
fn under_symmetric_mapping_peer_finds_each_remotes_mapping_and_natpmp_adopts_the_held_port() {
    let lab = lab_with("[nat]\nmapping = \"address-and-port-dependent\"\n");
    let remotes = [9996, 9997, 9998].map(|port| SocketAddr::from((WAN_HOST, port)));
    let wan = join(lab.wan.spawn(move || {
        remotes
            .iter()
            .map(|remote| {
                let socket = UdpSocket::bind(remote)?;
                socket.set_read_timeout(Some(Duration::from_secs(1)))?;
                Ok(socket)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    }));
    let lan = join(lab.lan.spawn(|| Ok(UdpSocket::bind((LAN_SERVER, 5400))?)));
    // The external port remote `i` sees the LAN socket's datagrams from.
    let seen_by = |i: usize| -> u16 {
        let mut buffer = [0u8; 16];
        for _ in 0..5 {
            lan.send_to(b"out", remotes[i]).unwrap();
            if let Ok((_, from)) = wan[i].recv_from(&mut buffer) {
                assert_eq!(from.ip(), std::net::IpAddr::V4(ROUTER_WAN));
                return from.port();
            }
        }
        panic!("the LAN host's datagrams never reached {}", remotes[i]);
    };
    assert_eq!(seen_by(0), 5400, "the first mapping keeps the host's port");
    let second = seen_by(1);
    assert_ne!(second, 5400, "a mapping of its own for the second remote");

    for (remote, port) in [(remotes[0], 5400), (remotes[1], second)] {
        let answer = exchange(
            &lab.lan,
            LAN_SERVER,
            server(),
            pcp_peer(LAN_SERVER, 5400, remote),
        )
        .expect("a PCP answer");
        assert_eq!(answer[3], 0, "SUCCESS for {remote}: {answer:?}");
        assert_eq!(
            u16::from_be_bytes([answer[42], answer[43]]),
            port,
            "{remote}"
        );
    }

    let text = natpmpc_ok(&lab, &["-a", "5400", "5400", "udp", "600"]);
    assert!(
        text.contains("Mapped public port 5400 protocol UDP to local port 5400"),
        "{text}"
    );
    assert_eq!(seen_by(0), 5400, "the adopted mapping's remote");
    assert_eq!(
        seen_by(1),
        second,
        "the other remote's flow is not re-ported"
    );
    assert_eq!(seen_by(2), 5400, "a new remote: the rule's port");
}

/// The router's own ports (issue 12, item 7): NAT-PMP asked for a port the
/// router listens on gets another one; PCP with PREFER_FAILURE gets
/// CANNOT_PROVIDE_EXTERNAL (11); the router's listener keeps its
/// connections from the WAN.
#[test]
fn the_routers_own_listener_port_is_never_given_to_a_client() {
    let lab = lab_with("");
    let router_ssh = tcp_listener(&lab.router, Ipv4Addr::UNSPECIFIED, 2200);
    let text = natpmpc_ok(&lab, &["-a", "2200", "6881", "tcp", "600"]);
    let rules = lab.rules();
    assert_eq!(rules.len(), 1, "{rules:#?}\n{text}");
    let name = rules[0]["name"].as_str().unwrap();
    assert_ne!(name, "natpmp-tcp-2200", "{text}");
    assert!(!text.contains("Mapped public port 2200 "), "{text}");
    // PCP, PREFER_FAILURE (option 2, no data): refused outright.
    let answer = exchange(
        &lab.lan,
        LAN_SERVER,
        server(),
        pcp_map(LAN_SERVER, 9, 6882, 2200, 600, &[2, 0, 0, 0]),
    )
    .expect("a PCP answer");
    let (result, _, _, _) = pcp_map_answer(&answer);
    assert_eq!(result, 11, "CANNOT_PROVIDE_EXTERNAL: {answer:?}");
    assert_eq!(lab.rules().len(), 1, "{:#?}", lab.rules());
    assert_eq!(
        lab.wan_tcp_reaches(2200, &router_ssh).ip(),
        std::net::IpAddr::V4(WAN_HOST)
    );
}
