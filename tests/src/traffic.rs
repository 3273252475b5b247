//! Real traffic for the labs: TCP and UDP from Rust sockets created inside
//! a namespace (see `Netns::spawn`), every operation bounded in time.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::wait_for;

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// How many interruptions one wait sits out before the error is passed on.
const INTERRUPTIONS_SAT_OUT: usize = 16;

/// `call` (a receive or read that waits) taken again when a stop of the
/// process ended its wait early. With a receive timeout set, Linux does not
/// restart such a call after a stop and continue (a frozen cgroup, a paused
/// VM: signal(7)) but fails it with EINTR, which std passes on; the wait was
/// cut short, not over, so neither "nothing came" nor an error is the answer.
pub fn uninterrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    for _ in 0..INTERRUPTIONS_SAT_OUT {
        match call() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            answer => return answer,
        }
    }
    call()
}

/// Deterministic bytes that no offset or reordering bug can reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

pub fn accept(listener: &TcpListener) -> Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let (stream, peer) = wait_for("an incoming connection", IO_TIMEOUT, || {
        listener.accept().ok()
    })?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok((stream, peer))
}

/// A TCP connection from a chosen local address (std cannot bind before
/// connecting).
pub fn connect_from(local: Ipv4Addr, remote: SocketAddr) -> Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((local, 0)).into())?;
    socket.connect_timeout(&remote.into(), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP message: type, code, the 4 bytes after the checksum and a body,
/// with its checksum.
pub fn icmp_message(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend_from_slice(&rest);
    message.extend_from_slice(body);
    let check = internet_checksum(&message);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    message
}

/// A raw IPv4 socket of protocol `proto` (the kernel writes the IP
/// header), bound to `local`, with a receive timeout.
pub fn raw_socket(proto: i32, local: Ipv4Addr) -> Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(proto)))?;
    socket.bind(&SocketAddr::from((local, 0)).into())?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(socket)
}

/// Receives on a raw IPv4 socket until `accept` takes a datagram (IP
/// header included) or the timeout; returns it and its source.
pub fn raw_recv(
    socket: &socket2::Socket,
    mut accept: impl FnMut(&[u8]) -> bool,
) -> Result<(Vec<u8>, Ipv4Addr)> {
    use std::mem::MaybeUninit;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let mut buffer = [MaybeUninit::<u8>::uninit(); 2048];
        let Ok((len, from)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        // SAFETY: recv_from initialised the first `len` bytes.
        let datagram: Vec<u8> = buffer[..len]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let from = *from.as_socket_ipv4().context("not IPv4")?.ip();
        if accept(&datagram) {
            return Ok((datagram, from));
        }
    }
    anyhow::bail!("no matching datagram within 5 s")
}
