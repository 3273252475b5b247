//! The typed client every `natctl` subcommand but `daemon` uses.
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request as HttpRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::{
    ConnectionRecord, Detached, ErrorBody, FollowedLine, ListedRule, NatpmpSwitched, Reloaded,
    Removed, Request, RuleChange, TableFilter, UpnpSwitched,
};
use crate::{
    rules::ForwardRule,
    table::{Stats, TableRow},
};

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
    #[error("encoding the request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("{0}")]
    Rejected(String),
    /// A daemon of another version, most likely.
    #[error("the daemon's {what} is not what this natctl reads ({error}); it sent {body:?}")]
    BadResponse {
        what: &'static str,
        error: serde_json::Error,
        /// The start of what was sent.
        body: String,
    },
}

/// How much of a response that cannot be read goes into the error.
const SHOWN_BODY_CHARS: usize = 300;

/// A client of the control API: one method per route, each answering the
/// route's own type.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// What the daemon runs on. Only ever shown as it is, so left untyped:
    /// it is made of the daemon's configuration and interfaces.
    pub async fn status(&self) -> Result<serde_json::Value, ClientError> {
        self.send(Request::Status, "status").await
    }

    pub async fn list_rules(&self) -> Result<Vec<ListedRule>, ClientError> {
        self.send(Request::ListRules, "rule list").await
    }

    pub async fn add_rule(&self, rule: &ForwardRule) -> Result<ListedRule, ClientError> {
        self.send(Request::AddRule(rule.clone()), "added rule")
            .await
    }

    pub async fn modify_rule(
        &self,
        name: &str,
        change: &RuleChange,
    ) -> Result<ListedRule, ClientError> {
        let request = Request::ModifyRule {
            name: name.to_owned(),
            change: change.clone(),
        };
        self.send(request, "modified rule").await
    }

    pub async fn remove_rule(&self, name: &str) -> Result<Removed, ClientError> {
        self.send(Request::RemoveRule(name.to_owned()), "answer to remove")
            .await
    }

    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<ListedRule, ClientError> {
        let request = Request::SetEnabled {
            name: name.to_owned(),
            enabled,
        };
        self.send(request, "changed rule").await
    }

    pub async fn table(&self, filter: &TableFilter) -> Result<Vec<TableRow>, ClientError> {
        self.send(Request::Table(filter.clone()), "NAT table").await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.send(Request::Stats, "counters").await
    }

    /// The connection log's history, oldest first.
    pub async fn connections(&self) -> Result<Vec<ConnectionRecord>, ClientError> {
        self.send(Request::Connections { follow: false }, "connection log")
            .await
    }

    /// The connection log's history, then each new connection as the
    /// daemon reports it, until the daemon stops (`Ok`) or `each` fails
    /// (its reader went away: `Ok` too).
    pub async fn follow_connections(
        &self,
        mut each: impl FnMut(FollowedLine) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let response = self.request(Request::Connections { follow: true }).await?;
        if !response.status().is_success() {
            return Err(rejection(response).await);
        }
        let mut body = response.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let parsed =
                    serde_json::from_slice(&line).map_err(|error| ClientError::BadResponse {
                        what: "connection log",
                        error,
                        body: String::from_utf8_lossy(&line)
                            .chars()
                            .take(SHOWN_BODY_CHARS)
                            .collect(),
                    })?;
                if each(parsed).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub async fn reload(&self) -> Result<Reloaded, ClientError> {
        self.send(Request::Reload, "answer to reload").await
    }

    pub async fn upnp(&self, on: bool) -> Result<UpnpSwitched, ClientError> {
        self.send(Request::Upnp(on), "answer to upnp").await
    }

    pub async fn natpmp(&self, on: bool) -> Result<NatpmpSwitched, ClientError> {
        self.send(Request::Natpmp(on), "answer to natpmp").await
    }

    pub async fn down(&self) -> Result<Detached, ClientError> {
        self.send(Request::Down, "answer to down").await
    }

    /// Sends `request` and reads the answer as a `T`; `what` names the
    /// answer in the error if it cannot be read.
    async fn send<T: DeserializeOwned>(
        &self,
        request: Request,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let response = self.request(request).await?;
        if !response.status().is_success() {
            return Err(rejection(response).await);
        }
        let bytes = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|error| ClientError::BadResponse {
            what,
            error,
            body: String::from_utf8_lossy(&bytes)
                .chars()
                .take(SHOWN_BODY_CHARS)
                .collect(),
        })
    }

    /// Sends `request`; the response's body is still to be read.
    async fn request(
        &self,
        request: Request,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let (method, path, body) = request.to_http().map_err(ClientError::Encode)?;
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
        let request = HttpRequest::builder()
            .method(method)
            .uri(path)
            .header("host", "natctl")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a request from valid parts");
        Ok(sender.send_request(request).await?)
    }
}

/// The daemon's refusal, as the one line it gave.
async fn rejection(response: hyper::Response<hyper::body::Incoming>) -> ClientError {
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return error.into(),
    };
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|body| body.error)
        .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    ClientError::Rejected(message)
}
