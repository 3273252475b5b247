//! The daemon's configuration file (TOML). Read, never written, by the
//! daemon; SIGHUP re-reads it.
use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

use crate::{rules::PortRange, store};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/natctl/natctl.toml";
pub const DEFAULT_SOCKET_PATH: &str = "/run/natctl/natctl.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/natctl";

/// Below this, a handful of LAN hosts opening connections would exhaust the
/// dynamic ports and new flows would be dropped.
const MIN_DYNAMIC_PORTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The reason is part of the message, not a source, so that a chain of
    // errors printed with `{:#}` says it once.
    #[error("cannot read config file {}: {}", path.display(), reason(error))]
    Read { path: PathBuf, error: io::Error },
    #[error("{} line {line}: not UTF-8 text; the config file must be UTF-8", path.display())]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{} line {line}, column {column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// The daemon's settings; every key is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    #[serde(deserialize_with = "rules_file")]
    pub rules_file: PathBuf,
    #[serde(deserialize_with = "socket")]
    pub socket: PathBuf,
    #[serde(deserialize_with = "pin_dir")]
    pub pin_dir: PathBuf,
    pub nat: NatSettings,
    #[serde(deserialize_with = "timeouts")]
    pub timeouts: Timeouts,
    pub upnp: UpnpSettings,
    pub natpmp: NatpmpSettings,
    pub metrics: MetricsSettings,
    pub web: WebSettings,
}

/// The `[web]` table: the admin page, off unless `listen` is set. It is
/// served on the LAN NIC only, and `listen` must be the router's LAN
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// The LAN address and port, e.g. "192.168.0.1:8080".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddrV4>,
    /// Host names the page may also be reached by (besides the listen
    /// address), e.g. "router.lan"; any other Host header is refused, so
    /// that a rebound DNS name cannot reach the page.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The Argon2id hash `natctl passwd` writes [default: `web-password`
    /// beside the rules file].
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "password_file"
    )]
    pub password_file: Option<PathBuf>,
}

impl DaemonConfig {
    /// Where the admin page's password hash is kept.
    pub fn password_file(&self) -> PathBuf {
        self.web.password_file.clone().unwrap_or_else(|| {
            self.rules_file
                .parent()
                .unwrap_or(Path::new("/"))
                .join("web-password")
        })
    }
}

fn password_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    absolute_path(
        deserializer,
        "password_file",
        "/var/lib/natctl/web-password",
    )
    .map(Some)
}

/// The `[metrics]` table: the Prometheus endpoint, off unless `listen` is
/// set. It has no authentication: give it a loopback or management
/// address, never the WAN's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where `GET /metrics` is served, e.g. "127.0.0.1:9469".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// The `[natpmp]` table: the NAT-PMP (RFC 6886) and PCP (RFC 6887) server
/// on the LAN, one switch for both (they share UDP port 5351). Secure mode
/// and the permissions are the `[upnp]` table's: one policy for every
/// protocol a client maps ports with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatpmpSettings {
    pub enabled: bool,
    /// The longest lifetime granted, in seconds; a client asking for more
    /// gets this (both RFCs let the server shorten a lifetime).
    #[serde(deserialize_with = "max_lease")]
    pub max_lifetime: u32,
    /// Requests per second one LAN host may make (twice that in a burst);
    /// beyond it requests are dropped unanswered.
    #[serde(deserialize_with = "rate_limit")]
    pub rate_limit: u32,
}

impl Default for NatpmpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_lifetime: 86_400,
            rate_limit: 200,
        }
    }
}

fn rate_limit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let rate = i64::deserialize(deserializer)?;
    if !(1..=1_000_000).contains(&rate) {
        return Err(D::Error::custom(format!(
            "rate_limit = {rate}: expected requests per second from 1 to 1000000"
        )));
    }
    Ok(rate as u32)
}

/// The `[upnp]` table: the IGD served on the LAN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpnpSettings {
    pub enabled: bool,
    /// A client may only map ports to itself, and only delete its own
    /// mappings.
    pub secure_mode: bool,
    /// The IGD version described by default: 2, or 1.
    #[serde(deserialize_with = "igd_version")]
    pub igd_version: u8,
    /// Clients whose User-Agent contains one of these get the IGDv1
    /// description: some (Windows, Xbox) break on v2.
    pub v1_user_agents: Vec<String>,
    /// The HTTP port for descriptions and control; 0 picks a free one.
    pub http_port: u16,
    /// The longest lease granted, in seconds (IGDv2: 604800, a week).
    #[serde(deserialize_with = "max_lease")]
    pub max_lease: u32,
    /// Whether a lease of 0 may mean a permanent mapping (IGDv1 clients
    /// ask for it). Off, 0 means `max_lease`: a mapping a client forgot
    /// must not outlive it, and reboots, for ever.
    pub allow_permanent: bool,
    /// The most mappings one LAN host may hold through UPnP, NAT-PMP and
    /// PCP together, enabled or not.
    pub max_mappings_per_client: usize,
    /// The most such mappings all hosts together may hold: the rest of the
    /// rule table is kept for the admin's own rules.
    #[serde(deserialize_with = "max_mappings")]
    pub max_mappings: usize,
    /// Checked in order, first match wins; no match is a denial. Empty:
    /// the safe default, ports 1024-65535 both sides, any LAN host.
    pub permissions: Vec<UpnpPermission>,
    /// Control requests per second one LAN host may make (twice that in a
    /// burst); beyond it they are answered 503 with Retry-After.
    #[serde(deserialize_with = "rate_limit")]
    pub rate_limit: u32,
    /// A STUN server ("host:port") that tells the public address when the
    /// WAN address is private, shared or reserved (behind another NAT);
    /// off unless set.
    #[serde(deserialize_with = "stun_server")]
    pub stun: Option<String>,
}

