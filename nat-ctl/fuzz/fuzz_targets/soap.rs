//! SOAP control requests: the envelope parser, then the IGD actions with
//! their argument handling, over an in-memory gateway, then the response
//! or fault the server would send.
//!
//! Input layout: the first byte holds flags; bit 0: a SOAPACTION header is
//! given, taken from the following bytes up to the first newline, the rest
//! being the body (else all the rest is the body); bit 1: the gateway
//! describes IGDv1 instead of IGDv2; bit 2: the caller is another LAN host
//! than the one owning most of the existing mappings.
#![no_main]

use std::{net::Ipv4Addr, sync::OnceLock};

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use nat_ctl::{
    config::UpnpSettings,
    rules::{ForwardRule, PortRange, Protocol, RuleSet, UpnpLease, check_conflicts},
    upnp::{
        IgdVersion,
        igd::{self, Gateway, GatewayError, Totals},
        soap,
    },
};

/// A gateway over a plain rule set, with the daemon's validation (the
/// FakeGateway of igd.rs's unit tests, which are not visible from here).
struct FakeGateway {
    rules: RuleSet,
    now: u64,
}

impl Gateway for FakeGateway {
    fn external_address(&self) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(203, 0, 113, 1))
    }
    fn lan(&self) -> Option<Ipv4Net> {
        Some(LAN.parse().unwrap())
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

const LAN: &str = "192.168.0.0/24";
const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);
const NOW: u64 = 1_000_000;

fn upnp_rule(
    protocol: Protocol,
    external: u16,
    client: Ipv4Addr,
    expires_at: Option<u64>,
) -> ForwardRule {
    let name = if protocol == Protocol::Udp {
        "UDP"
    } else {
        "TCP"
    };
    ForwardRule {
        name: igd::mapping_name(name, external),
        protocol,
        external: PortRange::single(external),
        internal_addr: client,
        internal: PortRange::single(external),
        allow: Vec::new(),
        enabled: true,
        upnp: Some(UpnpLease {
            origin: nat_ctl::rules::LeaseOrigin::Upnp,
            client,
            description: "seed".to_owned(),
            expires_at,
            nonce: None,
        }),
        schedule: Default::default(),
        off_schedule: false,
    }
}

/// What the gateway holds before each request, so that deletions, lookups
/// and listings have something to find: a static rule of the user's, and
/// UPnP mappings of two clients, leased and permanent.
fn initial_rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut gateway = FakeGateway {
            rules: RuleSet::default(),
            now: NOW,
        };
        let user: ForwardRule = "tcp/6882=192.168.0.20,name=user".parse().unwrap();
        gateway
            .apply(
                &[],
                vec![
                    user,
                    upnp_rule(Protocol::Tcp, 7000, ME, Some(NOW + 3600)),
                    upnp_rule(Protocol::Udp, 7001, ME, None),
                    upnp_rule(Protocol::Tcp, 8000, OTHER, Some(NOW + 60)),
                ],
            )
            .expect("the initial rules are valid");
        gateway.rules
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = if flags & 1 != 0 {
        let (line, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &[][..]),
        };
        // The server only passes on headers that are UTF-8.
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        (Some(line), body)
    } else {
        (None, rest)
    };
    let igd = if flags & 2 != 0 {
        IgdVersion::V1
    } else {
        IgdVersion::V2
    };
    let caller = if flags & 4 != 0 { OTHER } else { ME };

    let reply = match soap::parse_request(body, header) {
        Ok(request) => {
            let mut gateway = FakeGateway {
                rules: initial_rules().clone(),
                now: NOW,
            };
            match igd::handle(
                &mut gateway,
                &UpnpSettings::default(),
                igd,
                caller,
                &request,
            ) {
                Ok(args) => soap::response(&request.service_type, &request.action, &args),
                Err(error) => soap::fault(error),
            }
        }
        Err(error) => soap::fault(error.upnp_error()),
    };
    std::hint::black_box(reply);
});
