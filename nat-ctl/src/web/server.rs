//! The admin page's HTTP server: on the LAN address and the LAN NIC only,
//! every request checked before it is routed (a LAN peer, the Host header
//! one of ours, sizes and times bounded), every page behind a login and
//! every form behind its session's CSRF token.
use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use maud::Markup;
use serde::de::DeserializeOwned;
use tokio::{net::TcpListener, sync::watch};

use super::{
    Backend, Refused, WebConfig, assets,
    auth::{self, AuthError, LoginLimiter, SESSION_LIFETIME, Session, Sessions},
    form::{Field, FieldErrors, RuleForm},
    pages,
};
use crate::{
    api::{ConnectionRecord, ListedRule, Request as ApiRequest},
    connections::{Admitted, Connections, DRAIN_DEADLINE, LanAcceptor},
    table::{Stats, TableRow},
};

/// Forms are a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;
const MAX_HEAD: usize = 16 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// A browser opens up to six at once to one site.
const MAX_PER_HOST: usize = 8;
/// The longest one connection lives; the browser opens another.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

const SESSION_COOKIE: &str = "natctl_session";
const LOGIN_COOKIE: &str = "natctl_login";

/// Binds the page's listener to the LAN address, on the LAN NIC only: a
/// WAN host that routes to the LAN address through the WAN NIC gets no
/// answer.
pub fn bind(config: &WebConfig) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket
        .bind_device(Some(config.lan_ifname.as_bytes()))
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!(
                    "binding the admin page's socket to {}: {error}",
                    config.lan_ifname
                ),
            )
        })?;
    socket.bind(&SocketAddr::V4(config.listen).into())?;
    socket.listen(64)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

struct App {
    config: WebConfig,
    backend: Arc<dyn Backend>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<LoginLimiter>,
}

