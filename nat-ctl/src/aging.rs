//! Aging policy: which timeouts a sweep applies, and how long an entry has
//! left. The sweep itself runs in the kernel ([`crate::datapath::KernelSweep`]);
//! the daemon runs it every [`crate::config::sweep_interval`].
//!
//! The datapath stamps `last_seen_ns` with `bpf_ktime_get_coarse_ns`
//! (CLOCK_MONOTONIC_COARSE) and never deletes anything itself.
use std::time::Duration;

use nat_common::{PROTO_ICMP, PROTO_TCP, SweepParams, TCP_STATE_ESTABLISHED};

use crate::config::Timeouts;

/// How long a session may stay idle: by TCP state for TCP, by protocol
/// otherwise (a protocol the datapath does not track gets the UDP timeout).
pub fn session_timeout(timeouts: &Timeouts, proto: u8, tcp_state: u8) -> Duration {
    match proto {
        PROTO_TCP if tcp_state == TCP_STATE_ESTABLISHED => timeouts.tcp_established,
        PROTO_TCP => timeouts.tcp_transitory,
        PROTO_ICMP => timeouts.icmp,
        _ => timeouts.udp,
    }
}

/// How long a mapping without any live session may stay idle: the shortest
/// timeout a session of its protocol can have. A mapping with a live session
/// is kept whatever its own age.
pub fn binding_timeout(timeouts: &Timeouts, proto: u8) -> Duration {
    match proto {
        PROTO_TCP => timeouts.tcp_transitory.min(timeouts.tcp_established),
        PROTO_ICMP => timeouts.icmp,
        _ => timeouts.udp,
    }
}

fn idle(last_seen_ns: u64, now_ns: u64) -> Option<Duration> {
    now_ns.checked_sub(last_seen_ns).map(Duration::from_nanos)
}

/// Idle for strictly longer than `timeout`. A `last_seen_ns` after `now_ns`
/// (a packet stamped after the sweep read the clock) is never expired.
pub fn is_expired(last_seen_ns: u64, now_ns: u64, timeout: Duration) -> bool {
    idle(last_seen_ns, now_ns).is_some_and(|idle| idle > timeout)
}

/// Time left before the entry expires, zero once it has.
pub fn remaining(last_seen_ns: u64, now_ns: u64, timeout: Duration) -> Duration {
    timeout.saturating_sub(idle(last_seen_ns, now_ns).unwrap_or_default())
}

/// The datapath's clock in nanoseconds: `bpf_ktime_get_coarse_ns` reads
/// CLOCK_MONOTONIC_COARSE.
pub fn datapath_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|now| Duration::from(now).as_nanos() as u64)
        .unwrap_or_default()
}

/// The parameters of one kernel sweep; `now_ns` 0 is the kernel's clock.
pub fn sweep_params(timeouts: &Timeouts, now_ns: u64, generation: u32) -> SweepParams {
    SweepParams {
        tcp_established_ns: timeouts.tcp_established.as_nanos() as u64,
        tcp_transitory_ns: timeouts.tcp_transitory.as_nanos() as u64,
        udp_ns: timeouts.udp.as_nanos() as u64,
        icmp_ns: timeouts.icmp.as_nanos() as u64,
        now_ns,
        generation,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nat_common::{
        PROTO_UDP, TCP_STATE_CLOSED, TCP_STATE_CLOSING, TCP_STATE_NONE, TCP_STATE_OPENING,
    };

    const SEC: u64 = 1_000_000_000;

    fn timeouts() -> Timeouts {
        Timeouts::default()
    }

    #[test]
    fn session_timeout_by_protocol_and_state() {
        let t = timeouts();
        assert_eq!(
            session_timeout(&t, PROTO_TCP, TCP_STATE_ESTABLISHED),
            Duration::from_secs(7440)
        );
        for state in [
            TCP_STATE_NONE,
            TCP_STATE_OPENING,
            TCP_STATE_CLOSING,
            TCP_STATE_CLOSED,
        ] {
            assert_eq!(
                session_timeout(&t, PROTO_TCP, state),
                Duration::from_secs(240)
            );
        }
        assert_eq!(
            session_timeout(&t, PROTO_UDP, TCP_STATE_NONE),
            Duration::from_secs(300)
        );
        // tcp_state means nothing outside TCP.
        assert_eq!(
            session_timeout(&t, PROTO_UDP, TCP_STATE_ESTABLISHED),
            Duration::from_secs(300)
        );
        assert_eq!(
            session_timeout(&t, PROTO_ICMP, TCP_STATE_NONE),
            Duration::from_secs(60)
        );
        assert_eq!(session_timeout(&t, 47, TCP_STATE_NONE), t.udp);
    }

    #[test]
    fn binding_timeout_is_the_shortest_session_timeout() {
        let mut t = timeouts();
        assert_eq!(binding_timeout(&t, PROTO_TCP), Duration::from_secs(240));
        assert_eq!(binding_timeout(&t, PROTO_UDP), Duration::from_secs(300));
        assert_eq!(binding_timeout(&t, PROTO_ICMP), Duration::from_secs(60));
        assert_eq!(binding_timeout(&t, 47), t.udp);
        t.tcp_established = Duration::from_secs(100);
        assert_eq!(binding_timeout(&t, PROTO_TCP), Duration::from_secs(100));
    }

    #[test]
    fn expiry_needs_strictly_more_idle_than_the_timeout() {
        let timeout = Duration::from_secs(60);
        let now = 1_000 * SEC;
        assert!(!is_expired(now, now, timeout));
        assert!(!is_expired(now - 60 * SEC, now, timeout));
        assert!(is_expired(now - 60 * SEC - 1, now, timeout));
        assert!(is_expired(0, now, timeout));
        // Stamped after the sweep read the clock: never expired.
        assert!(!is_expired(now + 1, now, timeout));
        assert!(!is_expired(u64::MAX, now, timeout));
        assert!(!is_expired(u64::MAX, 0, Duration::ZERO));
    }

    #[test]
    fn remaining_saturates() {
        let timeout = Duration::from_secs(60);
        let now = 1_000 * SEC;
        assert_eq!(remaining(now, now, timeout), timeout);
        assert_eq!(
            remaining(now - 20 * SEC, now, timeout),
            Duration::from_secs(40)
        );
        assert_eq!(remaining(now - 60 * SEC, now, timeout), Duration::ZERO);
        assert_eq!(remaining(0, now, timeout), Duration::ZERO);
        assert_eq!(remaining(now + 5 * SEC, now, timeout), timeout);
    }
}
