//! The daemon's state and the rule transaction: every rule change, from
//! the CLI, UPnP, lease expiry or a reload, goes through [`State::change`],
//! which validates, checks live mappings, applies the difference to the
//! maps and saves, all or nothing.
use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use ipnet::Ipv4Net;
use serde::Serialize;

use super::Nic;
use crate::{
    api::{ApiError, ListedRule},
    config::DaemonConfig,
    datapath::{KernelSweep, MapChange, MapView, MapWriter, SweepReport},
    router_ports::RouterPorts,
    rules::{ForwardRule, PortIndex, RuleError, RuleSet, protocol_name},
    schedule::{self, Clock},
    store,
};
use jiff::{Zoned, tz::TimeZone};

pub(super) struct State {
    /// Rule changes not yet in the store ([`Durability::Soon`]).
    pub store_dirty: bool,
    /// Counts rule changes, so that the store keeps the newest.
    pub generation: u64,
    /// Shared with the task that writes deferred changes off the lock.
    pub store: Arc<OrderedStore>,
    /// The external ports the enabled rules hold, for choosing free ones.
    pub ports: PortIndex,
    /// Wakes the task that saves them.
    pub store_changed: Arc<tokio::sync::Notify>,
    pub config: DaemonConfig,
    /// The only writer of the configuration and rule maps.
    pub writer: MapWriter,
    pub view: MapView,
    pub sweep: KernelSweep,
    pub rules: RuleSet,
    pub wan: Nic,
    pub lan: Nic,
    pub last_sweep: Option<SweepReport>,
    /// The time schedules are judged by, and the router's time zone.
    pub clock: Arc<dyn Clock>,
    pub time_zone: TimeZone,
    /// Wakes the task that switches rules at their schedules' edges.
    pub schedules_changed: Arc<tokio::sync::Notify>,
    /// The public address STUN learned while the WAN address is not one.
    pub stun_address: Option<std::net::Ipv4Addr>,
}

/// When a rule change reaches the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Durability {
    /// Before the change is acknowledged: the user's own rules.
    Saved,
    /// Within [`SAVE_DELAY`], together with any other changes by then: UPnP
    /// mappings and lease expiry, which clients make at a high rate and
    /// renew by themselves. Saved at a clean stop too; a `kill -9` inside
    /// that window loses them from the store (not from the datapath).
    Soon,
    /// The rules were just read from the store (a reload): the file is the
    /// truth, and changes not saved yet are gone with the rules they
    /// changed.
    FromStore,
    /// Nothing the store holds changed: a schedule switched rules on or
    /// off.
    Unchanged,
}

/// Writes of the rule store in the order of the changes they save: a
/// snapshot taken under the state's lock may be written after it is
/// released, and a newer one (the admin's, saved at once) may have been
/// written meanwhile; the older one is then dropped, not written over it.
#[derive(Debug, Default)]
pub(super) struct OrderedStore {
    /// The generation of the rules the file holds.
    written: std::sync::Mutex<u64>,
}

impl OrderedStore {
    pub fn write(
        &self,
        path: &std::path::Path,
        generation: u64,
        rules: &[ForwardRule],
    ) -> Result<(), store::StoreError> {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *written >= generation {
            return Ok(());
        }
        store::save_rules(path, rules)?;
        *written = generation;
        Ok(())
    }

    /// The file was just read: it holds `generation`.
    fn read_at(&self, generation: u64) {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *written = (*written).max(generation);
    }
}

/// Deferred changes to write: taken under the lock, written off it.
pub(super) struct StoreSnapshot {
    pub path: std::path::PathBuf,
    pub generation: u64,
    pub rules: Vec<ForwardRule>,
    pub store: Arc<OrderedStore>,
}

impl StoreSnapshot {
    pub fn write(&self) -> Result<(), store::StoreError> {
        self.store.write(&self.path, self.generation, &self.rules)
    }
}

/// How long deferred changes wait for company before they are saved.
pub(super) const SAVE_DELAY: Duration = Duration::from_millis(250);

