//! The mapping model NAT-PMP and PCP share, over a [`Gateway`] (the
//! daemon's rule transaction, or a fake in the tests).
//!
//! A mapping is a forwarding rule with a lease whose origin is NAT-PMP or
//! PCP, named `natpmp-udp-PORT` / `pcp-tcp-PORT`. The policy is the IGD's:
//! secure mode (a client maps only to itself, manages only its own), the
//! `[upnp]` permissions, and the rule model's own checks (no port held by
//! a rule of any origin is given to another, no live dynamic mapping's).
//! Each protocol translates a [`MapFailure`] into its own result code.
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use super::wire::{MapProtocol, PcpResult, PmpResult};
use crate::{
    config::{NatpmpSettings, UpnpSettings},
    rules::{
        CLIENT_PORTS, ForwardRule, Lease, LeaseOrigin, PortIndex, PortRange, Protocol, RuleError,
    },
    upnp::igd::GatewayError,
};

/// How many free ports are offered to the rule transaction for one
/// request before giving up: one is refused only when a live dynamic
/// mapping or a router socket has it.
const PORT_ATTEMPTS: u32 = 8;

/// What the server needs from the daemon. `apply` is all or nothing, as
/// the IGD's is.
pub trait Gateway {
    fn external_address(&self) -> Option<Ipv4Addr>;
    fn lan(&self) -> Option<Ipv4Net>;
    fn rules(&self) -> Vec<ForwardRule>;
    /// Removes the rules named in `remove`, then adds `add` (a rule with
    /// the name of a removed one keeps its id).
    fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError>;
    /// As [`crate::upnp::igd::Gateway::free_port`].
    fn free_port(&self, proto: u8, start: u16, usable: &mut dyn FnMut(u16) -> bool) -> Option<u16> {
        PortIndex::new(&self.rules()).next_free(proto, start, CLIENT_PORTS, usable)
    }
    fn now_unix(&self) -> u64;
    /// The external port of the dynamic mapping the datapath made for
    /// `internal`'s flow toward `remote` (its first packet out: one for
    /// every remote under endpoint-independent mapping, one per remote
    /// address, or address and port, under the other behaviours), and how
    /// long it lives idle, in seconds; `None` when it has none.
    fn dynamic_mapping(
        &self,
        protocol: MapProtocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<(u16, u32)> {
        let _ = (protocol, internal, remote);
        None
    }
}

/// The policy a request is judged by.
#[derive(Clone, Debug)]
pub struct Policy {
    pub upnp: UpnpSettings,
    pub natpmp: NatpmpSettings,
}

/// The rule name of a NAT-PMP or PCP mapping.
pub fn mapping_name(origin: LeaseOrigin, protocol: MapProtocol, port: u16) -> String {
    let prefix = match origin {
        LeaseOrigin::Pcp => "pcp",
        _ => "natpmp",
    };
    let protocol = match protocol {
        MapProtocol::Udp => "udp",
        MapProtocol::Tcp => "tcp",
    };
    format!("{prefix}-{protocol}-{port}")
}

fn rule_protocol(protocol: MapProtocol) -> Protocol {
    match protocol {
        MapProtocol::Udp => Protocol::Udp,
        MapProtocol::Tcp => Protocol::Tcp,
    }
}

/// Why a mapping was not made, in terms both protocols translate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapFailure {
    #[error("the gateway has no public address")]
    NoExternalAddress,
    #[error("{0} is not a host of the LAN")]
    NotInLan(Ipv4Addr),
    #[error("secure mode: {caller} may map only to itself, not to {internal}")]
    NotSelf {
        caller: Ipv4Addr,
        internal: Ipv4Addr,
    },
    #[error("internal endpoint {0}:{1} is the target of rule {2}")]
    TargetTaken(Ipv4Addr, u16, String),
    #[error("the mapping of {0}:{1} was made with another nonce")]
    NonceMismatch(Ipv4Addr, u16),
    #[error("external port {0} is not permitted to {1}:{2} by the permissions")]
    NotPermitted(u16, Ipv4Addr, u16),
    #[error("internal port 0 (every port) cannot be mapped")]
    AllPorts,
    #[error("external port {0} is not available")]
    PortUnavailable(u16),
    #[error("no external port available in {0} tries")]
    NoPort(u32),
    #[error("the rules are full")]
    TooMany,
    #[error("{0}")]
    Failed(String),
}

