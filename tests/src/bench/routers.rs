//! The routers of the benchmark topology other than the plain forwarder:
//! our NAT loaded by this process ([`nat_lib`]), our NAT run by the real
//! `natctl daemon` ([`NatDaemon`]), and nftables masquerade
//! ([`nftables_nat`], with a flowtable where [`flowtable_support`] finds one).
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nat_common::{FILTER_ADDRESS_AND_PORT_DEPENDENT, NatConfig, UNSOLICITED_PASS, programs};
use nat_ctl::{
    datapath::{AttachMode, Datapath, MapChange, TableSizes},
    rules::ForwardRule,
};

use super::{
    PrivateBpffs,
    topo::{FORWARD_PORT, LAN_HOST, ROUTER_WAN},
};
use crate::{
    lab::natctl_path,
    netns::Netns,
    plan::{self, ROUTER_LAN_IF, ROUTER_WAN_IF},
    wait_for,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Our NAT loaded and attached by this process (call inside the router's
/// namespace).
pub(super) fn nat_lib(
    sizes: TableSizes,
    forward: bool,
    lan_ifindex: u32,
    wan_ifindex: u32,
) -> Result<Datapath> {
    let mut datapath = Datapath::load(sizes, None)?;
    let writer = datapath.maps_mut().writer();
    writer.set_config(&NatConfig {
        wan_addr: ROUTER_WAN.octets(),
        lan_net: plan::LAN_NET.octets(),
        lan_prefix_len: plan::LAN_PREFIX,
        filtering: FILTER_ADDRESS_AND_PORT_DEPENDENT,
        unsolicited: UNSOLICITED_PASS,
        hairpin: 1,
        wan_ifindex,
        lan_ifindex,
        port_min: 1024,
        port_max: 65535,
        ..Default::default()
    })?;
    writer.allow_egress(wan_ifindex)?;
    writer.allow_egress(lan_ifindex)?;
    if forward {
        let rule: ForwardRule = format!("udp/{FORWARD_PORT}={LAN_HOST}:{FORWARD_PORT}").parse()?;
        writer.apply(&MapChange::between(&Default::default(), &rule.entries(1)))?;
    }
    datapath.attach(
        programs::LAN,
        ROUTER_LAN_IF,
        lan_ifindex,
        AttachMode::Native,
    )?;
    datapath.attach(
        programs::WAN,
        ROUTER_WAN_IF,
        wan_ifindex,
        AttachMode::Native,
    )?;
    Ok(datapath)
}

/// The kernel's NAT on the same topology, as a careful user sets it up:
/// masquerade out of wan0 and the forwarded port as a DNAT rule, nothing
/// else in the ruleset, and conntrack not verifying every packet's L4
/// checksum (`nf_conntrack_checksum=0`, OpenWrt's default: a router
/// forwards what it did not terminate). With `flowtable`, established
/// flows take nftables' software fast path at ingress.
pub(super) fn nftables_nat(router: &Netns, flowtable: bool) -> Result<()> {
    router.sysctl("net.netfilter.nf_conntrack_checksum", "0")?;
    let fast_path = if flowtable {
        format!(
            "    flowtable fastpath {{
        hook ingress priority filter; devices = {{ {ROUTER_LAN_IF}, {ROUTER_WAN_IF} }};
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        meta l4proto {{ tcp, udp }} flow add @fastpath
    }}
"
        )
    } else {
        String::new()
    };
    let rules = format!(
        "table ip natbench {{
{fast_path}    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname \"{ROUTER_WAN_IF}\" udp dport {FORWARD_PORT} dnat to {LAN_HOST}:{FORWARD_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{ROUTER_WAN_IF}\" masquerade
    }}
}}
"
    );
    nft_file(router, &rules)
}

