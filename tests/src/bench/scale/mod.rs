//! Part 4: throughput and per-packet cost of established flows while the
//! tables hold many live mappings.
//!
//! A "mapping" here is one live conversation: a `SESSIONS` entry (external
//! port and remote endpoint) on a dynamic mapping (its port's `PORT_OWNERS`
//! slot and, when the port is not its endpoint's own, an outbound
//! `BINDINGS` entry). One WAN address has at most 3 x 64512 dynamic
//! mappings (a port is held by one mapping, whatever its remotes), so
//! beyond 193,536 the extra conversations are further remotes on the same
//! mappings: 1M live mappings are 1M sessions on 193,536 mappings. Every
//! size runs with the same table sizes, so that only how full they are
//! differs.
//!
//! The flows measured are among those filled: the LAN host's UDP ports
//! from 1024 up, each mapped to the same external port, each in a session
//! with the WAN host's port 9. They are measured as 1 flow, a fixed hot set
//! (the same for every size) and as many as the size allows (at most
//! 64512, one LAN address's ports), in both directions. The sessions are
//! inserted in an order that spreads the measured ones evenly among the
//! rest ([`spread_order`]), as the flows a busy router carries were made
//! at all times: each then finds its home slot in `SESSIONS` taken by an
//! earlier session about as often as the table's fill says, and lives in
//! its second window then, rather than all of them having their homes
//! first. Then, as on a router that has carried them a while, the measured
//! flows carry traffic and the daemon's sweep runs once ([`settle`]): it
//! brings a spilled session that talks home when its home's occupant has
//! been idle, so what is measured is the table a running router holds,
//! not the one its first second left. [`report`] judges its [`Output`].
pub mod report;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nat_common::{
    BindingKey, Counter, DEFAULT_BINDINGS_MAX, DEFAULT_SESSIONS_MAX, HOMECOMING_MARGIN_NS,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, STAMP_SLACK_NS, Session, SessionKey, TCP_STATE_ESTABLISHED,
    TCP_STATE_NONE, programs,
};
use nat_ctl::{
    aging::{datapath_now_ns, sweep_params},
    config::Timeouts,
    datapath::TableSizes,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Spread,
    bpf::XDP_REDIRECT,
    cost::CostRig,
    frames::{Flow, Vary, template},
    placement::Placement,
    progs::RunTimeStats,
    throughput::Samples,
    topo::{
        Direction, LAN_HOST, NatRouter, ROUTER_WAN, RouterKind, SINK_PORT, Topology, WAN_HOST,
        inbound_flow, outbound_flow,
    },
};

const PORT_MIN: u32 = 1024;
const PORTS: u32 = 65536 - PORT_MIN;
/// The most dynamic mappings one WAN address holds.
pub const MAX_PAIRS: u32 = 3 * PORTS;

/// What `natbench scale` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Output {
    pub sizes: Vec<u32>,
    pub table_max_entries: TableMax,
    pub max_binding_pairs_per_wan_address: u32,
    pub hot_flows: u32,
    pub secs_per_sample: f64,
    pub reps: u32,
    pub repeat: u32,
    pub cost_reps: u32,
    pub router: String,
    /// Where the throughput's work ran ([`super::placement`]).
    #[serde(default)]
    pub placement: String,
    pub fill: Vec<Fill>,
    /// One entry per direction and flow set, each with every size.
    pub throughput: Vec<ThroughputEntry>,
    /// Each size's router counters (as the router reports them, with its
    /// `mappings`).
    pub router_counters_after_throughput: Vec<Value>,
    /// One entry per cost case, each with every size.
    pub cost: Vec<CostEntry>,
}

/// The tables' sizes, the same at every size.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct TableMax {
    pub bindings: u32,
    pub sessions: u32,
}