fn stun_server<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let server = String::deserialize(deserializer)?;
    let valid = server
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(D::Error::custom(format!(
            "stun = {server:?}: expected HOST:PORT, e.g. \"stun.example.net:3478\""
        )));
    }
    Ok(Some(server))
}

impl Default for UpnpSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            secure_mode: true,
            igd_version: 2,
            v1_user_agents: vec!["Windows".into(), "Xbox".into()],
            http_port: 0,
            max_lease: 604_800,
            allow_permanent: false,
            max_mappings_per_client: 128,
            max_mappings: 4096,
            permissions: Vec::new(),
            rate_limit: 50,
            stun: None,
        }
    }
}

impl UpnpSettings {
    /// The permission rules in force: the configured ones, or the default.
    pub fn effective_permissions(&self) -> Vec<UpnpPermission> {
        if !self.permissions.is_empty() {
            return self.permissions.clone();
        }
        let unprivileged = PortRange {
            first: 1024,
            last: 65535,
        };
        vec![UpnpPermission {
            action: PermissionAction::Allow,
            external: unprivileged,
            internal: ipnet::Ipv4Net::default(),
            internal_ports: unprivileged,
        }]
    }

    /// Whether a mapping of `external` to `internal:internal_port` may be
    /// made.
    pub fn permits(&self, external: u16, internal: std::net::Ipv4Addr, internal_port: u16) -> bool {
        self.effective_permissions()
            .iter()
            .find(|rule| {
                (rule.external.first..=rule.external.last).contains(&external)
                    && rule.internal.contains(&internal)
                    && (rule.internal_ports.first..=rule.internal_ports.last)
                        .contains(&internal_port)
            })
            .is_some_and(|rule| rule.action == PermissionAction::Allow)
    }
}

/// One `[[upnp.permissions]]` entry, as miniupnpd's `allow`/`deny` lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpnpPermission {
    pub action: PermissionAction,
    /// External ports, e.g. "1024-65535".
    pub external: PortRange,
    /// Internal addresses, e.g. "192.168.0.0/24".
    pub internal: ipnet::Ipv4Net,
    /// Internal ports.
    pub internal_ports: PortRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionAction {
    Allow,
    Deny,
}

fn igd_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let version = i64::deserialize(deserializer)?;
    match version {
        1 | 2 => Ok(version as u8),
        _ => Err(D::Error::custom(format!(
            "igd_version = {version}: expected 1 or 2"
        ))),
    }
}

/// Rule slots never given to clients, whatever `max_mappings` says.
const ADMIN_RULE_SLOTS: usize = 256;

fn max_mappings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let most = nat_common::MAX_RULES as usize - 1 - ADMIN_RULE_SLOTS;
    let value = i64::deserialize(deserializer)?;
    if !(0..=most as i64).contains(&value) {
        return Err(D::Error::custom(format!(
            "max_mappings = {value}: expected 0 to {most}, so that {ADMIN_RULE_SLOTS} rules are \
             always left for the admin"
        )));
    }
    Ok(value as usize)
}

fn max_lease<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let secs = i64::deserialize(deserializer)?;
    if !(1..=604_800).contains(&secs) {
        return Err(D::Error::custom(format!(
            "max_lease = {secs}: expected seconds from 1 to 604800 (a week)"
        )));
    }
    Ok(secs as u32)
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            rules_file: PathBuf::from(store::DEFAULT_RULES_PATH),
            socket: PathBuf::from(DEFAULT_SOCKET_PATH),
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            nat: NatSettings::default(),
            timeouts: Timeouts::default(),
            upnp: UpnpSettings::default(),
            natpmp: NatpmpSettings::default(),
            metrics: MetricsSettings::default(),
            web: WebSettings::default(),
        }
    }
}

/// The `[nat]` table: the NAT behaviour of RFC 4787 the datapath applies.
/// `mapping` and `filtering` are as resolved from the file's `mapping`,
/// `filtering` and `type` keys (see [`NatFile`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NatFile")]
pub struct NatSettings {
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// What becomes of a packet from the WAN that matches no entry.
    pub unsolicited: Unsolicited,
    /// Lets LAN hosts reach a forwarded port through the public address.
    pub hairpin: bool,
    /// The ports outbound flows are mapped to.
    pub ports: PortRange,
    /// Where an outbound flow from a system port (below 1024) is mapped
    /// when its own port is taken (RFC 4787 REQ-3a): system ports, by
    /// default 600-1023, above those where the router's own services
    /// usually listen.
    pub low_ports: PortRange,
    /// IP protocols other than TCP, UDP and ICMP.
    pub other_protocols: OtherProtocols,
    /// External ports (or FIRST-LAST ranges) that UPnP, NAT-PMP and PCP
    /// clients may not map, e.g. the router's own services that do not
    /// always listen.
    pub reserved_ports: Vec<PortRange>,
}

impl Default for NatSettings {
    fn default() -> Self {
        Self {
            mapping: Mapping::default(),
            filtering: Filtering::default(),
            unsolicited: Unsolicited::default(),
            hairpin: true,
            ports: PortRange {
                first: 1024,
                last: 65535,
            },
            low_ports: PortRange {
                first: 600,
                last: 1023,
            },
            other_protocols: OtherProtocols::default(),
            reserved_ports: Vec::new(),
        }
    }
}

impl NatSettings {
    /// The classic name of the configured pair, if it has one.
    pub fn nat_type(&self) -> Option<NatType> {
        NatType::ALL
            .into_iter()
            .find(|nat_type| nat_type.behaviour() == (self.mapping, self.filtering))
    }
}

/// The `[nat]` table as written: `type` is a shorthand for a mapping and
/// filtering pair, which the file may also spell out, but not differently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NatFile {
    #[serde(rename = "type")]
    nat_type: Option<NatType>,
    mapping: Option<Mapping>,
    filtering: Option<Filtering>,
    unsolicited: Unsolicited,
    hairpin: bool,
    #[serde(deserialize_with = "dynamic_ports")]
    ports: PortRange,
    #[serde(deserialize_with = "low_ports")]
    low_ports: PortRange,
    other_protocols: OtherProtocols,
    reserved_ports: Vec<PortRange>,
}

