//! The benchmark topology: a LAN host, a router and a WAN host, each in a
//! namespace of its own, joined by veth pairs, the same addresses as the
//! end-to-end lab, with one of several routers in the middle.
//!
//! ```text
//!  lan host                  router                     wan host
//!  192.168.0.12/24  eth0 -- lan0 192.168.0.1/24
//!                           wan0 203.0.113.1/24 -- eth0 203.0.113.2/24
//! ```
//! Both hosts run the sink (`bench_sink`, which also makes their veth
//! accept redirected frames) and send with the generator (`bench_gen`,
//! driven through `BPF_PROG_TEST_RUN`). MACs are fixed and every neighbour
//! entry is permanent, so that no packet waits for ARP.
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nat_common::{bench::BenchTemplate, programs};
use nat_ctl::datapath::{Datapath, TableSizes};
use serde_json::{Value, json};

pub(crate) use super::routers::flowtable_support;
use super::{
    bpf::{BenchObject, send_live},
    frames::{Flow, Vary, template},
    in_netns,
    placement::{self, Placement},
    progs::{self, Attached},
    routers::{NatDaemon, nat_lib, nftables_nat},
};
use crate::{
    netns::{Netns, require_root},
    plan::{self, HOST_IF, ROUTER_LAN_IF, ROUTER_WAN_IF, cidr, mac},
};

pub use crate::plan::{
    LAN_HOST, LAN_HOST_MAC, ROUTER_LAN, ROUTER_LAN_MAC, ROUTER_WAN, ROUTER_WAN_MAC, WAN_HOST,
    WAN_HOST_MAC,
};

/// The forwarding entry WAN -> LAN traffic goes through: UDP to the
/// router's WAN address on this port reaches the LAN host on the same port.
pub const FORWARD_PORT: u16 = 5001;
/// Where the hosts' flows start: the source port of the first flow.
pub const FLOW_BASE_PORT: u16 = 10000;
/// The WAN host's port that LAN -> WAN flows go to.
pub const SINK_PORT: u16 = 9;

/// Frames per `BPF_PROG_TEST_RUN` call of the generator: a few ms each.
const BURST: u32 = 8192;

#[derive(Clone, Copy, Debug)]
pub enum RouterKind {
    /// Our XDP NAT, run by the real `natctl daemon` (default configuration
    /// and table sizes) with a forwarding rule for WAN -> LAN.
    NatDaemon,
    /// The same daemon in TC mode (`--attach tc`), with `xdp_pass` on the
    /// router's veths so that they take the generator's frames.
    NatDaemonTc,
    /// Our XDP NAT loaded and attached through `nat_ctl::datapath` by this
    /// process, with the given table sizes, so that the benchmark can fill
    /// its tables and run its programs through `BPF_PROG_TEST_RUN`.
    NatLib {
        sizes: TableSizes,
        /// Whether to add the forwarding entry (`FORWARD_PORT`).
        forward: bool,
    },
    /// `bench_fwd`: FIB lookup, MAC rewrite, redirect; no NAT.
    Forwarder,
    /// `bench_redirect`: one redirect to the other veth and nothing else,
    /// the lab's fixed cost per packet through a router.
    Redirect,
    /// The kernel: nftables masquerade out of wan0 and a DNAT rule for the
    /// forwarded port, with `xdp_pass` on the router's veths.
    Nftables,
    /// nftables as above with a flowtable (the software fast path): only
    /// where the kernel has `CONFIG_NF_FLOW_TABLE`.
    NftablesFlowtable,
    /// No router: the hosts' veths joined directly, for what the generator
    /// and the sink alone reach on this machine.
    Direct,
}

impl RouterKind {
    pub fn label(&self) -> &'static str {
        match self {
            RouterKind::NatDaemon | RouterKind::NatLib { .. } => "xdp_nat",
            RouterKind::NatDaemonTc => "tc_nat",
            RouterKind::Forwarder => "xdp_forwarder",
            RouterKind::Redirect => "xdp_redirect",
            RouterKind::Nftables => "nftables",
            RouterKind::NftablesFlowtable => "nftables_flowtable",
            RouterKind::Direct => "no_router",
        }
    }

    fn translates(&self) -> bool {
        !matches!(
            self,
            RouterKind::Forwarder | RouterKind::Redirect | RouterKind::Direct
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    LanToWan,
    WanToLan,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::LanToWan => "lan_to_wan",
            Direction::WanToLan => "wan_to_lan",
        }
    }
}

