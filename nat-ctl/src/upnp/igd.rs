//! The IGD actions: WANIPConnection (v1 and v2) and WANCommonInterfaceConfig,
//! over the forwarding-rule model. Pure logic over a [`Gateway`], so that
//! every rule of the specs and of our security policy is unit-tested.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    IgdVersion, SERVICE_WAN_COMMON, SERVICE_WAN_IP,
    description::{self, PortMappingEntry},
    error::UpnpError,
    soap::{SoapRequest, parse_bool, parse_ipv4, parse_protocol, parse_u16_port, parse_u32},
};
use crate::{
    config::UpnpSettings,
    rules::{ForwardRule, Lease, PortRange, Protocol, RuleError},
};

/// How many ports AddAnyPortMapping tries before answering 728.
const ANY_PORT_ATTEMPTS: u32 = 256;
/// Descriptions are shown in lists; longer ones are refused.
const MAX_DESCRIPTION: usize = 256;

/// Traffic totals for WANCommonInterfaceConfig, from the datapath counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
}

/// Why the gateway refused a change.
#[derive(Debug)]
pub enum GatewayError {
    Rule(RuleError),
    /// Maps or store failed: nothing was changed.
    Failed(String),
}

/// What the actions need from the daemon. `apply` must be all or nothing:
/// validated as a whole, written to the datapath and saved, or refused.
pub trait Gateway {
    fn external_address(&self) -> Option<Ipv4Addr>;
    fn lan(&self) -> Option<Ipv4Net>;
    /// All rules, static and UPnP, in a stable order.
    fn rules(&self) -> Vec<ForwardRule>;
    /// Removes the rules named in `remove`, then adds `add` (a rule with
    /// the name of a removed one keeps its id).
    fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError>;
    fn totals(&self) -> Totals;
    fn uptime_secs(&self) -> u64;
    fn now_unix(&self) -> u64;
}

/// The name a UPnP mapping gets among the rules.
pub fn mapping_name(protocol: &str, external_port: u16) -> String {
    format!("upnp-{}-{external_port}", protocol.to_ascii_lowercase())
}

fn protocol_of(name: &str) -> Protocol {
    if name == "UDP" {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "UDP",
        _ => "TCP",
    }
}

type Reply = Vec<(&'static str, String)>;

fn required<'a>(request: &'a SoapRequest, name: &str) -> Result<&'a str, UpnpError> {
    request.arg(name).ok_or(UpnpError::InvalidArgs)
}

/// The service a request addressed, and its version.
/// The service a request is for; its version only has to be a number.
fn service(request: &SoapRequest) -> Option<&'static str> {
    let (base, version) = request.service_type.rsplit_once(':')?;
    version.parse::<u8>().ok()?;
    [SERVICE_WAN_IP, SERVICE_WAN_COMMON]
        .into_iter()
        .find(|known| *known == base)
}

/// The actions a client may name, as logs may repeat them.
const ACTIONS: [&str; 16] = [
    "GetExternalIPAddress",
    "GetStatusInfo",
    "GetConnectionTypeInfo",
    "GetNATRSIPStatus",
    "AddPortMapping",
    "AddAnyPortMapping",
    "DeletePortMapping",
    "DeletePortMappingRange",
    "GetSpecificPortMappingEntry",
    "GetGenericPortMappingEntry",
    "GetListOfPortMappings",
    "GetCommonLinkProperties",
    "GetTotalBytesSent",
    "GetTotalBytesReceived",
    "GetTotalPacketsSent",
    "GetTotalPacketsReceived",
];

/// An action name fit for a metric's label: a known one, else "unknown".
pub fn action_metric(action: &str) -> &'static str {
    ACTIONS
        .iter()
        .find(|known| **known == action)
        .copied()
        .unwrap_or("unknown")
}

/// An action name fit for a log line: a known one as it is, anything else
/// (chosen by whoever sent it) quoted, escaped and cut short.
pub fn action_label(action: &str) -> String {
    if ACTIONS.contains(&action) {
        return action.to_owned();
    }
    let short: String = action.chars().take(32).collect();
    format!(
        "unknown action {short:?}{}",
        if short.len() < action.len() {
            "..."
        } else {
            ""
        }
    )
}

/// One control request from `caller`, a LAN host. The reply is the list of
/// output arguments, or the UPnP error to answer with.
pub fn handle(
    gateway: &mut impl Gateway,
    settings: &UpnpSettings,
    igd: IgdVersion,
    caller: Ipv4Addr,
    request: &SoapRequest,
) -> Result<Reply, UpnpError> {
    let Some(service) = service(request) else {
        return Err(UpnpError::InvalidAction);
    };
    // What the gateway serves decides, not the version a request names:
    // a client that names WANIPConnection:1 to a v2 gateway gets the v2
    // actions its description lists, and v2 lease semantics (it cannot
    // downgrade them).
    let v2 = igd == IgdVersion::V2;
    if service == SERVICE_WAN_COMMON {
        return common_interface(gateway, request);
    }
    match request.action.as_str() {
        "GetExternalIPAddress" => Ok(vec![(
            "NewExternalIPAddress",
            gateway
                .external_address()
                .map_or_else(String::new, |addr| addr.to_string()),
        )]),
        "GetStatusInfo" => {
            let connected = gateway.external_address().is_some();
            Ok(vec![
                (
                    "NewConnectionStatus",
                    if connected {
                        "Connected"
                    } else {
                        "Disconnected"
                    }
                    .into(),
                ),
                ("NewLastConnectionError", "ERROR_NONE".into()),
                ("NewUptime", gateway.uptime_secs().to_string()),
            ])
        }
        "GetConnectionTypeInfo" => Ok(vec![
            ("NewConnectionType", "IP_Routed".into()),
            ("NewPossibleConnectionTypes", "IP_Routed".into()),
        ]),
        "GetNATRSIPStatus" => Ok(vec![
            ("NewRSIPAvailable", "0".into()),
            ("NewNATEnabled", "1".into()),
        ]),
        "AddPortMapping" => add_port_mapping(gateway, settings, caller, request, v2, false),
        "AddAnyPortMapping" if v2 => add_port_mapping(gateway, settings, caller, request, v2, true),
        "DeletePortMapping" => delete_port_mapping(gateway, settings, caller, request),
        "DeletePortMappingRange" if v2 => delete_range(gateway, settings, caller, request),
        "GetSpecificPortMappingEntry" => specific_entry(gateway, settings, caller, request),
        "GetGenericPortMappingEntry" => generic_entry(gateway, settings, caller, request),
        "GetListOfPortMappings" if v2 => list_of_mappings(gateway, settings, caller, request),
        _ => Err(UpnpError::InvalidAction),
    }
}

