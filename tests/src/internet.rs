//! Two homes on one Internet, each behind its own `natctl` router: for the
//! tests that need two NATs between two hosts (UDP and TCP hole punching,
//! TCP simultaneous open), as peer-to-peer apps meet them.
//!
//! ```text
//!  home A                                                      home B
//!  a1 192.168.0.12 ─┐                                        ┌─ b1 192.168.0.12
//!  a2 192.168.0.13 ─┴─ br0 ── router A ─┐    ┌─ router B ── br0 ─┘
//!                    (switch)  203.0.113.1  │    │  203.0.113.3  (switch)
//!                                          br0 (the Internet)
//!                                     rendezvous server 203.0.113.2
//! ```
//!
//! Both homes use the same private prefix, as real ones do; each LAN is a
//! bridge (a switch namespace) with its hosts in namespaces of their own,
//! their NICs at their defaults. Every frame a router sends to the
//! Internet is captured and the lab fails on any LAN-prefix source.
use std::{
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::{
    capture::WanCapture,
    lab::{BpfFs, TempDir, TempFile, natctl_path, spawn_daemon, tear_down},
    netns::{Netns, require_root},
    plan::{self, LAN_PREFIX, ROUTER_LAN, WAN_PREFIX},
};

/// Router A's public address.
pub const ROUTER_A: Ipv4Addr = plan::ROUTER_WAN;
/// Router B's public address.
pub const ROUTER_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// The rendezvous server both homes' hosts reach.
pub const SERVER: Ipv4Addr = plan::WAN_HOST;
/// The hosts of home A; home B has the first of them only.
pub const HOST_1: Ipv4Addr = plan::LAN_HOST;
pub const HOST_2: Ipv4Addr = plan::LAN_HOST2;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One home: a router running `natctl daemon`, a switch, and its hosts.
pub struct Home {
    daemon: Option<Child>,
    log: TempFile,
    pins: PathBuf,
    state: TempDir,
    _bpffs: BpfFs,
    pub hosts: Vec<Netns>,
    pub switch: Netns,
    pub router: Netns,
}

impl Home {
    /// Builds the home, its router's `wan0` a port (`port`, in `internet`)
    /// of the Internet's bridge, and starts the daemon with `extra` in its
    /// configuration.
    fn build(
        internet: &Netns,
        port: &str,
        public: Ipv4Addr,
        hosts: &[Ipv4Addr],
        extra: &str,
    ) -> Result<Self> {
        let name = format!(
            "nat-home-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bpffs = BpfFs::mount(std::env::temp_dir().join(&name))?;
        let pins = bpffs.dir.join("natctl");
        let state = TempDir(std::env::temp_dir().join(format!("{name}-state")));
        fs::create_dir_all(&state.0)?;
        let log = TempFile(std::env::temp_dir().join(format!("{name}.log")));

        let router = Netns::new("router")?;
        internet.veth(port, &router, plan::ROUTER_WAN_IF)?;
        internet.ip(&["link", "set", port, "master", "br0"])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{public}/{WAN_PREFIX}"),
            "dev",
            plan::ROUTER_WAN_IF,
        ])?;

        let switch = Netns::new("switch")?;
        bridge(&switch)?;
        switch.veth("router", &router, plan::ROUTER_LAN_IF)?;
        switch.ip(&["link", "set", "router", "master", "br0"])?;
        router.ip(&[
            "addr",
            "add",
            &plan::cidr(ROUTER_LAN),
            "dev",
            plan::ROUTER_LAN_IF,
        ])?;
        let mut lan_hosts = Vec::new();
        for (index, addr) in hosts.iter().enumerate() {
            let host = Netns::new("host")?;
            let port = format!("host{index}");
            switch.veth(&port, &host, plan::HOST_IF)?;
            switch.ip(&["link", "set", &port, "master", "br0"])?;
            host.ip(&[
                "addr",
                "add",
                &format!("{addr}/{LAN_PREFIX}"),
                "dev",
                plan::HOST_IF,
            ])?;
            host.ip(&["route", "add", "default", "via", &ROUTER_LAN.to_string()])?;
            lan_hosts.push(host);
        }

        let mut home = Self {
            daemon: None,
            log,
            pins: pins.clone(),
            state,
            _bpffs: bpffs,
            hosts: lan_hosts,
            switch,
            router,
        };
        let config = home.state.0.join("natctl.toml");
        fs::write(
            &config,
            format!(
                "rules_file = {:?}\nsocket = {:?}\npin_dir = {:?}\n{extra}\n",
                home.state.0.join("rules.toml"),
                home.socket(),
                pins
            ),
        )?;
        home.daemon = Some(spawn_daemon(
            &home.router,
            &home.socket(),
            &config,
            "auto",
            &[],
            &[],
            &home.log.0,
        )?);
        Ok(home)
    }

    pub fn socket(&self) -> PathBuf {
        self.state.0.join("natctl.sock")
    }

    pub fn natctl_log(&self) -> String {
        fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    /// `natctl table --json` of this home's router.
    pub fn table(&self) -> Result<serde_json::Value> {
        let output = Command::new(natctl_path()?)
            .arg("--socket")
            .arg(self.socket())
            .args(["table", "--json"])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "natctl table: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        tear_down(self.daemon.take(), &self.socket(), &self.pins);
    }
}

/// The Internet: a bridge with the rendezvous server's address on it, and
/// two homes.
pub struct Internet {
    captures: Vec<WanCapture>,
    pub a: Home,
    pub b: Home,
    /// The bridge's namespace, where the server's sockets live.
    pub server: Netns,
}

impl Internet {
    /// Home A with two hosts, home B with one, both routers configured with
    /// `extra` (e.g. a `[nat]` table).
    pub fn start(extra: &str) -> Result<Self> {
        require_root();
        let server = Netns::new("internet")?;
        bridge(&server)?;
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER}/{WAN_PREFIX}"),
            "dev",
            "br0",
        ])?;
        // Each capture opens before any host sends.
        let a =
            Home::build(&server, "home-a", ROUTER_A, &[HOST_1, HOST_2], extra).context("home A")?;
        let capture_a = WanCapture::start(&server, "home-a")?;
        let b = Home::build(&server, "home-b", ROUTER_B, &[HOST_1], extra).context("home B")?;
        let capture_b = WanCapture::start(&server, "home-b")?;
        Ok(Self {
            captures: vec![capture_a, capture_b],
            a,
            b,
            server,
        })
    }

    /// The two routers' logs, for a failure's message.
    pub fn logs(&self) -> String {
        format!(
            "--- router A\n{}--- router B\n{}",
            self.a.natctl_log(),
            self.b.natctl_log()
        )
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for capture in &mut self.captures {
            if let Err(error) = capture.finish()
                && !std::thread::panicking()
            {
                panic!("{error:#}");
            }
        }
    }
}

/// A bridge `br0`, up, in `netns`.
fn bridge(netns: &Netns) -> Result<()> {
    netns.ip(&["link", "add", "br0", "type", "bridge"])?;
    netns.ip(&["link", "set", "br0", "up"])?;
    Ok(())
}