impl MapFailure {
    pub(super) fn pmp(&self) -> PmpResult {
        match self {
            MapFailure::NoExternalAddress => PmpResult::NetworkFailure,
            MapFailure::NoPort(_) | MapFailure::TooMany | MapFailure::Failed(_) => {
                PmpResult::OutOfResources
            }
            _ => PmpResult::Refused,
        }
    }

    pub(super) fn pcp(&self) -> PcpResult {
        match self {
            MapFailure::NoExternalAddress => PcpResult::NetworkFailure,
            MapFailure::NoPort(_) | MapFailure::TooMany | MapFailure::Failed(_) => {
                PcpResult::NoResources
            }
            MapFailure::PortUnavailable(_) => PcpResult::CannotProvideExternal,
            _ => PcpResult::NotAuthorized,
        }
    }
}

/// One mapping to make or renew.
#[derive(Clone, Debug)]
pub(super) struct Ask {
    pub(super) origin: LeaseOrigin,
    pub(super) caller: Ipv4Addr,
    pub(super) internal: Ipv4Addr,
    pub(super) protocol: MapProtocol,
    pub(super) internal_port: u16,
    pub(super) suggested: u16,
    pub(super) lifetime: u32,
    pub(super) allow: Vec<Ipv4Net>,
    pub(super) prefer_failure: bool,
    pub(super) nonce: Option<String>,
}

fn is_mapping_of(
    rule: &ForwardRule,
    origin: LeaseOrigin,
    internal: Ipv4Addr,
    protocol: MapProtocol,
) -> bool {
    rule.lease_of(origin).is_some()
        && rule.internal_addr == internal
        && rule.protocol == rule_protocol(protocol)
}

fn check_lan(gateway: &dyn Gateway, addr: Ipv4Addr) -> Result<(), MapFailure> {
    let lan = gateway.lan().ok_or(MapFailure::NotInLan(addr))?;
    if !lan.contains(&addr)
        || (lan.prefix_len() < 31 && (addr == lan.network() || addr == lan.broadcast()))
    {
        return Err(MapFailure::NotInLan(addr));
    }
    Ok(())
}

