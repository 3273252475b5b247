//! `cargo xtask demo`: the network-namespace demo lab (natlab, in the tests
//! crate).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{cmd, setup};

pub fn run() -> Result<ExitCode> {
    setup::run()?;
    // natlab runs the real natctl, found beside it; `cargo run` of natlab
    // alone would not build it.
    cmd::run(&mut cmd::cargo([
        "build",
        "--release",
        "-p",
        "nat-ctl",
        "--bins",
    ]))
    .context("building natctl")?;
    // exec: natlab's exit status becomes ours, and Ctrl-C reaches it while
    // it cleans its namespaces up.
    Err(cmd::exec(&mut cmd::cargo([
        "run",
        "--release",
        "-p",
        "nat-tests",
        "--bin",
        "natlab",
        "--",
        "demo",
    ])))
}