/// A LAN -> WAN flow from the LAN host's `port` to the WAN host.
pub fn outbound_flow(port: u16) -> Flow {
    Flow {
        src_mac: LAN_HOST_MAC,
        dst_mac: ROUTER_LAN_MAC,
        src: SocketAddrV4::new(LAN_HOST, port),
        dst: SocketAddrV4::new(WAN_HOST, SINK_PORT),
    }
}

/// A WAN -> LAN packet from the WAN host's `port` to `dst`.
pub fn inbound_flow(port: u16, dst: SocketAddrV4) -> Flow {
    Flow {
        src_mac: WAN_HOST_MAC,
        dst_mac: ROUTER_WAN_MAC,
        src: SocketAddrV4::new(WAN_HOST, port),
        dst,
    }
}

/// A host: its namespace, its veth and the object holding its generator
/// and sink.
pub struct Host {
    pub object: BenchObject,
    pub ifindex: u32,
    /// Frames the sink received during this process's measurements.
    pub received_total: u64,
    // Last: the namespace goes after the programs.
    pub netns: Netns,
}

impl Host {
    fn start(netns: Netns) -> Result<Self> {
        let ifindex = netns.ifindex("eth0")?;
        // A spare veth pair for the generator to stay attached to (it never
        // receives anything there). An XDP program that is attached
        // somewhere stays in the kernel's XDP dispatcher; one that is not
        // is added to it and removed again by every BPF_PROG_TEST_RUN
        // call, two dispatcher updates with a synchronize_rcu() each, which
        // left the sending thread asleep most of the time.
        netns.ip(&[
            "link", "add", "gen0", "type", "veth", "peer", "name", "gen1",
        ])?;
        netns.ip(&["link", "set", "gen0", "up"])?;
        netns.ip(&["link", "set", "gen1", "up"])?;
        let parking = netns.ifindex("gen0")?;
        let object = in_netns(&netns, || {
            let mut object = BenchObject::load()?;
            object.attach(nat_common::bench::GENERATOR, parking)?;
            object.attach(nat_common::bench::SINK, ifindex)?;
            Ok(object)
        })?;
        Ok(Self {
            object,
            ifindex,
            received_total: 0,
            netns,
        })
    }
}

enum Router {
    /// The daemon, and the `xdp_pass` programs in TC mode.
    Daemon(NatDaemon, #[allow(dead_code)] Option<Box<BenchObject>>),
    Lib(Box<Datapath>),
    /// Held only so that its programs stay attached.
    Bench(#[allow(dead_code)] Box<BenchObject>),
    None,
}

/// One measurement: frames offered by the generator and received by the
/// sink over the sending time.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sent: u64,
    pub received: u64,
    pub secs: f64,
    /// CPU time the sending thread was given over `secs` (the generator
    /// and whatever the kernel ran on its behalf): on a shared machine,
    /// how much of a core it actually had.
    pub sender_cpu_secs: f64,
    /// Run time (ns) and runs of the router's programs on its receiving
    /// interface over the sample, from the kernel's statistics (`None`
    /// without programs there, or without statistics on).
    pub router_bpf: Option<(u64, u64)>,
    /// The same for the receiving host's sink.
    pub sink_bpf: Option<(u64, u64)>,
    /// CPU time (ns) of the router's NAPI kthread on its receiving
    /// interface over the sample: everything the router did for these
    /// packets, whatever else shared its core (`None` unless threaded).
    pub router_cpu_ns: Option<u64>,
}

impl Sample {
    pub fn mpps(&self) -> f64 {
        self.received as f64 / self.secs / 1e6
    }

    pub fn offered_mpps(&self) -> f64 {
        self.sent as f64 / self.secs / 1e6
    }
}

/// Our NAT as loaded by this process, and the router's NICs.
pub struct NatRouter<'a> {
    pub datapath: &'a mut Datapath,
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
}

