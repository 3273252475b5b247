//! What the controller needs to know about, and set on, the router's NICs:
//! their indexes and IPv4 addresses (learned, and followed, over rtnetlink)
//! and the kernel settings the datapath relies on.
use std::{fs, net::IpAddr, net::Ipv4Addr};

use futures::{StreamExt, TryStreamExt, channel::mpsc::UnboundedReceiver};
use ipnet::Ipv4Net;
use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressMessage},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("no network interface named {0:?} (see `ip link`)")]
    NotFound(String),
    #[error(
        "interface {0} has no IPv4 address: give it one, e.g. `ip addr add 192.168.0.1/24 dev {0}`"
    )]
    NoIpv4(String),
    #[error("listing interface addresses failed: {0}")]
    List(#[source] nix::Error),
    #[error("asking the kernel for the addresses of interface index {ifindex}: {source}")]
    Netlink {
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening an rtnetlink socket: {0}")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("setting {path} to {value}: {source}")]
    Sysctl {
        path: String,
        value: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub fn ifindex(name: &str) -> Result<u32, InterfaceError> {
    if_nametoindex(name).map_err(|_| InterfaceError::NotFound(name.to_owned()))
}

/// The first IPv4 address of `name`, with its prefix.
pub fn ipv4_network(name: &str) -> Result<Ipv4Net, InterfaceError> {
    ifindex(name)?;
    for ifaddr in getifaddrs().map_err(InterfaceError::List)? {
        if ifaddr.interface_name != name {
            continue;
        }
        let (Some(address), Some(netmask)) = (ifaddr.address, ifaddr.netmask) else {
            continue;
        };
        let (Some(address), Some(netmask)) = (address.as_sockaddr_in(), netmask.as_sockaddr_in())
        else {
            continue;
        };
        let prefix_len = u32::from(netmask.ip()).leading_ones() as u8;
        let addr: Ipv4Addr = address.ip();
        if let Ok(net) = Ipv4Net::new(addr, prefix_len) {
            return Ok(net);
        }
    }
    Err(InterfaceError::NoIpv4(name.to_owned()))
}

fn sysctl(path: String, value: &'static str) -> Result<(), InterfaceError> {
    fs::write(&path, value).map_err(|source| InterfaceError::Sysctl {
        path,
        value,
        source,
    })
}

/// Kernel settings the datapath relies on:
/// - forwarding, because the kernel finishes what XDP hands it (first packets
///   while a neighbour is resolved, TTL expiry, MTU);
/// - `accept_local` and loose reverse-path filtering on the LAN NIC, because
///   a packet XDP has already translated (source = the WAN address) may be
///   passed up that NIC while the next hop's MAC is being resolved, and the
///   kernel would otherwise drop it as a martian.
pub fn prepare_router(lan: &str, wan: &str) -> Result<(), InterfaceError> {
    sysctl("/proc/sys/net/ipv4/conf/all/forwarding".into(), "1")?;
    for nic in [lan, wan] {
        sysctl(format!("/proc/sys/net/ipv4/conf/{nic}/forwarding"), "1")?;
    }
    sysctl(format!("/proc/sys/net/ipv4/conf/{lan}/accept_local"), "1")?;
    sysctl(format!("/proc/sys/net/ipv4/conf/{lan}/rp_filter"), "2")?;
    Ok(())
}

/// Undoes the forwarding of `prepare_router` on both NICs, for `natctl
/// down`: with the datapath gone nothing translates, and a kernel that
/// still forwarded would send LAN hosts' packets out of the WAN NIC with
/// their LAN source addresses.
pub fn stop_forwarding(lan: &str, wan: &str) -> Result<(), InterfaceError> {
    for nic in [lan, wan] {
        sysctl(format!("/proc/sys/net/ipv4/conf/{nic}/forwarding"), "0")?;
    }
    Ok(())
}

/// `stop_forwarding` for a datapath pinned under `pin_dir` without its
/// daemon (`natctl down` then has no NIC names): its `CONFIG` names the
/// NICs by index, and they are only taken to be this namespace's when the
/// WAN one holds the configured WAN address. Returns whether it did.
pub fn stop_forwarding_pinned(pin_dir: &std::path::Path) -> bool {
    use aya::maps::{Array, Map, MapData};
    let Ok(map) = MapData::from_pin(pin_dir.join(nat_common::maps::CONFIG)) else {
        return false;
    };
    let Ok(config) = Array::<_, nat_common::NatConfig>::try_from(Map::Array(map)) else {
        return false;
    };
    let Ok(config) = config.get(&0, 0) else {
        return false;
    };
    let name = |index| {
        nix::net::if_::if_indextoname(index)
            .ok()
            .and_then(|name| name.into_string().ok())
    };
    let (Some(wan), Some(lan)) = (name(config.wan_ifindex), name(config.lan_ifindex)) else {
        return false;
    };
    let wan_addr = std::net::Ipv4Addr::from(config.wan_addr);
    let ours = nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
        addrs.any(|ifaddr| {
            ifaddr.interface_name == wan
                && ifaddr
                    .address
                    .and_then(|addr| addr.as_sockaddr_in().map(|sin| sin.ip()))
                    == Some(wan_addr)
        })
    });
    ours && stop_forwarding(&lan, &wan).is_ok()
}

/// An rtnetlink handle, with its connection running on the current tokio
/// runtime.
pub fn netlink() -> Result<Handle, InterfaceError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(InterfaceError::NetlinkSocket)?;
    tokio::spawn(connection);
    Ok(handle)
}

