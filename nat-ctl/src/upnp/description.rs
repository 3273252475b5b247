//! UPnP device and service descriptions (UDA 1.0/1.1, IGD v1 and v2): the
//! root device description, the SCPDs of WANIPConnection and
//! WANCommonInterfaceConfig, and the IGDv2 `PortMappingList` document.
//!
//! The SCPDs list exactly the actions the gateway implements; the action
//! names are also available as [`wan_ip_action_names`] and
//! [`wan_common_action_names`] so the control server can answer `401 Invalid
//! Action` for anything else.

use super::xml::XmlDoc;
use super::{
    DEVICE_IGD, DEVICE_WAN, DEVICE_WAN_CONNECTION, Identity, IgdVersion, SERVICE_WAN_COMMON,
    SERVICE_WAN_IP, ServicePaths, type_urn,
};

/// `manufacturer` of every device.
pub const MANUFACTURER: &str = "nat-router";
/// `modelName` of the root device.
pub const MODEL_NAME: &str = "nat-router IGD";
pub const SERVICE_ID_WAN_COMMON: &str = "urn:upnp-org:serviceId:WANCommonIFC1";
pub const SERVICE_ID_WAN_IP: &str = "urn:upnp-org:serviceId:WANIPConn1";
/// Namespace of the IGDv2 `PortMappingList` document (`NewPortListing`).
pub const PORT_MAPPING_LIST_NS: &str = "urn:schemas-upnp-org:gw:WANIPConnection";
const PORT_MAPPING_LIST_SCHEMA: &str =
    "urn:schemas-upnp-org:gw:WANIPConnection http://www.upnp.org/schemas/gw/WANIPConnection-v2.xsd";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
const DEVICE_NS: &str = "urn:schemas-upnp-org:device-1-0";
const SERVICE_NS: &str = "urn:schemas-upnp-org:service-1-0";

fn spec_version(doc: &mut XmlDoc, igd: IgdVersion) {
    doc.open("specVersion", &[]);
    doc.text("major", "1");
    doc.text("minor", if igd == IgdVersion::V2 { "1" } else { "0" });
    doc.close("specVersion");
}

struct ServiceEntry<'a> {
    service_type: String,
    service_id: &'a str,
    scpd: &'a str,
    control: &'a str,
    events: &'a str,
}

fn device_header(doc: &mut XmlDoc, device_type: &str, friendly_name: &str, model: &str, udn: &str) {
    doc.text("deviceType", device_type);
    doc.text("friendlyName", friendly_name);
    doc.text("manufacturer", MANUFACTURER);
    doc.text("modelDescription", model);
    doc.text("modelName", model);
    doc.text("modelNumber", env!("CARGO_PKG_VERSION"));
    doc.text("UDN", &format!("uuid:{udn}"));
}

fn service_list(doc: &mut XmlDoc, service: &ServiceEntry<'_>) {
    doc.open("serviceList", &[]);
    doc.open("service", &[]);
    doc.text("serviceType", &service.service_type);
    doc.text("serviceId", service.service_id);
    doc.text("SCPDURL", service.scpd);
    doc.text("controlURL", service.control);
    doc.text("eventSubURL", service.events);
    doc.close("service");
    doc.close("serviceList");
}

/// The root device description served at `paths::ROOT_DESCRIPTION` (and
/// its forced-version twins): InternetGatewayDevice:N > WANDevice:N >
/// WANConnectionDevice:N with WANCommonInterfaceConfig:1 and
/// WANIPConnection:N. `url_base` (`http://192.168.0.1:5000`) is written
/// as URLBase for IGDv1 only (deprecated in UDA 1.1); all URLs in the
/// description are absolute paths, resolved against the description's own
/// URL. The UUIDs are written as `uuid:{uuids[i]}`. No icons, no
/// presentationURL (the gateway has no web interface).
pub fn root_description(
    identity: &Identity,
    igd: IgdVersion,
    url_base: &str,
    paths: &ServicePaths,
) -> String {
    let mut doc = XmlDoc::new(true, "\n");
    let config_id = identity.config_id.to_string();
    doc.open(
        "root",
        &[("xmlns", DEVICE_NS), ("configId", config_id.as_str())],
    );
    spec_version(&mut doc, igd);
    if igd == IgdVersion::V1 {
        doc.text("URLBase", url_base);
    }

    doc.open("device", &[]);
    device_header(
        &mut doc,
        &type_urn(DEVICE_IGD, igd),
        &identity.friendly_name,
        MODEL_NAME,
        &identity.uuids[0],
    );
    doc.open("deviceList", &[]);

    doc.open("device", &[]);
    device_header(
        &mut doc,
        &type_urn(DEVICE_WAN, igd),
        "WANDevice",
        "WANDevice",
        &identity.uuids[1],
    );
    service_list(
        &mut doc,
        &ServiceEntry {
            service_type: type_urn(SERVICE_WAN_COMMON, igd),
            service_id: SERVICE_ID_WAN_COMMON,
            scpd: &paths.wan_common_scpd,
            control: &paths.wan_common_control,
            events: &paths.wan_common_events,
        },
    );
    doc.open("deviceList", &[]);

    doc.open("device", &[]);
    device_header(
        &mut doc,
        &type_urn(DEVICE_WAN_CONNECTION, igd),
        "WANConnectionDevice",
        "WANConnectionDevice",
        &identity.uuids[2],
    );
    service_list(
        &mut doc,
        &ServiceEntry {
            service_type: type_urn(SERVICE_WAN_IP, igd),
            service_id: SERVICE_ID_WAN_IP,
            scpd: match igd {
                IgdVersion::V1 => &paths.wan_ip_scpd_v1,
                IgdVersion::V2 => &paths.wan_ip_scpd,
            },
            control: &paths.wan_ip_control,
            events: &paths.wan_ip_events,
        },
    );
    doc.close("device");

    doc.close("deviceList");
    doc.close("device");
    doc.close("deviceList");
    doc.close("device");
    doc.close("root");
    doc.finish("\n")
}