pub struct Topology {
    pub kind: RouterKind,
    router: Router,
    pub placement: Placement,
    /// The programs attached to the router's interfaces.
    pub router_programs: Vec<Attached>,
    /// The sinks' programs: the LAN host's, the WAN host's.
    sink_programs: [Vec<Attached>; 2],
    /// The NAPI kthreads of the router's interfaces, when threaded.
    router_threads: Vec<(&'static str, i32)>,
    pub router_lan_ifindex: u32,
    pub router_wan_ifindex: u32,
    pub lan: Host,
    pub wan: Host,
    // Last: the router's namespace goes after everything in it.
    pub router_ns: Netns,
}

/// User and system time of the calling thread.
fn thread_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

impl Topology {
    pub fn build(kind: RouterKind) -> Result<Self> {
        Self::build_placed(kind, None)
    }

    /// As [`build`](Self::build), with the work spread over cores as
    /// `placement` says (see [`super::placement`]).
    pub fn build_placed(kind: RouterKind, placement: Option<Placement>) -> Result<Self> {
        require_root();
        let lan_ns = Netns::new("blan")?;
        let router_ns = Netns::new("brtr")?;
        let wan_ns = Netns::new("bwan")?;
        if let RouterKind::Direct = kind {
            lan_ns.veth("eth0", &wan_ns, "eth0")?;
            let lan = Host::start(lan_ns)?;
            let wan = Host::start(wan_ns)?;
            let mut topology = Self {
                kind,
                router: Router::None,
                placement: placement.unwrap_or(Placement {
                    router: None,
                    hosts: 0,
                }),
                router_programs: Vec::new(),
                sink_programs: [Vec::new(), Vec::new()],
                router_threads: Vec::new(),
                router_lan_ifindex: 0,
                router_wan_ifindex: 0,
                lan,
                wan,
                router_ns,
            };
            topology.place(placement.is_some())?;
            return Ok(topology);
        }
        router_ns.veth(ROUTER_LAN_IF, &lan_ns, HOST_IF)?;
        router_ns.veth(ROUTER_WAN_IF, &wan_ns, HOST_IF)?;
        for (netns, interface, address, mac_addr) in [
            (&router_ns, ROUTER_LAN_IF, ROUTER_LAN, ROUTER_LAN_MAC),
            (&router_ns, ROUTER_WAN_IF, ROUTER_WAN, ROUTER_WAN_MAC),
            (&lan_ns, HOST_IF, LAN_HOST, LAN_HOST_MAC),
            (&wan_ns, HOST_IF, WAN_HOST, WAN_HOST_MAC),
        ] {
            netns.ip(&["link", "set", interface, "address", &mac(mac_addr)])?;
            netns.ip(&["addr", "add", &cidr(address), "dev", interface])?;
        }
        for (netns, addr, mac_addr, interface) in [
            (&router_ns, LAN_HOST, LAN_HOST_MAC, ROUTER_LAN_IF),
            (&router_ns, WAN_HOST, WAN_HOST_MAC, ROUTER_WAN_IF),
            (&lan_ns, ROUTER_LAN, ROUTER_LAN_MAC, HOST_IF),
            (&wan_ns, ROUTER_WAN, ROUTER_WAN_MAC, HOST_IF),
        ] {
            netns.ip(&[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac(mac_addr),
                "dev",
                interface,
                "nud",
                "permanent",
            ])?;
        }
        lan_ns.ip(&["route", "add", "default", "via", &ROUTER_LAN.to_string()])?;
        if !kind.translates() {
            // Without NAT the WAN host reaches the LAN directly.
            wan_ns.ip(&[
                "route",
                "add",
                &plan::lan_cidr(),
                "via",
                &ROUTER_WAN.to_string(),
            ])?;
        }
        router_ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        let router_lan_ifindex = router_ns.ifindex(ROUTER_LAN_IF)?;
        let router_wan_ifindex = router_ns.ifindex(ROUTER_WAN_IF)?;

        let lan = Host::start(lan_ns)?;
        let wan = Host::start(wan_ns)?;
        let router = match kind {
            RouterKind::NatDaemon => Router::Daemon(NatDaemon::start(&router_ns, "xdp")?, None),
            RouterKind::NatDaemonTc => {
                let daemon = NatDaemon::start(&router_ns, "tc")?;
                let object = in_netns(&router_ns, || {
                    let mut object = BenchObject::load()?;
                    object.attach(programs::PASS, router_lan_ifindex)?;
                    object.attach(programs::PASS, router_wan_ifindex)?;
                    Ok(object)
                })?;
                Router::Daemon(daemon, Some(Box::new(object)))
            }
            RouterKind::NatLib { sizes, forward } => {
                Router::Lib(Box::new(in_netns(&router_ns, || {
                    nat_lib(sizes, forward, router_lan_ifindex, router_wan_ifindex)
                })?))
            }
            RouterKind::Forwarder => Router::Bench(Box::new(in_netns(&router_ns, || {
                let mut object = BenchObject::load()?;
                object.allow_egress(&[router_lan_ifindex, router_wan_ifindex])?;
                object.attach(nat_common::bench::FORWARDER, router_lan_ifindex)?;
                object.attach(nat_common::bench::FORWARDER, router_wan_ifindex)?;
                Ok(object)
            })?)),
            RouterKind::Redirect => Router::Bench(Box::new(in_netns(&router_ns, || {
                let mut object = BenchObject::load()?;
                object.cross_egress(&[
                    (router_lan_ifindex, router_wan_ifindex),
                    (router_wan_ifindex, router_lan_ifindex),
                ])?;
                object.attach(nat_common::bench::REDIRECT, router_lan_ifindex)?;
                object.attach(nat_common::bench::REDIRECT, router_wan_ifindex)?;
                Ok(object)
            })?)),
            RouterKind::Direct => unreachable!("handled above"),
            RouterKind::Nftables | RouterKind::NftablesFlowtable => {
                let object = in_netns(&router_ns, || {
                    let mut object = BenchObject::load()?;
                    object.attach(programs::PASS, router_lan_ifindex)?;
                    object.attach(programs::PASS, router_wan_ifindex)?;
                    Ok(object)
                })?;
                nftables_nat(&router_ns, matches!(kind, RouterKind::NftablesFlowtable))?;
                Router::Bench(Box::new(object))
            }
        };
        let mut topology = Self {
            kind,
            router,
            placement: placement.unwrap_or(Placement {
                router: None,
                hosts: 0,
            }),
            router_programs: Vec::new(),
            sink_programs: [Vec::new(), Vec::new()],
            router_threads: Vec::new(),
            router_lan_ifindex,
            router_wan_ifindex,
            lan,
            wan,
            router_ns,
        };
        topology.place(placement.is_some())?;
        Ok(topology)
    }

