//! Part 3: the cost of one packet through `BPF_PROG_TEST_RUN` with
//! `repeat`, as the kernel times it (mean ns per run).
//!
//! A repeated run would see the frame the run before rewrote, so every case
//! runs `bench_restore`, which writes the frame template back (and, for new
//! flows, moves the source port on), then tail-calls the real `nat_lan` or
//! `nat_wan`, the plain forwarder, or `xdp_pass`. The last is the baseline:
//! the ratio of a case to it is what the NAT adds to a program that does
//! the same restore and tail call and nothing else. The truly minimal
//! program (`xdp_pass` run directly) is reported too. The TC mode's
//! programs (`nat_lan_tc`, `nat_wan_tc`) are timed the same way on an skb,
//! behind `bench_restore_tc`, against their own baseline (`bench_tc_pass`
//! behind the same restore: `tc_restore_only`). [`report`] judges its
//! [`Output`].
pub mod report;

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use aya::{
    maps::{MapData, ProgramArray},
    programs::{ProgramFd, Xdp},
};
use nat_common::{
    BindingKey, Counter, PROTO_UDP, SessionKey,
    bench::{BenchTemplate, FORWARDER, FORWARDER_CACHED, INSERTS, RESTORE, RESTORE_TC, TC_PASS},
    programs,
};
use nat_ctl::datapath::{Datapath, TableSizes};
use serde::{Deserialize, Serialize};

use super::{
    Spread,
    bpf::{
        BenchMaps, TC_ACT_OK, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, XDP_REDIRECT, next_tc_of,
        time_runs, time_runs_tc, verdict_name,
    },
    frames::{Vary, template},
    topo::{
        FLOW_BASE_PORT, FORWARD_PORT, NatRouter, ROUTER_WAN, RouterKind, SINK_PORT, Topology,
        WAN_HOST, inbound_flow, outbound_flow,
    },
};

/// What `natbench cost` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Output {
    pub repeat: u32,
    pub reps: u32,
    pub new_flow_repeat: u32,
    pub frame_bytes: usize,
    pub table_sizes: String,
    pub unit: String,
    /// By case name: `minimal`, `restore_only`, `forwarder`,
    /// `established_outbound`, `established_inbound`, `forwarded_inbound`,
    /// `new_flow` (each flow's `SESSIONS` home slot as the rep before left
    /// it: not in this CPU's caches), `new_flow_cached` (the same flows,
    /// their slots read by lookups from this CPU just before, as an
    /// established flow's are), `inserts_only` (`bench_inserts`: the table
    /// writes of `new_flow`'s mappings alone), `fragment_outbound`,
    /// `fragment_inbound` (a later IP
    /// fragment of a tracked datagram: the fragment path's cost); in TC
    /// mode `tc_restore_only`, `tc_established_outbound`,
    /// `tc_established_inbound`, `tc_fragment_outbound`,
    /// `tc_fragment_inbound` (their ratios against `tc_restore_only`);
    /// `established_outbound_many`, `established_inbound_many`,
    /// `forwarded_inbound_many`: the same as their one-flow cases over
    /// `MANY_FLOWS` flows, one after another.
    pub cases: BTreeMap<String, CaseOutput>,
    /// The size of each program the cases run, by program name.
    #[serde(default)]
    pub programs: BTreeMap<String, ProgramSize>,
}

/// A loaded program's size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramSize {
    /// Instructions after the verifier (xlated bytes / 8).
    pub xlated_insns: u32,
    pub jited_bytes: u32,
    /// Instructions the verifier processed to accept it (`verified_insns`;
    /// its budget is 1 000 000): the headroom left for datapath work.
    #[serde(default)]
    pub verified_insns: Option<u32>,
}

/// One case's ns per run, and against the baseline and the minimal program.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseOutput {
    pub ns: Spread,
    pub ratio_vs_restore_only: Spread,
    pub ns_over_restore_only: Spread,
    pub ratio_vs_minimal: Spread,
}

/// Source ports of the new flows: a range no other case uses.
pub const NEW_FLOW_BASE_PORT: u16 = 20000;

/// Flows of the `*_many` cases, as many as part 1's many-flow rows: ports
/// `FLOW_BASE_PORT..NEW_FLOW_BASE_PORT`.
pub const MANY_FLOWS: u32 = 10_000;
const _: () = assert!(FLOW_BASE_PORT as u32 + MANY_FLOWS <= NEW_FLOW_BASE_PORT as u32);

