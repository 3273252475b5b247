//! `upnpbench`: benchmarks of issue 5, parts 2 and 5, in network namespaces
//! of its own. Prints exactly one JSON object on stdout (progress goes to
//! stderr) and exits non-zero, saying why, when it cannot measure.
//!
//! ```text
//! upnpbench iperf [--quick]   TCP goodput through natctl's XDP NAT vs nftables
//! upnpbench upnp  [--quick]   UPnP requests/s, latency, reply-to-forwarding
//!                             delay: natctl vs miniupnpd
//! upnpbench natpmp [--quick]  NAT-PMP/PCP map/delete requests/s, latency:
//!                             natctl vs miniupnpd
//! upnpbench all   [--quick]   iperf and upnp: { "iperf", "upnp", "targets" }
//! ```
//! Needs root, `iperf3`, `miniupnpd` (Debian, nftables backend), `nft`,
//! `ethtool`, `ip`, `ss`, and `natctl` beside this executable (`cargo build
//! --release -p nat-ctl -p nat-tests --bins`). The benchmarks themselves are
//! `nat_tests::upnpbench`.
use clap::{Parser, Subcommand};
use nat_tests::upnpbench::{self, Run};

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
    /// NAT-PMP and PCP map/delete: natctl vs miniupnpd.
    Natpmp {
        #[arg(long)]
        quick: bool,
    },
    /// iperf and upnp, and the targets.
    All {
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        custom: Custom,
    },
}

/// Overrides of the UPnP request runs (for investigation).
#[derive(clap::Args, Clone, Copy, Default)]
struct Custom {
    /// Requests per run (one table size), instead of the mode's sizes.
    #[arg(long)]
    requests: Option<usize>,
    /// Rounds of each run (with --requests).
    #[arg(long, default_value_t = 1, requires = "requests")]
    rounds: usize,
}

fn main() {
    let (iperf, upnp, natpmp, quick, custom) = match Cli::parse().command {
        Command::Iperf { quick } => (true, false, false, quick, Custom::default()),
        Command::Upnp { quick, custom } => (false, true, false, quick, custom),
        Command::Natpmp { quick } => (false, false, true, quick, Custom::default()),
        Command::All { quick, custom } => (true, true, false, quick, custom),
    };
    let run = Run {
        iperf,
        upnp,
        natpmp,
        quick,
        requests: custom.requests,
        rounds: custom.rounds,
    };
    match upnpbench::run(&run) {
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
