//! The router's own ports on its WAN address, which no forwarding rule may
//! take from it: ports its sockets listen on (TCP) or are bound to (UDP,
//! listening or connected), found through the kernel's sock_diag netlink
//! interface; the kernel's ephemeral range (the ports its own outgoing
//! connections get); and the configured `[nat] reserved_ports`.
//!
//! A rule on such a port would hand the router's traffic to a LAN host: the
//! datapath translates what a rule matches before the router's stack sees
//! it. So the rule transaction refuses those ports: a listening socket's to
//! everyone (the admin too), the rest to the mappings LAN hosts make
//! (UPnP, NAT-PMP, PCP). The admin may forward a port the router only
//! connects from or one of the ephemeral range: a deliberate choice on his
//! own router, where a LAN host's request is not.
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_LISTEN, TCP_TIME_WAIT},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::rules::{PortRange, RuleError, protocol_name};

/// Where the kernel keeps the range its outgoing connections' ports come
/// from, for the network namespace the daemon runs in (the router's).
const EPHEMERAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// What one of the router's sockets does with a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortUse {
    /// A TCP listener, or an unconnected UDP socket (a server, or a
    /// client that takes datagrams from anyone): what comes to the port is
    /// its.
    Listens,
    /// A connection the router made or took: its peer's packets come to
    /// the port.
    Connected,
}

/// One of the router's sockets on its WAN address (or on every address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSocket {
    pub protocol: u8,
    pub port: u16,
    pub usage: PortUse,
    pub inode: u32,
}

/// The router's ports at one moment, for checking rules against.
#[derive(Clone, Debug, Default)]
pub struct RouterPorts {
    /// By (protocol, port); a listener wins over a connection.
    sockets: HashMap<(u8, u16), LocalSocket>,
    ephemeral: Option<PortRange>,
    reserved: Vec<PortRange>,
}

impl RouterPorts {
    /// Reads the router's sockets on `wan` (every address when it has
    /// none yet) and its ephemeral range.
    pub fn read(wan: Option<Ipv4Addr>, reserved: &[PortRange]) -> io::Result<Self> {
        let mut sockets = Vec::new();
        // One netlink socket for the four dumps, one after another: every
        // mapping a client asks for reads them, and a socket's set-up and
        // tear-down cost about what a dump does.
        let mut netlink = Socket::new(NETLINK_SOCK_DIAG)?;
        netlink.bind_auto()?;
        netlink.connect(&SocketAddr::new(0, 0))?;
        let mut buffer = Vec::with_capacity(DUMP_BUFFER);
        for family in [AF_INET, AF_INET6] {
            for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
                for header in dump(&netlink, &mut buffer, family, protocol)? {
                    if let Some(socket) = on_wan(&header, protocol, wan) {
                        sockets.push(socket);
                    }
                }
            }
        }
        let ephemeral = std::fs::read_to_string(EPHEMERAL_RANGE)
            .ok()
            .and_then(|text| parse_ephemeral(&text));
        Ok(Self::new(sockets, ephemeral, reserved))
    }

    pub fn new(
        sockets: impl IntoIterator<Item = LocalSocket>,
        ephemeral: Option<PortRange>,
        reserved: &[PortRange],
    ) -> Self {
        let mut by_port = HashMap::new();
        for socket in sockets {
            by_port
                .entry((socket.protocol, socket.port))
                .and_modify(|known: &mut LocalSocket| {
                    if socket.usage == PortUse::Listens {
                        *known = socket;
                    }
                })
                .or_insert(socket);
        }
        Self {
            sockets: by_port,
            ephemeral,
            reserved: reserved.to_vec(),
        }
    }

    /// Why `port` may not be given to a rule, if it may not: `client_made`
    /// for the mappings LAN hosts make, which may have none of the
    /// router's ports; the admin's rules may not have a listener's.
    pub fn refusal(&self, protocol: u8, port: u16, client_made: bool) -> Option<Refusal> {
        if let Some(socket) = self.sockets.get(&(protocol, port))
            && (client_made || socket.usage == PortUse::Listens)
        {
            return Some(Refusal::Socket(*socket));
        }
        if !client_made {
            return None;
        }
        if let Some(range) = self.reserved.iter().find(|range| range.contains(port)) {
            return Some(Refusal::Reserved(*range));
        }
        self.ephemeral
            .filter(|range| range.contains(port))
            .map(Refusal::Ephemeral)
    }

    /// The router's socket that listens on `port`, if one does.
    pub fn listener(&self, protocol: u8, port: u16) -> Option<LocalSocket> {
        self.sockets
            .get(&(protocol, port))
            .filter(|socket| socket.usage == PortUse::Listens)
            .copied()
    }
}

