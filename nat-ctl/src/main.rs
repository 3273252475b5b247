//! `natctl`: the NAT router's daemon (`natctl daemon`) and the commands that
//! talk to it.
mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // NATCTL_LOG takes the usual filter syntax, e.g. `debug` or
    // `info,natctl::connections=warn`.
    let filter = EnvFilter::try_from_env("NATCTL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("natctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
