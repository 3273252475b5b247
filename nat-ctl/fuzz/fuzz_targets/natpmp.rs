//! NAT-PMP and PCP datagrams from the LAN: classifying and parsing them,
//! answering them through the server over an in-memory gateway (mappings
//! made, renewed and deleted as the datagrams ask; PEER finding a dynamic
//! mapping for every endpoint), and re-parsing the
//! PCP requests we can re-encode.
#![no_main]

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Instant,
};

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use nat_ctl::{
    config::{NatpmpSettings, UpnpSettings},
    natpmp::{
        server::{Gateway, Outcome, Policy, Server},
        wire::{self, Incoming, MapProtocol},
    },
    rules::{ForwardRule, RuleSet},
    upnp::igd::GatewayError,
};

struct Fake {
    rules: RuleSet,
}

impl Gateway for Fake {
    fn external_address(&self) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(203, 0, 113, 1))
    }
    fn lan(&self) -> Option<Ipv4Net> {
        Some(Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 24).unwrap())
    }
    fn rules(&self) -> Vec<ForwardRule> {
        self.rules.to_vec()
    }
    fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError> {
        let mut next = self.rules.clone();
        for name in remove {
            next.remove(name).map_err(GatewayError::Rule)?;
        }
        for rule in add {
            next.add(rule, None).map_err(GatewayError::Rule)?;
        }
        next.validate(self.lan().unwrap())
            .map_err(GatewayError::Rule)?;
        self.rules = next;
        Ok(())
    }
    fn now_unix(&self) -> u64 {
        1_000_000
    }
    /// Every endpoint has a dynamic mapping, so PEER's answers are built.
    fn dynamic_mapping(
        &self,
        _: MapProtocol,
        internal: SocketAddrV4,
        _remote: SocketAddrV4,
    ) -> Option<(u16, u32)> {
        Some((internal.port(), 300))
    }
}

fuzz_target!(|data: &[u8]| {
    if let Incoming::Pcp(Ok(request)) = wire::classify(data) {
        let again = wire::pcp_request_bytes(&request);
        assert_eq!(
            wire::classify(&again),
            Incoming::Pcp(Ok(request)),
            "a parsed PCP request re-encodes to itself"
        );
    }
    let policy = Policy {
        upnp: UpnpSettings {
            secure_mode: data.first().is_some_and(|b| b & 1 == 0),
            ..UpnpSettings::default()
        },
        natpmp: NatpmpSettings::default(),
    };
    let mut gateway = Fake {
        rules: RuleSet::default(),
    };
    let server = Server::new(Instant::now());
    let from = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 12), 5350);
    // Twice: the second time renews (or deletes) what the first made.
    for _ in 0..2 {
        if let Outcome::Answer(answer) =
            server.handle(&mut gateway, &policy, from, data, Instant::now())
        {
            assert!(answer.len() <= wire::PCP_MAX_LEN);
            assert!(answer.len() >= 8);
            assert!(answer[1] & wire::RESPONSE_BIT != 0);
        }
    }
});
