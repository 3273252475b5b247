//! The daemon's side of the API: the socket, and HTTP around [`route`].
use std::{convert::Infallible, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request as HttpRequest, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::{net::UnixListener, sync::watch};

use super::{ApiError, ErrorBody, Request, route};
use crate::connections::{Connections, DRAIN_DEADLINE};

/// Request bodies are small JSON objects: anything larger is refused.
const MAX_BODY: usize = 64 * 1024;
/// A client that does not send its request head in time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// No request takes longer than this, even a slow client's.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What serves the requests: the daemon.
pub trait Controller: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Result<serde_json::Value, ApiError>;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Client;

    /// Stops the server from inside a request, as `natctl down` does, and
    /// answers only after that.
    struct StopsTheServer(watch::Sender<bool>);

    impl Controller for StopsTheServer {
        fn handle(&self, _: Request) -> Result<serde_json::Value, ApiError> {
            let _ = self.0.send(true);
            // The answer is still being made when the accept loop stops.
            std::thread::sleep(Duration::from_millis(200));
            Ok(serde_json::json!({ "detached": true, "pin_dir": "/sys/fs/bpf/natctl" }))
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
                .block_on(Client::new(client_socket).down())
        });
        let (stop, stopped) = watch::channel(false);
        runtime.block_on(serve(listener, Arc::new(StopsTheServer(stop)), stopped));
        // As the daemon does once `serve` returns: every task left is gone.
        drop(runtime);
        let answer = client.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(answer.expect("the answer").detached);
    }
}
