//! The relay of the reassembly slow path: UDP datagrams from outside whose
//! later fragments came before their first. XDP cannot hold a packet, so
//! the datapath hands such a datagram's fragments to the kernel, which
//! reassembles it for the WAN address; the datapath has judged its first
//! fragment with its own lookup and filter and recorded the target in
//! `RELAY_TARGETS`, and `nat_relay_lookup` (an `sk_lookup` program) steers
//! the whole datagram to this relay's socket. The relay sends it on to
//! that target, from the remote's own address and port: the LAN host sees
//! what the fast path would have delivered, the router never appears as
//! its source, and no second NAT decides anything.
//!
//! Off the hot path and bounded: the receive queue is the socket's buffer
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

use aya::maps::{HashMap, MapData, SockMap};
use etherparse::UdpHeader;
use nat_common::{PROTO_UDP, RelayTarget, SessionKey};
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
/// The relay socket's receive buffer: a few dozen 16 KiB datagrams.
const RECEIVE_BUFFER: usize = 1 << 20;
/// The largest IPv4 UDP payload.
const MAX_PAYLOAD: usize = 65_507;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the relay's {what} socket: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("putting the relay socket into the datapath's RELAY_SOCKET map: {0}")]
    Map(#[source] aya::maps::MapError),
}

/// What the relay did, for `natctl status` and the metrics.
#[derive(Debug, Default)]
pub struct RelayStats {
    relayed: AtomicU64,
    relayed_bytes: AtomicU64,
    no_target: AtomicU64,
    rate_limited: AtomicU64,
    queue_full: AtomicU64,
    send_failed: AtomicU64,
}

