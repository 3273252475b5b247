//! The IGD's HTTP server: descriptions and SOAP control, on the LAN address
//! and the LAN NIC only. Everything about a request is checked before it
//! reaches the actions: the peer is a LAN host, the Host header is an IP
//! literal (no DNS rebinding), sizes and times are bounded.
use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::Ipv4Net;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    connections::{Admitted, Connections, DRAIN_DEADLINE, LanAcceptor},
    limiter::RateLimiter,
};

use super::{
    Identity, IgdVersion, Resource, ServicePaths, description,
    error::UpnpError,
    soap::{self, SoapRequest},
};

/// SOAP requests are a few hundred bytes; anything near this is abuse.
pub const MAX_BODY: usize = 16 * 1024;
/// hyper's smallest read buffer: request heads beyond it are refused.
const MAX_HEAD: usize = 8192;
/// Also the longest a kept-alive connection may sit idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A client (slow or stuck) gets this long to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// Connections one LAN host may hold at once, so that one cannot take
/// every slot.
const MAX_PER_HOST: usize = 8;
/// The longest any connection lives, requests, answers and idle time
/// together: a reader too slow to take its answer holds a slot no longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the actions for the HTTP server: the daemon, over its rules.
pub trait Control: Send + Sync + 'static {
    fn control(
        &self,
        caller: Ipv4Addr,
        request: &SoapRequest,
    ) -> Result<Vec<(&'static str, String)>, UpnpError>;
}

/// What the server describes and where, and its per-host rate limit.
#[derive(Debug)]
pub struct HttpConfig {
    pub lan_ifname: String,
    pub lan_addr: Ipv4Addr,
    pub lan_net: Ipv4Net,
    pub identity: Identity,
    pub igd: IgdVersion,
    /// User-Agent substrings that get the IGDv1 description.
    pub v1_user_agents: Vec<String>,
    /// Drawn at each start.
    pub paths: ServicePaths,
    /// Control requests per second per LAN host.
    pub rate_limit: u32,
    pub limiter: std::sync::Mutex<RateLimiter>,
}

impl HttpConfig {
    /// Whether `caller` may make a control request now: each takes the
    /// daemon's lock, so one host may not keep it from the others.
    fn admit_control(&self, caller: Ipv4Addr, now: std::time::Instant) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(caller, now, self.rate_limit)
    }
}

/// Binds the HTTP listener to the LAN address, on the LAN NIC only (a WAN
/// host that routes to the LAN address through the WAN NIC gets nothing).
pub fn bind(lan_ifname: &str, lan_addr: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket
        .bind_device(Some(lan_ifname.as_bytes()))
        .map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("binding the UPnP HTTP socket to {lan_ifname}: {error}"),
            )
        })?;
    socket.bind(&SocketAddr::from((lan_addr, port)).into())?;
    socket.listen(64)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// `Host: 192.168.0.1:5000` or `Host: 192.168.0.1`: only IP literals, so a
/// web page whose name was rebound to our address cannot reach us.
pub fn host_is_ip_literal(host: &str) -> bool {
    host.parse::<SocketAddrV4>().is_ok() || host.parse::<Ipv4Addr>().is_ok()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("connection", "close")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a response from valid parts")
}

fn xml(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml; charset=\"utf-8\"")
        .header("ext", "")
        .body(Full::new(Bytes::from(body)))
        .expect("a response from valid parts")
}

/// A control request over the caller's rate: 503 and when to come back
/// (UDA has no SOAP fault for it; clients retry on 503).
fn too_many(caller: Ipv4Addr) -> Response<Full<Bytes>> {
    tracing::debug!("UPnP control request from {caller} over the rate limit");
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many control requests; retry in a second\n",
    );
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    response
}

/// What a request head asks for, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    RootDescription(IgdVersion),
    WanIpScpd(IgdVersion),
    WanCommonScpd,
    /// A SOAP call to the control URL of `service` (a base URN).
    Control {
        service: &'static str,
        soap_action: Option<String>,
    },
    Subscribe,
    NotFound,
    MethodNotAllowed,
}

