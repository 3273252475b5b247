//! The end-to-end lab: a LAN host, the router and a WAN host, each in a
//! namespace of its own, joined by veth pairs, with the real `natctl`
//! binary running the datapath on the router.
//!
//! ```text
//!  lan host                 router                    wan host
//!  192.168.0.12/24  eth0 -- lan0 192.168.0.1/24
//!  192.168.0.13/24          wan0 203.0.113.1/24 -- eth0 203.0.113.2/24
//! ```
//! The WAN host has no route to the LAN, and the router has no nftables NAT
//! rules, so only the XDP datapath can make LAN <-> WAN traffic work. The
//! LAN host holds two addresses so that hairpin (one LAN host reaching
//! another through the WAN address) can be shown without a bridge.
use std::{
    collections::HashMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use nat_common::programs;

use crate::{
    netns::{Netns, require_root, run},
    wait_for,
};

pub const LAN_SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 12);
pub const LAN_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 13);
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const WAN_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where `natctl` is: `$NATCTL`, or beside the running executable (cargo
/// puts test binaries in `target/<profile>/deps`, binaries one level up).
pub fn natctl_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATCTL") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("natctl");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "natctl not found beside {}: build it first (`cargo build -p nat-ctl --bins`; `cargo xtask test` does) or set NATCTL",
        exe.display()
    )
}

/// A bpffs mounted in a private directory: `ip netns exec` remounts /sys, so
/// pins under /sys/fs/bpf made inside the router's namespace would be
/// invisible to the test; a bpffs elsewhere is seen from everywhere.
struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    fn mount(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir)?;
        run(
            "mount",
            &["-t", "bpf", "bpf", dir.to_str().context("path")?],
        )?;
        Ok(Self { dir })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// A file removed on drop, however the lab's start-up ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Attaches `xdp_pass` to a veth in `netns`: a veth accepts frames that XDP
/// redirects to it only while its peer runs an XDP program.
fn attach_pass(netns: &Netns, interface: &str) -> Result<Ebpf> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Ebpf> {
                netns.enter()?;
                let mut ebpf = Ebpf::load(nat_ctl::datapath::OBJECT)?;
                let program: &mut Xdp = ebpf
                    .program_mut(programs::PASS)
                    .context("xdp_pass missing from the object")?
                    .try_into()?;
                program.load()?;
                let ifindex = nix::net::if_::if_nametoindex(interface)?;
                program.attach_to_if_index(ifindex, XdpMode::Driver)?;
                Ok(ebpf)
            })
            .join()
            .expect("attach thread panicked")
    })
}

pub struct Lab {
    natctl: Option<Child>,
    log: TempFile,
    pins: PathBuf,
    _peer_programs: Vec<Ebpf>,
    _bpffs: BpfFs,
    pub lan: Netns,
    pub router: Netns,
    pub wan: Netns,
}

impl Lab {
    /// Builds the topology and starts `natctl run` on the router with
    /// `extra_args` (e.g. `--forward tcp/8080=192.168.0.12:8000`).
    pub fn start(extra_args: &[&str]) -> Result<Self> {
        require_root();
        let name = format!(
            "nat-lab-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bpffs = BpfFs::mount(std::env::temp_dir().join(&name))?;
        let pins = bpffs.dir.join("natctl");
        let natctl = natctl_path()?;
        let log = TempFile(std::env::temp_dir().join(format!("{name}.log")));

        let lan = Netns::new("lan")?;
        let router = Netns::new("router")?;
        let wan = Netns::new("wan")?;
        router.veth("lan0", &lan, "eth0")?;
        router.veth("wan0", &wan, "eth0")?;
        router.ip(&["addr", "add", "192.168.0.1/24", "dev", "lan0"])?;
        router.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"])?;
        lan.ip(&["addr", "add", "192.168.0.12/24", "dev", "eth0"])?;
        lan.ip(&["addr", "add", "192.168.0.13/24", "dev", "eth0"])?;
        lan.ip(&["route", "add", "default", "via", "192.168.0.1"])?;
        wan.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
        // No route back to 192.168.0.0/24 on the WAN host: only NAT works.

        // A veth hands the router TCP/UDP packets whose checksum is only the
        // pseudo-header sum (checksum offload, CHECKSUM_PARTIAL); once XDP
        // redirects such a frame that state is lost and the receiver drops
        // it. Real NICs put full checksums on the wire, so make the hosts'
        // veths do the same.
        for host in [&lan, &wan] {
            host.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        }

        let peer_programs = vec![attach_pass(&lan, "eth0")?, attach_pass(&wan, "eth0")?];

        let log_file = fs::File::create(&log.0)?;
        let mut command = router.command(natctl.to_str().context("path")?);
        command
            .args(["run", "--wan", "wan0", "--lan", "lan0", "--pin-dir"])
            .arg(&pins)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let natctl = command.spawn().context("starting natctl")?;
        let mut lab = Self {
            natctl: Some(natctl),
            log,
            pins,
            _peer_programs: peer_programs,
            _bpffs: bpffs,
            lan,
            router,
            wan,
        };
        lab.wait_running()?;
        Ok(lab)
    }

    fn wait_running(&mut self) -> Result<()> {
        let log = self.log.0.clone();
        let child = self.natctl.as_mut().expect("natctl running");
        let ready = wait_for(
            "natctl to attach the datapath",
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(status));
                }
                let text = fs::read_to_string(&log).unwrap_or_default();
                text.contains("NAT running").then_some(Ok(()))
            },
        );
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => bail!("natctl exited ({status}): {}", self.natctl_log()),
            Err(error) => bail!("{error}: {}", self.natctl_log()),
        }
    }

    pub fn natctl_log(&self) -> String {
        fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins
    }

    /// Runs a `natctl` subcommand against this lab's datapath.
    pub fn natctl(&self, args: &[&str]) -> Result<String> {
        let natctl = natctl_path()?;
        let output = Command::new(&natctl)
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pins)
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

    /// Counter label -> packets.
    pub fn counters(&self) -> Result<HashMap<String, u64>> {
        let json: serde_json::Value = serde_json::from_str(&self.natctl(&["stats", "--json"])?)?;
        let object = json.as_object().context("stats --json is not an object")?;
        Ok(object
            .iter()
            .map(|(label, value)| (label.clone(), value["packets"].as_u64().unwrap_or(0)))
            .collect())
    }

    pub fn table(&self) -> Result<Vec<serde_json::Value>> {
        let json: serde_json::Value = serde_json::from_str(&self.natctl(&["table", "--json"])?)?;
        Ok(json
            .as_array()
            .context("table --json is not an array")?
            .clone())
    }

    /// Stops natctl with SIGTERM and returns its output.
    pub fn stop(&mut self) -> Result<String> {
        if let Some(mut child) = self.natctl.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = wait_for("natctl to stop", Duration::from_secs(15), || {
                child.try_wait().ok().flatten()
            });
            if status.is_err() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("natctl did not stop on SIGTERM: {}", self.natctl_log());
            }
        }
        Ok(self.natctl_log())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.natctl.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Then the fields: the log, peer programs, the bpffs, the namespaces.
    }
}