fn common_interface(gateway: &impl Gateway, request: &SoapRequest) -> Result<Reply, UpnpError> {
    let totals = gateway.totals();
    // The state variables are ui4: they wrap, as the spec says they do.
    let wrap = |value: u64| (value as u32).to_string();
    match request.action.as_str() {
        "GetCommonLinkProperties" => Ok(vec![
            ("NewWANAccessType", "Ethernet".into()),
            ("NewLayer1UpstreamMaxBitRate", "0".into()),
            ("NewLayer1DownstreamMaxBitRate", "0".into()),
            (
                "NewPhysicalLinkStatus",
                if gateway.external_address().is_some() {
                    "Up"
                } else {
                    "Down"
                }
                .into(),
            ),
        ]),
        "GetTotalBytesSent" => Ok(vec![("NewTotalBytesSent", wrap(totals.bytes_sent))]),
        "GetTotalBytesReceived" => Ok(vec![("NewTotalBytesReceived", wrap(totals.bytes_received))]),
        "GetTotalPacketsSent" => Ok(vec![("NewTotalPacketsSent", wrap(totals.packets_sent))]),
        "GetTotalPacketsReceived" => Ok(vec![(
            "NewTotalPacketsReceived",
            wrap(totals.packets_received),
        )]),
        _ => Err(UpnpError::InvalidAction),
    }
}

/// The UPnP mapping for (protocol, external port), if any rule holds it.
fn find<'a>(rules: &'a [ForwardRule], protocol: &str, port: u16) -> Option<&'a ForwardRule> {
    let number = protocol_of(protocol).numbers()[0];
    rules.iter().find(|rule| {
        rule.protocol.numbers().contains(&number)
            && (rule.external.first..=rule.external.last).contains(&port)
    })
}

fn remaining_lease(rule: &ForwardRule, now: u64) -> u32 {
    rule.upnp
        .as_ref()
        .and_then(|lease| lease.expires_at)
        .map_or(0, |expires| expires.saturating_sub(now).max(1) as u32)
}

fn remote_host(rule: &ForwardRule) -> String {
    match rule.allow.as_slice() {
        [single] if single.prefix_len() == 32 => single.addr().to_string(),
        _ => String::new(),
    }
}

/// A remote host restriction: empty, `*` and `0.0.0.0` (what several
/// client libraries send) all mean any remote.
fn parse_remote_host(value: &str) -> Result<Vec<Ipv4Net>, UpnpError> {
    let value = value.trim();
    if value.is_empty() || value == "*" {
        return Ok(Vec::new());
    }
    let addr = parse_ipv4(value)?;
    Ok(if addr.is_unspecified() {
        Vec::new()
    } else {
        vec![Ipv4Net::from(addr)]
    })
}

fn rule_error(error: GatewayError) -> UpnpError {
    match error {
        GatewayError::Rule(RuleError::Overlap { .. } | RuleError::SharedTarget { .. }) => {
            UpnpError::ConflictInMappingEntry
        }
        GatewayError::Rule(RuleError::InUseByMapping { .. }) => {
            UpnpError::ConflictWithOtherMechanisms
        }
        GatewayError::Rule(
            RuleError::TooMany | RuleError::ClientQuota { .. } | RuleError::LeasedQuota { .. },
        ) => UpnpError::NoPortMapsAvailable,
        GatewayError::Rule(RuleError::DuplicateName(_)) => UpnpError::ConflictInMappingEntry,
        GatewayError::Rule(_) => UpnpError::InvalidArgs,
        GatewayError::Failed(_) => UpnpError::ActionFailed,
    }
}

