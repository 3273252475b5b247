//! NAT-PMP and PCP in the daemon: a supervisor that runs the service while
//! it is wanted and the LAN has an address, and the adapter through which
//! its requests reach the rule transaction (the IGD's [`DaemonGateway`]).
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use ipnet::Ipv4Net;
use nat_common::BindingKey;
use tokio::sync::watch;

use super::{Daemon, unix_now, upnp::DaemonGateway};
use crate::{
    natpmp::{
        server::{Gateway, Outcome, Policy, Server},
        service::{self, Control, Running, ServiceConfig},
        wire::{self, MapProtocol},
    },
    rules::ForwardRule,
    upnp::igd::GatewayError,
};

/// Keeps the service running exactly while it is wanted and the LAN has
/// an address, restarting it when the address changes.
pub(super) async fn supervise_natpmp(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut running: Option<(Running, ServiceConfig)> = None;
    loop {
        let desired = {
            let state = daemon.lock();
            match state.lan.network {
                Some(lan) if daemon.natpmp_wanted.load(Ordering::SeqCst) => Some(ServiceConfig {
                    lan_ifname: state.lan.name.clone(),
                    lan_addr: lan.addr(),
                }),
                _ => None,
            }
        };
        if running.as_ref().map(|(_, config)| config) != desired.as_ref() {
            if let Some((service, _)) = running.take() {
                service.stop().await;
            }
            if let Some(config) = desired {
                let control = Arc::new(NatpmpControl(daemon.clone())) as Arc<dyn Control>;
                match service::start(config.clone(), control) {
                    Ok(service) => running = Some((service, config)),
                    Err(error) => tracing::error!("NAT-PMP/PCP could not start: {error}"),
                }
            }
        }
        tokio::select! {
            _ = daemon.natpmp_changed.notified() => {}
            _ = stop.changed() => break,
        }
    }
    if let Some((service, _)) = running.take() {
        service.stop().await;
    }
}

impl Gateway for DaemonGateway<'_> {
    fn external_address(&self) -> Option<Ipv4Addr> {
        self.state.public_address()
    }

    fn lan(&self) -> Option<Ipv4Net> {
        self.state.lan.network.map(|net| net.trunc())
    }

    fn rules(&self) -> Vec<ForwardRule> {
        self.state.rules.to_vec()
    }

    fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError> {
        self.apply_change(remove, add)
    }

    fn free_port(&self, proto: u8, start: u16, usable: &mut dyn FnMut(u16) -> bool) -> Option<u16> {
        self.free_client_port(proto, start, usable)
    }

    fn now_unix(&self) -> u64 {
        unix_now()
    }

    /// The outbound half of the datapath's mapping (its value holds the
    /// external port), keyed as the datapath keys it under the configured
    /// mapping behaviour.
    fn dynamic_mapping(
        &self,
        protocol: MapProtocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<(u16, u32)> {
        let key = BindingKey::outbound_for(
            self.state.config.nat.mapping.datapath_value(),
            protocol.number(),
            internal.ip().octets(),
            internal.port(),
            remote.ip().octets(),
            remote.port(),
        );
        let port = self.state.view.mapped_port(&key).ok().flatten()?;
        let timeouts = &self.state.config.timeouts;
        let idle = match protocol {
            MapProtocol::Udp => timeouts.udp,
            MapProtocol::Tcp => timeouts.tcp_established,
        };
        Some((port, idle.as_secs().min(u64::from(u32::MAX)) as u32))
    }
}

struct NatpmpControl(Arc<Daemon>);

impl Control for NatpmpControl {
    fn handle(&self, server: &Server, from: SocketAddrV4, data: &[u8], now: Instant) -> Outcome {
        let daemon = &self.0;
        if !daemon.natpmp_wanted.load(Ordering::SeqCst) {
            return Outcome::Dropped("NAT-PMP/PCP is switched off".into());
        }
        let mut state = daemon.lock();
        let policy = Policy {
            upnp: state.config.upnp.clone(),
            natpmp: state.config.natpmp.clone(),
        };
        let who = match data.first() {
            Some(&wire::PMP_VERSION) => "NAT-PMP",
            _ => "PCP",
        };
        let mut gateway = DaemonGateway::new(&mut state, daemon.started, who);
        let outcome = server.handle(&mut gateway, &policy, from, data, now);
        drop(state);
        let (protocol, action, result) = request_labels(data, &outcome);
        daemon.count_request(protocol, action.to_owned(), result);
        outcome
    }

    fn external_address(&self) -> Option<Ipv4Addr> {
        self.0.lock().public_address()
    }

    fn rate_limit(&self) -> u32 {
        self.0.lock().config.natpmp.rate_limit
    }
}

/// A request's labels for the metrics: the protocol, the opcode's name,
/// and the answer's result code ("dropped" when unanswered). Only known
/// names: each is a time series.
fn request_labels(data: &[u8], outcome: &Outcome) -> (&'static str, &'static str, String) {
    let opcode = data.get(1).map_or(255, |op| op & 0x7f);
    let (protocol, action) = match (data.first(), opcode) {
        (Some(&wire::PMP_VERSION), 0) => ("NAT-PMP", "address"),
        (Some(&wire::PMP_VERSION), 1) => ("NAT-PMP", "map_udp"),
        (Some(&wire::PMP_VERSION), 2) => ("NAT-PMP", "map_tcp"),
        (Some(&wire::PMP_VERSION), _) => ("NAT-PMP", "unknown"),
        (_, 0) => ("PCP", "announce"),
        (_, 1) => ("PCP", "map"),
        (_, 2) => ("PCP", "peer"),
        _ => ("PCP", "unknown"),
    };
    let result = match outcome {
        // NAT-PMP: a 16-bit result code at bytes 2..4; PCP: byte 3.
        Outcome::Answer(answer) if protocol == "NAT-PMP" => {
            answer.get(2..4).map_or("?".to_owned(), |code| {
                u16::from_be_bytes([code[0], code[1]]).to_string()
            })
        }
        Outcome::Answer(answer) => answer.get(3).map_or("?".to_owned(), u8::to_string),
        Outcome::Dropped(_) => "dropped".to_owned(),
    };
    (protocol, action, result)
}
