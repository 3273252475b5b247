//! Network namespaces with unique names, removed on drop.
use std::{
    fs::File,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails (never skips) when the test cannot do what it needs: CI runs these.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests need root (network namespaces, XDP, BPF_PROG_TEST_RUN): run `sudo cargo xtask test`"
    );
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed? `cargo xtask setup`)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace named after `role`, this process and a counter,
    /// so that parallel tests and parallel runs never collide.
    pub fn new(role: &str) -> Result<Self> {
        let name = format!(
            "nat-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace, failing if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command to be run inside the namespace, for the caller to spawn.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Moves the calling thread into the namespace (for netlink and
    /// BPF_PROG_TEST_RUN, which act in the caller's namespace).
    pub fn enter(&self) -> Result<()> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(())
    }

    /// A veth pair from `self` (named `local`) to `peer` (named `remote`).
    pub fn veth(&self, local: &str, peer: &Netns, remote: &str) -> Result<()> {
        self.ip(&[
            "link", "add", local, "type", "veth", "peer", "name", remote, "netns", &peer.name,
        ])?;
        self.ip(&["link", "set", local, "up"])?;
        peer.ip(&["link", "set", remote, "up"])?;
        Ok(())
    }

    pub fn ifindex(&self, interface: &str) -> Result<u32> {
        let output = self.exec("cat", &[&format!("/sys/class/net/{interface}/ifindex")])?;
        Ok(String::from_utf8(output.stdout)?.trim().parse()?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its veths and XDP programs with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Netns {
    /// Runs `work` on a new thread inside the namespace. Sockets it creates
    /// stay in the namespace, so tests can talk real TCP/UDP from Rust.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            work()
        })
    }
}