fn add_port_mapping(
    gateway: &mut impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
    request: &SoapRequest,
    v2: bool,
    any_port: bool,
) -> Result<Reply, UpnpError> {
    let remote = parse_remote_host(required(request, "NewRemoteHost")?)?;
    let external = parse_u16_port(required(request, "NewExternalPort")?, true)?;
    let protocol = parse_protocol(required(request, "NewProtocol")?)?;
    let internal_port = parse_u16_port(required(request, "NewInternalPort")?, true)?;
    let client = parse_ipv4(required(request, "NewInternalClient")?)?;
    let enabled = parse_bool(required(request, "NewEnabled")?)?;
    let description = required(request, "NewPortMappingDescription")?;
    let lease = parse_u32(required(request, "NewLeaseDuration")?)?;
    if description.len() > MAX_DESCRIPTION {
        return Err(UpnpError::InvalidArgs);
    }
    if internal_port == 0 {
        return Err(if v2 {
            UpnpError::WildCardNotPermittedInIntPort
        } else {
            UpnpError::InvalidArgs
        });
    }
    if external == 0 && !any_port {
        return Err(UpnpError::WildCardNotPermittedInExtPort);
    }
    if settings.secure_mode && client != caller {
        return Err(UpnpError::ActionNotAuthorized);
    }
    let lan = gateway.lan().ok_or(UpnpError::ActionFailed)?;
    if !lan.contains(&client)
        || client == lan.network()
        || client == lan.broadcast()
        || client == lan.addr()
    {
        return Err(UpnpError::InvalidArgs);
    }
    // A lease of 0 means the longest one (IGDv2); only a v1 gateway whose
    // configuration allows it grants a permanent mapping.
    let lease = if lease == 0 && (v2 || !settings.allow_permanent) {
        settings.max_lease
    } else {
        lease.min(settings.max_lease)
    };
    let now = gateway.now_unix();
    let make = |port: u16| ForwardRule {
        name: mapping_name(protocol, port),
        protocol: protocol_of(protocol),
        external: PortRange::single(port),
        internal_addr: client,
        internal: PortRange::single(internal_port),
        allow: remote.clone(),
        enabled,
        upnp: Some(Lease {
            origin: crate::rules::LeaseOrigin::Upnp,
            nonce: None,
            client: caller,
            description: description.to_owned(),
            expires_at: (lease != 0).then(|| now + u64::from(lease)),
        }),
        schedule: Default::default(),
        off_schedule: false,
    };

    let candidates: Vec<u16> = if any_port {
        let start = if external == 0 { 1024 } else { external };
        (0..ANY_PORT_ATTEMPTS)
            .map(|step| {
                let span = 65536 - 1024;
                (1024 + (u32::from(start.max(1024)) - 1024 + step) % span) as u16
            })
            .collect()
    } else {
        vec![external]
    };
    // The caller's mapping of the same internal endpoint on another port:
    // a client that restarted on a new port (or crashed with a long lease)
    // gets it moved; AddAnyPortMapping hands it back as it is.
    let rules = gateway.rules();
    let stale = rules.iter().find(|rule| {
        rule.protocol == protocol_of(protocol)
            && rule.internal_addr == client
            && rule.internal.first == internal_port
            && rule.external.first != external
            && may_manage(settings, caller, rule)
    });
    if any_port && let Some(existing) = stale {
        return Ok(vec![(
            "NewReservedPort",
            existing.external.first.to_string(),
        )]);
    }
    let stale = stale.map(|rule| rule.name.clone());
    let mut last_error = UpnpError::NoPortMapsAvailable;
    for port in candidates {
        if !settings.permits(port, client, internal_port) {
            last_error = UpnpError::ActionNotAuthorized;
            if any_port {
                continue;
            }
            return Err(last_error);
        }
        let rules = gateway.rules();
        let mut remove = Vec::new();
        if let Some(existing) = find(&rules, protocol, port) {
            // A NAT-PMP or PCP mapping is not UPnP's to renew or take over.
            let renewable = existing
                .upnp_lease()
                .is_some_and(|lease| lease.client == caller || !settings.secure_mode)
                && existing.internal_addr == client;
            // AddAnyPortMapping never replaces: it looks for another port.
            if !renewable || any_port {
                last_error = if existing.upnp.is_some() {
                    UpnpError::ConflictInMappingEntry
                } else {
                    UpnpError::ConflictWithOtherMechanisms
                };
                if any_port {
                    continue;
                }
                return Err(last_error);
            }
            // The same client again: renew (and update) the mapping.
            remove.push(existing.name.clone());
        }
        remove.extend(stale.clone());
        match gateway.apply(&remove, vec![make(port)]) {
            Ok(()) => {
                return Ok(if any_port {
                    vec![("NewReservedPort", port.to_string())]
                } else {
                    Vec::new()
                });
            }
            Err(error) => {
                last_error = rule_error(error);
                let retry = matches!(
                    last_error,
                    UpnpError::ConflictInMappingEntry | UpnpError::ConflictWithOtherMechanisms
                );
                if !(any_port && retry) {
                    return Err(last_error);
                }
            }
        }
    }
    Err(if last_error == UpnpError::ActionNotAuthorized {
        last_error
    } else {
        UpnpError::NoPortMapsAvailable
    })
}

fn may_manage(settings: &UpnpSettings, caller: Ipv4Addr, rule: &ForwardRule) -> bool {
    rule.upnp_lease()
        .is_some_and(|lease| !settings.secure_mode || lease.client == caller)
}

fn delete_port_mapping(
    gateway: &mut impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
    request: &SoapRequest,
) -> Result<Reply, UpnpError> {
    let _remote = parse_remote_host(required(request, "NewRemoteHost")?)?;
    let port = parse_u16_port(required(request, "NewExternalPort")?, false)?;
    let protocol = parse_protocol(required(request, "NewProtocol")?)?;
    let rules = gateway.rules();
    // Only UPnP mappings are visible to UPnP; the user's rules are not ours
    // to delete.
    let rule = find(&rules, protocol, port)
        .filter(|rule| rule.upnp_lease().is_some())
        .ok_or(UpnpError::NoSuchEntryInArray)?;
    if !may_manage(settings, caller, rule) {
        return Err(UpnpError::ActionNotAuthorized);
    }
    gateway
        .apply(std::slice::from_ref(&rule.name), Vec::new())
        .map_err(rule_error)?;
    Ok(Vec::new())
}

