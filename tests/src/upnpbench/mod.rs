//! `upnpbench`: TCP goodput through the NAT against nftables (iperf3), and
//! the UPnP IGD's request rate, latency and reply-to-forwarding delay
//! against miniupnpd, every figure measured in the run that prints it.
//! The `upnpbench` binary parses its command line and calls [`run`].
mod delay;
pub mod iperf;
pub mod kernel;
mod miniupnpd;
pub mod natpmp;
pub mod report;
pub mod soap;
pub mod upnp;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use serde_json::{Value, json};

/// One set of request runs: `requests` AddPortMapping then as many
/// DeletePortMapping (so the IGD holds up to `requests` mappings), in each
/// of `modes` (indices into `upnp::MODES`), `rounds` times alternating
/// natctl and miniupnpd.
#[derive(Clone, Debug)]
pub struct RequestSet {
    pub requests: usize,
    pub rounds: usize,
    pub modes: Vec<usize>,
}

/// How much of everything: `--quick` keeps CI well under a minute.
#[derive(Clone, Debug)]
pub struct Scale {
    pub quick: bool,
    /// iperf3 run length, seconds.
    pub iperf_secs: u32,
    /// Alternating rounds (ours, theirs, ours, ...) of each measurement.
    pub iperf_rounds: usize,
    pub request_sets: Vec<RequestSet>,
    /// Mappings whose reply-to-forwarding delay is measured.
    pub probes: usize,
}

impl Scale {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                iperf_secs: 1,
                iperf_rounds: 1,
                request_sets: vec![RequestSet {
                    requests: 50,
                    rounds: 1,
                    modes: vec![0, 1, 2],
                }],
                probes: 5,
            }
        } else {
            Self {
                quick,
                iperf_secs: 5,
                iperf_rounds: 2,
                // A home router's table (up to 100 mappings), then how
                // both scale to 1000.
                request_sets: vec![
                    RequestSet {
                        requests: 100,
                        rounds: 3,
                        modes: vec![0, 1, 2],
                    },
                    RequestSet {
                        requests: 1000,
                        rounds: 1,
                        modes: vec![0],
                    },
                ],
                probes: 50,
            }
        }
    }
}

/// What one `upnpbench` run measures.
#[derive(Clone, Debug)]
pub struct Run {
    pub iperf: bool,
    pub upnp: bool,
    /// NAT-PMP/PCP map and delete rates against miniupnpd's.
    pub natpmp: bool,
    pub quick: bool,
    /// Instead of the mode's request sets: one of this many requests.
    pub requests: Option<usize>,
    /// Rounds of that one set.
    pub rounds: usize,
}

/// Runs the benchmarks `what` asks for and returns the report upnpbench
/// prints: `{ "mode", "machine", "iperf", "upnp", "targets", "elapsed_s" }`.
pub fn run(what: &Run) -> Result<Value> {
    let started = Instant::now();
    let mut programs = vec!["ip", "ss", "nft", "ethtool", "timeout"];
    if what.iperf {
        programs.push("iperf3");
    }
    if what.upnp || what.natpmp {
        programs.push("miniupnpd");
    }
    preflight(&programs)?;
    install_signal_cleanup()?;
    let mut scale = Scale::new(what.quick);
    if let Some(requests) = what.requests {
        if !(1..=20000).contains(&requests) {
            anyhow::bail!("--requests must be 1 to 20000");
        }
        scale.request_sets = vec![RequestSet {
            requests,
            rounds: what.rounds.max(1),
            modes: vec![0, 1, 2],
        }];
    }
    let mut report = json!({
        "mode": if what.quick { "quick" } else { "full" },
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel_release() },
    });
    let mut targets = Vec::new();
    if what.iperf {
        report["iperf"] = iperf::run(&scale)?;
    }
    if what.upnp {
        let result = upnp::run(&scale)?;
        targets.extend(upnp::targets(&result));
        report["upnp"] = result;
    }
    if what.natpmp {
        let result = natpmp::run(&scale)?;
        targets.extend(natpmp::targets(&result));
        report["natpmp"] = result;
    }
    report["targets"] = json!(targets);
    report["elapsed_s"] = json!(round3(started.elapsed().as_secs_f64()));
    Ok(report)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Progress goes to stderr: stdout carries exactly one JSON object.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("upnpbench: {}", format!($($arg)*))
    };
}