/// Why a port is the router's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Socket(LocalSocket),
    Reserved(PortRange),
    Ephemeral(PortRange),
}

impl Refusal {
    /// The rule error for `rule` taking `port`, naming the socket's owner
    /// (looked up only now: it takes a walk through /proc).
    pub fn into_error(self, rule: &str, protocol: u8, port: u16) -> RuleError {
        let name = rule.to_owned();
        let protocol = protocol_name(protocol);
        match self {
            Refusal::Socket(socket) => RuleError::RouterSocket {
                name,
                protocol,
                port,
                owner: format!(
                    "{} {}",
                    owner_of(socket.inode),
                    match (socket.usage, socket.protocol) {
                        (PortUse::Listens, IPPROTO_TCP) => "listens on it",
                        (PortUse::Listens, _) => "is bound to it",
                        (PortUse::Connected, _) => "has a connection from it",
                    }
                ),
            },
            Refusal::Reserved(range) => RuleError::ReservedPort {
                name,
                protocol,
                port,
                reason: format!("it is in [nat] reserved_ports ({range})"),
            },
            Refusal::Ephemeral(range) => RuleError::ReservedPort {
                name,
                protocol,
                port,
                reason: format!(
                    "it is in the router's ephemeral range {range} ({EPHEMERAL_RANGE}), from \
                     which its own connections take their ports"
                ),
            },
        }
    }
}

/// Whether a socket of the dump is on the WAN address, and what it does.
fn on_wan(header: &InetResponseHeader, protocol: u8, wan: Option<Ipv4Addr>) -> Option<LocalSocket> {
    let id = &header.socket_id;
    if id.source_port == 0 || (protocol == IPPROTO_TCP && header.state == TCP_TIME_WAIT) {
        return None;
    }
    let local = match id.source_address {
        IpAddr::V4(addr) => addr,
        // A dual-stack socket on `::` takes IPv4 too.
        IpAddr::V6(addr) if addr == Ipv6Addr::UNSPECIFIED => Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(addr) => addr.to_ipv4_mapped()?,
    };
    if !(local.is_unspecified() || Some(local) == wan) {
        return None;
    }
    let usage = match protocol {
        IPPROTO_TCP if header.state == TCP_LISTEN => PortUse::Listens,
        IPPROTO_UDP if id.destination_port == 0 => PortUse::Listens,
        _ => PortUse::Connected,
    };
    Some(LocalSocket {
        protocol,
        port: id.source_port,
        usage,
        inode: header.inode,
    })
}

/// The TCP states a dump asks for: listeners only. The kernel then walks
/// only its listening hash; asking for connected states too walks the
/// whole established hash, shared by every namespace, which took 1.3 ms a
/// dump and made each new mapping cost ~5 ms. The router's outgoing TCP
/// connections take their ports from the ephemeral range, refused to
/// clients as a whole; UDP sockets, bound or connected, are one small
/// table, so all of them are asked for.
fn states_of(protocol: u8) -> StateFlags {
    if protocol == IPPROTO_TCP {
        StateFlags::LISTEN
    } else {
        StateFlags::all()
    }
}

/// Every socket of one family and protocol in the daemon's network
/// namespace.
/// Room for one datagram of a dump: the kernel fills each to at most a
/// page's worth of messages (or 8 KiB, whichever is larger) unless the
/// reader offers more.
const DUMP_BUFFER: usize = 32 * 1024;

fn dump(
    socket: &Socket,
    buffer: &mut Vec<u8>,
    family: u8,
    protocol: u8,
) -> io::Result<Vec<InetResponseHeader>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states: states_of(protocol),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut message = vec![0; request.buffer_len()];
    request.serialize(&mut message);
    socket.send(&message, 0)?;
    let mut found = Vec::new();
    // A dump ends with NLMSG_DONE; each datagram holds whole messages.
    loop {
        buffer.clear();
        // With MSG_TRUNC the length is the datagram's, even where it did
        // not fit (which the kernel's sizing to the reader's buffer rules
        // out; checked, not assumed).
        let length = socket.recv(buffer, libc::MSG_TRUNC)?;
        if length > DUMP_BUFFER {
            return Err(io::Error::other(format!(
                "sock_diag: a {length}-byte datagram, larger than the {DUMP_BUFFER} bytes read"
            )));
        }
        let datagram = &buffer[..length.min(buffer.len())];
        if datagram.is_empty() {
            return Err(io::Error::other("sock_diag: the kernel closed the dump"));
        }
        let mut offset = 0;
        while offset < datagram.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&datagram[offset..])
                .map_err(|error| io::Error::other(format!("sock_diag: {error}")))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    found.push(response.header);
                }
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(error) => {
                    return Err(error.to_io());
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// `ip_local_port_range`: two numbers, first and last.
fn parse_ephemeral(text: &str) -> Option<PortRange> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(first)), Some(Ok(last))) = (numbers.next(), numbers.next()) else {
        return None;
    };
    (first <= last && first > 0).then_some(PortRange { first, last })
}

