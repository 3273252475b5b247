//! The daemon's background tasks: the aging sweep, the connection log, the
//! NICs' addresses, deferred saves of the rule store and lease expiry.
use std::{net::SocketAddrV4, sync::Arc};

use futures::StreamExt;
use nat_common::ConnectionEvent;
use tokio::io::unix::AsyncFd;

use super::{Daemon, SAVE_DELAY, address_conflict, nat_config, show, state::Durability, unix_now};
use crate::{
    aging,
    api::ConnectionRecord,
    config, interfaces,
    rules::{LeaseOrigin, protocol_name},
};

/// Runs the kernel's aging sweep every [`config::sweep_interval`].
pub(super) async fn sweep_loop(daemon: Arc<Daemon>) {
    loop {
        let interval = config::sweep_interval(&daemon.lock().config.timeouts);
        tokio::time::sleep(interval).await;
        let daemon = daemon.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut state = daemon.lock();
            let params = aging::sweep_params(&state.config.timeouts, 0, 0);
            let report = state.sweep.run(params);
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
/// it (once per conversation, never per packet), to stderr and to the
/// connection log's history and followers.
pub(super) async fn connection_log(
    daemon: Arc<Daemon>,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
) {
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
        let now = jiff::Timestamp::now()
            .to_zoned(state.time_zone.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string();
        for event in events {
            let rule = state
                .rules
                .by_id(event.rule_id)
                .map_or("?", |rule| rule.name.as_str());
            let record = ConnectionRecord {
                seq: 0,
                time: now.clone(),
                protocol: protocol_name(event.proto).to_owned(),
                remote: SocketAddrV4::new(event.remote_addr.into(), event.remote_port),
                external_port: event.external_port,
                rule: rule.to_owned(),
                rule_id: event.rule_id,
                server: SocketAddrV4::new(event.internal_addr.into(), event.internal_port),
            };
            tracing::info!(
                target: "natctl::connections",
                "new inbound {} connection from {} to external port {} (rule {rule}) -> {}",
                record.protocol,
                record.remote,
                record.external_port,
                record.server,
            );
            daemon.connections.record(record);
        }
    }
}

/// Moves the datapath's route epoch on whenever the kernel reports a change
/// of routes, rules, neighbours, links or addresses, so that no CPU keeps
/// using a route it cached before (`nat-ebpf/src/egress.rs`). Should the
/// reports stop (the socket cannot be opened, or it failed), a cached
/// route still lasts at most 100 ms, and the subscription is opened again.
pub(super) async fn follow_forwarding(daemon: Arc<Daemon>) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
    loop {
        match interfaces::forwarding_changes() {
            Ok(mut changes) => {
                // What changed while no one listened.
                bump_route_epoch(&daemon);
                while let Some(reports) = changes.next().await {
                    tracing::debug!("{reports} route, neighbour or link reports: new route epoch");
                    bump_route_epoch(&daemon);
                }
                tracing::warn!(
                    "the kernel's route and neighbour reports stopped; listening again in \
                     {RETRY:?} (cached routes follow changes within 100 ms meanwhile)"
                );
            }
            Err(error) => tracing::error!(
                "cannot follow route and neighbour changes: {error}; trying again in {RETRY:?} \
                 (cached routes follow changes within 100 ms meanwhile)"
            ),
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn bump_route_epoch(daemon: &Daemon) {
    if let Err(error) = daemon.lock().writer.routes_changed() {
        tracing::error!("moving the datapath's route epoch on: {error}");
    }
}

/// Re-reads both NICs' addresses whenever the kernel reports a change, and
/// moves the datapath to the new ones.
pub(super) async fn follow_addresses(daemon: Arc<Daemon>, netlink: rtnetlink::Handle) {
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
        if let (Some(wan), Some(lan)) = (wan, lan)
            && let Some(conflict) = address_conflict(wan, lan)
        {
            tracing::error!(
                "{conflict}: not translating until the addresses no longer overlap; renumber \
                 the LAN"
            );
        }
        let nat = nat_config(&state.config, &state.wan, &state.lan);
        if let Err(error) = state.writer.set_config(&nat) {
            tracing::error!("updating the datapath's configuration: {error}");
        }
        if let Some(lan) = lan {
            for (_, rule) in state.rules.iter() {
                if let Err(error) = rule.validate(lan) {
                    tracing::warn!("{error}");
                }
            }
        }
        drop(state);
        daemon.upnp_changed.notify_one();
        daemon.natpmp_changed.notify_one();
    }
}

/// Saves deferred rule changes, a batch at a time.
pub(super) async fn save_deferred(daemon: Arc<Daemon>, changed: Arc<tokio::sync::Notify>) {
    loop {
        changed.notified().await;
        tokio::time::sleep(SAVE_DELAY).await;
        let daemon = daemon.clone();
        // The copy is taken under the lock; serialising and the fsync are
        // done off it, so that requests are not held up by them.
        let saved = tokio::task::spawn_blocking(move || {
            let Some(snapshot) = daemon.lock().unsaved() else {
                return Ok(());
            };
            snapshot
                .write()
                .inspect_err(|_| daemon.lock().store_dirty = true)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!("saving rule changes (will retry with the next one): {error}")
            }
            Err(error) => tracing::error!("saving rule changes: {error}"),
        }
    }
}

/// How often STUN is asked again: the upstream NAT may move the router to
/// another public address at any time; sooner after a failure (no answer
/// yet while the uplink comes up).
const STUN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const STUN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Behind another NAT (the WAN address private, shared or reserved) and
/// with `[upnp] stun` set, learns the public address by STUN and has UPnP
/// and NAT-PMP/PCP report it, unless the upstream NAT keeps strangers out
/// (RFC 5780), when nothing mapped here could be reached anyway. Says so
/// in the log whenever what it learned changes.
pub(super) async fn learn_public_address(daemon: Arc<Daemon>) {
    let mut last_said = String::new();
    let mut wait = std::time::Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = STUN_INTERVAL;
        let (server, wan) = {
            let state = daemon.lock();
            (
                state.config.upnp.stun.clone(),
                state.wan.network.map(|net| net.addr()),
            )
        };
        let (learned, said) = match (server, wan) {
            (Some(server), Some(wan)) if !crate::stun::is_public(wan) => {
                match crate::stun::probe(&server, wan).await {
                    Ok(probe) => stun_verdict(&server, wan, probe),
                    Err(error) => {
                        wait = STUN_RETRY;
                        (
                            None,
                            format!(
                                "{error}; UPnP and NAT-PMP report the WAN address {wan}, which is \
                             not public, and mappings made here cannot be reached from the \
                             Internet unless the upstream NAT forwards their ports"
                            ),
                        )
                    }
                }
            }
            _ => (None, String::new()),
        };
        // NAT-PMP/PCP see the new address at their next poll and announce it.
        daemon.lock().stun_address = learned;
        if said != last_said && !said.is_empty() {
            tracing::warn!("{said}");
        }
        last_said = said;
    }
}

/// The address to report, and what to tell the admin about it.
fn stun_verdict(
    server: &str,
    wan: std::net::Ipv4Addr,
    probe: crate::stun::Probe,
) -> (Option<std::net::Ipv4Addr>, String) {
    let public = *probe.mapped.ip();
    let ports = if probe.mapped.port() == 0 {
        String::new()
    } else {
        format!(
            " (a probe from a port of {wan} came out of port {})",
            probe.mapped.port()
        )
    };
    match probe.strangers_get_in {
        Some(false) => (
            None,
            format!(
                "STUN {server}: the WAN address {wan} is behind a NAT at {public}{ports} that \
                 filters what strangers send (RFC 5780 test): mappings made here cannot be \
                 reached from the Internet; UPnP and NAT-PMP keep reporting {wan}"
            ),
        ),
        Some(true) => (
            Some(public),
            format!(
                "STUN {server}: the WAN address {wan} is behind a NAT at {public}{ports} that lets \
                 strangers in (RFC 5780 test); UPnP and NAT-PMP report {public}. Mappings are \
                 reached from the Internet where that NAT keeps their ports"
            ),
        ),
        None => (
            Some(public),
            format!(
                "STUN {server}: the WAN address {wan} is behind a NAT at {public}{ports}; UPnP \
                 and NAT-PMP report {public}. Its filtering could not be tested (the server has \
                 no second address for RFC 5780): mappings made here are reached from the \
                 Internet only if that NAT forwards their ports to {wan}"
            ),
        ),
    }
}

/// How often the router's listeners are compared with the rules.
const ROUTER_LISTENER_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// A rule's port is checked against the router's listeners when the rule
/// takes it; a service of the router that starts listening on it later
/// would lose its traffic to the rule (the datapath translates first). So
/// the listeners are compared with the rules every few seconds: a client
/// mapping on a listener's port is removed (the client's next renewal gets
/// another port), an admin rule is logged, once, since it is the admin's
/// to move (meanwhile the datapath gives the listener every new
/// conversation, the rule only those it already carries).
pub(super) async fn yield_to_router_listeners(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(ROUTER_LISTENER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let warned = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    loop {
        tick.tick().await;
        let (daemon, warned) = (daemon.clone(), warned.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let wan = daemon.lock().wan.network.map(|net| net.addr());
            // Read off the lock: only listeners matter here, and a rule
            // made meanwhile was checked against them when it was made.
            let ports = match crate::router_ports::RouterPorts::read(wan, &[]) {
                Ok(ports) => ports,
                Err(error) => {
                    tracing::warn!("reading the router's sockets (sock_diag): {error}");
                    return;
                }
            };
            let mut state = daemon.lock();
            let mut clients = Vec::new();
            for (_, rule) in state.rules.iter().filter(|(_, rule)| rule.enabled) {
                let Some((proto, port, socket)) =
                    rule.protocol.numbers().iter().find_map(|&proto| {
                        rule.external.ports().find_map(|port| {
                            ports
                                .listener(proto, port)
                                .map(|socket| (proto, port, socket))
                        })
                    })
                else {
                    continue;
                };
                let error = crate::router_ports::Refusal::Socket(socket)
                    .into_error(&rule.name, proto, port);
                if rule.client().is_some() {
                    tracing::warn!("{error}: the mapping is removed");
                    clients.push(rule.name.clone());
                } else if warned
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert((rule.name.clone(), proto, port))
                {
                    tracing::warn!(
                        "{error}: new connections to that port from the WAN go to the \
                         router's service, the rule keeps only those it already carries; move \
                         the rule or the service"
                    );
                }
            }
            if clients.is_empty() {
                return;
            }
            if let Err(error) = state.change(
                |rules| {
                    for name in &clients {
                        rules.remove(name)?;
                    }
                    Ok(())
                },
                Durability::Soon,
            ) {
                tracing::error!("removing mappings on the router's ports: {}", error.api);
            }
        })
        .await;
    }
}

/// Removes UPnP, NAT-PMP and PCP mappings whose lease has run out, within
/// a second of it.
pub(super) async fn expire_leases(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let daemon = daemon.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let mut state = daemon.lock();
            let expired: Vec<(String, LeaseOrigin)> = state
                .rules
                .iter()
                .filter_map(|(_, rule)| {
                    let lease = rule.upnp.as_ref()?;
                    let expires = lease.expires_at?;
                    (expires <= now).then(|| (rule.name.clone(), lease.origin))
                })
                .collect();
            if expired.is_empty() {
                return;
            }
            match state.change(
                |rules| {
                    for (name, _) in &expired {
                        rules.remove(name)?;
                    }
                    Ok(())
                },
                Durability::Soon,
            ) {
                Ok(_) => {
                    for origin in [LeaseOrigin::Upnp, LeaseOrigin::Natpmp, LeaseOrigin::Pcp] {
                        let names: Vec<&str> = expired
                            .iter()
                            .filter(|(_, of)| *of == origin)
                            .map(|(name, _)| name.as_str())
                            .collect();
                        if !names.is_empty() {
                            tracing::info!(
                                "{} lease expired: removed {}",
                                origin.protocol_name(),
                                names.join(", ")
                            );
                        }
                    }
                }
                Err(error) => tracing::error!("removing expired mappings: {}", error.api),
            }
        })
        .await;
    }
}