/// Serves until `shutdown` turns true; then lets the requests in flight
/// finish within [`DRAIN_DEADLINE`].
pub async fn serve(
    listener: TcpListener,
    config: WebConfig,
    backend: Arc<dyn Backend>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Arc::new(App {
        config,
        backend,
        sessions: Mutex::default(),
        limiter: Mutex::default(),
    });
    let acceptor = LanAcceptor::new(MAX_CONNECTIONS, MAX_PER_HOST, "admin page");
    let mut connections = Connections::new(shutdown.clone());
    // The router itself may use its own page (from its LAN address).
    let admits = |host| app.config.lan_net.contains(&host);
    while let Some(Admitted {
        stream,
        caller,
        places,
    }) = acceptor.next(&listener, admits, &mut shutdown).await
    {
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| {
            let _places = &places;
            let app = app.clone();
            async move { Ok::<_, Infallible>(secured(respond(&app, caller, request).await)) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service);
        connections.spawn(connection, Some(CONNECTION_DEADLINE));
    }
    drop(listener);
    connections.drain(DRAIN_DEADLINE).await;
}

/// The headers every answer carries: nothing cached, no framing, no
/// script but our own file.
fn secured(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not no-referrer: with it, a browser sends `Origin: null` on our
        // own forms, and the Origin check could not tell them from another
        // site's.
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn respond_with(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("a response from valid parts")
}

fn html(status: StatusCode, markup: Markup) -> Response<Full<Bytes>> {
    respond_with(
        status,
        "text/html; charset=utf-8",
        Bytes::from(markup.into_string()),
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond_with(status, "text/plain; charset=utf-8", Bytes::from(body))
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .body(Full::new(Bytes::new()))
        .expect("a response from valid parts")
}

fn with_cookie(mut response: Response<Full<Bytes>>, cookie: String) -> Response<Full<Bytes>> {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn session_cookie(id: &str, max_age: Duration) -> String {
    format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        max_age.as_secs()
    )
}

/// The value of cookie `name`, from any `Cookie` header.
fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether `host` (a Host header) names this page: the listen address
/// (with its port, or without it on port 80) or one of the configured
/// names. Anything else may be a rebound DNS name.
pub fn host_allowed(config: &WebConfig, host: &str) -> bool {
    let port = config.listen.port();
    let (name, given_port) = match host.rsplit_once(':') {
        Some((name, given)) => match given.parse::<u16>() {
            Ok(given) => (name, given),
            Err(_) => return false,
        },
        None => (host, 80),
    };
    if given_port != port {
        return false;
    }
    name == config.listen.ip().to_string()
        || config
            .names
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn pair<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl App {
    /// A request to the daemon, answered as the API answers it. Map writes
    /// and an fsync of the store: kept off the reactor.
    fn ask(&self, request: ApiRequest) -> Result<serde_json::Value, Refused> {
        tokio::task::block_in_place(|| self.backend.request(request))
    }

    fn ask_as<T: DeserializeOwned>(&self, request: ApiRequest) -> Result<T, Refused> {
        let value = self.ask(request)?;
        serde_json::from_value(value).map_err(|error| Refused {
            message: format!("unexpected answer from the daemon: {error}"),
            rule: None,
        })
    }

    fn forwarding_page(
        &self,
        status: StatusCode,
        form: &RuleForm,
        errors: &FieldErrors,
        csrf: &str,
        notice: Option<&str>,
    ) -> Response<Full<Bytes>> {
        match self.ask_as::<Vec<ListedRule>>(ApiRequest::ListRules) {
            Ok(rules) => html(
                status,
                pages::forwarding(&rules, form, errors, csrf, notice),
            ),
            Err(refused) => text(StatusCode::INTERNAL_SERVER_ERROR, refused.message),
        }
    }

    fn login_page(
        &self,
        status: StatusCode,
        held: Option<&str>,
        error: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let (id, csrf) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .login_form(held, Instant::now());
        with_cookie(
            html(status, pages::login(&csrf, error)),
            format!(
                "{LOGIN_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/login; Max-Age={}",
                auth::LOGIN_FORM_LIFETIME.as_secs()
            ),
        )
    }

    fn session(&self, headers: &hyper::HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id, Instant::now())?;
        Some((id.to_owned(), session))
    }

    async fn login(
        &self,
        caller: Ipv4Addr,
        headers: &hyper::HeaderMap,
        pairs: &[(String, String)],
    ) -> Response<Full<Bytes>> {
        let form_ok = cookie(headers, LOGIN_COOKIE).is_some_and(|id| {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_login_form(id, pair(pairs, "csrf").unwrap_or(""), Instant::now())
        });
        if !form_ok {
            return self.login_page(
                StatusCode::FORBIDDEN,
                None,
                Some("The login form expired or did not come from this router: try again."),
            );
        }
        let allowed = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attempt(caller, Instant::now());
        if let Err(wait) = allowed {
            tracing::warn!("admin page: login attempts from {caller} held back");
            let mut response = self.login_page(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                Some(&format!(
                    "Too many login attempts: try again in {} seconds.",
                    wait.as_secs().max(1)
                )),
            );
            if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        let password = pair(pairs, "password").unwrap_or("").to_owned();
        let path = self.config.password_file.clone();
        let verified = tokio::task::spawn_blocking(move || auth::verify_password(&path, &password))
            .await
            .unwrap_or_else(|error| {
                Err(AuthError::Read {
                    path: self.config.password_file.clone(),
                    error: std::io::Error::other(error.to_string()),
                })
            });
        match verified {
            Ok(true) => {
                let (id, _) = self
                    .sessions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .create(Instant::now());
                tracing::info!("admin page: {caller} logged in");
                with_cookie(
                    redirect("/forwarding"),
                    session_cookie(&id, SESSION_LIFETIME),
                )
            }
            Ok(false) => {
                tracing::warn!("admin page: wrong password from {caller}");
                self.login_page(StatusCode::UNAUTHORIZED, None, Some("Wrong password."))
            }
            Err(error) => {
                tracing::error!("admin page: {error}");
                self.login_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    None,
                    Some(&error.to_string()),
                )
            }
        }
    }
}

/// A request from a LAN host.
async fn respond(app: &App, caller: Ipv4Addr, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("");
    if !host_allowed(&app.config, host) {
        tracing::info!("admin page: refused a request from {caller} for Host {host:?}");
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this page answers to http://{} only (Host {host:?} refused)\n",
                app.config.listen
            ),
        );
    }
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    match (&parts.method, path) {
        (&Method::GET, "/assets/style.css") => {
            return respond_with(
                StatusCode::OK,
                "text/css; charset=utf-8",
                Bytes::from_static(assets::STYLE.as_bytes()),
            );
        }
        (&Method::GET, "/assets/chart.js") => {
            return respond_with(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                Bytes::from_static(assets::CHART.as_bytes()),
            );
        }
        // Browsers ask for it by themselves; there is none.
        (&Method::GET, "/favicon.ico") => {
            return respond_with(StatusCode::NOT_FOUND, "text/plain", Bytes::new());
        }
        _ => {}
    }
    let pairs = if parts.method == Method::POST {
        // A browser names the page a form came from; a form posted from
        // another site (whatever its name resolves to) is refused.
        if let Some(origin) = parts.headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if origin != format!("http://{host}") {
                return text(
                    StatusCode::FORBIDDEN,
                    format!("a form from {origin:?} is refused\n"),
                );
            }
        }
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => form_pairs(&collected.to_bytes()),
            Ok(Err(_)) => return text(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n".into()),
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "form too slow\n".into()),
        }
    } else {
        Vec::new()
    };
    if path == "/login" {
        return match parts.method {
            Method::GET if app.session(&parts.headers).is_some() => redirect("/forwarding"),
            Method::GET => {
                app.login_page(StatusCode::OK, cookie(&parts.headers, LOGIN_COOKIE), None)
            }
            Method::POST => app.login(caller, &parts.headers, &pairs).await,
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
        };
    }
    let Some((session_id, session)) = app.session(&parts.headers) else {
        return match parts.method {
            Method::GET | Method::HEAD => redirect("/login"),
            _ => text(StatusCode::FORBIDDEN, "log in first\n".into()),
        };
    };
    let csrf = session.csrf.as_str();
    if parts.method == Method::POST && !auth::tokens_equal(pair(&pairs, "csrf").unwrap_or(""), csrf)
    {
        tracing::warn!("admin page: a form from {caller} without its CSRF token refused");
        return text(
            StatusCode::FORBIDDEN,
            "this form's CSRF token is missing or wrong: reload the page\n".into(),
        );
    }
    let query_pairs = form_pairs(query.as_bytes());
    match (parts.method.clone(), path) {
        (Method::GET, "/") => redirect("/forwarding"),
        (Method::POST, "/logout") => {
            app.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&session_id);
            with_cookie(redirect("/login"), session_cookie("", Duration::ZERO))
        }
        (Method::GET, "/forwarding") => forwarding_get(app, &query_pairs, csrf),
        (Method::POST, "/forwarding/add" | "/forwarding/modify") => {
            forwarding_save(app, &pairs, csrf)
        }
        (Method::POST, "/forwarding/delete" | "/forwarding/enable" | "/forwarding/disable") => {
            let name = pair(&pairs, "name").unwrap_or("").to_owned();
            let (request, done) = match path {
                "/forwarding/delete" => (ApiRequest::RemoveRule(name.clone()), "deleted"),
                "/forwarding/enable" => (
                    ApiRequest::SetEnabled {
                        name: name.clone(),
                        enabled: true,
                    },
                    "enabled",
                ),
                _ => (
                    ApiRequest::SetEnabled {
                        name: name.clone(),
                        enabled: false,
                    },
                    "disabled",
                ),
            };
            match app.ask(request) {
                Ok(_) => redirect(&done_url("/forwarding", done, &name)),
                Err(refused) => {
                    let mut errors = FieldErrors::new();
                    errors.insert(Field::Form, refused.message);
                    app.forwarding_page(StatusCode::CONFLICT, &new_rule_form(), &errors, csrf, None)
                }
            }
        }
        (Method::GET, "/table") => table_get(app, &query_pairs, csrf),
        (Method::GET, "/mappings") => mappings_page(app, StatusCode::OK, csrf, &query_pairs, None),
        (Method::POST, "/mappings/delete") => {
            let name = pair(&pairs, "name").unwrap_or("").to_owned();
            match app.ask(ApiRequest::RemoveRule(name.clone())) {
                Ok(_) => redirect(&done_url("/mappings", "deleted", &name)),
                Err(refused) => {
                    mappings_page(app, StatusCode::CONFLICT, csrf, &[], Some(refused.message))
                }
            }
        }
        (Method::POST, "/mappings/upnp" | "/mappings/natpmp") => {
            let on = pair(&pairs, "on") == Some("1");
            let request = if path == "/mappings/upnp" {
                ApiRequest::Upnp(on)
            } else {
                ApiRequest::Natpmp(on)
            };
            match app.ask(request) {
                Ok(_) => redirect("/mappings"),
                Err(refused) => {
                    mappings_page(app, StatusCode::CONFLICT, csrf, &[], Some(refused.message))
                }
            }
        }
        (Method::GET, "/traffic") => match app.ask_as::<Stats>(ApiRequest::Stats) {
            Ok(stats) => html(StatusCode::OK, pages::traffic(&stats, csrf)),
            Err(refused) => text(StatusCode::INTERNAL_SERVER_ERROR, refused.message),
        },
        (Method::GET, "/traffic.json") => match app.ask_as::<Stats>(ApiRequest::Stats) {
            Ok(stats) => {
                let packets = |label: &str| stats.counters.get(label).map_or(0, |c| c.packets);
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as u64);
                let body = serde_json::json!({
                    "at_ms": at_ms,
                    "lan_rx": packets("lan_rx"),
                    "wan_rx": packets("wan_rx"),
                });
                respond_with(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from(body.to_string()),
                )
            }
            Err(refused) => text(StatusCode::INTERNAL_SERVER_ERROR, refused.message),
        },
        (Method::GET, "/log") => {
            match app.ask_as::<Vec<ConnectionRecord>>(ApiRequest::Connections { follow: false }) {
                Ok(records) => html(StatusCode::OK, pages::log(&records, csrf)),
                Err(refused) => text(StatusCode::INTERNAL_SERVER_ERROR, refused.message),
            }
        }
        (Method::GET | Method::POST, _) => text(StatusCode::NOT_FOUND, "not found\n".into()),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
    }
}