/// Makes or renews a mapping; returns the external port and lifetime.
fn map(gateway: &mut dyn Gateway, policy: &Policy, ask: Ask) -> Result<(u16, u32), MapFailure> {
    gateway
        .external_address()
        .ok_or(MapFailure::NoExternalAddress)?;
    if policy.upnp.secure_mode && ask.internal != ask.caller {
        return Err(MapFailure::NotSelf {
            caller: ask.caller,
            internal: ask.internal,
        });
    }
    check_lan(gateway, ask.internal)?;
    if ask.internal_port == 0 {
        return Err(MapFailure::AllPorts);
    }
    let lifetime = ask.lifetime.min(policy.natpmp.max_lifetime);
    let now = gateway.now_unix();
    let rules = gateway.rules();
    let number = rule_protocol(ask.protocol).numbers()[0];
    let make = |port: u16| ForwardRule {
        name: mapping_name(ask.origin, ask.protocol, port),
        protocol: rule_protocol(ask.protocol),
        external: PortRange::single(port),
        internal_addr: ask.internal,
        internal: PortRange::single(ask.internal_port),
        allow: ask.allow.clone(),
        enabled: true,
        upnp: Some(Lease {
            origin: ask.origin,
            client: ask.caller,
            description: ask.origin.protocol_name().to_owned(),
            expires_at: Some(now + u64::from(lifetime)),
            nonce: ask.nonce.clone(),
        }),
        schedule: Default::default(),
        off_schedule: false,
    };
    // The internal endpoint already has a rule: ours to renew, or not ours.
    if let Some(existing) = rules.iter().find(|rule| {
        rule.enabled
            && rule.internal_addr == ask.internal
            && rule.protocol.numbers().contains(&number)
            && (rule.internal.first..=rule.internal.last).contains(&ask.internal_port)
    }) {
        let Some(lease) = existing.lease_of(ask.origin) else {
            return Err(MapFailure::TargetTaken(
                ask.internal,
                ask.internal_port,
                existing.name.clone(),
            ));
        };
        if lease.nonce != ask.nonce {
            return Err(MapFailure::NonceMismatch(ask.internal, ask.internal_port));
        }
        let port = existing.external.first;
        gateway
            .apply(std::slice::from_ref(&existing.name), vec![make(port)])
            .map_err(failure)?;
        return Ok((port, lifetime));
    }
    let first = match ask.suggested {
        0 if ask.internal_port >= 1024 => ask.internal_port,
        0 => 1024,
        port => port,
    };
    let permitted = |port| policy.upnp.permits(port, ask.internal, ask.internal_port);
    let held = |port: u16| {
        rules.iter().any(|rule| {
            rule.enabled
                && rule.protocol.numbers().contains(&number)
                && rule.external.contains(port)
        })
    };
    let offer = |gateway: &mut dyn Gateway, port: u16| match gateway.apply(&[], vec![make(port)]) {
        Ok(()) => Ok(true),
        Err(GatewayError::Rule(
            RuleError::Overlap { .. }
            | RuleError::InUseByMapping { .. }
            | RuleError::RouterSocket { .. }
            | RuleError::ReservedPort { .. },
        )) => Ok(false),
        Err(error) => Err(failure(error)),
    };
    // The suggested port alone (PREFER_FAILURE), or first when it is a
    // privileged one, which the search below never offers.
    if (ask.prefer_failure && ask.suggested != 0) || first < CLIENT_PORTS.first {
        if !permitted(first) {
            if ask.prefer_failure {
                return Err(MapFailure::NotPermitted(
                    first,
                    ask.internal,
                    ask.internal_port,
                ));
            }
        } else if !held(first) && offer(gateway, first)? {
            return Ok((first, lifetime));
        }
        if ask.prefer_failure {
            return Err(MapFailure::PortUnavailable(first));
        }
    }
    // Else the next free port from the suggestion on, from the gateway's
    // index: no rule scan per port.
    let mut start = first.max(CLIENT_PORTS.first);
    let mut usable = |port| permitted(port);
    for _ in 0..PORT_ATTEMPTS {
        let Some(port) = gateway.free_port(number, start, &mut usable) else {
            return Err(if CLIENT_PORTS.ports().any(&permitted) {
                MapFailure::NoPort(PORT_ATTEMPTS)
            } else {
                MapFailure::NotPermitted(first, ask.internal, ask.internal_port)
            });
        };
        if offer(gateway, port)? {
            return Ok((port, lifetime));
        }
        start = if port == CLIENT_PORTS.last {
            CLIENT_PORTS.first
        } else {
            port + 1
        };
    }
    Err(MapFailure::NoPort(PORT_ATTEMPTS))
}

fn failure(error: GatewayError) -> MapFailure {
    match error {
        GatewayError::Rule(
            RuleError::TooMany | RuleError::ClientQuota { .. } | RuleError::LeasedQuota { .. },
        ) => MapFailure::TooMany,
        GatewayError::Rule(RuleError::SharedTarget {
            other, addr, port, ..
        }) => MapFailure::TargetTaken(addr, port, other),
        GatewayError::Rule(error) => MapFailure::Failed(error.to_string()),
        GatewayError::Failed(message) => MapFailure::Failed(message),
    }
}

/// Deletes the `origin` mappings of `internal` for `protocol` (one
/// internal port, or all of them with `None`); returns the external port
/// of the one deleted, if it was one.
pub(super) struct Delete<'a> {
    pub(super) origin: LeaseOrigin,
    pub(super) caller: Ipv4Addr,
    pub(super) internal: Ipv4Addr,
    pub(super) protocol: MapProtocol,
    pub(super) internal_port: Option<u16>,
    pub(super) nonce: Option<&'a str>,
}

