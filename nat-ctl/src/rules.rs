//! Port-forwarding rules as a router's "virtual server" page has them, their
//! validation, and their expansion into datapath entries.
use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use aya::maps::lpm_trie::Key;
use ipnet::Ipv4Net;
use nat_common::{AllowedRemote, EndpointKey, FORWARD_RESTRICTED, Forward, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

pub use crate::schedule::{Schedule, ScheduleError};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("unknown protocol {0:?}: expected tcp, udp or both")]
    Protocol(String),
    #[error("bad port {0:?}: expected a number from 1 to 65535")]
    Port(String),
    #[error(
        "bad port range {0:?}: expected PORT or FIRST-LAST with FIRST <= LAST, from 1 to 65535"
    )]
    PortRange(String),
    #[error("bad internal address {0:?}: expected an IPv4 address such as 192.168.0.12")]
    Address(String),
    #[error("bad allowed remote prefix {0:?}: expected a CIDR such as 198.51.100.0/24")]
    Allow(String),
    #[error("bad rule name {0:?}: expected 1 to 64 letters, digits, '-', '_' or '.'")]
    Name(String),
    #[error(
        "bad forward {0:?}: expected PROTO/EXTERNAL=IP[:INTERNAL][,allow=CIDR][,name=NAME], \
         e.g. tcp/2222=192.168.0.12:22,allow=198.51.100.0/24"
    )]
    Syntax(String),
    #[error(
        "rule {name}: external ports {external} and internal ports {internal} differ in size; \
         a range must map to a range of the same size"
    )]
    RangeSize {
        name: String,
        external: PortRange,
        internal: PortRange,
    },
    #[error("rule {name}: internal address {addr} is outside the LAN {lan}")]
    OutsideLan {
        name: String,
        addr: Ipv4Addr,
        lan: Ipv4Net,
    },
    #[error("rule {name}: internal address {addr} is the network or broadcast address of {lan}")]
    NotAHost {
        name: String,
        addr: Ipv4Addr,
        lan: Ipv4Net,
    },
    #[error(
        "rule {name}: internal address {addr} is the router's own LAN address; forward to a LAN \
         host instead"
    )]
    RouterAddress { name: String, addr: Ipv4Addr },
    #[error("rule {name}: external {protocol} port {port} is already forwarded by rule {other}")]
    Overlap {
        name: String,
        other: String,
        protocol: &'static str,
        port: u16,
    },
    #[error(
        "rule {name}: internal {protocol} endpoint {addr}:{port} is already the target of rule \
         {other}; its replies could not tell which external port to leave by"
    )]
    SharedTarget {
        name: String,
        other: String,
        protocol: &'static str,
        addr: Ipv4Addr,
        port: u16,
    },
    #[error("a rule named {0} already exists")]
    DuplicateName(String),
    #[error("no rule named {0:?} (see `natctl list`)")]
    NotFound(String),
    #[error("too many rules: at most {} are supported", nat_common::MAX_RULES - 1)]
    TooMany,
    #[error(
        "{client} already holds {limit} mappings made by UPnP, NAT-PMP or PCP, the most one \
         LAN host may (max_mappings_per_client); remove some first"
    )]
    ClientQuota { client: Ipv4Addr, limit: usize },
    #[error(
        "the LAN's hosts already hold {limit} mappings made by UPnP, NAT-PMP or PCP, the most \
         there may be (max_mappings); the rest is kept for the admin's rules"
    )]
    LeasedQuota { limit: usize },
    #[error(
        "rule {name}: external {protocol} port {port} is in use by a dynamic mapping of \
         {internal} (a LAN host's own connection); pick another port, or retry once that \
         connection has ended and its mapping expired"
    )]
    InUseByMapping {
        name: String,
        protocol: &'static str,
        port: u16,
        internal: SocketAddrV4,
    },
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(
        "rule {name}: external {protocol} port {port} belongs to the router itself: {owner} \
         on its WAN address; pick another external port (`ss -lntup` shows the router's sockets)"
    )]
    RouterSocket {
        name: String,
        protocol: &'static str,
        port: u16,
        /// Who has the port, e.g. "sshd (pid 412) listens".
        owner: String,
    },
    #[error(
        "rule {name}: external {protocol} port {port} is not for mappings made by UPnP, NAT-PMP \
         or PCP: {reason}"
    )]
    ReservedPort {
        name: String,
        protocol: &'static str,
        port: u16,
        /// Why, e.g. "it is in [nat] reserved_ports (22)".
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Protocol {
    Tcp,
    Udp,
    Both,
}

impl Protocol {
    /// The IP protocol numbers this rule covers.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[PROTO_TCP],
            Protocol::Udp => &[PROTO_UDP],
            Protocol::Both => &[PROTO_TCP, PROTO_UDP],
        }
    }
}

