//! `natctl daemon`: the only writer of the datapath's maps and of the rule
//! store. It loads (or picks up) the pinned datapath, follows the NICs'
//! addresses, serves the control API, ages entries out and logs new
//! inbound connections.
//!
//! - `state`: the daemon's state and the rule transaction, the one way
//!   rules change;
//! - `control`: the control API's handler;
//! - `connlog`: the history of new inbound connections, and its followers;
//! - `tasks`: aging, the connection log, address changes, deferred saves,
//!   lease expiry, schedules;
//! - `upnp`: the IGD's supervisor and its adapters;
//! - `natpmp`: the NAT-PMP/PCP server's supervisor and adapter;
//! - `web`: the admin page's backend (the control API's handler again).
pub mod connlog;
mod control;
mod metrics;
mod natpmp;
mod state;
mod tasks;
mod upnp;
mod web;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicBool},
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use nat_common::NatConfig;
use serde::Serialize;
use tokio::sync::watch;

use self::state::{SAVE_DELAY, State};
use crate::{
    api::{self, Controller},
    config::{self, DaemonConfig},
    datapath::{Attach, AttachMode, NicAttach, pins},
    interfaces,
    rules::{RuleError, RuleSet},
    schedule::{Clock, ShiftedClock, SystemClock},
    store,
};

/// What `natctl daemon` was started with; the flags win over the file.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub wan: String,
    pub lan: String,
    pub config: Option<PathBuf>,
    /// XDP, TC or by the driver, per NIC.
    pub attach: Attach,
    /// Native or generic, for the NICs that get XDP.
    pub xdp_mode: AttachMode,
    pub socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub rules_file: Option<PathBuf>,
    /// Schedules run by a clock that starts here (the tests' hook); `None`:
    /// the system clock.
    pub schedule_clock_start: Option<jiff::Timestamp>,
}

