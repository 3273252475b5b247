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
//! rules, so only the datapath can make LAN <-> WAN traffic work.
//!
//! [`Lab::start`] leaves the hosts' veths as they come (TX checksum offload,
//! TSO on: they hand the router CHECKSUM_PARTIAL and GSO packets) and runs
//! the daemon with `--attach auto`, which picks TC on veth.
//! [`Lab::start_xdp`] shows XDP mode: `--attach xdp`, and the hosts' TX
//! checksum offload off, since XDP cannot keep partial checksums right. The
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
    capture::WanCapture,
    netns::{Netns, require_root, run},
    plan, wait_for,
};

pub use crate::plan::{ROUTER_LAN, ROUTER_WAN, WAN_HOST};
/// The LAN host's address that serves (see [`crate::plan`]).
pub const LAN_SERVER: Ipv4Addr = plan::LAN_HOST;
/// The LAN host's address that acts as a client.
pub const LAN_CLIENT: Ipv4Addr = plan::LAN_HOST2;

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
pub(crate) struct BpfFs {
    pub(crate) dir: PathBuf,
}

impl BpfFs {
    pub(crate) fn mount(dir: PathBuf) -> Result<Self> {
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
pub(crate) struct TempFile(pub(crate) PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Attaches `xdp_pass` to a veth in `netns`: a veth accepts frames that XDP
/// redirects to it only while its peer runs an XDP program.
pub fn attach_pass(netns: &Netns, interface: &str) -> Result<Ebpf> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Ebpf> {
                netns.enter()?;
                let mut ebpf = Ebpf::load(nat_ctl::datapath::OBJECT)?;
                let program: &mut Xdp = ebpf
                    .program_mut(programs::PASS)
                    .context("xdp_pass missing from the object")?
                    .try_into()?;
                nat_ctl::datapath::load_retrying(|| program.load())?;
                let ifindex = nix::net::if_::if_nametoindex(interface)?;
                program.attach_to_if_index(ifindex, XdpMode::Driver)?;
                Ok(ebpf)
            })
            .join()
            .expect("attach thread panicked")
    })
}

/// Starts `natctl daemon --wan wan0 --lan lan0` in `router`, its output
/// appended to `log`, and waits until it serves its API on `socket`.
pub(crate) fn spawn_daemon(
    router: &Netns,
    socket: &Path,
    config: &Path,
    attach: &str,
    extra_args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Child> {
    let natctl = natctl_path()?;
    let log_file = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let before = fs::metadata(log)?.len() as usize;
    let mut command = router.command(natctl.to_str().context("path")?);
    command
        .args(["--socket"])
        .arg(socket)
        .args(["daemon", "--wan", "wan0", "--lan", "lan0", "--config"])
        .arg(config)
        .args(["--attach", attach])
        .args(extra_args)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .env("NATCTL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let mut child = command.spawn().context("starting natctl daemon")?;
    let ready = wait_for(
        "natctl daemon to serve its API",
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(status));
            }
            let text = fs::read_to_string(log).unwrap_or_default();
            text.get(before..)
                .is_some_and(|new| new.contains("API on"))
                .then_some(Ok(()))
        },
    );
    let text = || fs::read_to_string(log).unwrap_or_default();
    match ready {
        Ok(Ok(())) => Ok(child),
        Ok(Err(status)) => bail!("natctl daemon exited ({status}): {}", text()),
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{error}: {}", text())
        }
    }
}

/// The attach mode a lab's daemon runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabMode {
    /// `--attach auto`, hosts' offloads at their defaults (TC on veth).
    Auto,
    /// `--attach xdp`, hosts' TX checksum offload off.
    Xdp,
}

pub struct Lab {
    mode: LabMode,
    daemon: Option<Child>,
    /// More arguments and environment for `natctl daemon` (e.g. the
    /// schedules' test clock), used by every (re)start.
    daemon_args: Vec<String>,
    daemon_env: Vec<(String, String)>,
    log: TempFile,
    pins: PathBuf,
    state: TempDir,
    config: PathBuf,
    _peer_programs: Vec<Ebpf>,
    _bpffs: BpfFs,
    /// Every frame the router sends to the WAN host, checked on drop.
    capture: Option<WanCapture>,
    pub lan: Netns,
    pub router: Netns,
    pub wan: Netns,
}

