//! End to end: what the fast path cannot translate as it stands (IP
//! fragments, oversize datagrams, other IP protocols, ICMP queries other
//! than echo, ICMP errors about nothing translated) must still never leave
//! the WAN NIC with a LAN source address. The lab's WAN capture checks it.
use std::{net::UdpSocket, os::fd::AsRawFd, time::Duration};

use nat_tests::{
    join,
    lab::{LAN_SERVER, Lab, ROUTER_WAN, WAN_HOST},
    traffic::{icmp_message, pattern, raw_recv, raw_socket},
};

/// Lets datagrams larger than the path MTU leave without DF (the kernel
/// fragments them) instead of with DF set.
fn no_df(socket: &impl AsRawFd) {
    let value: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: a valid socket and option pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER");
}

/// In the default lab: TC mode, the hosts' offloads on.
#[test]
fn what_the_fast_path_cannot_translate_never_leaves_with_a_lan_source() {
    nothing_leaves_with_a_lan_source(Lab::start().unwrap());
}

#[test]
fn what_the_fast_path_cannot_translate_never_leaves_with_a_lan_source_in_xdp_mode() {
    nothing_leaves_with_a_lan_source(Lab::start_xdp().unwrap());
}

fn nothing_leaves_with_a_lan_source(mut lab: Lab) {
    // A smaller WAN MTU, so that a full-size LAN datagram is oversize.
    lab.router
        .ip(&["link", "set", "wan0", "mtu", "1400"])
        .unwrap();
    let sink = join(lab.wan.spawn(|| Ok(UdpSocket::bind((WAN_HOST, 9100))?)));
    join(lab.lan.spawn(|| {
        let socket = UdpSocket::bind((LAN_SERVER, 0))?;
        no_df(&socket);
        // Fragmented by the LAN host (its MTU is 1500).
        socket.send_to(&pattern(4000, 3), (WAN_HOST, 9100))?;
        // One datagram that fits the LAN but not the WAN, DF clear.
        socket.send_to(&pattern(1472, 4), (WAN_HOST, 9100))?;
        let to = |proto| raw_socket(proto, LAN_SERVER);
        let wan: std::net::SocketAddr = (WAN_HOST, 0).into();
        // GRE and ESP (translated by address).
        to(47)?.send_to(&[0, 0, 0x08, 0, 0x45, 0, 0, 20], &wan.into())?;
        to(50)?.send_to(&[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb], &wan.into())?;
        let icmp = to(libc::IPPROTO_ICMP)?;
        // An ICMP timestamp request, an echo reply nobody asked for, and
        // a port unreachable about a datagram that never came through.
        icmp.send_to(&icmp_message(13, 0, [0, 7, 0, 1], &[0; 12]), &wan.into())?;
        icmp.send_to(&icmp_message(0, 0, [0, 9, 0, 1], b"pong"), &wan.into())?;
        let mut quote = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        quote.extend_from_slice(&WAN_HOST.octets());
        quote.extend_from_slice(&LAN_SERVER.octets());
        // A well-formed quote (a bad IP checksum is dropped for that
        // reason first: drop_icmp_bad_quoted_checksum).
        let check = nat_tests::traffic::internet_checksum(&quote);
        quote[10..12].copy_from_slice(&check.to_be_bytes());
        quote.extend_from_slice(&[0, 53, 0x9c, 0x40, 0, 8, 0, 0]);
        icmp.send_to(&icmp_message(3, 3, [0; 4], &quote), &wan.into())?;
        // An unknown ICMP type.
        icmp.send_to(&icmp_message(42, 0, [0; 4], b"?"), &wan.into())?;
        Ok(())
    }));
    // Let the last of it cross the router before the capture is read.
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buffer = vec![0u8; 8192];
    while sink.recv_from(&mut buffer).is_ok() {}
    let frames = lab
        .check_no_lan_leak()
        .unwrap_or_else(|error| panic!("{error:#}\n{:?}", lab.counters()));
    assert!(frames > 0, "the capture saw nothing");
    // Each by its named reason.
    let counters = lab.counters().unwrap();
    for (label, at_least) in [
        ("drop_icmp_untranslated", 2),
        ("drop_icmp_unknown", 1),
        ("pass_mtu_translated", 1),
        ("frag_translated", 1),
        ("snat", 1),
    ] {
        assert!(counters[label] >= at_least, "{label}: {counters:?}");
    }
}

#[test]
fn gre_and_esp_pass_through_by_address_and_show_in_the_table() {
    let lab = Lab::start().unwrap();
    for proto in [47, 50] {
        // Both raw sockets first, then a packet each way.
        let wan = join(lab.wan.spawn(move || raw_socket(proto, WAN_HOST)));
        let lan = join(lab.lan.spawn(move || raw_socket(proto, LAN_SERVER)));
        let out = [0, 0, 0x08, 0, 0xde, 0xad, proto as u8, 1];
        let back = [0, 0, 0x08, 0, 0xbe, 0xef, proto as u8, 2];
        let wan_dst: std::net::SocketAddr = (WAN_HOST, 0).into();
        lan.send_to(&out, &wan_dst.into()).unwrap();
        let body = |datagram: &[u8]| datagram[usize::from(datagram[0] & 0x0f) * 4..].to_vec();
        let (got, from) = raw_recv(&wan, |d| body(d) == out).unwrap();
        assert_eq!((body(&got), from), (out.to_vec(), ROUTER_WAN));
        let router: std::net::SocketAddr = (ROUTER_WAN, 0).into();
        wan.send_to(&back, &router.into()).unwrap();
        let (got, from) = raw_recv(&lan, |d| body(d) == back).unwrap();
        assert_eq!((body(&got), from), (back.to_vec(), WAN_HOST));
    }
    let rows = lab.table_filtered(&["--proto", "gre"]).unwrap();
    assert!(
        rows.iter()
            .any(|row| row["local_ip"] == LAN_SERVER.to_string()
                && row["remote_ip"] == WAN_HOST.to_string()
                && row["protocol"] == "GRE"
                && row["type"] == "DYNAMIC"),
        "{rows:#?}"
    );
    assert!(!lab.table_filtered(&["--proto", "esp"]).unwrap().is_empty());
}