// ---------------------------------------------------------------------------
// Service descriptions

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

/// `(argument name, direction, related state variable)`.
type Arg = (&'static str, Dir, &'static str);

struct Action {
    name: &'static str,
    args: &'static [Arg],
}

struct StateVar {
    name: &'static str,
    data_type: &'static str,
    send_events: bool,
    allowed: &'static [&'static str],
    range: Option<(u32, u32)>,
}

const fn var(name: &'static str, data_type: &'static str, send_events: bool) -> StateVar {
    StateVar {
        name,
        data_type,
        send_events,
        allowed: &[],
        range: None,
    }
}

const fn var_list(
    name: &'static str,
    send_events: bool,
    allowed: &'static [&'static str],
) -> StateVar {
    StateVar {
        name,
        data_type: "string",
        send_events,
        allowed,
        range: None,
    }
}

const fn var_range(name: &'static str, data_type: &'static str, min: u32, max: u32) -> StateVar {
    StateVar {
        name,
        data_type,
        send_events: false,
        allowed: &[],
        range: Some((min, max)),
    }
}

use Dir::{In, Out};

const MAPPING_KEY_IN: [Arg; 3] = [
    ("NewRemoteHost", In, "RemoteHost"),
    ("NewExternalPort", In, "ExternalPort"),
    ("NewProtocol", In, "PortMappingProtocol"),
];

const ADD_PORT_MAPPING: Action = Action {
    name: "AddPortMapping",
    args: &[
        MAPPING_KEY_IN[0],
        MAPPING_KEY_IN[1],
        MAPPING_KEY_IN[2],
        ("NewInternalPort", In, "InternalPort"),
        ("NewInternalClient", In, "InternalClient"),
        ("NewEnabled", In, "PortMappingEnabled"),
        ("NewPortMappingDescription", In, "PortMappingDescription"),
        ("NewLeaseDuration", In, "PortMappingLeaseDuration"),
    ],
};

const ADD_ANY_PORT_MAPPING: Action = Action {
    name: "AddAnyPortMapping",
    args: &[
        MAPPING_KEY_IN[0],
        MAPPING_KEY_IN[1],
        MAPPING_KEY_IN[2],
        ("NewInternalPort", In, "InternalPort"),
        ("NewInternalClient", In, "InternalClient"),
        ("NewEnabled", In, "PortMappingEnabled"),
        ("NewPortMappingDescription", In, "PortMappingDescription"),
        ("NewLeaseDuration", In, "PortMappingLeaseDuration"),
        ("NewReservedPort", Out, "ExternalPort"),
    ],
};

const DELETE_PORT_MAPPING: Action = Action {
    name: "DeletePortMapping",
    args: &MAPPING_KEY_IN,
};

const DELETE_PORT_MAPPING_RANGE: Action = Action {
    name: "DeletePortMappingRange",
    args: &[
        ("NewStartPort", In, "ExternalPort"),
        ("NewEndPort", In, "ExternalPort"),
        ("NewProtocol", In, "PortMappingProtocol"),
        ("NewManage", In, "A_ARG_TYPE_Manage"),
    ],
};

const GET_SPECIFIC_PORT_MAPPING_ENTRY: Action = Action {
    name: "GetSpecificPortMappingEntry",
    args: &[
        MAPPING_KEY_IN[0],
        MAPPING_KEY_IN[1],
        MAPPING_KEY_IN[2],
        ("NewInternalPort", Out, "InternalPort"),
        ("NewInternalClient", Out, "InternalClient"),
        ("NewEnabled", Out, "PortMappingEnabled"),
        ("NewPortMappingDescription", Out, "PortMappingDescription"),
        ("NewLeaseDuration", Out, "PortMappingLeaseDuration"),
    ],
};

const GET_GENERIC_PORT_MAPPING_ENTRY: Action = Action {
    name: "GetGenericPortMappingEntry",
    args: &[
        ("NewPortMappingIndex", In, "PortMappingNumberOfEntries"),
        ("NewRemoteHost", Out, "RemoteHost"),
        ("NewExternalPort", Out, "ExternalPort"),
        ("NewProtocol", Out, "PortMappingProtocol"),
        ("NewInternalPort", Out, "InternalPort"),
        ("NewInternalClient", Out, "InternalClient"),
        ("NewEnabled", Out, "PortMappingEnabled"),
        ("NewPortMappingDescription", Out, "PortMappingDescription"),
        ("NewLeaseDuration", Out, "PortMappingLeaseDuration"),
    ],
};

