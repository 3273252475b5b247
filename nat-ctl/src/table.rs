//! The NAT table as users know it from their router: static entries from the
//! forwarding rules and dynamic entries from live sessions.
use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use nat_common::{
    Counter, CounterValue, DIR_INBOUND, TCP_STATE_CLOSED, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED,
    TCP_STATE_OPENING,
};
use serde::Serialize;

use crate::{
    datapath::{DatapathError, Maps},
    rules::protocol_name,
};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableEntry {
    pub local_ip: Ipv4Addr,
    pub local_port: u16,
    pub external_port: u16,
    /// `None` for a static entry: any remote.
    pub remote_ip: Option<Ipv4Addr>,
    pub remote_port: Option<u16>,
    pub protocol: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Seconds since the last packet; `None` for a static entry.
    pub idle_secs: Option<u64>,
    pub state: Option<&'static str>,
}

fn tcp_state_name(state: u8) -> &'static str {
    match state {
        TCP_STATE_OPENING => "opening",
        TCP_STATE_ESTABLISHED => "established",
        TCP_STATE_CLOSING => "closing",
        TCP_STATE_CLOSED => "closed",
        _ => "-",
    }
}

/// The datapath's clock: `bpf_ktime_get_coarse_ns` is CLOCK_MONOTONIC_COARSE.
fn datapath_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or_default()
}

pub fn read_table(maps: &Maps) -> Result<Vec<TableEntry>, DatapathError> {
    let map_error = |source| DatapathError::Map {
        name: nat_common::maps::FORWARDS,
        source,
    };
    let mut entries = Vec::new();
    for item in maps.forwards.iter() {
        let (key, forward) = item.map_err(map_error)?;
        if key.direction != DIR_INBOUND {
            continue;
        }
        entries.push(TableEntry {
            local_ip: Ipv4Addr::from(forward.addr),
            local_port: forward.port,
            external_port: key.port,
            remote_ip: None,
            remote_port: None,
            protocol: protocol_name(key.proto),
            kind: "STATIC",
            idle_secs: None,
            state: None,
        });
    }
    let now = datapath_now().as_nanos() as u64;
    for item in maps.sessions.iter() {
        let (key, session) = item.map_err(|source| DatapathError::Map {
            name: nat_common::maps::SESSIONS,
            source,
        })?;
        entries.push(TableEntry {
            local_ip: Ipv4Addr::from(session.internal_addr),
            local_port: session.internal_port,
            external_port: key.external_port,
            remote_ip: Some(Ipv4Addr::from(key.remote_addr)),
            remote_port: Some(key.remote_port),
            protocol: protocol_name(key.proto),
            kind: "DYNAMIC",
            idle_secs: Some(now.saturating_sub(session.last_seen_ns) / 1_000_000_000),
            state: (key.proto == nat_common::PROTO_TCP).then(|| tcp_state_name(session.tcp_state)),
        });
    }
    entries.sort_by_key(|e| {
        (
            e.kind,
            e.protocol,
            e.external_port,
            e.remote_ip,
            e.remote_port,
        )
    });
    Ok(entries)
}

pub fn format_table(entries: &[TableEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>5} {:>8} {:<15} {:>6} {:<5} {:<8} {:>9} STATE",
        "LOCAL IP", "PORT", "EXTERNAL", "REMOTE IP", "PORT", "PROTO", "TYPE", "IDLE"
    );
    for e in entries {
        let remote_ip = e.remote_ip.map_or("ANY".to_owned(), |ip| ip.to_string());
        let remote_port = e.remote_port.map_or("ANY".to_owned(), |p| p.to_string());
        let idle = e
            .idle_secs
            .map_or("PERMANENT".to_owned(), |s| format!("{s}s"));
        let _ = writeln!(
            out,
            "{:<15} {:>5} {:>8} {:<15} {:>6} {:<5} {:<8} {:>9} {}",
            e.local_ip,
            e.local_port,
            e.external_port,
            remote_ip,
            remote_port,
            e.protocol,
            e.kind,
            idle,
            e.state.unwrap_or("-")
        );
    }
    out
}

pub fn format_counters(counters: &[(Counter, CounterValue)]) -> String {
    let mut out = String::new();
    for (counter, value) in counters {
        let _ = writeln!(
            out,
            "{:<24} {:>12} packets {:>14} bytes",
            counter.label(),
            value.packets,
            value.bytes
        );
    }
    out
}

pub fn counters_json(counters: &[(Counter, CounterValue)]) -> serde_json::Value {
    let map = counters
        .iter()
        .map(|(counter, value)| {
            (
                counter.label().to_owned(),
                serde_json::json!({ "packets": value.packets, "bytes": value.bytes }),
            )
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(map)
}