impl Default for NatFile {
    fn default() -> Self {
        let defaults = NatSettings::default();
        Self {
            nat_type: None,
            mapping: None,
            filtering: None,
            unsolicited: defaults.unsolicited,
            hairpin: defaults.hairpin,
            ports: defaults.ports,
            low_ports: defaults.low_ports,
            other_protocols: defaults.other_protocols,
            reserved_ports: defaults.reserved_ports,
        }
    }
}

/// A `[nat]` table whose `type` says one behaviour and whose `mapping` or
/// `filtering` says another.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "type = \"{nat_type}\" means {key} = \"{implied}\", but {key} = \"{value}\" is set too: \
     remove one of the two keys or make them agree"
)]
pub struct NatTypeConflict {
    pub nat_type: NatType,
    /// `"mapping"` or `"filtering"`.
    pub key: &'static str,
    pub value: &'static str,
    pub implied: &'static str,
}

impl TryFrom<NatFile> for NatSettings {
    type Error = NatTypeConflict;

    fn try_from(file: NatFile) -> Result<Self, NatTypeConflict> {
        let defaults = NatSettings::default();
        let (mapping, filtering) = match file.nat_type {
            None => (
                file.mapping.unwrap_or(defaults.mapping),
                file.filtering.unwrap_or(defaults.filtering),
            ),
            Some(nat_type) => {
                let (mapping, filtering) = nat_type.behaviour();
                let conflict = |key, value: &'static str, implied| NatTypeConflict {
                    nat_type,
                    key,
                    value,
                    implied,
                };
                if let Some(set) = file.mapping.filter(|set| *set != mapping) {
                    return Err(conflict("mapping", set.name(), mapping.name()));
                }
                if let Some(set) = file.filtering.filter(|set| *set != filtering) {
                    return Err(conflict("filtering", set.name(), filtering.name()));
                }
                (mapping, filtering)
            }
        };
        Ok(Self {
            mapping,
            filtering,
            unsolicited: file.unsolicited,
            hairpin: file.hairpin,
            ports: file.ports,
            low_ports: file.low_ports,
            other_protocols: file.other_protocols,
            reserved_ports: file.reserved_ports,
        })
    }
}

/// Which outbound packets of one internal endpoint share a mapping, and so
/// an external port (RFC 4787 section 4.1).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// All of them, whatever the remote: what RFC 4787 REQ-1 requires, and
    /// what lets peer-to-peer applications learn their address from one
    /// server and be reached at it by others.
    #[default]
    EndpointIndependent,
    /// Those to one remote address: each new remote address gets a port.
    AddressDependent,
    /// Those to one remote address and port ("symmetric").
    AddressAndPortDependent,
}

impl Mapping {
    pub fn datapath_value(self) -> u8 {
        match self {
            Mapping::EndpointIndependent => nat_common::MAPPING_ENDPOINT_INDEPENDENT,
            Mapping::AddressDependent => nat_common::MAPPING_ADDRESS_DEPENDENT,
            Mapping::AddressAndPortDependent => nat_common::MAPPING_ADDRESS_AND_PORT_DEPENDENT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::AddressDependent => "address-dependent",
            Mapping::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The names users know NATs by (RFC 3489 section 5), each a mapping and
/// filtering pair of RFC 4787.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
}

impl NatType {
    pub const ALL: [NatType; 4] = [
        NatType::FullCone,
        NatType::RestrictedCone,
        NatType::PortRestrictedCone,
        NatType::Symmetric,
    ];

    pub fn behaviour(self) -> (Mapping, Filtering) {
        match self {
            NatType::FullCone => (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            NatType::RestrictedCone => (Mapping::EndpointIndependent, Filtering::AddressDependent),
            NatType::PortRestrictedCone => (
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            ),
            NatType::Symmetric => (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NatType::FullCone => "full-cone",
            NatType::RestrictedCone => "restricted-cone",
            NatType::PortRestrictedCone => "port-restricted-cone",
            NatType::Symmetric => "symmetric",
        }
    }
}

impl std::fmt::Display for NatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What becomes of IP protocols other than TCP, UDP and ICMP (GRE for
/// PPTP, ESP and AH for IPsec, SCTP, IP-in-IP, ...), which have no ports.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum OtherProtocols {
    /// Translated by address, one LAN host per protocol and remote address
    /// at a time, as home routers pass VPNs through.
    #[default]
    Translate,
    /// Dropped from the LAN; from the WAN they are the router's own.
    Drop,
}

impl OtherProtocols {
    pub fn datapath_value(self) -> u8 {
        match self {
            OtherProtocols::Translate => nat_common::OTHER_PROTOCOLS_TRANSLATE,
            OtherProtocols::Drop => nat_common::OTHER_PROTOCOLS_DROP,
        }
    }
}

/// Which remote endpoints may send in through a mapping (RFC 4787 section 5).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone, once the mapping exists ("full cone").
    EndpointIndependent,
    /// Only addresses the LAN host has sent to.
    AddressDependent,
    /// Only address and port pairs the LAN host has sent to: the safest,
    /// and what RFC 4787 recommends when in doubt.
    #[default]
    AddressAndPortDependent,
}

impl Filtering {
    pub fn datapath_value(self) -> u8 {
        match self {
            Filtering::EndpointIndependent => nat_common::FILTER_ENDPOINT_INDEPENDENT,
            Filtering::AddressDependent => nat_common::FILTER_ADDRESS_DEPENDENT,
            Filtering::AddressAndPortDependent => nat_common::FILTER_ADDRESS_AND_PORT_DEPENDENT,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

impl std::fmt::Display for Filtering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do with a WAN packet that matches no mapping and no forward.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Unsolicited {
    /// Hand it to the router's own stack, which may be serving it.
    #[default]
    Pass,
    Drop,
}

impl Unsolicited {
    pub fn datapath_value(self) -> u8 {
        match self {
            Unsolicited::Pass => nat_common::UNSOLICITED_PASS,
            Unsolicited::Drop => nat_common::UNSOLICITED_DROP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unsolicited::Pass => "pass",
            Unsolicited::Drop => "drop",
        }
    }
}

impl std::fmt::Display for Unsolicited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    }
}

impl DaemonConfig {
    /// `None`: the default path, where a missing file means defaults.
    /// `Some(path)`: the file must exist. Also returns the file actually read.
    pub fn load(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        match path {
            Some(path) => Self::load_file(path, true),
            None => Self::load_file(Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }

    fn load_file(path: &Path, required: bool) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if !required && error.kind() == io::ErrorKind::NotFound => {
                return Ok((Self::default(), None));
            }
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    error,
                });
            }
        };
        let text = String::from_utf8(bytes).map_err(|error| ConfigError::NotUtf8 {
            path: path.to_owned(),
            line: store::line_of_byte(error.as_bytes(), error.utf8_error().valid_up_to()),
        })?;
        Ok((Self::parse(&text, path)?, Some(path.to_owned())))
    }

    /// Parses the text of a config file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| {
            let (line, column, message) = store::toml_error_position(text, &error);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })
    }
}