const GET_LIST_OF_PORT_MAPPINGS: Action = Action {
    name: "GetListOfPortMappings",
    args: &[
        ("NewStartPort", In, "ExternalPort"),
        ("NewEndPort", In, "ExternalPort"),
        ("NewProtocol", In, "PortMappingProtocol"),
        ("NewManage", In, "A_ARG_TYPE_Manage"),
        ("NewNumberOfPorts", In, "PortMappingNumberOfEntries"),
        ("NewPortListing", Out, "A_ARG_TYPE_PortListing"),
    ],
};

const GET_EXTERNAL_IP_ADDRESS: Action = Action {
    name: "GetExternalIPAddress",
    args: &[("NewExternalIPAddress", Out, "ExternalIPAddress")],
};

const GET_STATUS_INFO: Action = Action {
    name: "GetStatusInfo",
    args: &[
        ("NewConnectionStatus", Out, "ConnectionStatus"),
        ("NewLastConnectionError", Out, "LastConnectionError"),
        ("NewUptime", Out, "Uptime"),
    ],
};

const GET_CONNECTION_TYPE_INFO: Action = Action {
    name: "GetConnectionTypeInfo",
    args: &[
        ("NewConnectionType", Out, "ConnectionType"),
        ("NewPossibleConnectionTypes", Out, "PossibleConnectionTypes"),
    ],
};

const GET_NAT_RSIP_STATUS: Action = Action {
    name: "GetNATRSIPStatus",
    args: &[
        ("NewRSIPAvailable", Out, "RSIPAvailable"),
        ("NewNATEnabled", Out, "NATEnabled"),
    ],
};

const WAN_IP_ACTIONS_V1: [&Action; 8] = [
    &ADD_PORT_MAPPING,
    &DELETE_PORT_MAPPING,
    &GET_SPECIFIC_PORT_MAPPING_ENTRY,
    &GET_GENERIC_PORT_MAPPING_ENTRY,
    &GET_EXTERNAL_IP_ADDRESS,
    &GET_STATUS_INFO,
    &GET_CONNECTION_TYPE_INFO,
    &GET_NAT_RSIP_STATUS,
];

const WAN_IP_ACTIONS_V2_ONLY: [&Action; 3] = [
    &ADD_ANY_PORT_MAPPING,
    &DELETE_PORT_MAPPING_RANGE,
    &GET_LIST_OF_PORT_MAPPINGS,
];

const CONNECTION_TYPES: &[&str] = &["Unconfigured", "IP_Routed", "IP_Bridged"];

const WAN_IP_VARS: &[StateVar] = &[
    var_list("ConnectionType", false, CONNECTION_TYPES),
    var_list("PossibleConnectionTypes", true, CONNECTION_TYPES),
    var_list(
        "ConnectionStatus",
        true,
        &[
            "Unconfigured",
            "Connecting",
            "Connected",
            "PendingDisconnect",
            "Disconnecting",
            "Disconnected",
        ],
    ),
    var("Uptime", "ui4", false),
    var_list(
        "LastConnectionError",
        false,
        &[
            "ERROR_NONE",
            "ERROR_COMMAND_ABORTED",
            "ERROR_NOT_ENABLED_FOR_INTERNET",
            "ERROR_USER_DISCONNECT",
            "ERROR_ISP_DISCONNECT",
            "ERROR_IDLE_DISCONNECT",
            "ERROR_FORCED_DISCONNECT",
            "ERROR_NO_CARRIER",
            "ERROR_IP_CONFIGURATION",
            "ERROR_UNKNOWN",
        ],
    ),
    var("RSIPAvailable", "boolean", false),
    var("NATEnabled", "boolean", false),
    var("ExternalIPAddress", "string", true),
    var("PortMappingNumberOfEntries", "ui2", true),
    var("PortMappingEnabled", "boolean", false),
    var("RemoteHost", "string", false),
    var("ExternalPort", "ui2", false),
    var_list("PortMappingProtocol", false, &["TCP", "UDP"]),
    var("InternalClient", "string", false),
    var("PortMappingDescription", "string", false),
];

const WAN_IP_VARS_V1: &[StateVar] = &[
    var("PortMappingLeaseDuration", "ui4", false),
    var("InternalPort", "ui2", false),
];

const WAN_IP_VARS_V2: &[StateVar] = &[
    var_range("PortMappingLeaseDuration", "ui4", 0, 604_800),
    var_range("InternalPort", "ui2", 1, 65_535),
    var("SystemUpdateID", "ui4", true),
    var("A_ARG_TYPE_Manage", "boolean", false),
    var("A_ARG_TYPE_PortListing", "string", false),
];

fn wan_ip_actions(igd: IgdVersion) -> Vec<&'static Action> {
    let mut actions = WAN_IP_ACTIONS_V1.to_vec();
    if igd == IgdVersion::V2 {
        actions.extend(WAN_IP_ACTIONS_V2_ONLY);
    }
    actions
}

/// The WANIPConnection actions implemented (and described) under `igd`.
pub fn wan_ip_action_names(igd: IgdVersion) -> Vec<&'static str> {
    wan_ip_actions(igd).iter().map(|a| a.name).collect()
}

const GET_COMMON_LINK_PROPERTIES: Action = Action {
    name: "GetCommonLinkProperties",
    args: &[
        ("NewWANAccessType", Out, "WANAccessType"),
        (
            "NewLayer1UpstreamMaxBitRate",
            Out,
            "Layer1UpstreamMaxBitRate",
        ),
        (
            "NewLayer1DownstreamMaxBitRate",
            Out,
            "Layer1DownstreamMaxBitRate",
        ),
        ("NewPhysicalLinkStatus", Out, "PhysicalLinkStatus"),
    ],
};

