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
    placement::Placement,
    progs::{Attached, RunTimeStats},
    topo::{Direction, FORWARD_PORT, RouterKind, Sample, Topology, flowtable_support},
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
    /// Where the work ran ([`super::placement`]).
    #[serde(default)]
    pub placement: String,
    /// Whether the kernel's NAT also ran with a flowtable, or why not.
    #[serde(default)]
    pub flowtable: String,
    /// The programs attached to each router's interfaces, by router label,
    /// with their sizes.
    #[serde(default)]
    pub programs: BTreeMap<String, Vec<Attached>>,
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
    /// The router's own programs' ns per packet on its receiving
    /// interface, from the kernel's run-time statistics (`run_time_ns /
    /// run_cnt`, all of that interface's programs); none for a router
    /// without programs there.
    #[serde(default)]
    pub router_bpf_ns: Option<Spread>,
    /// The same for the receiving sink's program.
    #[serde(default)]
    pub sink_bpf_ns: Option<Spread>,
    /// CPU time of the router's NAPI kthread per packet the sink received:
    /// the router's whole cost per packet on its core, however much of the
    /// core it was given (threaded placement only).
    #[serde(default)]
    pub router_cpu_ns: Option<Spread>,
    /// The share of its core that kthread had over the sample.
    #[serde(default)]
    pub router_cpu_share: Option<Spread>,
    pub received: u64,
    pub sent: u64,
}

impl Samples {
    pub fn of(samples: &[Sample]) -> Self {
        let mpps: Vec<f64> = samples.iter().map(Sample::mpps).collect();
        let offered: Vec<f64> = samples.iter().map(Sample::offered_mpps).collect();
        let cpu: Vec<f64> = samples.iter().map(|s| s.sender_cpu_secs / s.secs).collect();
        let per_run = |pick: fn(&Sample) -> Option<(u64, u64)>| {
            let ns: Vec<f64> = samples
                .iter()
                .filter_map(pick)
                .filter(|&(_, runs)| runs > 0)
                .map(|(ns, runs)| ns as f64 / runs as f64)
                .collect();
            (!ns.is_empty()).then(|| Spread::of(&ns))
        };
        Self {
            mpps: Spread::of(&mpps),
            offered_mpps: Spread::of(&offered),
            sender_cpu_share: Spread::of(&cpu),
            router_bpf_ns: per_run(|s| s.router_bpf),
            sink_bpf_ns: per_run(|s| s.sink_bpf),
            router_cpu_ns: per_run(|s| Some((s.router_cpu_ns?, s.received))),
            router_cpu_share: {
                let shares: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| Some(s.router_cpu_ns? as f64 / 1e9 / s.secs))
                    .collect();
                (!shares.is_empty()).then(|| Spread::of(&shares))
            },
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
    /// Which routers, by label (`xdp_nat`, `tc_nat`, `xdp_forwarder`,
    /// `xdp_redirect`, `nftables`, `nftables_flowtable`, `no_router`);
    /// empty: all.
    pub routers: Vec<String>,
    /// Everything on one core, as the kernel places it by default, instead
    /// of the routers on a core of their own.
    pub one_core: bool,
}

struct Case {
    direction: Direction,
    flows: u32,
}

pub fn run(options: &Options) -> Result<Output> {
    // Each program's own time per packet, beside the rates.
    let _stats = RunTimeStats::enable()?;
    let placement = if options.one_core {
        None
    } else {
        Some(Placement::detect()?)
    };
    let kinds = [
        RouterKind::NatDaemon,
        RouterKind::NatDaemonTc,
        RouterKind::Forwarder,
        RouterKind::Redirect,
        RouterKind::Nftables,
        RouterKind::NftablesFlowtable,
        RouterKind::Direct,
    ];
    let wanted = |kind: RouterKind| {
        options.routers.is_empty() || options.routers.iter().any(|r| r == kind.label())
    };
    let mut flowtable = String::from("not asked for");
    let mut topologies = Vec::new();
    for kind in kinds {
        if !wanted(kind) {
            continue;
        }
        if let RouterKind::NftablesFlowtable = kind {
            match flowtable_support() {
                Ok(()) => flowtable = "measured (nftables_flowtable)".to_owned(),
                Err(error) => {
                    flowtable = format!("not available on this kernel: {error}");
                    continue;
                }
            }
        }
        topologies.push(Topology::build_placed(kind, placement)?);
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
    let programs = topologies
        .iter()
        .map(|t| (t.kind.label().to_owned(), t.router_programs.clone()))
        .collect();
    let placement = topologies.first().map_or_else(String::new, |t| {
        if options.one_core {
            "one core: the kernel's default placement, every router's work in the sending \
             thread's softirq"
                .to_owned()
        } else {
            t.placement.describe()
        }
    });
    Ok(Output {
        frame_bytes: FRAME_LEN,
        wire_bytes: FRAME_LEN + 4,
        secs_per_sample: options.secs,
        reps: options.reps,
        warmup_secs: options.warmup_secs,
        generator: "bench_gen on the sending host's veth, BPF_PROG_TEST_RUN live frames, batch \
                    64, one sending thread"
            .to_owned(),
        router_nat: format!(
            "natctl daemon (default configuration), forwarding rule {forward}; tc_nat: the \
             same with --attach tc (and xdp_pass on the router's veths)"
        ),
        router_nftables: format!(
            "nft masquerade on {ROUTER_WAN_IF} + dnat {forward}, nothing else in the ruleset, \
             nf_conntrack_checksum=0, permanent neighbours, xdp_pass on the router's veths; \
             nftables_flowtable: the same with a flowtable on both veths"
        ),
        router_forwarder: "bench_fwd: parse, FIB lookup, TTL, MACs, EGRESS redirect; no NAT"
            .to_owned(),
        placement,
        flowtable,
        programs,
        cases,
        router_counters_after,
    })
}
