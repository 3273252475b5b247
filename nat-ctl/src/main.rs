//! `natctl`: loads the XDP NAT datapath onto a router's NICs and shows what
//! it is doing.
mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("natctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
