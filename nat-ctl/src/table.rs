//! The NAT table as users know it from their router: static entries from the
//! forwarding rules, conversations through them, and dynamic entries from
//! live sessions; and the counters behind `natctl stats`.
use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use nat_common::{
    Counter, CounterValue, PROTO_ICMP, Session, SessionKey, SweepParams, TCP_STATE_CLOSED,
    TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED, TCP_STATE_HALF_CLOSED_BY_ANSWERER,
    TCP_STATE_HALF_CLOSED_BY_OPENER, TCP_STATE_OPENING,
};
use serde::{Deserialize, Serialize};

use crate::{
    aging,
    config::Timeouts,
    datapath::{DatapathError, MapView, SweepReport},
    rules::{PortRange, Protocol, RuleSet, protocol_name},
};

/// Which NAT table rows to show; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFilter {
    pub protocol: Option<String>,
    /// Matches the local or the remote address.
    pub address: Option<Ipv4Addr>,
    /// Matches the local, external or remote port.
    pub port: Option<u16>,
    /// STATIC, DYNAMIC (or UPNP).
    pub kind: Option<String>,
}

/// A port, or a rule's range of ports; unlike a [`PortRange`] it may be 0
/// (an ICMP query id).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    fn one(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl From<PortRange> for Ports {
    fn from(range: PortRange) -> Self {
        Self {
            first: range.first,
            last: range.last,
        }
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl From<Ports> for String {
    fn from(ports: Ports) -> String {
        ports.to_string()
    }
}

impl TryFrom<String> for Ports {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let bad = || format!("bad port or range {text:?}");
        let (first, last) = text.split_once('-').unwrap_or((&text, &text));
        let first = first.parse().map_err(|_| bad())?;
        let last = last.parse().map_err(|_| bad())?;
        Ok(Self { first, last })
    }
}

/// One row of the NAT table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableRow {
    pub local_ip: Ipv4Addr,
    pub local_port: Ports,
    pub external_port: Ports,
    /// `None`: any remote (a static rule).
    pub remote_ip: Option<Ipv4Addr>,
    pub remote_port: Option<u16>,
    /// TCP, UDP, ICMP, or TCP/UDP for a rule covering both.
    pub protocol: String,
    /// STATIC, UPNP, NATPMP or PCP (a rule, or a conversation through one),
    /// or DYNAMIC.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds left before the entry expires if idle; `None`: permanent.
    pub timeout_secs: Option<u64>,
    /// The TCP state of a conversation.
    pub state: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// The rule behind a static row.
    pub rule: Option<String>,
}

impl TableRow {
    fn matches(&self, filter: &TableFilter) -> bool {
        if let Some(protocol) = &filter.protocol
            && !self
                .protocol
                .to_ascii_lowercase()
                .split('/')
                .any(|p| p == protocol)
        {
            return false;
        }
        if let Some(address) = filter.address
            && self.local_ip != address
            && self.remote_ip != Some(address)
        {
            return false;
        }
        if let Some(port) = filter.port
            && !self.local_port.contains(port)
            && !self.external_port.contains(port)
            && self.remote_port != Some(port)
        {
            return false;
        }
        if let Some(kind) = &filter.kind
            && !self.kind.eq_ignore_ascii_case(kind)
        {
            return false;
        }
        true
    }
}

fn tcp_state_name(state: u8) -> &'static str {
    match state {
        TCP_STATE_OPENING => "opening",
        TCP_STATE_ESTABLISHED => "established",
        TCP_STATE_HALF_CLOSED_BY_OPENER | TCP_STATE_HALF_CLOSED_BY_ANSWERER => "half-closed",
        TCP_STATE_CLOSING => "closing",
        TCP_STATE_CLOSED => "closed",
        _ => "-",
    }
}

