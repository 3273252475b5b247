//! The IGD's actions over rules held in memory, for the tests and the
//! `igd_actions` fuzz target: a gateway with the rule model's own
//! validation, a decoder that turns bytes into a script of requests from
//! several LAN hosts, and the isolation property secure mode promises
//! (what one host asks never changes another host's mappings).
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    IgdVersion, SERVICE_WAN_COMMON, SERVICE_WAN_IP,
    igd::{self, Gateway, GatewayError, Totals},
    soap::SoapRequest,
};
use crate::{
    config::UpnpSettings,
    rules::{ForwardRule, RuleSet, check_conflicts},
};

/// The LAN of the scripts: the router is .1, the hosts .12 to .14.
pub const LAN: &str = "192.168.0.1/24";
pub const HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 168, 0, 12),
    Ipv4Addr::new(192, 168, 0, 13),
    Ipv4Addr::new(192, 168, 0, 14),
];

/// A gateway over a plain rule set: all or nothing, validated as the
/// daemon's transaction validates (quotas and the router's own ports
/// aside, which need the daemon).
#[derive(Clone, Debug, Default)]
pub struct MemoryGateway {
    pub rules: RuleSet,
    pub now: u64,
    pub totals: Totals,
    pub uptime_secs: u64,
    /// Every change fails, as when the store cannot be written.
    pub fail: bool,
}

impl Gateway for MemoryGateway {
    fn external_address(&self) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(203, 0, 113, 1))
    }
    fn lan(&self) -> Option<Ipv4Net> {
        LAN.parse().ok()
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
        next.validate(LAN.parse().expect("a valid LAN"))
            .map_err(GatewayError::Rule)?;
        self.rules = next;
        Ok(())
    }
    fn totals(&self) -> Totals {
        self.totals
    }
    fn uptime_secs(&self) -> u64 {
        self.uptime_secs
    }
    fn now_unix(&self) -> u64 {
        self.now
    }
}

/// The actions a script may call, by index.
const ACTIONS: [&str; 9] = [
    "AddPortMapping",
    "AddAnyPortMapping",
    "DeletePortMapping",
    "DeletePortMappingRange",
    "GetSpecificPortMappingEntry",
    "GetGenericPortMappingEntry",
    "GetListOfPortMappings",
    "GetExternalIPAddress",
    "GetTotalBytesSent",
];

/// Bytes one scripted request takes.
pub const REQUEST_BYTES: usize = 8;

/// Turns bytes into requests, [`REQUEST_BYTES`] each: who asks, which
/// action, then ports, protocol, internal client, lease and the like, most
/// of them from small sets so that requests of different hosts collide on
/// the same ports and endpoints, some raw so that odd values come too.
pub fn decode_script(data: &[u8]) -> Vec<(Ipv4Addr, SoapRequest)> {
    data.chunks_exact(REQUEST_BYTES)
        .map(|bytes| {
            let caller = HOSTS[usize::from(bytes[0]) % HOSTS.len()];
            let action = ACTIONS[usize::from(bytes[1]) % ACTIONS.len()];
            let port = |byte: u8| match byte >> 6 {
                0 => "0".to_owned(),
                3 => u16::from_be_bytes([byte, bytes[7]]).to_string(),
                _ => (7000 + u16::from(byte % 8)).to_string(),
            };
            let flags = bytes[4];
            let protocol = if flags & 1 == 0 { "TCP" } else { "UDP" };
            let client = match (flags >> 1) % 8 {
                0..=3 => caller.to_string(),
                4 => HOSTS[usize::from(bytes[0] / 3) % HOSTS.len()].to_string(),
                5 => "192.168.0.1".to_owned(),
                6 => "10.0.0.7".to_owned(),
                _ => "nonsense".to_owned(),
            };
            let remote = match (flags >> 4) % 4 {
                0 => "",
                1 => "0.0.0.0",
                2 => "198.51.100.7",
                _ => "*",
            };
            let enabled = if flags & 0x40 == 0 { "1" } else { "0" };
            let lease = match bytes[5] % 4 {
                0 => "0".to_owned(),
                1 => "3600".to_owned(),
                _ => u32::from(bytes[5]).to_string(),
            };
            let internal = (6000 + u16::from(bytes[6] % 4)).to_string();
            let manage = if flags & 0x80 == 0 { "0" } else { "1" };
            let args: Vec<(&str, String)> = match action {
                "AddPortMapping" | "AddAnyPortMapping" => vec![
                    ("NewRemoteHost", remote.to_owned()),
                    ("NewExternalPort", port(bytes[2])),
                    ("NewProtocol", protocol.to_owned()),
                    ("NewInternalPort", internal),
                    ("NewInternalClient", client),
                    ("NewEnabled", enabled.to_owned()),
                    ("NewPortMappingDescription", format!("script {}", bytes[3])),
                    ("NewLeaseDuration", lease),
                ],
                "DeletePortMapping" | "GetSpecificPortMappingEntry" => vec![
                    ("NewRemoteHost", remote.to_owned()),
                    ("NewExternalPort", port(bytes[2])),
                    ("NewProtocol", protocol.to_owned()),
                ],
                "DeletePortMappingRange" | "GetListOfPortMappings" => vec![
                    ("NewStartPort", port(bytes[2])),
                    ("NewEndPort", port(bytes[3])),
                    ("NewProtocol", protocol.to_owned()),
                    ("NewManage", manage.to_owned()),
                    ("NewNumberOfPorts", u32::from(bytes[5]).to_string()),
                ],
                "GetGenericPortMappingEntry" => {
                    vec![("NewPortMappingIndex", u32::from(bytes[3] % 8).to_string())]
                }
                _ => Vec::new(),
            };
            let service = if action == "GetTotalBytesSent" {
                format!("{SERVICE_WAN_COMMON}:1")
            } else {
                format!("{SERVICE_WAN_IP}:{}", 1 + bytes[7] % 2)
            };
            (
                caller,
                SoapRequest {
                    service_type: service,
                    action: action.to_owned(),
                    args: args
                        .into_iter()
                        .map(|(name, value)| (name.to_owned(), value))
                        .collect(),
                },
            )
        })
        .collect()
}