const WAN_COMMON_ACTIONS: [&Action; 5] = [
    &GET_COMMON_LINK_PROPERTIES,
    &Action {
        name: "GetTotalBytesSent",
        args: &[("NewTotalBytesSent", Out, "TotalBytesSent")],
    },
    &Action {
        name: "GetTotalBytesReceived",
        args: &[("NewTotalBytesReceived", Out, "TotalBytesReceived")],
    },
    &Action {
        name: "GetTotalPacketsSent",
        args: &[("NewTotalPacketsSent", Out, "TotalPacketsSent")],
    },
    &Action {
        name: "GetTotalPacketsReceived",
        args: &[("NewTotalPacketsReceived", Out, "TotalPacketsReceived")],
    },
];

const WAN_COMMON_VARS: &[StateVar] = &[
    var_list(
        "WANAccessType",
        false,
        &["DSL", "POTS", "Cable", "Ethernet"],
    ),
    var("Layer1UpstreamMaxBitRate", "ui4", false),
    var("Layer1DownstreamMaxBitRate", "ui4", false),
    var_list(
        "PhysicalLinkStatus",
        true,
        &["Up", "Down", "Initializing", "Unavailable"],
    ),
    var("TotalBytesSent", "ui4", false),
    var("TotalBytesReceived", "ui4", false),
    var("TotalPacketsSent", "ui4", false),
    var("TotalPacketsReceived", "ui4", false),
];

/// The WANCommonInterfaceConfig actions implemented (and described).
pub fn wan_common_action_names() -> Vec<&'static str> {
    WAN_COMMON_ACTIONS.iter().map(|a| a.name).collect()
}

fn scpd(igd: IgdVersion, actions: &[&Action], vars: &[&StateVar]) -> String {
    let mut doc = XmlDoc::new(true, "\n");
    doc.open("scpd", &[("xmlns", SERVICE_NS)]);
    spec_version(&mut doc, igd);
    doc.open("actionList", &[]);
    for action in actions {
        doc.open("action", &[]);
        doc.text("name", action.name);
        if !action.args.is_empty() {
            doc.open("argumentList", &[]);
            for (name, dir, related) in action.args {
                doc.open("argument", &[]);
                doc.text("name", name);
                doc.text("direction", if *dir == In { "in" } else { "out" });
                doc.text("relatedStateVariable", related);
                doc.close("argument");
            }
            doc.close("argumentList");
        }
        doc.close("action");
    }
    doc.close("actionList");
    doc.open("serviceStateTable", &[]);
    for v in vars {
        let send_events = if v.send_events { "yes" } else { "no" };
        doc.open("stateVariable", &[("sendEvents", send_events)]);
        doc.text("name", v.name);
        doc.text("dataType", v.data_type);
        if !v.allowed.is_empty() {
            doc.open("allowedValueList", &[]);
            for value in v.allowed {
                doc.text("allowedValue", value);
            }
            doc.close("allowedValueList");
        }
        if let Some((min, max)) = v.range {
            doc.open("allowedValueRange", &[]);
            doc.text("minimum", &min.to_string());
            doc.text("maximum", &max.to_string());
            doc.close("allowedValueRange");
        }
        doc.close("stateVariable");
    }
    doc.close("serviceStateTable");
    doc.close("scpd");
    doc.finish("\n")
}

/// The SCPD of WANIPConnection:N (`ServicePaths::wan_ip_scpd`, or
/// `wan_ip_scpd_v1` for IGDv1): exactly the actions of
/// [`wan_ip_action_names`], with the state variables they refer to plus the
/// evented ones.
pub fn wan_ip_scpd(igd: IgdVersion) -> String {
    let mut vars: Vec<&StateVar> = WAN_IP_VARS.iter().collect();
    vars.extend(match igd {
        IgdVersion::V1 => WAN_IP_VARS_V1.iter(),
        IgdVersion::V2 => WAN_IP_VARS_V2.iter(),
    });
    scpd(igd, &wan_ip_actions(igd), &vars)
}

/// The SCPD of WANCommonInterfaceConfig:1 (`ServicePaths::wan_common_scpd`), the
/// same under both IGD versions.
pub fn wan_common_scpd() -> String {
    let vars: Vec<&StateVar> = WAN_COMMON_VARS.iter().collect();
    scpd(IgdVersion::V1, &WAN_COMMON_ACTIONS, &vars)
}

// ---------------------------------------------------------------------------
// IGDv2 PortMappingList

/// One entry of the IGDv2 `PortMappingList` (`GetListOfPortMappings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMappingEntry {
    /// `""` for the wildcard.
    pub remote_host: String,
    pub external_port: u16,
    /// `"TCP"` or `"UDP"`.
    pub protocol: &'static str,
    pub internal_port: u16,
    pub internal_client: String,
    pub enabled: bool,
    pub description: String,
    /// Remaining lease, seconds (0: permanent).
    pub lease_secs: u32,
}