/// How often to look for idle entries: a quarter of the shortest timeout,
/// so that an entry outlives its timeout by at most a quarter of it, but
/// at least every 30 s (no point sweeping faster than entries can expire
/// at realistic timeouts) and at most every second (short timeouts in tests).
pub fn sweep_interval(timeouts: &Timeouts) -> Duration {
    let shortest = [
        timeouts.tcp_established,
        timeouts.tcp_opening(),
        timeouts.tcp_closing(),
        timeouts.udp,
        timeouts.icmp,
    ]
    .into_iter()
    .min()
    .unwrap_or_default();
    (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

// Checked while deserializing rather than afterwards, so that the error
// carries the value's position in the file.

fn absolute_path<'de, D: Deserializer<'de>>(
    deserializer: D,
    key: &str,
    example: &str,
) -> Result<PathBuf, D::Error> {
    let path = PathBuf::deserialize(deserializer)?;
    if !path.is_absolute() {
        return Err(D::Error::custom(format!(
            "{key} = {:?}: expected an absolute path such as {example}",
            path.display().to_string()
        )));
    }
    Ok(path)
}

fn rules_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    absolute_path(deserializer, "rules_file", store::DEFAULT_RULES_PATH)
}

fn socket<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    absolute_path(deserializer, "socket", DEFAULT_SOCKET_PATH)
}

// A relative pin directory would depend on the daemon's working directory,
// and the pins must be found again by the next daemon.
fn pin_dir<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    absolute_path(deserializer, "pin_dir", DEFAULT_PIN_DIR)
}

fn dynamic_ports<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PortRange, D::Error> {
    let ports = PortRange::deserialize(deserializer)?;
    if ports.len() < MIN_DYNAMIC_PORTS {
        return Err(D::Error::custom(format!(
            "ports = \"{ports}\": the dynamic range needs at least {MIN_DYNAMIC_PORTS} ports"
        )));
    }
    Ok(ports)
}

/// Where a system port (below 1024) is mapped when its own is taken: a
/// range of system ports, wide enough for the same probes as the dynamic
/// range.
fn low_ports<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PortRange, D::Error> {
    let ports = PortRange::deserialize(deserializer)?;
    if ports.last >= nat_common::LOW_PORTS_END {
        return Err(D::Error::custom(format!(
            "low_ports = \"{ports}\": must lie within 1-1023, the system ports it maps \
             system ports to (higher source ports are mapped into `ports`)"
        )));
    }
    if ports.len() < MIN_DYNAMIC_PORTS {
        return Err(D::Error::custom(format!(
            "low_ports = \"{ports}\": the range needs at least {MIN_DYNAMIC_PORTS} ports"
        )));
    }
    Ok(ports)
}

/// How long a dynamic entry may stay idle, by protocol and TCP state
/// (RFC 5382 and RFC 4787 defaults). Written in seconds in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// An established TCP connection (RFC 5382: at least 2 h 4 min).
    #[serde(with = "seconds")]
    pub tcp_established: Duration,
    /// TCP before the handshake completes, or after both FINs or an RST
    /// (4 min): both of these unless set apart below.
    #[serde(with = "seconds")]
    pub tcp_transitory: Duration,
    /// TCP from the first SYN until the handshake completes (RFC 7857
    /// section 2.1 asks a NAT to track opening and closing apart); unset:
    /// `tcp_transitory`.
    #[serde(with = "optional_seconds", skip_serializing_if = "Option::is_none")]
    pub tcp_opening: Option<Duration>,
    /// TCP after both FINs or an RST; unset: `tcp_transitory`.
    #[serde(with = "optional_seconds", skip_serializing_if = "Option::is_none")]
    pub tcp_closing: Option<Duration>,
    /// UDP (RFC 4787: at least 2 min, 5 min recommended).
    #[serde(with = "seconds")]
    pub udp: Duration,
    /// ICMP queries (RFC 5508: 60 s).
    #[serde(with = "seconds")]
    pub icmp: Duration,
    /// Allows timeouts shorter than the RFCs' minimums. Off, a file that
    /// sets one is refused: a NAT that forgets mappings early breaks
    /// long-lived connections and keep-alive intervals that apps choose by
    /// these RFCs.
    pub below_rfc_minimums: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(7440),
            tcp_transitory: Duration::from_secs(240),
            tcp_opening: None,
            tcp_closing: None,
            udp: Duration::from_secs(300),
            icmp: Duration::from_secs(60),
            below_rfc_minimums: false,
        }
    }
}

