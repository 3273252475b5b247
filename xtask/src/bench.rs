//! `cargo xtask bench`: NOT IMPLEMENTED YET (issue 5). It reports so and
//! exits with status 2 rather than print made-up numbers.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    eprintln!("benchmarks are not implemented yet (issue 5)");
    ExitCode::from(2)
}
