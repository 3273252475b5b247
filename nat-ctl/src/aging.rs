//! Aging: the periodic sweep that removes dynamic entries the datapath has
//! not refreshed for longer than their timeout.
//!
//! The daemon runs the sweep in the kernel ([`KernelSweep`]: the datapath's
//! `nat_sweep` program, through BPF_PROG_TEST_RUN), which walks the tables
//! at tens of nanoseconds an entry and judges each entry as it is at that
//! instant. The same rules, in user space, are [`sweep`]: the fallback for a
//! datapath pinned without the sweep program, and the reference the tests
//! compare the kernel's sweep with.
//!
//! The datapath stamps `last_seen_ns` with `bpf_ktime_get_coarse_ns`
//! (CLOCK_MONOTONIC_COARSE) and never deletes anything itself; the user-space
//! sweep works as follows:
//!
//! 1. one batch walk of `SESSIONS` ([`crate::batch`]) collects the expired
//!    sessions and marks, in a bitmap of 3 protocols x 65536 ports, every
//!    external port that still has a live session;
//! 2. each expired session is read again and deleted only if it is still
//!    expired, so a flow refreshed by a packet after the walk is never aged
//!    out from under itself;
//! 3. one walk of `BINDINGS` finds the idle mappings (both halves idle past
//!    [`binding_timeout`] and no live session on their external port) and
//!    the idle halves left without a partner; the outbound half goes first
//!    (new LAN packets then get a fresh mapping rather than one whose
//!    inbound half is gone), each half re-checked just before its delete;
//! 4. one walk of `FORWARD_SESSIONS` deletes its expired entries the same
//!    way (an LRU, but its stale entries would still show in the table).
//!
//! The cost is one batch walk per map (a few hundred syscalls at a million
//! entries) plus a lookup and a delete per expired entry; nothing is
//! allocated per entry beyond the growth of the lists of expired keys.
//!
//! A re-check and its delete are two syscalls, so a packet landing exactly
//! between them can still lose its entry; the datapath then creates it
//! again, as it does after any timeout.
use std::{
    io,
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
    programs::{TestRun, TestRunOptions, Xdp},
    sys::SyscallError,
};
use nat_common::{
    Binding, DIR_INBOUND, EndpointKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Session, SessionKey,
    SweepParams, TCP_STATE_ESTABLISHED, maps as names, programs,
};
use serde::Serialize;

use crate::{
    batch,
    config::Timeouts,
    datapath::{DatapathError, Maps},
};

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// How long a session may stay idle: by TCP state for TCP, by protocol
/// otherwise (a protocol the datapath does not track gets the UDP timeout).
pub fn session_timeout(timeouts: &Timeouts, proto: u8, tcp_state: u8) -> Duration {
    match proto {
        PROTO_TCP if tcp_state == TCP_STATE_ESTABLISHED => timeouts.tcp_established,
        PROTO_TCP => timeouts.tcp_transitory,
        PROTO_ICMP => timeouts.icmp,
        _ => timeouts.udp,
    }
}

/// How long a mapping without any live session may stay idle: the shortest
/// timeout a session of its protocol can have. A mapping with a live session
/// is kept whatever its own age.
pub fn binding_timeout(timeouts: &Timeouts, proto: u8) -> Duration {
    match proto {
        PROTO_TCP => timeouts.tcp_transitory.min(timeouts.tcp_established),
        PROTO_ICMP => timeouts.icmp,
        _ => timeouts.udp,
    }
}

fn idle(last_seen_ns: u64, now_ns: u64) -> Option<Duration> {
    now_ns.checked_sub(last_seen_ns).map(Duration::from_nanos)
}

/// Idle for strictly longer than `timeout`. A `last_seen_ns` after `now_ns`
/// (a packet stamped after the sweep read the clock) is never expired.
pub fn is_expired(last_seen_ns: u64, now_ns: u64, timeout: Duration) -> bool {
    idle(last_seen_ns, now_ns).is_some_and(|idle| idle > timeout)
}