/// The shortest timeout each RFC allows: key, minimum, and who says so.
const TIMEOUT_FLOORS: [(&str, Duration, &str); 6] = [
    (
        "tcp_established",
        Duration::from_secs(7440),
        "RFC 5382 REQ-5 (2 h 4 min)",
    ),
    (
        "tcp_transitory",
        Duration::from_secs(240),
        "RFC 5382 REQ-5 (4 min)",
    ),
    (
        "tcp_opening",
        Duration::from_secs(240),
        "RFC 5382 REQ-5 (4 min, transitory)",
    ),
    (
        "tcp_closing",
        Duration::from_secs(240),
        "RFC 5382 REQ-5 (4 min, transitory)",
    ),
    ("udp", Duration::from_secs(120), "RFC 4787 REQ-5 (2 min)"),
    ("icmp", Duration::from_secs(60), "RFC 5508 REQ-1 (60 s)"),
];

impl Timeouts {
    /// The opening timeout in force: `tcp_opening`, else `tcp_transitory`.
    pub fn tcp_opening(&self) -> Duration {
        self.tcp_opening.unwrap_or(self.tcp_transitory)
    }

    /// The closing timeout in force: `tcp_closing`, else `tcp_transitory`.
    pub fn tcp_closing(&self) -> Duration {
        self.tcp_closing.unwrap_or(self.tcp_transitory)
    }

    fn by_key(&self, key: &str) -> Duration {
        match key {
            "tcp_established" => self.tcp_established,
            "tcp_transitory" => self.tcp_transitory,
            "tcp_opening" => self.tcp_opening(),
            "tcp_closing" => self.tcp_closing(),
            "udp" => self.udp,
            _ => self.icmp,
        }
    }

    /// Refuses a timeout below its RFC's minimum unless
    /// `below_rfc_minimums` says so.
    pub fn check_floors(&self) -> Result<(), String> {
        if self.below_rfc_minimums {
            return Ok(());
        }
        for (key, floor, source) in TIMEOUT_FLOORS {
            let value = self.by_key(key);
            if value < floor {
                return Err(format!(
                    "{key} = {}: below the {} s minimum of {source}; raise it, or set \
                     below_rfc_minimums = true in [timeouts] to allow it",
                    value.as_secs(),
                    floor.as_secs()
                ));
            }
        }
        Ok(())
    }
}

fn timeouts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timeouts, D::Error> {
    let timeouts = Timeouts::deserialize(deserializer)?;
    timeouts.check_floors().map_err(D::Error::custom)?;
    Ok(timeouts)
}

