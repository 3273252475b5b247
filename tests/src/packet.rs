//! Runs the datapath on crafted frames through `BPF_PROG_TEST_RUN`, inside a
//! namespace of its own so that the FIB and neighbour lookups see a known
//! router: WAN NIC 203.0.113.1/24 with a default route via 203.0.113.254,
//! LAN NIC 192.168.0.1/24, fixed MACs and permanent neighbour entries.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use nat_common::{FILTER_ADDRESS_AND_PORT_DEPENDENT, NatConfig, UNSOLICITED_PASS, programs};
use nat_ctl::{
    datapath::{Datapath, MapChange, TableSizes},
    rules::ForwardRule,
};

use crate::netns::{Netns, require_root};

pub const WAN_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
/// A host out on the Internet, reached through the gateway.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
pub const LAN_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const LAN_HOST2: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);
pub const LAN_HOST2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0d];
/// A LAN address with no neighbour entry.
pub const LAN_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 99);

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub struct Verdict {
    pub action: u32,
    pub frame: Vec<u8>,
}

pub struct PacketLab {
    pub datapath: Datapath,
    pub config: NatConfig,
    pub wan_ifindex: u32,
    pub lan_ifindex: u32,
    next_rule_id: u32,
    // Last, so that the namespace goes after the datapath.
    pub netns: Netns,
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

impl PacketLab {
    /// A router with the default configuration (address-and-port-dependent
    /// filtering, unsolicited packets to the kernel, hairpin on, dynamic
    /// ports 1024-65535).
    pub fn new() -> Result<Self> {
        Self::with_config(|_| {})
    }

    pub fn with_config(adjust: impl FnOnce(&mut NatConfig)) -> Result<Self> {
        require_root();
        let netns = Netns::new("pkt")?;
        // Both ends of each veth stay in the namespace: the peers only have
        // to exist and be up for the router's NICs to be up.
        let setup: &[&[&str]] = &[
            &[
                "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p",
            ],
            &[
                "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
            ],
            &["link", "set", "wan0", "address", &mac(WAN_MAC)],
            &["link", "set", "lan0", "address", &mac(LAN_MAC)],
            &["link", "set", "wan0p", "up"],
            &["link", "set", "lan0p", "up"],
            &["link", "set", "wan0", "up"],
            &["link", "set", "lan0", "up"],
            &["addr", "add", "203.0.113.1/24", "dev", "wan0"],
            &["addr", "add", "192.168.0.1/24", "dev", "lan0"],
            &[
                "route",
                "add",
                "default",
                "via",
                "203.0.113.254",
                "dev",
                "wan0",
            ],
            &[
                "neigh",
                "replace",
                "203.0.113.254",
                "lladdr",
                &mac(GATEWAY_MAC),
                "dev",
                "wan0",
                "nud",
                "permanent",
            ],
            &[
                "neigh",
                "replace",
                "192.168.0.12",
                "lladdr",
                &mac(LAN_HOST_MAC),
                "dev",
                "lan0",
                "nud",
                "permanent",
            ],
            &[
                "neigh",
                "replace",
                "192.168.0.13",
                "lladdr",
                &mac(LAN_HOST2_MAC),
                "dev",
                "lan0",
                "nud",
                "permanent",
            ],
        ];
        for args in setup {
            netns.ip(args)?;
        }
        netns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        netns.enter()?;
        let wan_ifindex = netns.ifindex("wan0")?;
        let lan_ifindex = netns.ifindex("lan0")?;
        let mut datapath = Datapath::load(TableSizes::default(), None)?;
        let mut config = NatConfig {
            wan_addr: WAN_ADDR.octets(),
            lan_net: [192, 168, 0, 0],
            lan_prefix_len: 24,
            filtering: FILTER_ADDRESS_AND_PORT_DEPENDENT,
            unsolicited: UNSOLICITED_PASS,
            hairpin: 1,
            wan_ifindex,
            lan_ifindex,
            port_min: 1024,
            port_max: 65535,
        };
        adjust(&mut config);
        let writer = datapath.maps_mut().writer();
        writer.set_config(&config)?;
        writer.allow_egress(wan_ifindex)?;
        writer.allow_egress(lan_ifindex)?;
        Ok(Self {
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

    fn run(&mut self, program: &'static str, ifindex: u32, frame: &[u8]) -> Result<Verdict> {
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
            frame: out,
        })
    }

    /// Runs `nat_lan` on a frame arriving on the LAN NIC.
    pub fn from_lan(&mut self, frame: &[u8]) -> Result<Verdict> {
        self.run(programs::LAN, self.lan_ifindex, frame)
    }

    /// Runs `nat_wan` on a frame arriving on the WAN NIC.
    pub fn from_wan(&mut self, frame: &[u8]) -> Result<Verdict> {
        self.run(programs::WAN, self.wan_ifindex, frame)
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
