//! The typed client every `natctl` subcommand but `daemon` uses.
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request as HttpRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::{
    Detached, ErrorBody, ListedRule, NatpmpSwitched, Reloaded, Removed, Request, RuleChange,
    TableFilter, UpnpSwitched,
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
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|error| ClientError::BadResponse {
                what,
                error,
                body: String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(SHOWN_BODY_CHARS)
                    .collect(),
            })
        } else {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| body.error)
                .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&bytes)));
            Err(ClientError::Rejected(message))
        }
    }
}
