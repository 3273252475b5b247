//! `natctl daemon`: the only writer of the datapath's maps and of the rule
//! store. It loads (or picks up) the pinned datapath, follows the NICs'
//! addresses, serves the control API, ages entries out and logs new
//! inbound connections.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use ipnet::Ipv4Net;
use nat_common::{ConnectionEvent, Counter, EndpointKey, NatConfig, programs};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    aging::{self, SweepReport},
    api::{self, ApiError, Controller, Request},
    config::{self, DaemonConfig},
    datapath::{self, AttachMode, Datapath, Maps, TableSizes},
    interfaces,
    rules::{ForwardRule, RuleError, RuleSet, protocol_name},
    store, table,
    upnp::{
        IgdVersion,
        error::UpnpError,
        http::Control,
        igd::{self, Gateway, GatewayError, Totals},
        service::{self, Running, ServiceConfig},
        soap::SoapRequest,
    },
};

/// Pins of the two XDP links and of the sweep program, beside the maps'.
const LINK_LAN: &str = "link_nat_lan";
const LINK_WAN: &str = "link_nat_wan";
const PROG_SWEEP: &str = "prog_nat_sweep";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What `natctl daemon` was started with; the flags win over the file.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub wan: String,
    pub lan: String,
    pub config: Option<PathBuf>,
    pub xdp_mode: AttachMode,
    pub socket: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub rules_file: Option<PathBuf>,
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
struct Nic {
    name: String,
    ifindex: u32,
    /// `None` while the interface has no IPv4 address.
    network: Option<Ipv4Net>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    Running,
    /// Exit, leaving the datapath attached and pinned.
    Stop,
    /// The datapath was detached: exit.
    Down,
}

struct State {
    /// Rule changes not yet in the store ([`Durability::Soon`]).
    store_dirty: bool,
    /// Wakes the task that saves them.
    store_changed: Arc<tokio::sync::Notify>,
    config: DaemonConfig,
    maps: Maps,
    /// The datapath's sweep program; `None` for a datapath pinned without
    /// it, which is then swept from user space.
    kernel_sweep: Option<aging::KernelSweep>,
    rules: RuleSet,
    wan: Nic,
    lan: Nic,
    last_sweep: Option<SweepReport>,
}

