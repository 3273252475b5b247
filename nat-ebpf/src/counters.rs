//! Per-CPU counters, and the verdict: `settle` turns the outcome of a
//! direction's stages into the XDP action and counts why it stopped.
use nat_common::Counter;

use crate::{
    context::NatContext,
    maps::{COUNTERS, RULE_COUNTERS},
    parse::frame_len,
};

/// Per-CPU, so no atomics and no cache-line bouncing on the hot path.
#[inline(always)]
pub fn count(counter: Counter, bytes: usize) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, with
        // preemption disabled for the duration of the program.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += bytes as u64;
        }
    }
}

/// A packet through static rule `rule_id`, remote -> server (`inbound`) or
/// back.
#[inline(always)]
pub fn count_rule(rule_id: u32, inbound: bool, bytes: usize) {
    if let Some(value) = RULE_COUNTERS.get_ptr_mut(rule_id) {
        // SAFETY: as in `count`.
        unsafe {
            let value = if inbound {
                &raw mut (*value).inbound
            } else {
                &raw mut (*value).outbound
            };
            (*value).packets += 1;
            (*value).bytes += bytes as u64;
        }
    }
}

/// Turns a stage's outcome into the program's action (XDP or TC): `Ok` is a packet the fast
/// path finished (already counted); `Err` names why it stopped, which is
/// counted here and, unless it is a drop, hands the packet to the kernel.
#[inline(always)]
pub fn settle<C: NatContext>(ctx: &C, outcome: Result<u32, Counter>) -> u32 {
    match outcome {
        Ok(action) => action,
        Err(reason) => {
            count(reason, frame_len(ctx));
            if reason.drops() { C::DROP } else { C::PASS }
        }
    }
}
