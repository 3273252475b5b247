//! Part 4, the aging sweep and map memory (`natbench sweep --entries N`):
//! fills N sessions and up to N/2 mappings (an inbound and an outbound
//! `BINDINGS` entry each), half of them idle past their timeout, then times
//! the daemon's aging sweep, in the kernel. [`report`] turns its [`Output`]
//! into the report's rows.
//!
//! One WAN address has at most 3 x 64512 mappings (TCP, UDP and ICMP ids
//! 1024-65535: an inbound key is just protocol and external port), so N/2
//! is capped there; the sessions, keyed by remote too, are not.
//!
//! The maps are written directly (through the `harness` feature's
//! `MapView::insert_mapping` and `sessions_mut`) in [`fill`] only.
pub mod report;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{IterableMap as _, MapData};
use nat_common::{
    BindingKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Session, SessionKey, TCP_STATE_ESTABLISHED,
    TCP_STATE_NONE,
};
use nat_ctl::{
    aging::{datapath_now_ns, sweep_params},
    config::Timeouts,
    datapath::{Datapath, MapView, SweepReport, TableSizes},
};
use serde::{Deserialize, Serialize};

use crate::plan::ROUTER_WAN;

/// One map's memory, as the kernel counts it (fdinfo `memlock`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapMemory {
    pub max_entries: u32,
    pub filled: u64,
    pub memlock_bytes: u64,
    pub memlock_bytes_per_max_entry: f64,
    pub memlock_bytes_per_filled_entry: f64,
}

/// What `natbench sweep` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Output {
    pub entries: u32,
    pub binding_pairs: u32,
    pub binding_pairs_capped: bool,
    pub fill_secs: f64,
    pub kernel_sweep_secs: f64,
    pub kernel_scanned: usize,
    pub kernel_sweep_nothing_to_remove_secs: f64,
    pub sessions_removed: usize,
    pub bindings_removed: usize,
    pub forward_sessions_removed: usize,
    pub scanned_nothing_to_remove: usize,
    pub sessions: MapMemory,
    pub bindings: MapMemory,
    /// Preallocated hash maps: what each slot costs whether used or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock_bytes_per_session: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock_bytes_per_mapping: Option<f64>,
}

const SEC: u64 = 1_000_000_000;
const PORT_MIN: u32 = 1024;
const PORTS: u32 = 65536 - PORT_MIN;
const PROTOS: [u8; 3] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP];
/// The most mappings one WAN address can hold.
const MAX_MAPPINGS: u32 = PROTOS.len() as u32 * PORTS;

/// Mapping `j`: its protocol, external port and internal endpoint.
fn mapping(j: u32) -> (u8, u16, [u8; 4], u16) {
    let proto = PROTOS[(j % 3) as usize];
    let external_port = (PORT_MIN + j / 3) as u16;
    // 10.x.y.z hosts, 16 ports each.
    let host = j / 16;
    let internal = [10, (host >> 16) as u8, (host >> 8) as u8, host as u8];
    let internal_port = 20000 + (j % 16) as u16;
    (proto, external_port, internal, internal_port)
}

/// The `memlock:` line of a map's fdinfo: the kernel's count of the memory
/// the map holds.
fn memlock_of(map: &MapData) -> Result<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .context("no memlock line in fdinfo")?
        .trim()
        .parse()
        .context("parsing memlock")
}