#[derive(Clone, Debug)]
pub struct Options {
    /// Runs per measurement.
    pub repeat: u32,
    /// Measurements per case, alternating between the cases.
    pub reps: u32,
    /// New flows per measurement: each run creates one.
    pub new_flow_repeat: u32,
}

/// `bench_restore` and the programs it hands packets to, in one loaded
/// instance of our NAT.
pub struct CostRig<'a> {
    pub datapath: &'a mut Datapath,
    pub maps: BenchMaps,
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    next: HashMap<&'static str, ProgramFd>,
    next_tc: ProgramArray<MapData>,
}

/// The XDP programs `bench_restore` hands packets to.
const XDP_PROGRAMS: [&str; 6] = [
    programs::PASS,
    FORWARDER,
    FORWARDER_CACHED,
    INSERTS,
    programs::LAN,
    programs::WAN,
];

/// The TC programs `bench_restore_tc` hands packets to.
const TC_PROGRAMS: [&str; 3] = [TC_PASS, programs::LAN_TC, programs::WAN_TC];

impl<'a> CostRig<'a> {
    /// Call inside the router's namespace.
    pub fn new(router: NatRouter<'a>) -> Result<Self> {
        let NatRouter {
            datapath,
            lan_ifindex,
            wan_ifindex,
        } = router;
        for name in [RESTORE, FORWARDER, FORWARDER_CACHED, INSERTS] {
            let program = datapath.program(name)?;
            if program.fd().is_err() {
                nat_ctl::datapath::load_retrying(|| program.load())
                    .with_context(|| format!("loading {name}"))?;
            }
        }
        for name in [RESTORE_TC, TC_PASS] {
            let program = datapath.classifier(name)?;
            if program.fd().is_err() {
                nat_ctl::datapath::load_retrying(|| program.load())
                    .with_context(|| format!("loading {name}"))?;
            }
        }
        let maps = BenchMaps::of_programs(&[&*datapath.program(RESTORE)?])?;
        let next_tc = next_tc_of(datapath.classifier(RESTORE_TC)?)?;
        let mut next = HashMap::new();
        for name in XDP_PROGRAMS {
            next.insert(name, datapath.program(name)?.fd()?.try_clone()?);
        }
        for name in TC_PROGRAMS {
            next.insert(name, datapath.classifier(name)?.fd()?.try_clone()?);
        }
        Ok(Self {
            datapath,
            maps,
            lan_ifindex,
            wan_ifindex,
            next,
            next_tc,
        })
    }

    fn restore(&mut self) -> Result<&Xdp> {
        Ok(&*self.datapath.program(RESTORE)?)
    }

    /// Mean ns per run of `bench_restore` then `next` on `template`,
    /// arriving on `ifindex`; fails unless the verdict is `expect`.
    pub fn time(
        &mut self,
        next: &'static str,
        template: &BenchTemplate,
        ifindex: u32,
        repeat: u32,
        expect: u32,
    ) -> Result<f64> {
        self.maps.set_template(template)?;
        self.maps.reset_seq()?;
        let fd = self.next.get(next).context("unknown program")?;
        let frame = template.frame[..template.len as usize].to_vec();
        let (action, ns) = if TC_PROGRAMS.contains(&next) {
            self.next_tc.set(0, fd, 0)?;
            let restore = &*self.datapath.classifier(RESTORE_TC)?;
            let (action, ns) = time_runs_tc(restore, &frame, ifindex, repeat)?;
            // In XDP's terms, for the check and the message below.
            let action = match action {
                TC_ACT_OK => XDP_PASS,
                TC_ACT_REDIRECT => XDP_REDIRECT,
                other => 0x100 + other,
            };
            (action, ns)
        } else {
            self.maps.set_next(fd)?;
            time_runs(self.restore()?, &frame, ifindex, repeat)?
        };
        if action != expect {
            bail!(
                "bench_restore -> {next}: {} where {} was expected",
                verdict_name(action),
                verdict_name(expect)
            );
        }
        Ok(ns)
    }

    /// Mean ns per run of `xdp_pass` itself, without restore or tail call.
    pub fn time_minimal(&mut self, template: &BenchTemplate, repeat: u32) -> Result<f64> {
        let frame = template.frame[..template.len as usize].to_vec();
        let lan = self.lan_ifindex;
        let (action, ns) = time_runs(self.datapath.program(programs::PASS)?, &frame, lan, repeat)?;
        if action != XDP_PASS {
            bail!("xdp_pass returned {}", verdict_name(action));
        }
        Ok(ns)
    }

