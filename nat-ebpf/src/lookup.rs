//! Table lookups: configuration, static forwards and their allowed remotes,
//! and dynamic bindings (created here on the first outbound packet).
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    maps::lpm_trie::Key,
};
use nat_common::{
    AllowedRemote, Binding, Counter, EndpointKey, FORWARD_RESTRICTED, Forward, NatConfig,
};

use crate::{
    counters::count,
    maps::{ALLOWED_REMOTES, BINDINGS, CONFIG, FORWARDS},
    parse::Endpoint,
};

pub const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// How many external ports a new mapping tries before giving up. Bounded so
/// that a nearly full range costs a fixed worst case per packet.
const PORT_PROBES: u32 = 16;

/// Last-seen times are rewritten at most this often: aging works in seconds,
/// and not dirtying the entry on every packet keeps its cache line shared.
pub const TOUCH_GRANULARITY_NS: u64 = 250_000_000;

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    CONFIG.get(0).filter(|config| config.wan_addr != [0; 4])
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn in_prefix(addr: [u8; 4], net: [u8; 4], prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix_len.min(32)));
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(net) & mask
}

#[inline(always)]
pub fn forward_inbound(proto: u8, external_port: u16) -> Option<Forward> {
    // SAFETY: only the controller writes FORWARDS; a concurrent update can at
    // worst hand this packet the old or the new rule.
    unsafe {
        FORWARDS
            .get(EndpointKey::inbound(proto, external_port))
            .copied()
    }
}

/// The static rule whose internal server is `internal`: its `port` is the
/// external port.
#[inline(always)]
pub fn forward_outbound(proto: u8, internal: Endpoint) -> Option<Forward> {
    let key = EndpointKey::outbound(proto, internal.addr, internal.port);
    // SAFETY: as for `forward_inbound`.
    unsafe { FORWARDS.get(key).copied() }
}

/// Whether `remote` may use the forward: any remote, unless the rule lists
/// the prefixes allowed in.
#[inline(always)]
pub fn remote_allowed(forward: &Forward, remote: [u8; 4]) -> bool {
    if forward.flags & FORWARD_RESTRICTED == 0 {
        return true;
    }
    let key = Key::new(64, AllowedRemote::new(forward.rule_id, remote));
    ALLOWED_REMOTES.get(key).is_some()
}

#[inline(always)]
fn touch(binding: *mut Binding, now: u64) {
    // SAFETY: a pointer returned by a map lookup; a torn last-seen time is
    // harmless (aging re-reads it).
    unsafe {
        if now.wrapping_sub((*binding).last_seen_ns) > TOUCH_GRANULARITY_NS {
            (*binding).last_seen_ns = now;
        }
    }
}

/// The internal endpoint behind a dynamic mapping's external port.
#[inline(always)]
pub fn binding_inbound(proto: u8, external_port: u16, now: u64) -> Option<Endpoint> {
    let binding = BINDINGS.get_ptr_mut(EndpointKey::inbound(proto, external_port))?;
    touch(binding, now);
    // SAFETY: a pointer returned by a map lookup.
    let (addr, port) = unsafe { ((*binding).addr, (*binding).port) };
    Some(Endpoint { addr, port })
}

/// The external port of `internal`'s existing dynamic mapping.
#[inline(always)]
pub fn binding_outbound(proto: u8, internal: Endpoint, now: u64) -> Option<u16> {
    let key = EndpointKey::outbound(proto, internal.addr, internal.port);
    let binding = BINDINGS.get_ptr_mut(key)?;
    touch(binding, now);
    // SAFETY: a pointer returned by a map lookup.
    Some(unsafe { (*binding).port })
}

/// Where a LAN endpoint appears outside.
#[derive(Clone, Copy)]
pub struct External {
    pub port: u16,
    /// The static rule that fixes the port; 0 for a dynamic mapping.
    pub rule_id: u32,
}

/// The external port of `internal`, from a static rule, an existing mapping,
/// or a new endpoint-independent mapping.
#[inline(always)]
pub fn external_port_for(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    now: u64,
    frame_len: usize,
) -> Result<External, Counter> {
    if let Some(forward) = forward_outbound(proto, internal) {
        return Ok(External {
            port: forward.port,
            rule_id: forward.rule_id,
        });
    }
    if let Some(port) = binding_outbound(proto, internal, now) {
        return Ok(External { port, rule_id: 0 });
    }
    let port = create_binding(config, proto, internal, now)?;
    count(Counter::NewBinding, frame_len);
    Ok(External { port, rule_id: 0 })
}

/// Claims an external port for `internal`: its own port when that is in the
/// dynamic range and free, else a bounded number of pseudo-random probes.
/// Claims are atomic (`BPF_NOEXIST`) and skip ports held by static rules.
#[inline(always)]
fn create_binding(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    now: u64,
) -> Result<u16, Counter> {
    let port_min = u32::from(config.port_min);
    let span = u32::from(config.port_max).saturating_sub(port_min) + 1;
    let own_port = u32::from(internal.port);
    let keep_own = own_port >= port_min && own_port - port_min < span;
    let inbound_value = Binding {
        addr: internal.addr,
        port: internal.port,
        _pad: [0; 2],
        last_seen_ns: now,
    };
    for probe in 0..PORT_PROBES {
        let candidate = if probe == 0 && keep_own {
            own_port
        } else {
            // SAFETY: a helper without arguments.
            port_min + unsafe { bpf_get_prandom_u32() } % span
        };
        let port = candidate as u16;
        let inbound = EndpointKey::inbound(proto, port);
        if forward_inbound(proto, port).is_some() {
            continue;
        }
        match BINDINGS.insert(inbound, inbound_value, BPF_NOEXIST) {
            Ok(()) => {}
            Err(err) if err == -EEXIST => continue,
            Err(_) => return Err(Counter::DropTableFull),
        }
        let outbound = EndpointKey::outbound(proto, internal.addr, internal.port);
        let outbound_value = Binding {
            addr: config.wan_addr,
            port,
            _pad: [0; 2],
            last_seen_ns: now,
        };
        if BINDINGS
            .insert(outbound, outbound_value, BPF_NOEXIST)
            .is_ok()
        {
            return Ok(port);
        }
        // Another CPU mapped the same endpoint first: give our port back
        // and use theirs, so the mapping stays endpoint-independent.
        let _ = BINDINGS.remove(inbound);
        return binding_outbound(proto, internal, now).ok_or(Counter::DropTableFull);
    }
    Err(Counter::DropPortExhausted)
}
