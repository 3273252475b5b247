//! The daemon's state and the rule transaction: every rule change, from
//! the CLI, UPnP, lease expiry or a reload, goes through [`State::change`],
//! which validates, checks live mappings, applies the difference to the
//! maps and saves, all or nothing.
use std::{net::SocketAddrV4, sync::Arc, time::Duration};

use ipnet::Ipv4Net;
use nat_common::EndpointKey;
use serde::Serialize;

use super::Nic;
use crate::{
    api::{ApiError, ListedRule},
    config::DaemonConfig,
    datapath::{KernelSweep, MapChange, MapView, MapWriter, SweepReport},
    rules::{ForwardRule, RuleError, RuleSet, protocol_name},
    store,
};

pub(super) struct State {
    /// Rule changes not yet in the store ([`Durability::Soon`]).
    pub store_dirty: bool,
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

pub(super) fn rule_error(error: RuleError) -> ApiError {
    match error {
        RuleError::NotFound(_) => ApiError::not_found(error.to_string()),
        RuleError::DuplicateName(_)
        | RuleError::Overlap { .. }
        | RuleError::SharedTarget { .. }
        | RuleError::InUseByMapping { .. } => ApiError::conflict(error.to_string()),
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
        // The daemon is the maps' only writer: the difference between the
        // rule sets is the difference between what the maps hold and what
        // they must hold, so only the changed entries are touched.
        let change = MapChange::for_rules(&self.rules, &next);
        self.writer.apply(&change).map_err(internal)?;
        // Checked once the new forwards are in: from then on the datapath
        // gives none of their ports to a new dynamic mapping, so a mapping
        // found now is one that was there before.
        if let Err(conflict) = self.check_mappings(&next) {
            let _ = self.writer.apply(&change.inverse());
            return Err(conflict);
        }
        match durability {
            Durability::Saved => {
                if let Err(error) = store::save_rules(&self.config.rules_file, &next.to_vec()) {
                    let _ = self.writer.apply(&change.inverse());
                    return Err(ApiError::internal(format!("{error}; nothing was changed")).into());
                }
                self.store_dirty = false;
            }
            Durability::Soon => {
                self.store_dirty = true;
                self.store_changed.notify_one();
            }
            Durability::FromStore => self.store_dirty = false,
        }
        Ok(std::mem::replace(&mut self.rules, next))
    }

    /// Writes the rules if a change has not been saved yet.
    pub fn flush(&mut self) -> Result<(), store::StoreError> {
        if self.store_dirty {
            store::save_rules(&self.config.rules_file, &self.rules.to_vec())?;
            self.store_dirty = false;
        }
        Ok(())
    }

    /// A port a rule newly claims must not be a live dynamic mapping's.
    fn check_mappings(&self, next: &RuleSet) -> Result<(), ChangeError> {
        let held = self.rules.claimed_ports();
        let mut claimed: Vec<_> = next.claimed_ports().difference(&held).copied().collect();
        claimed.sort_unstable();
        for (proto, port) in claimed {
            let Some(binding) = self
                .view
                .binding(&EndpointKey::inbound(proto, port))
                .map_err(internal)?
            else {
                continue;
            };
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
                internal: SocketAddrV4::new(binding.addr.into(), binding.port),
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
        })
    }
}