/// How one size was filled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fill {
    pub mappings: u32,
    pub sessions: u32,
    pub binding_pairs: u32,
    pub bindings_entries: u32,
    pub fill_secs: f64,
    /// For each flow set, how many of its sessions (the LAN host's UDP
    /// ports to the sink) live in their second window when measured, their
    /// home taken when they were made and not given back by the sweep: a
    /// lookup of theirs reads more than one slot.
    #[serde(default)]
    pub traffic_spilled: Vec<SpilledAmong>,
    /// Of all the sessions held, how many are in their second window.
    #[serde(default)]
    pub sessions_spilled: u64,
    /// The same two right after the fill, before [`settle`].
    #[serde(default)]
    pub traffic_spilled_at_fill: Vec<SpilledAmong>,
    #[serde(default)]
    pub sessions_spilled_at_fill: u64,
    /// Sessions the sweep in [`settle`] brought home.
    #[serde(default)]
    pub sessions_moved_home: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpilledAmong {
    pub flows: u32,
    pub spilled: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputEntry {
    pub direction: String,
    /// `1`, `hot` or `all`.
    pub flow_set: String,
    pub results: Vec<SizedSamples>,
}

/// The throughput at one size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SizedSamples {
    pub mappings: u32,
    pub flows: u32,
    #[serde(flatten)]
    pub samples: Samples,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CostEntry {
    /// `restore_only`, or `established_{outbound,inbound}_{1,hot,all}`.
    pub case: String,
    pub results: Vec<SizedCost>,
}

/// The per-packet cost at one size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SizedCost {
    pub mappings: u32,
    pub flows: u32,
    pub ns: Spread,
    pub ratio_vs_restore_only: Spread,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Live mappings to fill, e.g. 1k, 100k, 1M.
    pub sizes: Vec<u32>,
    pub secs: f64,
    pub reps: u32,
    pub warmup_secs: f64,
    /// `BPF_PROG_TEST_RUN` runs per cost measurement.
    pub repeat: u32,
    /// Cost measurements per case and size.
    pub cost_reps: u32,
    /// The hot set, the same at every size (at most the smallest size).
    pub hot_flows: u32,
    /// Leave the routers' work on the sending core, as the kernel places
    /// it by default, instead of on a core of its own.
    pub one_core: bool,
}

/// Mapping `j`: protocol, external port, internal endpoint. The first
/// 64512 are the LAN host's UDP ports, which the traffic uses.
fn mapping(j: u32) -> (u8, u16, [u8; 4], u16) {
    if j < PORTS {
        let port = (PORT_MIN + j) as u16;
        return (PROTO_UDP, port, LAN_HOST.octets(), port);
    }
    let k = j - PORTS;
    let proto = if k < PORTS { PROTO_TCP } else { PROTO_ICMP };
    let external = (PORT_MIN + k % PORTS) as u16;
    // LAN hosts .100 to .199.
    let [a, b, c, _] = crate::plan::LAN_NET.octets();
    let internal = [a, b, c, 100 + (k % 100) as u8];
    (proto, external, internal, (PORT_MIN + k / 100) as u16)
}

/// `0..n`, each once, in an order where any stretch of it holds its share
/// of every stretch of `0..n`: `k * stride mod n` for a stride near
/// `n / golden ratio` that shares no factor with `n`.
fn spread_order(n: u32) -> impl Iterator<Item = u32> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let n64 = u64::from(n);
    let mut stride = ((n64 * 618) / 1000).max(1);
    while n64 > 1 && gcd(stride, n64) != 1 {
        stride += 1;
    }
    (0..n64).map(move |k| ((k * stride) % n64) as u32)
}

/// Fills `mappings` live conversations (see the module's note); returns
/// the number of dynamic mappings used.
fn fill(router: &mut NatRouter<'_>, mappings: u32) -> Result<u32> {
    let maps = router.datapath.maps_mut().view_mut();
    let pairs = mappings.min(MAX_PAIRS);
    let now = datapath_now_ns();
    for j in 0..pairs {
        let (proto, external, internal, internal_port) = mapping(j);
        maps.insert_mapping(
            BindingKey::outbound(proto, internal, internal_port),
            ROUTER_WAN.octets(),
            external,
            now,
            now,
        )?;
    }
    for i in spread_order(mappings) {
        let j = i % pairs;
        let (proto, external, internal, internal_port) = mapping(j);
        let (remote_addr, remote_port) = if i < pairs && j < PORTS {
            (WAN_HOST.octets(), SINK_PORT)
        } else if i < pairs {
            ([100, 64, 0, 1], 443)
        } else {
            (
                [100, 128 + ((i >> 16) & 63) as u8, (i >> 8) as u8, i as u8],
                443,
            )
        };
        let key = SessionKey {
            remote_addr,
            remote_port: if proto == PROTO_ICMP { 0 } else { remote_port },
            external_port: external,
            proto,
            _pad: [0; 3],
        };
        let session = Session {
            last_seen_ns: now,
            packets: 1,
            bytes: 60,
            internal_addr: internal,
            internal_port,
            tcp_state: if proto == PROTO_TCP {
                TCP_STATE_ESTABLISHED
            } else {
                TCP_STATE_NONE
            },
            _pad: 0,
        };
        maps.sessions_mut().insert(key, session)?;
    }
    Ok(pairs)
}

