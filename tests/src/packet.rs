//! Runs the datapath on crafted frames through `BPF_PROG_TEST_RUN`, inside a
//! namespace of its own so that the FIB and neighbour lookups see a known
//! router: WAN NIC 203.0.113.1/24 with a default route via 203.0.113.254,
//! LAN NIC 192.168.0.1/24, fixed MACs and permanent neighbour entries.
//!
//! A lab runs the XDP programs (`nat_lan`, `nat_wan`) or, made with
//! [`PacketLab::tc`], the TC ones (`nat_lan_tc`, `nat_wan_tc`) on an skb.
//! Either way [`Verdict::action`] is in XDP's terms (a TC program's
//! `TC_ACT_REDIRECT`, `TC_ACT_OK`, `TC_ACT_SHOT` read as `XDP_REDIRECT`,
//! `XDP_PASS`, `XDP_DROP`), so that the same assertions hold for both;
//! [`Verdict::program_action`] is what the program returned.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use nat_common::{FILTER_ADDRESS_AND_PORT_DEPENDENT, NatConfig, UNSOLICITED_PASS, programs};
use nat_ctl::{
    datapath::{Datapath, MapChange, TableSizes},
    rules::ForwardRule,
};

use crate::{
    netns::{Netns, require_root},
    plan::{self, ROUTER_LAN_IF, ROUTER_WAN_IF, cidr, mac},
};

// The router's side of the address plan under the packet lab's names.
pub use crate::plan::{
    GATEWAY, GATEWAY_MAC, LAN_HOST, LAN_HOST_MAC, LAN_HOST2, LAN_HOST2_MAC, LAN_UNRESOLVED, REMOTE,
};
pub const WAN_ADDR: Ipv4Addr = plan::ROUTER_WAN;
pub const WAN_MAC: [u8; 6] = plan::ROUTER_WAN_MAC;
pub const LAN_ADDR: Ipv4Addr = plan::ROUTER_LAN;
pub const LAN_MAC: [u8; 6] = plan::ROUTER_LAN_MAC;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Which programs a lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Xdp,
    Tc,
}

pub struct Verdict {
    /// In XDP's terms, whatever the mode.
    pub action: u32,
    /// What the program returned (a TC action in TC mode).
    pub program_action: u32,
    pub frame: Vec<u8>,
}

/// A TC action in XDP's terms; an unknown one stays as it is (and matches
/// no XDP action a test expects).
fn tc_as_xdp(action: u32) -> u32 {
    match action {
        TC_ACT_REDIRECT => XDP_REDIRECT,
        TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        other => 0x100 + other,
    }
}

/// What an skb may carry into `BPF_PROG_TEST_RUN` besides its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SkbMeta {
    /// Non-zero: a GSO packet of segments of this size.
    pub gso_size: u32,
    pub gso_segs: u32,
}

pub struct PacketLab {
    pub mode: Mode,
    pub datapath: Datapath,
    pub config: NatConfig,
    pub wan_ifindex: u32,
    pub lan_ifindex: u32,
    next_rule_id: u32,
    // Last, so that the namespace goes after the datapath.
    pub netns: Netns,
}

impl PacketLab {
    /// A router with the default configuration (address-and-port-dependent
    /// filtering, unsolicited packets to the kernel, hairpin on, dynamic
    /// ports 1024-65535, system ports kept or to 600-1023).
    pub fn new() -> Result<Self> {
        Self::with_config(|_| {})
    }

    pub fn with_config(adjust: impl FnOnce(&mut NatConfig)) -> Result<Self> {
        Self::build(Mode::Xdp, adjust)
    }

    /// A router as [`PacketLab::new`] running the TC programs.
    pub fn tc() -> Result<Self> {
        Self::build(Mode::Tc, |_| {})
    }

    /// As [`PacketLab::with_config`], in `mode`.
    pub fn build(mode: Mode, adjust: impl FnOnce(&mut NatConfig)) -> Result<Self> {
        Self::build_sized(mode, TableSizes::default(), adjust)
    }

