//! `natbench`: the benchmarks of `cargo xtask bench` (issue 5). Each
//! subcommand prints one JSON object; `report` turns what they printed into
//! the report. See `nat_tests::bench`.
//!
//! - `throughput`: part 1, Mpps through our NAT, a plain XDP forwarder and
//!   nftables in the netns lab;
//! - `cost`: part 3, ns per packet through `BPF_PROG_TEST_RUN`;
//! - `scale`: part 4, both with 1k, 100k and 1M live mappings;
//! - `sweep`: part 4, the aging sweep and map memory (below);
//! - `report`: the markdown and JSON report.
//!
//! This binary only parses its command line: the benchmarks are in
//! `nat_tests::bench::{throughput, cost, scale, sweep}`.
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nat_tests::bench;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Benchmarks of the XDP NAT router's controller")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time one aging sweep over a full session table.
    Sweep {
        /// Sessions to create (and up to half as many mappings).
        #[arg(long, default_value_t = 1_000_000)]
        entries: u32,
    },
    /// Part 1: 64-byte UDP throughput of our NAT, a plain XDP forwarder
    /// and nftables, side by side (needs root).
    Throughput {
        /// Seconds of sending per sample.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Samples per router and case, alternating between the routers.
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Flow counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,10000")]
        flows: Vec<u32>,
        /// Seconds of sending per router and case before the samples.
        #[arg(long, default_value_t = 0.5)]
        warmup_secs: f64,
        /// Only these routers: xdp_nat, tc_nat, xdp_forwarder, xdp_redirect,
        /// nftables, nftables_flowtable, no_router.
        #[arg(long, value_delimiter = ',')]
        routers: Vec<String>,
        /// Leave every router's work on the sending core, as the kernel
        /// places it by default, instead of on a core of its own.
        #[arg(long)]
        one_core: bool,
    },
    /// Part 3: ns per packet through BPF_PROG_TEST_RUN (needs root).
    Cost {
        /// Runs per measurement.
        #[arg(long, default_value_t = 100_000)]
        repeat: u32,
        /// Measurements per case, alternating between the cases.
        #[arg(long, default_value_t = 11)]
        reps: u32,
        /// New flows (runs) per new-flow measurement.
        #[arg(long, default_value_t = 10_000)]
        new_flow_repeat: u32,
    },
    /// Part 4: throughput and per-packet cost with many live mappings
    /// (needs root).
    Scale {
        /// Live mappings to fill, one router each.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
        sizes: Vec<u32>,
        /// Seconds of sending per throughput sample.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
        /// Throughput samples per case and size, alternating between sizes.
        #[arg(long, default_value_t = 5)]
        reps: u32,
        #[arg(long, default_value_t = 0.3)]
        warmup_secs: f64,
        /// BPF_PROG_TEST_RUN runs per cost measurement.
        #[arg(long, default_value_t = 100_000)]
        repeat: u32,
        /// Cost measurements per case and size.
        #[arg(long, default_value_t = 11)]
        cost_reps: u32,
        /// Flows of the hot set, the same at every size.
        #[arg(long, default_value_t = 1000)]
        hot_flows: u32,
        /// Leave the router's work on the sending core, as the kernel
        /// places it by default, instead of on a core of its own.
        #[arg(long)]
        one_core: bool,
    },
    /// Writes DIR/report.json and DIR/report.md from DIR/parts/*.json and
    /// prints the markdown.
    Report {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The parts ran with small counts.
        #[arg(long)]
        quick: bool,
    },
}

fn to_json(output: impl serde::Serialize) -> Result<Value> {
    Ok(serde_json::to_value(output)?)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let start = Instant::now();
    let loadavg_before = loadavg();
    let mut result = match cli.command {
        Command::Sweep { entries } => to_json(bench::sweep::run(entries)?)?,
        Command::Throughput {
            secs,
            reps,
            flows,
            warmup_secs,
            routers,
            one_core,
        } => to_json(bench::throughput::run(&bench::throughput::Options {
            secs,
            reps,
            flows,
            warmup_secs,
            routers,
            one_core,
        })?)?,
        Command::Cost {
            repeat,
            reps,
            new_flow_repeat,
        } => to_json(bench::cost::run(&bench::cost::Options {
            repeat,
            reps,
            new_flow_repeat,
        })?)?,
        Command::Scale {
            sizes,
            secs,
            reps,
            warmup_secs,
            repeat,
            cost_reps,
            hot_flows,
            one_core,
        } => to_json(bench::scale::run(&bench::scale::Options {
            sizes,
            secs,
            reps,
            warmup_secs,
            repeat,
            cost_reps,
            hot_flows,
            one_core,
        })?)?,
        Command::Report { dir, quick } => {
            print!("{}", bench::report::write(&dir, quick)?);
            return Ok(());
        }
    };
    if let Some(object) = result.as_object_mut() {
        object.insert(
            "elapsed_secs".to_owned(),
            json!(start.elapsed().as_secs_f64()),
        );
        object.insert("loadavg_before".to_owned(), json!(loadavg_before));
        object.insert("loadavg_after".to_owned(), json!(loadavg()));
    }
    println!("{result}");
    Ok(())
}