    /// Finds the programs attached to the router and the sinks and, when
    /// `threaded`, gives the router's veths and the hosts' their NAPI
    /// kthreads on the placement's cores.
    fn place(&mut self, threaded: bool) -> Result<()> {
        if self.router_lan_ifindex != 0 {
            for interface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
                self.router_programs
                    .extend(progs::attached(&self.router_ns, interface)?);
            }
        }
        self.sink_programs = [
            progs::attached(&self.lan.netns, HOST_IF)?,
            progs::attached(&self.wan.netns, HOST_IF)?,
        ];
        if !threaded {
            return Ok(());
        }
        let Some(router_cpu) = self.placement.router else {
            return Ok(());
        };
        if self.router_lan_ifindex != 0 {
            for interface in [ROUTER_LAN_IF, ROUTER_WAN_IF] {
                for pid in placement::thread_napi(&self.router_ns, interface, router_cpu)? {
                    self.router_threads.push((interface, pid));
                }
            }
        }
        for host in [&self.lan, &self.wan] {
            placement::thread_napi(&host.netns, HOST_IF, self.placement.hosts)?;
        }
        Ok(())
    }

    /// Run time and runs so far of the programs on the router's
    /// interface that receives `direction`, and of the receiving sink.
    /// CPU time so far of the router's NAPI kthreads on the interface
    /// that receives `direction`.
    fn thread_ns(&self, direction: Direction) -> Result<Option<u64>> {
        let interface = match direction {
            Direction::LanToWan => ROUTER_LAN_IF,
            Direction::WanToLan => ROUTER_WAN_IF,
        };
        let mut total = None;
        for &(_, pid) in self.router_threads.iter().filter(|(i, _)| *i == interface) {
            *total.get_or_insert(0) += placement::cpu_ns(pid)?;
        }
        Ok(total)
    }