/// Fails, naming what is missing, unless we are root and every program
/// the benchmarks run is installed.
pub fn preflight(programs: &[&str]) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("upnpbench needs root (network namespaces, XDP, nftables): run it with sudo");
    }
    let mut missing = Vec::new();
    for program in programs {
        if which(program).is_none() {
            missing.push(*program);
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing programs: {} (Debian: `apt-get install -y {}`; for miniupnpd use \
             DEBIAN_FRONTEND=noninteractive and keep its service stopped)",
            missing.join(", "),
            missing
                .iter()
                .map(|program| match *program {
                    "nft" => "nftables",
                    "ip" => "iproute2",
                    "ss" => "iproute2",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let natctl = crate_natctl()?;
    if !natctl.is_file() {
        bail!("natctl not found at {}", natctl.display());
    }
    Ok(())
}

fn crate_natctl() -> Result<PathBuf> {
    crate::lab::natctl_path().map_err(|error| {
        anyhow::anyhow!(
            "{error} (build both: `cargo build --release -p nat-ctl -p nat-tests --bins`)"
        )
    })
}

/// The program's path on `$PATH` (and the sbin directories root has).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs a program to completion within `limit` (via coreutils `timeout`).
pub fn run_bounded(command: &mut Command, limit: Duration) -> Result<std::process::Output> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    let mut bounded = Command::new("timeout");
    bounded
        .args(["-k", "2", &format!("{}", limit.as_secs().max(1))])
        .arg(&program)
        .args(&args);
    let output = bounded.output()?;
    if output.status.code() == Some(124) || output.status.code() == Some(137) {
        bail!(
            "`{} {}` did not finish within {limit:?}",
            program.to_string_lossy(),
            args.iter()
                .map(|arg| arg.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(output)
}

/// Percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summary of durations, in milliseconds (three decimals: microseconds).
pub fn summary_ms(samples: &[Duration]) -> Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return json!({ "count": 0 });
    }
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    json!({
        "count": ms.len(),
        "min_ms": round3(ms[0]),
        "p50_ms": round3(percentile(&ms, 50.0)),
        "p90_ms": round3(percentile(&ms, 90.0)),
        "p99_ms": round3(percentile(&ms, 99.0)),
        "max_ms": round3(ms[ms.len() - 1]),
        "mean_ms": round3(mean),
    })
}

pub fn p_ms(samples: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    percentile(&ms, p)
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// One line of the report's `targets`.
pub fn target(name: &str, target: &str, measured: Value, pass: bool, why: Option<String>) -> Value {
    json!({
        "name": name,
        "target": target,
        "measured": measured,
        "pass": pass,
        "why": why,
    })
}

/// On SIGINT, SIGTERM or SIGHUP (e.g. a CI timeout), removes what this
/// process set up before exiting, as the drops would have: a signal
/// thread waits for them (they are blocked in every other thread).
pub fn install_signal_cleanup() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        let signal = set.wait().map_or_else(
            |error| error.to_string(),
            |signal| signal.as_str().to_owned(),
        );
        CLEANING.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("upnpbench: {signal}: cleaning up and exiting");
        emergency_cleanup();
        std::process::exit(130);
    });
    Ok(())
}

static CLEANING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Exits, unless a signal's clean-up is under way: that one exits.
pub fn exit(code: i32) -> ! {
    if CLEANING.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    std::process::exit(code)
}

/// Kills our children (natctl daemons, iperf3, `ip netns exec` wrappers)
/// and our daemonized miniupnpd, deletes our namespaces and unmounts our
/// bpffs: everything is named after our pid.
fn emergency_cleanup() {
    use nix::sys::signal::{Signal, kill};
    let me = std::process::id();
    let tmp = std::env::temp_dir();
    let ours = |name: &str| {
        name.contains(&format!("-{me}-"))
            && (name.starts_with("nat-") || name.starts_with("upnpbench-"))
    };
    // miniupnpd, found by its pid file.
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ours(&name) {
            let pidfile = entry.path().join("miniupnpd.pid");
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|text| text.trim().parse::<i32>().ok())
            {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("miniupnpd") {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
    // Our direct children.
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(me) {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if ours(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("nat-lab-{me}-")) || ours(&name) {
            let path = entry.path();
            if path.is_dir() {
                let _ = Command::new("umount").arg(&path).output();
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
