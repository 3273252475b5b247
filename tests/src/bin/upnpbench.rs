//! `upnpbench`: benchmarks of issue 5, parts 2 and 5, in network namespaces
//! of its own. Prints exactly one JSON object on stdout (progress goes to
//! stderr) and exits non-zero, saying why, when it cannot measure.
//!
//! ```text
//! upnpbench iperf [--quick]   TCP goodput through natctl's XDP NAT vs nftables
//! upnpbench upnp  [--quick]   UPnP requests/s, latency, reply-to-forwarding
//!                             delay: natctl vs miniupnpd
//! upnpbench all   [--quick]   both: { "iperf", "upnp", "targets" }
//! ```
//! Needs root, `iperf3`, `miniupnpd` (Debian, nftables backend), `nft`,
//! `ethtool`, `ip`, `ss`, and `natctl` beside this executable (`cargo build
//! --release -p nat-ctl -p nat-tests --bins`).
#[path = "../upnpbench/mod.rs"]
mod upnpbench;

use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use upnpbench::{RequestSet, Scale, iperf, preflight, upnp};

#[derive(Parser)]
#[command(about = "Benchmarks: TCP goodput vs nftables, UPnP IGD vs miniupnpd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// iperf3 through the XDP NAT and through nftables.
    Iperf {
        /// Small counts, for CI.
        #[arg(long)]
        quick: bool,
    },
    /// UPnP AddPortMapping/DeletePortMapping: natctl vs miniupnpd.
    Upnp {
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        custom: Custom,
    },
    /// Both, and the targets.
    All {
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        custom: Custom,
    },
}

/// Overrides of the UPnP request runs (for investigation).
#[derive(clap::Args, Clone, Copy)]
struct Custom {
    /// Requests per run (one table size), instead of the mode's sizes.
    #[arg(long)]
    requests: Option<usize>,
    /// Rounds of each run (with --requests).
    #[arg(long, default_value_t = 1, requires = "requests")]
    rounds: usize,
}

fn main() {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
            upnpbench::exit(0);
        }
        Err(error) => {
            eprintln!("upnpbench: error: {error:#}");
            upnpbench::exit(1);
        }
    }
}

fn run(command: Command) -> Result<Value> {
    let started = Instant::now();
    let (do_iperf, do_upnp, quick, custom) = match command {
        Command::Iperf { quick } => (true, false, quick, None),
        Command::Upnp { quick, custom } => (false, true, quick, Some(custom)),
        Command::All { quick, custom } => (true, true, quick, Some(custom)),
    };
    let mut programs = vec!["ip", "ss", "nft", "ethtool", "timeout"];
    if do_iperf {
        programs.push("iperf3");
    }
    if do_upnp {
        programs.push("miniupnpd");
    }
    preflight(&programs)?;
    upnpbench::install_signal_cleanup()?;
    let mut scale = Scale::new(quick);
    if let Some(Custom {
        requests: Some(requests),
        rounds,
    }) = custom
    {
        if !(1..=20000).contains(&requests) {
            anyhow::bail!("--requests must be 1 to 20000");
        }
        scale.request_sets = vec![RequestSet {
            requests,
            rounds: rounds.max(1),
            modes: vec![0, 1, 2],
        }];
    }
    let mut report = json!({
        "mode": if quick { "quick" } else { "full" },
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel_release() },
    });
    let mut targets = Vec::new();
    if do_iperf {
        report["iperf"] = iperf::run(&scale)?;
    }
    if do_upnp {
        let result = upnp::run(&scale)?;
        targets.extend(upnp::targets(&result));
        report["upnp"] = result;
    }
    report["targets"] = json!(targets);
    report["elapsed_s"] = json!(upnpbench::round3(started.elapsed().as_secs_f64()));
    Ok(report)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}
