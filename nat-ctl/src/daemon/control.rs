//! The control API's handler: each request decoded by [`crate::api`] is
//! answered here, rule changes through the one transaction.
use std::sync::atomic::Ordering;

use super::{
    Daemon, Lifecycle,
    state::{ApiResult, ChangeError, Durability, internal, to_json},
};

/// What a rule change answers: a refusal keeps its rule error.
type ChangeResult = Result<serde_json::Value, ChangeError>;
use crate::{
    aging,
    api::{
        ApiError, Controller, Detached, FollowedLine, JsonLines, NatpmpSwitched, Reloaded, Removed,
        Request, RuleChange, TableFilter, UpnpSwitched,
    },
    config::DaemonConfig,
    datapath::pins,
    rules::ForwardRule,
    table,
};

impl Controller for Daemon {
    fn handle(&self, request: Request) -> ApiResult {
        self.answer(request).map_err(ApiError::from)
    }

    fn stream(&self, request: Request) -> Result<JsonLines, ApiError> {
        use futures::StreamExt as _;
        use tokio::sync::broadcast::error::RecvError;
        let Request::Connections { follow: true } = request else {
            return Err(ApiError::not_found(format!("{request:?} is not a stream")));
        };
        let line = |line: FollowedLine| serde_json::to_value(line).unwrap_or_default();
        let followed = self.connections.follow();
        let history = followed
            .history
            .into_iter()
            .map(move |record| line(FollowedLine::Connection(record)));
        let live = futures::stream::unfold(followed.live, move |mut live| async move {
            let next = match live.recv().await {
                Ok(record) => FollowedLine::Connection(record),
                Err(RecvError::Lagged(missed)) => FollowedLine::Missed { missed },
                Err(RecvError::Closed) => return None,
            };
            Some((line(next), live))
        });
        Ok(futures::stream::iter(history).chain(live).boxed())
    }
}

impl Daemon {
    /// Answers a request of the control API or of the admin page (which
    /// sends the same requests): a refused rule change keeps the rule
    /// error, so that the page can show it beside the field at fault.
    pub(super) fn answer(&self, request: Request) -> Result<serde_json::Value, ChangeError> {
        Ok(match request {
            Request::Status => self.status()?,
            Request::ListRules => self.list_rules()?,
            Request::AddRule(rule) => self.add_rule(rule)?,
            Request::ModifyRule { name, change } => self.modify_rule(&name, change)?,
            Request::RemoveRule(name) => self.remove_rule(&name)?,
            Request::SetEnabled { name, enabled } => self.set_enabled(&name, enabled)?,
            Request::Table(filter) => self.table(&filter)?,
            Request::Stats => self.stats()?,
            Request::Connections { follow: false } => to_json(self.connections.snapshot())?,
            Request::Connections { follow: true } => {
                return Err(ApiError::bad_request(
                    "the followed connection log is a stream: GET /v1/connections?follow=1 over HTTP",
                )
                .into());
            }
            Request::Reload => {
                let summary = self.reload()?;
                tracing::info!("API reload: {summary}");
                to_json(Reloaded { reloaded: summary })?
            }
            Request::Upnp(on) => self.switch_upnp(on)?,
            Request::Natpmp(on) => self.switch_natpmp(on)?,
            Request::Down => self.down()?,
        })
    }
}

impl Daemon {
    fn list_rules(&self) -> ApiResult {
        let state = self.lock();
        let views = state
            .rules
            .iter()
            .map(|(id, rule)| state.listed(id, rule))
            .collect::<Result<Vec<_>, _>>()?;
        to_json(views)
    }

    fn add_rule(&self, rule: ForwardRule) -> ChangeResult {
        let name = rule.name.clone();
        let mut state = self.lock();
        state.change(|rules| rules.add(rule, None).map(drop), Durability::Saved)?;
        let (_, added) = state.rules.get(&name).expect("just added");
        tracing::info!("rule added: {added}");
        Ok(state.rule_view(&name)?)
    }

    fn modify_rule(&self, name: &str, change: RuleChange) -> ChangeResult {
        if change.is_empty() {
            return Err(ApiError::bad_request(format!(
                "nothing to change in rule {name}: give at least one of --name, --proto, \
                 --external, --internal, --allow, --allow-any, --schedule"
            ))
            .into());
        }
        let new_name = change.name.clone().unwrap_or_else(|| name.to_owned());
        let mut state = self.lock();
        state.change(
            |rules| {
                change.apply_to(rules.get_mut(name)?);
                Ok(())
            },
            Durability::Saved,
        )?;
        let (_, modified) = state.rules.get(&new_name).expect("just modified");
        tracing::info!("rule {name} modified: {modified}");
        Ok(state.rule_view(&new_name)?)
    }

    fn remove_rule(&self, name: &str) -> ChangeResult {
        let mut state = self.lock();
        state.change(|rules| rules.remove(name).map(drop), Durability::Saved)?;
        tracing::info!("rule {name} removed");
        Ok(to_json(Removed {
            removed: name.to_owned(),
        })?)
    }

    fn set_enabled(&self, name: &str, enabled: bool) -> ChangeResult {
        let mut state = self.lock();
        state.change(
            |rules| {
                rules.get_mut(name)?.enabled = enabled;
                Ok(())
            },
            Durability::Saved,
        )?;
        tracing::info!(
            "rule {name} {}",
            if enabled { "enabled" } else { "disabled" }
        );
        Ok(state.rule_view(name)?)
    }