pub fn protocol_name(number: u8) -> &'static str {
    match number {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        nat_common::PROTO_ICMP => "ICMP",
        // Translated by address (`nat-ebpf/src/proto.rs`).
        4 => "IPIP",
        41 => "IPV6",
        47 => "GRE",
        50 => "ESP",
        51 => "AH",
        132 => "SCTP",
        _ => "?",
    }
}

impl FromStr for Protocol {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "both" | "tcp+udp" => Ok(Protocol::Both),
            _ => Err(RuleError::Protocol(s.to_owned())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "both",
        })
    }
}

/// An inclusive range of ports, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn len(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

fn parse_port(s: &str) -> Result<u16, RuleError> {
    // Strict: no sign, no whitespace, no wrap-around.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::Port(s.to_owned()));
    }
    match s.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(RuleError::Port(s.to_owned())),
    }
}

impl FromStr for PortRange {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let range_error = |_| RuleError::PortRange(s.to_owned());
        match s.split_once('-') {
            None => parse_port(s).map(Self::single),
            Some((first, last)) => {
                let first = parse_port(first).map_err(range_error)?;
                let last = parse_port(last).map_err(range_error)?;
                if first > last {
                    return Err(RuleError::PortRange(s.to_owned()));
                }
                Ok(Self { first, last })
            }
        }
    }
}

impl TryFrom<String> for PortRange {
    type Error = RuleError;
    fn try_from(s: String) -> Result<Self, RuleError> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(range: PortRange) -> String {
        range.to_string()
    }
}

impl TryFrom<String> for Protocol {
    type Error = RuleError;
    fn try_from(s: String) -> Result<Self, RuleError> {
        s.parse()
    }
}

impl From<Protocol> for String {
    fn from(protocol: Protocol) -> String {
        protocol.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One port-forwarding rule, as the store and the API carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    pub name: String,
    pub protocol: Protocol,
    pub external: PortRange,
    pub internal_addr: Ipv4Addr,
    pub internal: PortRange,
    /// Remote prefixes allowed in; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Ipv4Net>,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Set on a mapping a client made by UPnP, NAT-PMP or PCP: which
    /// protocol, who, why, and until when. The field keeps its first name
    /// (`upnp`) so that existing stores and `natctl list --json` readers
    /// still read UPnP mappings as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upnp: Option<Lease>,
    /// When the rule lets remotes in (local time); absent: always.
    #[serde(default, skip_serializing_if = "Schedule::is_always")]
    pub schedule: Schedule,
    /// Outside its schedule right now: the daemon's to set from the
    /// schedule and its clock (see [`RuleSet::refresh_schedules`]), never
    /// stored or sent.
    #[serde(skip)]
    pub off_schedule: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// The protocol a client made a leased mapping with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseOrigin {
    /// The UPnP IGD; the default, so that stores written before NAT-PMP
    /// and PCP existed read as they were meant.
    #[default]
    Upnp,
    Natpmp,
    Pcp,
}

impl LeaseOrigin {
    pub fn is_upnp(&self) -> bool {
        *self == LeaseOrigin::Upnp
    }

    /// The protocol's name, for messages.
    pub fn protocol_name(self) -> &'static str {
        match self {
            LeaseOrigin::Upnp => "UPnP",
            LeaseOrigin::Natpmp => "NAT-PMP",
            LeaseOrigin::Pcp => "PCP",
        }
    }

    /// The rule type `natctl list` and `table` show.
    pub fn kind(self) -> &'static str {
        match self {
            LeaseOrigin::Upnp => "UPNP",
            LeaseOrigin::Natpmp => "NATPMP",
            LeaseOrigin::Pcp => "PCP",
        }
    }
}

/// The former name, from when only UPnP made leased mappings.
pub type UpnpLease = Lease;

/// What a client's mapping carries besides the rule itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// Absent (UPnP) in stores and JSON written before NAT-PMP and PCP.
    #[serde(default, skip_serializing_if = "LeaseOrigin::is_upnp")]
    pub origin: LeaseOrigin,
    /// The LAN host that asked for the mapping.
    pub client: Ipv4Addr,
    #[serde(default)]
    pub description: String,
    /// When the mapping expires, in seconds since the Unix epoch (wall
    /// clock, so that the remaining lease survives a restart); absent for a
    /// permanent mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// PCP: the mapping nonce (24 hex digits) a refresh or delete must
    /// repeat (RFC 6887 section 11.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl fmt::Display for ForwardRule {
    /// `web: tcp 8080 -> 192.168.0.12:8000 from any remote, enabled`, and
    /// the schedule if it has one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {} -> {}:{} from {}, {}",
            self.name,
            self.protocol,
            self.external,
            self.internal_addr,
            self.internal,
            self.allowed_remotes(),
            if self.enabled { "enabled" } else { "disabled" }
        )?;
        if !self.schedule.is_always() {
            write!(
                f,
                ", schedule {} ({})",
                self.schedule,
                if self.off_schedule {
                    "off schedule now"
                } else {
                    "on schedule now"
                }
            )?;
        }
        Ok(())
    }
}