/// The mappings made for other hosts than `host`, as they stand.
fn others(rules: &RuleSet, host: Ipv4Addr) -> Vec<ForwardRule> {
    rules
        .iter()
        .filter(|(_, rule)| rule.upnp_lease().is_some_and(|lease| lease.client != host))
        .map(|(_, rule)| rule.clone())
        .collect()
}

/// Runs a script through the IGD in secure mode and checks, after each
/// request, what secure mode and the rule model promise: no host's request
/// changed another host's mappings, and the rules stay free of conflicts.
/// Returns the first broken promise, described.
pub fn run_script(
    gateway: &mut MemoryGateway,
    igd: IgdVersion,
    script: &[(Ipv4Addr, SoapRequest)],
) -> Result<(), String> {
    let settings = UpnpSettings::default();
    for (step, (caller, request)) in script.iter().enumerate() {
        let before = others(&gateway.rules, *caller);
        let outcome = igd::handle(gateway, &settings, igd, *caller, request);
        let after = others(&gateway.rules, *caller);
        if before != after {
            return Err(format!(
                "step {step}: {} of {caller} ({:?}, answered {outcome:?}) changed other hosts' \
                 mappings from {before:#?} to {after:#?}",
                request.action, request.args
            ));
        }
        check_conflicts(&gateway.rules.to_vec())
            .map_err(|error| format!("step {step}: the rules conflict: {error}"))?;
        gateway.now += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A gateway where every host already holds mappings, so that the
    /// script has something of the others' to break.
    fn seeded() -> MemoryGateway {
        let mut gateway = MemoryGateway {
            now: 1_000_000,
            ..MemoryGateway::default()
        };
        let script: Vec<u8> = HOSTS
            .iter()
            .enumerate()
            .flat_map(|(index, _)| {
                // AddPortMapping of port 7000+index to itself, TCP and UDP.
                let host = index as u8;
                [
                    [host, 0, 0x40 | host, 0, 0, 1, host, 0],
                    [host, 0, 0x40 | host, 0, 1, 1, host, 0],
                ]
            })
            .flatten()
            .collect();
        run_script(&mut gateway, IgdVersion::V2, &decode_script(&script)).unwrap();
        assert_eq!(gateway.rules.len(), 6, "{:#?}", gateway.rules.to_vec());
        gateway
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Secure mode: whatever a host asks, in whatever order, no other
        /// host's mapping changes.
        #[test]
        fn no_request_of_one_host_changes_another_hosts_mappings(
            script in proptest::collection::vec(any::<u8>(), 0..(REQUEST_BYTES * 40)),
            v1 in any::<bool>(),
        ) {
            let igd = if v1 { IgdVersion::V1 } else { IgdVersion::V2 };
            let mut gateway = seeded();
            let result = run_script(&mut gateway, igd, &decode_script(&script));
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
        }
    }

    /// The property can fail: a gateway that lets anyone delete anything
    /// (secure mode off) is caught.
    #[test]
    fn the_property_catches_a_host_deleting_anothers_mapping() {
        let mut gateway = seeded();
        // DeletePortMapping by .13 of .12's TCP 7000, with secure mode off.
        let (caller, request) = decode_script(&[1, 2, 0x40, 0, 0, 0, 0, 0]).pop().unwrap();
        let settings = UpnpSettings {
            secure_mode: false,
            ..UpnpSettings::default()
        };
        let before = others(&gateway.rules, caller);
        igd::handle(&mut gateway, &settings, IgdVersion::V2, caller, &request).unwrap();
        assert_ne!(before, others(&gateway.rules, caller));
        // And secure mode refuses the same request.
        let mut gateway = seeded();
        assert!(run_script(&mut gateway, IgdVersion::V2, &[(caller, request)]).is_ok());
        assert_eq!(gateway.rules.len(), 6);
    }
}
