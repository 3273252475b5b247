//! The relay of the reassembly slow path: UDP, TCP and ICMP datagrams from
//! outside whose later fragments came before their first. XDP cannot hold
//! a packet, so the datapath hands such a datagram's fragments to the
//! kernel, which reassembles it for the WAN address; the datapath has
//! judged its first fragment with its own lookup and filter and recorded
//! the target in `RELAY_TARGETS`. The relay sends the whole datagram on to
//! that target, from the remote's own address and port: the LAN host sees
//! what the fast path would have delivered, the router never appears as
//! its source, and no second NAT decides anything.
//!
//! How each protocol's datagram reaches the relay:
//! - UDP: `nat_relay_lookup` (an `sk_lookup` program) steers it to the
//!   relay's UDP socket;
//! - TCP: the relay's raw TCP socket gets a copy (a raw socket gets every
//!   local datagram of its protocol before the protocol's handler;
//!   `nat_relay_filter` keeps only those with a target), and
//!   `nat_relay_lookup` steers the original to the relay's sink, a
//!   listener whose drop-all filter discards it before the router's TCP
//!   would answer it with an RST;
//! - ICMP echo and timestamp replies: the raw ICMP socket's copy, likewise
//!   filtered; the router's ICMP ignores a reply to nothing it asked.
//!
//! A LAN host's datagram hairpinned through the WAN address comes the same
//! way, its target recording the port of the sender's mapping: it leaves
//! from the WAN address and that port, as the fast path would send it.
//!
//! The relay rewrites the destination port (an ICMP query's id) to the
//! target's, with the checksum recomputed after checking the one that
//! came, and sends the datagram from a raw socket of its protocol with the
//! remote's address as source (`IP_TRANSPARENT`): the kernel builds the IP
//! header and fragments the datagram to the LAN's MTU.
//!
//! Off the hot path and bounded: each receive queue is its socket's buffer
//! (the kernel drops past it and says how many, `SO_RXQ_OVFL`), and each
//! remote address may have `RATE_PER_REMOTE` datagrams a second relayed.
use std::{
    io,
    io::{IoSlice, IoSliceMut},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use aya::{
    maps::{HashMap, MapData, SockMap},
    programs::SocketFilter,
};
use etherparse::{Icmpv4Header, Icmpv4Slice, Icmpv4Type, Ipv4Slice, TcpSlice, UdpHeader};
use nat_common::{
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, RELAY_SLOT_TCP_SINK, RELAY_SLOT_UDP, RelayTarget, SessionKey,
};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{datapath::RelayMaps, limiter::RateLimiter};

/// Datagrams a second that one remote address may have relayed (twice
/// that in a burst): the slow path is for the odd reordered datagram, not
/// for a flood of them.
pub const RATE_PER_REMOTE: u32 = 1000;
/// Each relay socket's receive buffer: a few dozen 16 KiB datagrams.
const RECEIVE_BUFFER: usize = 1 << 20;
/// The largest IPv4 datagram.
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the relay's {what} socket: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("putting the relay's sockets into the datapath's RELAY_SOCKET map: {0}")]
    Map(#[source] aya::maps::MapError),
    #[error("attaching nat_relay_filter to the relay's raw {what} socket: {source}")]
    Filter {
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// What the relay did, for `natctl status` and the metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    relayed: AtomicU64,
    relayed_bytes: AtomicU64,
    relayed_tcp: AtomicU64,
    relayed_icmp: AtomicU64,
    no_target: AtomicU64,
    malformed: AtomicU64,
    rate_limited: AtomicU64,
    queue_full: AtomicU64,
    send_failed: AtomicU64,
}

impl RelayStats {
    /// Each figure by name: datagrams relayed (and their payload bytes;
    /// of them TCP and ICMP), and datagrams dropped by reason.
    pub fn figures(&self) -> [(&'static str, u64); 9] {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("relayed", get(&self.relayed)),
            ("relayed_bytes", get(&self.relayed_bytes)),
            ("relayed_tcp", get(&self.relayed_tcp)),
            ("relayed_icmp", get(&self.relayed_icmp)),
            ("dropped_no_target", get(&self.no_target)),
            ("dropped_malformed", get(&self.malformed)),
            ("dropped_rate_limited", get(&self.rate_limited)),
            ("dropped_queue_full", get(&self.queue_full)),
            ("dropped_send_failed", get(&self.send_failed)),
        ]
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.figures()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// The relay: the sockets datagrams reach it by, and what sends on.
pub struct Relay {
    inbox: Socket,
    tcp: Socket,
    icmp: Socket,
    onward: Onward,
}

/// The UDP raw socket the relay sends from, and the targets the datapath
/// recorded.
struct Onward {
    udp: Socket,
    /// Held so that `RELAY_SLOT_TCP_SINK` stays filled while the relay
    /// runs; it never accepts.
    _sink: Socket,
    targets: HashMap<MapData, SessionKey, RelayTarget>,
    /// Held so that the slots stay this process's while it runs (a closed
    /// socket leaves a sockmap by itself).
    _socket_map: SockMap<MapData>,
    stats: Arc<RelayStats>,
    limiter: RateLimiter,
}

fn socket_error(what: &'static str) -> impl Fn(io::Error) -> RelayError {
    move |source| RelayError::Socket { what, source }
}

/// A classic socket filter that keeps nothing.
fn refuse_all(socket: &Socket) -> io::Result<()> {
    socket.attach_filter(&[SockFilter::new(
        (libc::BPF_RET | libc::BPF_K) as u16,
        0,
        0,
        0,
    )])
}

/// The receiving UDP socket: on loopback, so that it holds no port of the
/// WAN address (where the router's own ports live, `router_ports`), and
/// unconnected, as `bpf_sk_assign` wants a UDP socket.
fn inbox() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
    setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true)?;
    setsockopt(&socket, sockopt::Ipv4RecvTtl, &true)?;
    setsockopt(&socket, sockopt::RxqOvfl, &1)?;
    Ok(socket)
}

/// The TCP sink: a listener on loopback (no port of the WAN address) that
/// `nat_relay_lookup` assigns reassembled TCP datagrams to, and whose
/// filter discards them in `tcp_v4_rcv` before any TCP state is looked
/// at: nothing is answered, nothing is ever accepted.
fn sink() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    refuse_all(&socket)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
    socket.listen(1)?;
    Ok(socket)
}

/// A raw socket of `protocol` the relay sends from, transparent, so that
/// the kernel takes the remote's address as the source (`IP_PKTINFO`) and
/// routes and fragments the datagram to the LAN's MTU like any other (its
/// default path MTU setting, IP_PMTUDISC_WANT, fragments a datagram larger
/// than the LAN's MTU, with DF clear on the fragments).
fn raw(protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(protocol))?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A raw socket that also reads: the copy of each local datagram of its
/// protocol that `nat_relay_filter` keeps.
fn raw_inbox(
    protocol: Protocol,
    filter: &SocketFilter,
    what: &'static str,
) -> Result<Socket, RelayError> {
    let socket = raw(protocol)
        .and_then(|socket| {
            socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
            setsockopt(&socket, sockopt::RxqOvfl, &1)?;
            Ok(socket)
        })
        .map_err(socket_error(what))?;
    filter
        .attach(&socket)
        .map_err(|source| RelayError::Filter { what, source })?;
    Ok(socket)
}

impl Relay {
    /// Opens the relay's sockets, attaches `filter` (`nat_relay_filter`) to
    /// its raw ones, and puts the UDP one and the TCP sink into the
    /// datapath's socket slots: from then on reassembled datagrams for a
    /// recorded target come to it.
    pub fn open(
        maps: RelayMaps,
        filter: &SocketFilter,
        stats: Arc<RelayStats>,
    ) -> Result<Self, RelayError> {
        let RelayMaps {
            targets,
            socket: mut socket_map,
        } = maps;
        let inbox = inbox().map_err(socket_error("receiving"))?;
        let udp = raw(Protocol::UDP)
            .and_then(|socket| {
                // It never reads: refuse the copy of every UDP datagram.
                refuse_all(&socket)?;
                Ok(socket)
            })
            .map_err(socket_error("sending (raw UDP, transparent)"))?;
        let tcp = raw_inbox(Protocol::TCP, filter, "TCP")?;
        let icmp = raw_inbox(Protocol::ICMPV4, filter, "ICMP")?;
        let sink = sink().map_err(socket_error("TCP sink"))?;
        // The raw sockets read before the sink takes TCP datagrams, so
        // that none is discarded unread.
        socket_map
            .set(RELAY_SLOT_UDP, &inbox, 0)
            .map_err(RelayError::Map)?;
        socket_map
            .set(RELAY_SLOT_TCP_SINK, &sink, 0)
            .map_err(RelayError::Map)?;
        Ok(Self {
            inbox,
            tcp,
            icmp,
            onward: Onward {
                udp,
                _sink: sink,
                targets,
                _socket_map: socket_map,
                stats,
                limiter: RateLimiter::new(),
            },
        })
    }

    /// Relays until the process ends.
    pub async fn run(self) {
        let Self {
            inbox,
            tcp,
            icmp,
            mut onward,
        } = self;
        let watch = |socket: Socket| {
            // SAFETY: the socket is owned by the AsyncFd from here on, and
            // never closed or replaced while it is registered.
            unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        };
        let (inbox, tcp, icmp) = match (watch(inbox), watch(tcp), watch(icmp)) {
            (Ok(inbox), Ok(tcp), Ok(icmp)) => (inbox, tcp, icmp),
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                tracing::error!("cannot watch the relay's sockets: {error}");
                return;
            }
        };
        let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
        let mut overflows = [0u32; 3];
        loop {
            let (ready, which) = tokio::select! {
                ready = inbox.readable() => (ready, 0),
                ready = tcp.readable() => (ready, 1),
                ready = icmp.readable() => (ready, 2),
            };
            let Ok(mut ready) = ready else {
                tracing::error!("relay socket failed; reordered fragments are no longer relayed");
                return;
            };
            let socket = ready.get_inner();
            loop {
                let overflow = &mut overflows[which];
                let outcome = if which == 0 {
                    receive(socket, &mut buffer, overflow, &onward.stats)
                        .map(|datagram| onward.relay_udp(&datagram, &buffer[..datagram.len]))
                } else {
                    receive_raw(socket, &mut buffer, overflow, &onward.stats)
                        .map(|len| onward.relay_raw(socket, &buffer[..len]))
                };
                match outcome {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EAGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    Err(error) => {
                        tracing::warn!("relay: receiving: {error}");
                        ready.clear_ready();
                        break;
                    }
                }
            }
        }
    }
}

