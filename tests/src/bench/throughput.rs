//! Part 1: 64-byte UDP throughput, 1 flow and many, LAN -> WAN and WAN ->
//! LAN through a forwarding entry, for our XDP NAT (the real daemon), a
//! plain XDP forwarder and nftables, on identical topologies with the same
//! generator and sink. Repetitions alternate between the routers so that a
//! slow moment of this shared machine hits them all alike.
use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{
    Spread,
    frames::FRAME_LEN,
    topo::{Direction, RouterKind, Sample, Topology},
};

#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds of sending per measurement.
    pub secs: f64,
    /// Measurements per router and case.
    pub reps: u32,
    /// The flow counts to measure (e.g. 1 and 10000).
    pub flows: Vec<u32>,
    /// Seconds of sending per router and case before measuring: creates
    /// the mappings and conntrack entries, warms the caches.
    pub warmup_secs: f64,
    /// Which routers, by label (`xdp_nat`, `xdp_forwarder`, `nftables`,
    /// `no_router`); empty: all.
    pub routers: Vec<String>,
}

struct Case {
    direction: Direction,
    flows: u32,
}

pub fn run(options: &Options) -> Result<Value> {
    let kinds = [
        RouterKind::NatDaemon,
        RouterKind::Forwarder,
        RouterKind::Nftables,
        RouterKind::Direct,
    ];
    let mut topologies = Vec::new();
    for kind in kinds {
        if options.routers.is_empty() || options.routers.iter().any(|r| r == kind.label()) {
            topologies.push(Topology::build(kind)?);
        }
    }
    let mut cases = Vec::new();
    for direction in [Direction::LanToWan, Direction::WanToLan] {
        for &flows in &options.flows {
            cases.push(Case { direction, flows });
        }
    }

    // Warm-up: every router must carry something, or the set-up is wrong
    // and the figures would be meaningless.
    for case in &cases {
        for topology in &mut topologies {
            let template = topology.flows_template(case.direction, case.flows);
            let sample = topology.measure(case.direction, &template, options.warmup_secs)?;
            if sample.received == 0 {
                bail!(
                    "{} received nothing {} with {} flow(s) ({} sent): the set-up is broken",
                    topology.kind.label(),
                    case.direction.label(),
                    case.flows,
                    sample.sent
                );
            }
        }
    }

    // samples[case][router]
    let mut samples: Vec<Vec<Vec<Sample>>> = cases
        .iter()
        .map(|_| topologies.iter().map(|_| Vec::new()).collect())
        .collect();
    for rep in 0..options.reps as usize {
        for (c, case) in cases.iter().enumerate() {
            // Rotate which router goes first.
            for i in 0..topologies.len() {
                let t = (i + rep) % topologies.len();
                let topology = &mut topologies[t];
                let template = topology.flows_template(case.direction, case.flows);
                let sample = topology.measure(case.direction, &template, options.secs)?;
                samples[c][t].push(sample);
            }
        }
    }

    let mut evidence = serde_json::Map::new();
    for topology in &mut topologies {
        evidence.insert(
            topology.kind.label().to_owned(),
            topology.router_evidence()?,
        );
    }

    let cases_json: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(c, case)| {
            let mut routers = serde_json::Map::new();
            for (t, topology) in topologies.iter().enumerate() {
                routers.insert(
                    topology.kind.label().to_owned(),
                    samples_json(&samples[c][t]),
                );
            }
            json!({
                "direction": case.direction.label(),
                "flows": case.flows,
                "routers": routers,
            })
        })
        .collect();
    Ok(json!({
        "frame_bytes": FRAME_LEN,
        "wire_bytes": FRAME_LEN + 4,
        "secs_per_sample": options.secs,
        "reps": options.reps,
        "warmup_secs": options.warmup_secs,
        "generator": "bench_gen on the sending host's veth, BPF_PROG_TEST_RUN live frames, batch 64, one sending thread",
        "router_nat": "natctl daemon (default configuration), forwarding rule udp 5001 -> 192.168.0.12:5001",
        "router_nftables": "nft masquerade on wan0 + dnat udp 5001 -> 192.168.0.12:5001, xdp_pass on the router's veths",
        "router_forwarder": "bench_fwd: parse, FIB lookup, TTL, MACs, EGRESS redirect; no NAT",
        "cases": cases_json,
        "router_counters_after": evidence,
    }))
}

/// Mpps received and offered over repeated samples.
pub fn samples_json(samples: &[Sample]) -> Value {
    let mpps: Vec<f64> = samples.iter().map(Sample::mpps).collect();
    let offered: Vec<f64> = samples.iter().map(Sample::offered_mpps).collect();
    let cpu: Vec<f64> = samples.iter().map(|s| s.sender_cpu_secs / s.secs).collect();
    json!({
        "mpps": Spread::of(&mpps).json(),
        "offered_mpps": Spread::of(&offered).json(),
        "sender_cpu_share": Spread::of(&cpu).json(),
        "received": samples.iter().map(|s| s.received).sum::<u64>(),
        "sent": samples.iter().map(|s| s.sent).sum::<u64>(),
    })
}