fn conversation_row(
    key: &SessionKey,
    session: &Session,
    kind: &str,
    rule: Option<String>,
    policy: &SweepParams,
) -> TableRow {
    let timeout_ns = policy.session_timeout_ns(key.proto, session.tcp_state);
    let left_ns = nat_common::remaining_ns(session.last_seen_ns, policy.now_ns, timeout_ns);
    TableRow {
        local_ip: Ipv4Addr::from(session.internal_addr),
        local_port: Ports::one(session.internal_port),
        external_port: Ports::one(key.external_port),
        remote_ip: Some(Ipv4Addr::from(key.remote_addr)),
        // Address-dependent filtering and ICMP keep no remote port.
        remote_port: (key.remote_port != 0 || key.proto == PROTO_ICMP).then_some(key.remote_port),
        protocol: protocol_name(key.proto).to_owned(),
        kind: kind.to_owned(),
        timeout_secs: Some(Duration::from_nanos(left_ns).as_secs()),
        state: (key.proto == nat_common::PROTO_TCP)
            .then(|| tcp_state_name(session.tcp_state).to_owned()),
        packets: session.packets,
        bytes: session.bytes,
        rule,
    }
}

/// The NAT table, filtered: the enabled rules, then the conversations
/// through them, then the dynamic entries.
pub fn table_rows(
    rules: &RuleSet,
    maps: &MapView,
    timeouts: &Timeouts,
    now_ns: u64,
    unix_now: u64,
    filter: &TableFilter,
) -> Result<Vec<TableRow>, DatapathError> {
    let mut rows = Vec::new();
    for (id, rule) in rules.iter().filter(|(_, rule)| rule.enabled) {
        let counters = maps.rule_counters(id)?;
        let row = TableRow {
            local_ip: rule.internal_addr,
            local_port: rule.internal.into(),
            external_port: rule.external.into(),
            remote_ip: None,
            remote_port: None,
            protocol: match rule.protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Both => "TCP/UDP",
            }
            .to_owned(),
            kind: rule.kind().to_owned(),
            // A UPnP mapping's lease runs out; a static rule's does not.
            timeout_secs: rule
                .upnp
                .as_ref()
                .and_then(|lease| lease.expires_at)
                .map(|expires| expires.saturating_sub(unix_now)),
            // Whether a scheduled rule lets remotes in now.
            state: (!rule.schedule.is_always()).then(|| {
                if rule.off_schedule {
                    "off-schedule"
                } else {
                    "on-schedule"
                }
                .to_owned()
            }),
            packets: counters.inbound.packets + counters.outbound.packets,
            bytes: counters.inbound.bytes + counters.outbound.bytes,
            rule: Some(rule.name.clone()),
        };
        if row.matches(filter) {
            rows.push(row);
        }
    }
    let rule_of = |proto: u8, port: u16| {
        rules
            .iter()
            .find(|(_, rule)| {
                rule.enabled
                    && rule.protocol.numbers().contains(&proto)
                    && (rule.external.first..=rule.external.last).contains(&port)
            })
            .map(|(_, rule)| (rule.name.clone(), rule.kind()))
    };
    // The sweep's own decisions, so the table shows what it will do.
    let policy = aging::sweep_params(timeouts, now_ns, 0);
    let mut conversations = Vec::new();
    maps.forward_sessions()
        .for_each(|key: &SessionKey, session: &Session| {
            let (rule, kind) = rule_of(key.proto, key.external_port)
                .map_or((None, "STATIC"), |(name, kind)| (Some(name), kind));
            let row = conversation_row(key, session, kind, rule, &policy);
            if row.matches(filter) {
                conversations.push(row);
            }
        });
    let mut dynamic = Vec::new();
    maps.sessions()
        .for_each(|key: &SessionKey, session: &Session| {
            let row = conversation_row(key, session, "DYNAMIC", None, &policy);
            if row.matches(filter) {
                dynamic.push(row);
            }
        });
    let order = |row: &TableRow| {
        (
            row.external_port.first,
            row.protocol.clone(),
            row.remote_ip,
            row.remote_port,
        )
    };
    conversations.sort_by_key(order);
    dynamic.sort_by_key(order);
    rows.extend(conversations);
    rows.extend(dynamic);
    Ok(rows)
}