struct Daemon {
    state: Mutex<State>,
    lifecycle: watch::Sender<Lifecycle>,
    options: DaemonOptions,
    config_file: Option<PathBuf>,
    started: Instant,
    adopted: bool,
    /// `natctl upnp on|off`; starts as the configuration says.
    upnp_wanted: AtomicBool,
    /// Wakes the UPnP supervisor: a switch, an address or a reload.
    upnp_changed: tokio::sync::Notify,
    boot_id: u32,
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

fn nat_config(config: &DaemonConfig, wan: &Nic, lan: &Nic) -> NatConfig {
    let (wan_addr, lan_net) = match (wan.network, lan.network) {
        (Some(wan), Some(lan)) => (wan.addr(), lan.trunc()),
        // Without both addresses the datapath must not translate: a zero
        // WAN address makes it pass everything to the kernel.
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

fn check_bpffs(dir: &Path) -> Result<()> {
    let probe = if dir.exists() {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    };
    let stat = nix::sys::statfs::statfs(probe)
        .with_context(|| format!("checking the filesystem of {}", probe.display()))?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem, so the datapath could not outlive the daemon: \
             mount one with `mount -t bpf bpf {}`",
            dir.display(),
            probe.display()
        );
    }
    Ok(())
}

/// Detaches the datapath pinned under `dir` and removes its pins. Returns
/// whether anything was there.
pub fn teardown(dir: &Path) -> Result<bool> {
    let mut found = false;
    for link in [LINK_LAN, LINK_WAN] {
        found |= datapath::unpin_link(&dir.join(link))
            .with_context(|| format!("detaching {}", dir.join(link).display()))?;
    }
    found |= datapath::PINNED.iter().any(|name| dir.join(name).exists());
    Maps::unpin(dir);
    let _ = std::fs::remove_file(dir.join(PROG_SWEEP));
    let _ = std::fs::remove_dir(dir);
    Ok(found)
}

/// The ids the pinned datapath knows the rules by, so that a restarted
/// daemon keeps each rule's counters: an enabled rule's first inbound entry
/// carries its id. Rules found there keep it; the others get free ids with
/// their counters zeroed (the slot may hold a removed rule's counts).
fn recover_ids(maps: &mut Maps, rules: &RuleSet) -> Result<RuleSet> {
    let mut found = Vec::new();
    for (_, rule) in rules.iter() {
        let pinned = rule.enabled.then(|| {
            let key = EndpointKey::inbound(rule.protocol.numbers()[0], rule.external.first);
            maps.forwards.get(&key, 0).ok()
        });
        let id = pinned.flatten().filter(|forward| {
            forward.addr == rule.internal_addr.octets() && forward.port == rule.internal.first
        });
        found.push((rule.clone(), id.map(|forward| forward.rule_id)));
    }
    let mut recovered = RuleSet::default();
    // Known ids first, so that no fresh id takes one of them.
    for (rule, id) in found.iter().filter(|(_, id)| id.is_some()) {
        recovered.add(rule.clone(), *id)?;
    }
    let mut order = Vec::new();
    for (rule, id) in &found {
        if id.is_none() {
            let fresh = recovered.add(rule.clone(), None)?;
            maps.reset_rule_counters(fresh)?;
        }
        order.push(rule.name.clone());
    }
    // Keep the store's order (GetGenericPortMappingEntry indexes by it).
    let mut ordered = RuleSet::default();
    for name in order {
        let (id, rule) = recovered.get(&name).expect("added above");
        ordered.add(rule.clone(), Some(id))?;
    }
    Ok(ordered)
}

/// Picks up a datapath a previous daemon left pinned (its flows never
/// stopped), or loads and attaches a fresh one. Either way the maps end up
/// holding `config` and `rules`.
fn start_datapath(
    config: &DaemonConfig,
    mode: AttachMode,
    wan: &Nic,
    lan: &Nic,
    rules: &mut RuleSet,
) -> Result<(Maps, bool)> {
    let dir = &config.pin_dir;
    let nat = nat_config(config, wan, lan);
    let links_pinned = dir.join(LINK_LAN).exists() && dir.join(LINK_WAN).exists();
    if links_pinned && Maps::all_pinned(dir) {
        let mut maps = Maps::open_pinned(dir).with_context(|| {
            format!(
                "the datapath pinned in {} cannot be used by this natctl (an older version?); \
                 `natctl down --pin-dir {}` detaches it",
                dir.display(),
                dir.display()
            )
        })?;
        let running = maps.config()?;
        if (running.wan_ifindex, running.lan_ifindex) != (wan.ifindex, lan.ifindex) {
            bail!(
                "the datapath pinned in {} runs on other NICs (WAN ifindex {}, LAN ifindex {}, \
                 not {} and {}): `natctl down` detaches it first",
                dir.display(),
                running.wan_ifindex,
                running.lan_ifindex,
                wan.ifindex,
                lan.ifindex
            );
        }
        maps.set_config(&nat)?;
        *rules = recover_ids(&mut maps, rules)?;
        maps.sync_rules(&rules.entries())?;
        return Ok((maps, true));
    }
    if teardown(dir)? {
        tracing::warn!(
            "found an incomplete datapath in {}; removed it and starting afresh",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let attach = || -> Result<Maps> {
        let mut datapath = Datapath::load(TableSizes::default(), Some(dir))?;
        datapath.maps.set_config(&nat)?;
        datapath.maps.allow_egress(wan.ifindex)?;
        datapath.maps.allow_egress(lan.ifindex)?;
        datapath.maps.sync_rules(&rules.entries())?;
        // Rules and configuration are in place before the first packet.
        for (program, nic, pin) in [
            (programs::LAN, lan, LINK_LAN),
            (programs::WAN, wan, LINK_WAN),
        ] {
            let (link, used) = datapath.attach(program, &nic.name, nic.ifindex, mode)?;
            datapath.pin_link(program, link, &dir.join(pin))?;
            tracing::info!("{program} attached to {} in {used:?} mode", nic.name);
        }
        datapath.pin_program(programs::SWEEP, &dir.join(PROG_SWEEP))?;
        Ok(datapath.into_maps())
    };
    match attach() {
        Ok(maps) => Ok((maps, false)),
        Err(error) => {
            // Leave nothing half attached behind.
            let _ = teardown(dir);
            Err(error)
        }
    }
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
    let mut rules = rules_from_store(
        &config.rules_file,
        Some(lan_net.trunc()),
        &RuleSet::default(),
    )?;

    // Refuse early if another daemon serves the socket, before touching
    // its datapath.
    let listener = api::bind(&config.socket)
        .with_context(|| format!("opening the API socket {}", config.socket.display()))?;
    check_bpffs(&config.pin_dir)?;
    interfaces::prepare_router(&lan.name, &wan.name)?;
    let (maps, adopted) = match start_datapath(&config, options.xdp_mode, &wan, &lan, &mut rules) {
        Ok(started) => started,
        Err(error) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(error);
        }
    };
    tracing::info!(
        "NAT {}: WAN {} ({}), LAN {} ({}), {} rule(s) from {}; maps pinned in {}; API on {}",
        if adopted {
            "picked up from the pinned datapath, flows kept"
        } else {
            "started"
        },
        wan.name,
        wan.network
            .map_or("no address".to_owned(), |net| net.to_string()),
        lan.name,
        lan_net.trunc(),
        rules.len(),
        config.rules_file.display(),
        config.pin_dir.display(),
        config.socket.display()
    );

    let (lifecycle, mut lifecycle_changes) = watch::channel(Lifecycle::Running);
    let upnp_enabled = config.upnp.enabled;
    let store_changed = Arc::new(tokio::sync::Notify::new());
    let kernel_sweep = match aging::KernelSweep::from_pin(&config.pin_dir.join(PROG_SWEEP)) {
        Ok(sweep) => Some(sweep),
        Err(error) => {
            tracing::warn!("aging from user space: no sweep program pinned ({error})");
            None
        }
    };
    let mut maps = maps;
    let ring = maps.new_connections.take();
    let socket = config.socket.clone();
    let daemon = Arc::new(Daemon {
        state: Mutex::new(State {
            store_dirty: false,
            store_changed: store_changed.clone(),
            kernel_sweep,
            config,
            maps,
            rules,
            wan,
            lan,
            last_sweep: None,
        }),
        lifecycle,
        options,
        config_file,
        started: Instant::now(),
        adopted,
        upnp_wanted: AtomicBool::new(upnp_enabled),
        upnp_changed: tokio::sync::Notify::new(),
        boot_id: unix_now() as u32,
    });

    let (api_stop_tx, api_stop) = watch::channel(false);
    let server = tokio::spawn(api::serve(
        listener,
        daemon.clone() as Arc<dyn Controller>,
        api_stop,
    ));
    tokio::spawn(sweep_loop(daemon.clone()));
    if let Some(ring) = ring {
        tokio::spawn(connection_log(daemon.clone(), ring));
    }
    tokio::spawn(follow_addresses(daemon.clone(), netlink));
    tokio::spawn(expire_leases(daemon.clone()));
    tokio::spawn(save_deferred(daemon.clone(), store_changed));
    if !upnp_enabled {
        // Switched off in the configuration: no client's mapping stays open.
        if let Err(error) = daemon.handle(Request::Upnp(false)) {
            tracing::error!("removing UPnP mappings: {error}");
        }
    }
    let (upnp_stop_tx, upnp_stop) = watch::channel(false);
    let upnp = tokio::spawn(supervise_upnp(daemon.clone(), upnp_stop));

    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let outcome = loop {
        tokio::select! {
            _ = terminate.recv() => break Lifecycle::Stop,
            _ = interrupt.recv() => break Lifecycle::Stop,
            _ = hangup.recv() => match daemon.reload() {
                Ok(summary) => tracing::info!("SIGHUP: {summary}"),
                Err(error) => tracing::error!("SIGHUP: {error}"),
            },
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
    // The IGD says goodbye (SSDP byebye) before the daemon goes.
    let _ = upnp_stop_tx.send(true);
    let _ = upnp.await;
    let _ = api_stop_tx.send(true);
    let _ = server.await;
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

async fn sweep_loop(daemon: Arc<Daemon>) {
    loop {
        let interval = config::sweep_interval(&daemon.lock().config.timeouts);
        tokio::time::sleep(interval).await;
        let daemon = daemon.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut state = daemon.lock();
            let timeouts = state.config.timeouts;
            let state = &mut *state;
            let report = match state.kernel_sweep.as_mut() {
                Some(sweep) => sweep.run(&mut state.maps, &timeouts),
                None => aging::sweep(&mut state.maps, &timeouts, aging::datapath_now_ns()),
            };
            if let Ok(report) = &report {
                state.last_sweep = Some(report.clone());
            }
            report
        })
        .await;
        match outcome {
            Ok(Ok(report)) => {
                if report.sessions_removed
                    + report.bindings_removed
                    + report.forward_sessions_removed
                    > 0
                {
                    tracing::debug!(?report, "aging sweep");
                }
            }
            Ok(Err(error)) => tracing::error!("aging sweep failed: {error}"),
            Err(error) => tracing::error!("aging sweep panicked: {error}"),
        }
    }
}

/// Logs each new conversation on a forwarded port, as the datapath reports
/// it (once per conversation, never per packet).
async fn connection_log(daemon: Arc<Daemon>, ring: aya::maps::RingBuf<aya::maps::MapData>) {
    // SAFETY: the ring owns its map fd and never replaces or closes it
    // while the AsyncFd holds it.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(error) => {
            tracing::error!("cannot watch the new-connection ring: {error}");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!("new-connection ring: {error}");
                return;
            }
        };
        let mut events = Vec::new();
        while let Some(item) = guard.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<ConnectionEvent>() {
                // SAFETY: the datapath writes whole ConnectionEvents, a
                // plain-integer repr(C) struct; read_unaligned copes with
                // the ring's alignment.
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<ConnectionEvent>())
                });
            }
        }
        guard.clear_ready();
        if events.is_empty() {
            continue;
        }
        let state = daemon.lock();
        for event in events {
            let rule = state
                .rules
                .by_id(event.rule_id)
                .map_or("?", |rule| rule.name.as_str());
            tracing::info!(
                target: "natctl::connections",
                "new inbound {} connection from {}:{} to external port {} (rule {rule}) -> {}:{}",
                protocol_name(event.proto),
                std::net::Ipv4Addr::from(event.remote_addr),
                event.remote_port,
                event.external_port,
                std::net::Ipv4Addr::from(event.internal_addr),
                event.internal_port,
            );
        }
    }
}