/// The longest the schedule task sleeps: a router without a battery-backed
/// clock may have its time set (NTP) long after boot, and a window edge
/// must not wait for a sleep measured on the old time.
const SCHEDULE_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Switches rules on and off at their schedules' edges, through the one
/// transaction (which judges every schedule afresh); woken early when the
/// rules change.
pub(super) async fn follow_schedules(daemon: Arc<Daemon>, changed: Arc<tokio::sync::Notify>) {
    loop {
        let wait = {
            let state = daemon.lock();
            let now = state.local_now();
            state.rules.next_schedule_edge(&now).map(|edge| {
                let millis = edge.as_millisecond() - now.timestamp().as_millisecond();
                // A millisecond past the edge, so that it is behind us on waking.
                std::time::Duration::from_millis(millis.max(0) as u64 + 1).min(SCHEDULE_RECHECK)
            })
        };
        let sleep = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = changed.notified() => continue,
        }
        let daemon = daemon.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut state = daemon.lock();
            match state.change(|_| Ok(()), Durability::Unchanged) {
                Ok(before) => {
                    let now = state.local_now();
                    for (id, rule) in state.rules.iter() {
                        let was_off = before.by_id(id).is_some_and(|old| old.off_schedule);
                        if rule.schedule.is_always() || was_off == rule.off_schedule {
                            continue;
                        }
                        let until = rule
                            .schedule
                            .switches_at(&now)
                            .map_or_else(String::new, |when| {
                                format!(" until {}", crate::schedule::short_local(&when))
                            });
                        tracing::info!(
                            "schedule: rule {} {}{until}",
                            rule.name,
                            if rule.off_schedule {
                                "closed (off-schedule)"
                            } else {
                                "open (on-schedule)"
                            }
                        );
                    }
                }
                Err(error) => tracing::error!("switching rules by schedule: {}", error.api),
            }
        })
        .await;
    }
}