fn new_rule_form() -> RuleForm {
    RuleForm {
        protocol: "tcp".into(),
        enabled: true,
        ..RuleForm::default()
    }
}

/// Where a change sends the browser next (post, redirect, get: a reload
/// does not post again).
fn done_url(page: &str, done: &str, name: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("done", done)
        .append_pair("rule", name)
        .finish();
    format!("{page}?{query}")
}

/// The notice a `done_url` asks for; only our own words and a rule name.
fn notice(query: &[(String, String)]) -> Option<String> {
    let done = pair(query, "done")?;
    let done = ["added", "modified", "deleted", "enabled", "disabled"]
        .into_iter()
        .find(|known| *known == done)?;
    Some(format!(
        "Rule {} {done}.",
        pair(query, "rule").unwrap_or("")
    ))
}

fn forwarding_get(app: &App, query: &[(String, String)], csrf: &str) -> Response<Full<Bytes>> {
    let mut form = new_rule_form();
    let mut errors = FieldErrors::new();
    if let Some(name) = pair(query, "edit") {
        let found = app
            .ask_as::<Vec<ListedRule>>(ApiRequest::ListRules)
            .ok()
            .and_then(|rules| rules.into_iter().find(|listed| listed.rule.name == name));
        match found {
            Some(listed) => form = RuleForm::from_rule(&listed.rule),
            None => {
                errors.insert(
                    Field::Form,
                    crate::rules::RuleError::NotFound(name.to_owned()).to_string(),
                );
            }
        }
    }
    let notice = notice(query);
    app.forwarding_page(StatusCode::OK, &form, &errors, csrf, notice.as_deref())
}

