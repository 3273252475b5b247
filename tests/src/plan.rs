//! The lab's address plan: every address, prefix, MAC and interface name
//! the labs, the packet harness, the benchmarks and the tests use, defined
//! once. Everything lies inside namespaces created by the harness: the WAN
//! side uses 203.0.113.0/24 and 198.51.100.0/24 (documentation ranges), the
//! LAN side 192.168.0.0/24 — none of it is reachable from, or routed to,
//! the host.
//!
//! ```text
//!  lan host                 router                    wan host
//!  192.168.0.12/24  eth0 -- lan0 192.168.0.1/24
//!  192.168.0.13/24          wan0 203.0.113.1/24 -- eth0 203.0.113.2/24
//!                           (gateway 203.0.113.254 in the packet lab)
//! ```
use std::net::Ipv4Addr;

use anyhow::Result;

use crate::netns::Netns;

/// The LAN: 192.168.0.0/24.
pub const LAN_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 0);
pub const LAN_PREFIX: u8 = 24;
/// The WAN link: 203.0.113.0/24.
pub const WAN_PREFIX: u8 = 24;

/// The router's LAN address (`lan0`).
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// The router's WAN address (`wan0`): the one every mapping is on.
pub const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The LAN host (the server of the end-to-end lab).
pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
/// The LAN host's second address (the client of the end-to-end lab).
pub const LAN_HOST2: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);
/// A LAN address with no neighbour entry (packet lab).
pub const LAN_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 99);
/// The WAN host, on the router's WAN link.
pub const WAN_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The packet lab's default gateway on the WAN link.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// A host out on the Internet, reached through the gateway.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// A second Internet host inside 198.51.100.0/24, next to `REMOTE`.
pub const REMOTE2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
/// An Internet host outside 198.51.100.0/24.
pub const OTHER_REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 33);
/// A router somewhere on the path, the source of ICMP errors in transit.
pub const HOP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Fixed MACs (locally administered).
pub const ROUTER_WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const ROUTER_LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
pub const WAN_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
pub const LAN_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const LAN_HOST2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0d];

/// The router's interfaces, and each host's one.
pub const ROUTER_LAN_IF: &str = "lan0";
pub const ROUTER_WAN_IF: &str = "wan0";
pub const HOST_IF: &str = "eth0";

/// `ADDR/24` for `ip addr add`, with the prefix of the side `addr` is on.
pub fn cidr(addr: Ipv4Addr) -> String {
    let prefix = if is_lan(addr) { LAN_PREFIX } else { WAN_PREFIX };
    format!("{addr}/{prefix}")
}

/// The LAN, `192.168.0.0/24`.
pub fn lan_cidr() -> String {
    format!("{LAN_NET}/{LAN_PREFIX}")
}

/// Whether `addr` is on the LAN.
pub fn is_lan(addr: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(LAN_PREFIX));
    u32::from(addr) & mask == u32::from(LAN_NET)
}

/// A MAC as `ip` takes it: `02:00:00:00:01:01`.
pub fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

/// The end-to-end topology of the plan: veth pairs router `lan0` -- LAN
/// host `eth0` and router `wan0` -- WAN host `eth0`, the router's two
/// addresses, both of the LAN host's with its default route via the router,
/// and the WAN host's (no route back to the LAN). `wan_label`, if given, is
/// put on `wan0` before the router's WAN address.
pub fn link_hosts(router: &Netns, lan: &Netns, wan: &Netns, wan_label: Option<&str>) -> Result<()> {
    router.veth(ROUTER_LAN_IF, lan, HOST_IF)?;
    router.veth(ROUTER_WAN_IF, wan, HOST_IF)?;
    router.ip(&["addr", "add", &cidr(ROUTER_LAN), "dev", ROUTER_LAN_IF])?;
    if let Some(label) = wan_label {
        router.ip(&["addr", "add", label, "dev", ROUTER_WAN_IF])?;
    }
    router.ip(&["addr", "add", &cidr(ROUTER_WAN), "dev", ROUTER_WAN_IF])?;
    lan.ip(&["addr", "add", &cidr(LAN_HOST), "dev", HOST_IF])?;
    lan.ip(&["addr", "add", &cidr(LAN_HOST2), "dev", HOST_IF])?;
    lan.ip(&["route", "add", "default", "via", &ROUTER_LAN.to_string()])?;
    wan.ip(&["addr", "add", &cidr(WAN_HOST), "dev", HOST_IF])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_derive_from_the_plan() {
        assert_eq!(cidr(ROUTER_LAN), "192.168.0.1/24");
        assert_eq!(cidr(ROUTER_WAN), "203.0.113.1/24");
        assert_eq!(lan_cidr(), "192.168.0.0/24");
        assert!(is_lan(LAN_HOST2) && !is_lan(WAN_HOST));
        assert_eq!(mac(ROUTER_WAN_MAC), "02:00:00:00:01:01");
    }
}