/// Re-reads both NICs' addresses whenever the kernel reports a change, and
/// moves the datapath to the new ones.
async fn follow_addresses(daemon: Arc<Daemon>, netlink: rtnetlink::Handle) {
    let mut changes = match interfaces::address_changes() {
        Ok(changes) => changes,
        Err(error) => {
            tracing::error!("cannot follow address changes: {error}");
            return;
        }
    };
    while changes.next().await.is_some() {
        let (wan_ifindex, lan_ifindex) = {
            let state = daemon.lock();
            (state.wan.ifindex, state.lan.ifindex)
        };
        let wan = interfaces::ipv4_network_of(&netlink, wan_ifindex).await;
        let lan = interfaces::ipv4_network_of(&netlink, lan_ifindex).await;
        let (Ok(wan), Ok(lan)) = (wan, lan) else {
            tracing::warn!("re-reading the NICs' addresses failed; keeping the current ones");
            continue;
        };
        let mut state = daemon.lock();
        if state.wan.network == wan && state.lan.network == lan {
            continue;
        }
        tracing::info!(
            "addresses changed: WAN {} -> {}, LAN {} -> {}",
            show(state.wan.network),
            show(wan),
            show(state.lan.network),
            show(lan)
        );
        state.wan.network = wan;
        state.lan.network = lan;
        let nat = nat_config(&state.config, &state.wan, &state.lan);
        if let Err(error) = state.maps.set_config(&nat) {
            tracing::error!("updating the datapath's configuration: {error}");
        }
        if let Some(lan) = lan {
            for (_, rule) in state.rules.iter() {
                if let Err(error) = rule.validate(lan.trunc()) {
                    tracing::warn!("{error}");
                }
            }
        }
        drop(state);
        daemon.upnp_changed.notify_one();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Saves deferred rule changes, a batch at a time.
async fn save_deferred(daemon: Arc<Daemon>, changed: Arc<tokio::sync::Notify>) {
    loop {
        changed.notified().await;
        tokio::time::sleep(SAVE_DELAY).await;
        let daemon = daemon.clone();
        let saved = tokio::task::spawn_blocking(move || daemon.lock().flush()).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!("saving rule changes (will retry with the next one): {error}")
            }
            Err(error) => tracing::error!("saving rule changes: {error}"),
        }
    }
}