/// The process that holds socket `inode`, for an error message: "sshd
/// (pid 412)", or what is known when no process of this namespace's /proc
/// has it open.
fn owner_of(inode: u32) -> String {
    let link = format!("socket:[{inode}]");
    let held_by = |pid: &str| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == link.as_str())
            })
            .then(|| {
                let command =
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                format!("{} (pid {pid})", command.trim())
            })
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|byte| byte.is_ascii_digit()))
        .find_map(|pid| held_by(&pid))
        .unwrap_or_else(|| format!("a socket of the router (inode {inode})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(protocol: u8, port: u16, usage: PortUse) -> LocalSocket {
        LocalSocket {
            protocol,
            port,
            usage,
            inode: 0,
        }
    }

    #[test]
    fn listeners_are_refused_to_all_the_rest_to_clients_only() {
        let ports = RouterPorts::new(
            [
                socket(IPPROTO_TCP, 22, PortUse::Listens),
                socket(IPPROTO_TCP, 40000, PortUse::Connected),
                socket(IPPROTO_UDP, 51820, PortUse::Listens),
            ],
            Some(PortRange {
                first: 32768,
                last: 60999,
            }),
            &["60000-61000".parse().unwrap(), "2222".parse().unwrap()],
        );
        assert!(matches!(
            ports.refusal(IPPROTO_TCP, 22, false),
            Some(Refusal::Socket(_))
        ));
        assert!(ports.refusal(IPPROTO_UDP, 22, true).is_none(), "TCP only");
        assert!(ports.refusal(IPPROTO_UDP, 51820, false).is_some());
        // The admin may use what the router only connects from, the
        // ephemeral range and the reserved list.
        assert!(ports.refusal(IPPROTO_TCP, 40000, false).is_none());
        assert!(ports.refusal(IPPROTO_TCP, 2222, false).is_none());
        assert!(matches!(
            ports.refusal(IPPROTO_TCP, 40000, true),
            Some(Refusal::Socket(_))
        ));
        assert!(matches!(
            ports.refusal(IPPROTO_UDP, 2222, true),
            Some(Refusal::Reserved(_))
        ));
        assert!(matches!(
            ports.refusal(IPPROTO_UDP, 60500, true),
            Some(Refusal::Reserved(_))
        ));
        assert!(matches!(
            ports.refusal(IPPROTO_UDP, 32768, true),
            Some(Refusal::Ephemeral(_))
        ));
        assert!(ports.refusal(IPPROTO_UDP, 6881, true).is_none());
        let error = ports
            .refusal(IPPROTO_UDP, 32768, true)
            .unwrap()
            .into_error("upnp-udp-32768", IPPROTO_UDP, 32768)
            .to_string();
        assert!(
            error.contains("32768-60999") && error.contains("UDP port 32768"),
            "{error}"
        );
    }

    #[test]
    fn the_ephemeral_range_is_read_as_the_kernel_writes_it() {
        assert_eq!(
            parse_ephemeral("32768\t60999\n"),
            Some(PortRange {
                first: 32768,
                last: 60999
            })
        );
        assert_eq!(parse_ephemeral("nonsense"), None);
    }

    /// The dump finds a listener of this process on every address.
    #[test]
    fn sock_diag_finds_a_listener() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = RouterPorts::read(Some(Ipv4Addr::new(203, 0, 113, 1)), &[]).unwrap();
        let refusal = ports.refusal(IPPROTO_TCP, port, false);
        assert!(matches!(refusal, Some(Refusal::Socket(_))), "{ports:?}");
        let error = refusal
            .unwrap()
            .into_error("web", IPPROTO_TCP, port)
            .to_string();
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(error.contains(me.trim()), "the owner is named: {error}");
        assert!(
            error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
    }
}
