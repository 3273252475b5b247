//! The aging decisions, written once for the kernel's sweep (`nat_sweep`)
//! and for user space (the NAT table's time left, tests): how long an entry
//! may stay idle, whether it has, and how long it has left.
//!
//! Times are nanoseconds of the datapath's clock (`bpf_ktime_get_coarse_ns`,
//! CLOCK_MONOTONIC_COARSE). Inlined always, as everything the datapath
//! calls, so that the kernel's sweep compiles to what it did when it had
//! its own copy.
use crate::{
    PROTO_ICMP, PROTO_TCP, SweepParams, TCP_STATE_CLOSED, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED,
    TCP_STATE_HALF_CLOSED_BY_ANSWERER, TCP_STATE_HALF_CLOSED_BY_OPENER,
};

impl SweepParams {
    /// How long a session may stay idle: by TCP state for TCP, by protocol
    /// otherwise (a protocol the datapath does not track gets the UDP
    /// timeout). A half-closed connection still carries data one way, so
    /// it keeps the established timeout until the second FIN.
    #[inline(always)]
    pub const fn session_timeout_ns(&self, proto: u8, tcp_state: u8) -> u64 {
        match proto {
            PROTO_TCP
                if matches!(
                    tcp_state,
                    TCP_STATE_ESTABLISHED
                        | TCP_STATE_HALF_CLOSED_BY_OPENER
                        | TCP_STATE_HALF_CLOSED_BY_ANSWERER
                ) =>
            {
                self.tcp_established_ns
            }
            // After both FINs, or an RST (RFC 7857 section 2.1: data may
            // still bring it back, so it is not removed at once).
            PROTO_TCP if matches!(tcp_state, TCP_STATE_CLOSING | TCP_STATE_CLOSED) => {
                self.tcp_closing_ns
            }
            // A SYN sent and no answer yet (or a session never seen to
            // open).
            PROTO_TCP => self.tcp_opening_ns,
            PROTO_ICMP => self.icmp_ns,
            _ => self.udp_ns,
        }
    }

    /// How long a mapping without any live session may stay idle: the
    /// shortest timeout a session of its protocol can have, so that it goes
    /// only once none of them can be alive. A mapping with a live session is
    /// kept whatever its own age.
    #[inline(always)]
    pub const fn binding_timeout_ns(&self, proto: u8) -> u64 {
        match proto {
            PROTO_TCP => {
                let transitory = if self.tcp_opening_ns < self.tcp_closing_ns {
                    self.tcp_opening_ns
                } else {
                    self.tcp_closing_ns
                };
                if transitory < self.tcp_established_ns {
                    transitory
                } else {
                    self.tcp_established_ns
                }
            }
            PROTO_ICMP => self.icmp_ns,
            _ => self.udp_ns,
        }
    }
}

/// The datapath rewrites a last-seen stamp at most this often, so that a
/// busy flow does not dirty its entry's cache line on every packet.
pub const TOUCH_GRANULARITY_NS: u64 = 250_000_000;

/// How much older than the entry's last packet its stamp may be: the touch
/// granularity, and two ticks of the coarse clock (10 ms each at HZ=100,
/// the coarsest kernel setting): the datapath reuses a CPU's reading within
/// a tick, and one taken just as a tick began may be a tick old already.
pub const STAMP_SLACK_NS: u64 = TOUCH_GRANULARITY_NS + 20_000_000;

/// Idle for strictly longer than `timeout_ns` however stale the stamp, so
/// that no entry expires before its timeout (RFC 4787 REQ-5, RFC 5382
/// REQ-5). A `last_seen_ns` after `now_ns` (a packet stamped by another CPU
/// after the sweep read the clock) is never idle.
#[inline(always)]
pub const fn idle_past(last_seen_ns: u64, now_ns: u64, timeout_ns: u64) -> bool {
    now_ns > last_seen_ns && now_ns - last_seen_ns > timeout_ns.saturating_add(STAMP_SLACK_NS)
}

