//! The UPnP IGD's place in the daemon: a supervisor that runs the service
//! while it is wanted, and the adapters through which its requests reach
//! the rule transaction.
use std::{
    net::Ipv4Addr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use ipnet::Ipv4Net;
use nat_common::Counter;
use tokio::sync::watch;

use super::{
    Daemon,
    state::{Durability, State},
    unix_now,
};
use crate::{
    router_ports::RouterPorts,
    rules::{CLIENT_PORTS, ForwardRule},
    upnp::{
        IgdVersion,
        error::UpnpError,
        http::Control,
        igd::{self, Gateway, GatewayError, Totals},
        service::{self, Running, ServiceConfig},
        soap::SoapRequest,
    },
};

/// Keeps the IGD running exactly while it is wanted and the LAN has an
/// address, restarting it when the address or its settings change.
pub(super) async fn supervise_upnp(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    let mut running: Option<(Running, ServiceConfig)> = None;
    loop {
        let desired = {
            let state = daemon.lock();
            let settings = &state.config.upnp;
            match state.lan.network {
                Some(lan) if daemon.upnp_wanted.load(Ordering::SeqCst) => {
                    let igd = if settings.igd_version == 1 {
                        IgdVersion::V1
                    } else {
                        IgdVersion::V2
                    };
                    Some(ServiceConfig {
                        lan_ifname: state.lan.name.clone(),
                        lan_addr: lan.addr(),
                        lan_net: lan.trunc(),
                        http_port: settings.http_port,
                        identity: service::identity(&state.lan.name, igd, daemon.boot_id),
                        igd,
                        v1_user_agents: settings.v1_user_agents.clone(),
                        rate_limit: settings.rate_limit,
                    })
                }
                _ => None,
            }
        };
        let unchanged = match (&running, &desired) {
            (Some((_, current)), Some(wanted)) => {
                (
                    current.lan_addr,
                    current.http_port,
                    current.igd,
                    &current.v1_user_agents,
                    current.rate_limit,
                ) == (
                    wanted.lan_addr,
                    wanted.http_port,
                    wanted.igd,
                    &wanted.v1_user_agents,
                    wanted.rate_limit,
                )
            }
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            if let Some((service, _)) = running.take() {
                service.stop().await;
                tracing::info!("UPnP IGD stopped");
            }
            if let Some(config) = desired {
                let control = Arc::new(UpnpControl {
                    daemon: daemon.clone(),
                    refusals: std::sync::Mutex::new(LogBudget::new(Instant::now())),
                }) as Arc<dyn Control>;
                match service::start(config.clone(), control) {
                    Ok(service) => {
                        tracing::info!(
                            "UPnP IGD on {} ({}), description at {}",
                            config.lan_ifname,
                            config.lan_addr,
                            service.location
                        );
                        running = Some((service, config));
                    }
                    Err(error) => tracing::error!("UPnP IGD could not start: {error}"),
                }
            }
        }
        tokio::select! {
            _ = daemon.upnp_changed.notified() => {}
            _ = stop.changed() => break,
        }
    }
    if let Some((service, _)) = running.take() {
        service.stop().await;
    }
}

/// The IGD's (and NAT-PMP/PCP's) view of the daemon, for one request.
pub(super) struct DaemonGateway<'a> {
    pub state: &'a mut State,
    pub started: Instant,
    /// Who is asking, for the log: "UPnP", "NAT-PMP", "PCP".
    pub who: &'static str,
    /// The router's own ports, read once per request when a port is
    /// chosen (`None` inside: they could not be read, and the transaction
    /// will say so).
    pub router_ports: std::cell::OnceCell<Option<RouterPorts>>,
}

impl<'a> DaemonGateway<'a> {
    pub fn new(state: &'a mut State, started: Instant, who: &'static str) -> Self {
        Self {
            state,
            started,
            who,
            router_ports: std::cell::OnceCell::new(),
        }
    }

    /// A free port for a client's mapping, from the state's index of held
    /// ports, leaving out the router's own.
    pub fn free_client_port(
        &self,
        proto: u8,
        start: u16,
        usable: &mut dyn FnMut(u16) -> bool,
    ) -> Option<u16> {
        let router = self.router_ports.get_or_init(|| {
            let wan = self.state.wan.network.map(|net| net.addr());
            RouterPorts::read(wan, &self.state.config.nat.reserved_ports).ok()
        });
        self.state
            .ports
            .next_free(proto, start, CLIENT_PORTS, |port| {
                router
                    .as_ref()
                    .is_none_or(|router| router.refusal(proto, port, true).is_none())
                    && usable(port)
            })
    }

