//! The NAT-PMP and PCP server as a socket-free state machine: a datagram,
//! its sender and the time in, the answer out, over a [`Gateway`] (the
//! daemon's rule transaction, or a fake in the tests).
//!
//! A mapping is a forwarding rule with a lease whose origin is NAT-PMP or
//! PCP, named `natpmp-udp-PORT` / `pcp-tcp-PORT`. The policy is the IGD's:
//! secure mode (a client maps only to itself, manages only its own), the
//! `[upnp]` permissions, and the rule model's own checks (no port held by
//! a rule of any origin is given to another, no live dynamic mapping's).
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;

use super::wire::{
    self, Incoming, MapData, MapProtocol, PcpBody, PcpOption, PcpRequest, PcpResponse, PcpResult,
    PmpError, PmpMap, PmpRequest, PmpResponse, PmpResult,
};
use crate::{
    config::{NatpmpSettings, UpnpSettings},
    rules::{ForwardRule, Lease, LeaseOrigin, PortRange, Protocol, RuleError},
    upnp::igd::GatewayError,
};

/// How many external ports are tried for one request before giving up.
const PORT_ATTEMPTS: u32 = 256;
/// Allowed-remote prefixes one PCP mapping may carry (FILTER options).
pub const MAX_FILTERS: usize = 16;
/// Rate-limiter entries kept before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// What the server needs from the daemon. `apply` is all or nothing, as
/// the IGD's is.
pub trait Gateway {
    fn external_address(&self) -> Option<Ipv4Addr>;
    fn lan(&self) -> Option<Ipv4Net>;
    fn rules(&self) -> Vec<ForwardRule>;
    /// Removes the rules named in `remove`, then adds `add` (a rule with
    /// the name of a removed one keeps its id).
    fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError>;
    fn now_unix(&self) -> u64;
    /// The external port of the dynamic mapping the datapath made for
    /// `internal` (its first packet out), and how long it lives idle, in
    /// seconds; `None` when it has none.
    fn dynamic_mapping(&self, protocol: MapProtocol, internal: SocketAddrV4) -> Option<(u16, u32)> {
        let _ = (protocol, internal);
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
    fn pmp(&self) -> PmpResult {
        match self {
            MapFailure::NoExternalAddress => PmpResult::NetworkFailure,
            MapFailure::NoPort(_) | MapFailure::TooMany | MapFailure::Failed(_) => {
                PmpResult::OutOfResources
            }
            _ => PmpResult::Refused,
        }
    }

    fn pcp(&self) -> PcpResult {
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
struct Ask {
    origin: LeaseOrigin,
    caller: Ipv4Addr,
    internal: Ipv4Addr,
    protocol: MapProtocol,
    internal_port: u16,
    suggested: u16,
    lifetime: u32,
    allow: Vec<Ipv4Net>,
    prefer_failure: bool,
    nonce: Option<String>,
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
    let candidates: Vec<u16> = if ask.prefer_failure && ask.suggested != 0 {
        vec![ask.suggested]
    } else {
        let span = 65536 - 1024;
        (0..PORT_ATTEMPTS)
            .map(|step| (1024 + (u32::from(first.max(1024)) - 1024 + step) % span) as u16)
            .collect()
    };
    // A suggested privileged port is tried first, as asked.
    let candidates: Vec<u16> = if first < 1024 && !(ask.prefer_failure && ask.suggested != 0) {
        std::iter::once(first).chain(candidates).collect()
    } else {
        candidates
    };
    let only = candidates.len() == 1;
    let mut permitted = false;
    let mut last = MapFailure::NoPort(PORT_ATTEMPTS);
    for &port in &candidates {
        if !policy.upnp.permits(port, ask.internal, ask.internal_port) {
            continue;
        }
        permitted = true;
        let held = rules.iter().any(|rule| {
            rule.enabled
                && rule.protocol.numbers().contains(&number)
                && (rule.external.first..=rule.external.last).contains(&port)
        });
        if held {
            last = MapFailure::PortUnavailable(port);
            continue;
        }
        match gateway.apply(&[], vec![make(port)]) {
            Ok(()) => return Ok((port, lifetime)),
            Err(GatewayError::Rule(
                RuleError::Overlap { .. } | RuleError::InUseByMapping { .. },
            )) => last = MapFailure::PortUnavailable(port),
            Err(error) => return Err(failure(error)),
        }
    }
    Err(if !permitted {
        MapFailure::NotPermitted(candidates[0], ask.internal, ask.internal_port)
    } else if only {
        last
    } else {
        MapFailure::NoPort(PORT_ATTEMPTS)
    })
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
struct Delete<'a> {
    origin: LeaseOrigin,
    caller: Ipv4Addr,
    internal: Ipv4Addr,
    protocol: MapProtocol,
    internal_port: Option<u16>,
    nonce: Option<&'a str>,
}

fn unmap(
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

/// A token bucket per LAN host.
#[derive(Debug)]
struct RateLimiter {
    buckets: HashMap<Ipv4Addr, (f64, Instant)>,
}

impl RateLimiter {
    fn admit(&mut self, client: Ipv4Addr, now: Instant, rate: u32) -> bool {
        let capacity = f64::from(rate) * 2.0;
        if self.buckets.len() >= MAX_TRACKED_CLIENTS {
            self.buckets.retain(|_, (_, seen)| {
                now.saturating_duration_since(*seen) < Duration::from_secs(10)
            });
        }
        let (tokens, seen) = self.buckets.entry(client).or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(*seen).as_secs_f64();
        *tokens = (*tokens + elapsed * f64::from(rate)).min(capacity);
        *seen = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The server's state: when its epoch began (RFC 6886 3.6, RFC 6887 8.5)
/// and the rate limiter. The epoch begins when the service starts, which
/// is when mappings may have been lost (a restart, switching it on): a
/// client that sees the epoch go back re-creates its mappings.
#[derive(Debug)]
pub struct Server {
    epoch_start: Instant,
    limiter: RateLimiter,
}

/// What became of one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Answer(Vec<u8>),
    /// Not answered, and why.
    Dropped(String),
}

impl Server {
    pub fn new(now: Instant) -> Self {
        Self {
            epoch_start: now,
            limiter: RateLimiter {
                buckets: HashMap::new(),
            },
        }
    }

    /// Seconds since the start of the epoch.
    pub fn epoch(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch_start).as_secs() as u32
    }

    /// Whether `client` is within its rate.
    pub fn admit(&mut self, client: Ipv4Addr, now: Instant, rate: u32) -> bool {
        self.limiter.admit(client, now, rate)
    }

    /// The NAT-PMP announcement of the public address (RFC 6886 3.2.1).
    pub fn pmp_announcement(&self, address: Ipv4Addr, now: Instant) -> Vec<u8> {
        PmpResponse::Address {
            result: PmpResult::Success,
            epoch: self.epoch(now),
            address,
        }
        .to_bytes()
    }

    /// The PCP unsolicited ANNOUNCE (RFC 6887 14.1.3).
    pub fn pcp_announcement(&self, now: Instant) -> Vec<u8> {
        PcpResponse::announce(self.epoch(now)).to_bytes()
    }

    /// One datagram from `from`, a LAN host (the socket sees to that).
    pub fn handle(
        &self,
        gateway: &mut dyn Gateway,
        policy: &Policy,
        from: SocketAddrV4,
        data: &[u8],
        now: Instant,
    ) -> Outcome {
        let epoch = self.epoch(now);
        match wire::classify(data) {
            Incoming::Ignored(reason) => Outcome::Dropped(reason.to_string()),
            Incoming::Pmp(Err(PmpError::UnsupportedOpcode(opcode))) => Outcome::Answer(
                PmpResponse::Error {
                    opcode,
                    result: PmpResult::UnsupportedOpcode,
                    epoch,
                }
                .to_bytes(),
            ),
            Incoming::Pmp(Err(error)) => Outcome::Dropped(error.to_string()),
            Incoming::Pmp(Ok(request)) => {
                Outcome::Answer(pmp(gateway, policy, *from.ip(), request, epoch).to_bytes())
            }
            Incoming::Pcp(Err(error)) => {
                tracing::debug!("PCP from {from}: {error}");
                Outcome::Answer(PcpResponse::error(&error, epoch).to_bytes())
            }
            Incoming::Pcp(Ok(request)) => {
                Outcome::Answer(pcp(gateway, policy, *from.ip(), request, epoch).to_bytes())
            }
        }
    }
}

fn pmp(
    gateway: &mut dyn Gateway,
    policy: &Policy,
    caller: Ipv4Addr,
    request: PmpRequest,
    epoch: u32,
) -> PmpResponse {
    let map = match request {
        PmpRequest::Address => {
            let address = gateway.external_address();
            return PmpResponse::Address {
                result: if address.is_some() {
                    PmpResult::Success
                } else {
                    PmpResult::NetworkFailure
                },
                epoch,
                address: address.unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
        }
        PmpRequest::Map(map) => map,
    };
    let PmpMap {
        protocol,
        internal_port,
        suggested_external_port,
        lifetime,
    } = map;
    let answer = |result, external_port, lifetime| PmpResponse::Map {
        protocol,
        result,
        epoch,
        internal_port,
        external_port,
        lifetime,
    };
    if lifetime == 0 {
        // Delete one mapping, or (internal port 0) all of the client's.
        let port = (internal_port != 0).then_some(internal_port);
        return match unmap(
            gateway,
            policy,
            Delete {
                origin: LeaseOrigin::Natpmp,
                caller,
                internal: caller,
                protocol,
                internal_port: port,
                nonce: None,
            },
        ) {
            Ok(_) => answer(PmpResult::Success, 0, 0),
            Err(error) => {
                tracing::debug!("NAT-PMP delete from {caller} refused: {error}");
                answer(error.pmp(), 0, 0)
            }
        };
    }
    let ask = Ask {
        origin: LeaseOrigin::Natpmp,
        caller,
        internal: caller,
        protocol,
        internal_port,
        suggested: suggested_external_port,
        lifetime,
        allow: Vec::new(),
        prefer_failure: false,
        nonce: None,
    };
    match map_logged(gateway, policy, ask) {
        Ok((port, granted)) => answer(PmpResult::Success, port, granted),
        Err(error) => answer(error.pmp(), 0, 0),
    }
}

fn map_logged(
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The FILTER options as allowed remotes (RFC 6887 13.3): each an IPv4
/// prefix; prefix length 0 removes all; a remote port cannot be honoured
/// (the rule model filters by address), and is refused.
fn filters_to_allow(request: &PcpRequest) -> Result<Vec<Ipv4Net>, PcpResult> {
    let mut allow = Vec::new();
    for filter in request.filters() {
        if filter.prefix_len == 0 {
            allow.clear();
            continue;
        }
        let Some(addr) = wire::unmapped(filter.remote_addr) else {
            return Err(PcpResult::MalformedOption);
        };
        if !(96..=128).contains(&filter.prefix_len) {
            return Err(PcpResult::MalformedOption);
        }
        if filter.remote_port != 0 {
            return Err(PcpResult::UnsuppOption);
        }
        let net = Ipv4Net::new(addr, filter.prefix_len - 96)
            .map_err(|_| PcpResult::MalformedOption)?
            .trunc();
        if !allow.contains(&net) {
            allow.push(net);
        }
        if allow.len() > MAX_FILTERS {
            return Err(PcpResult::ExcessiveRemotePeers);
        }
    }
    Ok(allow)
}

fn pcp(
    gateway: &mut dyn Gateway,
    policy: &Policy,
    caller: Ipv4Addr,
    request: PcpRequest,
    epoch: u32,
) -> PcpResponse {
    let error = |result: PcpResult, body: Option<PcpBody>| PcpResponse {
        opcode: request.opcode,
        result,
        lifetime: result.error_lifetime(),
        epoch,
        body,
        options: Vec::new(),
    };
    // Section 8.3: the header's address must be the packet's source.
    if wire::unmapped(request.client) != Some(caller) {
        tracing::debug!(
            "PCP from {caller}: client address {} in the header",
            request.client
        );
        return error(PcpResult::AddressMismatch, Some(request.body.clone()));
    }
    let map = match &request.body {
        PcpBody::Announce => {
            return PcpResponse {
                opcode: request.opcode,
                result: PcpResult::Success,
                lifetime: 0,
                epoch,
                body: None,
                options: Vec::new(),
            };
        }
        PcpBody::Peer(peer) => return pcp_peer(gateway, policy, caller, &request, *peer, epoch),
        PcpBody::Map(map) => *map,
    };
    let body = Some(request.body.clone());
    let protocol = match map.protocol {
        wire::PROTO_TCP => MapProtocol::Tcp,
        wire::PROTO_UDP => MapProtocol::Udp,
        // 0 is "all protocols", which a forwarding rule cannot be.
        _ => return error(PcpResult::UnsuppProtocol, body),
    };
    let internal = match request.third_party() {
        None => caller,
        Some(_) if policy.upnp.secure_mode => return error(PcpResult::NotAuthorized, body),
        Some(addr) => match wire::unmapped(addr) {
            Some(addr) => addr,
            None => return error(PcpResult::MalformedOption, body),
        },
    };
    let allow = match filters_to_allow(&request) {
        Ok(allow) => allow,
        Err(result) => return error(result, body),
    };
    let Some(external_addr) = gateway.external_address() else {
        return error(PcpResult::NetworkFailure, body);
    };
    let nonce = hex(&map.nonce);
    let respond = |port: u16, lifetime: u32| PcpResponse {
        opcode: request.opcode,
        result: PcpResult::Success,
        lifetime,
        epoch,
        body: Some(PcpBody::Map(MapData {
            external_port: port,
            external_addr: wire::mapped(external_addr),
            ..map
        })),
        // The options processed are returned (section 7.3).
        options: request
            .options
            .iter()
            .copied()
            .filter(|option| !matches!(option, PcpOption::PreferFailure) || port != 0)
            .collect(),
    };
    if request.lifetime == 0 {
        let port = (map.internal_port != 0).then_some(map.internal_port);
        return match unmap(
            gateway,
            policy,
            Delete {
                origin: LeaseOrigin::Pcp,
                caller,
                internal,
                protocol,
                internal_port: port,
                nonce: Some(&nonce),
            },
        ) {
            Ok(deleted) => respond(deleted.unwrap_or(map.external_port), 0),
            Err(failure) => {
                tracing::debug!("PCP delete from {caller} refused: {failure}");
                error(failure.pcp(), body)
            }
        };
    }
    // A suggested address other than ours (and not "any").
    let suggested_addr = wire::unmapped(map.external_addr);
    let any_addr =
        map.external_addr.is_unspecified() || suggested_addr == Some(Ipv4Addr::UNSPECIFIED);
    if request.prefer_failure() && !any_addr && suggested_addr != Some(external_addr) {
        return error(PcpResult::CannotProvideExternal, body);
    }
    let ask = Ask {
        origin: LeaseOrigin::Pcp,
        caller,
        internal,
        protocol,
        internal_port: map.internal_port,
        suggested: map.external_port,
        lifetime: request.lifetime,
        allow,
        prefer_failure: request.prefer_failure(),
        nonce: Some(nonce),
    };
    match map_logged(gateway, policy, ask) {
        Ok((port, granted)) => respond(port, granted),
        Err(failure) => error(failure.pcp(), body),
    }
}

/// PEER (RFC 6887 section 12) where it fits the mapping model: the
/// datapath makes dynamic mappings itself, on a host's first packet out,
/// so PEER reports the one there is (a forwarding rule's port, else the
/// dynamic mapping's) and cannot create one ahead of the traffic
/// (CANNOT_PROVIDE_EXTERNAL, short-lived: retry once the flow has
/// started). Its lifetime is the mapping's idle timeout at most; a
/// lifetime of 0 is acknowledged, the mapping ages out by itself.
fn pcp_peer(
    gateway: &mut dyn Gateway,
    policy: &Policy,
    caller: Ipv4Addr,
    request: &PcpRequest,
    peer: wire::PeerData,
    epoch: u32,
) -> PcpResponse {
    let body = Some(request.body.clone());
    let error = |result: PcpResult| PcpResponse {
        opcode: request.opcode,
        result,
        lifetime: result.error_lifetime(),
        epoch,
        body: body.clone(),
        options: Vec::new(),
    };
    let protocol = match peer.map.protocol {
        wire::PROTO_TCP => MapProtocol::Tcp,
        wire::PROTO_UDP => MapProtocol::Udp,
        _ => return error(PcpResult::UnsuppProtocol),
    };
    if peer.map.internal_port == 0
        || peer.remote_port == 0
        || wire::unmapped(peer.remote_addr).is_none()
    {
        return error(PcpResult::MalformedRequest);
    }
    let internal = match request.third_party() {
        None => caller,
        Some(_) if policy.upnp.secure_mode => return error(PcpResult::NotAuthorized),
        Some(addr) => match wire::unmapped(addr) {
            Some(addr) => addr,
            None => return error(PcpResult::MalformedOption),
        },
    };
    let Some(external_addr) = gateway.external_address() else {
        return error(PcpResult::NetworkFailure);
    };
    let number = protocol.number();
    let port = peer.map.internal_port;
    let by_rule = gateway.rules().into_iter().find_map(|rule| {
        (rule.enabled
            && rule.internal_addr == internal
            && rule.protocol.numbers().contains(&number)
            && (rule.internal.first..=rule.internal.last).contains(&port))
        .then(|| {
            let external = rule.external.first + (port - rule.internal.first);
            let left = rule
                .upnp
                .as_ref()
                .and_then(|lease| lease.expires_at)
                .map_or(u32::MAX, |at| at.saturating_sub(gateway.now_unix()) as u32);
            (external, left)
        })
    });
    let found =
        by_rule.or_else(|| gateway.dynamic_mapping(protocol, SocketAddrV4::new(internal, port)));
    let Some((external, most)) = found else {
        return error(PcpResult::CannotProvideExternal);
    };
    PcpResponse {
        opcode: request.opcode,
        result: PcpResult::Success,
        lifetime: request.lifetime.min(most).min(policy.natpmp.max_lifetime),
        epoch,
        body: Some(PcpBody::Peer(wire::PeerData {
            map: MapData {
                external_port: external,
                external_addr: wire::mapped(external_addr),
                ..peer.map
            },
            ..peer
        })),
        options: request.options.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;
    use wire::{Filter, PCP_OP_ANNOUNCE, PCP_OP_MAP, mapped, pcp_request_bytes, pmp_map_bytes};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
    const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);
    const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    struct Fake {
        rules: RuleSet,
        now: u64,
        wan: Option<Ipv4Addr>,
        dynamic: Vec<(MapProtocol, SocketAddrV4, u16)>,
    }

    impl Gateway for Fake {
        fn external_address(&self) -> Option<Ipv4Addr> {
            self.wan
        }
        fn lan(&self) -> Option<Ipv4Net> {
            Some("192.168.0.0/24".parse().unwrap())
        }
        fn rules(&self) -> Vec<ForwardRule> {
            self.rules.to_vec()
        }
        fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError> {
            let mut next = self.rules.clone();
            let mut ids = HashMap::new();
            for name in remove {
                ids.insert(name.clone(), next.get(name).map(|(id, _)| id));
                next.remove(name).map_err(GatewayError::Rule)?;
            }
            for rule in add {
                let id = ids.get(&rule.name).copied().flatten();
                next.add(rule, id).map_err(GatewayError::Rule)?;
            }
            next.validate(self.lan().unwrap())
                .map_err(GatewayError::Rule)?;
            self.rules = next;
            Ok(())
        }
        fn now_unix(&self) -> u64 {
            self.now
        }
        fn dynamic_mapping(
            &self,
            protocol: MapProtocol,
            internal: SocketAddrV4,
        ) -> Option<(u16, u32)> {
            self.dynamic
                .iter()
                .find(|(p, i, _)| *p == protocol && *i == internal)
                .map(|(_, _, external)| (*external, 300))
        }
    }

    fn fake() -> Fake {
        Fake {
            rules: RuleSet::default(),
            now: 1_000_000,
            wan: Some(WAN),
            dynamic: Vec::new(),
        }
    }

    fn policy() -> Policy {
        Policy {
            upnp: UpnpSettings::default(),
            natpmp: NatpmpSettings {
                max_lifetime: 3600,
                ..NatpmpSettings::default()
            },
        }
    }

    fn send(gateway: &mut Fake, policy: &Policy, from: Ipv4Addr, data: &[u8]) -> Vec<u8> {
        let server = Server::new(Instant::now());
        match server.handle(
            gateway,
            policy,
            SocketAddrV4::new(from, 40000),
            data,
            Instant::now(),
        ) {
            Outcome::Answer(bytes) => bytes,
            Outcome::Dropped(why) => panic!("dropped: {why}"),
        }
    }

    fn pmp_map(protocol: MapProtocol, internal: u16, suggested: u16, lifetime: u32) -> Vec<u8> {
        pmp_map_bytes(&PmpMap {
            protocol,
            internal_port: internal,
            suggested_external_port: suggested,
            lifetime,
        })
    }

    /// (result, internal, external, lifetime) of a NAT-PMP map answer.
    fn pmp_answer(bytes: &[u8]) -> (u16, u16, u16, u32) {
        assert_eq!(bytes.len(), 16, "{bytes:?}");
        (
            u16::from_be_bytes([bytes[2], bytes[3]]),
            u16::from_be_bytes([bytes[8], bytes[9]]),
            u16::from_be_bytes([bytes[10], bytes[11]]),
            u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        )
    }

    #[test]
    fn pmp_address_and_network_failure() {
        let mut gateway = fake();
        let answer = send(&mut gateway, &policy(), CLIENT, &[0, 0]);
        assert_eq!(&answer[..4], &[0, 128, 0, 0]);
        assert_eq!(&answer[8..], &WAN.octets());
        gateway.wan = None;
        let answer = send(&mut gateway, &policy(), CLIENT, &[0, 0]);
        assert_eq!(&answer[2..4], &[0, PmpResult::NetworkFailure as u8]);
    }

    #[test]
    fn pmp_map_renew_and_delete() {
        let mut gateway = fake();
        let policy = policy();
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 6881, 7000, 7200),
        );
        // The lifetime is cut to the maximum.
        assert_eq!(pmp_answer(&answer), (0, 6881, 7000, 3600));
        let rules = gateway.rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].name, "natpmp-tcp-7000");
        assert_eq!(rules[0].kind(), "NATPMP");
        assert_eq!(rules[0].upnp.as_ref().unwrap().expires_at, Some(1_003_600));
        // The same request again renews the same mapping, whatever port
        // it suggests.
        gateway.now += 100;
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 6881, 9000, 60),
        );
        assert_eq!(pmp_answer(&answer), (0, 6881, 7000, 60));
        assert_eq!(gateway.rules().len(), 1);
        // UDP is a mapping of its own.
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Udp, 6881, 7000, 60),
        );
        assert_eq!(pmp_answer(&answer), (0, 6881, 7000, 60));
        // Delete one; then all of the client's (internal port 0).
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 6881, 0, 0),
        );
        assert_eq!(pmp_answer(&answer), (0, 6881, 0, 0));
        assert_eq!(gateway.rules().len(), 1);
        send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Udp, 5000, 5000, 60),
        );
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Udp, 0, 0, 0),
        );
        assert_eq!(pmp_answer(&answer), (0, 0, 0, 0));
        assert!(gateway.rules().is_empty());
        // Deleting what is not there succeeds.
        let answer = send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Udp, 1234, 0, 0),
        );
        assert_eq!(pmp_answer(&answer).0, 0);
    }

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
    fn pmp_strict_input() {
        let mut gateway = fake();
        let policy = policy();
        // Unknown opcode: result 5, 8 bytes.
        let answer = send(&mut gateway, &policy, CLIENT, &[0, 7]);
        assert_eq!(&answer[..4], &[0, 135, 0, 5]);
        assert_eq!(answer.len(), 8);
        // A wrong length is not answered.
        let server = Server::new(Instant::now());
        let outcome = server.handle(
            &mut gateway,
            &policy,
            SocketAddrV4::new(CLIENT, 1),
            &[0, 1, 0, 0, 1],
            Instant::now(),
        );
        assert!(matches!(outcome, Outcome::Dropped(why) if why.contains("5 bytes")));
    }

    fn pcp_map_request(
        client: Ipv4Addr,
        internal: u16,
        suggested: u16,
        lifetime: u32,
        options: Vec<PcpOption>,
    ) -> PcpRequest {
        PcpRequest {
            opcode: PCP_OP_MAP,
            lifetime,
            client: mapped(client),
            body: PcpBody::Map(MapData {
                nonce: [7; 12],
                protocol: wire::PROTO_TCP,
                internal_port: internal,
                external_port: suggested,
                external_addr: std::net::Ipv6Addr::UNSPECIFIED,
            }),
            options,
        }
    }

    #[test]
    fn pcp_map_with_filter_renew_and_delete() {
        let mut gateway = fake();
        let policy = policy();
        let filter = PcpOption::Filter(Filter {
            prefix_len: 96 + 24,
            remote_port: 0,
            remote_addr: mapped(Ipv4Addr::new(198, 51, 100, 9)),
        });
        let request = pcp_map_request(CLIENT, 6881, 7001, 100_000, vec![filter]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer.len(), 24 + 36 + 24);
        assert_eq!(&answer[..4], &[2, 0x81, 0, 0]);
        assert_eq!(&answer[4..8], &3600u32.to_be_bytes());
        assert_eq!(&answer[42..44], &7001u16.to_be_bytes());
        assert_eq!(&answer[56..60], &WAN.octets());
        let rules = gateway.rules();
        assert_eq!(rules[0].name, "pcp-tcp-7001");
        assert_eq!(rules[0].kind(), "PCP");
        assert_eq!(
            rules[0].allow,
            vec!["198.51.100.0/24".parse::<Ipv4Net>().unwrap()]
        );
        // Another nonce may neither renew nor delete it.
        let mut other = pcp_map_request(CLIENT, 6881, 0, 0, vec![]);
        if let PcpBody::Map(map) = &mut other.body {
            map.nonce = [8; 12];
        }
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&other));
        assert_eq!(answer[3], PcpResult::NotAuthorized as u8);
        // The right nonce deletes it.
        let request = pcp_map_request(CLIENT, 6881, 0, 0, vec![]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], 0);
        assert_eq!(&answer[42..44], &7001u16.to_be_bytes());
        assert!(gateway.rules().is_empty());
    }

    #[test]
    fn pcp_security_and_errors() {
        let mut gateway = fake();
        let mut policy = policy();
        // The header's address must be the sender's.
        let request = pcp_map_request(OTHER, 6881, 0, 60, vec![]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::AddressMismatch as u8);
        // THIRD_PARTY: refused in secure mode, allowed without.
        let third = vec![PcpOption::ThirdParty(mapped(OTHER))];
        let request = pcp_map_request(CLIENT, 6881, 0, 60, third.clone());
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::NotAuthorized as u8);
        assert_eq!(&answer[4..8], &wire::LONG_ERROR_LIFETIME.to_be_bytes());
        policy.upnp.secure_mode = false;
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], 0);
        assert_eq!(gateway.rules()[0].internal_addr, OTHER);
        // A protocol other than TCP and UDP.
        let mut request = pcp_map_request(CLIENT, 5000, 0, 60, vec![]);
        if let PcpBody::Map(map) = &mut request.body {
            map.protocol = 132;
        }
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::UnsuppProtocol as u8);
        // A filter on a remote port cannot be honoured.
        let filter = PcpOption::Filter(Filter {
            prefix_len: 128,
            remote_port: 80,
            remote_addr: mapped(Ipv4Addr::new(198, 51, 100, 9)),
        });
        let request = pcp_map_request(CLIENT, 5001, 0, 60, vec![filter]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::UnsuppOption as u8);
        // ANNOUNCE; an unsupported version; no public address.
        let mut announce = pcp_request_bytes(&pcp_map_request(CLIENT, 0, 0, 0, vec![]));
        announce.truncate(24);
        announce[1] = PCP_OP_ANNOUNCE;
        let answer = send(&mut gateway, &policy, CLIENT, &announce);
        assert_eq!(&answer[..4], &[2, 0x80, 0, 0]);
        assert_eq!(answer.len(), 24);
        announce[0] = 1;
        let answer = send(&mut gateway, &policy, CLIENT, &announce);
        assert_eq!(&answer[..4], &[2, 0x80, 0, PcpResult::UnsuppVersion as u8]);
        gateway.wan = None;
        let request = pcp_map_request(CLIENT, 5002, 0, 60, vec![]);
        let answer = send(&mut gateway, &policy, CLIENT, &pcp_request_bytes(&request));
        assert_eq!(answer[3], PcpResult::NetworkFailure as u8);
    }

    fn peer_request(internal: u16, lifetime: u32, protocol: u8) -> Vec<u8> {
        let request = PcpRequest {
            opcode: wire::PCP_OP_PEER,
            lifetime,
            client: mapped(CLIENT),
            body: PcpBody::Peer(wire::PeerData {
                map: MapData {
                    nonce: [3; 12],
                    protocol,
                    internal_port: internal,
                    external_port: 0,
                    external_addr: std::net::Ipv6Addr::UNSPECIFIED,
                },
                remote_port: 443,
                remote_addr: mapped(Ipv4Addr::new(198, 51, 100, 7)),
            }),
            options: vec![],
        };
        pcp_request_bytes(&request)
    }

    #[test]
    fn pcp_peer_reports_the_mapping_there_is() {
        let mut gateway = fake();
        let policy = policy();
        // No traffic yet: nothing to report, retry soon.
        let answer = send(&mut gateway, &policy, CLIENT, &peer_request(5000, 600, 17));
        assert_eq!(answer[3], PcpResult::CannotProvideExternal as u8);
        assert_eq!(&answer[4..8], &wire::SHORT_ERROR_LIFETIME.to_be_bytes());
        // The datapath's dynamic mapping: its port, its idle timeout.
        gateway
            .dynamic
            .push((MapProtocol::Udp, SocketAddrV4::new(CLIENT, 5000), 5000));
        let answer = send(&mut gateway, &policy, CLIENT, &peer_request(5000, 600, 17));
        assert_eq!(answer.len(), 24 + 56);
        assert_eq!(&answer[..4], &[2, 0x82, 0, 0]);
        assert_eq!(&answer[4..8], &300u32.to_be_bytes());
        assert_eq!(&answer[42..44], &5000u16.to_be_bytes());
        assert_eq!(&answer[56..60], &WAN.octets());
        assert_eq!(&answer[60..62], &443u16.to_be_bytes());
        // A forwarding rule's endpoint: the rule's port.
        send(
            &mut gateway,
            &policy,
            CLIENT,
            &pmp_map(MapProtocol::Tcp, 6881, 7000, 60),
        );
        let answer = send(&mut gateway, &policy, CLIENT, &peer_request(6881, 600, 6));
        assert_eq!(answer[3], 0);
        assert_eq!(&answer[42..44], &7000u16.to_be_bytes());
        assert_eq!(&answer[4..8], &60u32.to_be_bytes());
        // Malformed: internal port 0.
        let answer = send(&mut gateway, &policy, CLIENT, &peer_request(0, 600, 6));
        assert_eq!(answer[3], PcpResult::MalformedRequest as u8);
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

    #[test]
    fn the_rate_limit_drops_a_flood() {
        let mut server = Server::new(Instant::now());
        let now = Instant::now();
        let admitted = (0..100).filter(|_| server.admit(CLIENT, now, 10)).count();
        assert_eq!(admitted, 20);
        assert!(server.admit(OTHER, now, 10));
        assert!(server.admit(CLIENT, now + Duration::from_millis(200), 10));
    }
}
