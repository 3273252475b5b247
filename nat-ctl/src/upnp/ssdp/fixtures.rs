//! What the tests of more than one file share: a device identity, a
//! config for it, and searches as control points send them.
use std::net::Ipv4Addr;

use super::{DEFAULT_MAX_AGE, DEFAULT_NOTIFY_INTERVAL, SsdpConfig};
use crate::upnp::{Identity, IgdVersion};

pub(super) const UPNPC_SEARCH: &[u8] = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\n\r\n";

pub(super) fn identity() -> Identity {
    Identity {
        uuids: [
            "3b9c1e2a-0000-4000-8000-000000000001".to_owned(),
            "3b9c1e2a-0000-4000-8000-000000000002".to_owned(),
            "3b9c1e2a-0000-4000-8000-000000000003".to_owned(),
        ],
        friendly_name: "natctl gateway".to_owned(),
        boot_id: 7,
        config_id: 3,
        server: "Linux/6.12 UPnP/2.0 natctl/0.1".to_owned(),
    }
}

pub(super) fn search(st: &str, mx: Option<&str>) -> Vec<u8> {
    let mut text = format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nST: {st}\r\n"
    );
    if let Some(mx) = mx {
        text.push_str(&format!("MX: {mx}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

pub(super) fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

pub(super) fn config() -> SsdpConfig {
    SsdpConfig {
        lan_ifname: "lan0".to_owned(),
        lan_addr: Ipv4Addr::new(192, 168, 77, 1),
        lan_net: "192.168.77.0/24".parse().unwrap(),
        location: "http://192.168.77.1:5000/rootDesc.xml".to_owned(),
        identity: identity(),
        igd: IgdVersion::V2,
        max_age: DEFAULT_MAX_AGE,
        notify_interval: DEFAULT_NOTIFY_INTERVAL,
    }
}