    /// As [`PacketLab::build`], with tables of `sizes`.
    pub fn build_sized(
        mode: Mode,
        sizes: TableSizes,
        adjust: impl FnOnce(&mut NatConfig),
    ) -> Result<Self> {
        require_root();
        let netns = Netns::new("pkt")?;
        // Both ends of each veth stay in the namespace: the peers only have
        // to exist and be up for the router's NICs to be up.
        let (wan, lan) = (ROUTER_WAN_IF, ROUTER_LAN_IF);
        let (wan_peer, lan_peer) = (format!("{wan}p"), format!("{lan}p"));
        let neighbour = |addr: Ipv4Addr, lladdr: [u8; 6], dev: &'static str| {
            let (addr, lladdr) = (addr.to_string(), mac(lladdr));
            move |netns: &Netns| {
                netns.ip(&[
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &lladdr,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])
            }
        };
        let setup: &[&[&str]] = &[
            &[
                "link", "add", wan, "type", "veth", "peer", "name", &wan_peer,
            ],
            &[
                "link", "add", lan, "type", "veth", "peer", "name", &lan_peer,
            ],
            &["link", "set", wan, "address", &mac(WAN_MAC)],
            &["link", "set", lan, "address", &mac(LAN_MAC)],
            &["link", "set", &wan_peer, "up"],
            &["link", "set", &lan_peer, "up"],
            &["link", "set", wan, "up"],
            &["link", "set", lan, "up"],
            &["addr", "add", &cidr(WAN_ADDR), "dev", wan],
            &["addr", "add", &cidr(LAN_ADDR), "dev", lan],
            &[
                "route",
                "add",
                "default",
                "via",
                &GATEWAY.to_string(),
                "dev",
                wan,
            ],
        ];
        for args in setup {
            netns.ip(args)?;
        }
        for add in [
            neighbour(GATEWAY, GATEWAY_MAC, wan),
            neighbour(LAN_HOST, LAN_HOST_MAC, lan),
            neighbour(LAN_HOST2, LAN_HOST2_MAC, lan),
        ] {
            add(&netns)?;
        }
        netns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        netns.enter()?;
        let wan_ifindex = netns.ifindex(ROUTER_WAN_IF)?;
        let lan_ifindex = netns.ifindex(ROUTER_LAN_IF)?;
        let mut datapath = Datapath::load(sizes, None)?;
        let mut config = NatConfig {
            wan_addr: WAN_ADDR.octets(),
            lan_net: plan::LAN_NET.octets(),
            lan_prefix_len: plan::LAN_PREFIX,
            filtering: FILTER_ADDRESS_AND_PORT_DEPENDENT,
            unsolicited: UNSOLICITED_PASS,
            hairpin: 1,
            wan_ifindex,
            lan_ifindex,
            port_min: 1024,
            port_max: 65535,
            low_port_min: 600,
            low_port_max: 1023,
            lan_addr: LAN_ADDR.octets(),
            ..Default::default()
        };
        adjust(&mut config);
        let writer = datapath.maps_mut().writer();
        writer.set_config(&config)?;
        writer.allow_egress(wan_ifindex)?;
        writer.allow_egress(lan_ifindex)?;
        Ok(Self {
            mode,
            datapath,
            config,
            wan_ifindex,
            lan_ifindex,
            next_rule_id: 1,
            netns,
        })
    }

    /// Adds a forwarding entry in `natctl run --forward` syntax.
    pub fn forward(&mut self, spec: &str) -> Result<()> {
        let rule: ForwardRule = spec.parse()?;
        self.datapath
            .maps_mut()
            .writer()
            .apply(&MapChange::between(
                &Default::default(),
                &rule.entries(self.next_rule_id),
            ))?;
        self.next_rule_id += 1;
        Ok(())
    }

    /// Removes the forwarding entry `forward` added for `spec`.
    pub fn unforward(&mut self, spec: &str) -> Result<()> {
        let rule: ForwardRule = spec.parse()?;
        // Removal goes by key: the rule id the entries carry is not asked.
        self.datapath
            .maps_mut()
            .writer()
            .apply(&MapChange::between(&rule.entries(0), &Default::default()))?;
        Ok(())
    }

    /// Writes the configuration again, as a daemon's reload does.
    pub fn rewrite_config(&mut self) -> Result<()> {
        let config = self.config;
        self.datapath.maps_mut().writer().set_config(&config)?;
        Ok(())
    }

    fn run(
        &mut self,
        xdp: &'static str,
        tc: &'static str,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<Verdict> {
        match self.mode {
            Mode::Xdp => self.run_xdp(xdp, ifindex, frame),
            Mode::Tc => self.run_tc(tc, ifindex, frame, SkbMeta::default()),
        }
    }

    /// Runs a TC program on an skb holding `frame`, arrived on `ifindex`.
    pub fn run_tc(
        &mut self,
        program: &'static str,
        ifindex: u32,
        frame: &[u8],
        meta: SkbMeta,
    ) -> Result<Verdict> {
        // struct __sk_buff (192 bytes): only the fields BPF_PROG_TEST_RUN
        // takes in are set: ingress_ifindex (36), ifindex (40), gso_segs
        // (164), gso_size (176).
        let mut ctx = vec![0u8; 192];
        for (offset, value) in [
            (36, ifindex),
            (40, ifindex),
            (164, meta.gso_segs),
            (176, meta.gso_size),
        ] {
            ctx[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .datapath
            .classifier(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        out.truncate(result.data_size_out as usize);
        Ok(Verdict {
            action: tc_as_xdp(result.return_value),
            program_action: result.return_value,
            frame: out,
        })
    }

    fn run_xdp(&mut self, program: &'static str, ifindex: u32, frame: &[u8]) -> Result<Verdict> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|word| word.to_ne_bytes())
            .collect();
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .datapath
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        out.truncate(result.data_size_out as usize);
        Ok(Verdict {
            action: result.return_value,
            program_action: result.return_value,
            frame: out,
        })
    }

    /// Runs `nat_lan` (`nat_lan_tc` in TC mode) on a frame arriving on the
    /// LAN NIC.
    pub fn from_lan(&mut self, frame: &[u8]) -> Result<Verdict> {
        self.run(programs::LAN, programs::LAN_TC, self.lan_ifindex, frame)
    }

    /// Runs `nat_wan` (`nat_wan_tc` in TC mode) on a frame arriving on the
    /// WAN NIC.
    pub fn from_wan(&mut self, frame: &[u8]) -> Result<Verdict> {
        self.run(programs::WAN, programs::WAN_TC, self.wan_ifindex, frame)
    }

    /// Counter label -> packets.
    pub fn counters(&self) -> Result<HashMap<&'static str, u64>> {
        Ok(self
            .datapath
            .maps()
            .view()
            .counters()?
            .into_iter()
            .map(|(counter, value)| (counter.label(), value.packets))
            .collect())
    }
}