impl DaemonOptions {
    fn load_config(&self) -> Result<(DaemonConfig, Option<PathBuf>), config::ConfigError> {
        let (mut config, file) = DaemonConfig::load(self.config.as_deref())?;
        if let Some(socket) = &self.socket {
            config.socket = socket.clone();
        }
        if let Some(pin_dir) = &self.pin_dir {
            config.pin_dir = pin_dir.clone();
        }
        if let Some(rules_file) = &self.rules_file {
            config.rules_file = rules_file.clone();
        }
        Ok((config, file))
    }
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct Nic {
    pub name: String,
    pub ifindex: u32,
    /// `None` while the interface has no IPv4 address.
    pub network: Option<Ipv4Net>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifecycle {
    Running,
    /// Exit, leaving the datapath attached and pinned.
    Stop,
    /// The datapath was detached: exit.
    Down,
}

pub(super) struct Daemon {
    state: Mutex<State>,
    lifecycle: watch::Sender<Lifecycle>,
    options: DaemonOptions,
    config_file: Option<PathBuf>,
    started: Instant,
    adopted: bool,
    /// How the LAN and the WAN NIC are attached, and why (`natctl status`).
    attach: [NicAttach; 2],
    /// `natctl upnp on|off`; starts as the configuration says.
    upnp_wanted: AtomicBool,
    /// Wakes the UPnP supervisor: a switch, an address or a reload.
    upnp_changed: tokio::sync::Notify,
    /// `natctl natpmp on|off` (NAT-PMP and PCP together).
    natpmp_wanted: AtomicBool,
    /// Wakes the NAT-PMP/PCP supervisor.
    natpmp_changed: tokio::sync::Notify,
    boot_id: u32,
    /// Client requests so far (for the metrics): protocol, action, result.
    requests: Mutex<std::collections::BTreeMap<(&'static str, String, String), u64>>,
    /// The new inbound connections on forwarded ports.
    connections: connlog::ConnectionLog,
    /// What the relay of reassembled datagrams did (`crate::relay`).
    relay: Arc<crate::relay::RelayStats>,
}

/// Runs the daemon until SIGTERM/SIGINT (the datapath stays) or
/// `natctl down` (the datapath is detached).
pub fn run(options: DaemonOptions) -> Result<()> {
    if options.wan == options.lan {
        bail!(
            "--wan and --lan are both {:?}: the router needs two different NICs",
            options.wan
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_async(options))
}

/// Why the WAN and LAN addresses cannot work together, if they cannot:
/// a LAN prefix that overlaps the WAN subnet would make some outside hosts
/// unreachable and let LAN addresses pass for outside ones (RFC 4787
/// REQ-7).
fn address_conflict(wan: Ipv4Net, lan: Ipv4Net) -> Option<String> {
    let lan = lan.trunc();
    let wan_subnet = wan.trunc();
    if lan.contains(&wan.addr()) {
        return Some(format!(
            "the WAN address {} is inside the LAN prefix {lan}",
            wan.addr()
        ));
    }
    if lan.contains(&wan_subnet) || wan_subnet.contains(&lan) {
        return Some(format!(
            "the LAN prefix {lan} overlaps the WAN subnet {wan_subnet}"
        ));
    }
    None
}

fn nat_config(config: &DaemonConfig, wan: &Nic, lan: &Nic) -> NatConfig {
    let (wan_addr, lan_net) = match (wan.network, lan.network) {
        (Some(wan), Some(lan)) if address_conflict(wan, lan).is_none() => (wan.addr(), lan.trunc()),
        // Without a WAN address the datapath must not translate: a zero
        // WAN address stops it. The LAN prefix stays, so that it still
        // drops what LAN hosts send out (the kernel would forward it
        // untranslated).
        (None, Some(lan)) => (std::net::Ipv4Addr::UNSPECIFIED, lan.trunc()),
        // Without a LAN prefix, or with addresses that conflict, it passes
        // everything to the kernel.
        _ => (std::net::Ipv4Addr::UNSPECIFIED, Ipv4Net::default()),
    };
    NatConfig {
        wan_addr: wan_addr.octets(),
        lan_net: lan_net.network().octets(),
        lan_prefix_len: lan_net.prefix_len(),
        filtering: config.nat.filtering.datapath_value(),
        unsolicited: config.nat.unsolicited.datapath_value(),
        hairpin: u8::from(config.nat.hairpin),
        wan_ifindex: wan.ifindex,
        lan_ifindex: lan.ifindex,
        port_min: config.nat.ports.first,
        port_max: config.nat.ports.last,
        other_protocols: config.nat.other_protocols.datapath_value(),
        mapping: config.nat.mapping.datapath_value(),
        _pad: [0; 2],
        lan_addr: lan
            .network
            .map_or(std::net::Ipv4Addr::UNSPECIFIED, |lan| lan.addr())
            .octets(),
        low_port_min: config.nat.low_ports.first,
        low_port_max: config.nat.low_ports.last,
        // Set by the writer, which moves the epoch on with every write and
        // keeps the ports of the rules it wrote and its session table's
        // seed and mask.
        route_epoch: 0,
        session_seed: 0,
        session_mask: 0,
        forward_session_mask: 0,
        _pad_masks: 0,
        rule_ports: Default::default(),
    }
}

/// The rules of the store, checked as a whole; an error names the file and
/// the line of the rule at fault.
fn rules_from_store(path: &Path, lan: Option<Ipv4Net>, previous: &RuleSet) -> Result<RuleSet> {
    let loaded = store::load_rules(path)?;
    let at =
        |line: usize, error: RuleError| anyhow::anyhow!("{} line {line}: {error}", path.display());
    let mut rules = RuleSet::default();
    for entry in &loaded {
        // Keep each rule's id (and so its counters) across a reload.
        let id = previous.get(&entry.rule.name).map(|(id, _)| id);
        rules
            .add(entry.rule.clone(), id)
            .map_err(|error| at(entry.line, error))?;
        if let Some(lan) = lan {
            entry
                .rule
                .validate(lan)
                .map_err(|error| at(entry.line, error))?;
        }
    }
    if let Err(error) = crate::rules::check_conflicts(&rules.to_vec()) {
        let name = match &error {
            RuleError::Overlap { name, .. }
            | RuleError::SharedTarget { name, .. }
            | RuleError::DuplicateName(name) => Some(name.as_str()),
            _ => None,
        };
        let line = loaded
            .iter()
            .rev()
            .find(|entry| Some(entry.rule.name.as_str()) == name)
            .map_or(1, |entry| entry.line);
        return Err(at(line, error));
    }
    Ok(rules)
}

async fn run_async(options: DaemonOptions) -> Result<()> {
    let (config, config_file) = options.load_config()?;
    let wan_ifindex = interfaces::ifindex(&options.wan)?;
    let lan_ifindex = interfaces::ifindex(&options.lan)?;
    let netlink = interfaces::netlink()?;
    let wan = Nic {
        name: options.wan.clone(),
        ifindex: wan_ifindex,
        network: interfaces::ipv4_network_of(&netlink, wan_ifindex).await?,
    };
    let lan = Nic {
        name: options.lan.clone(),
        ifindex: lan_ifindex,
        network: interfaces::ipv4_network_of(&netlink, lan_ifindex).await?,
    };
    let Some(lan_net) = lan.network else {
        return Err(interfaces::InterfaceError::NoIpv4(lan.name.clone()).into());
    };
    if wan.network.is_none() {
        tracing::warn!(
            "WAN {} has no IPv4 address yet: passing all traffic to the kernel until it gets one",
            wan.name
        );
    }
    if let Some(conflict) = wan.network.and_then(|wan| address_conflict(wan, lan_net)) {
        bail!(
            "{conflict} (WAN {}, LAN {}): renumber the LAN so that the two do not overlap",
            wan.name,
            lan.name
        );
    }
    let mut rules = rules_from_store(&config.rules_file, Some(lan_net), &RuleSet::default())?;
    let clock: Arc<dyn Clock> = match options.schedule_clock_start {
        Some(start) => {
            tracing::warn!("schedules run by a test clock started at {start}");
            Arc::new(ShiftedClock::starting_at(start))
        }
        None => Arc::new(SystemClock),
    };
    let time_zone = jiff::tz::TimeZone::system();
    // Before the rules reach the datapath: a rule outside its window is
    // never open, not even while the daemon starts.
    rules.refresh_schedules(&clock.now().to_zoned(time_zone.clone()));

    let metrics_listener =
        match config.metrics.listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("opening the metrics endpoint {addr} ([metrics] listen)")
            })?),
            None => None,
        };
    let web_listener = match config.web.listen {
        Some(listen) => Some(web_listener(&config, &lan, lan_net, listen)?),
        None => None,
    };
    // Refuse early if another daemon serves the socket, before touching
    // its datapath.
    let listener = api::bind(&config.socket)
        .with_context(|| format!("opening the API socket {}", config.socket.display()))?;
    let started = pins::check_bpffs(&config.pin_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(interfaces::prepare_router(&lan.name, &wan.name)?))
        .and_then(|()| {
            Ok(pins::adopt_or_load(
                &config.pin_dir,
                &nat_config(&config, &wan, &lan),
                pins::Nic {
                    name: &wan.name,
                    ifindex: wan.ifindex,
                },
                pins::Nic {
                    name: &lan.name,
                    ifindex: lan.ifindex,
                },
                pins::AttachRequest {
                    attach: options.attach,
                    xdp_mode: options.xdp_mode,
                },
                &rules,
            )?)
        });
    let running = match started {
        Ok(running) => running,
        Err(error) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(error);
        }
    };
    let adopted = running.adopted;
    let rules = running.rules;
    for (role, nic) in [("LAN", &running.lan_attach), ("WAN", &running.wan_attach)] {
        let mode = match (nic.mode, nic.xdp_mode.as_str()) {
            (crate::datapath::Mode::Tc, _) => "TC (sched_cls ingress)".to_owned(),
            (crate::datapath::Mode::Xdp, "") => "XDP".to_owned(),
            (crate::datapath::Mode::Xdp, xdp) => format!("XDP ({xdp})"),
        };
        tracing::info!("{role} {}: {mode} mode; {}", nic.interface, nic.reason);
    }
    let attach = [running.lan_attach, running.wan_attach];
    tracing::info!(
        "NAT {}: WAN {} ({}), LAN {} ({}), {} rule(s) from {}; maps pinned in {}; API on {}",
        if adopted {
            "picked up from the pinned datapath, flows kept"
        } else {
            "started"
        },
        wan.name,
        show(wan.network),
        lan.name,
        lan_net.trunc(),
        rules.len(),
        config.rules_file.display(),
        config.pin_dir.display(),
        config.socket.display()
    );

    let (lifecycle, mut lifecycle_changes) = watch::channel(Lifecycle::Running);
    let upnp_enabled = config.upnp.enabled;
    let natpmp_enabled = config.natpmp.enabled;
    let store_changed = Arc::new(tokio::sync::Notify::new());
    let schedules_changed = Arc::new(tokio::sync::Notify::new());
    let ring = running.new_connections;
    let relay_stats = Arc::new(crate::relay::RelayStats::default());
    // Off the lock and off the hot path; without it, reassembled datagrams
    // for a mapping are dropped (`drop_relay_down`), never misdelivered.
    match crate::relay::Relay::open(running.relay, &running.relay_filter, relay_stats.clone()) {
        Ok(relay) => {
            tokio::spawn(relay.run());
        }
        Err(error) => tracing::error!(
            "{error}: UDP, TCP and ICMP datagrams from outside whose fragments arrive out \
             of order, with no LAN host to name before their first, are dropped"
        ),
    }
    let socket = config.socket.clone();
    let daemon = Arc::new(Daemon {
        state: Mutex::new(State {
            store_dirty: false,
            generation: 0,
            store: Arc::default(),
            ports: crate::rules::PortIndex::new(rules.iter().map(|(_, rule)| rule)),
            store_changed: store_changed.clone(),
            config,
            writer: running.writer,
            view: running.view,
            sweep: running.sweep,
            rules,
            wan,
            lan,
            last_sweep: None,
            clock,
            time_zone,
            schedules_changed: schedules_changed.clone(),
            stun_address: None,
        }),
        lifecycle,
        options,
        config_file,
        started: Instant::now(),
        adopted,
        attach,
        upnp_wanted: AtomicBool::new(upnp_enabled),
        upnp_changed: tokio::sync::Notify::new(),
        natpmp_wanted: AtomicBool::new(natpmp_enabled),
        natpmp_changed: tokio::sync::Notify::new(),
        boot_id: unix_now() as u32,
        requests: Mutex::default(),
        connections: connlog::ConnectionLog::default(),
        relay: relay_stats,
    });

    let (api_stop_tx, api_stop) = watch::channel(false);
    let server = tokio::spawn(api::serve(
        listener,
        daemon.clone() as Arc<dyn Controller>,
        api_stop.clone(),
    ));
    tokio::spawn(tasks::sweep_loop(daemon.clone()));
    tokio::spawn(tasks::connection_log(daemon.clone(), ring));
    tokio::spawn(tasks::follow_addresses(daemon.clone(), netlink));
    tokio::spawn(tasks::follow_forwarding(daemon.clone()));
    tokio::spawn(tasks::expire_leases(daemon.clone()));
    tokio::spawn(tasks::yield_to_router_listeners(daemon.clone()));
    tokio::spawn(tasks::learn_public_address(daemon.clone()));
    tokio::spawn(tasks::save_deferred(daemon.clone(), store_changed));
    tokio::spawn(tasks::follow_schedules(daemon.clone(), schedules_changed));
    if !upnp_enabled {
        // Switched off in the configuration: no client's mapping stays open.
        if let Err(error) = daemon.switch_upnp(false) {
            tracing::error!("removing UPnP mappings: {error}");
        }
    }
    if !natpmp_enabled && let Err(error) = daemon.switch_natpmp(false) {
        tracing::error!("removing NAT-PMP/PCP mappings: {error}");
    }
    let (upnp_stop_tx, upnp_stop) = watch::channel(false);
    let upnp = tokio::spawn(upnp::supervise_upnp(daemon.clone(), upnp_stop.clone()));
    let natpmp = tokio::spawn(natpmp::supervise_natpmp(daemon.clone(), upnp_stop.clone()));
    let metrics = match metrics_listener {
        Some(listener) => tokio::spawn(crate::metrics::serve(
            listener,
            daemon.clone() as Arc<dyn crate::metrics::Source>,
            upnp_stop,
        )),
        None => tokio::spawn(async {}),
    };
    let web = match web_listener {
        Some((listener, web_config)) => {
            tracing::info!(
                "admin page on http://{} (LAN {} only); password in {}",
                web_config.listen,
                web_config.lan_ifname,
                web_config.password_file.display()
            );
            tokio::spawn(crate::web::serve(
                listener,
                web_config,
                daemon.clone() as Arc<dyn crate::web::Backend>,
                api_stop.clone(),
            ))
        }
        None => tokio::spawn(async {}),
    };

    // systemd (Type=notify) learns the service is up only now, with the
    // datapath attached and the API served. Without systemd this is a no-op.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let outcome = loop {
        tokio::select! {
            _ = terminate.recv() => break Lifecycle::Stop,
            _ = interrupt.recv() => break Lifecycle::Stop,
            _ = hangup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                match daemon.reload() {
                    Ok(summary) => tracing::info!("SIGHUP: {summary}"),
                    Err(error) => tracing::error!("SIGHUP: {error}"),
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
            changed = lifecycle_changes.changed() => {
                if changed.is_err() {
                    break Lifecycle::Stop;
                }
                let now = *lifecycle_changes.borrow();
                if now != Lifecycle::Running {
                    break now;
                }
            }
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Both servers stop accepting and finish the responses in flight (the
    // `natctl down` that stopped us gets its answer); the IGD says goodbye
    // (SSDP byebye) before the daemon goes.
    let _ = upnp_stop_tx.send(true);
    let _ = api_stop_tx.send(true);
    let _ = tokio::join!(upnp, natpmp, metrics, web, server);
    if let Err(error) = daemon.lock().flush() {
        tracing::error!("saving the last rule changes: {error}");
    }
    let _ = std::fs::remove_file(&socket);
    match outcome {
        Lifecycle::Down => tracing::info!("datapath detached and unpinned; daemon stopped"),
        _ => tracing::info!(
            "daemon stopped; the datapath keeps forwarding (`natctl down` detaches it)"
        ),
    }
    Ok(())
}

/// The admin page's listener, on the LAN address and NIC only: any other
/// address is refused, so that the page can never face the WAN.
fn web_listener(
    config: &DaemonConfig,
    lan: &Nic,
    lan_net: Ipv4Net,
    listen: std::net::SocketAddrV4,
) -> Result<(tokio::net::TcpListener, crate::web::WebConfig)> {
    if listen.port() == 0 {
        bail!(
            "[web] listen = \"{listen}\": expected a port from 1 to 65535, e.g. \"{}:8080\" (the \
             page checks the Host header against it)",
            lan_net.addr()
        );
    }
    if *listen.ip() != lan_net.addr() {
        bail!(
            "[web] listen = \"{listen}\": the admin page is served on the LAN only; expected \
             the LAN address of {} ({}) with a port, e.g. \"{}:8080\"",
            lan.name,
            lan_net.addr(),
            lan_net.addr()
        );
    }
    let web_config = crate::web::WebConfig {
        listen,
        lan_ifname: lan.name.clone(),
        lan_net,
        names: config.web.names.clone(),
        password_file: config.password_file(),
    };
    let listener = crate::web::bind(&web_config)
        .with_context(|| format!("opening the admin page {listen} ([web] listen)"))?;
    Ok((listener, web_config))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn show(network: Option<Ipv4Net>) -> String {
    network.map_or("none".to_owned(), |net| net.to_string())
}

impl Daemon {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (each step
        // is one syscall): carry on with the state as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn overlapping_wan_and_lan_addresses_are_a_conflict() {
        assert_eq!(
            address_conflict(net("203.0.113.1/24"), net("192.168.0.1/24")),
            None
        );
        // A CGNAT upstream beside a private LAN: fine.
        assert_eq!(
            address_conflict(net("100.64.3.7/10"), net("10.0.0.1/8")),
            None
        );
        let inside = address_conflict(net("192.168.0.50/32"), net("192.168.0.1/24")).unwrap();
        assert!(
            inside.contains("192.168.0.50") && inside.contains("192.168.0.0/24"),
            "{inside}"
        );
        // The upstream modem hands out the same private range as the LAN.
        let same = address_conflict(net("192.168.1.20/24"), net("192.168.1.1/24")).unwrap();
        assert!(same.contains("192.168.1.20"), "{same}");
        let wider = address_conflict(net("10.1.2.3/8"), net("10.200.0.1/16")).unwrap();
        assert!(
            wider.contains("overlaps the WAN subnet 10.0.0.0/8"),
            "{wider}"
        );
    }
}