fn port_range(request: &SoapRequest) -> Result<(u16, u16, &'static str, bool), UpnpError> {
    let start = parse_u16_port(required(request, "NewStartPort")?, true)?;
    let end = parse_u16_port(required(request, "NewEndPort")?, true)?;
    let protocol = parse_protocol(required(request, "NewProtocol")?)?;
    let manage = parse_bool(required(request, "NewManage")?)?;
    if start > end {
        return Err(UpnpError::InconsistentParameters);
    }
    Ok((start, end, protocol, manage))
}

fn in_range(rule: &ForwardRule, start: u16, end: u16, protocol: &str) -> bool {
    rule.upnp_lease().is_some()
        && protocol_name(rule.protocol) == protocol
        && (start..=end).contains(&rule.external.first)
}

fn delete_range(
    gateway: &mut impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
    request: &SoapRequest,
) -> Result<Reply, UpnpError> {
    let (start, end, protocol, manage) = port_range(request)?;
    let rules = gateway.rules();
    let matching: Vec<&ForwardRule> = rules
        .iter()
        .filter(|rule| in_range(rule, start, end, protocol))
        .collect();
    if matching.is_empty() {
        return Err(UpnpError::PortMappingNotFound);
    }
    // NewManage asks for other clients' mappings too, which secure mode
    // never grants.
    let names: Vec<String> = matching
        .iter()
        .filter(|rule| {
            rule.upnp
                .as_ref()
                .is_some_and(|lease| lease.client == caller)
                || (manage && !settings.secure_mode)
        })
        .map(|rule| rule.name.clone())
        .collect();
    if names.is_empty() {
        return Err(UpnpError::ActionNotAuthorized);
    }
    gateway.apply(&names, Vec::new()).map_err(rule_error)?;
    Ok(Vec::new())
}

fn entry_reply(rule: &ForwardRule, now: u64, with_key: bool) -> Reply {
    let upnp = rule.upnp.as_ref();
    let mut reply = Vec::new();
    if with_key {
        reply.push(("NewRemoteHost", remote_host(rule)));
        reply.push(("NewExternalPort", rule.external.first.to_string()));
        reply.push(("NewProtocol", protocol_name(rule.protocol).to_owned()));
    }
    reply.extend([
        ("NewInternalPort", rule.internal.first.to_string()),
        ("NewInternalClient", rule.internal_addr.to_string()),
        ("NewEnabled", u8::from(rule.enabled).to_string()),
        (
            "NewPortMappingDescription",
            upnp.map_or_else(String::new, |lease| lease.description.clone()),
        ),
        ("NewLeaseDuration", remaining_lease(rule, now).to_string()),
    ]);
    reply
}

/// The mappings `caller` may see: in secure mode only its own, so that no
/// LAN host learns another's internal address, ports and descriptions.
fn visible_mappings(
    gateway: &impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
) -> Vec<ForwardRule> {
    gateway
        .rules()
        .into_iter()
        .filter(|rule| {
            rule.upnp_lease()
                .is_some_and(|lease| !settings.secure_mode || lease.client == caller)
        })
        .collect()
}

fn specific_entry(
    gateway: &impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
    request: &SoapRequest,
) -> Result<Reply, UpnpError> {
    let _remote = parse_remote_host(required(request, "NewRemoteHost")?)?;
    let port = parse_u16_port(required(request, "NewExternalPort")?, false)?;
    let protocol = parse_protocol(required(request, "NewProtocol")?)?;
    let mappings = visible_mappings(gateway, settings, caller);
    let rule = find(&mappings, protocol, port).ok_or(UpnpError::NoSuchEntryInArray)?;
    Ok(entry_reply(rule, gateway.now_unix(), false))
}

fn generic_entry(
    gateway: &impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
    request: &SoapRequest,
) -> Result<Reply, UpnpError> {
    let index = parse_u32(required(request, "NewPortMappingIndex")?)
        .map_err(|_| UpnpError::InvalidArgs)? as usize;
    let mappings = visible_mappings(gateway, settings, caller);
    let rule = mappings
        .get(index)
        .ok_or(UpnpError::SpecifiedArrayIndexInvalid)?;
    Ok(entry_reply(rule, gateway.now_unix(), true))
}

/// The most entries one GetListOfPortMappings answer holds, whatever it
/// asks for (0 asks for all): the answer is built under the daemon's lock.
const MAX_LISTED: usize = 256;

