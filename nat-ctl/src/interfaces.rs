//! What the controller needs to know about, and set on, the router's NICs.
use std::{fs, net::Ipv4Addr};

use ipnet::Ipv4Net;
use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};

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