/// Time left before the entry expires, zero once it has.
pub fn remaining(last_seen_ns: u64, now_ns: u64, timeout: Duration) -> Duration {
    timeout.saturating_sub(idle(last_seen_ns, now_ns).unwrap_or_default())
}

/// The datapath's clock in nanoseconds: `bpf_ktime_get_coarse_ns` reads
/// CLOCK_MONOTONIC_COARSE.
pub fn datapath_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|now| Duration::from(now).as_nanos() as u64)
        .unwrap_or_default()
}

/// What one sweep saw and removed. `bindings_removed` counts `BINDINGS`
/// entries: a mapping is two of them, its inbound and outbound halves.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SweepReport {
    /// Entries walked in the three maps together.
    pub scanned: usize,
    pub sessions_removed: usize,
    pub forward_sessions_removed: usize,
    pub bindings_removed: usize,
    pub elapsed: Duration,
}

/// One bit per (protocol, external port): 3 x 65536 bits, 24 KiB.
struct LivePorts(Box<[u64]>);

impl LivePorts {
    const PORTS: usize = 1 << 16;

    fn new() -> Self {
        Self(vec![0u64; 3 * Self::PORTS / 64].into_boxed_slice())
    }

    fn bit(proto: u8, port: u16) -> Option<usize> {
        let row = match proto {
            PROTO_TCP => 0,
            PROTO_UDP => 1,
            PROTO_ICMP => 2,
            _ => return None,
        };
        Some(row * Self::PORTS + usize::from(port))
    }