/// `seconds` for a key that may be left out.
mod optional_seconds {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::seconds::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::seconds::deserialize(deserializer).map(Some)
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let secs = i64::deserialize(deserializer)?;
        if !(1..=86_400 * 7).contains(&secs) {
            return Err(D::Error::custom(format!(
                "timeout {secs} s: expected a number of seconds from 1 to 604800 (7 days)"
            )));
        }
        Ok(Duration::from_secs(secs as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> (usize, usize, String) {
        match DaemonConfig::parse(text, Path::new("/etc/natctl/natctl.toml")).unwrap_err() {
            ConfigError::Invalid {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let config = DaemonConfig::parse("", Path::new("natctl.toml")).unwrap();
        assert_eq!(config, DaemonConfig::default());
        assert_eq!(config.rules_file, Path::new("/var/lib/natctl/rules.toml"));
        assert_eq!(config.socket, Path::new("/run/natctl/natctl.sock"));
        assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/natctl"));
        assert_eq!(
            config.nat.mapping,
            Mapping::EndpointIndependent,
            "RFC 4787 REQ-1"
        );
        assert_eq!(config.nat.filtering, Filtering::AddressAndPortDependent);
        assert_eq!(config.nat.nat_type(), Some(NatType::PortRestrictedCone));
        assert_eq!(config.nat.unsolicited, Unsolicited::Pass);
        assert!(config.nat.hairpin);
        assert_eq!(config.nat.ports.to_string(), "1024-65535");
        assert_eq!(config.timeouts, Timeouts::default());
    }

    #[test]
    fn missing_default_file_is_the_defaults() {
        let path = std::env::temp_dir().join(format!(
            "natctl-config-{}-missing-default.toml",
            std::process::id()
        ));
        let (config, read) = DaemonConfig::load_file(&path, false).unwrap();
        assert_eq!(config, DaemonConfig::default());
        assert_eq!(read, None);
    }

    #[test]
    fn explicit_missing_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join(format!(
            "natctl-config-{}-missing-explicit.toml",
            std::process::id()
        ));
        let error = DaemonConfig::load(Some(&path)).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&*path.to_string_lossy()),
            "{error}"
        );
        // One clean line, once: the reason is not repeated as a source.
        let line = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(
            line,
            format!("cannot read config file {}: no such file", path.display())
        );
    }

    #[test]
    fn explicit_file_is_read() {
        let path = std::env::temp_dir().join(format!(
            "natctl-config-{}-explicit.toml",
            std::process::id()
        ));
        fs::write(&path, "[nat]\nhairpin = false\n").unwrap();
        let loaded = DaemonConfig::load(Some(&path));
        let _ = fs::remove_file(&path);
        let (config, read) = loaded.unwrap();
        assert!(!config.nat.hairpin);
        assert_eq!(read.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
rules_file = "/srv/natctl/rules.toml"
socket = "/run/natctl.sock"
pin_dir = "/sys/fs/bpf/nat"

[nat]
mapping = "address-dependent"
filtering = "endpoint-independent"
unsolicited = "drop"
hairpin = false
ports = "40000-49999"
low_ports = "512-1023"
other_protocols = "drop"
reserved_ports = ["22", "51820", "60000-61000"]

[timeouts]
tcp_established = 3600
tcp_transitory = 120
tcp_opening = 90
udp = 60
icmp = 30
below_rfc_minimums = true

[upnp]
enabled = false
secure_mode = false
igd_version = 1
http_port = 5000
max_lease = 3600

[[upnp.permissions]]
action = "deny"
external = "6000-6999"
internal = "192.168.0.0/24"
internal_ports = "1-65535"

[metrics]
listen = "127.0.0.1:9469"
"#;
        let config = DaemonConfig::parse(text, Path::new("natctl.toml")).unwrap();
        assert_eq!(
            config,
            DaemonConfig {
                rules_file: "/srv/natctl/rules.toml".into(),
                socket: "/run/natctl.sock".into(),
                pin_dir: "/sys/fs/bpf/nat".into(),
                nat: NatSettings {
                    mapping: Mapping::AddressDependent,
                    filtering: Filtering::EndpointIndependent,
                    unsolicited: Unsolicited::Drop,
                    hairpin: false,
                    ports: PortRange {
                        first: 40000,
                        last: 49999
                    },
                    low_ports: PortRange {
                        first: 512,
                        last: 1023
                    },
                    other_protocols: OtherProtocols::Drop,
                    reserved_ports: vec![
                        PortRange::single(22),
                        PortRange::single(51820),
                        PortRange {
                            first: 60000,
                            last: 61000
                        },
                    ],
                },
                timeouts: Timeouts {
                    tcp_established: Duration::from_secs(3600),
                    tcp_transitory: Duration::from_secs(120),
                    tcp_opening: Some(Duration::from_secs(90)),
                    tcp_closing: None,
                    udp: Duration::from_secs(60),
                    icmp: Duration::from_secs(30),
                    below_rfc_minimums: true,
                },
                upnp: UpnpSettings {
                    enabled: false,
                    secure_mode: false,
                    igd_version: 1,
                    http_port: 5000,
                    max_lease: 3600,
                    permissions: vec![UpnpPermission {
                        action: PermissionAction::Deny,
                        external: "6000-6999".parse().unwrap(),
                        internal: "192.168.0.0/24".parse().unwrap(),
                        internal_ports: "1-65535".parse().unwrap(),
                    }],
                    ..UpnpSettings::default()
                },
                natpmp: NatpmpSettings::default(),
                metrics: MetricsSettings {
                    listen: Some("127.0.0.1:9469".parse().unwrap()),
                },
                web: WebSettings::default(),
            }
        );
        // First match wins; no match denies.
        let upnp = &config.upnp;
        let host = "192.168.0.12".parse().unwrap();
        assert!(!upnp.permits(6500, host, 6500));
        assert!(!upnp.permits(7000, host, 7000));
        let defaults = UpnpSettings::default();
        assert!(defaults.permits(7000, host, 7000));
        assert!(!defaults.permits(80, host, 8080));
        assert!(!defaults.permits(8080, host, 22));
        assert_eq!(
            config.nat.filtering.datapath_value(),
            nat_common::FILTER_ENDPOINT_INDEPENDENT
        );
        assert_eq!(
            config.nat.mapping.datapath_value(),
            nat_common::MAPPING_ADDRESS_DEPENDENT
        );
        assert_eq!(
            config.nat.unsolicited.datapath_value(),
            nat_common::UNSOLICITED_DROP
        );
        assert_eq!(
            config.nat.other_protocols.datapath_value(),
            nat_common::OTHER_PROTOCOLS_DROP
        );
        assert_eq!(
            DaemonConfig::default().nat.other_protocols,
            OtherProtocols::Translate,
            "VPN passthrough by default"
        );
        // What the daemon could write back reads the same.
        let written = toml::to_string(&config).unwrap();
        assert_eq!(
            DaemonConfig::parse(&written, Path::new("natctl.toml")).unwrap(),
            config
        );
    }

    #[test]
    fn the_admin_page_is_off_until_listen_and_keeps_its_password_beside_the_rules() {
        let config = DaemonConfig::parse("", Path::new("natctl.toml")).unwrap();
        assert_eq!(config.web.listen, None);
        assert_eq!(
            config.password_file(),
            Path::new("/var/lib/natctl/web-password")
        );
        let text = "rules_file = \"/srv/nat/rules.toml\"\n[web]\nlisten = \"192.168.0.1:8080\"\n";
        let config = DaemonConfig::parse(text, Path::new("natctl.toml")).unwrap();
        assert_eq!(config.web.listen, Some("192.168.0.1:8080".parse().unwrap()));
        assert_eq!(config.password_file(), Path::new("/srv/nat/web-password"));
        let text = "[web]\npassword_file = \"web-password\"\n";
        let error = DaemonConfig::parse(text, Path::new("natctl.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("password_file = \"web-password\": expected an absolute path"),
            "{error}"
        );
        let text = "[web]\nlisten = \"router:80\"\n";
        assert!(DaemonConfig::parse(text, Path::new("natctl.toml")).is_err());
    }

    #[test]
    fn bad_filtering_names_the_value_the_choices_and_the_line() {
        let (line, column, message) = invalid("[nat]\nfiltering = \"full-cone\"\n");
        assert_eq!((line, column), (2, 13), "{message}");
        for word in [
            "full-cone",
            "endpoint-independent",
            "address-dependent",
            "address-and-port-dependent",
        ] {
            assert!(message.contains(word), "{word}: {message}");
        }
    }

    #[test]
    fn each_type_sets_its_mapping_and_filtering() {
        use Filtering as F;
        use Mapping as M;
        for (name, mapping, filtering) in [
            ("full-cone", M::EndpointIndependent, F::EndpointIndependent),
            (
                "restricted-cone",
                M::EndpointIndependent,
                F::AddressDependent,
            ),
            (
                "port-restricted-cone",
                M::EndpointIndependent,
                F::AddressAndPortDependent,
            ),
            (
                "symmetric",
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
            ),
        ] {
            let text = format!("[nat]\ntype = \"{name}\"\n");
            let nat = DaemonConfig::parse(&text, Path::new("natctl.toml"))
                .unwrap()
                .nat;
            assert_eq!((nat.mapping, nat.filtering), (mapping, filtering), "{name}");
            assert_eq!(nat.nat_type().map(NatType::name), Some(name));
            // Spelling out what the type means too is no conflict.
            let agreeing = format!(
                "[nat]\ntype = \"{name}\"\nmapping = \"{mapping}\"\nfiltering = \"{filtering}\"\n"
            );
            let nat = DaemonConfig::parse(&agreeing, Path::new("natctl.toml"))
                .unwrap()
                .nat;
            assert_eq!((nat.mapping, nat.filtering), (mapping, filtering), "{name}");
        }
        let nat = DaemonConfig::parse(
            "[nat]\nmapping = \"address-dependent\"\n",
            Path::new("natctl.toml"),
        )
        .unwrap()
        .nat;
        assert_eq!(nat.nat_type(), None, "no classic name for that pair");
    }

    #[test]
    fn a_type_and_a_conflicting_mapping_or_filtering_are_refused_naming_both() {
        let file = |nat_type, mapping, filtering| NatFile {
            nat_type: Some(nat_type),
            mapping,
            filtering,
            ..NatFile::default()
        };
        assert_eq!(
            NatSettings::try_from(file(
                NatType::Symmetric,
                Some(Mapping::EndpointIndependent),
                None
            )),
            Err(NatTypeConflict {
                nat_type: NatType::Symmetric,
                key: "mapping",
                value: "endpoint-independent",
                implied: "address-and-port-dependent",
            })
        );
        assert_eq!(
            NatSettings::try_from(file(
                NatType::FullCone,
                Some(Mapping::EndpointIndependent),
                Some(Filtering::AddressDependent)
            )),
            Err(NatTypeConflict {
                nat_type: NatType::FullCone,
                key: "filtering",
                value: "address-dependent",
                implied: "endpoint-independent",
            })
        );
        // The file's error names the line, both keys and both values.
        let (line, _, message) =
            invalid("[nat]\ntype = \"full-cone\"\nfiltering = \"address-dependent\"\n");
        assert_eq!(line, 1, "{message}");
        for word in [
            "type = \"full-cone\"",
            "filtering = \"address-dependent\"",
            "filtering = \"endpoint-independent\"",
        ] {
            assert!(message.contains(word), "{word}: {message}");
        }
    }

    #[test]
    fn bad_type_and_mapping_name_the_value_and_the_choices() {
        let (line, _, message) = invalid("[nat]\ntype = \"cone\"\n");
        assert_eq!(line, 2, "{message}");
        for word in ["cone", "full-cone", "restricted-cone", "symmetric"] {
            assert!(message.contains(word), "{word}: {message}");
        }
        let (line, _, message) = invalid("[nat]\nmapping = \"symmetric\"\n");
        assert_eq!(line, 2, "{message}");
        for word in ["symmetric", "endpoint-independent", "address-dependent"] {
            assert!(message.contains(word), "{word}: {message}");
        }
    }

    #[test]
    fn zero_and_negative_timeouts_are_rejected_with_their_line() {
        for value in ["0", "-1"] {
            let text = format!("[timeouts]\nudp = 300\n\nicmp = {value}\n");
            let (line, _, message) = invalid(&text);
            assert_eq!(line, 4, "{message}");
            assert!(message.contains(&format!("timeout {value} s")), "{message}");
        }
    }

    #[test]
    fn timeouts_below_the_rfc_minimums_need_saying_so() {
        for (text, key, floor) in [
            (
                "[timeouts]\ntcp_established = 7439\n",
                "tcp_established = 7439",
                "7440 s",
            ),
            (
                "[timeouts]\ntcp_transitory = 60\n",
                "tcp_transitory = 60",
                "240 s",
            ),
            (
                "[timeouts]\ntcp_opening = 75\n",
                "tcp_opening = 75",
                "240 s",
            ),
            (
                "[timeouts]\ntcp_transitory = 600\ntcp_closing = 239\n",
                "tcp_closing = 239",
                "240 s",
            ),
            ("[timeouts]\nudp = 119\n", "udp = 119", "RFC 4787"),
            ("[timeouts]\nicmp = 30\n", "icmp = 30", "RFC 5508"),
        ] {
            let (line, _, message) = invalid(text);
            assert_eq!(line, 1, "{message}");
            assert!(message.contains(key), "{key}: {message}");
            assert!(message.contains(floor), "{floor}: {message}");
            assert!(message.contains("below_rfc_minimums = true"), "{message}");
            let allowed = format!("{text}below_rfc_minimums = true\n");
            let config = DaemonConfig::parse(&allowed, Path::new("x")).unwrap();
            assert!(config.timeouts.below_rfc_minimums);
        }
        // At the floors exactly: fine without saying so.
        DaemonConfig::parse(
            "[timeouts]\ntcp_established = 7440\ntcp_transitory = 240\nudp = 120\nicmp = 60\n",
            Path::new("x"),
        )
        .unwrap();
    }

    #[test]
    fn client_mappings_leave_room_for_the_admins_rules() {
        let (line, _, message) = invalid("[upnp]\nmax_mappings = 8191\n");
        assert_eq!(line, 2, "{message}");
        assert!(
            message.contains("max_mappings = 8191") && message.contains("admin"),
            "{message}"
        );
        let config = DaemonConfig::parse("[upnp]\nmax_mappings = 100\n", Path::new("x")).unwrap();
        assert_eq!(config.upnp.max_mappings, 100);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let (line, _, message) = invalid("socket = \"/run/x.sock\"\nsockt = \"/run/y\"\n");
        assert_eq!(line, 2, "{message}");
        assert!(message.contains("sockt"), "{message}");
        let (line, _, message) = invalid("[nat]\nhairpin = true\nfilter = \"pass\"\n");
        assert_eq!(line, 3, "{message}");
        assert!(message.contains("filter"), "{message}");
    }

    #[test]
    fn tiny_port_range_is_rejected() {
        let (line, _, message) = invalid("[nat]\nports = \"60000-60003\"\n");
        assert_eq!(line, 2, "{message}");
        assert_eq!(
            message,
            "ports = \"60000-60003\": the dynamic range needs at least 16 ports"
        );
        DaemonConfig::parse("[nat]\nports = \"60000-60015\"\n", Path::new("x")).unwrap();
    }

    #[test]
    fn low_ports_must_be_system_ports_and_enough_of_them() {
        let config = DaemonConfig::parse("", Path::new("x")).unwrap();
        assert_eq!(config.nat.low_ports.to_string(), "600-1023");
        let (line, _, message) = invalid("[nat]\nlow_ports = \"1000-1100\"\n");
        assert_eq!(line, 2, "{message}");
        assert_eq!(
            message,
            "low_ports = \"1000-1100\": must lie within 1-1023, the system ports it maps \
             system ports to (higher source ports are mapped into `ports`)"
        );
        let (_, _, message) = invalid("[nat]\nlow_ports = \"1000-1010\"\n");
        assert_eq!(
            message,
            "low_ports = \"1000-1010\": the range needs at least 16 ports"
        );
        let (_, _, message) = invalid("[nat]\nlow_ports = \"0-1023\"\n");
        assert!(message.contains("\"0-1023\""), "{message}");
        DaemonConfig::parse("[nat]\nlow_ports = \"1008-1023\"\n", Path::new("x")).unwrap();
    }

    #[test]
    fn a_stun_server_is_host_and_port() {
        let config =
            DaemonConfig::parse("[upnp]\nstun = \"stun.example.net:3478\"\n", Path::new("x"))
                .unwrap();
        assert_eq!(config.upnp.stun.as_deref(), Some("stun.example.net:3478"));
        let (line, _, message) = invalid("[upnp]\nstun = \"stun.example.net\"\n");
        assert_eq!(line, 2, "{message}");
        assert!(message.contains("expected HOST:PORT"), "{message}");
    }

    #[test]
    fn a_bad_reserved_port_is_named_with_what_would_do() {
        let (line, _, message) = invalid("[nat]\nreserved_ports = [\"22\", \"61000-60000\"]\n");
        assert_eq!(line, 2, "{message}");
        assert!(message.contains("\"61000-60000\""), "{message}");
        assert!(
            message.contains("FIRST-LAST with FIRST <= LAST"),
            "{message}"
        );
        let (_, _, message) = invalid("[nat]\nreserved_ports = [\"ssh\"]\n");
        assert!(
            message.contains("\"ssh\"") && message.contains("1 to 65535"),
            "{message}"
        );
    }

    #[test]
    fn relative_paths_are_rejected() {
        let (line, _, message) = invalid("\nrules_file = \"rules.toml\"\n");
        assert_eq!(line, 2, "{message}");
        assert!(
            message.contains("\"rules.toml\"") && message.contains("absolute"),
            "{message}"
        );
        let (_, _, message) = invalid("socket = \"natctl.sock\"\n");
        assert!(message.contains("natctl.sock"), "{message}");
    }

    #[test]
    fn error_display_names_file_line_and_column() {
        let error = DaemonConfig::parse(
            "[nat]\nunsolicited = \"reject\"\n",
            Path::new("/etc/natctl/natctl.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("/etc/natctl/natctl.toml line 2, column 15: "),
            "{error}"
        );
        assert!(
            error.contains("reject") && error.contains("drop"),
            "{error}"
        );
    }

    #[test]
    fn sweep_interval_is_a_quarter_of_the_shortest_timeout_clamped() {
        assert_eq!(
            sweep_interval(&Timeouts::default()),
            Duration::from_secs(15)
        );
        let mut timeouts = Timeouts {
            icmp: Duration::from_secs(2),
            ..Timeouts::default()
        };
        assert_eq!(sweep_interval(&timeouts), Duration::from_secs(1));
        timeouts.icmp = Duration::from_secs(600);
        timeouts.udp = Duration::from_secs(600);
        timeouts.tcp_transitory = Duration::from_secs(600);
        assert_eq!(sweep_interval(&timeouts), Duration::from_secs(30));
        timeouts.tcp_transitory = Duration::from_secs(100);
        assert_eq!(sweep_interval(&timeouts), Duration::from_secs(25));
        timeouts.tcp_transitory = Duration::from_secs(600);
        timeouts.tcp_closing = Some(Duration::from_secs(40));
        assert_eq!(sweep_interval(&timeouts), Duration::from_secs(10));
    }

    #[test]
    fn opening_and_closing_follow_tcp_transitory_unless_set() {
        let timeouts = DaemonConfig::parse("[timeouts]\ntcp_transitory = 300\n", Path::new("x"))
            .unwrap()
            .timeouts;
        assert_eq!(timeouts.tcp_opening(), Duration::from_secs(300));
        assert_eq!(timeouts.tcp_closing(), Duration::from_secs(300));
        let timeouts = DaemonConfig::parse(
            "[timeouts]\ntcp_opening = 250\ntcp_closing = 3600\n",
            Path::new("x"),
        )
        .unwrap()
        .timeouts;
        assert_eq!(timeouts.tcp_opening(), Duration::from_secs(250));
        assert_eq!(timeouts.tcp_closing(), Duration::from_secs(3600));
        assert_eq!(timeouts.tcp_transitory, Duration::from_secs(240));
    }
}
