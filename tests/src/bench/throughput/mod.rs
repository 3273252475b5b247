//! Part 1: 64-byte UDP throughput, 1 flow and many, LAN -> WAN and WAN ->
//! LAN through a forwarding entry, for our XDP NAT (the real daemon), a
//! plain XDP forwarder and nftables, on identical topologies with the same
//! generator and sink. Repetitions alternate between the routers so that a
//! slow moment of this shared machine hits them all alike. [`report`]
//! judges its [`Output`].
pub mod report;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Spread,
    frames::FRAME_LEN,
    topo::{Direction, FORWARD_PORT, RouterKind, Sample, Topology},
};
use crate::plan::{LAN_HOST, ROUTER_WAN_IF};

/// What `natbench throughput` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Output {
    pub frame_bytes: usize,
    pub wire_bytes: usize,
    pub secs_per_sample: f64,
    pub reps: u32,
    pub warmup_secs: f64,
    pub generator: String,
    pub router_nat: String,
    pub router_nftables: String,
    pub router_forwarder: String,
    pub cases: Vec<CaseOutput>,
    /// Each router's own counters after the run, by router label, as the
    /// router reports them.
    pub router_counters_after: BTreeMap<String, Value>,
}

/// One direction and flow count: each router's figures, by label
/// (`xdp_nat`, `xdp_forwarder`, `nftables`, `no_router`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseOutput {
    pub direction: String,
    pub flows: u32,
    pub routers: BTreeMap<String, Samples>,
}

/// Mpps received and offered over repeated samples.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Samples {
    pub mpps: Spread,
    pub offered_mpps: Spread,
    pub sender_cpu_share: Spread,
    pub received: u64,
    pub sent: u64,
}

impl Samples {
    pub fn of(samples: &[Sample]) -> Self {
        let mpps: Vec<f64> = samples.iter().map(Sample::mpps).collect();
        let offered: Vec<f64> = samples.iter().map(Sample::offered_mpps).collect();
        let cpu: Vec<f64> = samples.iter().map(|s| s.sender_cpu_secs / s.secs).collect();
        Self {
            mpps: Spread::of(&mpps),
            offered_mpps: Spread::of(&offered),
            sender_cpu_share: Spread::of(&cpu),
            received: samples.iter().map(|s| s.received).sum(),
            sent: samples.iter().map(|s| s.sent).sum(),
        }
    }
}

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

pub fn run(options: &Options) -> Result<Output> {
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

    let mut router_counters_after = BTreeMap::new();
    for topology in &mut topologies {
        router_counters_after.insert(
            topology.kind.label().to_owned(),
            topology.router_evidence()?,
        );
    }

    let cases = cases
        .iter()
        .enumerate()
        .map(|(c, case)| CaseOutput {
            direction: case.direction.label().to_owned(),
            flows: case.flows,
            routers: topologies
                .iter()
                .enumerate()
                .map(|(t, topology)| {
                    (
                        topology.kind.label().to_owned(),
                        Samples::of(&samples[c][t]),
                    )
                })
                .collect(),
        })
        .collect();
    let forward = format!("udp {FORWARD_PORT} -> {LAN_HOST}:{FORWARD_PORT}");
    Ok(Output {
        frame_bytes: FRAME_LEN,
        wire_bytes: FRAME_LEN + 4,
        secs_per_sample: options.secs,
        reps: options.reps,
        warmup_secs: options.warmup_secs,
        generator: "bench_gen on the sending host's veth, BPF_PROG_TEST_RUN live frames, batch \
                    64, one sending thread"
            .to_owned(),
        router_nat: format!("natctl daemon (default configuration), forwarding rule {forward}"),
        router_nftables: format!(
            "nft masquerade on {ROUTER_WAN_IF} + dnat {forward}, xdp_pass on the router's veths"
        ),
        router_forwarder: "bench_fwd: parse, FIB lookup, TTL, MACs, EGRESS redirect; no NAT"
            .to_owned(),
        cases,
        router_counters_after,
    })
}