impl Onward {
    /// The recorded target for `key`, if the remote is within its rate.
    fn target(&mut self, key: &SessionKey) -> Option<RelayTarget> {
        // Recorded by the datapath for this datagram's first fragment,
        // after its lookup and filter; let through to here only while
        // fresh.
        let Ok(target) = self.targets.get(key, 0) else {
            self.stats.no_target.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let remote = Ipv4Addr::from(key.remote_addr);
        if !self.limiter.admit(remote, Instant::now(), RATE_PER_REMOTE) {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(target)
    }

    fn sent(&self, outcome: io::Result<()>, proto: u8, payload: usize, to: Ipv4Addr) {
        match outcome {
            Ok(()) => {
                self.stats.relayed.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .relayed_bytes
                    .fetch_add(payload as u64, Ordering::Relaxed);
                match proto {
                    PROTO_TCP => self.stats.relayed_tcp.fetch_add(1, Ordering::Relaxed),
                    PROTO_ICMP => self.stats.relayed_icmp.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
            Err(error) => {
                self.stats.send_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("relay: sending to {to}: {error}");
            }
        }
    }

    fn relay_udp(&mut self, datagram: &Received, payload: &[u8]) {
        let Some(external) = datagram.external else {
            self.stats.no_target.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let remote = datagram.remote;
        let key = SessionKey {
            remote_addr: remote.ip().octets(),
            remote_port: remote.port(),
            external_port: external.port(),
            proto: PROTO_UDP,
            _pad: [0; 3],
        };
        let Some(target) = self.target(&key) else {
            return;
        };
        // A hairpinned datagram leaves from the WAN address, by its
        // sender's mapping.
        let from = match target.source_port {
            0 => remote,
            port => SocketAddrV4::new(*external.ip(), port),
        };
        let to = Ipv4Addr::from(target.addr);
        let outcome =
            udp_header(from, SocketAddrV4::new(to, target.port), payload).and_then(|header| {
                send(
                    &self.udp,
                    *from.ip(),
                    to,
                    datagram.ttl,
                    &[IoSlice::new(&header), IoSlice::new(payload)],
                )
            });
        self.sent(outcome, PROTO_UDP, payload.len(), to);
    }

    /// A whole IPv4 datagram (TCP or ICMP) a raw socket read: rewritten to
    /// its target and sent on from `socket`, the raw socket of its
    /// protocol.
    fn relay_raw(&mut self, socket: &Socket, datagram: &[u8]) {
        let Some(rewritten) = Rewritten::of(datagram) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(target) = self.target(&rewritten.key) else {
            return;
        };
        let to = Ipv4Addr::from(target.addr);
        // A hairpinned datagram leaves from the WAN address.
        let from = match target.source_port {
            0 => Ipv4Addr::from(rewritten.key.remote_addr),
            _ => rewritten.local,
        };
        let outcome = rewritten.header(from, target).and_then(|header| {
            send(
                socket,
                from,
                to,
                Some(rewritten.ttl),
                &[IoSlice::new(&header), IoSlice::new(rewritten.payload)],
            )
        });
        self.sent(outcome, rewritten.key.proto, rewritten.payload.len(), to);
    }
}

/// A TCP segment or ICMP query reply as the kernel reassembled it, checked
/// (its checksum is verified here: the relay recomputes it, and must not
/// launder a corrupt datagram) and ready to be rewritten to its target.
struct Rewritten<'a> {
    /// Its `RELAY_TARGETS` key, as `nat_relay_filter` built it.
    key: SessionKey,
    /// The address it came to: the WAN address.
    local: Ipv4Addr,
    ttl: u8,
    l4: L4<'a>,
    /// What follows the L4 header.
    payload: &'a [u8],
}

enum L4<'a> {
    Tcp(TcpSlice<'a>),
    Icmp(Icmpv4Type),
}

impl<'a> Rewritten<'a> {
    fn of(datagram: &'a [u8]) -> Option<Self> {
        let ip = Ipv4Slice::from_slice(datagram).ok()?;
        let header = ip.header();
        let (source, destination) = (header.source(), header.destination());
        let l4 = ip.payload().payload;
        let ttl = header.ttl();
        match header.protocol().0 {
            PROTO_TCP => {
                let tcp = TcpSlice::from_slice(l4).ok()?;
                if tcp.calc_checksum_ipv4(source, destination).ok()? != tcp.checksum() {
                    return None;
                }
                Some(Self {
                    key: SessionKey {
                        remote_addr: source,
                        remote_port: tcp.source_port(),
                        external_port: tcp.destination_port(),
                        proto: PROTO_TCP,
                        _pad: [0; 3],
                    },
                    local: Ipv4Addr::from(destination),
                    ttl,
                    payload: tcp.payload(),
                    l4: L4::Tcp(tcp),
                })
            }
            PROTO_ICMP => {
                let icmp = Icmpv4Slice::from_slice(l4).ok()?;
                let kind = icmp.icmp_type();
                if kind.calc_checksum(icmp.payload()) != icmp.checksum() {
                    return None;
                }
                let id = match &kind {
                    Icmpv4Type::EchoReply(echo) => echo.id,
                    Icmpv4Type::TimestampReply(timestamp) => timestamp.id,
                    _ => return None,
                };
                Some(Self {
                    key: SessionKey {
                        remote_addr: source,
                        remote_port: id,
                        external_port: id,
                        proto: PROTO_ICMP,
                        _pad: [0; 3],
                    },
                    local: Ipv4Addr::from(destination),
                    ttl,
                    payload: icmp.payload(),
                    l4: L4::Icmp(kind),
                })
            }
            _ => None,
        }
    }

    /// The L4 header for `target`, sent from `from`: the destination port
    /// (or the query's id) the target's, a hairpinned segment's source
    /// port its sender's mapping's, the checksum recomputed for it.
    fn header(&self, from: Ipv4Addr, target: RelayTarget) -> io::Result<Vec<u8>> {
        match &self.l4 {
            L4::Tcp(tcp) => {
                let mut header = tcp.to_header();
                header.destination_port = target.port;
                if target.source_port != 0 {
                    header.source_port = target.source_port;
                }
                header.checksum = header
                    .calc_checksum_ipv4_raw(from.octets(), target.addr, self.payload)
                    .map_err(io::Error::other)?;
                Ok(header.to_bytes().to_vec())
            }
            L4::Icmp(kind) => {
                let mut kind = kind.clone();
                match &mut kind {
                    Icmpv4Type::EchoReply(echo) => echo.id = target.port,
                    Icmpv4Type::TimestampReply(timestamp) => timestamp.id = target.port,
                    _ => {}
                }
                Ok(Icmpv4Header::with_checksum(kind, self.payload)
                    .to_bytes()
                    .to_vec())
            }
        }
    }
}

/// One datagram as the relay's UDP socket took it.
struct Received {
    len: usize,
    remote: SocketAddrV4,
    /// The WAN address and the external port it was sent to.
    external: Option<SocketAddrV4>,
    ttl: Option<u8>,
}

/// Adds to `stats` what the kernel's running count of datagrams a socket's
/// full queue dropped (`SO_RXQ_OVFL`) says beyond `seen`.
fn count_overflow(dropped: u32, seen: &mut u32, stats: &RelayStats) {
    let new = dropped.wrapping_sub(*seen);
    *seen = dropped;
    stats
        .queue_full
        .fetch_add(u64::from(new), Ordering::Relaxed);
}

fn receive(
    socket: &Socket,
    payload: &mut [u8],
    overflow: &mut u32,
    stats: &RelayStats,
) -> Result<Received, nix::errno::Errno> {
    let mut control = nix::cmsg_space!(libc::sockaddr_in, libc::c_int, u32);
    let mut iov = [IoSliceMut::new(payload)];
    let message = recvmsg::<SockaddrIn>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let mut external = None;
    let mut ttl = None;
    for cmsg in message.cmsgs().into_iter().flatten() {
        match cmsg {
            ControlMessageOwned::Ipv4OrigDstAddr(addr) => {
                external = Some(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                    u16::from_be(addr.sin_port),
                ));
            }
            ControlMessageOwned::Ipv4Ttl(value) => ttl = u8::try_from(value).ok(),
            ControlMessageOwned::RxqOvfl(dropped) => count_overflow(dropped, overflow, stats),
            _ => {}
        }
    }
    let remote = message
        .address
        .map(|addr| SocketAddrV4::new(addr.ip(), addr.port()))
        .ok_or(nix::errno::Errno::EINVAL)?;
    Ok(Received {
        len: message.bytes,
        remote,
        external,
        ttl,
    })
}

/// One whole IPv4 datagram, its header included, from a raw socket.
fn receive_raw(
    socket: &Socket,
    buffer: &mut [u8],
    overflow: &mut u32,
    stats: &RelayStats,
) -> Result<usize, nix::errno::Errno> {
    let mut control = nix::cmsg_space!(u32);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<SockaddrIn>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    for cmsg in message.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::RxqOvfl(dropped) = cmsg {
            count_overflow(dropped, overflow, stats);
        }
    }
    Ok(message.bytes)
}

/// The UDP header of `payload` from `remote` to `to`, with its checksum.
fn udp_header(remote: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> io::Result<[u8; 8]> {
    let mut header = UdpHeader::without_ipv4_checksum(remote.port(), to.port(), payload.len())
        .map_err(io::Error::other)?;
    header.checksum = header
        .calc_checksum_ipv4_raw(remote.ip().octets(), to.ip().octets(), payload)
        .map_err(io::Error::other)?;
    Ok(header.to_bytes())
}

/// Sends `parts` (an L4 header and its payload) from `socket`, a raw
/// socket of their protocol, to `to` from the remote's address, one hop
/// further than it came (TTL less one, as the fast path decrements it).
fn send(
    socket: &Socket,
    remote: Ipv4Addr,
    to: Ipv4Addr,
    ttl: Option<u8>,
    parts: &[IoSlice<'_>],
) -> io::Result<()> {
    let source = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(remote).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let ttl = libc::c_int::from(ttl.unwrap_or(64).saturating_sub(1).max(1));
    let cmsgs = [
        ControlMessage::Ipv4PacketInfo(&source),
        ControlMessage::Ipv4Ttl(&ttl),
    ];
    sendmsg(
        socket.as_fd().as_raw_fd(),
        parts,
        &cmsgs,
        MsgFlags::empty(),
        Some(&SockaddrIn::from(SocketAddrV4::new(to, 0))),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    const REMOTE: [u8; 4] = [198, 51, 100, 2];
    const WAN: [u8; 4] = [203, 0, 113, 1];
    const HOST: [u8; 4] = [192, 168, 0, 12];

    fn target(port: u16, source_port: u16) -> RelayTarget {
        RelayTarget {
            created_ns: 1,
            addr: HOST,
            port,
            source_port,
        }
    }

    fn tcp_datagram(payload: &[u8]) -> Vec<u8> {
        let mut datagram = Vec::new();
        PacketBuilder::ipv4(REMOTE, WAN, 61)
            .tcp(443, 40001, 7, 1000)
            .ack(9)
            .write(&mut datagram, payload)
            .unwrap();
        datagram
    }

    /// The datagram as the relay sends it: its L4 header and payload
    /// behind the IP header the kernel would write.
    fn as_sent(proto: u8, from: [u8; 4], header: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut l4 = header.to_vec();
        l4.extend_from_slice(payload);
        let ip = etherparse::Ipv4Header::new(
            l4.len() as u16,
            60,
            etherparse::IpNumber(proto),
            from,
            HOST,
        )
        .unwrap();
        let mut datagram = ip.to_bytes().to_vec();
        datagram.extend_from_slice(&l4);
        datagram
    }

    #[test]
    fn a_tcp_segment_gets_its_targets_port_and_a_right_checksum() {
        let payload = b"a reassembled segment";
        let datagram = tcp_datagram(payload);
        let rewritten = Rewritten::of(&datagram).expect("a well-formed segment");
        assert_eq!(
            rewritten.key,
            SessionKey {
                remote_addr: REMOTE,
                remote_port: 443,
                external_port: 40001,
                proto: PROTO_TCP,
                _pad: [0; 3],
            }
        );
        assert_eq!((rewritten.ttl, rewritten.payload), (61, &payload[..]));
        let header = rewritten.header(REMOTE.into(), target(50000, 0)).unwrap();
        let out = as_sent(PROTO_TCP, REMOTE, &header, payload);
        let Some(TransportSlice::Tcp(tcp)) = SlicedPacket::from_ip(&out).unwrap().transport else {
            panic!("not TCP");
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (443, 50000));
        assert_eq!((tcp.sequence_number(), tcp.acknowledgment_number()), (7, 9));
        assert_eq!(
            tcp.calc_checksum_ipv4(REMOTE, HOST).unwrap(),
            tcp.checksum()
        );
    }

    #[test]
    fn a_hairpinned_segment_leaves_from_the_wan_address_and_its_senders_mapping() {
        let payload = b"hairpinned";
        let datagram = tcp_datagram(payload);
        let rewritten = Rewritten::of(&datagram).unwrap();
        assert_eq!(rewritten.local, Ipv4Addr::from(WAN));
        let header = rewritten.header(WAN.into(), target(8080, 61000)).unwrap();
        let out = as_sent(PROTO_TCP, WAN, &header, payload);
        let Some(TransportSlice::Tcp(tcp)) = SlicedPacket::from_ip(&out).unwrap().transport else {
            panic!("not TCP");
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (61000, 8080));
        assert_eq!(tcp.calc_checksum_ipv4(WAN, HOST).unwrap(), tcp.checksum());
    }

    #[test]
    fn a_corrupt_segment_or_another_icmp_type_is_not_relayed() {
        let mut datagram = tcp_datagram(b"payload");
        let last = datagram.len() - 1;
        datagram[last] ^= 1;
        assert!(Rewritten::of(&datagram).is_none(), "a bad TCP checksum");
        let mut request = Vec::new();
        PacketBuilder::ipv4(REMOTE, WAN, 61)
            .icmpv4_echo_request(7, 1)
            .write(&mut request, b"ping")
            .unwrap();
        assert!(Rewritten::of(&request).is_none(), "an echo request");
    }

    #[test]
    fn an_echo_reply_gets_its_hosts_id_and_a_right_checksum() {
        let payload = [0x5a; 3000];
        let mut datagram = Vec::new();
        PacketBuilder::ipv4(REMOTE, WAN, 61)
            .icmpv4_echo_reply(61000, 3)
            .write(&mut datagram, &payload)
            .unwrap();
        let rewritten = Rewritten::of(&datagram).expect("a well-formed reply");
        assert_eq!(
            (rewritten.key.remote_port, rewritten.key.external_port),
            (61000, 61000)
        );
        assert_eq!(rewritten.key.proto, PROTO_ICMP);
        let header = rewritten.header(REMOTE.into(), target(1234, 0)).unwrap();
        let out = as_sent(PROTO_ICMP, REMOTE, &header, &payload);
        let Some(TransportSlice::Icmpv4(icmp)) = SlicedPacket::from_ip(&out).unwrap().transport
        else {
            panic!("not ICMP");
        };
        let Icmpv4Type::EchoReply(echo) = icmp.icmp_type() else {
            panic!("not an echo reply");
        };
        assert_eq!((echo.id, echo.seq), (1234, 3));
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
    }
}