fn forwarding_save(app: &App, pairs: &[(String, String)], csrf: &str) -> Response<Full<Bytes>> {
    let form = RuleForm::from_pairs(pairs);
    let request = match &form.original {
        Some(original) => form.change().map(|change| ApiRequest::ModifyRule {
            name: original.clone(),
            change,
        }),
        None => form.rule().map(ApiRequest::AddRule),
    };
    let request = match request {
        Ok(request) => request,
        Err(errors) => {
            return app.forwarding_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                &form,
                &errors,
                csrf,
                None,
            );
        }
    };
    match app.ask(request) {
        Ok(_) => {
            let done = if form.original.is_some() {
                "modified"
            } else {
                "added"
            };
            redirect(&done_url("/forwarding", done, &form.name))
        }
        Err(refused) => {
            let field = refused.rule.as_ref().map_or(Field::Form, Field::of);
            let mut errors = FieldErrors::new();
            errors.insert(field, refused.message);
            app.forwarding_page(StatusCode::UNPROCESSABLE_ENTITY, &form, &errors, csrf, None)
        }
    }
}

fn table_get(app: &App, query: &[(String, String)], csrf: &str) -> Response<Full<Bytes>> {
    let get = |key: &str| pair(query, key).unwrap_or("").trim().to_owned();
    let typed = pages::TableQuery {
        protocol: get("protocol"),
        address: get("address"),
        port: get("port"),
        kind: get("type"),
    };
    // The same filter, and the same errors, as `natctl table`'s.
    let api_query = [
        ("protocol", &typed.protocol),
        ("address", &typed.address),
        ("port", &typed.port),
        ("type", &typed.kind),
    ]
    .iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(key, value)| format!("{key}={value}"))
    .collect::<Vec<_>>()
    .join("&");
    let filter = if api_query.contains(|c: char| c.is_whitespace() || c == '#') {
        Err("bad filter: no spaces".to_owned())
    } else {
        crate::api::parse_table_query(&api_query).map_err(|error| error.message)
    };
    let (rows, error) = match filter {
        Ok(filter) => match app.ask_as::<Vec<TableRow>>(ApiRequest::Table(filter)) {
            Ok(rows) => (rows, None),
            Err(refused) => (Vec::new(), Some(refused.message)),
        },
        Err(error) => (Vec::new(), Some(error)),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    html(status, pages::table(&rows, &typed, error.as_deref(), csrf))
}