/// Time left before the entry is [`idle_past`] `timeout_ns`; zero once it
/// is. A `last_seen_ns` after `now_ns` has the whole of it left.
#[inline(always)]
pub const fn remaining_ns(last_seen_ns: u64, now_ns: u64, timeout_ns: u64) -> u64 {
    let idle = now_ns.saturating_sub(last_seen_ns);
    timeout_ns
        .saturating_add(STAMP_SLACK_NS)
        .saturating_sub(idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_UDP, TCP_STATE_NONE, TCP_STATE_OPENING};

    const SEC: u64 = 1_000_000_000;

    /// The defaults of the configuration (RFC 5382 and 4787).
    fn params() -> SweepParams {
        SweepParams {
            tcp_established_ns: 7440 * SEC,
            tcp_opening_ns: 240 * SEC,
            tcp_closing_ns: 240 * SEC,
            udp_ns: 300 * SEC,
            icmp_ns: 60 * SEC,
            now_ns: 0,
            generation: 1,
            _pad: 0,
        }
    }

    #[test]
    fn session_timeout_by_protocol_and_state() {
        let p = params();
        assert_eq!(
            p.session_timeout_ns(PROTO_TCP, TCP_STATE_ESTABLISHED),
            7440 * SEC
        );
        for state in [
            TCP_STATE_NONE,
            TCP_STATE_OPENING,
            TCP_STATE_CLOSING,
            TCP_STATE_CLOSED,
        ] {
            assert_eq!(p.session_timeout_ns(PROTO_TCP, state), 240 * SEC);
        }
        for half_closed in [
            TCP_STATE_HALF_CLOSED_BY_OPENER,
            TCP_STATE_HALF_CLOSED_BY_ANSWERER,
        ] {
            assert_eq!(p.session_timeout_ns(PROTO_TCP, half_closed), 7440 * SEC);
        }
        assert_eq!(p.session_timeout_ns(PROTO_UDP, TCP_STATE_NONE), 300 * SEC);
        // tcp_state means nothing outside TCP.
        assert_eq!(
            p.session_timeout_ns(PROTO_UDP, TCP_STATE_ESTABLISHED),
            300 * SEC
        );
        assert_eq!(p.session_timeout_ns(PROTO_ICMP, TCP_STATE_NONE), 60 * SEC);
        assert_eq!(p.session_timeout_ns(47, TCP_STATE_NONE), p.udp_ns);
    }

    #[test]
    fn opening_and_closing_have_timeouts_of_their_own() {
        let p = SweepParams {
            tcp_opening_ns: 300 * SEC,
            tcp_closing_ns: 60 * SEC,
            ..params()
        };
        for (state, timeout) in [
            (TCP_STATE_NONE, 300),
            (TCP_STATE_OPENING, 300),
            (TCP_STATE_ESTABLISHED, 7440),
            (TCP_STATE_HALF_CLOSED_BY_OPENER, 7440),
            (TCP_STATE_CLOSING, 60),
            (TCP_STATE_CLOSED, 60),
        ] {
            assert_eq!(
                p.session_timeout_ns(PROTO_TCP, state),
                timeout * SEC,
                "{state}"
            );
        }
        assert_eq!(p.binding_timeout_ns(PROTO_TCP), 60 * SEC);
        let p = SweepParams {
            tcp_opening_ns: 30 * SEC,
            ..p
        };
        assert_eq!(p.binding_timeout_ns(PROTO_TCP), 30 * SEC);
    }

    #[test]
    fn binding_timeout_is_the_shortest_session_timeout() {
        let mut p = params();
        assert_eq!(p.binding_timeout_ns(PROTO_TCP), 240 * SEC);
        assert_eq!(p.binding_timeout_ns(PROTO_UDP), 300 * SEC);
        assert_eq!(p.binding_timeout_ns(PROTO_ICMP), 60 * SEC);
        assert_eq!(p.binding_timeout_ns(47), p.udp_ns);
        p.tcp_established_ns = 100 * SEC;
        assert_eq!(p.binding_timeout_ns(PROTO_TCP), 100 * SEC);
    }

    #[test]
    fn expiry_needs_strictly_more_idle_than_the_timeout_and_the_stamps_slack() {
        let timeout = 60 * SEC;
        let now = 1_000 * SEC;
        assert!(!idle_past(now, now, timeout));
        assert!(!idle_past(now - 60 * SEC, now, timeout));
        // The last packet may have come up to the slack after its stamp.
        assert!(!idle_past(now - 60 * SEC - STAMP_SLACK_NS, now, timeout));
        assert!(idle_past(now - 60 * SEC - STAMP_SLACK_NS - 1, now, timeout));
        assert!(idle_past(0, now, timeout));
        // Stamped after the sweep read the clock: never idle.
        assert!(!idle_past(now + 1, now, timeout));
        assert!(!idle_past(u64::MAX, now, timeout));
        assert!(!idle_past(u64::MAX, 0, 0));
        assert!(!idle_past(0, u64::MAX, u64::MAX));
    }

    #[test]
    fn remaining_saturates() {
        let timeout = 60 * SEC;
        let now = 1_000 * SEC;
        let whole = timeout + STAMP_SLACK_NS;
        assert_eq!(remaining_ns(now, now, timeout), whole);
        assert_eq!(remaining_ns(now - 20 * SEC, now, timeout), whole - 20 * SEC);
        assert_eq!(
            remaining_ns(now - 60 * SEC - STAMP_SLACK_NS, now, timeout),
            0
        );
        assert_eq!(remaining_ns(0, now, timeout), 0);
        assert_eq!(remaining_ns(now + 5 * SEC, now, timeout), whole);
    }

    #[test]
    fn port_slots_are_per_protocol() {
        use crate::{PORT_SLOTS, port_slot, slot_port};
        assert_eq!(port_slot(PROTO_TCP, 0), Some(0));
        assert_eq!(port_slot(PROTO_TCP, 65535), Some(65_535));
        assert_eq!(port_slot(PROTO_UDP, 0), Some(65_536));
        assert_eq!(port_slot(PROTO_ICMP, 4242), Some(2 * 65_536 + 4242));
        assert_eq!(port_slot(PROTO_ICMP, 65535), Some(PORT_SLOTS - 1));
        assert_eq!(port_slot(47, 1), None);
        for (proto, port) in [(PROTO_TCP, 0), (PROTO_UDP, 65535), (PROTO_ICMP, 4242)] {
            assert_eq!(
                slot_port(port_slot(proto, port).unwrap()),
                Some((proto, port))
            );
        }
        assert_eq!(slot_port(PORT_SLOTS), None);
    }
}