/// Whether nftables can make a flowtable in `router`'s namespace: `Err`
/// holds what nft said (on a kernel without `CONFIG_NF_FLOW_TABLE`).
pub(crate) fn flowtable_support() -> Result<(), String> {
    let router = Netns::new("bprobe").map_err(|error| format!("{error:#}"))?;
    router
        .ip(&[
            "link",
            "add",
            ROUTER_LAN_IF,
            "type",
            "veth",
            "peer",
            "name",
            "probe1",
        ])
        .map_err(|error| format!("{error:#}"))?;
    let probe = format!(
        "table ip natbench_probe {{
    flowtable probe {{ hook ingress priority filter; devices = {{ {ROUTER_LAN_IF} }}; }}
}}
"
    );
    nft_file(&router, &probe).map_err(|error| {
        // nft's own words, without the temporary file's name and place.
        let text = format!("{error:#}");
        let said = text
            .lines()
            .find_map(|line| line.split_once("Error: ").map(|(_, said)| said.trim()))
            .unwrap_or(text.trim());
        format!("nft cannot add a flowtable ({said}); the kernel needs CONFIG_NF_FLOW_TABLE")
    })
}

fn nft_file(router: &Netns, rules: &str) -> Result<()> {
    let path = std::env::temp_dir().join(format!(
        "natbench-{}-{}.nft",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&path, rules)?;
    let result = router.exec("nft", &["-f", path.to_str().context("path")?]);
    let _ = fs::remove_file(&path);
    result.map(drop)
}

/// `natctl daemon` in the router's namespace, with its pins in a private
/// bpffs and its state in a temporary directory, as the end-to-end lab runs
/// it.
pub(super) struct NatDaemon {
    child: Option<Child>,
    dir: PathBuf,
    // After the daemon, which pins into it.
    bpffs: PrivateBpffs,
}

impl NatDaemon {
    /// `attach`: `xdp` or `tc`, the daemon's `--attach`.
    pub(super) fn start(router: &Netns, attach: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "natbench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        let mut daemon = Self {
            child: None,
            dir: dir.clone(),
            bpffs: PrivateBpffs::mount("natctl")?,
        };
        let config = dir.join("natctl.toml");
        fs::write(
            &config,
            format!(
                "rules_file = {:?}\nsocket = {:?}\npin_dir = {:?}\n\n[upnp]\nenabled = false\n",
                dir.join("rules.toml"),
                daemon.socket(),
                daemon.pins()
            ),
        )?;
        let log = dir.join("natctl.log");
        let log_file = fs::File::create(&log)?;
        let natctl = natctl_path()?;
        let mut command = router.command(natctl.to_str().context("path")?);
        command
            .arg("--socket")
            .arg(daemon.socket())
            .args([
                "daemon",
                "--wan",
                ROUTER_WAN_IF,
                "--lan",
                ROUTER_LAN_IF,
                "--attach",
                attach,
                "--config",
            ])
            .arg(&config)
            .env("NATCTL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        daemon.child = Some(command.spawn().context("starting natctl daemon")?);
        let child = daemon.child.as_mut().expect("just set");
        let ready = wait_for(
            "natctl daemon to serve its API",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(status));
                }
                fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("API on")
                    .then_some(Ok(()))
            },
        );
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(status)) => bail!(
                "natctl daemon exited ({status}): {}",
                fs::read_to_string(&log).unwrap_or_default()
            ),
            Err(error) => bail!("{error}: {}", fs::read_to_string(&log).unwrap_or_default()),
        }
        daemon.natctl(&[
            "add",
            "bench",
            "--proto",
            "udp",
            "--external",
            &FORWARD_PORT.to_string(),
            "--internal",
            &format!("{LAN_HOST}:{FORWARD_PORT}"),
        ])?;
        Ok(daemon)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("natctl.sock")
    }

    fn pins(&self) -> PathBuf {
        self.bpffs.path().join("natctl")
    }

    pub(super) fn natctl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(natctl_path()?)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()?;
        if !output.status.success() {
            bail!(
                "natctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

impl Drop for NatDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(natctl) = natctl_path() {
            let _ = Command::new(natctl)
                .arg("--socket")
                .arg(self.socket())
                .args(["down", "--pin-dir"])
                .arg(self.pins())
                .output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
