//! Aging policy: the timeouts a sweep applies, as the kernel takes them.
//! What they mean for an entry is decided once, in `nat_common::aging`,
//! for the sweep ([`crate::datapath::KernelSweep`], run by the daemon every
//! [`crate::config::sweep_interval`]) and for the NAT table alike.
//!
//! The datapath stamps `last_seen_ns` with `bpf_ktime_get_coarse_ns`
//! (CLOCK_MONOTONIC_COARSE) and never deletes anything itself.
use std::time::Duration;

use nat_common::SweepParams;

use crate::config::Timeouts;

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
        tcp_opening_ns: timeouts.tcp_opening().as_nanos() as u64,
        tcp_closing_ns: timeouts.tcp_closing().as_nanos() as u64,
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

    #[test]
    fn sweep_params_carry_every_timeout_in_nanoseconds() {
        let timeouts = Timeouts::default();
        let params = sweep_params(&timeouts, 42, 7);
        assert_eq!(params.tcp_established_ns, 7440 * 1_000_000_000);
        assert_eq!(params.tcp_opening_ns, 240 * 1_000_000_000);
        assert_eq!(params.tcp_closing_ns, 240 * 1_000_000_000);
        assert_eq!(params.udp_ns, 300 * 1_000_000_000);
        assert_eq!(params.icmp_ns, 60 * 1_000_000_000);
        assert_eq!((params.now_ns, params.generation), (42, 7));
    }
}