/// A refused change: the API's answer, and the rule error behind it when
/// the rules themselves were at fault (UPnP maps those to its own codes).
#[derive(Debug)]
pub(super) struct ChangeError {
    pub api: ApiError,
    pub rule: Option<RuleError>,
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

/// What clients (UPnP, NAT-PMP, PCP) hold, per host and together, may not
/// grow past the configuration's quotas; a change that does not grow a
/// count past them (a renewal, a removal) always goes through, even after
/// the quotas were lowered.
fn check_quotas(
    current: &RuleSet,
    next: &RuleSet,
    settings: &crate::config::UpnpSettings,
) -> Result<(), RuleError> {
    let count = |rules: &RuleSet| {
        let mut per_client = std::collections::HashMap::<std::net::Ipv4Addr, usize>::new();
        for client in rules.iter().filter_map(|(_, rule)| rule.client()) {
            *per_client.entry(client).or_default() += 1;
        }
        per_client
    };
    let (before, after) = (count(current), count(next));
    let total = |counts: &std::collections::HashMap<_, usize>| counts.values().sum::<usize>();
    let limit = settings.max_mappings;
    if total(&after) > limit && total(&after) > total(&before) {
        return Err(RuleError::LeasedQuota { limit });
    }
    let limit = settings.max_mappings_per_client;
    for (client, held) in &after {
        if *held > limit && *held > before.get(client).copied().unwrap_or(0) {
            return Err(RuleError::ClientQuota {
                client: *client,
                limit,
            });
        }
    }
    Ok(())
}

pub(super) fn rule_error(error: RuleError) -> ApiError {
    match error {
        RuleError::NotFound(_) => ApiError::not_found(error.to_string()),
        RuleError::DuplicateName(_)
        | RuleError::Overlap { .. }
        | RuleError::SharedTarget { .. }
        | RuleError::InUseByMapping { .. }
        | RuleError::RouterSocket { .. }
        | RuleError::ReservedPort { .. }
        | RuleError::ClientQuota { .. }
        | RuleError::LeasedQuota { .. } => ApiError::conflict(error.to_string()),
        _ => ApiError::bad_request(error.to_string()),
    }
}

/// What a request handler answers.
pub(super) type ApiResult = Result<serde_json::Value, ApiError>;

pub(super) fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(error.to_string())
}

pub(super) fn to_json(value: impl Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(internal)
}

impl State {
    /// The address UPnP and NAT-PMP/PCP report: the one STUN learned
    /// behind another NAT, else the WAN address.
    pub fn public_address(&self) -> Option<std::net::Ipv4Addr> {
        self.stun_address.or(self.wan.network.map(|net| net.addr()))
    }

    /// The router's LAN address and prefix, which rules are checked against.
    pub fn lan_net(&self) -> Result<Ipv4Net, ApiError> {
        self.lan.network.ok_or_else(|| {
            ApiError::conflict(format!(
                "the LAN {} has no IPv4 address, so rules cannot be checked against it",
                self.lan.name
            ))
        })
    }

    /// Applies a change to the rules all or nothing: validated as a whole,
    /// checked against live mappings, written to the maps (undone on
    /// failure), then saved (maps undone if the save fails). Returns the
    /// rules as they were.
    pub fn change(
        &mut self,
        edit: impl FnOnce(&mut RuleSet) -> Result<(), RuleError>,
        durability: Durability,
    ) -> Result<RuleSet, ChangeError> {
        let mut next = self.rules.clone();
        edit(&mut next)?;
        next.validate(self.lan_net()?)?;
        check_quotas(&self.rules, &next, &self.config.upnp)?;
        // Every change, a schedule's edge too, judges the schedules afresh:
        // a rule added or edited outside its window is closed from the
        // first moment.
        next.refresh_schedules(&self.local_now());
        let claimed = self.newly_claimed(&next);
        self.check_router_ports(&claimed)?;
        // The daemon is the maps' only writer: the difference between the
        // rule sets is the difference between what the maps hold and what
        // they must hold, so only the changed entries are touched.
        let change = MapChange::for_rules(&self.rules, &next);
        self.writer.apply(&change).map_err(internal)?;
        // Checked once the new forwards are in: from then on the datapath
        // gives none of their ports to a new dynamic mapping, so a mapping
        // found now is one that was there before.
        if let Err(conflict) = self.check_mappings(&claimed) {
            let _ = self.writer.apply(&change.inverse());
            return Err(conflict);
        }
        let generation = self.generation + 1;
        match durability {
            Durability::Saved => {
                if let Err(error) =
                    self.store
                        .write(&self.config.rules_file, generation, &next.to_vec())
                {
                    let _ = self.writer.apply(&change.inverse());
                    return Err(ApiError::internal(format!("{error}; nothing was changed")).into());
                }
                self.store_dirty = false;
            }
            Durability::Soon => {
                self.store_dirty = true;
                self.store_changed.notify_one();
            }
            Durability::FromStore => {
                self.store.read_at(generation);
                self.store_dirty = false;
            }
            Durability::Unchanged => {}
        }
        self.generation = generation;
        self.ports = PortIndex::new(next.iter().map(|(_, rule)| rule));
        self.cut_closed_conversations(&next);
        self.schedules_changed.notify_one();
        Ok(std::mem::replace(&mut self.rules, next))
    }