/// Carries traffic on every measured flow, in both directions, once their
/// fill's stamp is `HOMECOMING_MARGIN_NS` old, then runs the sweep once, as
/// the daemon does every few seconds: the measured sessions that live in
/// their second window move home when the home's occupant (a session that
/// has been silent since the fill) is idle by that margin. Returns how
/// many sessions it brought home.
fn settle(topology: &mut Topology, options: &Options, mappings: u32) -> Result<u64> {
    // The fill has stamped every session by now.
    std::thread::sleep(Duration::from_nanos(HOMECOMING_MARGIN_NS + STAMP_SLACK_NS));
    let all = flow_sets(options, mappings)[2].1;
    for direction in [Direction::LanToWan, Direction::WanToLan] {
        let template = flow_template(direction, all);
        // The generator walks the flows in turn: half a second is a packet
        // for each at any rate this lab carries. A flow it missed stays in
        // its window, which the spills counted after the sweep show.
        let sample = topology.measure(direction, &template, options.warmup_secs.max(0.5))?;
        if sample.received == 0 {
            bail!(
                "nothing received {} at {mappings} mappings before the sweep",
                direction.label()
            );
        }
    }
    // Longer than the fill and the runs take, so that the sweep ages out
    // nothing of the fill: only the move home is wanted of it.
    let hour = Duration::from_secs(3600);
    let timeouts = Timeouts {
        tcp_transitory: hour,
        udp: hour,
        icmp: hour,
        ..Timeouts::default()
    };
    let report = topology
        .with_nat(|router| Ok(router.datapath.run_sweep(sweep_params(&timeouts, 0, 1))?))?;
    let removed =
        report.sessions_removed + report.forward_sessions_removed + report.bindings_removed;
    if removed > 0 {
        bail!("the sweep after the fill at {mappings} mappings removed {removed} entries of it");
    }
    Ok(report.sessions_moved_home as u64)
}

/// For each flow set of `flows`, how many of the sessions its traffic uses
/// live in their second window; and how many of all the sessions do.
fn spills(router: &NatRouter<'_>, flows: &[u32]) -> Result<(Vec<SpilledAmong>, u64)> {
    let table = router.datapath.maps().view().sessions();
    let most = flows.iter().copied().max().unwrap_or(0);
    let mut in_window = Vec::with_capacity(most as usize);
    for j in 0..most {
        let (proto, external, _, _) = mapping(j);
        let key = SessionKey {
            remote_addr: WAN_HOST.octets(),
            remote_port: SINK_PORT,
            external_port: external,
            proto,
            _pad: [0; 3],
        };
        match table.in_second_window(&key) {
            Some(spilled) => in_window.push(spilled),
            None => bail!("the fill made no session for traffic flow {j}"),
        }
    }
    let among = flows
        .iter()
        .map(|&flows| SpilledAmong {
            flows,
            spilled: in_window[..flows as usize].iter().filter(|&&s| s).count() as u32,
        })
        .collect();
    Ok((among, table.spilled().0))
}