    fn table(&self, filter: &TableFilter) -> ApiResult {
        let state = self.lock();
        let rows = table::table_rows(
            &state.rules,
            &state.view,
            &state.config.timeouts,
            aging::datapath_now_ns(),
            super::unix_now(),
            filter,
        )
        .map_err(internal)?;
        to_json(rows)
    }

    fn stats(&self) -> ApiResult {
        let state = self.lock();
        to_json(
            table::stats(&state.rules, &state.view, state.last_sweep.clone()).map_err(internal)?,
        )
    }

    /// Removes the client mappings `which` picks, in one change saved at
    /// once; returns their names. Switching a protocol off closes what its
    /// clients opened.
    fn remove_client_mappings(
        &self,
        which: impl Fn(&ForwardRule) -> bool,
    ) -> Result<Vec<String>, ApiError> {
        let mut state = self.lock();
        let names: Vec<String> = state
            .rules
            .iter()
            .filter(|(_, rule)| which(rule))
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
        Ok(names)
    }

    /// `natctl upnp on|off`. Off means closed: the clients' mappings go
    /// with it.
    pub(super) fn switch_upnp(&self, on: bool) -> ApiResult {
        self.upnp_wanted.store(on, Ordering::SeqCst);
        let removed = if on {
            Vec::new()
        } else {
            self.remove_client_mappings(|rule| rule.upnp_lease().is_some())?
        };
        self.upnp_changed.notify_one();
        log_switch("UPnP", on, &removed);
        to_json(UpnpSwitched { upnp: on, removed })
    }

    /// `natctl natpmp on|off`, NAT-PMP and PCP together. Off means closed,
    /// as for UPnP: their mappings go with it.
    pub(super) fn switch_natpmp(&self, on: bool) -> ApiResult {
        use crate::rules::LeaseOrigin;
        self.natpmp_wanted.store(on, Ordering::SeqCst);
        let removed = if on {
            Vec::new()
        } else {
            self.remove_client_mappings(|rule| {
                rule.lease_of(LeaseOrigin::Natpmp).is_some()
                    || rule.lease_of(LeaseOrigin::Pcp).is_some()
            })?
        };
        self.natpmp_changed.notify_one();
        log_switch("NAT-PMP/PCP", on, &removed);
        to_json(NatpmpSwitched {
            natpmp: on,
            removed,
        })
    }

    fn down(&self) -> ApiResult {
        let state = self.lock();
        let dir = state.config.pin_dir.clone();
        // Before the datapath goes, so that no packet is forwarded
        // untranslated in between.
        crate::interfaces::stop_forwarding(&state.lan.name, &state.wan.name).map_err(internal)?;
        pins::teardown(&dir).map_err(internal)?;
        let _ = self.lifecycle.send(Lifecycle::Down);
        to_json(Detached {
            detached: true,
            pin_dir: dir,
        })
    }

    /// Re-reads the configuration file and the rule store (SIGHUP). Nothing
    /// changes unless both are valid and the rules pass the same
    /// transaction as any other change.
    pub(super) fn reload(&self) -> Result<String, ApiError> {
        let (config, _) = self.options.load_config().map_err(|error| {
            ApiError::bad_request(format!("configuration not reloaded: {error}"))
        })?;
        let mut state = self.lock();
        let lan = state.lan.network;
        let loaded = super::rules_from_store(&config.rules_file, lan, &state.rules)
            .map_err(|error| ApiError::bad_request(format!("rules not reloaded: {error:#}")))?;
        if config.pin_dir != state.config.pin_dir || config.socket != state.config.socket {
            tracing::warn!("a new pin_dir or socket takes effect when the daemon restarts");
        }
        state
            .change(
                |rules| {
                    *rules = loaded;
                    Ok(())
                },
                Durability::FromStore,
            )
            .map_err(|error| ApiError {
                message: format!("rules not reloaded: {}", error.api.message),
                ..error.api
            })?;
        let kept = (state.config.pin_dir.clone(), state.config.socket.clone());
        state.config = DaemonConfig {
            pin_dir: kept.0,
            socket: kept.1,
            ..config
        };
        let nat = super::nat_config(&state.config, &state.wan, &state.lan);
        state.writer.set_config(&nat).map_err(internal)?;
        self.upnp_wanted
            .store(state.config.upnp.enabled, Ordering::SeqCst);
        self.upnp_changed.notify_one();
        self.natpmp_wanted
            .store(state.config.natpmp.enabled, Ordering::SeqCst);
        self.natpmp_changed.notify_one();
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

    fn status(&self) -> ApiResult {
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
            "attach": {
                "lan": self.attach[0],
                "wan": self.attach[1],
            },
            "upnp": self.upnp_wanted.load(Ordering::SeqCst),
            "natpmp": self.natpmp_wanted.load(Ordering::SeqCst),
            "relay": self.relay.to_json(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
        }))
    }
}

fn log_switch(what: &str, on: bool, removed: &[String]) {
    tracing::info!(
        "{what} switched {}{}",
        if on { "on" } else { "off" },
        if removed.is_empty() {
            String::new()
        } else {
            format!("; removed {}", removed.join(", "))
        }
    );
}
