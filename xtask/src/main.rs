//! `cargo xtask`: the single entry point for setting up a machine and for
//! building, testing and running the NAT router.
//!
//! Kept free of aya and nat-ctl so it compiles on a fresh machine, before
//! `cargo xtask setup` has installed bpf-linker.

mod bench;
mod cmd;
mod demo;
mod install;
mod router;
mod setup;
mod suite;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, test and run the XDP NAT router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (Debian packages, nightly rust-src,
    /// bpf-linker) and mount bpffs. Safe to run again.
    Setup,
    /// Set up, then run rustfmt, clippy and the whole test suite (needs root).
    Test {
        /// Instead: run the tests (`cargo test`) this many times in a row
        /// with every core kept busy by a spin loop, stopping at the first
        /// failure, to shake out tests that only hold on an idle machine.
        #[arg(long, value_name = "RUNS")]
        stress: Option<u32>,
        /// Passed to the test binaries: `cargo xtask test -- --nocapture`.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Run each cargo-fuzz target (nat-ctl/fuzz) for a bounded time from its
    /// seed corpus, as the last step of `test` does; fails on a crash.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = suite::FUZZ_SECONDS)]
        seconds: u32,
    },
    /// Set up, then run the network-namespace demo lab (needs root).
    Demo,
    /// Set up, build natctl and run its daemon on this machine's interfaces.
    Run {
        /// The WAN (upstream) interface.
        #[arg(long)]
        wan: String,
        /// The LAN (downstream) interface.
        #[arg(long)]
        lan: String,
        /// Further `natctl daemon` options, e.g. `--config /etc/natctl/natctl.toml`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        natctl_args: Vec<String>,
    },
    /// Build natctl (release) and install it as a systemd service: the
    /// binary, the unit and its bpffs mount, a commented configuration,
    /// directories, completions and the man page.
    Install {
        /// Where the binary and shared files go (P/sbin, P/share).
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// A staging root to install under (packaging); default: the system.
        #[arg(long)]
        destdir: Option<std::path::PathBuf>,
    },
    /// Set up, build, run every benchmark on the netns lab and write
    /// target/bench/report.md and report.json (needs root).
    Bench {
        /// Small counts and short samples (for CI): keeps it working, the
        /// figures are only indicative.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Test {
            stress: None,
            test_args,
        } => suite::run(&test_args).map(|()| ExitCode::SUCCESS),
        Command::Test {
            stress: Some(runs),
            test_args,
        } => suite::stress(runs, &test_args).map(|()| ExitCode::SUCCESS),
        Command::Fuzz { seconds } => setup::fuzz_tools()
            .and_then(|()| suite::fuzz(seconds))
            .map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::run(),
        Command::Run {
            wan,
            lan,
            natctl_args,
        } => router::run(&wan, &lan, &natctl_args),
        Command::Bench { quick } => bench::run(quick),
        Command::Install { prefix, destdir } => {
            install::run(&prefix, destdir.as_deref()).map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|err| {
        eprintln!("xtask: error: {err:#}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_natctl_options_through() {
        let Command::Run {
            wan,
            lan,
            natctl_args,
        } = parse(&[
            "run",
            "--wan",
            "eth0",
            "--lan",
            "eth1",
            "--config",
            "/tmp/natctl.toml",
            "--xdp-mode",
            "generic",
        ])
        else {
            panic!("not run");
        };
        assert_eq!((wan.as_str(), lan.as_str()), ("eth0", "eth1"));
        assert_eq!(
            natctl_args,
            ["--config", "/tmp/natctl.toml", "--xdp-mode", "generic"]
        );
    }

    #[test]
    fn fuzz_seconds() {
        let Command::Fuzz { seconds } = parse(&["fuzz"]) else {
            panic!("not fuzz");
        };
        assert_eq!(seconds, suite::FUZZ_SECONDS);
        let Command::Fuzz { seconds } = parse(&["fuzz", "--seconds", "5"]) else {
            panic!("not fuzz");
        };
        assert_eq!(seconds, 5);
    }

    #[test]
    fn bench_quick_flag() {
        assert!(matches!(parse(&["bench"]), Command::Bench { quick: false }));
        assert!(matches!(
            parse(&["bench", "--quick"]),
            Command::Bench { quick: true }
        ));
    }

    #[test]
    fn test_args_after_double_dash() {
        let Command::Test { test_args, stress } = parse(&["test", "--", "--nocapture"]) else {
            panic!("not test");
        };
        assert_eq!(test_args, ["--nocapture"]);
        assert_eq!(stress, None);
        let Command::Test { test_args, .. } = parse(&["test"]) else {
            panic!("not test");
        };
        assert!(test_args.is_empty());
    }

    #[test]
    fn stress_takes_a_number_of_runs() {
        let Command::Test { stress, test_args } =
            parse(&["test", "--stress", "5", "--", "--test-threads=2"])
        else {
            panic!("not test");
        };
        assert_eq!(stress, Some(5));
        assert_eq!(test_args, ["--test-threads=2"]);
        assert!(
            Cli::try_parse_from(["xtask", "test", "--stress", "many"]).is_err(),
            "--stress takes a number"
        );
    }
}