/// Removes UPnP mappings whose lease has run out, within a second of it.
async fn expire_leases(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let daemon = daemon.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let mut state = daemon.lock();
            let expired: Vec<String> = state
                .rules
                .iter()
                .filter(|(_, rule)| {
                    rule.upnp
                        .as_ref()
                        .and_then(|lease| lease.expires_at)
                        .is_some_and(|expires| expires <= now)
                })
                .map(|(_, rule)| rule.name.clone())
                .collect();
            if expired.is_empty() {
                return;
            }
            match state.change(
                |rules| {
                    for name in &expired {
                        rules.remove(name)?;
                    }
                    Ok(())
                },
                Durability::Soon,
            ) {
                Ok(_) => tracing::info!("UPnP lease expired: removed {}", expired.join(", ")),
                Err(error) => tracing::error!("removing expired UPnP mappings: {}", error.api),
            }
        })
        .await;
    }
}

/// Keeps the IGD running exactly while it is wanted and the LAN has an
/// address, restarting it when the address or its settings change.
async fn supervise_upnp(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
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
                ) == (
                    wanted.lan_addr,
                    wanted.http_port,
                    wanted.igd,
                    &wanted.v1_user_agents,
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
                let control = Arc::new(UpnpControl(daemon.clone())) as Arc<dyn Control>;
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

/// The IGD's view of the daemon, for one request.
struct DaemonGateway<'a> {
    state: &'a mut State,
    started: Instant,
}