impl ForwardRule {
    /// The allowed remote prefixes, or "any remote".
    pub fn allowed_remotes(&self) -> String {
        if self.allow.is_empty() {
            "any remote".to_owned()
        } else {
            self.allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// STATIC for the user's rules; UPNP, NATPMP or PCP for a client's
    /// mapping.
    pub fn kind(&self) -> &'static str {
        self.upnp
            .as_ref()
            .map_or("STATIC", |lease| lease.origin.kind())
    }

    /// The lease, when a client made this mapping with `origin`.
    pub fn lease_of(&self, origin: LeaseOrigin) -> Option<&Lease> {
        self.upnp.as_ref().filter(|lease| lease.origin == origin)
    }

    /// The LAN host that asked for this mapping, if a client made it.
    pub fn client(&self) -> Option<Ipv4Addr> {
        self.upnp.as_ref().map(|lease| lease.client)
    }

    /// The lease of a UPnP mapping (not of a NAT-PMP or PCP one).
    pub fn upnp_lease(&self) -> Option<&Lease> {
        self.lease_of(LeaseOrigin::Upnp)
    }
}

/// What one rule puts into the datapath.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuleEntries {
    pub forwards: Vec<(EndpointKey, Forward)>,
    pub allowed: Vec<AllowEntry>,
}

impl RuleEntries {
    pub fn append(&mut self, other: RuleEntries) {
        self.forwards.extend(other.forwards);
        self.allowed.extend(other.allowed);
    }
}

/// An `ALLOWED_REMOTES` key, in a form that can be compared and hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowEntry {
    /// 32 (the rule id) + the prefix length.
    pub prefix_len: u32,
    pub remote: AllowedRemote,
}

impl AllowEntry {
    pub fn key(&self) -> Key<AllowedRemote> {
        Key::new(self.prefix_len, self.remote)
    }
}

pub fn validate_name(name: &str) -> Result<(), RuleError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::Name(name.to_owned()))
    }
}

impl ForwardRule {
    /// Checks the rule on its own and against the LAN it forwards into;
    /// `lan` is the router's LAN address with its prefix (192.168.0.1/24),
    /// which no rule may forward to: the datapath would send the router's
    /// own traffic on that port to itself.
    pub fn validate(&self, lan: Ipv4Net) -> Result<(), RuleError> {
        let router = lan.addr();
        let lan = lan.trunc();
        validate_name(&self.name)?;
        if self.external.len() != self.internal.len() {
            return Err(RuleError::RangeSize {
                name: self.name.clone(),
                external: self.external,
                internal: self.internal,
            });
        }
        if !lan.contains(&self.internal_addr) {
            return Err(RuleError::OutsideLan {
                name: self.name.clone(),
                addr: self.internal_addr,
                lan,
            });
        }
        if lan.prefix_len() < 31
            && (self.internal_addr == lan.network() || self.internal_addr == lan.broadcast())
        {
            return Err(RuleError::NotAHost {
                name: self.name.clone(),
                addr: self.internal_addr,
                lan,
            });
        }
        if self.internal_addr == router {
            return Err(RuleError::RouterAddress {
                name: self.name.clone(),
                addr: router,
            });
        }
        Ok(())
    }

    /// The LAN endpoint that external `port` goes to, if the rule holds it.
    pub fn target_of(&self, port: u16) -> Option<SocketAddrV4> {
        let offset = port.checked_sub(self.external.first)?;
        (port <= self.external.last)
            .then(|| SocketAddrV4::new(self.internal_addr, self.internal.first + offset))
    }

    /// The datapath entries for this rule (none while it is disabled): for
    /// every port and protocol, one inbound entry (external port -> server)
    /// and one outbound entry (server -> external port, for its replies);
    /// and one allowed-remote entry per allowed prefix.
    ///
    /// Off its schedule, the rule is as if disabled but for its inbound
    /// entries, kept restricted with no allowed remote: no remote gets in,
    /// and the datapath still knows the port as the rule's, so no dynamic
    /// mapping takes it. Without its outbound entries the server is an
    /// ordinary LAN host: what it still sends on a cut connection leaves by
    /// a dynamic mapping, and the remote's reset comes back to it.
    pub fn entries(&self, rule_id: u32) -> RuleEntries {
        let mut entries = RuleEntries::default();
        if !self.enabled {
            return entries;
        }
        let flags = if self.allow.is_empty() && !self.off_schedule {
            0
        } else {
            FORWARD_RESTRICTED
        };
        for &proto in self.protocol.numbers() {
            for (external, internal) in self.external.ports().zip(self.internal.ports()) {
                let inbound = Forward {
                    addr: self.internal_addr.octets(),
                    port: internal,
                    flags,
                    _pad: 0,
                    rule_id,
                };
                let outbound = Forward {
                    addr: [0; 4],
                    port: external,
                    ..inbound
                };
                entries
                    .forwards
                    .push((EndpointKey::inbound(proto, external), inbound));
                if self.off_schedule {
                    continue;
                }
                entries.forwards.push((
                    EndpointKey::outbound(proto, self.internal_addr.octets(), internal),
                    outbound,
                ));
            }
        }
        for net in self.allow.iter().filter(|_| !self.off_schedule) {
            let net = net.trunc();
            entries.allowed.push(AllowEntry {
                prefix_len: 32 + u32::from(net.prefix_len()),
                remote: AllowedRemote::new(rule_id, net.network().octets()),
            });
        }
        entries
    }
}