/// Flow sets measured at a size: label and count.
fn flow_sets(options: &Options, mappings: u32) -> [(&'static str, u32); 3] {
    [
        ("1", 1),
        ("hot", options.hot_flows.min(mappings)),
        ("all", mappings.min(PORTS)),
    ]
}

/// The first filled flow, from the LAN host (`LanToWan`) or its reply
/// from the WAN host, its port varied over `flows`.
fn flow_template(direction: Direction, flows: u32) -> nat_common::bench::BenchTemplate {
    let port = PORT_MIN as u16;
    let (flow, vary): (Flow, Vary) = match direction {
        Direction::LanToWan => (outbound_flow(port), Vary::SourcePort(flows)),
        Direction::WanToLan => (
            inbound_flow(SINK_PORT, std::net::SocketAddrV4::new(ROUTER_WAN, port)),
            Vary::DestinationPort(flows),
        ),
    };
    template(&flow, if flows > 1 { vary } else { Vary::Fixed })
}

pub fn run(options: &Options) -> Result<Output> {
    let largest = options.sizes.iter().copied().max().unwrap_or(1).max(1);
    if options.sizes.contains(&0) {
        bail!("a size of 0 mappings");
    }
    let sizes = TableSizes {
        forwards: 1024,
        bindings: DEFAULT_BINDINGS_MAX.max(largest.min(MAX_PAIRS) + 4096),
        sessions: DEFAULT_SESSIONS_MAX.max(largest + 65536),
        forward_sessions: 1024,
    };
    // Each program's own time per packet, beside the rates.
    let _stats = RunTimeStats::enable()?;
    let placement = if options.one_core {
        None
    } else {
        Some(Placement::detect()?)
    };
    let mut topologies = Vec::new();
    let mut fills = Vec::new();
    for &mappings in &options.sizes {
        let mut topology = Topology::build_placed(
            RouterKind::NatLib {
                sizes,
                forward: false,
            },
            placement,
        )?;
        let start = Instant::now();
        let pairs = topology.with_nat(|mut router| fill(&mut router, mappings))?;
        let fill_secs = start.elapsed().as_secs_f64();
        let flows = flow_sets(options, mappings).map(|(_, flows)| flows);
        let (traffic_spilled_at_fill, sessions_spilled_at_fill) =
            topology.with_nat(|router| spills(&router, &flows))?;
        let sessions_moved_home = settle(&mut topology, options, mappings)?;
        let (traffic_spilled, sessions_spilled) =
            topology.with_nat(|router| spills(&router, &flows))?;
        fills.push(Fill {
            mappings,
            sessions: mappings,
            binding_pairs: pairs,
            bindings_entries: 2 * pairs,
            fill_secs,
            traffic_spilled,
            sessions_spilled,
            traffic_spilled_at_fill,
            sessions_spilled_at_fill,
            sessions_moved_home,
        });
        topologies.push(topology);
    }

    // Throughput: (direction, flow set) x size, repetitions alternating
    // between the sizes.
    let directions = [Direction::LanToWan, Direction::WanToLan];
    let mut throughput = Vec::new();
    for direction in directions {
        for set in 0..3 {
            let mut per_size: Vec<Vec<_>> = vec![Vec::new(); topologies.len()];
            let warm = |topology: &mut Topology, mappings: u32, secs: f64| {
                let flows = flow_sets(options, mappings)[set].1;
                let template = flow_template(direction, flows);
                topology.measure(direction, &template, secs)
            };
            for (t, topology) in topologies.iter_mut().enumerate() {
                let sample = warm(topology, options.sizes[t], options.warmup_secs)?;
                if sample.received == 0 {
                    bail!("nothing received at {} mappings", options.sizes[t]);
                }
            }
            for rep in 0..options.reps as usize {
                for i in 0..topologies.len() {
                    let t = (i + rep) % topologies.len();
                    let sample = warm(&mut topologies[t], options.sizes[t], options.secs)?;
                    per_size[t].push(sample);
                }
            }
            let results = options
                .sizes
                .iter()
                .zip(&per_size)
                .map(|(&mappings, samples)| SizedSamples {
                    mappings,
                    flows: flow_sets(options, mappings)[set].1,
                    samples: Samples::of(samples),
                })
                .collect();
            throughput.push(ThroughputEntry {
                direction: direction.label().to_owned(),
                flow_set: flow_sets(options, largest)[set].0.to_owned(),
                results,
            });
        }
    }

    let mut evidence = Vec::new();
    for (t, topology) in topologies.iter_mut().enumerate() {
        let mut value = topology.router_evidence()?;
        value["mappings"] = options.sizes[t].into();
        evidence.push(value);
    }

    // Per-packet cost, each size on its own router.
    let mut cost_ns: Vec<Vec<Vec<f64>>> = Vec::new(); // [size][case]
    let mut case_names = Vec::new();
    for (t, topology) in topologies.iter_mut().enumerate() {
        let mappings = options.sizes[t];
        let per_case = topology.with_nat(|router| {
            let mut rig = CostRig::new(router)?;
            let lan = rig.lan_ifindex;
            let wan = rig.wan_ifindex;
            let mut cases = vec![(
                "restore_only".to_owned(),
                programs::PASS,
                flow_template(Direction::LanToWan, 1),
                lan,
            )];
            for direction in directions {
                for (label, flows) in flow_sets(options, mappings) {
                    let (name, program, ifindex) = match direction {
                        Direction::LanToWan => ("established_outbound", programs::LAN, lan),
                        Direction::WanToLan => ("established_inbound", programs::WAN, wan),
                    };
                    cases.push((
                        format!("{name}_{label}"),
                        program,
                        flow_template(direction, flows),
                        ifindex,
                    ));
                }
            }
            let mut ns = vec![Vec::new(); cases.len()];
            for rep in 0..options.cost_reps as usize {
                for i in 0..cases.len() {
                    let c = (i + rep) % cases.len();
                    let (name, program, template, ifindex) = &cases[c];
                    let expect = if *program == programs::PASS {
                        super::bpf::XDP_PASS
                    } else {
                        XDP_REDIRECT
                    };
                    let before = rig.counter(Counter::NewBinding)?;
                    ns[c].push(rig.time(program, template, *ifindex, options.repeat, expect)?);
                    if rig.counter(Counter::NewBinding)? != before {
                        bail!("{name} at {mappings} mappings created mappings: the fill is wrong");
                    }
                }
            }
            Ok((cases.into_iter().map(|c| c.0).collect::<Vec<_>>(), ns))
        })?;
        case_names = per_case.0;
        cost_ns.push(per_case.1);
    }
    let cost = case_names
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let results = options
                .sizes
                .iter()
                .enumerate()
                .map(|(t, &mappings)| {
                    let ratio: Vec<f64> = cost_ns[t][c]
                        .iter()
                        .zip(&cost_ns[t][0])
                        .map(|(v, b)| v / b)
                        .collect();
                    let flows = match name.rsplit('_').next() {
                        Some("hot") => flow_sets(options, mappings)[1].1,
                        Some("all") => flow_sets(options, mappings)[2].1,
                        _ => 1,
                    };
                    SizedCost {
                        mappings,
                        flows,
                        ns: Spread::of(&cost_ns[t][c]),
                        ratio_vs_restore_only: Spread::of(&ratio),
                    }
                })
                .collect();
            CostEntry {
                case: name.clone(),
                results,
            }
        })
        .collect();

    Ok(Output {
        sizes: options.sizes.clone(),
        table_max_entries: TableMax {
            bindings: sizes.bindings,
            sessions: sizes.sessions,
        },
        max_binding_pairs_per_wan_address: MAX_PAIRS,
        hot_flows: options.hot_flows,
        secs_per_sample: options.secs,
        reps: options.reps,
        repeat: options.repeat,
        cost_reps: options.cost_reps,
        router: "our XDP NAT loaded by natbench (same programs as natctl, tables sized for the \
                 largest size); after the fill the measured flows carry traffic and the \
                 daemon's sweep runs once, none runs during the measurements"
            .to_owned(),
        placement: match placement {
            Some(placement) => placement.describe(),
            None => "one core: the kernel's default placement, the router's work in the sending \
                     thread's softirq"
                .to_owned(),
        },
        fill: fills,
        throughput,
        router_counters_after_throughput: evidence,
        cost,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_fill_order_takes_every_session_once_and_spreads_the_measured_ones() {
        for n in [0, 1, 2, 1000, 100_000, 1_000_000] {
            let order: Vec<u32> = spread_order(n).collect();
            let distinct: HashSet<u32> = order.iter().copied().collect();
            assert_eq!(
                (order.len(), distinct.len()),
                (n as usize, n as usize),
                "{n}"
            );
            assert!(order.iter().all(|&i| i < n.max(1)), "{n}");
        }
        // At 1M, the 64512 measured sessions (the first indices) come a
        // tenth at a time in each tenth of the insertions.
        let order: Vec<u32> = spread_order(1_000_000).collect();
        for tenth in order.chunks(100_000) {
            let measured = tenth.iter().filter(|&&i| i < PORTS).count();
            assert!((5_900..=7_000).contains(&measured), "{measured}");
        }
    }

    #[test]
    fn mappings_are_distinct_and_traffic_ones_keep_their_port() {
        let mut inbound = HashSet::new();
        let mut outbound = HashSet::new();
        for j in 0..MAX_PAIRS {
            let (proto, external, internal, port) = mapping(j);
            assert!(inbound.insert((proto, external)), "inbound {j}");
            assert!(outbound.insert((proto, internal, port)), "outbound {j}");
            if j < PORTS {
                assert_eq!(
                    (proto, internal, port),
                    (PROTO_UDP, LAN_HOST.octets(), external)
                );
            }
        }
    }
}
