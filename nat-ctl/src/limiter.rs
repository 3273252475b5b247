//! The per-client rate limit of the NAT-PMP/PCP server and the IGD's
//! control requests: a token bucket per LAN host.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

/// Rate-limiter entries kept before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// A token bucket per LAN host.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<Ipv4Addr, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self {
            buckets: HashMap::new(),
        }
    }

    /// Whether `client` may make one more request now, at `rate` a second
    /// (twice that in a burst).
    pub fn admit(&mut self, client: Ipv4Addr, now: Instant, rate: u32) -> bool {
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

    #[test]
    fn a_flood_is_cut_to_the_burst_and_others_keep_their_own() {
        let (mut limiter, now) = (RateLimiter::new(), Instant::now());
        let one = Ipv4Addr::new(192, 168, 0, 12);
        let admitted = (0..100).filter(|_| limiter.admit(one, now, 10)).count();
        assert_eq!(admitted, 20);
        assert!(limiter.admit(Ipv4Addr::new(192, 168, 0, 13), now, 10));
        assert!(!limiter.admit(one, now + Duration::from_millis(50), 10));
        assert!(limiter.admit(one, now + Duration::from_millis(200), 10));
    }
}