/// The external ports client mappings are chosen from: not the
/// well-known ones.
pub const CLIENT_PORTS: PortRange = PortRange {
    first: 1024,
    last: 65535,
};

/// The external ports the enabled rules hold, as ranges by protocol, for
/// finding a free port in O(log n) per range skipped instead of checking
/// every rule for every candidate. Ranges of one protocol never overlap
/// (`check_conflicts`), so the range that could hold a port is the last
/// one starting at or below it.
#[derive(Clone, Debug, Default)]
pub struct PortIndex {
    /// (protocol number, first port) -> last port.
    ranges: std::collections::BTreeMap<(u8, u16), u16>,
}

impl PortIndex {
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a ForwardRule>) -> Self {
        let mut ranges = std::collections::BTreeMap::new();
        for rule in rules.into_iter().filter(|rule| rule.enabled) {
            for &proto in rule.protocol.numbers() {
                ranges.insert((proto, rule.external.first), rule.external.last);
            }
        }
        Self { ranges }
    }

    /// The range held around `port`, if a rule holds it.
    pub fn holding(&self, proto: u8, port: u16) -> Option<PortRange> {
        self.ranges
            .range(..=(proto, port))
            .next_back()
            .filter(|((of, _), last)| *of == proto && **last >= port)
            .map(|((_, first), last)| PortRange {
                first: *first,
                last: *last,
            })
    }

    /// The first port from `start` on, going round within `span`, that no
    /// rule holds and `usable` accepts; at most `span`'s length of ports
    /// are looked at, held ranges skipped whole.
    pub fn next_free(
        &self,
        proto: u8,
        start: u16,
        span: PortRange,
        mut usable: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        let start = if span.contains(start) {
            start
        } else {
            span.first
        };
        let mut port = start;
        let mut seen: u32 = 0;
        while seen < span.len() {
            let step = match self.holding(proto, port) {
                // Skip to the end of the held range (within the span).
                Some(held) => u32::from(held.last.min(span.last) - port) + 1,
                None if usable(port) => return Some(port),
                None => 1,
            };
            seen += step;
            port = if u32::from(port) + step > u32::from(span.last) {
                span.first + (u32::from(port) + step - u32::from(span.last) - 1) as u16
            } else {
                port + step as u16
            };
        }
        None
    }
}

/// Checks a set of rules against each other: unique names, no external port
/// forwarded twice, no internal endpoint targeted twice (its replies would
/// not know which external port to use). Disabled rules still hold their
/// name but no ports.
pub fn check_conflicts(rules: &[ForwardRule]) -> Result<(), RuleError> {
    // Every rule's every port, on each change: foldhash, not SipHash.
    let mut names = foldhash::HashMap::default();
    let mut external = foldhash::HashMap::default();
    let mut internal = foldhash::HashMap::default();
    for rule in rules {
        if names.insert(rule.name.as_str(), ()).is_some() {
            return Err(RuleError::DuplicateName(rule.name.clone()));
        }
        if !rule.enabled {
            continue;
        }
        for &proto in rule.protocol.numbers() {
            for (ext, int) in rule.external.ports().zip(rule.internal.ports()) {
                if let Some(other) = external.insert((proto, ext), rule.name.as_str()) {
                    return Err(RuleError::Overlap {
                        name: rule.name.clone(),
                        other: other.to_owned(),
                        protocol: protocol_name(proto),
                        port: ext,
                    });
                }
                if let Some(other) =
                    internal.insert((proto, rule.internal_addr, int), rule.name.as_str())
                {
                    return Err(RuleError::SharedTarget {
                        name: rule.name.clone(),
                        other: other.to_owned(),
                        protocol: protocol_name(proto),
                        addr: rule.internal_addr,
                        port: int,
                    });
                }
            }
        }
    }
    Ok(())
}

/// A remote prefix such as `198.51.100.0/24`, or a single address.
pub fn parse_allow(s: &str) -> Result<Ipv4Net, RuleError> {
    s.parse::<Ipv4Net>()
        .or_else(|_| s.parse::<Ipv4Addr>().map(Ipv4Net::from))
        .map_err(|_| RuleError::Allow(s.to_owned()))
}

/// The rules in force, each with the id the datapath knows it by (its index
/// into the per-rule counters and its key among the allowed remotes). Ids
/// stay with a rule across modifications and renames.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<(u32, ForwardRule)>,
}