impl RelayStats {
    /// Each figure by name: datagrams relayed (and their bytes), and
    /// datagrams dropped by reason.
    pub fn figures(&self) -> [(&'static str, u64); 6] {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("relayed", get(&self.relayed)),
            ("relayed_bytes", get(&self.relayed_bytes)),
            ("dropped_no_target", get(&self.no_target)),
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

/// The relay: the socket `nat_relay_lookup` steers to, and what sends on.
pub struct Relay {
    inbox: Socket,
    onward: Onward,
}

/// The raw socket the relay sends from, and the targets the datapath
/// recorded.
struct Onward {
    outbox: Socket,
    targets: HashMap<MapData, SessionKey, RelayTarget>,
    /// Held so that the slot stays this process's while it runs (a closed
    /// socket leaves a sockmap by itself).
    _socket_map: SockMap<MapData>,
    stats: Arc<RelayStats>,
    limiter: RateLimiter,
}

fn socket_error(what: &'static str) -> impl Fn(io::Error) -> RelayError {
    move |source| RelayError::Socket { what, source }
}

/// The receiving socket: on loopback, so that it holds no port of the WAN
/// address (where the router's own ports live, `router_ports`), and
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

/// The sending socket: raw UDP, so that the relay writes the UDP header
/// with the remote's port, and transparent, so that the kernel takes the
/// remote's address as the source (`IP_PKTINFO`) and routes and fragments
/// the datagram to the LAN's MTU like any other. It never reads: a filter
/// refuses the copy of every UDP packet a raw socket would get.
fn outbox() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?;
    socket.attach_filter(&[SockFilter::new(
        (libc::BPF_RET | libc::BPF_K) as u16,
        0,
        0,
        0,
    )])?;
    socket.set_ip_transparent_v4(true)?;
    // The kernel's default path MTU setting (IP_PMTUDISC_WANT) fragments a
    // datagram larger than the LAN's MTU, with DF clear on the fragments.
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Relay {
    /// Opens the relay's sockets and puts the receiving one into the
    /// datapath's socket slot: from then on reassembled datagrams for a
    /// recorded target come to it.
    pub fn open(maps: RelayMaps, stats: Arc<RelayStats>) -> Result<Self, RelayError> {
        let RelayMaps {
            targets,
            socket: mut socket_map,
        } = maps;
        let inbox = inbox().map_err(socket_error("receiving"))?;
        let outbox = outbox().map_err(socket_error("sending (raw, transparent)"))?;
        socket_map.set(0, &inbox, 0).map_err(RelayError::Map)?;
        Ok(Self {
            inbox,
            onward: Onward {
                outbox,
                targets,
                _socket_map: socket_map,
                stats,
                limiter: RateLimiter::new(),
            },
        })
    }

    /// Relays until the process ends.
    pub async fn run(self) {
        let Self { inbox, mut onward } = self;
        // SAFETY: the socket is owned by the AsyncFd from here on, and
        // never closed or replaced while it is registered.
        let inbox = match unsafe { AsyncFd::register_with_interest(inbox, Interest::READABLE) } {
            Ok(inbox) => inbox,
            Err(error) => {
                tracing::error!("cannot watch the relay socket: {error}");
                return;
            }
        };
        let mut payload = vec![0u8; MAX_PAYLOAD + 1];
        loop {
            let Ok(mut ready) = inbox.readable().await else {
                tracing::error!("relay socket failed; reordered fragments are no longer relayed");
                return;
            };
            loop {
                match receive(inbox.get_ref(), &mut payload, &onward.stats) {
                    Ok(datagram) => onward.relay(&datagram, &payload[..datagram.len]),
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
    fn relay(&mut self, datagram: &Received, payload: &[u8]) {
        let Some(external) = datagram.external else {
            self.stats.no_target.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = SessionKey {
            remote_addr: datagram.remote.ip().octets(),
            remote_port: datagram.remote.port(),
            external_port: external.port(),
            proto: PROTO_UDP,
            _pad: [0; 3],
        };
        // Recorded by the datapath for this datagram's first fragment,
        // after its lookup and filter; steered here only while fresh.
        let Ok(target) = self.targets.get(&key, 0) else {
            self.stats.no_target.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self
            .limiter
            .admit(*datagram.remote.ip(), Instant::now(), RATE_PER_REMOTE)
        {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let to = SocketAddrV4::new(Ipv4Addr::from(target.addr), target.port);
        match send(&self.outbox, datagram, to, payload) {
            Ok(()) => {
                self.stats.relayed.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .relayed_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.send_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("relay: sending to {to}: {error}");
            }
        }
    }
}

/// One datagram as the relay socket took it.
struct Received {
    len: usize,
    remote: SocketAddrV4,
    /// The WAN address and the external port it was sent to.
    external: Option<SocketAddrV4>,
    ttl: Option<u8>,
}

fn receive(
    socket: &Socket,
    payload: &mut [u8],
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
            // The kernel's running count of datagrams this socket's full
            // queue dropped.
            ControlMessageOwned::RxqOvfl(dropped) => {
                stats
                    .queue_full
                    .fetch_max(u64::from(dropped), Ordering::Relaxed);
            }
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

/// Sends `payload` to `to` as a UDP datagram from the remote's address and
/// port, one hop further (TTL less one, as the fast path decrements it).
fn send(socket: &Socket, datagram: &Received, to: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
    let remote = datagram.remote;
    let mut header = UdpHeader::without_ipv4_checksum(remote.port(), to.port(), payload.len())
        .map_err(io::Error::other)?;
    header.checksum = header
        .calc_checksum_ipv4_raw(remote.ip().octets(), to.ip().octets(), payload)
        .map_err(io::Error::other)?;
    let header = header.to_bytes();
    let source = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(*remote.ip()).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let ttl = libc::c_int::from(datagram.ttl.unwrap_or(64).saturating_sub(1).max(1));
    let cmsgs = [
        ControlMessage::Ipv4PacketInfo(&source),
        ControlMessage::Ipv4Ttl(&ttl),
    ];
    sendmsg(
        socket.as_fd().as_raw_fd(),
        &[IoSlice::new(&header), IoSlice::new(payload)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&SockaddrIn::from(SocketAddrV4::new(*to.ip(), 0))),
    )?;
    Ok(())
}