    /// Now in the router's time zone, by the schedules' clock.
    pub fn local_now(&self) -> Zoned {
        self.clock.now().to_zoned(self.time_zone.clone())
    }

    /// A rule whose window just ended cuts its conversations: the datapath
    /// already lets no remote packet in, and its conversations are removed
    /// so that the table shows none and a remote coming back in the next
    /// window is logged as a new connection. (A remote's packets now reach
    /// the router's own stack, which answers a TCP segment with a reset.)
    fn cut_closed_conversations(&mut self, next: &RuleSet) {
        let closed: std::collections::HashSet<(u8, u16)> =
            next.iter()
                .filter(|(id, rule)| {
                    rule.enabled
                        && rule.off_schedule
                        && self.rules.iter().any(|(was, before)| {
                            was == *id && before.enabled && !before.off_schedule
                        })
                })
                .flat_map(|(_, rule)| {
                    rule.protocol.numbers().iter().flat_map(move |&proto| {
                        rule.external.ports().map(move |port| (proto, port))
                    })
                })
                .collect();
        if closed.is_empty() {
            return;
        }
        let cut = self.view.forget_forward_sessions(&closed);
        if cut > 0 {
            tracing::info!("schedule: cut {cut} conversation(s)");
        }
    }

    /// Whether a rule with a schedule is on it now, and until when.
    pub fn schedule_state(&self, rule: &ForwardRule) -> Option<crate::api::ScheduleState> {
        if rule.schedule.is_always() {
            return None;
        }
        let until = rule.schedule.switches_at(&self.local_now());
        Some(crate::api::ScheduleState {
            on: !rule.off_schedule,
            until: until
                .as_ref()
                .map(|when| when.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()),
            until_local: until.as_ref().map(schedule::short_local),
        })
    }

    /// The rules to save if a change has not been saved yet: a copy taken
    /// now, to be serialised and written off the lock.
    pub fn unsaved(&mut self) -> Option<StoreSnapshot> {
        if !std::mem::take(&mut self.store_dirty) {
            return None;
        }
        Some(StoreSnapshot {
            path: self.config.rules_file.clone(),
            generation: self.generation,
            rules: self.rules.to_vec(),
            store: self.store.clone(),
        })
    }

    /// Writes the rules if a change has not been saved yet.
    pub fn flush(&mut self) -> Result<(), store::StoreError> {
        match self.unsaved() {
            Some(snapshot) => snapshot.write().inspect_err(|_| self.store_dirty = true),
            None => Ok(()),
        }
    }

    /// A port a rule newly claims must not be the router's own: a
    /// listener's on the WAN address for any rule, and for the mappings
    /// clients make no port the router uses, none of its ephemeral range
    /// and none of `[nat] reserved_ports` either. Ports a rule already
    /// held are not checked again, so a renewal goes through.
    fn check_router_ports(&self, claimed: &[(&ForwardRule, u8, u16)]) -> Result<(), ChangeError> {
        if claimed.is_empty() {
            return Ok(());
        }
        let wan = self.wan.network.map(|net| net.addr());
        let ports = RouterPorts::read(wan, &self.config.nat.reserved_ports).map_err(|error| {
            ApiError::internal(format!(
                "the router's own sockets could not be read (sock_diag), so no port can be \
                 checked against them: {error}; nothing was changed"
            ))
        })?;
        for &(rule, proto, port) in claimed {
            if let Some(refusal) = ports.refusal(proto, port, rule.client().is_some()) {
                return Err(refusal.into_error(&rule.name, proto, port).into());
            }
        }
        Ok(())
    }