    pub fn counter(&self, counter: Counter) -> Result<u64> {
        Ok(self
            .datapath
            .maps()
            .view()
            .counters()?
            .into_iter()
            .find(|(c, _)| *c == counter)
            .map_or(0, |(_, value)| value.packets))
    }

    /// The external port of the LAN host's UDP `port`, if it has a
    /// mapping.
    pub fn external_port(&self, port: u16) -> Option<u16> {
        let key = BindingKey::outbound(PROTO_UDP, super::topo::LAN_HOST.octets(), port);
        self.datapath.maps().view().mapped_port(&key).ok()?
    }

    /// Removes the mappings (both directions) and the session to the WAN
    /// host's sink port of the LAN host's UDP `ports`.
    pub fn remove_flows(&mut self, ports: std::ops::Range<u32>) -> Result<()> {
        for port in ports {
            let port = port as u16;
            let Some(external) = self.external_port(port) else {
                continue;
            };
            let maps = self.datapath.maps_mut().view_mut();
            maps.remove_mapping(&BindingKey::outbound(
                PROTO_UDP,
                super::topo::LAN_HOST.octets(),
                port,
            ))?;
            maps.sessions_mut().remove(&new_flow_session(external));
        }
        Ok(())
    }

    /// The template of `repeat` new flows (fresh source ports from
    /// `NEW_FLOW_BASE_PORT`), with whatever an earlier run left of their
    /// mappings removed; and those ports, to remove them again.
    fn fresh_flows(&mut self, repeat: u32) -> Result<(BenchTemplate, std::ops::Range<u32>)> {
        let base = u32::from(NEW_FLOW_BASE_PORT);
        let template = template(&outbound_flow(NEW_FLOW_BASE_PORT), Vary::SourcePort(repeat));
        self.remove_flows(base..base + repeat)?;
        Ok((template, base..base + repeat))
    }

    /// One new flow per run: `repeat` runs from as many fresh source ports,
    /// each of which must create a mapping; the mappings are removed again
    /// afterwards, so that every measurement starts from the same table.
    /// `cached`: each flow's session key is looked up (and missed) from
    /// user space first, which brings its `SESSIONS` slots into this CPU's
    /// caches and TLB, where an established flow's is: the new flow's own
    /// work, without the miss that reaching a slot nobody touched lately
    /// costs.
    pub fn time_new_flows(&mut self, repeat: u32, cached: bool) -> Result<f64> {
        let (template, ports) = self.fresh_flows(repeat)?;
        if cached {
            let view = self.datapath.maps().view();
            for port in ports.clone() {
                // The mapping keeps its LAN port, so this is its session's key.
                let key = new_flow_session(port as u16);
                if view.sessions().get(&key).is_some() {
                    bail!("a session of new flow {port} outlived its removal");
                }
            }
        }
        let before = self.counter(Counter::NewBinding)?;
        let lan = self.lan_ifindex;
        let ns = self.time(programs::LAN, &template, lan, repeat, XDP_REDIRECT)?;
        let created = self.counter(Counter::NewBinding)? - before;
        self.remove_flows(ports)?;
        if created != u64::from(repeat) {
            bail!("{repeat} runs created {created} mappings, not one each");
        }
        Ok(ns)
    }

    /// `bench_inserts` over the same flows as [`Self::time_new_flows`],
    /// from the same table: the writes a new mapping makes (its port's claim,
    /// its session's insert), alone.
    pub fn time_inserts(&mut self, repeat: u32) -> Result<f64> {
        let (template, ports) = self.fresh_flows(repeat)?;
        let lan = self.lan_ifindex;
        let ns = self.time(INSERTS, &template, lan, repeat, XDP_DROP)?;
        let last = NEW_FLOW_BASE_PORT + repeat.saturating_sub(1) as u16;
        let made = (
            self.external_port(NEW_FLOW_BASE_PORT),
            self.external_port(last),
        );
        self.remove_flows(ports)?;
        if made != (Some(NEW_FLOW_BASE_PORT), Some(last)) {
            bail!(
                "bench_inserts did not map its first and last flows to their own ports: {made:?}"
            );
        }
        Ok(ns)
    }
}

/// The session key of a bench flow from the LAN host to the WAN host's
/// sink, seen outside on `external_port`.
fn new_flow_session(external_port: u16) -> SessionKey {
    SessionKey {
        remote_addr: WAN_HOST.octets(),
        remote_port: SINK_PORT,
        external_port,
        proto: PROTO_UDP,
        _pad: [0; 3],
    }
}

