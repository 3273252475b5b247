//! The connection log: the new inbound connections on forwarded ports the
//! datapath reports (once per conversation, never per packet), kept as a
//! bounded history and handed to followers as they come. `natctl
//! connections` reads it through the API; any other view of the daemon
//! (an admin page) can use the same [`ConnectionLog::snapshot`] and
//! [`ConnectionLog::follow`].
use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::broadcast;

use crate::api::ConnectionRecord;

/// How many connections the history keeps: the newest ones.
pub const HISTORY: usize = 1000;

/// How far a follower may fall behind before it misses connections (it is
/// told how many; see [`Followed`]).
const FOLLOWER_BACKLOG: usize = 1024;

pub struct ConnectionLog {
    history: Mutex<History>,
    live: broadcast::Sender<ConnectionRecord>,
}

struct History {
    records: VecDeque<ConnectionRecord>,
    capacity: usize,
    next_seq: u64,
}

/// What a follower gets: the history so far, then every new record on
/// `live`, none twice and none missed (unless it lags: `live` then says
/// how many it skipped).
pub struct Followed {
    pub history: Vec<ConnectionRecord>,
    pub live: broadcast::Receiver<ConnectionRecord>,
}

impl Default for ConnectionLog {
    fn default() -> Self {
        Self::with_capacity(HISTORY)
    }
}

impl ConnectionLog {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            history: Mutex::new(History {
                records: VecDeque::with_capacity(capacity),
                capacity,
                next_seq: 1,
            }),
            live: broadcast::channel(FOLLOWER_BACKLOG).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // Records are whole values: a panic elsewhere leaves none torn.
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a connection (its `seq` is given here) and tells the
    /// followers.
    pub fn record(&self, mut record: ConnectionRecord) {
        let mut history = self.lock();
        record.seq = history.next_seq;
        history.next_seq += 1;
        if history.records.len() == history.capacity {
            history.records.pop_front();
        }
        history.records.push_back(record.clone());
        // Sent under the lock, so that a follower's history and its live
        // records meet exactly. No follower: nothing to do.
        let _ = self.live.send(record);
    }

    /// The history, oldest first.
    pub fn snapshot(&self) -> Vec<ConnectionRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// The new records from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ConnectionRecord> {
        self.live.subscribe()
    }

    /// The history and the records after it, seamlessly.
    pub fn follow(&self) -> Followed {
        let history = self.lock();
        Followed {
            live: self.live.subscribe(),
            history: history.records.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(port: u16) -> ConnectionRecord {
        ConnectionRecord {
            seq: 0,
            time: "2026-12-07T09:00:00+01:00".into(),
            protocol: "TCP".into(),
            remote: format!("198.51.100.7:{port}").parse().unwrap(),
            external_port: 2222,
            rule: "ssh".into(),
            rule_id: 1,
            server: "192.168.0.12:22".parse().unwrap(),
        }
    }

    #[test]
    fn the_history_is_bounded_and_followers_miss_nothing_in_between() {
        let log = ConnectionLog::with_capacity(3);
        for port in 1..=4 {
            log.record(record(port));
        }
        let ports = |records: &[ConnectionRecord]| {
            records
                .iter()
                .map(|record| (record.seq, record.remote.port()))
                .collect::<Vec<_>>()
        };
        // The oldest went; sequence numbers keep counting.
        assert_eq!(ports(&log.snapshot()), [(2, 2), (3, 3), (4, 4)]);
        let mut followed = log.follow();
        log.record(record(5));
        assert_eq!(ports(&followed.history), [(2, 2), (3, 3), (4, 4)]);
        let next = followed.live.try_recv().unwrap();
        assert_eq!((next.seq, next.remote.port()), (5, 5));
        assert!(followed.live.try_recv().is_err());
        let mut later = log.subscribe();
        log.record(record(6));
        assert_eq!(later.try_recv().unwrap().seq, 6);
    }
}