impl RuleSet {
    pub fn iter(&self) -> impl Iterator<Item = (u32, &ForwardRule)> {
        self.rules.iter().map(|(id, rule)| (*id, rule))
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<(u32, &ForwardRule)> {
        self.iter().find(|(_, rule)| rule.name == name)
    }

    /// Replaces the rule named `name`, keeping its id (and counters).
    pub fn replace(&mut self, name: &str, rule: ForwardRule) -> Result<(), RuleError> {
        if rule.name != name && self.get(&rule.name).is_some() {
            return Err(RuleError::DuplicateName(rule.name));
        }
        *self.get_mut(name)? = rule;
        Ok(())
    }

    pub fn by_id(&self, id: u32) -> Option<&ForwardRule> {
        self.iter()
            .find(|(rule_id, _)| *rule_id == id)
            .map(|(_, rule)| rule)
    }

    pub fn to_vec(&self) -> Vec<ForwardRule> {
        self.rules.iter().map(|(_, rule)| rule.clone()).collect()
    }

    /// Adds a rule under `id`, or under the lowest free id; returns the id.
    pub fn add(&mut self, rule: ForwardRule, id: Option<u32>) -> Result<u32, RuleError> {
        if self.get(&rule.name).is_some() {
            return Err(RuleError::DuplicateName(rule.name));
        }
        let mut taken = vec![false; nat_common::MAX_RULES as usize];
        for (used, _) in &self.rules {
            taken[*used as usize] = true;
        }
        let id = match id {
            Some(id) if (1..nat_common::MAX_RULES).contains(&id) && !taken[id as usize] => id,
            _ => (1..nat_common::MAX_RULES)
                .find(|&candidate| !taken[candidate as usize])
                .ok_or(RuleError::TooMany)?,
        };
        self.rules.push((id, rule));
        Ok(id)
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut ForwardRule, RuleError> {
        self.rules
            .iter_mut()
            .find(|(_, rule)| rule.name == name)
            .map(|(_, rule)| rule)
            .ok_or_else(|| RuleError::NotFound(name.to_owned()))
    }

    pub fn remove(&mut self, name: &str) -> Result<ForwardRule, RuleError> {
        let index = self
            .rules
            .iter()
            .position(|(_, rule)| rule.name == name)
            .ok_or_else(|| RuleError::NotFound(name.to_owned()))?;
        Ok(self.rules.remove(index).1)
    }

    /// Every rule on its own against the LAN, then against each other.
    pub fn validate(&self, lan: Ipv4Net) -> Result<(), RuleError> {
        for (_, rule) in &self.rules {
            rule.validate(lan)?;
        }
        check_conflicts(&self.to_vec())
    }

    /// Everything the enabled rules put into the datapath.
    pub fn entries(&self) -> RuleEntries {
        let mut all = RuleEntries::default();
        for (id, rule) in &self.rules {
            all.append(rule.entries(*id));
        }
        all
    }

    /// Sets which rules are off their schedule at `now`.
    pub fn refresh_schedules(&mut self, now: &jiff::Zoned) {
        for (_, rule) in &mut self.rules {
            rule.off_schedule = !rule.schedule.is_on(now);
        }
    }

    /// The next instant at which a schedule may switch a rule.
    pub fn next_schedule_edge(&self, now: &jiff::Zoned) -> Option<jiff::Timestamp> {
        self.rules
            .iter()
            .filter_map(|(_, rule)| rule.schedule.next_edge(now))
            .min()
    }

    /// The rules of this set that `other` does not hold as they are under
    /// the same id, each with whether `other` has that id at all. A rule
    /// change touches only these: a rule the same under the same id puts
    /// the same entries in and holds the same ports.
    pub fn differing<'a>(&'a self, other: &RuleSet) -> Vec<(u32, &'a ForwardRule, bool)> {
        let theirs: foldhash::HashMap<u32, &ForwardRule> = other.iter().collect();
        self.iter()
            .filter_map(|(id, rule)| match theirs.get(&id) {
                Some(same) if *same == rule => None,
                known => Some((id, rule, known.is_some())),
            })
            .collect()
    }

    /// The (protocol, external port) pairs the enabled rules hold (on their
    /// schedule or not).
    #[cfg(test)]
    pub fn claimed_ports(&self) -> std::collections::HashSet<(u8, u16)> {
        self.rules
            .iter()
            .filter(|(_, rule)| rule.enabled)
            .flat_map(|(_, rule)| {
                rule.protocol
                    .numbers()
                    .iter()
                    .flat_map(move |&proto| rule.external.ports().map(move |port| (proto, port)))
            })
            .collect()
    }
}

/// A compact one-line form, used by the packet tests:
/// `PROTO/EXTERNAL=IP[:INTERNAL][,allow=CIDR][,name=NAME]`.
impl FromStr for ForwardRule {
    type Err = RuleError;
    fn from_str(spec: &str) -> Result<Self, RuleError> {
        let syntax = || RuleError::Syntax(spec.to_owned());
        let mut parts = spec.split(',');
        let mapping = parts.next().ok_or_else(syntax)?;
        let (outside, inside) = mapping.split_once('=').ok_or_else(syntax)?;
        let (protocol, external) = outside.split_once('/').ok_or_else(syntax)?;
        let protocol: Protocol = protocol.parse()?;
        let external: PortRange = external.parse()?;
        let (addr, internal) = match inside.split_once(':') {
            Some((addr, ports)) => (addr, ports.parse()?),
            None => (inside, external),
        };
        let internal_addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| RuleError::Address(addr.to_owned()))?;
        let mut rule = ForwardRule {
            name: format!("{protocol}-{external}"),
            protocol,
            external,
            internal_addr,
            internal,
            allow: Vec::new(),
            enabled: true,
            upnp: None,
            schedule: Schedule::default(),
            off_schedule: false,
        };
        for option in parts {
            match option.split_once('=') {
                Some(("allow", cidr)) => rule.allow.push(parse_allow(cidr)?),
                Some(("name", name)) => {
                    validate_name(name)?;
                    rule.name = name.to_owned();
                }
                _ => return Err(syntax()),
            }
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_index_finds_free_ports_skipping_held_ranges() {
        let mut rules = RuleSet::default();
        for rule in [
            "tcp/2000-2999=192.168.0.12:2000-2999,name=range",
            "tcp/3000=192.168.0.12:22,name=one",
            "both/65535=192.168.0.13:1,name=top",
        ] {
            rules.add(rule.parse().unwrap(), None).unwrap();
        }
        let mut off: ForwardRule = "udp/4000=192.168.0.14,name=off".parse().unwrap();
        off.enabled = false;
        rules.add(off, None).unwrap();
        let index = PortIndex::new(rules.iter().map(|(_, rule)| rule));
        let span = PortRange {
            first: 1024,
            last: 65535,
        };
        let any = |_| true;
        assert_eq!(index.holding(PROTO_TCP, 2500).map(|r| r.first), Some(2000));
        assert_eq!(index.holding(PROTO_UDP, 2500), None);
        assert_eq!(index.holding(PROTO_UDP, 4000), None, "disabled");
        assert_eq!(index.next_free(PROTO_TCP, 2000, span, any), Some(3001));
        assert_eq!(index.next_free(PROTO_TCP, 1999, span, any), Some(1999));
        assert_eq!(index.next_free(PROTO_UDP, 2000, span, any), Some(2000));
        // Round past the top, held by `top`, back to the bottom.
        assert_eq!(index.next_free(PROTO_UDP, 65535, span, any), Some(1024));
        // Out of the span: from its start.
        assert_eq!(index.next_free(PROTO_TCP, 80, span, any), Some(1024));
        // What `usable` refuses is skipped; nothing usable is None.
        assert_eq!(
            index.next_free(PROTO_TCP, 3001, span, |port| port > 5000),
            Some(5001)
        );
        assert_eq!(index.next_free(PROTO_TCP, 3001, span, |_| false), None);
        let full = PortRange {
            first: 2000,
            last: 3000,
        };
        assert_eq!(index.next_free(PROTO_TCP, 2100, full, any), None);
    }

    fn lan() -> Ipv4Net {
        "192.168.0.0/24".parse().unwrap()
    }

    #[test]
    fn parses_a_full_spec() {
        let rule: ForwardRule = "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24,name=ssh"
            .parse()
            .unwrap();
        assert_eq!(rule.name, "ssh");
        assert_eq!(rule.protocol, Protocol::Tcp);
        assert_eq!(rule.external, PortRange::single(2222));
        assert_eq!(rule.internal, PortRange::single(22));
        assert_eq!(rule.allow, vec!["198.51.100.0/24".parse().unwrap()]);
        rule.validate(lan()).unwrap();
    }

    #[test]
    fn internal_port_defaults_to_external() {
        let rule: ForwardRule = "both/6881-6889=192.168.0.20".parse().unwrap();
        assert_eq!(rule.internal, rule.external);
        assert_eq!(rule.entries(1).forwards.len(), 2 * 2 * 9);
    }

    #[test]
    fn rejects_bad_values_and_names_them() {
        let cases = [
            ("foo/80=192.168.0.2", RuleError::Protocol("foo".into())),
            ("tcp/0=192.168.0.2", RuleError::Port("0".into())),
            ("tcp/70000=192.168.0.2", RuleError::Port("70000".into())),
            ("tcp/+80=192.168.0.2", RuleError::Port("+80".into())),
            (
                "tcp/90-80=192.168.0.2",
                RuleError::PortRange("90-80".into()),
            ),
            (
                "tcp/80=192.168.0.300",
                RuleError::Address("192.168.0.300".into()),
            ),
            (
                "tcp/80=192.168.0.2,allow=1.2.3.4/40",
                RuleError::Allow("1.2.3.4/40".into()),
            ),
            ("tcp/80=192.168.0.2,name=a b", RuleError::Name("a b".into())),
            ("tcp:80", RuleError::Syntax("tcp:80".into())),
        ];
        for (spec, expected) in cases {
            assert_eq!(spec.parse::<ForwardRule>().unwrap_err(), expected, "{spec}");
        }
        let message = "tcp/0=192.168.0.2"
            .parse::<ForwardRule>()
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("\"0\"") && message.contains("1 to 65535"),
            "{message}"
        );
    }