impl Gateway for DaemonGateway<'_> {
    fn external_address(&self) -> Option<Ipv4Addr> {
        self.state.wan.network.map(|net| net.addr())
    }

    fn lan(&self) -> Option<Ipv4Net> {
        self.state.lan.network.map(|net| net.trunc())
    }

    fn rules(&self) -> Vec<ForwardRule> {
        self.state.rules.to_vec()
    }

    fn apply(&mut self, remove: &[String], add: Vec<ForwardRule>) -> Result<(), GatewayError> {
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
            tracing::info!("UPnP: removed {}", remove.join(", "));
        }
        for line in summary {
            tracing::info!("UPnP: mapped {line}");
        }
        Ok(())
    }

    fn totals(&self) -> Totals {
        let counters = self.state.maps.counters().unwrap_or_default();
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

struct UpnpControl(Arc<Daemon>);

impl Control for UpnpControl {
    fn control(
        &self,
        caller: Ipv4Addr,
        request: &SoapRequest,
    ) -> Result<Vec<(&'static str, String)>, UpnpError> {
        let daemon = &self.0;
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
        let mut gateway = DaemonGateway {
            state: &mut state,
            started: daemon.started,
        };
        let outcome = igd::handle(&mut gateway, &settings, igd, caller, request);
        if let Err(error) = &outcome {
            tracing::info!(
                "UPnP {} from {caller} refused: {} {}",
                request.action,
                error.code(),
                error.description()
            );
        }
        outcome
    }
}

fn show(network: Option<Ipv4Net>) -> String {
    network.map_or("none".to_owned(), |net| net.to_string())
}

/// A rule as `natctl list` shows it.
#[derive(Serialize)]
struct RuleView<'a> {
    #[serde(flatten)]
    rule: &'a ForwardRule,
    id: u32,
    inbound: table::Traffic,
    outbound: table::Traffic,
}