/// A directory removed with its contents on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    /// Builds the topology and starts `natctl daemon` on the router with
    /// the default configuration.
    pub fn start() -> Result<Self> {
        Self::start_with_config("")
    }

    /// As [`Lab::start`], with `extra` appended to the daemon's
    /// configuration file (e.g. a `[timeouts]` table).
    pub fn start_with_config(extra: &str) -> Result<Self> {
        Self::start_in(LabMode::Auto, extra)
    }

    /// As [`Lab::start`], in XDP mode (see the module's documentation).
    pub fn start_xdp() -> Result<Self> {
        Self::start_in(LabMode::Xdp, "")
    }

    pub fn start_in(mode: LabMode, extra: &str) -> Result<Self> {
        Self::start_with_daemon(mode, extra, &[], &[])
    }

    /// As [`Lab::start_in`], with more `natctl daemon` arguments and
    /// environment variables.
    pub fn start_with_daemon(
        mode: LabMode,
        extra: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        require_root();
        let name = format!(
            "nat-lab-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bpffs = BpfFs::mount(std::env::temp_dir().join(&name))?;
        let pins = bpffs.dir.join("natctl");
        let state = TempDir(std::env::temp_dir().join(format!("{name}-state")));
        fs::create_dir_all(&state.0)?;
        let config = state.0.join("natctl.toml");
        fs::write(
            &config,
            format!(
                "rules_file = {:?}\nsocket = {:?}\npin_dir = {:?}\n{extra}\n",
                state.0.join("rules.toml"),
                state.0.join("natctl.sock"),
                pins
            ),
        )?;
        let log = TempFile(std::env::temp_dir().join(format!("{name}.log")));

        let lan = Netns::new("lan")?;
        let router = Netns::new("router")?;
        let wan = Netns::new("wan")?;
        plan::link_hosts(&router, &lan, &wan, None)?;
        // No route back to the LAN on the WAN host: only NAT works.

        let mut peer_programs = Vec::new();
        if mode == LabMode::Xdp {
            // A veth hands the router TCP/UDP packets whose checksum is only
            // the pseudo-header sum (checksum offload, CHECKSUM_PARTIAL);
            // once XDP redirects such a frame that state is lost and the
            // receiver drops it. Real NICs, where XDP mode is for, put full
            // checksums on the wire, so make the hosts' veths do the same.
            for host in [&lan, &wan] {
                host.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
            }
            peer_programs = vec![attach_pass(&lan, "eth0")?, attach_pass(&wan, "eth0")?];
        }
        let capture = Some(WanCapture::start(&wan, plan::HOST_IF)?);
        let mut lab = Self {
            mode,
            daemon: None,
            daemon_args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            daemon_env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            log,
            pins,
            state,
            config,
            _peer_programs: peer_programs,
            _bpffs: bpffs,
            capture,
            lan,
            router,
            wan,
        };
        lab.start_daemon()?;
        Ok(lab)
    }

    /// Starts `natctl daemon` in the router's namespace and waits until it
    /// serves its API (a restart picks up the pinned datapath).
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("the daemon is already running");
        }
        let attach = match self.mode {
            LabMode::Auto => "auto",
            LabMode::Xdp => "xdp",
        };
        self.daemon = Some(spawn_daemon(
            &self.router,
            &self.socket(),
            &self.config,
            attach,
            &self.daemon_args,
            &self.daemon_env,
            &self.log.0,
        )?);
        Ok(())
    }

    /// A WAN host's TCP connection to the router's WAN address on `port`
    /// reaches `listener` on the LAN: the bytes arrive, a reply goes back.
    /// Returns the peer address the LAN server saw.
    pub fn wan_tcp_reaches(
        &self,
        port: u16,
        listener: &std::net::TcpListener,
    ) -> std::net::SocketAddr {
        use std::io::{Read as _, Write as _};
        let client = self.wan.spawn(move || {
            let mut stream = crate::traffic::connect((ROUTER_WAN, port).into())?;
            stream.write_all(b"hello from the wan")?;
            let mut reply = [0u8; 2];
            stream.read_exact(&mut reply)?;
            anyhow::ensure!(&reply == b"ok", "unexpected reply {reply:?}");
            Ok(())
        });
        let (mut stream, peer) = crate::traffic::accept(listener).unwrap();
        let mut request = [0u8; 18];
        stream.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"hello from the wan");
        stream.write_all(b"ok").unwrap();
        client
            .join()
            .expect("the WAN client panicked")
            .expect("the WAN client failed");
        peer
    }

    /// The extra `natctl daemon` arguments the next start uses.
    pub fn set_daemon_args(&mut self, args: &[&str]) {
        self.daemon_args = args.iter().map(|arg| (*arg).to_owned()).collect();
    }

    /// Kills the daemon with SIGKILL: no clean-up at all.
    pub fn kill_daemon(&mut self) -> Result<()> {
        let mut child = self.daemon.take().context("no daemon running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Ends the WAN capture now and fails if any frame the router sent
    /// out of its WAN NIC had a LAN-prefix source (the lab checks this on
    /// drop anyway); returns how many frames it saw.
    pub fn check_no_lan_leak(&mut self) -> Result<u64> {
        match self.capture.take() {
            Some(mut capture) => capture.finish(),
            None => Ok(0),
        }
    }

    pub fn natctl_log(&self) -> String {
        fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins
    }

    pub fn socket(&self) -> PathBuf {
        self.state.0.join("natctl.sock")
    }

    pub fn rules_file(&self) -> PathBuf {
        self.state.0.join("rules.toml")
    }

    pub fn config_file(&self) -> &Path {
        &self.config
    }

    /// Runs a `natctl` subcommand against this lab's daemon, whatever the
    /// outcome.
    pub fn natctl_output(&self, args: &[&str]) -> Result<std::process::Output> {
        let natctl = natctl_path()?;
        Ok(Command::new(&natctl)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()?)
    }

    /// Runs a `natctl` subcommand that must succeed; returns its stdout.
    pub fn natctl(&self, args: &[&str]) -> Result<String> {
        let output = self.natctl_output(args)?;
        if !output.status.success() {
            bail!(
                "natctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Runs a `natctl` command given as one string (arguments split at
    /// spaces) that must succeed; panics with the daemon's log otherwise.
    pub fn run(&self, command: &str) -> String {
        let args: Vec<&str> = command.split_whitespace().collect();
        self.natctl(&args)
            .unwrap_or_else(|error| panic!("{error:#}\n{}", self.natctl_log()))
    }

    /// `natctl list --json`: the rules as the daemon lists them.
    pub fn rules(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.run("list --json"))
            .expect("list --json is JSON")
            .as_array()
            .expect("list --json is an array")
            .clone()
    }

    /// The names of the programs on the TC (TCX) ingress of the router's
    /// `dev`.
    pub fn tc_ingress_programs(&self, dev: &str) -> Result<Vec<String>> {
        let dev = dev.to_owned();
        self.router
            .spawn(move || {
                let (_, programs) = aya::programs::SchedClassifier::query_tcx(
                    &dev,
                    aya::programs::TcAttachType::Ingress,
                )?;
                Ok(programs
                    .iter()
                    .map(|info| info.name_as_str().unwrap_or("?").to_owned())
                    .collect())
            })
            .join()
            .expect("query thread panicked")
    }

    /// `natctl status` (JSON).
    pub fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.natctl(&["status"])?)?)
    }

    /// Counter label -> bytes.
    pub fn counter_bytes(&self) -> Result<HashMap<String, u64>> {
        let json: serde_json::Value = serde_json::from_str(&self.natctl(&["stats", "--json"])?)?;
        let object = json["counters"]
            .as_object()
            .context("stats --json has no counters object")?;
        Ok(object
            .iter()
            .map(|(label, value)| (label.clone(), value["bytes"].as_u64().unwrap_or(0)))
            .collect())
    }

    /// Counter label -> packets.
    pub fn counters(&self) -> Result<HashMap<String, u64>> {
        let json: serde_json::Value = serde_json::from_str(&self.natctl(&["stats", "--json"])?)?;
        let object = json["counters"]
            .as_object()
            .context("stats --json has no counters object")?;
        Ok(object
            .iter()
            .map(|(label, value)| (label.clone(), value["packets"].as_u64().unwrap_or(0)))
            .collect())
    }

    pub fn table(&self) -> Result<Vec<serde_json::Value>> {
        self.table_filtered(&[])
    }

    /// `natctl table --json` with filter arguments such as `--proto udp`.
    pub fn table_filtered(&self, filter: &[&str]) -> Result<Vec<serde_json::Value>> {
        let mut args = vec!["table", "--json"];
        args.extend_from_slice(filter);
        let json: serde_json::Value = serde_json::from_str(&self.natctl(&args)?)?;
        Ok(json
            .as_array()
            .context("table --json is not an array")?
            .clone())
    }

    /// Stops the daemon with SIGTERM (the datapath stays) and returns the
    /// log.
    pub fn stop(&mut self) -> Result<String> {
        if let Some(mut child) = self.daemon.take() {
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

    /// `natctl down`: detaches the datapath; waits for the daemon to exit.
    pub fn down(&mut self) -> Result<String> {
        // On the router, as an operator would run it: without a daemon the
        // CLI itself turns that namespace's forwarding off.
        let pin_dir = self.pins.to_str().context("path")?.to_owned();
        let output = self
            .router
            .command(natctl_path()?.to_str().context("path")?)
            .arg("--socket")
            .arg(self.socket())
            .args(["down", "--pin-dir", &pin_dir])
            .output()?;
        if !output.status.success() {
            bail!(
                "natctl down failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let output = String::from_utf8(output.stdout)?;
        if let Some(mut child) = self.daemon.take() {
            let exited = wait_for("natctl to exit after down", Duration::from_secs(15), || {
                child.try_wait().ok().flatten()
            });
            if exited.is_err() {
                let _ = child.kill();
                let _ = child.wait();
                bail!("natctl did not exit after down: {}", self.natctl_log());
            }
        }
        Ok(output)
    }
}

/// A lab's end: the daemon killed if it runs, then whatever it pinned
/// detached, before the bpffs goes.
pub(crate) fn tear_down(daemon: Option<Child>, socket: &Path, pins: &Path) {
    if let Some(mut child) = daemon {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Ok(natctl) = natctl_path() {
        let _ = Command::new(natctl)
            .arg("--socket")
            .arg(socket)
            .args(["down", "--pin-dir"])
            .arg(pins)
            .output();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        tear_down(self.daemon.take(), &self.socket(), &self.pins);
        // The invariant of every lab, checked unless the test failed
        // already (a second panic would abort and hide the first).
        if let Err(error) = self.check_no_lan_leak()
            && !std::thread::panicking()
        {
            panic!("{error:#}");
        }
        // Then the fields: the log, state, peer programs, the bpffs, the
        // namespaces.
    }
}
