//! How much of the verifier's budget each program takes. The kernel gives
//! a program one million processed instructions (`BPF_COMPLEXITY_LIMIT_INSNS`)
//! and refuses it past that, so a datapath change that adds branches or
//! loops can make `natctl` fail to load on every router. This test prints
//! each program's figure (`bpf_prog_info.verified_insns`, the kernel's own
//! count of what the verifier walked) and fails when one leaves less than
//! the headroom below, so that the margin is seen shrinking before it is
//! gone.
use anyhow::{Context, Result};
use nat_common::programs;
use nat_ctl::datapath::{Datapath, TableSizes};
use nat_tests::netns::require_root;

/// The kernel's limit.
const VERIFIER_LIMIT: u32 = 1_000_000;
/// What each program must leave of it: room for the next change to be
/// measured rather than to fail the load.
const HEADROOM: u32 = 150_000;

#[test]
fn every_program_leaves_headroom_in_the_verifiers_budget() -> Result<()> {
    require_root();
    let mut datapath = Datapath::load(TableSizes::default(), None)?;
    let mut figures = Vec::new();
    for name in [programs::LAN, programs::WAN, programs::SWEEP] {
        let info = datapath.program(name)?.info()?;
        figures.push((name, info.verified_instruction_count()));
    }
    for name in [programs::LAN_TC, programs::WAN_TC] {
        let info = datapath.classifier(name)?.info()?;
        figures.push((name, info.verified_instruction_count()));
    }
    let mut too_close = Vec::new();
    for (name, processed) in figures {
        let processed = processed
            .with_context(|| format!("the kernel reports no verified_insns for {name}"))?;
        println!("{name}: {processed} instructions processed by the verifier");
        if processed > VERIFIER_LIMIT - HEADROOM {
            too_close.push(format!("{name}: {processed}"));
        }
    }
    assert!(
        too_close.is_empty(),
        "within {HEADROOM} of the verifier's limit of {VERIFIER_LIMIT}: {too_close:?}"
    );
    Ok(())
}
