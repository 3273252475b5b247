//! The control API: HTTP/1.1 with JSON bodies on a root-only Unix socket.
//! The daemon serves it ([`server`]); every other `natctl` subcommand is a
//! client ([`client`]). This file is the wire they share: the routes
//! ([`route`] decodes them, [`Request::to_http`] encodes them) and the
//! bodies.
//!
//! Routes (all under `/v1`):
//! - `GET status`, `GET rules`, `POST rules` (a rule), `PATCH rules/NAME`
//!   (the fields to change), `DELETE rules/NAME`, `POST rules/NAME/enable`,
//!   `POST rules/NAME/disable`
//! - `GET table?protocol=&address=&port=&type=`, `GET stats`
//! - `GET connections` (the history of new inbound connections),
//!   `GET connections?follow=1` (the history, then each new one as it
//!   comes: newline-delimited JSON, one record a line, until the daemon
//!   stops)
//! - `POST reload` (as SIGHUP), `POST upnp/on`, `POST upnp/off`,
//!   `POST natpmp/on`, `POST natpmp/off` (NAT-PMP and PCP),
//!   `POST down` (detach and stop)
pub mod client;
pub mod server;

use std::{net::Ipv4Addr, path::PathBuf};

use hyper::Method;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use self::{
    client::{Client, ClientError},
    server::{Controller, JsonLines, bind, serve},
};
pub use crate::table::TableFilter;
use crate::{
    rules::{ForwardRule, PortRange, Protocol},
    schedule::Schedule,
    table::Traffic,
};

/// What a client asks the daemon, decoded from the HTTP request.
#[derive(Debug, PartialEq)]
pub enum Request {
    Status,
    ListRules,
    AddRule(ForwardRule),
    ModifyRule {
        name: String,
        change: RuleChange,
    },
    RemoveRule(String),
    SetEnabled {
        name: String,
        enabled: bool,
    },
    Table(TableFilter),
    Stats,
    /// The connection log; `follow`: then the live ones, streamed.
    Connections {
        follow: bool,
    },
    Reload,
    /// Switch the UPnP IGD on or off (off also removes its mappings).
    Upnp(bool),
    /// NAT-PMP and PCP, one switch.
    Natpmp(bool),
    Down,
}

/// The fields of a rule to change; absent fields keep their value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_addr: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<PortRange>,
    /// Replaces the whole list; an empty list allows any remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<Ipv4Net>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `always` removes the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

impl RuleChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn apply_to(&self, rule: &mut ForwardRule) {
        if let Some(name) = &self.name {
            rule.name = name.clone();
        }
        if let Some(protocol) = self.protocol {
            rule.protocol = protocol;
        }
        if let Some(external) = self.external {
            // Changing only the external range keeps the internal one in
            // step when they were the same, as a router's form does.
            if self.internal.is_none() && rule.internal == rule.external {
                rule.internal = external;
            }
            rule.external = external;
        }
        if let Some(addr) = self.internal_addr {
            rule.internal_addr = addr;
        }
        if let Some(internal) = self.internal {
            rule.internal = internal;
        }
        if let Some(allow) = &self.allow {
            rule.allow = allow.clone();
        }
        if let Some(enabled) = self.enabled {
            rule.enabled = enabled;
        }
        if let Some(schedule) = &self.schedule {
            rule.schedule = schedule.clone();
        }
    }
}

/// The query string of `GET table` for `filter`.
fn table_query(filter: &TableFilter) -> String {
    let mut pairs = Vec::new();
    if let Some(protocol) = &filter.protocol {
        pairs.push(format!("protocol={protocol}"));
    }
    if let Some(address) = filter.address {
        pairs.push(format!("address={address}"));
    }
    if let Some(port) = filter.port {
        pairs.push(format!("port={port}"));
    }
    if let Some(kind) = &filter.kind {
        pairs.push(format!("type={kind}"));
    }
    pairs.join("&")
}

/// Parses the query string of `GET table`. Hand-written: the values are
/// plain tokens (no percent-encoding needed), and anything else is refused.
pub(crate) fn parse_table_query(query: &str) -> Result<TableFilter, ApiError> {
    let mut filter = TableFilter::default();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request(format!("bad query parameter {pair:?}")))?;
        match key {
            "protocol" => {
                let protocol = value.to_ascii_lowercase();
                // And the VPN protocols translated by address (the table
                // shows others, SCTP or IPv6-in-IPv4, unfiltered).
                if !matches!(
                    protocol.as_str(),
                    "tcp" | "udp" | "icmp" | "gre" | "esp" | "ah"
                ) {
                    return Err(ApiError::bad_request(format!(
                        "unknown protocol {value:?}: expected tcp, udp, icmp, gre, esp or ah"
                    )));
                }
                filter.protocol = Some(protocol);
            }
            "address" => {
                filter.address = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "bad address {value:?}: expected an IPv4 address such as 192.168.0.12"
                    ))
                })?);
            }
            "port" => {
                let range: PortRange = value
                    .parse()
                    .map_err(|error| ApiError::bad_request(format!("{error}")))?;
                filter.port = Some(range.first);
            }
            "type" => {
                let kind = value.to_ascii_uppercase();
                if !matches!(
                    kind.as_str(),
                    "STATIC" | "DYNAMIC" | "UPNP" | "NATPMP" | "PCP"
                ) {
                    return Err(ApiError::bad_request(format!(
                        "unknown type {value:?}: expected static, dynamic, upnp, natpmp or pcp"
                    )));
                }
                filter.kind = Some(kind);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {key:?}: expected protocol, address, port or type"
                )));
            }
        }
    }
    Ok(filter)
}