fn mappings_page(
    app: &App,
    status: StatusCode,
    csrf: &str,
    query: &[(String, String)],
    error: Option<String>,
) -> Response<Full<Bytes>> {
    let rules = app.ask_as::<Vec<ListedRule>>(ApiRequest::ListRules);
    let daemon = app.ask(ApiRequest::Status);
    match (rules, daemon) {
        (Ok(rules), Ok(daemon)) => {
            let on = |key: &str| daemon.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
            let notice = error.or_else(|| notice(query));
            html(
                status,
                pages::mappings(
                    &rules,
                    on("upnp"),
                    on("natpmp"),
                    unix_now(),
                    csrf,
                    notice.as_deref(),
                ),
            )
        }
        (Err(refused), _) | (_, Err(refused)) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, refused.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebConfig {
        WebConfig {
            listen: "192.168.0.1:8080".parse().unwrap(),
            lan_ifname: "lan0".into(),
            lan_net: "192.168.0.1/24".parse().unwrap(),
            names: vec!["router.lan".into()],
            password_file: "/nonexistent".into(),
        }
    }

    #[test]
    fn only_our_own_names_are_hosts() {
        let config = config();
        assert!(host_allowed(&config, "192.168.0.1:8080"));
        assert!(host_allowed(&config, "ROUTER.lan:8080"));
        assert!(!host_allowed(&config, "192.168.0.1"), "port 80 is not ours");
        assert!(!host_allowed(&config, "192.168.0.1:8081"));
        assert!(!host_allowed(&config, "evil.example:8080"));
        assert!(!host_allowed(&config, ""));
        assert!(!host_allowed(&config, "192.168.0.1:8080:8080"));
        let on_80 = WebConfig {
            listen: "192.168.0.1:80".parse().unwrap(),
            ..config
        };
        assert!(host_allowed(&on_80, "192.168.0.1"));
        assert!(host_allowed(&on_80, "router.lan"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = hyper::HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; natctl_session=abc"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("natctl_login=xyz"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "natctl"), None);
    }

    #[test]
    fn a_notice_says_only_known_words() {
        let query = form_pairs(
            done_url("/forwarding", "added", "a&b")
                .split_once('?')
                .unwrap()
                .1
                .as_bytes(),
        );
        assert_eq!(notice(&query).as_deref(), Some("Rule a&b added."));
        let forged = form_pairs(b"done=hacked&rule=x");
        assert_eq!(notice(&forged), None);
    }
}