/// When a rule change reaches the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Before the change is acknowledged: the user's own rules.
    Saved,
    /// Within [`SAVE_DELAY`], together with any other changes by then: UPnP
    /// mappings and lease expiry, which clients make at a high rate and
    /// renew by themselves. Saved at a clean stop too; a `kill -9` inside
    /// that window loses them from the store (not from the datapath).
    Soon,
}

/// How long deferred changes wait for company before they are saved.
const SAVE_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// A refused change: the API's answer, and the rule error behind it when
/// the rules themselves were at fault (UPnP maps those to its own codes).
#[derive(Debug)]
struct ChangeError {
    api: ApiError,
    rule: Option<RuleError>,
}

impl From<RuleError> for ChangeError {
    fn from(error: RuleError) -> Self {
        Self {
            api: rule_error(error.clone()),
            rule: Some(error),
        }
    }
}

impl From<ApiError> for ChangeError {
    fn from(api: ApiError) -> Self {
        Self { api, rule: None }
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        error.api
    }
}

fn rule_error(error: RuleError) -> ApiError {
    match error {
        RuleError::NotFound(_) => ApiError::not_found(error.to_string()),
        RuleError::DuplicateName(_)
        | RuleError::Overlap { .. }
        | RuleError::SharedTarget { .. }
        | RuleError::InUseByMapping { .. } => ApiError::conflict(error.to_string()),
        _ => ApiError::bad_request(error.to_string()),
    }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(error.to_string())
}

fn to_json(value: impl Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(internal)
}

impl State {
    fn lan_net(&self) -> Result<Ipv4Net, ApiError> {
        self.lan.network.map(|net| net.trunc()).ok_or_else(|| {
            ApiError::conflict(format!(
                "the LAN {} has no IPv4 address, so rules cannot be checked against it",
                self.lan.name
            ))
        })
    }

    /// Applies a change to the rules all or nothing: validated as a whole,
    /// written to the maps (undone on failure), then saved (maps undone if
    /// the save fails).
    fn change(
        &mut self,
        edit: impl FnOnce(&mut RuleSet) -> Result<(), RuleError>,
        durability: Durability,
    ) -> Result<RuleSet, ChangeError> {
        let mut next = self.rules.clone();
        edit(&mut next)?;
        next.validate(self.lan_net()?)?;
        let known: std::collections::HashSet<u32> = self.rules.iter().map(|(id, _)| id).collect();
        for (id, _) in next.iter() {
            if !known.contains(&id) {
                self.maps.reset_rule_counters(id).map_err(internal)?;
            }
        }
        // The daemon is the maps' only writer: the difference between the
        // rule sets is the difference between what the maps hold and what
        // they must hold, so only the changed entries are touched.
        let (current, desired) = (self.rules.entries(), next.entries());
        self.maps
            .change_rules(&current, &desired)
            .map_err(internal)?;
        // Checked once the new forwards are in: from then on the datapath
        // gives none of their ports to a new dynamic mapping, so a mapping
        // found now is one that was there before.
        if let Err(conflict) = self.check_mappings(&next) {
            let _ = self.maps.change_rules(&desired, &current);
            return Err(conflict.into());
        }
        match durability {
            Durability::Saved => {
                if let Err(error) = store::save_rules(&self.config.rules_file, &next.to_vec()) {
                    let _ = self.maps.change_rules(&desired, &current);
                    return Err(ApiError::internal(format!("{error}; nothing was changed")).into());
                }
                self.store_dirty = false;
            }
            Durability::Soon => {
                self.store_dirty = true;
                self.store_changed.notify_one();
            }
        }
        let previous = std::mem::replace(&mut self.rules, next);
        Ok(previous)
    }

    /// Writes the rules if a change has not been saved yet.
    fn flush(&mut self) -> Result<(), store::StoreError> {
        if self.store_dirty {
            store::save_rules(&self.config.rules_file, &self.rules.to_vec())?;
            self.store_dirty = false;
        }
        Ok(())
    }