    /// The (rule, protocol, port) that `next`'s enabled rules hold and the
    /// rules in force do not, by protocol and port. Only a rule `next`
    /// added or changed can hold one, so the others are not walked: with
    /// 1000 UPnP mappings held, a request looks at its own rule's ports.
    fn newly_claimed<'a>(&self, next: &'a RuleSet) -> Vec<(&'a ForwardRule, u8, u16)> {
        let mut claimed: Vec<_> = next
            .differing(&self.rules)
            .into_iter()
            .filter(|(_, rule, _)| rule.enabled)
            .flat_map(|(_, rule, _)| {
                rule.protocol.numbers().iter().flat_map(move |&proto| {
                    rule.external.ports().map(move |port| (rule, proto, port))
                })
            })
            .filter(|(_, proto, port)| self.ports.holding(*proto, *port).is_none())
            .collect();
        claimed.sort_unstable_by_key(|(_, proto, port)| (*proto, *port));
        claimed
    }

    /// A port a rule newly claims must not be a live dynamic mapping's.
    fn check_mappings(&self, claimed: &[(&ForwardRule, u8, u16)]) -> Result<(), ChangeError> {
        for &(claimant, proto, port) in claimed {
            let Some((addr, internal_port)) = self
                .view
                .port_owner(proto, port)
                .map_err(internal)?
                .and_then(|owner| owner.endpoint())
            else {
                continue;
            };
            // A rule for the port its own target already holds adopts that
            // mapping: the endpoint keeps its port (RFC 4787 REQ-11), and
            // a client asking for the port it has is not sent elsewhere.
            let holder = SocketAddrV4::new(addr.into(), internal_port);
            if claimant.target_of(port) == Some(holder) {
                continue;
            }
            return Err(RuleError::InUseByMapping {
                name: claimant.name.clone(),
                protocol: protocol_name(proto),
                port,
                internal: holder,
            }
            .into());
        }
        Ok(())
    }

    pub fn rule_view(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        let (id, rule) = self
            .rules
            .get(name)
            .ok_or_else(|| rule_error(RuleError::NotFound(name.to_owned())))?;
        self.listed(id, rule).and_then(to_json)
    }

    /// A rule as `natctl list` shows it: with its id and counters.
    pub fn listed(&self, id: u32, rule: &ForwardRule) -> Result<ListedRule, ApiError> {
        let counters = self.view.rule_counters(id).map_err(internal)?;
        Ok(ListedRule {
            rule: rule.clone(),
            id,
            inbound: counters.inbound.into(),
            outbound: counters.outbound.into(),
            schedule_state: self.schedule_state(rule),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        config::UpnpSettings,
        rules::{ForwardRule, Lease, LeaseOrigin},
    };

    fn mapping(client: u8, port: u16, origin: LeaseOrigin) -> ForwardRule {
        let mut rule: ForwardRule = format!("udp/{port}=192.168.0.{client},name=m-{port}")
            .parse()
            .unwrap();
        rule.upnp = Some(Lease {
            origin,
            client: Ipv4Addr::new(192, 168, 0, client),
            description: String::new(),
            expires_at: None,
            nonce: None,
        });
        rule
    }

    fn with(rules: &RuleSet, more: impl IntoIterator<Item = ForwardRule>) -> RuleSet {
        let mut next = rules.clone();
        for rule in more {
            next.add(rule, None).unwrap();
        }
        next
    }

    #[test]
    fn quotas_bound_each_client_and_all_clients_for_every_protocol() {
        let settings = UpnpSettings {
            max_mappings_per_client: 2,
            max_mappings: 3,
            ..UpnpSettings::default()
        };
        let empty = RuleSet::default();
        let two = with(
            &empty,
            [
                mapping(12, 6000, LeaseOrigin::Upnp),
                mapping(12, 6001, LeaseOrigin::Natpmp),
            ],
        );
        check_quotas(&empty, &two, &settings).unwrap();
        // A third for the same host, whichever protocol asks.
        let third = with(&two, [mapping(12, 6002, LeaseOrigin::Pcp)]);
        let error = check_quotas(&two, &third, &settings).unwrap_err();
        assert!(
            matches!(error, RuleError::ClientQuota { limit: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("192.168.0.12"), "{error}");
        // Another host may, up to the total.
        let three = with(&two, [mapping(13, 6003, LeaseOrigin::Upnp)]);
        check_quotas(&two, &three, &settings).unwrap();
        let four = with(&three, [mapping(14, 6004, LeaseOrigin::Upnp)]);
        assert!(matches!(
            check_quotas(&three, &four, &settings),
            Err(RuleError::LeasedQuota { limit: 3 })
        ));
        // The admin's own rules never count.
        let admin = with(&three, ["tcp/22=192.168.0.12,name=ssh".parse().unwrap()]);
        check_quotas(&three, &admin, &settings).unwrap();
        // Over the quotas already (they were lowered): removals and
        // renewals still go through.
        let tight = UpnpSettings {
            max_mappings_per_client: 1,
            max_mappings: 1,
            ..settings
        };
        let mut fewer = three.clone();
        fewer.remove("m-6003").unwrap();
        check_quotas(&three, &fewer, &tight).unwrap();
        check_quotas(&three, &three, &tight).unwrap();
    }
}
