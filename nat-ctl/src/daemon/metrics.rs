//! The daemon as the metrics endpoint's source, and the count of client
//! requests it keeps for it.
use super::Daemon;
use crate::{
    metrics::{RuleFigures, Snapshot, Source},
    table,
};

impl Source for Daemon {
    fn snapshot(&self) -> Result<Snapshot, String> {
        let state = self.lock();
        let stats = table::stats(&state.rules, &state.view, state.last_sweep.clone())
            .map_err(|error| error.to_string())?;
        let mut rules_by_type = std::collections::BTreeMap::<String, u64>::new();
        let mut rules = Vec::new();
        for ((_, rule), figures) in state.rules.iter().zip(&stats.rules) {
            *rules_by_type.entry(rule.kind().to_owned()).or_default() += 1;
            rules.push(RuleFigures {
                name: figures.name.clone(),
                kind: rule.kind().to_owned(),
                inbound_packets: figures.inbound.packets,
                inbound_bytes: figures.inbound.bytes,
                outbound_packets: figures.outbound.packets,
                outbound_bytes: figures.outbound.bytes,
            });
        }
        Ok(Snapshot {
            counters: stats
                .counters
                .iter()
                .map(|(label, traffic)| (label.clone(), traffic.packets, traffic.bytes))
                .collect(),
            rules,
            rules_by_type: rules_by_type.into_iter().collect(),
            dynamic_mappings: stats.dynamic_mappings as u64,
            last_sweep_secs: stats.last_sweep.map(|sweep| sweep.elapsed.as_secs_f64()),
            uptime_secs: self.started.elapsed().as_secs(),
            relay: self
                .relay
                .figures()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
            requests: self
                .requests
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
                .map(|((protocol, action, result), count)| {
                    (
                        (*protocol).to_owned(),
                        action.clone(),
                        result.clone(),
                        *count,
                    )
                })
                .collect(),
        })
    }
}

impl Daemon {
    /// Counts one client request. `action` and `result` must come from a
    /// known, small set (never a client's own words): each pair is a time
    /// series.
    pub(super) fn count_request(&self, protocol: &'static str, action: String, result: String) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((protocol, action, result))
            .or_default() += 1;
    }
}