pub(super) fn unmap(
    gateway: &mut dyn Gateway,
    policy: &Policy,
    delete: Delete<'_>,
) -> Result<Option<u16>, MapFailure> {
    let Delete {
        origin,
        caller,
        internal,
        protocol,
        internal_port,
        nonce,
    } = delete;
    if policy.upnp.secure_mode && internal != caller {
        return Err(MapFailure::NotSelf { caller, internal });
    }
    let rules = gateway.rules();
    let matching: Vec<&ForwardRule> = rules
        .iter()
        .filter(|rule| {
            is_mapping_of(rule, origin, internal, protocol)
                && internal_port.is_none_or(|port| rule.internal.first == port)
        })
        .collect();
    if let Some(rule) = matching
        .iter()
        .find(|rule| rule.upnp.as_ref().and_then(|lease| lease.nonce.as_deref()) != nonce)
    {
        return Err(MapFailure::NonceMismatch(internal, rule.internal.first));
    }
    if matching.is_empty() {
        // Deleting what is not there succeeds (RFC 6886 3.4, RFC 6887 15).
        return Ok(None);
    }
    let names: Vec<String> = matching.iter().map(|rule| rule.name.clone()).collect();
    let port = (matching.len() == 1).then(|| matching[0].external.first);
    gateway.apply(&names, Vec::new()).map_err(failure)?;
    Ok(port)
}

pub(super) fn map_logged(
    gateway: &mut dyn Gateway,
    policy: &Policy,
    ask: Ask,
) -> Result<(u16, u32), MapFailure> {
    let (origin, caller) = (ask.origin, ask.caller);
    map(gateway, policy, ask).inspect_err(|error| {
        tracing::info!(
            "{} map from {caller} refused: {error}",
            origin.protocol_name()
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natpmp::{
        testing::*,
        wire::{PcpOption, pcp_request_bytes},
    };

    #[test]
    fn a_port_held_by_another_client_or_protocol_is_not_given_away() {
        let mut gateway = fake();
        let policy = policy();
        send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 6881, 7000, 60),
        );
        // Another host asking for the same external port gets another one.
        let answer = send(
            &mut gateway,
            &policy,
            OTHER,
            &pmp_map(MapProtocol::Tcp, 6881, 7000, 60),
        );
        let (result, _, port, _) = pmp_answer(&answer);
        assert_eq!(result, 0);
        assert_ne!(port, 7000);
        // PCP with PREFER_FAILURE for the held port: CANNOT_PROVIDE_EXTERNAL.
        let request = pcp_map_request(OTHER, 5555, 7000, 60, vec![PcpOption::PreferFailure]);
        let answer = send(&mut gateway, &policy, OTHER, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::CannotProvideExternal as u8);
        // PCP deleting the NAT-PMP mapping's endpoint does nothing to it.
        let request = pcp_map_request(CLIENT, 6881, 0, 0, vec![]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], 0);
        assert!(
            gateway
                .rules()
                .iter()
                .any(|rule| rule.name == "natpmp-tcp-7000")
        );
        // Nor can PCP map the endpoint NAT-PMP holds.
        let request = pcp_map_request(CLIENT, 6881, 0, 60, vec![]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::NotAuthorized as u8);
    }

    #[test]
    fn permissions_apply() {
        let mut gateway = fake();
        let policy = policy();
        // Default permissions: no privileged internal port.
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 22, 2222, 60),
        );
        assert_eq!(pmp_answer(&answer).0, PmpResult::Refused as u16);
        // Port 0 suggested for a privileged internal port is refused too.
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 0, 0, 60),
        );
        assert_eq!(pmp_answer(&answer).0, PmpResult::Refused as u16);
        assert!(gateway.rules().is_empty());
    }

    #[test]
    fn secure_mode_keeps_a_client_to_itself() {
        let mut gateway = fake();
        let policy = policy();
        send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 6881, 7000, 60),
        );
        // OTHER deleting "all its mappings" leaves CLIENT's alone.
        send(
            &mut gateway,
            &policy,
            OTHER,
            &pmp_map(MapProtocol::Tcp, 0, 0, 0),
        );
        assert_eq!(gateway.rules().len(), 1);
    }
}