    #[test]
    fn validation_against_the_lan() {
        let outside: ForwardRule = "tcp/80=10.0.0.5".parse().unwrap();
        assert!(matches!(
            outside.validate(lan()),
            Err(RuleError::OutsideLan { .. })
        ));
        let broadcast: ForwardRule = "tcp/80=192.168.0.255".parse().unwrap();
        assert!(matches!(
            broadcast.validate(lan()),
            Err(RuleError::NotAHost { .. })
        ));
        // The router's own LAN address, given with the LAN's prefix.
        let router: ForwardRule = "tcp/80=192.168.0.1,name=web".parse().unwrap();
        let error = router
            .validate("192.168.0.1/24".parse().unwrap())
            .unwrap_err();
        assert!(matches!(error, RuleError::RouterAddress { .. }), "{error}");
        assert!(error.to_string().contains("192.168.0.1"), "{error}");
        // Errors name the LAN by its prefix, not the router's address.
        let error = outside
            .validate("192.168.0.1/24".parse().unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("192.168.0.0/24"), "{error}");
        let sizes: ForwardRule = "tcp/80-81=192.168.0.5:80".parse().unwrap();
        assert!(matches!(
            sizes.validate(lan()),
            Err(RuleError::RangeSize { .. })
        ));
    }

    #[test]
    fn conflicts_are_found() {
        let a: ForwardRule = "tcp/80-90=192.168.0.5,name=a".parse().unwrap();
        let b: ForwardRule = "both/85=192.168.0.6,name=b".parse().unwrap();
        assert!(matches!(
            check_conflicts(&[a.clone(), b.clone()]),
            Err(RuleError::Overlap { port: 85, .. })
        ));
        let mut disabled = b.clone();
        disabled.enabled = false;
        check_conflicts(&[a.clone(), disabled]).unwrap();
        let c: ForwardRule = "udp/85=192.168.0.6,name=a".parse().unwrap();
        assert_eq!(
            check_conflicts(&[a.clone(), c]),
            Err(RuleError::DuplicateName("a".into()))
        );
        let d: ForwardRule = "tcp/8080=192.168.0.5:80,name=d".parse().unwrap();
        assert!(matches!(
            check_conflicts(&[a, d]),
            Err(RuleError::SharedTarget { port: 80, .. })
        ));
    }