/// Why a request head is refused before anything else is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No Host header, or not an IP literal (DNS rebinding).
    Host,
    /// A header that is not text.
    BadHeader,
    /// A control request a web page could have made: with an `Origin`
    /// header (browsers send one on cross-site requests; UPnP clients
    /// never do), without SOAPAction, or without an XML body type. The
    /// last two can only be sent cross-site after a CORS preflight, which
    /// is never granted.
    CrossSite(&'static str),
}

/// Checks a request head and routes it: the server's one entry point for
/// untrusted heads (and the fuzz target's). `headers` are (name, value)
/// pairs as they came; names compare case-insensitively. Returns the route
/// and the URL base (`http://HOST`) descriptions refer to.
pub fn route_head(
    method: &str,
    path: &str,
    paths: &ServicePaths,
    headers: &[(&str, &[u8])],
    default_igd: IgdVersion,
    v1_user_agents: &[String],
) -> Result<(Route, String), Refusal> {
    let header = |name: &str| -> Result<Option<&str>, Refusal> {
        match headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
        {
            Some((_, value)) => std::str::from_utf8(value)
                .map(|value| Some(value.trim()))
                .map_err(|_| Refusal::BadHeader),
            None => Ok(None),
        }
    };
    let host = header("host")?.unwrap_or("");
    if !host_is_ip_literal(host) {
        return Err(Refusal::Host);
    }
    let agent = header("user-agent")?.unwrap_or("");
    let version = if v1_user_agents
        .iter()
        .any(|needle| !needle.is_empty() && agent.contains(needle.as_str()))
    {
        IgdVersion::V1
    } else {
        default_igd
    };
    let route = match (method, paths.resource(path)) {
        ("GET", Some(Resource::RootDescription(forced))) => {
            Route::RootDescription(forced.unwrap_or(version))
        }
        ("GET", Some(Resource::WanIpScpd(forced))) => Route::WanIpScpd(forced.unwrap_or(version)),
        ("GET", Some(Resource::WanCommonScpd)) => Route::WanCommonScpd,
        ("POST", Some(Resource::Control(service))) => {
            if header("origin")?.is_some() {
                return Err(Refusal::CrossSite("an Origin header"));
            }
            let Some(soap_action) = header("soapaction")? else {
                return Err(Refusal::CrossSite("no SOAPAction header"));
            };
            if !header("content-type")?.is_some_and(is_xml_media_type) {
                return Err(Refusal::CrossSite("a body that is not text/xml"));
            }
            Route::Control {
                service,
                soap_action: Some(soap_action.to_owned()),
            }
        }
        // Eventing is not offered: a subscription would let a client make
        // the router send HTTP requests to an address of its choosing.
        ("SUBSCRIBE" | "UNSUBSCRIBE", Some(Resource::Events)) => Route::Subscribe,
        ("GET" | "POST", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    };
    Ok((route, format!("http://{host}")))
}

/// `text/xml` or `application/xml`, with or without parameters.
fn is_xml_media_type(value: &str) -> bool {
    let media_type = value.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("text/xml")
        || media_type.eq_ignore_ascii_case("application/xml")
}

/// A request already known to come from a LAN host.
async fn respond(
    config: &HttpConfig,
    control: &dyn Control,
    caller: Ipv4Addr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let routed = route_head(
        parts.method.as_str(),
        parts.uri.path(),
        &config.paths,
        &headers,
        config.igd,
        &config.v1_user_agents,
    );
    let (route, url_base) = match routed {
        Ok(routed) => routed,
        Err(Refusal::Host) => {
            return text(
                StatusCode::BAD_REQUEST,
                "the Host header must be an IP address\n",
            );
        }
        Err(Refusal::BadHeader) => {
            return text(StatusCode::BAD_REQUEST, "malformed header\n");
        }
        Err(Refusal::CrossSite(why)) => {
            tracing::info!("UPnP control request from {caller} refused: {why}");
            return text(
                StatusCode::FORBIDDEN,
                "control requests need SOAPAction, a text/xml body and no Origin\n",
            );
        }
    };
    match route {
        Route::RootDescription(version) => xml(
            StatusCode::OK,
            description::root_description(&config.identity, version, &url_base, &config.paths),
        ),
        Route::WanIpScpd(version) => xml(StatusCode::OK, description::wan_ip_scpd(version)),
        Route::WanCommonScpd => xml(StatusCode::OK, description::wan_common_scpd()),
        Route::Control {
            service,
            soap_action,
        } => {
            if !config.admit_control(caller, std::time::Instant::now()) {
                return too_many(caller);
            }
            let body =
                match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect())
                    .await
                {
                    Ok(Ok(collected)) => collected.to_bytes(),
                    Ok(Err(_)) => {
                        return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                    }
                    Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request body too slow\n"),
                };
            let request = match soap::parse_request(&body, soap_action.as_deref()) {
                Ok(request) => request,
                Err(error) => {
                    return xml(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        soap::fault(error.upnp_error()),
                    );
                }
            };
            if request
                .service_type
                .rsplit_once(':')
                .is_none_or(|(base, _)| base != service)
            {
                return xml(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    soap::fault(UpnpError::InvalidAction),
                );
            }
            // On this worker, as NAT-PMP and PCP requests are: an action is
            // map writes and socket dumps (some tens of us; the store is
            // saved later, off the reactor, by `save_deferred`), and
            // `block_in_place` would hand the worker's other tasks to
            // another thread for each one, which cost more than the action
            // (AddPortMapping 2,450 -> 4,000 a second without it).
            match control.control(caller, &request) {
                Ok(args) => xml(
                    StatusCode::OK,
                    soap::response(&request.service_type, &request.action, &args),
                ),
                Err(error) => xml(StatusCode::INTERNAL_SERVER_ERROR, soap::fault(error)),
            }
        }
        Route::Subscribe => text(
            StatusCode::PRECONDITION_FAILED,
            "event subscriptions are not offered\n",
        ),
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Route::MethodNotAllowed => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// Serves until `shutdown` turns true; then lets the requests in flight
/// finish within [`DRAIN_DEADLINE`].
pub async fn serve(
    listener: TcpListener,
    config: Arc<HttpConfig>,
    control: Arc<dyn Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = LanAcceptor::new(MAX_CONNECTIONS, MAX_PER_HOST, "UPnP HTTP");
    let mut connections = Connections::new(shutdown.clone());
    let admits = |host| config.lan_net.contains(&host) && host != config.lan_addr;
    while let Some(Admitted {
        stream,
        caller,
        places,
    }) = acceptor.next(&listener, admits, &mut shutdown).await
    {
        let config = config.clone();
        let control = control.clone();
        let service = hyper::service::service_fn(move |request| {
            // Held for as long as the connection serves: the slots free
            // when hyper drops the service with the connection.
            let _places = &places;
            let config = config.clone();
            let control = control.clone();
            async move { Ok::<_, Infallible>(respond(&config, control.as_ref(), caller, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service);
        // Slow heads and bodies are cut by their own timeouts, and the
        // whole connection by its deadline.
        connections.spawn(connection, Some(CONNECTION_DEADLINE));
    }
    drop(listener);
    connections.drain(DRAIN_DEADLINE).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upnp::SERVICE_WAN_IP;

    fn route(method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Route, Refusal> {
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        route_head(
            method,
            path,
            &ServicePaths::with_token("t"),
            &headers,
            IgdVersion::V2,
            &["Windows".to_owned()],
        )
        .map(|(route, _)| route)
    }

    /// What a web page can send without a CORS preflight: no SOAPAction,
    /// a text/plain or form body, and its Origin (Filet-o-Firewall).
    #[test]
    fn control_requests_a_web_page_could_make_are_refused() {
        let host = ("Host", "192.168.0.1:5000");
        let action = (
            "SOAPAction",
            "\"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\"",
        );
        let xml = ("Content-Type", "text/xml");
        for (headers, why) in [
            (vec![host, xml], "no SOAPAction header"),
            (
                vec![host, action, ("Content-Type", "text/plain")],
                "a body that is not text/xml",
            ),
            (
                vec![
                    host,
                    action,
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                "a body that is not text/xml",
            ),
            (vec![host, action], "a body that is not text/xml"),
            (
                vec![host, action, xml, ("Origin", "http://evil.example")],
                "an Origin header",
            ),
            (
                vec![host, action, xml, ("origin", "null")],
                "an Origin header",
            ),
        ] {
            assert_eq!(
                route("POST", "/ctl/t/IPConn", &headers),
                Err(Refusal::CrossSite(why)),
                "{headers:?}"
            );
        }
        for content_type in ["text/xml", "TEXT/XML; charset=utf-8", "application/xml"] {
            assert!(
                matches!(
                    route(
                        "POST",
                        "/ctl/t/IPConn",
                        &[host, action, ("Content-Type", content_type)]
                    ),
                    Ok(Route::Control { .. })
                ),
                "{content_type}"
            );
        }
    }

    #[test]
    fn control_requests_are_rate_limited_per_host() {
        let config = HttpConfig {
            lan_ifname: "lan0".into(),
            lan_addr: Ipv4Addr::new(192, 168, 0, 1),
            lan_net: "192.168.0.0/24".parse().unwrap(),
            identity: crate::upnp::service::identity("lan0", IgdVersion::V2, 1),
            igd: IgdVersion::V2,
            v1_user_agents: Vec::new(),
            paths: ServicePaths::with_token("t"),
            rate_limit: 5,
            limiter: std::sync::Mutex::default(),
        };
        let (one, other) = (
            Ipv4Addr::new(192, 168, 0, 12),
            Ipv4Addr::new(192, 168, 0, 13),
        );
        let now = std::time::Instant::now();
        let admitted = (0..50).filter(|_| config.admit_control(one, now)).count();
        assert_eq!(admitted, 10, "the burst is twice the rate");
        assert!(config.admit_control(other, now), "another host has its own");
        assert!(config.admit_control(one, now + Duration::from_millis(250)));
        let refused = too_many(one);
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[hyper::header::RETRY_AFTER], "1");
    }

    #[test]
    fn heads_are_checked_then_routed() {
        let host = ("Host", "192.168.0.1:5000");
        assert_eq!(
            route("GET", "/rootDesc.xml", &[host]),
            Ok(Route::RootDescription(IgdVersion::V2))
        );
        assert_eq!(
            route(
                "GET",
                "/rootDesc.xml",
                &[host, ("User-Agent", "Microsoft-Windows/10.0 UPnP/1.0")]
            ),
            Ok(Route::RootDescription(IgdVersion::V1))
        );
        assert_eq!(
            route("GET", "/rootDesc.xml", &[("host", "evil.example:5000")]),
            Err(Refusal::Host)
        );
        assert_eq!(route("GET", "/rootDesc.xml", &[]), Err(Refusal::Host));
        let xml = ("Content-Type", "text/xml; charset=\"utf-8\"");
        assert_eq!(
            route(
                "POST",
                "/ctl/t/IPConn",
                &[host, xml, ("SOAPAction", "\"urn:x#y\"")]
            ),
            Ok(Route::Control {
                service: SERVICE_WAN_IP,
                soap_action: Some("\"urn:x#y\"".to_owned())
            })
        );
        assert_eq!(
            route("SUBSCRIBE", "/evt/t/IPConn", &[host]),
            Ok(Route::Subscribe)
        );
        assert_eq!(
            route("PUT", "/ctl/t/IPConn", &[host]),
            Ok(Route::MethodNotAllowed)
        );
        assert_eq!(route("GET", "/etc/passwd", &[host]), Ok(Route::NotFound));
        // The well-known paths of other gateways are not this one's.
        let action = ("SOAPAction", "\"urn:x#y\"");
        assert_eq!(
            route("POST", "/ctl/IPConn", &[host, xml, action]),
            Ok(Route::NotFound)
        );
        assert_eq!(route("GET", "/WANIPCn.xml", &[host]), Ok(Route::NotFound));
        assert_eq!(
            route("GET", "/t/WANIPCn.xml", &[host]),
            Ok(Route::WanIpScpd(IgdVersion::V2))
        );
    }

    #[test]
    fn host_must_be_an_ip_literal() {
        assert!(host_is_ip_literal("192.168.0.1"));
        assert!(host_is_ip_literal("192.168.0.1:5000"));
        assert!(!host_is_ip_literal("router.example"));
        assert!(!host_is_ip_literal("attacker.example:5000"));
        assert!(!host_is_ip_literal(""));
        assert!(!host_is_ip_literal("192.168.0.1:99999"));
    }
}