fn ipv4_of(message: &AddressMessage) -> Option<Ipv4Net> {
    if message.header.family != AddressFamily::Inet {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // a point-to-point link (PPPoE WANs), and the same otherwise.
    let local = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            AddressAttribute::Local(IpAddr::V4(addr)) => Some(*addr),
            _ => None,
        });
    let address = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            AddressAttribute::Address(IpAddr::V4(addr)) => Some(*addr),
            _ => None,
        });
    Ipv4Net::new(local.or(address)?, message.header.prefix_len).ok()
}

/// The first IPv4 address of interface `ifindex`, with its prefix; `None`
/// when it has none (yet: a WAN waiting for DHCP).
pub async fn ipv4_network_of(
    handle: &Handle,
    ifindex: u32,
) -> Result<Option<Ipv4Net>, InterfaceError> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(|source| InterfaceError::Netlink { ifindex, source })?
    {
        if message.header.index == ifindex
            && let Some(net) = ipv4_of(&message)
        {
            return Ok(Some(net));
        }
    }
    Ok(None)
}

/// A stream that yields a batch of the kernel's reports whenever a route,
/// a routing rule, a nexthop, a neighbour entry, a link or an IPv4
/// address changes: what may change the datapath's cached routes.
pub fn forwarding_changes() -> Result<impl futures::Stream<Item = usize> + Unpin, InterfaceError> {
    let (connection, _, messages): (_, _, UnboundedReceiver<_>) =
        rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv4Rule,
            MulticastGroup::Nexthop,
            MulticastGroup::Neigh,
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
        ])
        .map_err(InterfaceError::NetlinkSocket)?;
    tokio::spawn(connection);
    // Whatever arrived together is one change to act on: a route table
    // reload is thousands of reports.
    Ok(messages.ready_chunks(1024).map(|batch| batch.len()))
}

/// A stream that yields whenever an IPv4 address is added or removed on
/// any interface; the caller re-reads what it cares about.
pub fn address_changes() -> Result<impl futures::Stream<Item = ()> + Unpin, InterfaceError> {
    let (connection, _, messages): (_, _, UnboundedReceiver<_>) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Ifaddr])
            .map_err(InterfaceError::NetlinkSocket)?;
    tokio::spawn(connection);
    Ok(messages.map(|_| ()))
}
