//! Binding creation: a new dynamic mapping for a LAN endpoint's first
//! outbound packet (endpoint-independent by default; under address- or
//! address-and-port-dependent mapping, its first toward each remote, RFC
//! 4787 section 4.1), on a port no static rule and no other mapping holds.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use nat_common::{Binding, Counter, LOW_PORTS_END, NatConfig, PROTO_ICMP};

use crate::{
    context::NatContext,
    counters::count,
    lookup::{
        External, binding_outbound, mapping_key, outbound_external, router_socket_takes,
        rule_holds_port, with_binding_key,
    },
    maps::{BINDINGS, BPF_NOEXIST},
    parse::Endpoint,
    ports,
};

const EEXIST: i32 = 17;

/// How many external ports a new mapping tries before giving up. Bounded so
/// that a nearly full range costs a fixed worst case per packet.
const PORT_PROBES: u32 = 16;

/// The external port of `internal` toward `remote`, from a static rule, an
/// existing mapping, or a new mapping.
#[inline(always)]
pub fn external_port_for(
    ctx: &impl NatContext,
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
    now: u64,
    frame_len: usize,
) -> Result<External, Counter> {
    if let Some(external) = outbound_external(config, proto, internal, remote, now) {
        return Ok(external);
    }
    let port = create_binding(ctx, config, proto, internal, remote, now)?;
    count(Counter::NewBinding, frame_len);
    Ok(External {
        port,
        rule_id: 0,
        new_mapping: true,
    })
}

/// `port`, or its neighbour inside `port_min..=port_max`, with the parity
/// of `own`: an RTP stream on an even port keeps its RTCP on the odd one
/// after it (RFC 4787 REQ-4).
#[inline(always)]
fn with_parity_of(own: u32, port: u32, port_min: u32, port_max: u32) -> u32 {
    if (port ^ own) & 1 == 0 {
        port
    } else if port < port_max {
        port + 1
    } else if port > port_min {
        port - 1
    } else {
        port
    }
}

/// Claims an external port for `internal` toward `remote`: its own port when
/// that is free and in the dynamic range (`port_min..=port_max`), or for a
/// system port (below 1024) when no socket of the router's own takes the
/// remote's packets on it; else a bounded number of pseudo-random probes
/// with the same parity, of `low_port_min..=low_port_max` for a system
/// port and of the dynamic range for any other (RFC 4787 REQ-3a). Claims
/// are atomic (`ports::claim`) and skip ports held by static rules. Every mapping owns
/// its port, so under address(-and-port)-dependent mapping a second remote
/// finds the endpoint's own port taken by the first and gets another: that
/// is what makes the NAT "symmetric" to a STUN client. A mapping on its
/// endpoint's own port is its port's slot alone; one on another port also
/// has an outbound half in `BINDINGS`, inserted with `BPF_NOEXIST` so that
/// of two CPUs mapping one endpoint (toward one remote) on two ports one
/// gives its port back. (Two CPUs mapping one endpoint, one on its own port
/// and one on another, can only meet in the instant the own port is freed
/// under them; the own-port mapping is then the one packets find.)
#[inline(always)]
fn create_binding(
    ctx: &impl NatContext,
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
    now: u64,
) -> Result<u16, Counter> {
    let outbound = mapping_key(config, proto, internal, remote);
    // A system port is mapped to a system port, any other to one above
    // them (RFC 4787 REQ-3a, RFC 5382 REQ-7a); ICMP ids are no ports.
    let low = proto != PROTO_ICMP && internal.port < LOW_PORTS_END && config.low_port_max != 0;
    let (port_min, port_max) = if low {
        (config.low_port_min, config.low_port_max)
    } else {
        (config.port_min, config.port_max)
    };
    let port_min = u32::from(port_min);
    let span = u32::from(port_max).saturating_sub(port_min) + 1;
    let own_port = u32::from(internal.port);
    // A system port is kept wherever `low_ports` lies (that range is where
    // it goes when its own is taken), unless a socket of the router's own
    // takes the remote's packets there: its services live on system
    // ports. Asked once, of this port only: a socket lookup in each probe
    // takes `nat_lan` past what the verifier explores.
    let keep_own = if low {
        own_port != 0
            && !router_socket_takes(
                ctx,
                proto,
                remote,
                Endpoint {
                    addr: config.wan_addr,
                    port: internal.port,
                },
            )
    } else {
        own_port >= port_min && own_port - port_min < span
    };
    for probe in 0..PORT_PROBES {
        let candidate = if probe == 0 && keep_own {
            own_port
        } else {
            // SAFETY: a helper without arguments.
            let random = port_min + unsafe { bpf_get_prandom_u32() } % span;
            with_parity_of(own_port, random, port_min, port_min + span - 1)
        };
        let port = candidate as u16;
        if rule_holds_port(config, proto, port) {
            continue;
        }
        if !ports::claim(port, &outbound, now) {
            // Another CPU may just have mapped this endpoint (toward this
            // remote) to its own port: use that mapping, not a second one.
            if candidate == own_port && ports::own_port_mapping(&outbound).is_some() {
                return Ok(port);
            }
            continue;
        }
        // A mapping that keeps its endpoint's port is all in its port's
        // slot: no outbound half to insert (`PortOwner::own_port_mapping_of`).
        if candidate == own_port {
            return Ok(port);
        }
        let outbound_value = Binding {
            addr: config.wan_addr,
            port,
            _pad: [0; 2],
            last_seen_ns: now,
        };
        // Counted on the endpoint's own port before it can be found, so
        // that no reader's `may_be_remapped` ever misses it.
        ports::count_remapped(proto, internal.port);
        let inserted = with_binding_key(outbound, |key| {
            BINDINGS.insert(key, outbound_value, BPF_NOEXIST)
        });
        if inserted.is_ok() {
            return Ok(port);
        }
        ports::uncount_remapped(proto, internal.port);
        ports::unclaim(proto, port);
        return match inserted {
            // Another CPU mapped the same endpoint (toward the same remote)
            // first: our port is given back and theirs used, so that one
            // key has one mapping.
            Err(err) if err == -EEXIST => {
                binding_outbound(config, proto, internal, remote, now).ok_or(Counter::DropTableFull)
            }
            _ => Err(Counter::DropTableFull),
        };
    }
    Err(Counter::DropPortExhausted)
}
