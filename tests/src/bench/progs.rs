//! The BPF programs attached to a router's interfaces, whoever loaded them
//! (this process or `natctl daemon`): their sizes, and their own time per
//! packet from the kernel's run-time statistics (`run_time_ns / run_cnt`,
//! kept while [`RunTimeStats`] is held).
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use aya::{
    programs::{ProgramInfo, SchedClassifier, TcAttachType, loaded_programs},
    sys::{Stats, enable_stats},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::netns::Netns;

/// The kernel's per-program run time and run count, on while this is held
/// (`BPF_ENABLE_STATS`: the same switch as `kernel.bpf_stats_enabled`,
/// counted per holder, so that it goes back to what it was when the last
/// holder, this process included, closes it, even if it dies).
pub struct RunTimeStats(#[allow(dead_code)] OwnedFd);

impl RunTimeStats {
    pub fn enable() -> Result<Self> {
        Ok(Self(
            enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (run time)")?,
        ))
    }
}

/// One program attached to an interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attached {
    pub interface: String,
    /// `xdp`, or `tc` and its kind (`tcx/ingress`, `clsact/ingress`).
    pub hook: String,
    pub name: String,
    pub id: u32,
    /// Instructions after the verifier (xlated bytes / 8).
    pub xlated_insns: u32,
    /// Bytes of machine code.
    pub jited_bytes: u32,
}

/// The programs attached to `interface` of `netns`: XDP, TC and TCX (the
/// last, which aya uses on recent kernels, `tc filter show` does not list).
pub fn attached(netns: &Netns, interface: &str) -> Result<Vec<Attached>> {
    let output = netns.exec("bpftool", &["-j", "net", "show", "dev", interface])?;
    let listing: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("reading bpftool net show dev {interface}"))?;
    let mut found = Vec::new();
    for section in listing.as_array().into_iter().flatten() {
        for (hook, entries) in [("xdp", &section["xdp"]), ("tc", &section["tc"])] {
            for entry in entries.as_array().into_iter().flatten() {
                let Some(id) = entry["prog_id"].as_u64().or(entry["id"].as_u64()) else {
                    continue;
                };
                let id = u32::try_from(id)?;
                let info = info(id)?;
                let kind = entry["kind"].as_str().map(|kind| format!(" {kind}"));
                found.push(Attached {
                    interface: interface.to_owned(),
                    hook: format!("{hook}{}", kind.unwrap_or_default()),
                    name: info.name_as_str().unwrap_or_default().to_owned(),
                    id,
                    xlated_insns: info.size_translated().unwrap_or(0) / 8,
                    jited_bytes: info.size_jitted(),
                });
            }
        }
    }
    // bpftool before 7.3 does not list TCX: asked of the kernel directly.
    // A kernel without TCX has none to list (the query fails).
    let tcx = super::in_netns(netns, || {
        Ok(SchedClassifier::query_tcx(interface, TcAttachType::Ingress)
            .map(|(_, programs)| programs)
            .unwrap_or_default())
    })?;
    for info in tcx {
        if found.iter().any(|program| program.id == info.id()) {
            continue;
        }
        found.push(Attached {
            interface: interface.to_owned(),
            hook: "tc tcx/ingress".to_owned(),
            name: info.name_as_str().unwrap_or_default().to_owned(),
            id: info.id(),
            xlated_insns: info.size_translated().unwrap_or(0) / 8,
            jited_bytes: info.size_jitted(),
        });
    }
    Ok(found)
}

fn info(id: u32) -> Result<ProgramInfo> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok(info);
        }
    }
    anyhow::bail!("no loaded BPF program has id {id}")
}

/// Total run time (ns) and runs of program `id` so far.
pub fn run_stats(id: u32) -> Result<(u64, u64)> {
    let info = info(id)?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}
