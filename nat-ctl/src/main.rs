//! `natctl`: the NAT router's daemon (`natctl daemon`) and the commands that
//! talk to it.
mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                error.exit();
            }
            // One line, like every other error: the value and what would
            // be accepted, without clap's usage block.
            let text = error.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!("natctl: {}", first.trim_start_matches("error: "));
            return std::process::ExitCode::from(2);
        }
    };
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
