//! Two hosts behind two `natctl` routers reach each other directly, as
//! peer-to-peer apps do (RFC 5128): each learns its public endpoint from a
//! rendezvous server, then both send to the other's at once. UDP hole
//! punching needs endpoint-independent mapping (RFC 4787 REQ-1); TCP's
//! needs simultaneous open through both NATs and unsolicited SYNs left
//! unanswered, not reset (RFC 5382 REQ-4).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use nat_tests::internet::{HOST_1, HOST_2, Internet, ROUTER_A, ROUTER_B, SERVER};
use socket2::{Domain, Protocol, Socket, Type};

const RENDEZVOUS_PORT: u16 = 3478;
/// Bounds every exchange: a lost datagram is sent again at most this often.
const ATTEMPTS: u8 = 20;

fn udp_socket(addr: Ipv4Addr, port: u16) -> Result<UdpSocket> {
    let socket = UdpSocket::bind((addr, port))?;
    socket.set_read_timeout(Some(Duration::from_millis(250)))?;
    Ok(socket)
}

/// The public endpoint the rendezvous server sees for `socket`.
fn public_endpoint(socket: &UdpSocket, rendezvous: &UdpSocket) -> Result<SocketAddr> {
    let mut buffer = [0u8; 16];
    for attempt in 0..ATTEMPTS {
        socket.send_to(&[b'r', attempt], (SERVER, RENDEZVOUS_PORT))?;
        if let Ok((_, seen)) = rendezvous.recv_from(&mut buffer) {
            return Ok(seen);
        }
    }
    anyhow::bail!(
        "the rendezvous server heard nothing from {}",
        socket.local_addr()?
    )
}

#[test]
fn udp_hole_punching_between_two_homes() {
    let internet = Internet::start("").unwrap();
    let rendezvous = internet
        .server
        .spawn(|| udp_socket(SERVER, RENDEZVOUS_PORT))
        .join()
        .unwrap()
        .unwrap();
    let in_host = |home: &nat_tests::internet::Home, port| {
        home.hosts[0]
            .spawn(move || udp_socket(HOST_1, port))
            .join()
            .unwrap()
            .unwrap()
    };
    let a = in_host(&internet.a, 4000);
    let b = in_host(&internet.b, 5000);
    let public_a = public_endpoint(&a, &rendezvous).unwrap();
    let public_b = public_endpoint(&b, &rendezvous).unwrap();
    // Each router kept the host's port (both hosts are 192.168.0.12).
    assert_eq!(public_a, SocketAddr::from((ROUTER_A, 4000)));
    assert_eq!(public_b, SocketAddr::from((ROUTER_B, 5000)));

    let (heard_by_a, heard_by_b) = punch_udp(&a, public_b, &b, public_a);
    assert_eq!(heard_by_b, Some(public_a), "{}", internet.logs());
    assert_eq!(heard_by_a, Some(public_b), "{}", internet.logs());
}

/// Both punch at once: each sends to the other's public endpoint until it
/// has heard the other (bounded). Returns whom each heard from.
fn punch_udp(
    a: &UdpSocket,
    public_b: SocketAddr,
    b: &UdpSocket,
    public_a: SocketAddr,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let mut heard_by_a = None;
    let mut heard_by_b = None;
    let mut buffer = [0u8; 16];
    for attempt in 0..ATTEMPTS {
        if heard_by_a.is_some() && heard_by_b.is_some() {
            break;
        }
        a.send_to(&[b'a', attempt], public_b).unwrap();
        b.send_to(&[b'b', attempt], public_a).unwrap();
        if let Ok((len, from)) = b.recv_from(&mut buffer) {
            assert_eq!(buffer[0], b'a', "{len} bytes");
            heard_by_b = Some(from);
        }
        if let Ok((len, from)) = a.recv_from(&mut buffer) {
            assert_eq!(buffer[0], b'b', "{len} bytes");
            heard_by_a = Some(from);
        }
    }
    (heard_by_a, heard_by_b)
}