/// The IGDv2 `<p:PortMappingList>` document returned in `NewPortListing`
/// (the SOAP response escapes it as the argument's text).
pub fn port_mapping_list(entries: &[PortMappingEntry]) -> String {
    let mut doc = XmlDoc::new(true, "\n");
    doc.open(
        "p:PortMappingList",
        &[
            ("xmlns:p", PORT_MAPPING_LIST_NS),
            ("xmlns:xsi", XSI_NS),
            ("xsi:schemaLocation", PORT_MAPPING_LIST_SCHEMA),
        ],
    );
    for entry in entries {
        doc.open("p:PortMappingEntry", &[]);
        doc.text("p:NewRemoteHost", &entry.remote_host);
        doc.text("p:NewExternalPort", &entry.external_port.to_string());
        doc.text("p:NewProtocol", entry.protocol);
        doc.text("p:NewInternalPort", &entry.internal_port.to_string());
        doc.text("p:NewInternalClient", &entry.internal_client);
        doc.text("p:NewEnabled", if entry.enabled { "1" } else { "0" });
        doc.text("p:NewDescription", &entry.description);
        doc.text("p:NewLeaseTime", &entry.lease_secs.to_string());
        doc.close("p:PortMappingEntry");
    }
    doc.close("p:PortMappingList");
    doc.finish("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::XmlVersion;
    use quick_xml::events::{BytesStart, Event};
    use quick_xml::name::{Namespace, ResolveResult};
    use quick_xml::reader::NsReader;

    /// A parsed element: namespace, local name, attributes, text, children.
    #[derive(Debug)]
    struct Node {
        ns: Option<String>,
        name: String,
        attrs: Vec<(String, String)>,
        text: String,
        children: Vec<Node>,
    }

    impl Node {
        fn child(&self, name: &str) -> &Node {
            self.children
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no <{name}> in <{}>", self.name))
        }
        fn all(&self, name: &str) -> Vec<&Node> {
            self.children.iter().filter(|c| c.name == name).collect()
        }
        fn text_of(&self, name: &str) -> &str {
            &self.child(name).text
        }
        fn has(&self, name: &str) -> bool {
            self.children.iter().any(|c| c.name == name)
        }
        fn attr(&self, name: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn node(ns: ResolveResult<'_>, e: &BytesStart<'_>) -> Node {
        let ns = match ns {
            ResolveResult::Bound(Namespace(n)) => Some(n.to_string()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => panic!("unknown prefix {p}"),
        };
        let attrs = e
            .attributes()
            .map(|a| {
                let a = a.expect("attribute");
                let value = a
                    .normalized_value(XmlVersion::Implicit1_0)
                    .expect("attribute value")
                    .into_owned();
                (a.key.as_ref().to_string(), value)
            })
            .collect();
        Node {
            ns,
            name: e.local_name().as_ref().to_string(),
            attrs,
            text: String::new(),
            children: Vec::new(),
        }
    }

    /// Parse a whole document with quick-xml's NsReader, failing on any
    /// error, and return its root element.
    fn parse(doc: &str) -> Node {
        assert!(doc.starts_with("<?xml version=\"1.0\"?>"), "{doc}");
        let mut reader = NsReader::from_str(doc);
        let mut stack: Vec<Node> = Vec::new();
        let mut root = None;
        loop {
            let (ns, event) = reader
                .read_resolved_event()
                .unwrap_or_else(|e| panic!("not well-formed: {e}\n{doc}"));
            match event {
                Event::Start(e) => {
                    let n = node(ns, &e);
                    stack.push(n);
                }
                Event::Empty(e) => {
                    let n = node(ns, &e);
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(n),
                        None => root = Some(n),
                    }
                }
                Event::End(_) => {
                    let n = stack.pop().expect("balanced");
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(n),
                        None => {
                            assert!(root.is_none(), "one root");
                            root = Some(n);
                        }
                    }
                }
                Event::Text(t) => {
                    if let Some(n) = stack.last_mut() {
                        n.text.push_str(&t.xml10_content());
                    } else {
                        assert!(t.trim().is_empty());
                    }
                }
                Event::GeneralRef(r) => {
                    let s = match r.resolve_char_ref().expect("char ref") {
                        Some(c) => c.to_string(),
                        None => quick_xml::escape::resolve_predefined_entity(&r)
                            .expect("predefined entity")
                            .to_string(),
                    };
                    stack.last_mut().expect("in element").text.push_str(&s);
                }
                // How a SOAP answer carries an embedded document.
                Event::CData(c) => {
                    stack
                        .last_mut()
                        .expect("in element")
                        .text
                        .push_str(&c.into_inner());
                }
                Event::Eof => break,
                Event::DocType(_) => panic!("unexpected"),
                _ => {}
            }
        }
        assert!(stack.is_empty());
        let root = root.expect("root element");
        // Whitespace-only text of container elements is indentation.
        fn trim(n: &mut Node) {
            if !n.children.is_empty() {
                assert!(n.text.trim().is_empty(), "mixed content in <{}>", n.name);
                n.text.clear();
            }
            n.children.iter_mut().for_each(trim);
        }
        let mut root = root;
        trim(&mut root);
        root
    }

    fn identity() -> Identity {
        Identity {
            uuids: [
                "11111111-2222-3333-4444-555555555555".into(),
                "11111111-2222-3333-4444-666666666666".into(),
                "11111111-2222-3333-4444-777777777777".into(),
            ],
            friendly_name: "Router <Home> & \"Garden\"".into(),
            boot_id: 7,
            config_id: 42,
            server: "Linux/6.1 UPnP/2.0 nat-router/0.1".into(),
        }
    }

    #[test]
    fn root_description_v2() {
        let paths = ServicePaths::with_token("t0k3n");
        let doc = root_description(
            &identity(),
            IgdVersion::V2,
            "http://192.168.0.1:5000",
            &paths,
        );
        let root = parse(&doc);
        assert_eq!(root.name, "root");
        assert_eq!(root.ns.as_deref(), Some(DEVICE_NS));
        assert_eq!(root.attr("configId"), Some("42"));
        assert_eq!(root.child("specVersion").text_of("major"), "1");
        assert_eq!(root.child("specVersion").text_of("minor"), "1");
        assert!(!root.has("URLBase"));

        let igd = root.child("device");
        assert_eq!(igd.ns.as_deref(), Some(DEVICE_NS));
        assert_eq!(
            igd.text_of("deviceType"),
            "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
        );
        assert_eq!(igd.text_of("friendlyName"), "Router <Home> & \"Garden\"");
        assert_eq!(igd.text_of("manufacturer"), "nat-router");
        assert_eq!(igd.text_of("modelName"), MODEL_NAME);
        assert_eq!(
            igd.text_of("UDN"),
            "uuid:11111111-2222-3333-4444-555555555555"
        );
        assert!(!igd.has("serviceList"));
        assert!(!igd.has("iconList"));

        let wan = igd.child("deviceList").child("device");
        assert_eq!(
            wan.text_of("deviceType"),
            "urn:schemas-upnp-org:device:WANDevice:2"
        );
        assert_eq!(
            wan.text_of("UDN"),
            "uuid:11111111-2222-3333-4444-666666666666"
        );
        for required in ["friendlyName", "manufacturer", "modelName"] {
            assert!(wan.has(required));
        }
        let services = wan.child("serviceList").all("service");
        assert_eq!(services.len(), 1);
        let common = services[0];
        assert_eq!(
            common.text_of("serviceType"),
            "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1"
        );
        assert_eq!(
            common.text_of("serviceId"),
            "urn:upnp-org:serviceId:WANCommonIFC1"
        );
        assert_eq!(common.text_of("SCPDURL"), paths.wan_common_scpd);
        assert_eq!(common.text_of("controlURL"), paths.wan_common_control);
        assert_eq!(common.text_of("eventSubURL"), paths.wan_common_events);

        let conn = wan.child("deviceList").child("device");
        assert_eq!(
            conn.text_of("deviceType"),
            "urn:schemas-upnp-org:device:WANConnectionDevice:2"
        );
        assert_eq!(
            conn.text_of("UDN"),
            "uuid:11111111-2222-3333-4444-777777777777"
        );
        assert!(!conn.has("deviceList"));
        let services = conn.child("serviceList").all("service");
        assert_eq!(services.len(), 1);
        let ip = services[0];
        assert_eq!(
            ip.text_of("serviceType"),
            "urn:schemas-upnp-org:service:WANIPConnection:2"
        );
        assert_eq!(ip.text_of("serviceId"), "urn:upnp-org:serviceId:WANIPConn1");
        assert_eq!(ip.text_of("SCPDURL"), paths.wan_ip_scpd);
        assert_eq!(ip.text_of("controlURL"), paths.wan_ip_control);
        assert_eq!(ip.text_of("eventSubURL"), paths.wan_ip_events);
    }

    #[test]
    fn root_description_v1() {
        let paths = ServicePaths::with_token("t0k3n");
        let doc = root_description(
            &identity(),
            IgdVersion::V1,
            "http://192.168.0.1:5000",
            &paths,
        );
        let root = parse(&doc);
        assert_eq!(root.child("specVersion").text_of("minor"), "0");
        assert_eq!(root.text_of("URLBase"), "http://192.168.0.1:5000");
        let igd = root.child("device");
        assert_eq!(
            igd.text_of("deviceType"),
            "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
        );
        let wan = igd.child("deviceList").child("device");
        assert_eq!(
            wan.text_of("deviceType"),
            "urn:schemas-upnp-org:device:WANDevice:1"
        );
        assert_eq!(
            wan.child("serviceList")
                .child("service")
                .text_of("serviceType"),
            "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1"
        );
        let conn = wan.child("deviceList").child("device");
        assert_eq!(
            conn.text_of("deviceType"),
            "urn:schemas-upnp-org:device:WANConnectionDevice:1"
        );
        let ip = conn.child("serviceList").child("service");
        assert_eq!(
            ip.text_of("serviceType"),
            "urn:schemas-upnp-org:service:WANIPConnection:1"
        );
        assert_eq!(ip.text_of("SCPDURL"), paths.wan_ip_scpd_v1);
    }

    /// Check an SCPD and return its action names.
    fn check_scpd(doc: &str, minor: &str) -> Vec<String> {
        let scpd = parse(doc);
        assert_eq!(scpd.name, "scpd");
        assert_eq!(scpd.ns.as_deref(), Some(SERVICE_NS));
        assert_eq!(scpd.child("specVersion").text_of("minor"), minor);
        let vars = scpd.child("serviceStateTable").all("stateVariable");
        let var_names: Vec<&str> = vars.iter().map(|v| v.text_of("name")).collect();
        for v in &vars {
            assert!(matches!(v.attr("sendEvents"), Some("yes" | "no")));
            assert!(matches!(
                v.text_of("dataType"),
                "string" | "boolean" | "ui2" | "ui4"
            ));
        }
        let mut unique = var_names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), var_names.len(), "duplicate state variable");

        let mut names = Vec::new();
        for action in scpd.child("actionList").all("action") {
            names.push(action.text_of("name").to_string());
            let mut args = Vec::new();
            for arg in action.child("argumentList").all("argument") {
                args.push(arg.text_of("name"));
                assert!(matches!(arg.text_of("direction"), "in" | "out"));
                let related = arg.text_of("relatedStateVariable");
                assert!(var_names.contains(&related), "{related} not declared");
            }
            // All in arguments precede all out arguments.
            let dirs: Vec<&str> = action
                .child("argumentList")
                .all("argument")
                .iter()
                .map(|a| a.text_of("direction"))
                .collect();
            assert!(dirs.windows(2).all(|w| !(w[0] == "out" && w[1] == "in")));
        }
        names
    }

    fn var_node<'a>(scpd: &'a Node, name: &str) -> &'a Node {
        scpd.child("serviceStateTable")
            .all("stateVariable")
            .into_iter()
            .find(|v| v.text_of("name") == name)
            .unwrap_or_else(|| panic!("no state variable {name}"))
    }

    fn arg_names(scpd: &Node, action: &str) -> Vec<(String, String)> {
        scpd.child("actionList")
            .all("action")
            .into_iter()
            .find(|a| a.text_of("name") == action)
            .unwrap()
            .child("argumentList")
            .all("argument")
            .iter()
            .map(|a| {
                (
                    a.text_of("name").to_string(),
                    a.text_of("direction").to_string(),
                )
            })
            .collect()
    }

    const V1_ACTIONS: [&str; 8] = [
        "AddPortMapping",
        "DeletePortMapping",
        "GetSpecificPortMappingEntry",
        "GetGenericPortMappingEntry",
        "GetExternalIPAddress",
        "GetStatusInfo",
        "GetConnectionTypeInfo",
        "GetNATRSIPStatus",
    ];

    #[test]
    fn wan_ip_scpd_actions() {
        let v1 = check_scpd(&wan_ip_scpd(IgdVersion::V1), "0");
        assert_eq!(v1, V1_ACTIONS);
        let v2 = check_scpd(&wan_ip_scpd(IgdVersion::V2), "1");
        let mut expected: Vec<&str> = V1_ACTIONS.to_vec();
        expected.extend([
            "AddAnyPortMapping",
            "DeletePortMappingRange",
            "GetListOfPortMappings",
        ]);
        assert_eq!(v2, expected);
        assert_eq!(wan_ip_action_names(IgdVersion::V1), V1_ACTIONS);
        assert_eq!(wan_ip_action_names(IgdVersion::V2), expected);
    }

    #[test]
    fn wan_ip_scpd_arguments_and_variables() {
        let scpd = parse(&wan_ip_scpd(IgdVersion::V2));
        let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            arg_names(&scpd, "AddPortMapping"),
            s(&[
                ("NewRemoteHost", "in"),
                ("NewExternalPort", "in"),
                ("NewProtocol", "in"),
                ("NewInternalPort", "in"),
                ("NewInternalClient", "in"),
                ("NewEnabled", "in"),
                ("NewPortMappingDescription", "in"),
                ("NewLeaseDuration", "in"),
            ])
        );
        let any = arg_names(&scpd, "AddAnyPortMapping");
        assert_eq!(
            any.last().unwrap(),
            &("NewReservedPort".to_string(), "out".to_string())
        );
        assert_eq!(
            arg_names(&scpd, "DeletePortMappingRange"),
            s(&[
                ("NewStartPort", "in"),
                ("NewEndPort", "in"),
                ("NewProtocol", "in"),
                ("NewManage", "in"),
            ])
        );
        assert_eq!(
            arg_names(&scpd, "GetListOfPortMappings"),
            s(&[
                ("NewStartPort", "in"),
                ("NewEndPort", "in"),
                ("NewProtocol", "in"),
                ("NewManage", "in"),
                ("NewNumberOfPorts", "in"),
                ("NewPortListing", "out"),
            ])
        );
        assert_eq!(
            arg_names(&scpd, "GetGenericPortMappingEntry")[0],
            ("NewPortMappingIndex".to_string(), "in".to_string())
        );
        assert_eq!(
            arg_names(&scpd, "GetStatusInfo"),
            s(&[
                ("NewConnectionStatus", "out"),
                ("NewLastConnectionError", "out"),
                ("NewUptime", "out"),
            ])
        );
        assert_eq!(
            arg_names(&scpd, "GetConnectionTypeInfo"),
            s(&[
                ("NewConnectionType", "out"),
                ("NewPossibleConnectionTypes", "out")
            ])
        );
        assert_eq!(
            arg_names(&scpd, "GetNATRSIPStatus"),
            s(&[("NewRSIPAvailable", "out"), ("NewNATEnabled", "out")])
        );
        assert_eq!(
            arg_names(&scpd, "GetExternalIPAddress"),
            s(&[("NewExternalIPAddress", "out")])
        );

        let proto = var_node(&scpd, "PortMappingProtocol");
        let allowed: Vec<&str> = proto
            .child("allowedValueList")
            .all("allowedValue")
            .iter()
            .map(|v| v.text.as_str())
            .collect();
        assert_eq!(allowed, ["TCP", "UDP"]);
        assert!(var_node(&scpd, "ConnectionStatus").has("allowedValueList"));
        assert!(var_node(&scpd, "ConnectionType").has("allowedValueList"));
        assert_eq!(
            var_node(&scpd, "ExternalIPAddress").attr("sendEvents"),
            Some("yes")
        );
        assert_eq!(
            var_node(&scpd, "SystemUpdateID").attr("sendEvents"),
            Some("yes")
        );
        assert_eq!(var_node(&scpd, "RemoteHost").attr("sendEvents"), Some("no"));
        let lease = var_node(&scpd, "PortMappingLeaseDuration").child("allowedValueRange");
        assert_eq!(lease.text_of("minimum"), "0");
        assert_eq!(lease.text_of("maximum"), "604800");

        let v1 = parse(&wan_ip_scpd(IgdVersion::V1));
        assert!(!var_node(&v1, "PortMappingLeaseDuration").has("allowedValueRange"));
        let v1_vars: Vec<&str> = v1
            .child("serviceStateTable")
            .all("stateVariable")
            .iter()
            .map(|v| v.text_of("name"))
            .collect();
        assert!(!v1_vars.contains(&"SystemUpdateID"));
        assert!(!v1_vars.contains(&"A_ARG_TYPE_PortListing"));
    }

    #[test]
    fn wan_common_scpd_actions() {
        let doc = wan_common_scpd();
        let names = check_scpd(&doc, "0");
        let expected = [
            "GetCommonLinkProperties",
            "GetTotalBytesSent",
            "GetTotalBytesReceived",
            "GetTotalPacketsSent",
            "GetTotalPacketsReceived",
        ];
        assert_eq!(names, expected);
        assert_eq!(wan_common_action_names(), expected);
        let scpd = parse(&doc);
        let link: Vec<String> = arg_names(&scpd, "GetCommonLinkProperties")
            .into_iter()
            .map(|(n, d)| {
                assert_eq!(d, "out");
                n
            })
            .collect();
        assert_eq!(
            link,
            [
                "NewWANAccessType",
                "NewLayer1UpstreamMaxBitRate",
                "NewLayer1DownstreamMaxBitRate",
                "NewPhysicalLinkStatus"
            ]
        );
        assert_eq!(
            arg_names(&scpd, "GetTotalBytesSent"),
            [("NewTotalBytesSent".to_string(), "out".to_string())]
        );
    }

    #[test]
    fn port_mapping_list_round_trip() {
        let entries = [
            PortMappingEntry {
                remote_host: String::new(),
                external_port: 6881,
                protocol: "TCP",
                internal_port: 6881,
                internal_client: "192.168.0.12".into(),
                enabled: true,
                description: "libminiupnpc <&> \"x\"".into(),
                lease_secs: 3600,
            },
            PortMappingEntry {
                remote_host: "203.0.113.9".into(),
                external_port: 5000,
                protocol: "UDP",
                internal_port: 5001,
                internal_client: "192.168.0.13".into(),
                enabled: false,
                description: "bad\u{0}char".into(),
                lease_secs: 0,
            },
        ];
        let doc = port_mapping_list(&entries);
        let list = parse(&doc);
        assert_eq!(list.name, "PortMappingList");
        assert_eq!(list.ns.as_deref(), Some(PORT_MAPPING_LIST_NS));
        let parsed = list.all("PortMappingEntry");
        assert_eq!(parsed.len(), 2);
        for (p, e) in parsed.iter().zip(&entries) {
            assert_eq!(p.ns.as_deref(), Some(PORT_MAPPING_LIST_NS));
            let names: Vec<&str> = p.children.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "NewRemoteHost",
                    "NewExternalPort",
                    "NewProtocol",
                    "NewInternalPort",
                    "NewInternalClient",
                    "NewEnabled",
                    "NewDescription",
                    "NewLeaseTime"
                ]
            );
            assert!(
                p.children
                    .iter()
                    .all(|c| c.ns.as_deref() == Some(PORT_MAPPING_LIST_NS))
            );
            assert_eq!(p.text_of("NewRemoteHost"), e.remote_host);
            assert_eq!(p.text_of("NewExternalPort"), e.external_port.to_string());
            assert_eq!(p.text_of("NewProtocol"), e.protocol);
            assert_eq!(p.text_of("NewInternalPort"), e.internal_port.to_string());
            assert_eq!(p.text_of("NewInternalClient"), e.internal_client);
            assert_eq!(p.text_of("NewEnabled"), if e.enabled { "1" } else { "0" });
            assert_eq!(p.text_of("NewLeaseTime"), e.lease_secs.to_string());
        }
        assert_eq!(
            parsed[0].text_of("NewDescription"),
            "libminiupnpc <&> \"x\""
        );
        assert_eq!(parsed[1].text_of("NewDescription"), "bad\u{FFFD}char");
        // Empty list.
        let empty = parse(&port_mapping_list(&[]));
        assert!(empty.children.is_empty());

        // Carried inside a SOAP response and read back.
        let response = super::super::soap::response(
            "urn:schemas-upnp-org:service:WANIPConnection:2",
            "GetListOfPortMappings",
            &[("NewPortListing", doc.clone())],
        );
        let envelope = parse(&response);
        let listing = envelope
            .child("Body")
            .child("GetListOfPortMappingsResponse")
            .text_of("NewPortListing");
        assert_eq!(listing, doc);
    }
}