fn map_figures(map: &MapData, max_entries: u32, filled: u64) -> Result<MapMemory> {
    let bytes = memlock_of(map)?;
    Ok(MapMemory {
        max_entries,
        filled,
        memlock_bytes: bytes,
        memlock_bytes_per_max_entry: bytes as f64 / f64::from(max_entries),
        memlock_bytes_per_filled_entry: if filled > 0 {
            bytes as f64 / filled as f64
        } else {
            0.0
        },
    })
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Fills `entries` sessions and `pairs` mappings; odd mappings, and every
/// session on them, idle since `old`, the others since `fresh`.
fn fill(maps: &mut MapView, entries: u32, pairs: u32, old: u64, fresh: u64) -> Result<()> {
    let seen = |j: u32| if j % 2 == 1 { old } else { fresh };
    for j in 0..pairs {
        let (proto, external_port, internal, internal_port) = mapping(j);
        let last_seen_ns = seen(j);
        maps.insert_mapping(
            BindingKey::outbound(proto, internal, internal_port),
            ROUTER_WAN.octets(),
            external_port,
            last_seen_ns,
            last_seen_ns,
        )
        .context("inserting a mapping")?;
    }
    for i in 0..entries {
        let j = i % pairs;
        let (proto, external_port, internal, internal_port) = mapping(j);
        // Remotes 100.64.0.0/10-ish, one per session.
        let remote = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let key = SessionKey {
            remote_addr: remote,
            remote_port: if proto == PROTO_ICMP { 0 } else { 443 },
            external_port,
            proto,
            _pad: [0; 3],
        };
        let session = Session {
            last_seen_ns: seen(j),
            packets: 10,
            bytes: 1500,
            internal_addr: internal,
            internal_port,
            tcp_state: if proto == PROTO_TCP {
                TCP_STATE_ESTABLISHED
            } else {
                TCP_STATE_NONE
            },
            _pad: 0,
        };
        maps.sessions_mut()
            .insert(key, session)
            .context("inserting a session")?;
    }
    Ok(())
}

/// Times the daemon's aging sweep (`nat_sweep` through BPF_PROG_TEST_RUN),
/// once with half the entries expired and once more with nothing left to
/// remove.
pub fn run(entries: u32) -> Result<Output> {
    anyhow::ensure!(entries >= 2, "--entries must be at least 2");
    let pairs = (entries / 2).min(MAX_MAPPINGS);
    let sizes = TableSizes {
        forwards: 1024,
        bindings: pairs + 1024,
        sessions: entries + 1024,
        forward_sessions: 1024,
    };
    let mut datapath = Datapath::load(sizes, None).context("loading the datapath")?;
    let timeouts = Timeouts::default();
    // At least 3 h after boot, so that "idle past 2 h 4 min" is a valid
    // stamp; nothing runs on these maps, so only differences matter, and
    // the sweep is told this time.
    let now = datapath_now_ns().max(3 * 3600 * SEC);
    let old = now - 8000 * SEC;
    let fresh = now - SEC;

    let fill_start = Instant::now();
    fill(datapath.maps_mut().view_mut(), entries, pairs, old, fresh)?;
    let fill_time = fill_start.elapsed();
    let maps = datapath.maps().view();

    let sessions_memory = map_figures(maps.sessions().map(), sizes.sessions, u64::from(entries))?;
    let bindings_memory = map_figures(maps.bindings().map(), sizes.bindings, u64::from(pairs))?;
    // The table has two slots for each session it is sized for.
    let per_session = memlock_of(maps.sessions().map())? as f64 / f64::from(sizes.sessions);
    // A mapping is one BINDINGS entry and one PORT_OWNERS slot.
    let per_mapping = memlock_of(maps.bindings().map())? as f64 / f64::from(sizes.bindings)
        + memlock_of(maps.port_owners().map())? as f64 / f64::from(nat_common::PORT_SLOTS);

    let expired_pairs = pairs / 2;
    let expired_sessions = (0..entries).filter(|i| (i % pairs) % 2 == 1).count();
    let check = |what: &str, report: &SweepReport, idle: &SweepReport| {
        anyhow::ensure!(
            report.sessions_removed == expired_sessions
                && report.bindings_removed == 2 * expired_pairs as usize
                && idle.sessions_removed + idle.bindings_removed == 0,
            "{what}: unexpected removals: {report:?}, then {idle:?} (expected {expired_sessions} sessions and {} bindings)",
            2 * expired_pairs
        );
        Ok(())
    };

    let kernel = datapath
        .run_sweep(sweep_params(&timeouts, now, 1))
        .context("kernel sweep")?;
    // Again at once: nothing left to remove, so this is the walk alone.
    let kernel_idle = datapath
        .run_sweep(sweep_params(&timeouts, now, 2))
        .context("second kernel sweep")?;
    check("kernel sweep", &kernel, &kernel_idle)?;

    Ok(Output {
        entries,
        binding_pairs: pairs,
        binding_pairs_capped: pairs < entries / 2,
        fill_secs: secs(fill_time),
        kernel_sweep_secs: secs(kernel.elapsed),
        kernel_scanned: kernel.scanned,
        kernel_sweep_nothing_to_remove_secs: secs(kernel_idle.elapsed),
        sessions_removed: kernel.sessions_removed,
        bindings_removed: kernel.bindings_removed,
        forward_sessions_removed: kernel.forward_sessions_removed,
        scanned_nothing_to_remove: kernel_idle.scanned,
        sessions: sessions_memory,
        bindings: bindings_memory,
        memlock_bytes_per_session: Some(per_session),
        memlock_bytes_per_mapping: Some(per_mapping),
    })
}
