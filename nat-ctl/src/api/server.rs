//! The daemon's side of the API: the socket, and HTTP around [`route`].
use std::{convert::Infallible, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Request as HttpRequest, Response, StatusCode,
    body::{Frame, Incoming},
};
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

/// An answer that goes on: one JSON value a line, as they come.
pub type JsonLines = futures::stream::BoxStream<'static, serde_json::Value>;

/// What serves the requests: the daemon.
pub trait Controller: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Result<serde_json::Value, ApiError>;

    /// The requests answered by a stream ([`Request::is_stream`]).
    fn stream(&self, request: Request) -> Result<JsonLines, ApiError> {
        Err(ApiError::not_found(format!(
            "{request:?} is not served as a stream here"
        )))
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn respond(status: u16, body: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("a response from valid parts")
}

/// Newline-delimited JSON (application/x-ndjson) until `lines` ends or
/// the server stops: then the body ends cleanly, and the client sees the
/// end of the stream, not a cut connection.
fn respond_lines(lines: JsonLines, mut stop: watch::Receiver<bool>) -> Response<Body> {
    let stopping = Box::pin(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    });
    let frames = lines.take_until(stopping).map(|value| {
        let mut line = serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("a response from valid parts")
}

async fn serve_request(
    controller: Arc<dyn Controller>,
    request: HttpRequest<Incoming>,
    stop: watch::Receiver<bool>,
    streaming: Arc<watch::Sender<bool>>,
) -> Response<Body> {
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
    let request = match route(&parts.method, &path, &query, &body) {
        Ok(request) if request.is_stream() => {
            return match controller.stream(request) {
                Ok(lines) => {
                    // The connection lives as long as the stream.
                    let _ = streaming.send(true);
                    respond_lines(lines, stop)
                }
                Err(error) => respond(
                    error.status,
                    &ErrorBody {
                        error: error.message,
                    },
                ),
            };
        }
        routed => routed,
    };
    let outcome = request.and_then(|request| {
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

/// Binds the API socket. Its directory is created root-only, or must be
/// one: owned by us, a real directory (not a link), writable by nobody
/// else, so that no other user can put a socket of theirs in its place. A
/// stale socket left by a killed daemon is replaced. The socket is 0600
/// from the moment it has its name, and every connection's peer is checked
/// as well (see [`serve`]).
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = socket.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        check_socket_dir(dir)?;
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
    // Bound under a temporary name, made 0600, then renamed into place: the
    // socket never exists at its path with wider rights. (A umask would do
    // it too, but the umask is the whole process's, and other threads may
    // be creating files meanwhile.)
    let staging = socket.with_extension(format!("sock-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, socket));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(error);
    }
    Ok(listener)
}

fn check_socket_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{}: {why}; the API socket needs a directory only this user can write, \
                 such as /run/natctl",
                dir.display()
            ),
        ))
    };
    let metadata = std::fs::symlink_metadata(dir)?;
    if metadata.file_type().is_symlink() {
        return refuse("is a symbolic link".to_owned());
    }
    if !metadata.is_dir() {
        return refuse("is not a directory".to_owned());
    }
    let me = nix::unistd::geteuid().as_raw();
    if metadata.uid() != me {
        return refuse(format!("is owned by uid {}, not {me}", metadata.uid()));
    }
    let mode = metadata.permissions().mode();
    if mode & 0o022 != 0 {
        return refuse(format!(
            "is writable by other users (mode {:o})",
            mode & 0o777
        ));
    }
    Ok(())
}

/// Why the peer of `stream` may not use the API, if it may not: only our
/// own user (root) may.
fn peer_refusal(stream: &tokio::net::UnixStream) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(peer) if peer.uid() == me => None,
        Ok(peer) => Some(format!(
            "the natctl API is for uid {me} only, not uid {}",
            peer.uid()
        )),
        Err(error) => Some(format!("cannot read the peer's credentials: {error}")),
    }
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
        // The socket's mode keeps others out; the peer's credentials say
        // so again, whatever the file system did.
        let refusal = peer_refusal(&stream);
        let (streaming, lifted) = watch::channel(false);
        let streaming = Arc::new(streaming);
        let stop = shutdown.clone();
        let service = hyper::service::service_fn(move |request| {
            let controller = controller.clone();
            let refusal = refusal.clone();
            let stop = stop.clone();
            let streaming = streaming.clone();
            async move {
                Ok::<_, Infallible>(match refusal {
                    Some(error) => respond(403, &ErrorBody { error }),
                    None => serve_request(controller, request, stop, streaming).await,
                })
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        connections.spawn_liftable(connection, Some(CONNECTION_TIMEOUT), Some(lifted));
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

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("natctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_socket_is_private_from_the_start_and_its_directory_must_be() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let root = scratch("bind");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();

        // A directory it creates: root-only, and the socket 0600.
        let socket = root.join("run/natctl.sock");
        let listener = bind(&socket).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("run")), 0o700);
        assert_eq!(mode(&socket), 0o600);
        drop(listener);

        // A directory others may write to, and a link to one, are refused.
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = bind(&open.join("natctl.sock")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("writable by other users (mode 777)"),
            "{error}"
        );
        let link = root.join("link");
        symlink(root.join("run"), &link).unwrap();
        let error = bind(&link.join("natctl.sock")).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn our_own_user_may_use_the_api() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let stream = tokio::net::UnixStream::from_std(ours).unwrap();
        assert_eq!(peer_refusal(&stream), None);
    }
}
