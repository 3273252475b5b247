//! The per-client rate limit of the NAT-PMP/PCP server.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

/// Rate-limiter entries kept before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A token bucket per LAN host.
#[derive(Debug)]
pub(super) struct RateLimiter {
    buckets: HashMap<Ipv4Addr, (f64, Instant)>,
}

impl RateLimiter {
    pub(super) fn new() -> Self {
        Self {
            buckets: HashMap::new(),
        }
    }

    pub(super) fn admit(&mut self, client: Ipv4Addr, now: Instant, rate: u32) -> bool {
        let capacity = f64::from(rate) * 2.0;
        if self.buckets.len() >= MAX_TRACKED_CLIENTS {
            self.buckets.retain(|_, (_, seen)| {
                now.saturating_duration_since(*seen) < Duration::from_secs(10)
            });
        }
        let (tokens, seen) = self.buckets.entry(client).or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(*seen).as_secs_f64();
        *tokens = (*tokens + elapsed * f64::from(rate)).min(capacity);
        *seen = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::natpmp::{
        server::Server,
        testing::{CLIENT, OTHER},
    };

    #[test]
    fn the_rate_limit_drops_a_flood() {
        let mut server = Server::new(Instant::now());
        let now = Instant::now();
        let admitted = (0..100).filter(|_| server.admit(CLIENT, now, 10)).count();
        assert_eq!(admitted, 20);
        assert!(server.admit(OTHER, now, 10));
        assert!(server.admit(CLIENT, now + Duration::from_millis(200), 10));
    }
}
