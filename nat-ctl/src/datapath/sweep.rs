//! The aging sweep's handle: the datapath's `nat_sweep` program, run on
//! demand through BPF_PROG_TEST_RUN, and the two maps it is driven by. What
//! the sweep decides is in `nat_common::aging`; when and with which
//! timeouts it runs is the daemon's (`crate::aging`).
use std::{path::Path, time::Instant};

use aya::{
    maps::{Array, MapData, MapError},
    programs::{TestRun, TestRunOptions, Xdp},
};
use nat_common::{SweepParams, SweepStats, maps as names, programs};
use serde::{Deserialize, Serialize};

use super::{DatapathError, Result, map_error};

/// What one sweep saw and removed. `bindings_removed` counts `BINDINGS`
/// entries: a mapping is two of them, its inbound and outbound halves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepReport {
    /// Entries walked in the three maps together.
    pub scanned: usize,
    pub sessions_removed: usize,
    pub forward_sessions_removed: usize,
    pub bindings_removed: usize,
    /// Spilled sessions brought back to their home slot (see
    /// `nat_common::HOMECOMING_MARGIN_NS`); absent from a daemon older
    /// than them.
    #[serde(default)]
    pub sessions_moved_home: usize,
    #[serde(default)]
    pub forward_sessions_moved_home: usize,
    pub elapsed: std::time::Duration,
}

/// The sweep's parameter and result maps.
pub struct SweepMaps {
    pub(super) params: Array<MapData, SweepParams>,
    pub(super) stats: Array<MapData, SweepStats>,
}

/// The pinned sweep program with its maps: the daemon's handle on aging.
pub struct KernelSweep {
    program: Xdp,
    maps: SweepMaps,
    generation: u32,
}

impl KernelSweep {
    /// Opens the sweep program pinned at `path` (see
    /// [`super::Datapath::pin_program`]).
    pub fn from_pin(path: &Path, maps: SweepMaps) -> Result<Self> {
        let program =
            Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface).map_err(|source| {
                DatapathError::Program {
                    name: programs::SWEEP,
                    source,
                }
            })?;
        Ok(Self {
            program,
            maps,
            generation: 0,
        })
    }

    /// One sweep with `params`; their generation is this handle's own.
    pub fn run(&mut self, params: SweepParams) -> Result<SweepReport> {
        // Never 0: 0 is what LIVE_PORTS holds for a port never marked.
        self.generation = self.generation.wrapping_add(1).max(1);
        run(
            &self.program,
            &mut self.maps,
            SweepParams {
                generation: self.generation,
                ..params
            },
        )
    }
}

/// Runs a sweep program once with `params`.
pub(super) fn run(program: &Xdp, maps: &mut SweepMaps, params: SweepParams) -> Result<SweepReport> {
    let start = Instant::now();
    maps.params
        .set(0, params, 0)
        .map_err(map_error(names::SWEEP_PARAMS))?;
    // The program ignores its packet; XDP test runs need an Ethernet
    // header's worth of one.
    let frame = [0u8; 64];
    let outcome = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        })
        .map_err(|source| DatapathError::Program {
            name: programs::SWEEP,
            source,
        })?;
    if outcome.return_value != 0 {
        // The program refuses to run without parameters.
        return Err(map_error(names::SWEEP_PARAMS)(MapError::KeyNotFound));
    }
    let stats = maps
        .stats
        .get(&0, 0)
        .map_err(map_error(names::SWEEP_STATS))?;
    Ok(SweepReport {
        scanned: stats.scanned as usize,
        sessions_removed: stats.sessions_removed as usize,
        forward_sessions_removed: stats.forward_sessions_removed as usize,
        bindings_removed: stats.bindings_removed as usize,
        sessions_moved_home: stats.sessions_moved_home as usize,
        forward_sessions_moved_home: stats.forward_sessions_moved_home as usize,
        elapsed: start.elapsed(),
    })
}