fn list_of_mappings(
    gateway: &impl Gateway,
    settings: &UpnpSettings,
    caller: Ipv4Addr,
    request: &SoapRequest,
) -> Result<Reply, UpnpError> {
    let (start, end, protocol, _manage) = port_range(request)?;
    let wanted = parse_u16_port(required(request, "NewNumberOfPorts")?, true)?;
    let now = gateway.now_unix();
    let limit = match usize::from(wanted) {
        0 => MAX_LISTED,
        wanted => wanted.min(MAX_LISTED),
    };
    let entries: Vec<PortMappingEntry> = visible_mappings(gateway, settings, caller)
        .iter()
        .filter(|rule| in_range(rule, start, end, protocol))
        .take(limit)
        .map(|rule| PortMappingEntry {
            remote_host: remote_host(rule),
            external_port: rule.external.first,
            protocol: protocol_name(rule.protocol),
            internal_port: rule.internal.first,
            internal_client: rule.internal_addr.to_string(),
            enabled: rule.enabled,
            description: rule
                .upnp
                .as_ref()
                .map_or_else(String::new, |lease| lease.description.clone()),
            lease_secs: remaining_lease(rule, now),
        })
        .collect();
    if entries.is_empty() {
        return Err(UpnpError::PortMappingNotFound);
    }
    Ok(vec![(
        "NewPortListing",
        description::port_mapping_list(&entries),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{RuleSet, check_conflicts};

    /// A gateway over a plain rule set, with the daemon's validation.
    struct FakeGateway {
        rules: RuleSet,
        now: u64,
        fail: bool,
    }

    impl FakeGateway {
        fn new() -> Self {
            Self {
                rules: RuleSet::default(),
                now: 1_000_000,
                fail: false,
            }
        }
    }

    impl Gateway for FakeGateway {
        fn external_address(&self) -> Option<Ipv4Addr> {
            Some(Ipv4Addr::new(203, 0, 113, 1))
        }
        fn lan(&self) -> Option<Ipv4Net> {
            Some("192.168.0.1/24".parse().unwrap())
        }
        fn rules(&self) -> Vec<ForwardRule> {
            self.rules.to_vec()
        }
        fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError> {
            if self.fail {
                return Err(GatewayError::Failed("disk full".into()));
            }
            let mut next = self.rules.clone();
            for name in remove {
                next.remove(name).map_err(GatewayError::Rule)?;
            }
            for rule in add {
                next.add(rule, None).map_err(GatewayError::Rule)?;
            }
            next.validate(self.lan().unwrap())
                .map_err(GatewayError::Rule)?;
            check_conflicts(&next.to_vec()).map_err(GatewayError::Rule)?;
            self.rules = next;
            Ok(())
        }
        fn totals(&self) -> Totals {
            Totals {
                bytes_sent: (1 << 32) + 5,
                bytes_received: 7,
                packets_sent: 1,
                packets_received: 2,
            }
        }
        fn uptime_secs(&self) -> u64 {
            42
        }
        fn now_unix(&self) -> u64 {
            self.now
        }
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
    const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);

    fn request(version: u8, action: &str, args: &[(&str, &str)]) -> SoapRequest {
        SoapRequest {
            service_type: format!("{SERVICE_WAN_IP}:{version}"),
            action: action.to_owned(),
            args: args
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    fn add_args<'a>(port: &'a str, client: &'a str, lease: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("NewRemoteHost", ""),
            ("NewExternalPort", port),
            ("NewProtocol", "TCP"),
            ("NewInternalPort", "6881"),
            ("NewInternalClient", client),
            ("NewEnabled", "1"),
            ("NewPortMappingDescription", "torrent"),
            ("NewLeaseDuration", lease),
        ]
    }

    fn call(
        gateway: &mut FakeGateway,
        caller: Ipv4Addr,
        version: u8,
        action: &str,
        args: &[(&str, &str)],
    ) -> Result<Reply, UpnpError> {
        handle(
            gateway,
            &UpnpSettings::default(),
            IgdVersion::V2,
            caller,
            &request(version, action, args),
        )
    }

    #[test]
    fn add_renew_and_delete_own_mapping() {
        let mut gateway = FakeGateway::new();
        call(
            &mut gateway,
            ME,
            1,
            "AddPortMapping",
            &add_args("6881", "192.168.0.12", "3600"),
        )
        .unwrap();
        let rules = gateway.rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].name, "upnp-tcp-6881");
        assert_eq!(rules[0].upnp.as_ref().unwrap().expires_at, Some(1_003_600));
        // The same client again renews it.
        gateway.now += 100;
        call(
            &mut gateway,
            ME,
            1,
            "AddPortMapping",
            &add_args("6881", "192.168.0.12", "3600"),
        )
        .unwrap();
        assert_eq!(gateway.rules().len(), 1);
        assert_eq!(
            gateway.rules()[0].upnp.as_ref().unwrap().expires_at,
            Some(1_003_700)
        );
        let specific = [
            ("NewRemoteHost", ""),
            ("NewExternalPort", "6881"),
            ("NewProtocol", "tcp"),
        ];
        let entry = call(
            &mut gateway,
            ME,
            1,
            "GetSpecificPortMappingEntry",
            &specific,
        )
        .unwrap();
        // In secure mode another host does not even see it.
        assert_eq!(
            call(
                &mut gateway,
                OTHER,
                1,
                "GetSpecificPortMappingEntry",
                &specific
            ),
            Err(UpnpError::NoSuchEntryInArray)
        );
        assert!(
            entry.contains(&("NewLeaseDuration", "3600".to_owned())),
            "{entry:?}"
        );
        assert!(entry.contains(&("NewInternalClient", "192.168.0.12".to_owned())));
        // Another host may neither take it over nor delete it.
        assert_eq!(
            call(
                &mut gateway,
                OTHER,
                1,
                "AddPortMapping",
                &add_args("6881", "192.168.0.13", "0")
            ),
            Err(UpnpError::ConflictInMappingEntry)
        );
        let delete = [
            ("NewRemoteHost", ""),
            ("NewExternalPort", "6881"),
            ("NewProtocol", "TCP"),
        ];
        assert_eq!(
            call(&mut gateway, OTHER, 1, "DeletePortMapping", &delete),
            Err(UpnpError::ActionNotAuthorized)
        );
        call(&mut gateway, ME, 1, "DeletePortMapping", &delete).unwrap();
        assert!(gateway.rules().is_empty());
        assert_eq!(
            call(&mut gateway, ME, 1, "DeletePortMapping", &delete),
            Err(UpnpError::NoSuchEntryInArray)
        );
    }

    #[test]
    fn a_natpmp_mapping_is_not_upnps_to_renew_delete_or_list() {
        let mut gateway = FakeGateway::new();
        let mut rule: ForwardRule = "tcp/6881=192.168.0.12,name=natpmp-tcp-6881"
            .parse()
            .unwrap();
        rule.upnp = Some(Lease {
            origin: crate::rules::LeaseOrigin::Natpmp,
            client: ME,
            description: "NAT-PMP".into(),
            expires_at: Some(1_003_600),
            nonce: None,
        });
        gateway.apply(&[], vec![rule]).unwrap();
        // The same client, the same port: still not UPnP's mapping.
        assert_eq!(
            call(
                &mut gateway,
                ME,
                2,
                "AddPortMapping",
                &add_args("6881", "192.168.0.12", "60")
            ),
            Err(UpnpError::ConflictInMappingEntry)
        );
        let delete = [
            ("NewRemoteHost", ""),
            ("NewExternalPort", "6881"),
            ("NewProtocol", "TCP"),
        ];
        assert_eq!(
            call(&mut gateway, ME, 2, "DeletePortMapping", &delete),
            Err(UpnpError::NoSuchEntryInArray)
        );
        assert_eq!(gateway.rules().len(), 1);
        assert_eq!(gateway.rules()[0].kind(), "NATPMP");
    }

    #[test]
    fn secure_mode_and_permissions() {
        let mut gateway = FakeGateway::new();
        // Mapping to someone else.
        assert_eq!(
            call(
                &mut gateway,
                OTHER,
                2,
                "AddPortMapping",
                &add_args("6881", "192.168.0.12", "60")
            ),
            Err(UpnpError::ActionNotAuthorized)
        );
        // Privileged external port: denied by the default permissions.
        assert_eq!(
            call(
                &mut gateway,
                ME,
                2,
                "AddPortMapping",
                &add_args("80", "192.168.0.12", "60")
            ),
            Err(UpnpError::ActionNotAuthorized)
        );
        // Outside the LAN.
        assert_eq!(
            call(
                &mut gateway,
                Ipv4Addr::new(10, 0, 0, 5),
                2,
                "AddPortMapping",
                &add_args("6881", "10.0.0.5", "60")
            ),
            Err(UpnpError::InvalidArgs)
        );
        assert!(gateway.rules().is_empty());
    }

    #[test]
    fn strict_arguments() {
        let mut gateway = FakeGateway::new();
        for (port, lease, protocol) in [
            ("70000", "60", "TCP"),
            ("6881", "-1", "TCP"),
            ("6881", "60", "FOO"),
        ] {
            let mut args = add_args(port, "192.168.0.12", lease);
            args[2].1 = protocol;
            assert_eq!(
                call(&mut gateway, ME, 2, "AddPortMapping", &args),
                Err(UpnpError::InvalidArgs),
                "{args:?}"
            );
        }
        let mut missing = add_args("6881", "192.168.0.12", "60");
        missing.remove(3);
        assert_eq!(
            call(&mut gateway, ME, 2, "AddPortMapping", &missing),
            Err(UpnpError::InvalidArgs)
        );
        assert_eq!(
            call(
                &mut gateway,
                ME,
                2,
                "AddPortMapping",
                &add_args("0", "192.168.0.12", "60")
            ),
            Err(UpnpError::WildCardNotPermittedInExtPort)
        );
        assert_eq!(
            call(&mut gateway, ME, 2, "Frobnicate", &[]),
            Err(UpnpError::InvalidAction)
        );
        // v2-only actions on a gateway that serves IGDv1 (the version a
        // request names does not matter: see
        // v2_actions_answer_whatever_version_the_request_names).
        assert_eq!(
            handle(
                &mut gateway,
                &UpnpSettings::default(),
                IgdVersion::V1,
                ME,
                &request(
                    2,
                    "AddAnyPortMapping",
                    &add_args("6881", "192.168.0.12", "60")
                ),
            ),
            Err(UpnpError::InvalidAction)
        );
        assert!(gateway.rules().is_empty());
    }

    #[test]
    fn leases_zero_and_too_long() {
        let mut gateway = FakeGateway::new();
        call(
            &mut gateway,
            ME,
            2,
            "AddPortMapping",
            &add_args("6881", "192.168.0.12", "0"),
        )
        .unwrap();
        // 0 is the longest lease.
        assert_eq!(
            gateway.rules()[0].upnp.as_ref().unwrap().expires_at,
            Some(1_000_000 + 604_800)
        );
        // Naming WANIPConnection:1 to a v2 gateway changes nothing.
        let mut gateway = FakeGateway::new();
        let mut args = add_args("6883", "192.168.0.12", "0");
        args[3].1 = "6883";
        call(&mut gateway, ME, 1, "AddPortMapping", &args).unwrap();
        assert_eq!(
            gateway.rules()[0].upnp.as_ref().unwrap().expires_at,
            Some(1_000_000 + 604_800)
        );
        let mut args = add_args("6884", "192.168.0.12", "9999999");
        args[3].1 = "6884";
        call(&mut gateway, ME, 2, "AddPortMapping", &args).unwrap();
        assert_eq!(
            gateway.rules()[1].upnp.as_ref().unwrap().expires_at,
            Some(1_000_000 + 604_800)
        );
        // A v1 gateway grants a permanent mapping only when told to.
        for (allow_permanent, expires_at) in [(false, Some(1_000_000 + 604_800)), (true, None)] {
            let mut gateway = FakeGateway::new();
            let settings = UpnpSettings {
                allow_permanent,
                ..UpnpSettings::default()
            };
            let request = request(1, "AddPortMapping", &add_args("6885", "192.168.0.12", "0"));
            handle(&mut gateway, &settings, IgdVersion::V1, ME, &request).unwrap();
            assert_eq!(
                gateway.rules()[0].upnp.as_ref().unwrap().expires_at,
                expires_at,
                "allow_permanent = {allow_permanent}"
            );
        }
    }

    #[test]
    fn a_client_that_maps_its_endpoint_again_gets_it_moved_or_back() {
        let mut gateway = FakeGateway::new();
        call(
            &mut gateway,
            ME,
            2,
            "AddPortMapping",
            &add_args("6881", "192.168.0.12", "0"),
        )
        .unwrap();
        // Restarted on another external port: the old mapping moves.
        call(
            &mut gateway,
            ME,
            2,
            "AddPortMapping",
            &add_args("6882", "192.168.0.12", "3600"),
        )
        .unwrap();
        let rules = gateway.rules();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].external.first, 6882);
        // AddAnyPortMapping for the same endpoint hands the mapping back,
        // unchanged.
        let before = gateway.rules();
        let reply = call(
            &mut gateway,
            ME,
            2,
            "AddAnyPortMapping",
            &add_args("7000", "192.168.0.12", "60"),
        )
        .unwrap();
        assert_eq!(reply, vec![("NewReservedPort", "6882".to_owned())]);
        assert_eq!(gateway.rules(), before);
        // Another host's mapping of its own endpoint is never moved.
        let mut args = add_args("6883", "192.168.0.13", "0");
        args[3].1 = "6881";
        call(&mut gateway, OTHER, 2, "AddPortMapping", &args).unwrap();
        assert_eq!(gateway.rules().len(), 2);
    }

    #[test]
    fn any_port_mapping_never_replaces_the_callers_other_mapping() {
        let mut gateway = FakeGateway::new();
        let mut args = add_args("6881", "192.168.0.12", "0");
        args[0].1 = "198.51.100.7";
        call(&mut gateway, ME, 2, "AddPortMapping", &args).unwrap();
        // Port 6881 asked for again, for another internal port.
        let mut args = add_args("6881", "192.168.0.12", "0");
        args[3].1 = "6999";
        let reply = call(&mut gateway, ME, 2, "AddAnyPortMapping", &args).unwrap();
        assert_ne!(reply, vec![("NewReservedPort", "6881".to_owned())]);
        let rules = gateway.rules();
        let first = rules
            .iter()
            .find(|rule| rule.external.first == 6881)
            .unwrap();
        assert_eq!(first.internal.first, 6881, "the first mapping was replaced");
        assert_eq!(
            first.allow,
            vec!["198.51.100.7/32".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn any_remote_is_empty_star_or_zero() {
        for remote in ["", "*", "0.0.0.0", " 0.0.0.0 "] {
            let mut gateway = FakeGateway::new();
            let mut args = add_args("6881", "192.168.0.12", "0");
            args[0].1 = remote;
            call(&mut gateway, ME, 2, "AddPortMapping", &args).unwrap();
            assert!(gateway.rules()[0].allow.is_empty(), "{remote:?}");
        }
    }

    #[test]
    fn v2_actions_answer_whatever_version_the_request_names() {
        let mut gateway = FakeGateway::new();
        let reply = call(
            &mut gateway,
            ME,
            1,
            "AddAnyPortMapping",
            &add_args("6881", "192.168.0.12", "0"),
        )
        .unwrap();
        assert_eq!(reply, vec![("NewReservedPort", "6881".to_owned())]);
        let listing = [
            ("NewStartPort", "1"),
            ("NewEndPort", "65535"),
            ("NewProtocol", "TCP"),
            ("NewManage", "0"),
            ("NewNumberOfPorts", "10"),
        ];
        assert!(call(&mut gateway, ME, 1, "GetListOfPortMappings", &listing).is_ok());
    }

    #[test]
    fn in_secure_mode_a_client_sees_only_its_own_mappings() {
        let mut gateway = FakeGateway::new();
        call(
            &mut gateway,
            ME,
            2,
            "AddPortMapping",
            &add_args("6881", "192.168.0.12", "0"),
        )
        .unwrap();
        let specific = [
            ("NewRemoteHost", ""),
            ("NewExternalPort", "6881"),
            ("NewProtocol", "TCP"),
        ];
        let generic = [("NewPortMappingIndex", "0")];
        let listing = [
            ("NewStartPort", "1"),
            ("NewEndPort", "65535"),
            ("NewProtocol", "TCP"),
            ("NewManage", "1"),
            ("NewNumberOfPorts", "0"),
        ];
        assert!(
            call(
                &mut gateway,
                ME,
                2,
                "GetSpecificPortMappingEntry",
                &specific
            )
            .is_ok()
        );
        assert!(call(&mut gateway, ME, 2, "GetGenericPortMappingEntry", &generic).is_ok());
        assert!(call(&mut gateway, ME, 2, "GetListOfPortMappings", &listing).is_ok());
        assert_eq!(
            call(
                &mut gateway,
                OTHER,
                2,
                "GetSpecificPortMappingEntry",
                &specific
            ),
            Err(UpnpError::NoSuchEntryInArray)
        );
        assert_eq!(
            call(
                &mut gateway,
                OTHER,
                2,
                "GetGenericPortMappingEntry",
                &generic
            ),
            Err(UpnpError::SpecifiedArrayIndexInvalid)
        );
        assert_eq!(
            call(&mut gateway, OTHER, 2, "GetListOfPortMappings", &listing),
            Err(UpnpError::PortMappingNotFound)
        );
        // Without secure mode, everyone sees everything.
        let open = UpnpSettings {
            secure_mode: false,
            ..UpnpSettings::default()
        };
        let request = request(2, "GetGenericPortMappingEntry", &generic);
        assert!(handle(&mut gateway, &open, IgdVersion::V2, OTHER, &request).is_ok());
    }

    #[test]
    fn action_names_in_logs_are_known_or_escaped() {
        assert_eq!(action_label("AddPortMapping"), "AddPortMapping");
        let hostile = action_label("Evil\nFAKE LOG LINE\u{1b}[31m");
        assert!(
            !hostile.contains('\n') && !hostile.contains('\u{1b}'),
            "{hostile}"
        );
        assert!(hostile.starts_with("unknown action \""), "{hostile}");
        let long = action_label(&"A".repeat(500));
        assert!(long.len() < 60 && long.ends_with("..."), "{long}");
    }

    #[test]
    fn the_routers_own_address_is_no_internal_client() {
        let mut gateway = FakeGateway::new();
        let settings = UpnpSettings {
            secure_mode: false,
            ..UpnpSettings::default()
        };
        let request = request(2, "AddPortMapping", &add_args("6881", "192.168.0.1", "0"));
        assert_eq!(
            handle(&mut gateway, &settings, IgdVersion::V2, ME, &request),
            Err(UpnpError::InvalidArgs)
        );
    }

    #[test]
    fn any_port_and_conflicts_with_static_rules() {
        let mut gateway = FakeGateway::new();
        let user: ForwardRule = "tcp/6881=192.168.0.20,name=user".parse().unwrap();
        gateway.apply(&[], vec![user]).unwrap();
        let mut args = add_args("6881", "192.168.0.12", "60");
        args[3].1 = "7000";
        assert_eq!(
            call(&mut gateway, ME, 2, "AddPortMapping", &args),
            Err(UpnpError::ConflictWithOtherMechanisms)
        );
        let reply = call(&mut gateway, ME, 2, "AddAnyPortMapping", &args).unwrap();
        assert_eq!(reply, vec![("NewReservedPort", "6882".to_owned())]);
        // UPnP cannot delete the user's rule.
        assert_eq!(
            call(
                &mut gateway,
                ME,
                2,
                "DeletePortMapping",
                &[
                    ("NewRemoteHost", ""),
                    ("NewExternalPort", "6881"),
                    ("NewProtocol", "TCP")
                ]
            ),
            Err(UpnpError::NoSuchEntryInArray)
        );
        // Nor list it.
        let generic = |gateway: &mut FakeGateway, index: &str| {
            call(
                gateway,
                ME,
                2,
                "GetGenericPortMappingEntry",
                &[("NewPortMappingIndex", index)],
            )
        };
        let first = generic(&mut gateway, "0").unwrap();
        assert!(
            first.contains(&("NewExternalPort", "6882".to_owned())),
            "{first:?}"
        );
        assert_eq!(
            generic(&mut gateway, "1"),
            Err(UpnpError::SpecifiedArrayIndexInvalid)
        );
    }

    #[test]
    fn range_delete_and_listing() {
        let mut gateway = FakeGateway::new();
        for (caller, client, port) in [
            (ME, "192.168.0.12", "6881"),
            (OTHER, "192.168.0.13", "6882"),
        ] {
            let mut args = add_args(port, client, "60");
            args[3].1 = port;
            call(&mut gateway, caller, 2, "AddPortMapping", &args).unwrap();
        }
        let range = |manage: &'static str| {
            vec![
                ("NewStartPort", "6000"),
                ("NewEndPort", "7000"),
                ("NewProtocol", "TCP"),
                ("NewManage", manage),
            ]
        };
        let mut list = range("1");
        list.push(("NewNumberOfPorts", "0"));
        let listing = call(&mut gateway, ME, 2, "GetListOfPortMappings", &list).unwrap();
        // Secure mode: the caller's own mappings only.
        assert!(listing[0].1.contains("6881") && !listing[0].1.contains("6882"));
        // Secure mode: only the caller's own mapping goes, NewManage or not.
        call(&mut gateway, ME, 2, "DeletePortMappingRange", &range("1")).unwrap();
        let left = gateway.rules();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].external.first, 6882);
        assert_eq!(
            call(&mut gateway, ME, 2, "DeletePortMappingRange", &range("1")),
            Err(UpnpError::ActionNotAuthorized)
        );
        let mut reversed = range("0");
        reversed[0].1 = "8000";
        assert_eq!(
            call(&mut gateway, ME, 2, "DeletePortMappingRange", &reversed),
            Err(UpnpError::InconsistentParameters)
        );
    }

    #[test]
    fn common_interface_totals_wrap_as_ui4() {
        let mut gateway = FakeGateway::new();
        let request = SoapRequest {
            service_type: format!("{SERVICE_WAN_COMMON}:1"),
            action: "GetTotalBytesSent".into(),
            args: Vec::new(),
        };
        let reply = handle(
            &mut gateway,
            &UpnpSettings::default(),
            IgdVersion::V2,
            ME,
            &request,
        )
        .unwrap();
        assert_eq!(reply, vec![("NewTotalBytesSent", "5".to_owned())]);
    }

    #[test]
    fn a_failed_save_is_an_action_failure() {
        let mut gateway = FakeGateway::new();
        gateway.fail = true;
        assert_eq!(
            call(
                &mut gateway,
                ME,
                2,
                "AddPortMapping",
                &add_args("6881", "192.168.0.12", "60")
            ),
            Err(UpnpError::ActionFailed)
        );
    }
}