    fn bpf_totals(&self, direction: Direction) -> Result<[Option<(u64, u64)>; 2]> {
        let (interface, sink) = match direction {
            Direction::LanToWan => (ROUTER_LAN_IF, &self.sink_programs[1]),
            Direction::WanToLan => (ROUTER_WAN_IF, &self.sink_programs[0]),
        };
        let total = |programs: &mut dyn Iterator<Item = &Attached>| -> Result<Option<(u64, u64)>> {
            let mut sum: Option<(u64, u64)> = None;
            for program in programs {
                let (ns, runs) = progs::run_stats(program.id)?;
                let (total_ns, total_runs) = sum.get_or_insert((0, 0));
                *total_ns += ns;
                // Every packet passes each program on the interface once.
                *total_runs = (*total_runs).max(runs);
            }
            Ok(sum)
        };
        Ok([
            total(
                &mut self
                    .router_programs
                    .iter()
                    .filter(|program| program.interface == interface),
            )?,
            total(&mut sink.iter())?,
        ])
    }

    /// Runs `work` inside the router's namespace on the NAT this process
    /// loaded (`RouterKind::NatLib`).
    pub fn with_nat<T: Send>(
        &mut self,
        work: impl FnOnce(NatRouter<'_>) -> Result<T> + Send,
    ) -> Result<T> {
        let Router::Lib(datapath) = &mut self.router else {
            bail!("not a router this process loaded");
        };
        let router = NatRouter {
            datapath,
            lan_ifindex: self.router_lan_ifindex,
            wan_ifindex: self.router_wan_ifindex,
        };
        in_netns(&self.router_ns, || work(router))
    }

    /// Where WAN -> LAN traffic is sent: the forwarding entry on the WAN
    /// address, or the LAN host itself when nothing translates.
    pub fn inbound_target(&self) -> SocketAddrV4 {
        if self.kind.translates() {
            SocketAddrV4::new(ROUTER_WAN, FORWARD_PORT)
        } else {
            SocketAddrV4::new(LAN_HOST, FORWARD_PORT)
        }
    }

    /// The template for `flows` flows in `direction`: the sender's source
    /// port varies, from `FLOW_BASE_PORT` up.
    pub fn flows_template(&self, direction: Direction, flows: u32) -> BenchTemplate {
        let vary = if flows > 1 {
            Vary::SourcePort(flows)
        } else {
            Vary::Fixed
        };
        match direction {
            Direction::LanToWan => template(&outbound_flow(FLOW_BASE_PORT), vary),
            Direction::WanToLan => {
                template(&inbound_flow(FLOW_BASE_PORT, self.inbound_target()), vary)
            }
        }
    }

    /// Sends `template` from the host on the `from` side for `secs`
    /// (bounded by time and by count), and counts what the other host
    /// receives.
    pub fn measure(
        &mut self,
        from: Direction,
        template: &BenchTemplate,
        secs: f64,
    ) -> Result<Sample> {
        let (sender, receiver) = match from {
            Direction::LanToWan => (&mut self.lan, &mut self.wan),
            Direction::WanToLan => (&mut self.wan, &mut self.lan),
        };
        sender.object.maps.set_template(template)?;
        sender.object.maps.reset_seq()?;
        let frame = template.frame[..template.len as usize].to_vec();
        let ifindex = sender.ifindex;
        let before = receiver.object.maps.received()?;
        let hosts_cpu = self.placement.router.map(|_| self.placement.hosts);
        let bpf_before = self.bpf_totals(from)?;
        let thread_before = self.thread_ns(from)?;
        let (sender, receiver) = match from {
            Direction::LanToWan => (&mut self.lan, &mut self.wan),
            Direction::WanToLan => (&mut self.wan, &mut self.lan),
        };
        let Host { object, netns, .. } = sender;
        let program = &*object.program(nat_common::bench::GENERATOR)?;
        let duration = Duration::from_secs_f64(secs);
        // No more than 20 Mpps could ever be offered: a bound on the count
        // whatever the clock does.
        let max_bursts = (secs * 20e6 / f64::from(BURST)).ceil() as u64 + 1;
        let (sent, secs, sender_cpu_secs) = in_netns(netns, || {
            if let Some(cpu) = hosts_cpu {
                placement::pin(0, cpu)?;
            }
            let cpu_before = thread_cpu_secs();
            let start = Instant::now();
            let mut sent = 0u64;
            for _ in 0..max_bursts {
                if start.elapsed() >= duration {
                    break;
                }
                send_live(program, &frame, ifindex, BURST)?;
                sent += u64::from(BURST);
            }
            Ok((
                sent,
                start.elapsed().as_secs_f64(),
                thread_cpu_secs() - cpu_before,
            ))
        })?;
        // Let what is in flight arrive.
        std::thread::sleep(Duration::from_millis(30));
        let received = receiver.object.maps.received()? - before;
        receiver.received_total += received;
        let bpf_after = self.bpf_totals(from)?;
        let thread_after = self.thread_ns(from)?;
        let delta = |before: Option<(u64, u64)>, after: Option<(u64, u64)>| {
            let ((ns0, runs0), (ns1, runs1)) = (before?, after?);
            Some((ns1.saturating_sub(ns0), runs1.saturating_sub(runs0)))
        };
        Ok(Sample {
            sent,
            received,
            secs,
            sender_cpu_secs,
            router_bpf: delta(bpf_before[0], bpf_after[0]),
            sink_bpf: delta(bpf_before[1], bpf_after[1]),
            router_cpu_ns: thread_before
                .zip(thread_after)
                .map(|(before, after)| after.saturating_sub(before)),
        })
    }

    /// What the router counted, as evidence that it did what was measured:
    /// the packets our XDP programs finished themselves against all the
    /// sink received (a packet handed to the kernel would be forwarded by
    /// it, untranslated, and counted all the same), or nftables' conntrack
    /// entries. Fails when the XDP programs did not finish nearly all of
    /// them.
    pub fn router_evidence(&mut self) -> Result<Value> {
        let sink_received = self.lan.received_total + self.wan.received_total;
        let (fast_path, mut evidence) = match &mut self.router {
            Router::Daemon(daemon, _) => {
                let stats: Value = serde_json::from_str(&daemon.natctl(&["stats", "--json"])?)?;
                let counters = stats["counters"].as_object().cloned().unwrap_or_default();
                let pick = |label: &str| counters[label]["packets"].as_u64().unwrap_or(0);
                let passed: u64 = counters
                    .iter()
                    .filter(|(label, _)| label.starts_with("pass_"))
                    .map(|(_, value)| value["packets"].as_u64().unwrap_or(0))
                    .sum();
                let fast = pick("snat") + pick("dnat") + pick("forwarded");
                (
                    Some(fast),
                    json!({
                        "snat": pick("snat"),
                        "dnat": pick("dnat"),
                        "forwarded": pick("forwarded"),
                        "new_binding": pick("new_binding"),
                        "passed_to_kernel": passed,
                    }),
                )
            }
            Router::Lib(datapath) => {
                let counters = datapath.maps().view().counters()?;
                let pick = |label: &str| {
                    counters
                        .iter()
                        .find(|(counter, _)| counter.label() == label)
                        .map_or(0, |(_, value)| value.packets)
                };
                let passed: u64 = counters
                    .iter()
                    .filter(|(counter, _)| counter.label().starts_with("pass_"))
                    .map(|(_, value)| value.packets)
                    .sum();
                let fast = pick("snat") + pick("dnat") + pick("forwarded");
                (
                    Some(fast),
                    json!({
                        "snat": pick("snat"),
                        "dnat": pick("dnat"),
                        "new_binding": pick("new_binding"),
                        "passed_to_kernel": passed,
                    }),
                )
            }
            Router::Bench(object) => match self.kind {
                RouterKind::Nftables | RouterKind::NftablesFlowtable => {
                    let output = self.router_ns.exec("conntrack", &["-C"])?;
                    let count: u64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
                    (None, json!({ "conntrack_entries": count }))
                }
                // Counts nothing: its program's run count is its evidence.
                RouterKind::Redirect => (None, json!({})),
                _ => {
                    let fast = object.counter_packets(nat_common::Counter::Forwarded)?;
                    (Some(fast), json!({ "redirected": fast }))
                }
            },
            Router::None => (None, json!({})),
        };
        evidence["sink_received"] = json!(sink_received);
        if let Some(fast) = fast_path {
            evidence["fast_path"] = json!(fast);
            // A few frames of the kernel's own (neighbour and router
            // solicitations) may reach the sinks too.
            if (fast as f64) < 0.99 * sink_received as f64 {
                bail!(
                    "{}: its XDP programs finished {fast} packets but the sinks received \
                     {sink_received}: the rest went through the kernel, so the figures \
                     would not be this router's",
                    self.kind.label()
                );
            }
        }
        Ok(evidence)
    }
}
