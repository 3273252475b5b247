//! The control API: HTTP/1.1 with JSON bodies on a root-only Unix socket.
//! The daemon serves it; every other `natctl` subcommand is a client.
//!
//! Routes (all under `/v1`):
//! - `GET status`, `GET rules`, `POST rules` (a rule), `PATCH rules/NAME`
//!   (the fields to change), `DELETE rules/NAME`, `POST rules/NAME/enable`,
//!   `POST rules/NAME/disable`
//! - `GET table?protocol=&address=&port=&type=`, `GET stats`
//! - `POST reload` (as SIGHUP), `POST upnp/on`, `POST upnp/off`,
//!   `POST down` (detach and stop)
use std::{
    convert::Infallible,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request as HttpRequest, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::{net::UnixListener, sync::watch};

use crate::{
    connections::{Connections, DRAIN_DEADLINE},
    rules::{ForwardRule, PortRange, Protocol},
};

/// Request bodies are small JSON objects: anything larger is refused.
const MAX_BODY: usize = 64 * 1024;
/// A client that does not send its request head in time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No request takes longer than this, even a slow client's.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

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
    Reload,
    /// Switch the UPnP IGD on or off (off also removes its mappings).
    Upnp(bool),
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
    }
}

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

impl TableFilter {
    /// The query string a client sends.
    pub fn query(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(protocol) = &self.protocol {
            pairs.push(format!("protocol={protocol}"));
        }
        if let Some(address) = self.address {
            pairs.push(format!("address={address}"));
        }
        if let Some(port) = self.port {
            pairs.push(format!("port={port}"));
        }
        if let Some(kind) = &self.kind {
            pairs.push(format!("type={kind}"));
        }
        pairs.join("&")
    }

    /// Parses the query string. Hand-written: the values are plain tokens
    /// (no percent-encoding needed), and anything else is refused.
    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut filter = TableFilter::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| ApiError::bad_request(format!("bad query parameter {pair:?}")))?;
            match key {
                "protocol" => {
                    let protocol = value.to_ascii_lowercase();
                    if !matches!(protocol.as_str(), "tcp" | "udp" | "icmp") {
                        return Err(ApiError::bad_request(format!(
                            "unknown protocol {value:?}: expected tcp, udp or icmp"
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
                    if !matches!(kind.as_str(), "STATIC" | "DYNAMIC" | "UPNP") {
                        return Err(ApiError::bad_request(format!(
                            "unknown type {value:?}: expected static, dynamic or upnp"
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

/// What serves the requests: the daemon.
pub trait Controller: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Result<serde_json::Value, ApiError>;
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
        ["table"] if method == Method::GET => Ok(Request::Table(TableFilter::parse(query)?)),
        ["stats"] if method == Method::GET => Ok(Request::Stats),
        ["reload"] if method == Method::POST => Ok(Request::Reload),
        ["upnp", switch @ ("on" | "off")] if method == Method::POST => {
            Ok(Request::Upnp(*switch == "on"))
        }
        ["down"] if method == Method::POST => Ok(Request::Down),
        ["status" | "stats" | "table" | "reload" | "down"]
        | ["upnp", "on" | "off"]
        | ["rules"]
        | ["rules", _]
        | ["rules", _, "enable" | "disable"] => Err(wrong_method()),
        _ => Err(ApiError::not_found(format!("no such API path {path:?}"))),
    }
}

fn respond(status: u16, body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a response from valid parts")
}

async fn serve_request(
    controller: Arc<dyn Controller>,
    request: HttpRequest<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return respond(
                413,
                &ErrorBody {
                    error: format!("request body larger than {MAX_BODY} bytes, or cut short"),
                },
            );
        }
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let outcome = route(&parts.method, &path, &query, &body).and_then(|request| {
        // Map and file work is short and synchronous; keep it off the
        // reactor so that other clients and timers are not held up.
        tokio::task::block_in_place(|| controller.handle(request))
    });
    match outcome {
        Ok(value) => respond(200, &value),
        Err(error) => respond(
            error.status,
            &ErrorBody {
                error: error.message,
            },
        ),
    }
}

/// Binds the API socket: its directory is created root-only, a stale socket
/// left by a killed daemon is replaced, and the socket itself is 0600.
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "another daemon is already serving {}: stop it first",
                socket.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API until `shutdown` turns true; then lets the requests in
/// flight finish (a `natctl down` gets its answer) within
/// [`DRAIN_DEADLINE`].
pub async fn serve(
    listener: UnixListener,
    controller: Arc<dyn Controller>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = Connections::new(shutdown.clone());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!("API socket accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let controller = controller.clone();
        let service = hyper::service::service_fn(move |request| {
            let controller = controller.clone();
            async move { Ok::<_, Infallible>(serve_request(controller, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        connections.spawn(connection, Some(CONNECTION_TIMEOUT));
    }
    drop(listener);
    let cut = connections.drain(DRAIN_DEADLINE).await;
    if cut > 0 {
        tracing::warn!("stopping: {cut} API connection(s) cut after {DRAIN_DEADLINE:?}");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no natctl daemon is running (nothing listens on {0}); start one with `natctl daemon --wan IF --lan IF`"
    )]
    NotRunning(PathBuf),
    #[error("cannot reach the daemon at {socket}: {source} (the API is root-only)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Rejected(String),
    #[error("the daemon sent a response that is not JSON: {0}")]
    BadResponse(String),
}

/// A client of the control API.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(self.socket.clone())
                }
                _ => ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                },
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = body.map(|value| value.to_string()).unwrap_or_default();
        let request = HttpRequest::builder()
            .method(method)
            .uri(path)
            .header("host", "natctl")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a request from valid parts");
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes)
                .map_err(|_| ClientError::BadResponse(String::from_utf8_lossy(&bytes).into_owned()))
        } else {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
            Err(ClientError::Rejected(message))
        }
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

    /// Stops the server from inside a request, as `natctl down` does, and
    /// answers only after that.
    struct StopsTheServer(watch::Sender<bool>);

    impl Controller for StopsTheServer {
        fn handle(&self, _: Request) -> Result<serde_json::Value, ApiError> {
            let _ = self.0.send(true);
            // The answer is still being made when the accept loop stops.
            std::thread::sleep(Duration::from_millis(200));
            Ok(serde_json::json!({ "detached": true }))
        }
    }

    #[test]
    fn a_request_that_stops_the_server_still_gets_its_answer() {
        let dir = std::env::temp_dir().join(format!("natctl-api-{}", std::process::id()));
        let socket = dir.join("natctl.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(async { bind(&socket) }).unwrap();
        let client_socket = socket.clone();
        let client = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(Client::new(client_socket).call(Method::POST, "/v1/down", None))
        });
        let (stop, stopped) = watch::channel(false);
        runtime.block_on(serve(listener, Arc::new(StopsTheServer(stop)), stopped));
        // As the daemon does once `serve` returns: every task left is gone.
        drop(runtime);
        let answer = client.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(answer.expect("the answer")["detached"], true);
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
