//! The comparison topology: the lab's namespaces and addresses with the
//! kernel doing the routing and NAT (nftables) and no natctl at all.
//!
//! ```text
//!  lan host                 router                    wan host
//!  192.168.0.12/24  eth0 -- lan0 192.168.0.1/24
//!  192.168.0.13/24          wan0 203.0.113.1/24 -- eth0 203.0.113.2/24
//! ```
//! As in `crate::lab::Lab`, the hosts' veths normally have transmit
//! checksum offload off and `xdp_pass` attached, so that the two routers
//! are compared with identical hosts; the router's veths run no XDP
//! program.
use std::{fs, path::PathBuf};

use crate::{lab::attach_pass, netns::Netns, plan};
use anyhow::{Context, Result};
use aya::Ebpf;

/// A directory removed with its contents on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "upnpbench-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub struct KernelLab {
    // Dropped first: the programs, then the namespaces.
    _peer_programs: Vec<Ebpf>,
    pub lan: Netns,
    pub router: Netns,
    pub wan: Netns,
}

impl KernelLab {
    /// The topology with forwarding on and `ruleset` (nft syntax) loaded in
    /// the router. `wan_label`, if given, is put on wan0 before
    /// 203.0.113.1/24 (see `upnp::MINIUPNPD_EXT_LABEL` for why). With
    /// `lab_hosts`, the hosts are set up as the lab's (tx checksum offload
    /// off, `xdp_pass`); without, they keep the veth defaults (TSO/GSO).
    pub fn start(ruleset: &str, wan_label: Option<&str>, lab_hosts: bool) -> Result<Self> {
        let lan = Netns::new("ulan")?;
        let router = Netns::new("urouter")?;
        let wan = Netns::new("uwan")?;
        plan::link_hosts(&router, &lan, &wan, wan_label)?;
        // No route back to the LAN on the WAN host: only NAT works.
        router.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        let mut peer_programs = Vec::new();
        if lab_hosts {
            for host in [&lan, &wan] {
                host.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
            }
            peer_programs = vec![attach_pass(&lan, "eth0")?, attach_pass(&wan, "eth0")?];
        }
        let lab = Self {
            _peer_programs: peer_programs,
            lan,
            router,
            wan,
        };
        lab.load_ruleset(ruleset)?;
        Ok(lab)
    }

    pub fn load_ruleset(&self, ruleset: &str) -> Result<()> {
        let dir = TempDir::new("nft")?;
        let path = dir.0.join("ruleset.nft");
        fs::write(&path, ruleset)?;
        self.router
            .exec("nft", &["-f", path.to_str().context("path")?])
            .context("loading the router's nftables ruleset")?;
        Ok(())
    }
}
