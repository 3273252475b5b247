//! The connections of the daemon's HTTP servers (the control API, the IGD,
//! the metrics endpoint and the admin page), tracked so that a stop is
//! graceful: accepting stops, every request
//! in flight gets its whole response (hyper's graceful shutdown closes a
//! connection once the response in hand is written), and whatever is still
//! open at the deadline is cut.
use std::{
    collections::HashMap,
    error::Error as StdError,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{body::Incoming, server::conn::http1::Connection, service::HttpService};
use tokio::{sync::watch, task::JoinSet};

/// How long a stop waits for responses in flight.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

pub struct Connections {
    tasks: JoinSet<()>,
    stop: watch::Receiver<bool>,
}

impl Connections {
    /// Connections that finish up when `stop` turns true.
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        Self {
            tasks: JoinSet::new(),
            stop,
        }
    }

    /// Serves `connection` until it closes, `limit` passes (if given), or a
    /// stop lets it finish the response in hand.
    pub fn spawn<I, S>(&mut self, connection: Connection<I, S>, limit: Option<Duration>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: HttpService<Incoming> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        S::ResBody: Send + 'static,
        <S::ResBody as hyper::body::Body>::Data: Send,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.spawn_liftable(connection, limit, None);
    }

    /// As [`Connections::spawn`]; once `lifted` turns true (the connection
    /// answers with a stream that goes on, such as `natctl connections
    /// --follow`), `limit` no longer cuts it, and only a stop ends it.
    pub fn spawn_liftable<I, S>(
        &mut self,
        connection: Connection<I, S>,
        limit: Option<Duration>,
        lifted: Option<watch::Receiver<bool>>,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: HttpService<Incoming> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        S::ResBody: Send + 'static,
        <S::ResBody as hyper::body::Body>::Data: Send,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        // Finished connections are reaped as new ones come, so the set
        // holds only live ones.
        while self.tasks.try_join_next().is_some() {}
        let mut stop = self.stop.clone();
        self.tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let limit = async move {
                match limit {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
                if lifted.is_some_and(|lifted| *lifted.borrow()) {
                    std::future::pending::<()>().await;
                }
            };
            let mut limit = std::pin::pin!(limit);
            let mut stopping = *stop.borrow();
            if stopping {
                connection.as_mut().graceful_shutdown();
            }
            loop {
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = &mut limit => return,
                    changed = stop.changed(), if !stopping => {
                        if changed.is_err() || *stop.borrow() {
                            stopping = true;
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }

    /// Waits for every connection to finish, at most `deadline`; cuts the
    /// rest. Returns how many were cut.
    pub async fn drain(mut self, deadline: Duration) -> usize {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_ok() {
            return 0;
        }
        let cut = self.tasks.len();
        self.tasks.shutdown().await;
        cut
    }
}

/// The connections each LAN host holds, so that one host cannot take every
/// slot of a server.
#[derive(Clone)]
pub struct PerHost {
    counts: Arc<Mutex<HashMap<Ipv4Addr, usize>>>,
    limit: usize,
}

/// One of a host's connections; gives its place back when dropped.
pub struct HostSlot {
    hosts: PerHost,
    host: Ipv4Addr,
}

impl PerHost {
    /// At most `limit` connections per host.
    pub fn new(limit: usize) -> Self {
        Self {
            counts: Arc::default(),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more connection of `host`, if it has fewer than the
    /// limit.
    pub fn claim(&self, host: Ipv4Addr) -> Option<HostSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(host).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(HostSlot {
            hosts: self.clone(),
            host,
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let mut counts = self.hosts.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.host) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.host);
            }
        }
    }
}

/// The accept loop of the servers LAN hosts reach over TCP (the IGD's
/// HTTP, the admin page): at most `total` connections at once, `per_host`
/// of them from one host, and only from the hosts a server admits.
pub struct LanAcceptor {
    slots: Arc<tokio::sync::Semaphore>,
    hosts: PerHost,
    /// The server's name, for the log.
    what: &'static str,
}

/// A connection a [`LanAcceptor`] let in: its places (one of all, one of
/// its host's) are given back when `places` is dropped, which a server
/// does by keeping it in the connection's service.
pub struct Admitted {
    pub stream: tokio::net::TcpStream,
    pub caller: Ipv4Addr,
    pub places: (tokio::sync::OwnedSemaphorePermit, HostSlot),
}

impl LanAcceptor {
    pub fn new(total: usize, per_host: usize, what: &'static str) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(total)),
            hosts: PerHost::new(per_host),
            what,
        }
    }

    /// The next connection from a host `admits` accepts, with a place
    /// free; `None` once `shutdown` turns true.
    pub async fn next(
        &self,
        listener: &tokio::net::TcpListener,
        admits: impl Fn(Ipv4Addr) -> bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Admitted> {
        loop {
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit.ok()?,
                _ = shutdown.changed() => return None,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!("{} accept failed: {error}", self.what);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return None,
            };
            let caller = match peer {
                std::net::SocketAddr::V4(peer) if admits(*peer.ip()) => *peer.ip(),
                _ => {
                    tracing::debug!("{}: refused {peer}, not a LAN host", self.what);
                    continue;
                }
            };
            let Some(host_slot) = self.hosts.claim(caller) else {
                tracing::debug!(
                    "{}: refused {peer}, already {} connections",
                    self.what,
                    self.hosts.limit()
                );
                continue;
            };
            return Some(Admitted {
                stream,
                caller,
                places: (permit, host_slot),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_holds_a_few_connections_at_most() {
        let hosts = PerHost::new(8);
        let one = Ipv4Addr::new(192, 168, 0, 12);
        let other = Ipv4Addr::new(192, 168, 0, 13);
        let mut held: Vec<HostSlot> = (0..8)
            .map(|_| hosts.claim(one).expect("below the cap"))
            .collect();
        assert!(hosts.claim(one).is_none(), "over the cap");
        assert!(hosts.claim(other).is_some(), "another host has its own");
        held.pop();
        assert!(
            hosts.claim(one).is_some(),
            "a closed connection frees its place"
        );
        drop(held);
        assert!(
            hosts.counts.lock().unwrap().is_empty(),
            "every place given back"
        );
    }
}