/// A rule as the API lists it: `GET rules`, and the answer to every change
/// of one rule. On the wire, the rule's own fields beside `id`, `inbound`
/// and `outbound`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRule {
    #[serde(flatten)]
    pub rule: ForwardRule,
    /// The rule's index in the datapath's maps.
    pub id: u32,
    /// From remotes to the LAN server.
    pub inbound: Traffic,
    /// The LAN server's replies.
    pub outbound: Traffic,
    /// For a rule with a schedule: on it now or not, and until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_state: Option<ScheduleState>,
}

/// Where a scheduled rule stands now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Inside one of its windows: remotes may come in (if it is enabled).
    pub on: bool,
    /// When that changes, RFC 3339 in the router's local time; absent if
    /// it never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The same, short: `mon 09:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_local: Option<String>,
}

/// One new inbound connection on a forwarded port, as `natctl
/// connections` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Counts up from 1 since the daemon started.
    pub seq: u64,
    /// When the daemon read it, RFC 3339 in the router's local time.
    pub time: String,
    /// TCP or UDP.
    pub protocol: String,
    pub remote: std::net::SocketAddrV4,
    pub external_port: u16,
    /// The rule's name ("?" if it was removed before the report was read).
    pub rule: String,
    pub rule_id: u32,
    /// The LAN server the connection was forwarded to.
    pub server: std::net::SocketAddrV4,
}

/// A line of `GET connections?follow=1`: a connection, or how many a
/// follower too slow to keep up missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FollowedLine {
    Connection(ConnectionRecord),
    Missed { missed: u64 },
}

/// The answer to `DELETE rules/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

/// The answer to `POST reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// What was read, and from where.
    pub reloaded: String,
}

/// The answer to `POST upnp/on` and `POST upnp/off`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpnpSwitched {
    pub upnp: bool,
    /// The names of the mappings clients had made, removed by `off`.
    pub removed: Vec<String>,
}

/// The answer to `POST natpmp/on` and `POST natpmp/off`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatpmpSwitched {
    pub natpmp: bool,
    /// The names of the NAT-PMP and PCP mappings removed by `off`.
    pub removed: Vec<String>,
}

/// The answer to `POST down`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    pub detached: bool,
    pub pin_dir: PathBuf,
}

/// An error for the client: an HTTP status and one line saying what was
/// wrong and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("bad request body: {error}")))
}

/// Decodes method, path, query and body into a [`Request`].
pub fn route(method: &Method, path: &str, query: &str, body: &[u8]) -> Result<Request, ApiError> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(ApiError::not_found(format!(
            "no such API path {path:?}: expected /v1/..."
        )));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let wrong_method = || ApiError {
        status: 405,
        message: format!("{method} is not allowed on {path}"),
    };
    match segments.as_slice() {
        ["status"] if method == Method::GET => Ok(Request::Status),
        ["rules"] if method == Method::GET => Ok(Request::ListRules),
        ["rules"] if method == Method::POST => Ok(Request::AddRule(json_body(body)?)),
        ["rules", name] if method == Method::PATCH => {
            let change: RuleChange = json_body(body)?;
            Ok(Request::ModifyRule {
                name: (*name).to_owned(),
                change,
            })
        }
        ["rules", name] if method == Method::DELETE => Ok(Request::RemoveRule((*name).to_owned())),
        ["rules", name, action @ ("enable" | "disable")] if method == Method::POST => {
            Ok(Request::SetEnabled {
                name: (*name).to_owned(),
                enabled: *action == "enable",
            })
        }
        ["table"] if method == Method::GET => Ok(Request::Table(parse_table_query(query)?)),
        ["stats"] if method == Method::GET => Ok(Request::Stats),
        ["connections"] if method == Method::GET => Ok(Request::Connections {
            follow: match query {
                "" => false,
                "follow=1" => true,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "bad query {query:?}: expected nothing or follow=1"
                    )));
                }
            },
        }),
        ["reload"] if method == Method::POST => Ok(Request::Reload),
        ["upnp", switch @ ("on" | "off")] if method == Method::POST => {
            Ok(Request::Upnp(*switch == "on"))
        }
        ["natpmp", switch @ ("on" | "off")] if method == Method::POST => {
            Ok(Request::Natpmp(*switch == "on"))
        }
        ["down"] if method == Method::POST => Ok(Request::Down),
        ["status" | "stats" | "table" | "connections" | "reload" | "down"]
        | ["upnp", "on" | "off"]
        | ["natpmp", "on" | "off"]
        | ["rules"]
        | ["rules", _]
        | ["rules", _, "enable" | "disable"] => Err(wrong_method()),
        _ => Err(ApiError::not_found(format!("no such API path {path:?}"))),
    }
}

