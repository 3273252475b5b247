//! `cargo xtask run`: load the NAT onto this machine's real interfaces.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{cmd, setup};

pub fn run(wan: &str, lan: &str, natctl_args: &[String]) -> Result<ExitCode> {
    setup::run()?;
    cmd::run(&mut cmd::cargo(["build", "--release", "-p", "nat-ctl"]))
        .context("building natctl")?;
    let natctl = cmd::target_dir()?.join("release").join("natctl");
    let mut command = std::process::Command::new(natctl);
    command
        .args(["daemon", "--wan", wan, "--lan", lan])
        .args(natctl_args);
    // exec: the daemon runs in the foreground; Ctrl-C stops it and leaves
    // the datapath forwarding, `natctl down` detaches it.
    Err(cmd::exec(&mut command))
}
