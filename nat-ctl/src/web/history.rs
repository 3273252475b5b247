//! The latest inbound connections on forwarded ports, as the daemon's
//! connection log reports them: a bounded in-memory history, so that the
//! page can list them without reading the journal.
use std::{collections::VecDeque, net::Ipv4Addr, sync::Mutex};

use serde::Serialize;

/// Connections kept; older ones are forgotten.
pub const HISTORY_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionEntry {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub protocol: &'static str,
    pub remote: Ipv4Addr,
    pub remote_port: u16,
    pub external_port: u16,
    pub internal: Ipv4Addr,
    pub internal_port: u16,
    pub rule: String,
}

#[derive(Default)]
pub struct ConnectionHistory {
    entries: Mutex<VecDeque<ConnectionEntry>>,
}

impl ConnectionHistory {
    pub fn push(&self, entry: ConnectionEntry) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() == HISTORY_LEN {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<ConnectionEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_few() {
        let history = ConnectionHistory::default();
        for port in 0..HISTORY_LEN as u16 + 10 {
            history.push(ConnectionEntry {
                at: u64::from(port),
                protocol: "TCP",
                remote: Ipv4Addr::new(203, 0, 113, 2),
                remote_port: port,
                external_port: 2222,
                internal: Ipv4Addr::new(192, 168, 0, 12),
                internal_port: 22,
                rule: "ssh".into(),
            });
        }
        let recent = history.recent();
        assert_eq!(recent.len(), HISTORY_LEN);
        assert_eq!(recent[0].remote_port, HISTORY_LEN as u16 + 9);
        assert_eq!(recent.last().unwrap().remote_port, 10);
    }
}