#[test]
fn two_hosts_of_one_home_punch_through_their_own_router() {
    // Peers that do not know they share a NAT use their public endpoints:
    // the router hairpins (RFC 4787 REQ-9), each side seeing the other's
    // public endpoint, never its private one.
    let internet = Internet::start("").unwrap();
    let rendezvous = internet
        .server
        .spawn(|| udp_socket(SERVER, RENDEZVOUS_PORT))
        .join()
        .unwrap()
        .unwrap();
    let one = internet.a.hosts[0]
        .spawn(|| udp_socket(HOST_1, 6000))
        .join()
        .unwrap()
        .unwrap();
    let two = internet.a.hosts[1]
        .spawn(|| udp_socket(HOST_2, 6000))
        .join()
        .unwrap()
        .unwrap();
    let public_one = public_endpoint(&one, &rendezvous).unwrap();
    let public_two = public_endpoint(&two, &rendezvous).unwrap();
    assert_eq!(public_one, SocketAddr::from((ROUTER_A, 6000)));
    assert_eq!(public_two.ip(), ROUTER_A);
    assert_ne!(public_two.port(), 6000, "one port, two hosts");
    let (heard_by_one, heard_by_two) = punch_udp(&one, public_two, &two, public_one);
    assert_eq!(heard_by_two, Some(public_one), "{}", internet.logs());
    assert_eq!(heard_by_one, Some(public_two), "{}", internet.logs());
}

/// A TCP connection from `local` to the rendezvous server, closed by the
/// server first (so that the host's port is not left in TIME_WAIT): the
/// public endpoint the server saw.
fn tcp_public_endpoint(local: SocketAddrV4, listener: &TcpListener) -> Result<SocketAddr> {
    let socket = reusable(local)?;
    socket.connect_timeout(
        &SocketAddr::from((SERVER, RENDEZVOUS_PORT)).into(),
        Duration::from_secs(10),
    )?;
    let mut stream: TcpStream = socket.into();
    listener.set_nonblocking(false)?;
    let (mut accepted, seen) = listener.accept()?;
    accepted.write_all(seen.to_string().as_bytes())?;
    drop(accepted);
    let mut text = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.read_to_string(&mut text)?;
    text.parse().context("the server's answer")
}

fn reusable(local: SocketAddrV4) -> Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(local).into())?;
    Ok(socket)
}

/// Connects from `local` to `peer` while the peer does the same towards us:
/// the SYNs cross (simultaneous open); then a message each way.
fn punch(local: SocketAddrV4, peer: SocketAddr, say: &'static [u8]) -> Result<Vec<u8>> {
    let socket = reusable(local)?;
    socket.connect_timeout(&peer.into(), Duration::from_secs(15))?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(say)?;
    let mut heard = vec![0u8; 5];
    stream.read_exact(&mut heard)?;
    ensure!(
        stream.peer_addr()? == peer,
        "connected to {}",
        stream.peer_addr()?
    );
    Ok(heard)
}

#[test]
fn tcp_hole_punching_by_simultaneous_open_between_two_homes() {
    let internet = Internet::start("").unwrap();
    let listener = internet
        .server
        .spawn(|| Ok(TcpListener::bind((SERVER, RENDEZVOUS_PORT))?))
        .join()
        .unwrap()
        .unwrap();
    let local_a = SocketAddrV4::new(HOST_1, 4001);
    let local_b = SocketAddrV4::new(HOST_1, 5001);
    let listener_a = listener.try_clone().unwrap();
    let public_a = internet.a.hosts[0]
        .spawn(move || tcp_public_endpoint(local_a, &listener_a))
        .join()
        .unwrap()
        .unwrap();
    let public_b = internet.b.hosts[0]
        .spawn(move || tcp_public_endpoint(local_b, &listener))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(public_a, SocketAddr::from((ROUTER_A, 4001)));
    assert_eq!(public_b, SocketAddr::from((ROUTER_B, 5001)));

    // Each side's first SYN may reach the other router before that side
    // has sent its own: dropped there unanswered, it is retransmitted and
    // then crosses the other side's SYN.
    let from_a = internet.a.hosts[0].spawn(move || punch(local_a, public_b, b"hi, b"));
    let from_b = internet.b.hosts[0].spawn(move || punch(local_b, public_a, b"hi, a"));
    let heard_by_a = from_a.join().unwrap();
    let heard_by_b = from_b.join().unwrap();
    let logs = internet.logs();
    assert_eq!(heard_by_a.context(logs.clone()).unwrap(), b"hi, a");
    assert_eq!(heard_by_b.context(logs).unwrap(), b"hi, b");
}
