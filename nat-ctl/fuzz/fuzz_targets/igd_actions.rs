//! Sequences of IGD actions from several LAN hosts, through `igd` over
//! rules in memory (`upnp::memory`), beside the parser targets: each
//! request is checked against secure mode's promise (no host's request
//! changes another host's mappings) and the rule model's (no conflicts).
//!
//! Input layout: the first byte picks IGDv1 (bit 0) or IGDv2; then
//! `memory::REQUEST_BYTES` bytes per request, as `memory::decode_script`
//! reads them (caller, action, ports, flags, lease, internal port).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nat_ctl::upnp::{
    IgdVersion,
    memory::{self, MemoryGateway},
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, script)) = data.split_first() else {
        return;
    };
    let igd = if flags & 1 != 0 {
        IgdVersion::V1
    } else {
        IgdVersion::V2
    };
    let mut gateway = MemoryGateway {
        now: 1_000_000,
        ..MemoryGateway::default()
    };
    if let Err(broken) = memory::run_script(&mut gateway, igd, &memory::decode_script(script)) {
        panic!("{broken}");
    }
});