impl Request {
    /// The method, path (with its query) and JSON body that [`route`]
    /// decodes back into this request.
    pub fn to_http(&self) -> Result<(Method, String, Vec<u8>), serde_json::Error> {
        let (method, path, body) = match self {
            Request::Status => (Method::GET, "/v1/status".to_owned(), Vec::new()),
            Request::ListRules => (Method::GET, "/v1/rules".to_owned(), Vec::new()),
            Request::AddRule(rule) => (
                Method::POST,
                "/v1/rules".to_owned(),
                serde_json::to_vec(rule)?,
            ),
            Request::ModifyRule { name, change } => (
                Method::PATCH,
                format!("/v1/rules/{name}"),
                serde_json::to_vec(change)?,
            ),
            Request::RemoveRule(name) => (Method::DELETE, format!("/v1/rules/{name}"), Vec::new()),
            Request::SetEnabled { name, enabled } => {
                let action = if *enabled { "enable" } else { "disable" };
                (
                    Method::POST,
                    format!("/v1/rules/{name}/{action}"),
                    Vec::new(),
                )
            }
            Request::Table(filter) => (
                Method::GET,
                format!("/v1/table?{}", table_query(filter)),
                Vec::new(),
            ),
            Request::Stats => (Method::GET, "/v1/stats".to_owned(), Vec::new()),
            Request::Connections { follow } => (
                Method::GET,
                if *follow {
                    "/v1/connections?follow=1"
                } else {
                    "/v1/connections"
                }
                .to_owned(),
                Vec::new(),
            ),
            Request::Reload => (Method::POST, "/v1/reload".to_owned(), Vec::new()),
            Request::Upnp(on) => {
                let switch = if *on { "on" } else { "off" };
                (Method::POST, format!("/v1/upnp/{switch}"), Vec::new())
            }
            Request::Natpmp(on) => {
                let switch = if *on { "on" } else { "off" };
                (Method::POST, format!("/v1/natpmp/{switch}"), Vec::new())
            }
            Request::Down => (Method::POST, "/v1/down".to_owned(), Vec::new()),
        };
        Ok((method, path, body))
    }