/// `template` as a fragment of its datagram: `offset` in 8-byte units,
/// more fragments after it or not (IP header checksum fixed up).
fn as_fragment(template: &BenchTemplate, offset: u16, more: bool) -> BenchTemplate {
    let mut template = *template;
    let frame = &mut template.frame;
    let frags = offset | if more { 0x2000 } else { 0 };
    frame[20..22].copy_from_slice(&frags.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[14..34]
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    template
}

/// The first fragment whose record the `fragment_inbound` and
/// `tc_fragment_inbound` cases' later fragment is translated by (the record
/// lasts 5 s: sent before every measurement; `FRAGS` is shared by the
/// modes).
fn track_inbound_fragment(rig: &mut CostRig<'_>, reply: &BenchTemplate) -> Result<()> {
    let wan = rig.wan_ifindex;
    rig.time(
        programs::WAN,
        &as_fragment(reply, 0, true),
        wan,
        1,
        XDP_REDIRECT,
    )?;
    Ok(())
}

/// The established and forwarded cases, by name: which program, which
/// template, which NIC.
fn cases(rig: &mut CostRig<'_>) -> Result<Vec<(&'static str, &'static str, BenchTemplate, u32)>> {
    let outbound = template(&outbound_flow(FLOW_BASE_PORT), Vary::Fixed);
    // Establish the flow, then find its external port.
    let lan = rig.lan_ifindex;
    let wan = rig.wan_ifindex;
    rig.time(programs::LAN, &outbound, lan, 1, XDP_REDIRECT)?;
    let external = rig
        .external_port(FLOW_BASE_PORT)
        .context("the established flow has no mapping")?;
    let reply = template(
        &inbound_flow(SINK_PORT, std::net::SocketAddrV4::new(ROUTER_WAN, external)),
        Vary::Fixed,
    );
    let forwarded = template(
        &inbound_flow(
            FLOW_BASE_PORT,
            std::net::SocketAddrV4::new(ROUTER_WAN, FORWARD_PORT),
        ),
        Vary::Fixed,
    );
    // The same with MANY_FLOWS flows, as part 1's many-flow rows send them:
    // the LAN host's source ports from FLOW_BASE_PORT (the one flow above
    // among them), their replies, and as many remotes on the forwarded
    // port. Established once here, so that every measurement meets them.
    let outbound_many = template(&outbound_flow(FLOW_BASE_PORT), Vary::SourcePort(MANY_FLOWS));
    let forwarded_many = template(
        &inbound_flow(
            FLOW_BASE_PORT,
            std::net::SocketAddrV4::new(ROUTER_WAN, FORWARD_PORT),
        ),
        Vary::SourcePort(MANY_FLOWS),
    );
    rig.time(programs::LAN, &outbound_many, lan, MANY_FLOWS, XDP_REDIRECT)?;
    rig.time(
        programs::WAN,
        &forwarded_many,
        wan,
        MANY_FLOWS,
        XDP_REDIRECT,
    )?;
    let last = FLOW_BASE_PORT + (MANY_FLOWS - 1) as u16;
    if rig.external_port(last) != Some(last) {
        bail!(
            "the last of {MANY_FLOWS} flows did not keep its port {last}: {:?}",
            rig.external_port(last)
        );
    }
    let reply_many = template(
        &inbound_flow(
            SINK_PORT,
            std::net::SocketAddrV4::new(ROUTER_WAN, FLOW_BASE_PORT),
        ),
        Vary::DestinationPort(MANY_FLOWS),
    );
    Ok(vec![
        ("tc_restore_only", TC_PASS, outbound, lan),
        ("tc_established_outbound", programs::LAN_TC, outbound, lan),
        ("tc_established_inbound", programs::WAN_TC, reply, wan),
        ("restore_only", programs::PASS, outbound, lan),
        ("forwarder", FORWARDER, outbound, lan),
        ("forwarder_cached", FORWARDER_CACHED, outbound, lan),
        ("established_outbound", programs::LAN, outbound, lan),
        ("established_inbound", programs::WAN, reply, wan),
        ("forwarded_inbound", programs::WAN, forwarded, wan),
        (
            "fragment_outbound",
            programs::LAN,
            as_fragment(&outbound, 185, false),
            lan,
        ),
        (
            "fragment_inbound",
            programs::WAN,
            as_fragment(&reply, 185, false),
            wan,
        ),
        (
            "tc_fragment_outbound",
            programs::LAN_TC,
            as_fragment(&outbound, 185, false),
            lan,
        ),
        (
            "tc_fragment_inbound",
            programs::WAN_TC,
            as_fragment(&reply, 185, false),
            wan,
        ),
        (
            "established_outbound_many",
            programs::LAN,
            outbound_many,
            lan,
        ),
        ("established_inbound_many", programs::WAN, reply_many, wan),
        ("forwarded_inbound_many", programs::WAN, forwarded_many, wan),
    ])
}

pub fn run(options: &Options) -> Result<Output> {
    let mut topology = Topology::build(RouterKind::NatLib {
        sizes: TableSizes::default(),
        forward: true,
    })?;
    topology.with_nat(|router| {
        // One CPU for the whole run: the user-space removals and lookups
        // between measurements leave the tables' lines in the caches of
        // the CPU the next measurement runs on, not of whichever CPU the
        // scheduler picked for the syscall.
        let cpu = *super::placement::allowed_cpus()?
            .last()
            .context("no CPU to run on")?;
        super::placement::pin(0, cpu)?;
        let mut rig = CostRig::new(router)?;
        let cases = cases(&mut rig)?;
        let minimal_template = cases[3].2;
        let mut ns: HashMap<&str, Vec<f64>> = HashMap::new();
        for rep in 0..options.reps as usize {
            ns.entry("minimal")
                .or_default()
                .push(rig.time_minimal(&minimal_template, options.repeat)?);
            for i in 0..cases.len() {
                let (name, next, template, ifindex) = cases[(i + rep) % cases.len()];
                let expect = if next == programs::PASS || next == TC_PASS {
                    XDP_PASS
                } else {
                    XDP_REDIRECT
                };
                if name == "fragment_inbound" || name == "tc_fragment_inbound" {
                    let first = cases.iter().find(|c| c.0 == "established_inbound");
                    track_inbound_fragment(&mut rig, &first.context("no reply case")?.2)?;
                }
                let before = rig.counter(Counter::NewBinding)?;
                let value = rig.time(next, &template, ifindex, options.repeat, expect)?;
                if rig.counter(Counter::NewBinding)? != before {
                    bail!("{name} created mappings: it is not an established flow");
                }
                ns.entry(name).or_default().push(value);
            }
            ns.entry("new_flow")
                .or_default()
                .push(rig.time_new_flows(options.new_flow_repeat, false)?);
            ns.entry("new_flow_cached")
                .or_default()
                .push(rig.time_new_flows(options.new_flow_repeat, true)?);
            ns.entry("inserts_only")
                .or_default()
                .push(rig.time_inserts(options.new_flow_repeat)?);
        }
        let mut programs = BTreeMap::new();
        for name in XDP_PROGRAMS {
            let info = rig.datapath.program(name)?.info()?;
            programs.insert(name.to_owned(), ProgramSize::of(&info));
        }
        for name in [programs::LAN_TC, programs::WAN_TC] {
            let info = rig.datapath.classifier(name)?.info()?;
            programs.insert(name.to_owned(), ProgramSize::of(&info));
        }
        let minimal = ns["minimal"].clone();
        let mut cases = BTreeMap::new();
        for (name, values) in &ns {
            let baseline = if name.starts_with("tc_") {
                &ns["tc_restore_only"]
            } else {
                &ns["restore_only"]
            };
            let ratio: Vec<f64> = values
                .iter()
                .zip(baseline.iter())
                .map(|(v, b)| v / b)
                .collect();
            let over: Vec<f64> = values
                .iter()
                .zip(baseline.iter())
                .map(|(v, b)| v - b)
                .collect();
            let ratio_minimal: Vec<f64> = values.iter().zip(&minimal).map(|(v, m)| v / m).collect();
            cases.insert(
                (*name).to_owned(),
                CaseOutput {
                    ns: Spread::of(values),
                    ratio_vs_restore_only: Spread::of(&ratio),
                    ns_over_restore_only: Spread::of(&over),
                    ratio_vs_minimal: Spread::of(&ratio_minimal),
                },
            );
        }
        Ok(Output {
            repeat: options.repeat,
            reps: options.reps,
            new_flow_repeat: options.new_flow_repeat,
            frame_bytes: super::frames::FRAME_LEN,
            table_sizes: "natctl defaults".to_owned(),
            unit: "ns per run: BPF_PROG_TEST_RUN's duration, the kernel's mean over `repeat` \
                   runs (whole ns)"
                .to_owned(),
            cases,
            programs,
        })
    })
}

impl ProgramSize {
    fn of(info: &aya::programs::ProgramInfo) -> Self {
        Self {
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            jited_bytes: info.size_jitted(),
            verified_insns: info.verified_instruction_count(),
        }
    }
}
