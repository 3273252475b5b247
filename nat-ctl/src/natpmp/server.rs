//! The NAT-PMP and PCP server as a socket-free state machine: a datagram,
//! its sender and the time in, the answer out, over a [`Gateway`] (the
//! daemon's rule transaction, or a fake in the tests). Each request is
//! translated into the shared mapping model of [`super::mapping`], its
//! outcome back into the protocol's answer.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use ipnet::Ipv4Net;

pub use super::mapping::{Gateway, MapFailure, Policy, mapping_name};
use super::{
    mapping::{Ask, Delete, map_logged, unmap},
    wire::{
        self, Incoming, MapData, MapProtocol, PcpBody, PcpOption, PcpRequest, PcpResponse,
        PcpResult, PmpError, PmpMap, PmpRequest, PmpResponse, PmpResult,
    },
};
use crate::{limiter::RateLimiter, rules::LeaseOrigin};

/// Allowed-remote prefixes one PCP mapping may carry (FILTER options).
pub const MAX_FILTERS: usize = 16;

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
            limiter: RateLimiter::new(),
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
    let remote = match wire::unmapped(peer.remote_addr) {
        Some(addr) if peer.map.internal_port != 0 && peer.remote_port != 0 => {
            SocketAddrV4::new(addr, peer.remote_port)
        }
        _ => return error(PcpResult::MalformedRequest),
    };
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
    let found = by_rule
        .or_else(|| gateway.dynamic_mapping(protocol, SocketAddrV4::new(internal, port), remote));
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
    use crate::natpmp::testing::*;
    use std::time::Duration;

    #[test]
    fn the_rate_limit_drops_a_flood() {
        let mut server = Server::new(Instant::now());
        let now = Instant::now();
        let admitted = (0..100).filter(|_| server.admit(CLIENT, now, 10)).count();
        assert_eq!(admitted, 20);
        assert!(server.admit(OTHER, now, 10));
        assert!(server.admit(CLIENT, now + Duration::from_millis(200), 10));
    }
    use wire::{Filter, PCP_OP_ANNOUNCE, mapped, pcp_request_bytes};

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
}
