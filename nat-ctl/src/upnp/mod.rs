//! UPnP IGD on the LAN side: SSDP discovery (`ssdp`), device and service
//! descriptions (`description`), SOAP control (`soap`) with its fault codes
//! (`error`), the actions themselves (`igd`) and their HTTP server (`http`);
//! every document is written with one XML writer (`xml`).
//!
//! UPnP mappings are ordinary forwarding rules carrying a lease
//! (`rules::UpnpLease`), so they show in `natctl list` and `natctl table`
//! and can be removed from the CLI.
pub mod description;
pub mod error;
pub mod http;
pub mod igd;
pub mod service;
pub mod soap;
pub mod ssdp;
mod xml;

/// Which IGD the descriptions and SSDP announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgdVersion {
    V1,
    V2,
}

impl IgdVersion {
    pub fn number(self) -> u8 {
        match self {
            IgdVersion::V1 => 1,
            IgdVersion::V2 => 2,
        }
    }
}

pub const DEVICE_IGD: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice";
pub const DEVICE_WAN: &str = "urn:schemas-upnp-org:device:WANDevice";
pub const DEVICE_WAN_CONNECTION: &str = "urn:schemas-upnp-org:device:WANConnectionDevice";
pub const SERVICE_WAN_IP: &str = "urn:schemas-upnp-org:service:WANIPConnection";
pub const SERVICE_WAN_COMMON: &str = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig";

/// The versioned type of a device or service under an IGD version: in
/// IGDv2 the three devices and WANIPConnection are version 2, while
/// WANCommonInterfaceConfig stays version 1 in both.
pub fn type_urn(base: &str, igd: IgdVersion) -> String {
    let version = if base == SERVICE_WAN_COMMON {
        1
    } else {
        igd.number()
    };
    format!("{base}:{version}")
}

/// What identifies this gateway to UPnP clients: stable device UUIDs (the
/// same across restarts), and the boot and configuration ids SSDP carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Root device (InternetGatewayDevice), WANDevice, WANConnectionDevice.
    pub uuids: [String; 3],
    pub friendly_name: String,
    /// `BOOTID.UPNP.ORG`: changes every time the daemon starts.
    pub boot_id: u32,
    /// `CONFIGID.UPNP.ORG`: changes when the descriptions change.
    pub config_id: u32,
    /// The SERVER header: `OS/version UPnP/2.0 product/version`.
    pub server: String,
}

/// Service control and description paths on the UPnP HTTP server.
pub mod paths {
    pub const ROOT_DESCRIPTION: &str = "/rootDesc.xml";
    /// The same description forced to IGDv1 / IGDv2, whatever the default.
    pub const ROOT_DESCRIPTION_V1: &str = "/igd1/rootDesc.xml";
    pub const ROOT_DESCRIPTION_V2: &str = "/igd2/rootDesc.xml";
    pub const WAN_IP_SCPD: &str = "/WANIPCn.xml";
    pub const WAN_IP_SCPD_V1: &str = "/igd1/WANIPCn.xml";
    pub const WAN_COMMON_SCPD: &str = "/WANCfg.xml";
    pub const WAN_IP_CONTROL: &str = "/ctl/IPConn";
    pub const WAN_COMMON_CONTROL: &str = "/ctl/CmnIfCfg";
    pub const WAN_IP_EVENTS: &str = "/evt/IPConn";
    pub const WAN_COMMON_EVENTS: &str = "/evt/CmnIfCfg";
}
