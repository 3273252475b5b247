//! The fixture of the NAT-PMP/PCP tests: a fake gateway over a rule set,
//! the policy, and datagrams sent through the server.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use ipnet::Ipv4Net;

use super::{
    mapping::{Gateway, Policy},
    server::{Outcome, Server},
    wire::{
        self, MapData, MapProtocol, PCP_OP_MAP, PcpBody, PcpOption, PcpRequest, PmpMap, mapped,
        pmp_map_bytes,
    },
};
use crate::{
    config::{NatpmpSettings, UpnpSettings},
    rules::{ForwardRule, RuleSet},
    upnp::igd::GatewayError,
};

pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
pub(super) const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);
pub(super) const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

pub(super) struct Fake {
    pub(super) rules: RuleSet,
    pub(super) now: u64,
    pub(super) wan: Option<Ipv4Addr>,
    pub(super) dynamic: Vec<(MapProtocol, SocketAddrV4, u16)>,
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
        _remote: SocketAddrV4,
    ) -> Option<(u16, u32)> {
        self.dynamic
            .iter()
            .find(|(p, i, _)| *p == protocol && *i == internal)
            .map(|(_, _, external)| (*external, 300))
    }
}

pub(super) fn fake() -> Fake {
    Fake {
        rules: RuleSet::default(),
        now: 1_000_000,
        wan: Some(WAN),
        dynamic: Vec::new(),
    }
}

pub(super) fn policy() -> Policy {
    Policy {
        upnp: UpnpSettings::default(),
        natpmp: NatpmpSettings {
            max_lifetime: 3600,
            ..NatpmpSettings::default()
        },
    }
}

pub(super) fn send(gateway: &mut Fake, policy: &Policy, from: Ipv4Addr, data: &[u8]) -> Vec<u8> {
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

pub(super) fn pmp_map(
    protocol: MapProtocol,
    internal: u16,
    suggested: u16,
    lifetime: u32,
) -> Vec<u8> {
    pmp_map_bytes(&PmpMap {
        protocol,
        internal_port: internal,
        suggested_external_port: suggested,
        lifetime,
    })
}

/// (result, internal, external, lifetime) of a NAT-PMP map answer.
pub(super) fn pmp_answer(bytes: &[u8]) -> (u16, u16, u16, u32) {
    assert_eq!(bytes.len(), 16, "{bytes:?}");
    (
        u16::from_be_bytes([bytes[2], bytes[3]]),
        u16::from_be_bytes([bytes[8], bytes[9]]),
        u16::from_be_bytes([bytes[10], bytes[11]]),
        u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    )
}

pub(super) fn pcp_map_request(
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