    #[test]
    fn rule_set_keeps_ids_and_names_unique() {
        let mut set = RuleSet::default();
        let a: ForwardRule = "tcp/80=192.168.0.5,name=a".parse().unwrap();
        let b: ForwardRule = "tcp/81=192.168.0.5,name=b".parse().unwrap();
        assert_eq!(set.add(a.clone(), None).unwrap(), 1);
        assert_eq!(set.add(b.clone(), Some(7)).unwrap(), 7);
        assert_eq!(
            set.add(a.clone(), None),
            Err(RuleError::DuplicateName("a".into()))
        );
        set.get_mut("a").unwrap().name = "renamed".into();
        assert_eq!(set.get("renamed").unwrap().0, 1);
        assert_eq!(set.remove("a"), Err(RuleError::NotFound("a".into())));
        set.remove("renamed").unwrap();
        // The freed id is reused; a taken one is not.
        assert_eq!(set.add(a, Some(7)).unwrap(), 1);
        assert_eq!(set.claimed_ports().len(), 2);
        set.get_mut("b").unwrap().enabled = false;
        assert_eq!(set.claimed_ports().len(), 1);
        assert!(set.entries().forwards.len() == 2);
    }

    #[test]
    fn target_of_follows_the_range_port_by_port() {
        let rule: ForwardRule = "udp/5000-5001=192.168.0.7:6000-6001".parse().unwrap();
        let at = |port| Some(SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 7), port));
        assert_eq!(rule.target_of(5000), at(6000));
        assert_eq!(rule.target_of(5001), at(6001));
        assert_eq!(rule.target_of(4999), None);
        assert_eq!(rule.target_of(5002), None);
    }

    #[test]
    fn off_schedule_a_rule_keeps_its_ports_but_lets_no_remote_in() {
        let mut set = RuleSet::default();
        let mut rule: ForwardRule = "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24,name=ssh"
            .parse()
            .unwrap();
        rule.schedule = "mon-fri 09:00-18:00".parse().unwrap();
        set.add(rule, None).unwrap();
        set.add("udp/53=192.168.0.13,name=dns".parse().unwrap(), None)
            .unwrap();
        let tz = jiff::tz::TimeZone::UTC;
        let monday_noon = jiff::civil::date(2026, 12, 7).at(12, 0, 0, 0);
        set.refresh_schedules(&monday_noon.to_zoned(tz.clone()).unwrap());
        let on = set.entries();
        assert_eq!(on.allowed.len(), 1);
        let sunday = jiff::civil::date(2026, 12, 6).at(12, 0, 0, 0);
        set.refresh_schedules(&sunday.to_zoned(tz.clone()).unwrap());
        let off = set.entries();
        assert!(off.allowed.is_empty(), "{off:?}");
        // The inbound forward only, restricted (with nobody allowed); the
        // unscheduled rule is untouched.
        let of_rule = |entries: &RuleEntries, id: u32| -> Vec<(EndpointKey, Forward)> {
            entries
                .forwards
                .iter()
                .filter(|(_, forward)| forward.rule_id == id)
                .copied()
                .collect()
        };
        let closed = of_rule(&off, 1);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!(closed[0].0, EndpointKey::inbound(PROTO_TCP, 2222));
        assert_eq!(closed[0].1.flags, FORWARD_RESTRICTED);
        assert_eq!(closed[0].1.port, 22);
        assert_eq!(of_rule(&off, 2), of_rule(&on, 2));
        assert_eq!(set.claimed_ports().len(), 2);
        let edge = set
            .next_schedule_edge(&sunday.to_zoned(tz.clone()).unwrap())
            .unwrap();
        assert_eq!(edge, "2026-12-07T09:00:00Z".parse().unwrap());
    }

    #[test]
    fn entries_map_ranges_port_by_port() {
        let rule: ForwardRule = "udp/5000-5001=192.168.0.7:6000-6001,allow=198.51.100.0/24"
            .parse()
            .unwrap();
        let entries = rule.entries(9);
        assert_eq!(
            entries.allowed,
            vec![AllowEntry {
                prefix_len: 56,
                remote: AllowedRemote::new(9, [198, 51, 100, 0])
            }]
        );
        let entries = entries.forwards;
        let inbound = entries
            .iter()
            .find(|(key, _)| *key == EndpointKey::inbound(PROTO_UDP, 5001))
            .unwrap();
        assert_eq!(inbound.1.port, 6001);
        assert_eq!(inbound.1.addr, [192, 168, 0, 7]);
        assert_eq!(inbound.1.flags, FORWARD_RESTRICTED);
        assert_eq!(inbound.1.rule_id, 9);
        let outbound = entries
            .iter()
            .find(|(key, _)| *key == EndpointKey::outbound(PROTO_UDP, [192, 168, 0, 7], 6001))
            .unwrap();
        assert_eq!(outbound.1.port, 5001);
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn a_schedule_is_stored_as_written_and_its_state_never() {
        let mut rule: ForwardRule = "tcp/2222=192.168.0.12:22,name=ssh".parse().unwrap();
        let plain = toml::to_string(&rule).unwrap();
        assert!(!plain.contains("schedule"), "{plain}");
        rule.schedule = "Mon-Fri 09:00-18:00,fri 22:00-02:00".parse().unwrap();
        rule.off_schedule = true;
        let text = toml::to_string(&rule).unwrap();
        assert!(
            text.contains("schedule = \"mon-fri 09:00-18:00, fri 22:00-02:00\""),
            "{text}"
        );
        assert!(!text.contains("off_schedule"), "{text}");
        let read: ForwardRule = toml::from_str(&text).unwrap();
        assert_eq!(read.schedule, rule.schedule);
        assert!(!read.off_schedule);
        let bad = text.replace("22:00-02:00", "22:00-26:00");
        let error = toml::from_str::<ForwardRule>(&bad).unwrap_err().to_string();
        assert!(error.contains("fri 22:00-26:00"), "{error}");
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn a_lease_without_origin_is_upnp_and_others_round_trip() {
        // A store written before NAT-PMP and PCP: no origin field.
        let old = r#"
name = "upnp-tcp-6881"
protocol = "tcp"
external = "6881"
internal_addr = "192.168.0.12"
internal = "6881"

[upnp]
client = "192.168.0.12"
description = "torrent"
expires_at = 1800000000
"#;
        let rule: ForwardRule = toml::from_str(old).unwrap();
        assert_eq!(rule.kind(), "UPNP");
        assert!(rule.upnp_lease().is_some());
        // UPnP JSON keeps its fields, without new ones.
        let json = serde_json::to_value(&rule).unwrap();
        assert_eq!(
            json["upnp"],
            serde_json::json!({"client": "192.168.0.12", "description": "torrent", "expires_at": 1800000000u64})
        );
        for (origin, kind) in [(LeaseOrigin::Natpmp, "NATPMP"), (LeaseOrigin::Pcp, "PCP")] {
            let mut other = rule.clone();
            let lease = other.upnp.as_mut().unwrap();
            lease.origin = origin;
            lease.nonce = Some("0102030405060708090a0b0c".into());
            assert_eq!(other.kind(), kind);
            assert!(other.upnp_lease().is_none());
            let text = toml::to_string(&other).unwrap();
            assert_eq!(
                toml::from_str::<ForwardRule>(&text).unwrap(),
                other,
                "{text}"
            );
        }
    }
}