    /// A port a rule newly claims must not be a live dynamic mapping's.
    fn check_mappings(&self, next: &RuleSet) -> Result<(), RuleError> {
        let held = self.rules.claimed_ports();
        let mut claimed: Vec<_> = next.claimed_ports().difference(&held).copied().collect();
        claimed.sort_unstable();
        for (proto, port) in claimed {
            if let Ok(binding) = self
                .maps
                .bindings
                .get(&EndpointKey::inbound(proto, port), 0)
            {
                let name = next
                    .iter()
                    .find(|(_, rule)| {
                        rule.enabled
                            && rule.protocol.numbers().contains(&proto)
                            && (rule.external.first..=rule.external.last).contains(&port)
                    })
                    .map_or_else(String::new, |(_, rule)| rule.name.clone());
                return Err(RuleError::InUseByMapping {
                    name,
                    protocol: protocol_name(proto),
                    port,
                    internal: std::net::SocketAddrV4::new(binding.addr.into(), binding.port),
                });
            }
        }
        Ok(())
    }

    fn rule_view(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        let (id, rule) = self
            .rules
            .get(name)
            .ok_or_else(|| rule_error(RuleError::NotFound(name.to_owned())))?;
        let counters = self.maps.rule_counters(id).map_err(internal)?;
        to_json(RuleView {
            rule,
            id,
            inbound: counters.inbound.into(),
            outbound: counters.outbound.into(),
        })
    }
}