    fn mark(&mut self, proto: u8, port: u16) {
        if let Some(bit) = Self::bit(proto, port) {
            self.0[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn contains(&self, proto: u8, port: u16) -> bool {
        Self::bit(proto, port).is_some_and(|bit| self.0[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn walk_error(name: &'static str) -> impl Fn(io::Error) -> DatapathError {
    move |io_error| DatapathError::Map {
        name,
        source: MapError::SyscallError(SyscallError {
            call: "BPF_MAP_LOOKUP_BATCH",
            io_error,
        }),
    }
}

fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}

fn lookup<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<Option<V>> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(map_error(name)(error)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Removal {
    Removed,
    /// Already gone (another sweep, or the LRU evicted it).
    Gone,
    /// Still there, but no longer what we meant to delete.
    Kept,
}

/// Deletes `key` if its current value still satisfies `still`.
fn remove_if<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
    still: impl FnOnce(&V) -> bool,
) -> Result<Removal> {
    match lookup(map, name, key)? {
        None => Ok(Removal::Gone),
        Some(value) if !still(&value) => Ok(Removal::Kept),
        Some(_) => remove(map, name, key),
    }
}

/// Deletes `key`, already re-checked by the caller.
fn remove<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<Removal> {
    match map.remove(key) {
        Ok(()) => Ok(Removal::Removed),
        Err(error) if is_not_found(&error) => Ok(Removal::Gone),
        Err(error) => Err(map_error(name)(error)),
    }
}

/// Walks a session map: returns the keys that are expired at `now_ns`, and
/// hands every live one to `live`.
fn expired_sessions(
    map: &HashMap<MapData, SessionKey, Session>,
    name: &'static str,
    timeouts: &Timeouts,
    now_ns: u64,
    scanned: &mut usize,
    mut live: impl FnMut(&SessionKey),
) -> Result<Vec<SessionKey>> {
    let mut expired = Vec::new();
    *scanned += batch::for_each_in(map, |key: &SessionKey, session: &Session| {
        let timeout = session_timeout(timeouts, key.proto, session.tcp_state);
        if is_expired(session.last_seen_ns, now_ns, timeout) {
            expired.push(*key);
        } else {
            live(key);
        }
    })
    .map_err(walk_error(name))?;
    Ok(expired)
}

/// Deletes the sessions of `keys` that are still expired; hands those a
/// packet refreshed since the walk to `live`. Returns how many it deleted.
fn remove_sessions(
    map: &mut HashMap<MapData, SessionKey, Session>,
    name: &'static str,
    keys: &[SessionKey],
    timeouts: &Timeouts,
    now_ns: u64,
    mut live: impl FnMut(&SessionKey),
) -> Result<usize> {
    let mut removed = 0;
    for key in keys {
        let removal = remove_if(map, name, key, |session| {
            let timeout = session_timeout(timeouts, key.proto, session.tcp_state);
            is_expired(session.last_seen_ns, now_ns, timeout)
        })?;
        match removal {
            Removal::Removed => removed += 1,
            Removal::Kept => live(key),
            Removal::Gone => {}
        }
    }
    Ok(removed)
}

/// Ages out expired sessions, forward sessions and idle mappings, as of
/// `now_ns` on the datapath's clock ([`datapath_now_ns`]).
pub fn sweep(maps: &mut Maps, timeouts: &Timeouts, now_ns: u64) -> Result<SweepReport> {
    let start = Instant::now();
    let mut report = SweepReport::default();

    // Sessions: collect the expired ones, remember which ports are in use.
    let mut live = LivePorts::new();
    let expired = expired_sessions(
        &maps.sessions,
        names::SESSIONS,
        timeouts,
        now_ns,
        &mut report.scanned,
        |key| live.mark(key.proto, key.external_port),
    )?;
    report.sessions_removed = remove_sessions(
        &mut maps.sessions,
        names::SESSIONS,
        &expired,
        timeouts,
        now_ns,
        |key| live.mark(key.proto, key.external_port),
    )?;
    drop(expired);

    // Bindings: collect the halves that are idle with no live session.
    let mut idle: Vec<(EndpointKey, Binding)> = Vec::new();
    report.scanned += batch::for_each_in(&maps.bindings, |key: &EndpointKey, b: &Binding| {
        let external_port = if key.direction == DIR_INBOUND {
            key.port
        } else {
            b.port
        };
        if !live.contains(key.proto, external_port)
            && is_expired(b.last_seen_ns, now_ns, binding_timeout(timeouts, key.proto))
        {
            idle.push((*key, *b));
        }
    })
    .map_err(walk_error(names::BINDINGS))?;
    report.bindings_removed = remove_bindings(&mut maps.bindings, &idle, timeouts, now_ns)?;
    drop(idle);

    // Forward sessions.
    let expired = expired_sessions(
        &maps.forward_sessions,
        names::FORWARD_SESSIONS,
        timeouts,
        now_ns,
        &mut report.scanned,
        |_| {},
    )?;
    report.forward_sessions_removed = remove_sessions(
        &mut maps.forward_sessions,
        names::FORWARD_SESSIONS,
        &expired,
        timeouts,
        now_ns,
        |_| {},
    )?;

    report.elapsed = start.elapsed();
    Ok(report)
}

/// Removes the idle halves found by the walk: whole mappings whose other
/// half is idle too, and halves whose partner is missing or belongs to
/// another mapping. Returns how many entries it deleted.
fn remove_bindings(
    bindings: &mut HashMap<MapData, EndpointKey, Binding>,
    idle: &[(EndpointKey, Binding)],
    timeouts: &Timeouts,
    now_ns: u64,
) -> Result<usize> {
    const NAME: &str = names::BINDINGS;
    let expired = |proto: u8, b: &Binding| {
        is_expired(b.last_seen_ns, now_ns, binding_timeout(timeouts, proto))
    };
    let mut removed = 0;
    let mut count = |removal: Removal| {
        if removal == Removal::Removed {
            removed += 1;
        }
    };

    // Inbound halves first: each one decides for its whole mapping.
    for (inbound, internal) in idle.iter().filter(|(k, _)| k.direction == DIR_INBOUND) {
        let (proto, external_port) = (inbound.proto, inbound.port);
        let outbound = EndpointKey::outbound(proto, internal.addr, internal.port);
        match lookup(bindings, NAME, &outbound)? {
            // The partner: the mapping goes only if both halves are idle.
            // This lookup, made after the walk, is the outbound half's
            // re-check.
            Some(partner) if partner.port == external_port => {
                if !expired(proto, &partner) {
                    continue;
                }
                count(remove(bindings, NAME, &outbound)?);
            }
            // An orphan: no outbound half, or it maps to another port.
            _ => {}
        }
        let removal = remove_if(bindings, NAME, inbound, |b| {
            b.addr == internal.addr && b.port == internal.port && expired(proto, b)
        })?;
        count(removal);
    }

    // Outbound halves whose mapping the loop above did not settle: orphans.
    for (outbound, external) in idle.iter().filter(|(k, _)| k.direction != DIR_INBOUND) {
        let (proto, external_port) = (outbound.proto, external.port);
        let inbound = EndpointKey::inbound(proto, external_port);
        if let Some(partner) = lookup(bindings, NAME, &inbound)?
            && partner.addr == outbound.addr
            && partner.port == outbound.port
        {
            // A complete mapping whose inbound half is not idle.
            continue;
        }
        let removal = remove_if(bindings, NAME, outbound, |b| {
            b.port == external_port && expired(proto, b)
        })?;
        count(removal);
    }
    Ok(removed)
}

/// Runs the datapath's sweep program once with `params`.
pub fn run_sweep_program(
    program: &Xdp,
    maps: &mut Maps,
    params: SweepParams,
) -> Result<SweepReport> {
    let start = Instant::now();
    maps.sweep_params
        .set(0, params, 0)
        .map_err(|source| DatapathError::Map {
            name: names::SWEEP_PARAMS,
            source,
        })?;
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
        return Err(DatapathError::Map {
            name: names::SWEEP_PARAMS,
            source: MapError::KeyNotFound,
        });
    }
    let stats = maps
        .sweep_stats
        .get(&0, 0)
        .map_err(|source| DatapathError::Map {
            name: names::SWEEP_STATS,
            source,
        })?;
    Ok(SweepReport {
        scanned: stats.scanned as usize,
        sessions_removed: stats.sessions_removed as usize,
        forward_sessions_removed: stats.forward_sessions_removed as usize,
        bindings_removed: stats.bindings_removed as usize,
        elapsed: start.elapsed(),
    })
}

/// The parameters of one kernel sweep; `now_ns` 0 is the kernel's clock.
pub fn sweep_params(timeouts: &Timeouts, now_ns: u64, generation: u32) -> SweepParams {
    SweepParams {
        tcp_established_ns: timeouts.tcp_established.as_nanos() as u64,
        tcp_transitory_ns: timeouts.tcp_transitory.as_nanos() as u64,
        udp_ns: timeouts.udp.as_nanos() as u64,
        icmp_ns: timeouts.icmp.as_nanos() as u64,
        now_ns,
        generation,
        _pad: 0,
    }
}

/// The datapath's own sweep program, pinned, run on demand by the daemon.
pub struct KernelSweep {
    program: Xdp,
    generation: u32,
}

impl KernelSweep {
    /// Opens the sweep program pinned at `path` (see
    /// [`crate::datapath::Datapath::pin_program`]).
    pub fn from_pin(path: &std::path::Path) -> Result<Self> {
        let program =
            Xdp::from_pin(path, aya_obj::programs::XdpAttachType::Interface).map_err(|source| {
                DatapathError::Program {
                    name: programs::SWEEP,
                    source,
                }
            })?;
        Ok(Self {
            program,
            generation: 0,
        })
    }

    /// One sweep with `timeouts`, as of the kernel's clock now.
    pub fn run(&mut self, maps: &mut Maps, timeouts: &Timeouts) -> Result<SweepReport> {
        // Never 0: 0 is what LIVE_PORTS holds for a port never marked.
        self.generation = self.generation.wrapping_add(1).max(1);
        run_sweep_program(
            &self.program,
            maps,
            sweep_params(timeouts, 0, self.generation),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nat_common::{TCP_STATE_CLOSED, TCP_STATE_CLOSING, TCP_STATE_NONE, TCP_STATE_OPENING};

    const SEC: u64 = 1_000_000_000;

    fn timeouts() -> Timeouts {
        Timeouts::default()
    }

    #[test]
    fn session_timeout_by_protocol_and_state() {
        let t = timeouts();
        assert_eq!(
            session_timeout(&t, PROTO_TCP, TCP_STATE_ESTABLISHED),
            Duration::from_secs(7440)
        );
        for state in [
            TCP_STATE_NONE,
            TCP_STATE_OPENING,
            TCP_STATE_CLOSING,
            TCP_STATE_CLOSED,
        ] {
            assert_eq!(
                session_timeout(&t, PROTO_TCP, state),
                Duration::from_secs(240)
            );
        }
        assert_eq!(
            session_timeout(&t, PROTO_UDP, TCP_STATE_NONE),
            Duration::from_secs(300)
        );
        // tcp_state means nothing outside TCP.
        assert_eq!(
            session_timeout(&t, PROTO_UDP, TCP_STATE_ESTABLISHED),
            Duration::from_secs(300)
        );
        assert_eq!(
            session_timeout(&t, PROTO_ICMP, TCP_STATE_NONE),
            Duration::from_secs(60)
        );
        assert_eq!(session_timeout(&t, 47, TCP_STATE_NONE), t.udp);
    }

    #[test]
    fn binding_timeout_is_the_shortest_session_timeout() {
        let mut t = timeouts();
        assert_eq!(binding_timeout(&t, PROTO_TCP), Duration::from_secs(240));
        assert_eq!(binding_timeout(&t, PROTO_UDP), Duration::from_secs(300));
        assert_eq!(binding_timeout(&t, PROTO_ICMP), Duration::from_secs(60));
        assert_eq!(binding_timeout(&t, 47), t.udp);
        t.tcp_established = Duration::from_secs(100);
        assert_eq!(binding_timeout(&t, PROTO_TCP), Duration::from_secs(100));
    }

    #[test]
    fn expiry_needs_strictly_more_idle_than_the_timeout() {
        let timeout = Duration::from_secs(60);
        let now = 1_000 * SEC;
        assert!(!is_expired(now, now, timeout));
        assert!(!is_expired(now - 60 * SEC, now, timeout));
        assert!(is_expired(now - 60 * SEC - 1, now, timeout));
        assert!(is_expired(0, now, timeout));
        // Stamped after the sweep read the clock: never expired.
        assert!(!is_expired(now + 1, now, timeout));
        assert!(!is_expired(u64::MAX, now, timeout));
        assert!(!is_expired(u64::MAX, 0, Duration::ZERO));
    }

    #[test]
    fn remaining_saturates() {
        let timeout = Duration::from_secs(60);
        let now = 1_000 * SEC;
        assert_eq!(remaining(now, now, timeout), timeout);
        assert_eq!(
            remaining(now - 20 * SEC, now, timeout),
            Duration::from_secs(40)
        );
        assert_eq!(remaining(now - 60 * SEC, now, timeout), Duration::ZERO);
        assert_eq!(remaining(0, now, timeout), Duration::ZERO);
        assert_eq!(remaining(now + 5 * SEC, now, timeout), timeout);
    }

    #[test]
    fn live_ports_are_per_protocol() {
        let mut live = LivePorts::new();
        for (proto, port) in [(PROTO_TCP, 0), (PROTO_UDP, 65535), (PROTO_ICMP, 4242)] {
            live.mark(proto, port);
        }
        assert!(live.contains(PROTO_TCP, 0));
        assert!(!live.contains(PROTO_UDP, 0));
        assert!(live.contains(PROTO_UDP, 65535));
        assert!(!live.contains(PROTO_ICMP, 65535));
        assert!(live.contains(PROTO_ICMP, 4242));
        assert!(!live.contains(PROTO_TCP, 4242));
        assert!(!live.contains(PROTO_TCP, 1));
        // Other protocols have no mappings: never marked, never live.
        live.mark(47, 1);
        assert!(!live.contains(47, 1));
        assert_eq!(live.0.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
    }

    #[test]
    fn sweep_report_serializes() {
        let report = SweepReport {
            scanned: 3,
            bindings_removed: 2,
            ..SweepReport::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scanned"], 3);
        assert_eq!(json["bindings_removed"], 2);
    }
}