    /// Answered by a stream that goes on, not by one value.
    pub fn is_stream(&self) -> bool {
        matches!(self, Request::Connections { follow: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode() {
        assert_eq!(
            route(&Method::GET, "/v1/rules", "", b"").unwrap(),
            Request::ListRules
        );
        assert_eq!(
            route(&Method::POST, "/v1/rules/ssh/disable", "", b"").unwrap(),
            Request::SetEnabled {
                name: "ssh".into(),
                enabled: false
            }
        );
        let added = route(
            &Method::POST,
            "/v1/rules",
            "",
            br#"{"name":"web","protocol":"tcp","external":"8080","internal_addr":"192.168.0.12","internal":"80"}"#,
        )
        .unwrap();
        let Request::AddRule(rule) = added else {
            panic!("{added:?}")
        };
        assert_eq!(rule.name, "web");
        assert!(rule.enabled && rule.allow.is_empty());
        assert_eq!(
            route(
                &Method::GET,
                "/v1/table",
                "protocol=TCP&port=80&type=static",
                b""
            )
            .unwrap(),
            Request::Table(TableFilter {
                protocol: Some("tcp".into()),
                port: Some(80),
                kind: Some("STATIC".into()),
                address: None,
            })
        );
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let error = route(&Method::GET, "/v1/table", "protocol=sctp", b"").unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.message.contains("\"sctp\""), "{error}");
        let error = route(&Method::DELETE, "/v1/rules", "", b"").unwrap_err();
        assert_eq!(error.status, 405);
        let error = route(&Method::GET, "/v2/rules", "", b"").unwrap_err();
        assert_eq!(error.status, 404);
        let error = route(
            &Method::POST,
            "/v1/rules",
            "",
            br#"{"name":"web","protocol":"sctp","external":"80","internal_addr":"192.168.0.12","internal":"80"}"#,
        )
        .unwrap_err();
        assert!(error.message.contains("sctp"), "{error}");
        let error = route(&Method::PATCH, "/v1/rules/web", "", br#"{"colour":"red"}"#).unwrap_err();
        assert!(error.message.contains("colour"), "{error}");
    }

    #[test]
    fn every_request_routes_back_to_itself() {
        let rule: ForwardRule = "tcp/8080=192.168.0.12:80".parse().unwrap();
        let requests = [
            Request::Status,
            Request::ListRules,
            Request::AddRule(rule),
            Request::ModifyRule {
                name: "web".into(),
                change: RuleChange {
                    external: Some("9090".parse().unwrap()),
                    allow: Some(Vec::new()),
                    ..Default::default()
                },
            },
            Request::RemoveRule("web".into()),
            Request::SetEnabled {
                name: "web".into(),
                enabled: true,
            },
            Request::SetEnabled {
                name: "web".into(),
                enabled: false,
            },
            Request::Table(TableFilter::default()),
            Request::Table(TableFilter {
                protocol: Some("udp".into()),
                address: Some(Ipv4Addr::new(192, 168, 0, 12)),
                port: Some(53),
                kind: Some("DYNAMIC".into()),
            }),
            Request::Stats,
            Request::Connections { follow: false },
            Request::Connections { follow: true },
            Request::Reload,
            Request::Upnp(true),
            Request::Upnp(false),
            Request::Natpmp(true),
            Request::Natpmp(false),
            Request::Down,
        ];
        for request in requests {
            let (method, target, body) = request.to_http().unwrap();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            assert_eq!(route(&method, path, query, &body).unwrap(), request);
        }
    }

    #[test]
    fn a_listed_rule_is_the_rule_beside_its_id_and_counters() {
        let mut rule: ForwardRule = "tcp/8080=192.168.0.12:80".parse().unwrap();
        rule.allow = vec!["198.51.100.0/24".parse().unwrap()];
        rule.upnp = Some(crate::rules::UpnpLease {
            origin: crate::rules::LeaseOrigin::Upnp,
            client: Ipv4Addr::new(192, 168, 0, 12),
            description: "game".into(),
            expires_at: Some(1_800_000_000),
            nonce: None,
        });
        let listed = ListedRule {
            rule,
            id: 3,
            inbound: Traffic {
                packets: 2,
                bytes: 120,
            },
            outbound: Traffic::default(),
            schedule_state: None,
        };
        let json = serde_json::to_value(&listed).unwrap();
        let mut expected = serde_json::to_value(&listed.rule).unwrap();
        let fields = expected.as_object_mut().unwrap();
        fields.insert("id".into(), 3.into());
        fields.insert(
            "inbound".into(),
            serde_json::json!({ "packets": 2, "bytes": 120 }),
        );
        fields.insert(
            "outbound".into(),
            serde_json::json!({ "packets": 0, "bytes": 0 }),
        );
        assert_eq!(json, expected);
        // `natctl list --json` prints what it read: reading loses nothing.
        let read: ListedRule = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(read, listed);
        assert_eq!(serde_json::to_value(&read).unwrap(), json);
    }

    #[test]
    fn a_schedule_is_changed_or_removed_by_modify() {
        let request = route(
            &Method::PATCH,
            "/v1/rules/ssh",
            "",
            br#"{"schedule":"mon-fri 09:00-18:00"}"#,
        )
        .unwrap();
        let Request::ModifyRule { change, .. } = request else {
            panic!("{request:?}")
        };
        let mut rule: ForwardRule = "tcp/2222=192.168.0.12:22".parse().unwrap();
        change.apply_to(&mut rule);
        assert_eq!(rule.schedule.to_string(), "mon-fri 09:00-18:00");
        RuleChange {
            schedule: Some("always".parse().unwrap()),
            ..Default::default()
        }
        .apply_to(&mut rule);
        assert!(rule.schedule.is_always());
        let error = route(
            &Method::PATCH,
            "/v1/rules/ssh",
            "",
            br#"{"schedule":"mon 09:00-09:00"}"#,
        )
        .unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.message.contains("mon 09:00-09:00"), "{error}");
    }

    #[test]
    fn changing_the_external_range_moves_an_equal_internal_one() {
        let mut rule: ForwardRule = "tcp/8080=192.168.0.12".parse().unwrap();
        RuleChange {
            external: Some("9090".parse().unwrap()),
            ..Default::default()
        }
        .apply_to(&mut rule);
        assert_eq!(rule.internal, "9090".parse().unwrap());
        let mut rule: ForwardRule = "tcp/8080=192.168.0.12:80".parse().unwrap();
        RuleChange {
            external: Some("9090".parse().unwrap()),
            ..Default::default()
        }
        .apply_to(&mut rule);
        assert_eq!(rule.internal, "80".parse().unwrap());
    }
}