    /// One change through the rule transaction: remove, then add (a rule
    /// with a removed one's name keeps its id).
    pub fn apply_change(
        &mut self,
        remove: &[String],
        add: Vec<ForwardRule>,
    ) -> Result<(), GatewayError> {
        let summary: Vec<String> = add.iter().map(ToString::to_string).collect();
        self.state
            .change(
                |rules| {
                    let mut ids = std::collections::HashMap::new();
                    for name in remove {
                        if let Some((id, _)) = rules.get(name) {
                            ids.insert(name.clone(), id);
                        }
                        rules.remove(name)?;
                    }
                    for rule in add {
                        let id = ids.get(&rule.name).copied();
                        rules.add(rule, id)?;
                    }
                    Ok(())
                },
                Durability::Soon,
            )
            .map_err(|error| match error.rule {
                Some(rule) => GatewayError::Rule(rule),
                None => GatewayError::Failed(error.api.message),
            })?;
        if !remove.is_empty() {
            tracing::info!("{}: removed {}", self.who, remove.join(", "));
        }
        for line in summary {
            tracing::info!("{}: mapped {line}", self.who);
        }
        Ok(())
    }
}

impl Gateway for DaemonGateway<'_> {
    fn external_address(&self) -> Option<Ipv4Addr> {
        self.state.public_address()
    }

    fn lan(&self) -> Option<Ipv4Net> {
        self.state.lan.network
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

    fn totals(&self) -> Totals {
        let counters = self.state.view.counters().unwrap_or_default();
        let mut totals = Totals::default();
        for (counter, value) in counters {
            match counter {
                Counter::Snat | Counter::IcmpErrorOut => {
                    totals.bytes_sent += value.bytes;
                    totals.packets_sent += value.packets;
                }
                Counter::WanRx => {
                    totals.bytes_received += value.bytes;
                    totals.packets_received += value.packets;
                }
                _ => {}
            }
        }
        totals
    }

    fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn now_unix(&self) -> u64 {
        unix_now()
    }
}

struct UpnpControl {
    daemon: Arc<Daemon>,
    refusals: std::sync::Mutex<LogBudget>,
}

/// At most `LINES` log lines a minute: what a LAN host can make us log is
/// bounded, and what was left out is counted in the next line that goes.
struct LogBudget {
    window_start: Instant,
    lines: u32,
    skipped: u32,
}

impl LogBudget {
    const LINES: u32 = 20;
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            lines: 0,
            skipped: 0,
        }
    }

    /// Whether a line may go now, and how many were left out before it.
    fn take(&mut self, now: Instant) -> Option<u32> {
        if now.duration_since(self.window_start) >= Self::WINDOW {
            self.window_start = now;
            self.lines = 0;
        }
        if self.lines >= Self::LINES {
            self.skipped += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

impl Control for UpnpControl {
    fn control(
        &self,
        caller: Ipv4Addr,
        request: &SoapRequest,
    ) -> Result<Vec<(&'static str, String)>, UpnpError> {
        let daemon = &self.daemon;
        if !daemon.upnp_wanted.load(Ordering::SeqCst) {
            return Err(UpnpError::ActionNotAuthorized);
        }
        let mut state = daemon.lock();
        let settings = state.config.upnp.clone();
        let igd = if settings.igd_version == 1 {
            IgdVersion::V1
        } else {
            IgdVersion::V2
        };
        let mut gateway = DaemonGateway::new(&mut state, daemon.started, "UPnP");
        let outcome = igd::handle(&mut gateway, &settings, igd, caller, request);
        drop(state);
        daemon.count_request(
            "UPnP",
            igd::action_metric(&request.action).to_owned(),
            match &outcome {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.code().to_string(),
            },
        );
        if let Err(error) = &outcome {
            let budget = self
                .refusals
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(Instant::now());
            if let Some(skipped) = budget {
                tracing::info!(
                    "UPnP {} from {caller} refused: {} {}{}",
                    igd::action_label(&request.action),
                    error.code(),
                    error.description(),
                    if skipped > 0 {
                        format!(" ({skipped} more refusals not logged)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_is_a_few_lines_a_minute_and_counts_the_rest() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        for _ in 0..LogBudget::LINES {
            assert_eq!(budget.take(start), Some(0));
        }
        assert_eq!(budget.take(start), None);
        assert_eq!(budget.take(start), None);
        let later = start + LogBudget::WINDOW;
        assert_eq!(
            budget.take(later),
            Some(2),
            "the next line counts the skipped ones"
        );
        assert_eq!(budget.take(later), Some(0));
    }
}