pub fn format_table(rows: &[TableRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>11} {:>11} {:<15} {:>6} {:<7} {:<7} {:>9} {:<12} {:>9} {:>11} RULE",
        "LOCAL IP",
        "LOCAL PORT",
        "EXTERNAL",
        "REMOTE IP",
        "PORT",
        "PROTO",
        "TYPE",
        "TIMEOUT",
        "STATE",
        "PACKETS",
        "BYTES"
    );
    for row in rows {
        let remote_ip = row.remote_ip.map_or("ANY".to_owned(), |ip| ip.to_string());
        let remote_port = row.remote_port.map_or("ANY".to_owned(), |p| p.to_string());
        let timeout = row
            .timeout_secs
            .map_or("PERMANENT".to_owned(), |s| format!("{s}s"));
        let _ = writeln!(
            out,
            "{:<15} {:>11} {:>11} {:<15} {:>6} {:<7} {:<7} {:>9} {:<12} {:>9} {:>11} {}",
            row.local_ip,
            row.local_port.to_string(),
            row.external_port.to_string(),
            remote_ip,
            remote_port,
            row.protocol,
            row.kind,
            timeout,
            row.state.as_deref().unwrap_or("-"),
            row.packets,
            row.bytes,
            row.rule.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// Packets and bytes through one rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleStats {
    pub name: String,
    pub inbound: Traffic,
    pub outbound: Traffic,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl From<CounterValue> for Traffic {
    fn from(value: CounterValue) -> Self {
        Self {
            packets: value.packets,
            bytes: value.bytes,
        }
    }
}

/// What `natctl stats` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Every datapath counter by its label (see `nat_common::Counter`).
    pub counters: std::collections::BTreeMap<String, Traffic>,
    pub rules: Vec<RuleStats>,
    pub dynamic_mappings: usize,
    pub last_sweep: Option<SweepReport>,
}

pub fn stats(
    rules: &RuleSet,
    maps: &MapView,
    last_sweep: Option<SweepReport>,
) -> Result<Stats, DatapathError> {
    let counters = maps
        .counters()?
        .into_iter()
        .map(|(counter, value)| (counter.label().to_owned(), value.into()))
        .collect();
    let mut rule_stats = Vec::new();
    for (id, rule) in rules.iter() {
        let counters = maps.rule_counters(id)?;
        rule_stats.push(RuleStats {
            name: rule.name.clone(),
            inbound: counters.inbound.into(),
            outbound: counters.outbound.into(),
        });
    }
    // Each mapping holds exactly one port (its outbound half may be implied).
    let dynamic_mappings = maps.held_ports()?.len();
    Ok(Stats {
        counters,
        rules: rule_stats,
        dynamic_mappings,
        last_sweep,
    })
}

/// Groups of counters as a user reads them, in this order.
const GROUPS: &[(&str, &[Counter])] = &[
    ("received", &[Counter::LanRx, Counter::WanRx]),
    (
        "translated",
        &[
            Counter::Snat,
            Counter::Dnat,
            Counter::Forwarded,
            Counter::Hairpin,
            Counter::IcmpErrorIn,
            Counter::IcmpErrorOut,
            Counter::FragTranslated,
        ],
    ),
    ("events", &[Counter::NewBinding]),
    (
        "fragments",
        &[
            Counter::FragTracked,
            Counter::FragExpired,
            Counter::FragIdRewritten,
            Counter::DropFragIdBusy,
            Counter::PassFragReassembly,
            Counter::RelaySteered,
            Counter::DropRelayDown,
        ],
    ),
    (
        "dropped",
        &[
            Counter::DropPortExhausted,
            Counter::DropUnsolicited,
            Counter::DropTableFull,
            Counter::DropMalformed,
            Counter::DropUnsupportedProto,
            Counter::DropProtoBusy,
            Counter::DropIcmpUntranslated,
            Counter::DropIcmpUnknown,
            Counter::DropIcmpBadChecksum,
            Counter::DropIcmpBadQuotedChecksum,
            Counter::DropNoWanAddress,
            Counter::DropToLanPrefix,
        ],
    ),
];

/// Counters that count events, not traffic: the packet that caused one is
/// counted by its own verdict, so their bytes mean nothing.
const EVENTS: &[(Counter, &str)] = &[
    (Counter::NewBinding, "mappings created"),
    (Counter::SessionTableFull, "sessions not recorded"),
    (
        Counter::ForwardSessionEvicted,
        "conversations evicted by newer ones",
    ),
    (
        Counter::RemoteNotAllowed,
        "refused by a rule's allowed remotes",
    ),
    (Counter::ConnectionEventLost, "connections not logged"),
];

pub fn format_stats(stats: &Stats) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, traffic: Traffic| match EVENTS
        .iter()
        .find(|(counter, _)| counter.label() == label)
    {
        Some((_, what)) => {
            let _ = writeln!(out, "  {label:<24} {:>12} {what}", traffic.packets);
        }
        None => {
            let _ = writeln!(
                out,
                "  {:<24} {:>12} packets {:>14} bytes",
                label, traffic.packets, traffic.bytes
            );
        }
    };
    let mut shown = std::collections::HashSet::new();
    for (group, counters) in GROUPS {
        let _ = writeln!(out, "{group}:");
        for counter in *counters {
            shown.insert(counter.label());
            line(
                &mut out,
                counter.label(),
                stats
                    .counters
                    .get(counter.label())
                    .copied()
                    .unwrap_or_default(),
            );
        }
    }
    let _ = writeln!(out, "passed to the kernel and other events:");
    for (label, traffic) in &stats.counters {
        if !shown.contains(label.as_str()) {
            line(&mut out, label, *traffic);
        }
    }
    let _ = writeln!(out, "dynamic mappings: {}", stats.dynamic_mappings);
    if let Some(sweep) = &stats.last_sweep {
        let _ = writeln!(
            out,
            "last aging sweep: {} entries scanned in {:.1} ms; removed {} sessions, {} forward sessions, {} mappings; brought {} sessions home",
            sweep.scanned,
            sweep.elapsed.as_secs_f64() * 1000.0,
            sweep.sessions_removed,
            sweep.forward_sessions_removed,
            sweep.bindings_removed,
            sweep.sessions_moved_home + sweep.forward_sessions_moved_home
        );
    }
    if !stats.rules.is_empty() {
        let _ = writeln!(out, "rules:");
        for rule in &stats.rules {
            let _ = writeln!(
                out,
                "  {:<24} in {:>10} packets {:>12} bytes   out {:>10} packets {:>12} bytes",
                rule.name,
                rule.inbound.packets,
                rule.inbound.bytes,
                rule.outbound.packets,
                rule.outbound.bytes
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_row() -> TableRow {
        TableRow {
            local_ip: "192.168.0.12".parse().unwrap(),
            local_port: Ports::try_from("6881-6889".to_owned()).unwrap(),
            external_port: Ports::try_from("6881-6889".to_owned()).unwrap(),
            remote_ip: None,
            remote_port: None,
            protocol: "TCP/UDP".into(),
            kind: "STATIC".into(),
            timeout_secs: None,
            state: None,
            packets: 0,
            bytes: 0,
            rule: Some("torrent".into()),
        }
    }

    #[test]
    fn filters_match_ranges_both_protocols_and_either_address() {
        let row = rule_row();
        let filter = |f: TableFilter| row.matches(&f);
        assert!(filter(TableFilter::default()));
        assert!(filter(TableFilter {
            protocol: Some("udp".into()),
            ..Default::default()
        }));
        assert!(!filter(TableFilter {
            protocol: Some("icmp".into()),
            ..Default::default()
        }));
        assert!(filter(TableFilter {
            port: Some(6885),
            ..Default::default()
        }));
        assert!(!filter(TableFilter {
            port: Some(6890),
            ..Default::default()
        }));
        assert!(filter(TableFilter {
            address: Some("192.168.0.12".parse().unwrap()),
            kind: Some("STATIC".into()),
            ..Default::default()
        }));
        assert!(!filter(TableFilter {
            kind: Some("DYNAMIC".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn format_shows_permanent_and_any() {
        let text = format_table(&[rule_row()]);
        assert!(text.contains("PERMANENT") && text.contains("ANY") && text.contains("6881-6889"));
    }

    #[test]
    fn event_counters_are_shown_as_counts_not_traffic() {
        let traffic = |packets, bytes| Traffic { packets, bytes };
        let stats = Stats {
            counters: [
                ("new_binding".to_owned(), traffic(7, 420)),
                ("snat".to_owned(), traffic(100, 6000)),
            ]
            .into_iter()
            .collect(),
            rules: Vec::new(),
            dynamic_mappings: 7,
            last_sweep: None,
        };
        let text = format_stats(&stats);
        let binding = text
            .lines()
            .find(|line| line.contains("new_binding"))
            .unwrap();
        assert!(binding.contains("7 mappings created"), "{binding}");
        assert!(!binding.contains("bytes"), "{binding}");
        let snat = text.lines().find(|line| line.contains("snat")).unwrap();
        assert!(
            snat.contains("100 packets") && snat.contains("6000 bytes"),
            "{snat}"
        );
    }
}