impl Daemon {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps (each step
        // is one syscall): carry on with the state as it is.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads the configuration file and the rule store (SIGHUP). Nothing
    /// changes unless both are valid.
    fn reload(&self) -> Result<String, ApiError> {
        let (config, _) = self.options.load_config().map_err(|error| {
            ApiError::bad_request(format!("configuration not reloaded: {error}"))
        })?;
        let mut state = self.lock();
        let lan = state.lan.network.map(|net| net.trunc());
        let rules = rules_from_store(&config.rules_file, lan, &state.rules)
            .map_err(|error| ApiError::bad_request(format!("rules not reloaded: {error:#}")))?;
        if config.pin_dir != state.config.pin_dir || config.socket != state.config.socket {
            tracing::warn!("a new pin_dir or socket takes effect when the daemon restarts");
        }
        for (id, _) in rules.iter() {
            if state.rules.by_id(id).is_none() {
                state.maps.reset_rule_counters(id).map_err(internal)?;
            }
        }
        state.maps.sync_rules(&rules.entries()).map_err(internal)?;
        let keep = (state.config.pin_dir.clone(), state.config.socket.clone());
        state.config = DaemonConfig {
            pin_dir: keep.0,
            socket: keep.1,
            ..config
        };
        let nat = nat_config(&state.config, &state.wan, &state.lan);
        state.maps.set_config(&nat).map_err(internal)?;
        state.rules = rules;
        // The file is the truth now: UPnP changes not saved yet are gone
        // with the rules they changed.
        state.store_dirty = false;
        self.upnp_wanted
            .store(state.config.upnp.enabled, Ordering::SeqCst);
        self.upnp_changed.notify_one();
        Ok(format!(
            "reloaded {} and {} rule(s) from {}",
            self.config_file
                .as_ref()
                .map_or("the default configuration".to_owned(), |file| file
                    .display()
                    .to_string()),
            state.rules.len(),
            state.config.rules_file.display()
        ))
    }

    fn status(&self) -> Result<serde_json::Value, ApiError> {
        let state = self.lock();
        Ok(serde_json::json!({
            "wan": state.wan,
            "lan": state.lan,
            "rules": state.rules.len(),
            "config_file": self.config_file,
            "rules_file": state.config.rules_file,
            "pin_dir": state.config.pin_dir,
            "nat": state.config.nat,
            "timeouts": state.config.timeouts,
            "picked_up_pinned_datapath": self.adopted,
            "upnp": self.upnp_wanted.load(Ordering::SeqCst),
            "uptime_secs": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
        }))
    }
}

impl Controller for Daemon {
    fn handle(&self, request: Request) -> Result<serde_json::Value, ApiError> {
        match request {
            Request::Status => self.status(),
            Request::ListRules => {
                let state = self.lock();
                let mut views = Vec::new();
                for (id, rule) in state.rules.iter() {
                    let counters = state.maps.rule_counters(id).map_err(internal)?;
                    views.push(RuleView {
                        rule,
                        id,
                        inbound: counters.inbound.into(),
                        outbound: counters.outbound.into(),
                    });
                }
                to_json(views)
            }
            Request::AddRule(rule) => {
                let name = rule.name.clone();
                let mut state = self.lock();
                state.change(|rules| rules.add(rule, None).map(drop), Durability::Saved)?;
                let (_, added) = state.rules.get(&name).expect("just added");
                tracing::info!("rule added: {}", added);
                state.rule_view(&name)
            }
            Request::ModifyRule { name, change } => {
                if change.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "nothing to change in rule {name}: give at least one of --name, --proto, \
                         --external, --internal, --allow, --allow-any"
                    )));
                }
                let new_name = change.name.clone().unwrap_or_else(|| name.clone());
                let mut state = self.lock();
                state.change(
                    |rules| {
                        change.apply_to(rules.get_mut(&name)?);
                        Ok(())
                    },
                    Durability::Saved,
                )?;
                let (_, modified) = state.rules.get(&new_name).expect("just modified");
                tracing::info!("rule {name} modified: {}", modified);
                state.rule_view(&new_name)
            }
            Request::RemoveRule(name) => {
                let mut state = self.lock();
                state.change(|rules| rules.remove(&name).map(drop), Durability::Saved)?;
                tracing::info!("rule {name} removed");
                Ok(serde_json::json!({ "removed": name }))
            }
            Request::SetEnabled { name, enabled } => {
                let mut state = self.lock();
                state.change(
                    |rules| {
                        rules.get_mut(&name)?.enabled = enabled;
                        Ok(())
                    },
                    Durability::Saved,
                )?;
                tracing::info!(
                    "rule {name} {}",
                    if enabled { "enabled" } else { "disabled" }
                );
                state.rule_view(&name)
            }
            Request::Table(filter) => {
                let state = self.lock();
                let rows = table::table_rows(
                    &state.rules,
                    &state.maps,
                    &state.config.timeouts,
                    aging::datapath_now_ns(),
                    unix_now(),
                    &filter,
                )
                .map_err(internal)?;
                to_json(rows)
            }
            Request::Stats => {
                let state = self.lock();
                to_json(
                    table::stats(&state.rules, &state.maps, state.last_sweep.clone())
                        .map_err(internal)?,
                )
            }
            Request::Reload => {
                let summary = self.reload()?;
                tracing::info!("API reload: {summary}");
                Ok(serde_json::json!({ "reloaded": summary }))
            }
            Request::Upnp(on) => {
                self.upnp_wanted.store(on, Ordering::SeqCst);
                let mut removed = Vec::new();
                if !on {
                    // Off means closed: a client's mappings go with it.
                    let mut state = self.lock();
                    let names: Vec<String> = state
                        .rules
                        .iter()
                        .filter(|(_, rule)| rule.upnp.is_some())
                        .map(|(_, rule)| rule.name.clone())
                        .collect();
                    state.change(
                        |rules| {
                            for name in &names {
                                rules.remove(name)?;
                            }
                            Ok(())
                        },
                        Durability::Saved,
                    )?;
                    removed = names;
                }
                self.upnp_changed.notify_one();
                tracing::info!(
                    "UPnP switched {}{}",
                    if on { "on" } else { "off" },
                    if removed.is_empty() {
                        String::new()
                    } else {
                        format!("; removed {}", removed.join(", "))
                    }
                );
                Ok(serde_json::json!({ "upnp": on, "removed": removed }))
            }
            Request::Down => {
                let state = self.lock();
                let dir = state.config.pin_dir.clone();
                teardown(&dir).map_err(|error| internal(format!("{error:#}")))?;
                let _ = self.lifecycle.send(Lifecycle::Down);
                Ok(serde_json::json!({ "detached": true, "pin_dir": dir }))
            }
        }
    }
}
