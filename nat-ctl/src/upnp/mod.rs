//! UPnP IGD on the LAN side: SSDP discovery (`ssdp`), device and service
//! descriptions (`description`), SOAP control (`soap`) with its fault codes
//! (`error`), the actions themselves (`igd`), over rules in memory for the
//! tests and fuzzing (`memory`), and their HTTP server (`http`);
//! every document is written with one XML writer (`xml`).
//!
//! UPnP mappings are ordinary forwarding rules carrying a lease
//! (`rules::UpnpLease`), so they show in `natctl list` and `natctl table`
//! and can be removed from the CLI.
pub mod description;
pub mod error;
pub mod http;
pub mod igd;
pub mod memory;
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

/// The root descriptions' paths on the UPnP HTTP server: fixed, since
/// SSDP's LOCATION names one of them.
pub mod paths {
    pub const ROOT_DESCRIPTION: &str = "/rootDesc.xml";
    /// The same description forced to IGDv1 / IGDv2, whatever the default.
    pub const ROOT_DESCRIPTION_V1: &str = "/igd1/rootDesc.xml";
    pub const ROOT_DESCRIPTION_V2: &str = "/igd2/rootDesc.xml";
}

/// The services' SCPD, control and event paths, under a token drawn at
/// each start of the IGD: only who has read the description (a UPnP
/// client on the LAN) knows them. A web page that posts blindly to a
/// well-known control URL (`/ctl/IPConn`, Filet-o-Firewall) gets 404, and
/// cannot read the description itself: it is another origin's, and CORS
/// is never granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePaths {
    pub wan_ip_scpd: String,
    /// The IGDv1 SCPD of WANIPConnection:1, whatever the default.
    pub wan_ip_scpd_v1: String,
    pub wan_common_scpd: String,
    pub wan_ip_control: String,
    pub wan_common_control: String,
    pub wan_ip_events: String,
    pub wan_common_events: String,
}

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A root description; `None`: the version the request's client gets.
    RootDescription(Option<IgdVersion>),
    WanIpScpd(Option<IgdVersion>),
    WanCommonScpd,
    /// The control URL of a service (its base URN).
    Control(&'static str),
    Events,
}

impl ServicePaths {
    /// Paths under a fresh random token (128 bits).
    pub fn random() -> Self {
        Self::with_token(&format!("{:032x}", rand::random::<u128>()))
    }

    pub fn with_token(token: &str) -> Self {
        Self {
            wan_ip_scpd: format!("/{token}/WANIPCn.xml"),
            wan_ip_scpd_v1: format!("/{token}/igd1/WANIPCn.xml"),
            wan_common_scpd: format!("/{token}/WANCfg.xml"),
            wan_ip_control: format!("/ctl/{token}/IPConn"),
            wan_common_control: format!("/ctl/{token}/CmnIfCfg"),
            wan_ip_events: format!("/evt/{token}/IPConn"),
            wan_common_events: format!("/evt/{token}/CmnIfCfg"),
        }
    }

    pub fn resource(&self, path: &str) -> Option<Resource> {
        Some(match path {
            paths::ROOT_DESCRIPTION => Resource::RootDescription(None),
            paths::ROOT_DESCRIPTION_V1 => Resource::RootDescription(Some(IgdVersion::V1)),
            paths::ROOT_DESCRIPTION_V2 => Resource::RootDescription(Some(IgdVersion::V2)),
            _ if path == self.wan_ip_scpd => Resource::WanIpScpd(None),
            _ if path == self.wan_ip_scpd_v1 => Resource::WanIpScpd(Some(IgdVersion::V1)),
            _ if path == self.wan_common_scpd => Resource::WanCommonScpd,
            _ if path == self.wan_ip_control => Resource::Control(SERVICE_WAN_IP),
            _ if path == self.wan_common_control => Resource::Control(SERVICE_WAN_COMMON),
            _ if path == self.wan_ip_events || path == self.wan_common_events => Resource::Events,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_paths_differ_per_start_and_name_their_resources() {
        let (one, two) = (ServicePaths::random(), ServicePaths::random());
        assert_ne!(one, two);
        assert!(one.wan_ip_control.starts_with("/ctl/") && one.wan_ip_control.len() > 40);
        assert_eq!(
            one.resource(&one.wan_ip_control),
            Some(Resource::Control(SERVICE_WAN_IP))
        );
        assert_eq!(one.resource(&two.wan_ip_control), None);
        assert_eq!(one.resource("/ctl/IPConn"), None);
        assert_eq!(one.resource("/WANIPCn.xml"), None);
        assert_eq!(
            two.resource("/rootDesc.xml"),
            Some(Resource::RootDescription(None))
        );
    }
}
