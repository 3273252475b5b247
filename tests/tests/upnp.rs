//! End-to-end tests of the UPnP IGD that `natctl daemon` serves on the LAN,
//! driven by the real `upnpc` client (miniupnpc) run inside the LAN host's
//! namespace, plus raw SSDP and HTTP where a client would hide what the
//! daemon does: discovery and status, adding / using / listing / deleting
//! mappings (TCP and UDP), AddAnyPortMapping and DeletePortMappingRange,
//! lease expiry, secure mode and permissions, `natctl upnp off|on`, nothing
//! reachable from the WAN side, strict HTTP/SOAP input, and mappings that
//! survive a daemon restart.
//!
//! Every test has a lab of its own; all traffic stays inside its
//! namespaces, every sending loop is bounded in count and time, and every
//! wait is a bounded poll.
//!
//! About `upnpc -i`: the lab's WAN is 203.0.113.0/24 (TEST-NET-3), which
//! miniupnpc 2.2's `UPNP_GetValidIGD` counts as a reserved, non-public
//! address; it then calls the gateway "a (not connected?) IGD" and gives up
//! unless `-i` is given, even though the gateway answers GetStatusInfo with
//! "Connected". Tests that discover by SSDP therefore pass `-i`; the others
//! pass `-u <description URL>` (no discovery, faster), which skips that
//! check.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Output,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use nat_tests::{
    join,
    lab::{LAN_CLIENT, LAN_SERVER, Lab, ROUTER_LAN, ROUTER_WAN, WAN_HOST},
    netns::Netns,
    traffic::uninterrupted,
    wait_for,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const HTTP_PORT: u16 = 5000;
const DESC_URL: &str = "http://192.168.0.1:5000/rootDesc.xml";
const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
/// What `upnpc` may take at most (discovery is 2 s, each HTTP call a few).
const UPNPC_TIMEOUT_SECS: &str = "30";

/// A lab whose IGD serves HTTP on [`HTTP_PORT`], with the IGD up.
fn upnp_lab() -> Lab {
    upnp_lab_with("")
}

fn upnp_lab_with(extra: &str) -> Lab {
    let lab = Lab::start_with_config(&format!("[upnp]\nhttp_port = {HTTP_PORT}\n{extra}"))
        .expect("starting the lab");
    wait_igd(&lab, 1);
    lab
}

/// Waits until the IGD has been started `starts` times in this lab's log
/// (HTTP listener bound, then the SSDP socket joined: both are logged only
/// once ready); returns the HTTP port of the latest start.
fn wait_igd(lab: &Lab, starts: usize) -> u16 {
    const SSDP_UP: &str = "SSDP on lan0 (192.168.0.1): announcing";
    const HTTP_UP: &str = "UPnP IGD on lan0 (192.168.0.1), description at http://192.168.0.1:";
    let log = wait_for("the UPnP IGD to start", Duration::from_secs(15), || {
        let log = lab.natctl_log();
        (log.matches(SSDP_UP).count() >= starts && log.matches(HTTP_UP).count() >= starts)
            .then_some(log)
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
    let after = &log[log.rfind(HTTP_UP).unwrap() + HTTP_UP.len()..];
    after
        .split('/')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in the IGD's log line: {after:?}"))
}

/// Waits until `needle` appears at least `count` times in the daemon's log.
fn wait_log(lab: &Lab, needle: &str, count: usize) {
    wait_for(needle, Duration::from_secs(15), || {
        (lab.natctl_log().matches(needle).count() >= count).then_some(())
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
}

/// One `upnpc` run in the LAN host's namespace, bounded by `timeout`.
struct Upnpc {
    args: String,
    success: bool,
    stdout: String,
    stderr: String,
}

impl Upnpc {
    fn text(&self) -> String {
        format!(
            "`upnpc {}` ({}):\n--- stdout\n{}--- stderr\n{}",
            self.args,
            if self.success { "succeeded" } else { "failed" },
            self.stdout,
            self.stderr
        )
    }
}

fn run_upnpc(netns: &Netns, args: &[&str]) -> Upnpc {
    let output: Output = netns
        .command("timeout")
        .arg(UPNPC_TIMEOUT_SECS)
        .arg("upnpc")
        .args(args)
        .output()
        .expect("running upnpc (is miniupnpc installed? `cargo xtask setup`)");
    Upnpc {
        args: args.join(" "),
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `upnpc -u DESC_URL COMMAND` (arguments split at spaces): straight to the control URL, no discovery.
fn upnpc(lab: &Lab, command: &str) -> Upnpc {
    let mut full = vec!["-u", DESC_URL];
    full.extend(words(command));
    run_upnpc(&lab.lan, &full)
}

/// `upnpc` that must succeed; returns its stdout.
fn upnpc_ok(lab: &Lab, command: &str) -> String {
    let run = upnpc(lab, command);
    assert!(run.success, "{}\n{}", run.text(), lab.natctl_log());
    run.stdout
}

/// `upnpc` that must fail with UPnP error `code`.
fn upnpc_refused(lab: &Lab, command: &str, code: u16) -> Upnpc {
    let run = upnpc(lab, command);
    let line = run
        .stdout
        .lines()
        .chain(run.stderr.lines())
        .find(|line| line.contains("failed with code"))
        .map(str::to_owned);
    assert!(
        !run.success
            && line
                .as_deref()
                .is_some_and(|line| line.contains(&code.to_string())),
        "expected a failure with code {code}: {}\n{}",
        run.text(),
        lab.natctl_log()
    );
    run
}

/// One mapping as `upnpc -l` and `-L` print it:
/// ` 0 TCP  8080->192.168.0.12:8000  'test' '' 3600`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    protocol: String,
    external: u16,
    client: Ipv4Addr,
    internal: u16,
    description: String,
    lease: u32,
}

fn parse_listing(stdout: &str) -> Vec<Listed> {
    let mut found = Vec::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [index, protocol, mapping, description, _remote, lease] = fields[..] else {
            continue;
        };
        if index.parse::<u32>().is_err() || !matches!(protocol, "TCP" | "UDP") {
            continue;
        }
        let parsed = (|| {
            let (external, target) = mapping.split_once("->")?;
            let (client, internal) = target.split_once(':')?;
            Some(Listed {
                protocol: protocol.to_owned(),
                external: external.parse().ok()?,
                client: client.parse().ok()?,
                internal: internal.parse().ok()?,
                description: description.trim_matches('\'').to_owned(),
                lease: lease.parse().ok()?,
            })
        })();
        found.push(parsed.unwrap_or_else(|| panic!("unparsable listing line {line:?}")));
    }
    found
}

/// `upnpc -l` (GetGenericPortMappingEntry).
fn list_generic(lab: &Lab) -> Vec<Listed> {
    let stdout = upnpc_ok(lab, "-l");
    // The walk ends at the first index past the end.
    assert!(
        stdout.contains("GetGenericPortMappingEntry() returned 713"),
        "{stdout}"
    );
    parse_listing(&stdout)
}

/// `upnpc -L` (GetListOfPortMappings, TCP then UDP).
fn list_v2(lab: &Lab) -> (Vec<Listed>, String) {
    let stdout = upnpc_ok(lab, "-L");
    (parse_listing(&stdout), stdout)
}

fn listed_mapping(listing: &[Listed], protocol: &str, external: u16) -> Option<Listed> {
    listing
        .iter()
        .find(|entry| entry.protocol == protocol && entry.external == external)
        .cloned()
}

fn words(command: &str) -> Vec<&str> {
    command.split_whitespace().collect()
}

fn find_rule(lab: &Lab, name: &str) -> Option<Value> {
    lab.rules().into_iter().find(|rule| rule["name"] == name)
}

fn upnp_rule_names(lab: &Lab) -> Vec<String> {
    lab.rules()
        .iter()
        .filter(|rule| !rule["upnp"].is_null())
        .map(|rule| rule["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tcp_listener(netns: &Netns, addr: Ipv4Addr, port: u16) -> TcpListener {
    join(netns.spawn(move || Ok(TcpListener::bind((addr, port))?)))
}

fn udp_socket(netns: &Netns, addr: Ipv4Addr, port: u16) -> UdpSocket {
    let socket = join(netns.spawn(move || Ok(UdpSocket::bind((addr, port))?)));
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    socket
}

/// Nothing gets through: the WAN host's connection attempt to `port` fails
/// and `listener` accepts nothing within a bounded wait.
fn wan_tcp_blocked(lab: &Lab, port: u16, listener: &TcpListener, what: &str) {
    let connected = join(lab.wan.spawn(move || {
        Ok(TcpStream::connect_timeout(
            &SocketAddr::from((ROUTER_WAN, port)),
            Duration::from_secs(3),
        )
        .is_ok())
    }));
    assert!(!connected, "{what}: the WAN host connected to port {port}");
    listener.set_nonblocking(true).unwrap();
    let got = wait_for(
        "a connection that must not come",
        Duration::from_secs(1),
        || listener.accept().ok(),
    );
    if let Ok((_, peer)) = got {
        panic!("{what}: a connection from {peer} reached the LAN server");
    }
}

fn drain(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 64];
    for _ in 0..100 {
        if socket.recv_from(&mut buffer).is_err() {
            break;
        }
    }
    socket.set_nonblocking(false).unwrap();
}

/// A datagram from `wan` to the router's WAN address on `port` arrives at
/// `lan` (bounded retries); the LAN host's reply comes back to `wan` from
/// the WAN address and `port`. Returns the source the LAN host saw.
fn udp_round_trip(wan: &UdpSocket, port: u16, lan: &UdpSocket) -> SocketAddr {
    drain(lan);
    drain(wan);
    let mut buffer = [0u8; 64];
    for attempt in 0..5u8 {
        wan.send_to(&[b'u', attempt], (ROUTER_WAN, port)).unwrap();
        if let Ok((len, peer)) = lan.recv_from(&mut buffer) {
            assert_eq!(&buffer[..len], &[b'u', attempt], "from {peer}");
            lan.send_to(b"pong", peer).unwrap();
            let (len, from) =
                uninterrupted(|| wan.recv_from(&mut buffer)).expect("the LAN host's reply");
            assert_eq!(&buffer[..len], b"pong");
            assert_eq!(from, SocketAddr::from((ROUTER_WAN, port)));
            return peer;
        }
    }
    panic!(
        "no datagram to port {port} reached {}",
        lan.local_addr().unwrap()
    );
}

/// Datagrams to `port` do not arrive at `lan` (three sent, a bounded wait).
fn udp_blocked(wan: &UdpSocket, port: u16, lan: &UdpSocket, what: &str) {
    drain(lan);
    for attempt in 0..3u8 {
        wan.send_to(&[b'x', attempt], (ROUTER_WAN, port)).unwrap();
    }
    let mut buffer = [0u8; 64];
    match uninterrupted(|| lan.recv_from(&mut buffer)) {
        Ok((len, peer)) => panic!("{what}: {len} bytes from {peer} reached the LAN"),
        Err(error) => assert!(
            matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{error}"
        ),
    }
}

/// Sends an M-SEARCH from `netns` (bound to `local`) to `to`, three times at
/// most, and collects what answers within `wait` after the last one.
fn ssdp_search(
    netns: &Netns,
    local: Ipv4Addr,
    to: SocketAddrV4,
    multicast: bool,
    wait: Duration,
) -> Vec<(SocketAddr, String)> {
    join(netns.spawn(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&SocketAddr::from((local, 0)).into())?;
        if multicast {
            socket.set_multicast_if_v4(&local)?;
            socket.set_multicast_ttl_v4(2)?;
        }
        let socket: UdpSocket = socket.into();
        let host = if multicast {
            "239.255.255.250:1900".to_owned()
        } else {
            to.to_string()
        };
        let search = format!(
            "M-SEARCH * HTTP/1.1\r\nHOST: {host}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
        );
        let mut answers = Vec::new();
        let mut buffer = [0u8; 4096];
        for _ in 0..3 {
            socket
                .send_to(search.as_bytes(), to)
                .with_context(|| format!("sending an M-SEARCH to {to}"))?;
            let deadline = Instant::now() + wait;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if left.is_zero() {
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match uninterrupted(|| socket.recv_from(&mut buffer)) {
                    Ok((len, from)) => {
                        answers.push((from, String::from_utf8_lossy(&buffer[..len]).into_owned()))
                    }
                    // ICMP port unreachable on a later send shows here.
                    Err(error) if error.kind() == ErrorKind::ConnectionRefused => {}
                    Err(_) => break,
                }
            }
            if !answers.is_empty() {
                break;
            }
        }
        Ok(answers)
    }))
}

/// What a raw HTTP exchange got back: every byte until the server closed
/// (or went quiet). Empty when the server accepted and said nothing.
struct Raw {
    bytes: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        let mut parts = line.split_whitespace();
        (parts.next()? == "HTTP/1.1").then_some(())?;
        parts.next()?.parse().ok()
    }

    /// The UPnP error code in a SOAP fault.
    fn upnp_error(&self) -> Option<u16> {
        let text = self.text();
        let start = text.find("<errorCode>")? + "<errorCode>".len();
        let end = start + text[start..].find("</errorCode>")?;
        text[start..end].trim().parse().ok()
    }
}

/// Sends `request` over one TCP connection from `netns` (from `local` when
/// given) to `to` and reads until the server closes or is quiet for
/// `timeout`. A connection that cannot be made is an `Err`. The request is
/// written on a thread of its own, so that a server that answers before
/// reading everything (an oversize body) is seen answering.
fn http_exchange(
    netns: &Netns,
    local: Option<Ipv4Addr>,
    to: SocketAddr,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<Raw> {
    netns
        .spawn(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            if let Some(local) = local {
                socket.bind(&SocketAddr::from((local, 0)).into())?;
            }
            socket
                .connect_timeout(&to.into(), timeout)
                .with_context(|| format!("connecting to {to}"))?;
            let mut stream: TcpStream = socket.into();
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            let mut writer = stream.try_clone()?;
            let sender = std::thread::spawn(move || {
                let _ = writer.write_all(&request);
            });
            let mut bytes = Vec::new();
            let mut buffer = [0u8; 8192];
            while bytes.len() < 1 << 20 {
                match uninterrupted(|| stream.read(&mut buffer)) {
                    Ok(0) | Err(_) => break,
                    Ok(len) => bytes.extend_from_slice(&buffer[..len]),
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            sender.join().expect("writer thread panicked");
            Ok(Raw { bytes })
        })
        .join()
        .expect("thread panicked")
}

/// A request from the LAN host (192.168.0.12) to the IGD's HTTP server.
fn lan_http(lab: &Lab, request: Vec<u8>) -> Raw {
    http_exchange(
        &lab.lan,
        Some(LAN_SERVER),
        SocketAddr::from((ROUTER_LAN, HTTP_PORT)),
        request,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", lab.natctl_log()))
}

const WAN_IP_V2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";

/// The WANIPConnection control path the IGD's description gives (drawn at
/// each start of the IGD).
fn control_path(lab: &Lab) -> String {
    let description = lan_http(
        lab,
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.0.1:5000\r\nConnection: close\r\n\r\n"
            .to_vec(),
    )
    .text();
    let service = description
        .find("WANIPConnection:")
        .unwrap_or_else(|| panic!("no WANIPConnection in {description}"));
    description[service..]
        .split_once("<controlURL>")
        .and_then(|(_, rest)| rest.split_once("</controlURL>"))
        .map(|(path, _)| path.to_owned())
        .unwrap_or_else(|| panic!("no controlURL in {description}"))
}

fn soap_request(control: &str, host: &str, action: &str, args: &[(&str, &str)]) -> Vec<u8> {
    let args: String = args
        .iter()
        .map(|(name, value)| format!("<{name}>{value}</{name}>"))
        .collect();
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{WAN_IP_V2}\">{args}</u:{action}></s:Body></s:Envelope>\r\n"
    );
    format!(
        "POST {control} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{WAN_IP_V2}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const GOOD_HOST: &str = "192.168.0.1:5000";

fn add_args<'a>(external: &'a str, protocol: &'a str, lease: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("NewRemoteHost", ""),
        ("NewExternalPort", external),
        ("NewProtocol", protocol),
        ("NewInternalPort", "6881"),
        ("NewInternalClient", "192.168.0.12"),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", "raw"),
        ("NewLeaseDuration", lease),
    ]
}

/// Frames the datapath has seen on WAN ingress.
fn wan_rx(lab: &Lab) -> u64 {
    lab.counters().expect("natctl stats")["wan_rx"]
}

fn check_all(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} check(s) failed:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// 1. Discovery and status
// ---------------------------------------------------------------------------

#[test]
fn discovery_finds_the_gateway_and_status_and_empty_lists_work() {
    // The default configuration: an ephemeral HTTP port, found by SSDP.
    let lab = Lab::start().unwrap();
    let port = wait_igd(&lab, 1);
    assert_ne!(port, 0);
    let location = format!("http://192.168.0.1:{port}/rootDesc.xml");

    let run = run_upnpc(&lab.lan, &["-i", "-s"]);
    let text = run.text();
    assert!(run.success, "{text}\n{}", lab.natctl_log());
    assert!(
        run.stdout.contains(&format!(" desc: {location}")),
        "SSDP did not lead upnpc to {location}: {text}"
    );
    // The control URL is the description's, under a token of this start.
    let control = run
        .stdout
        .lines()
        .find_map(|line| line.split_once(&format!("IGD : http://192.168.0.1:{port}")))
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("no control URL: {text}"))
        .trim()
        .to_owned();
    assert!(
        control.starts_with("/ctl/") && control.ends_with("/IPConn") && control.len() > 40,
        "{text}"
    );
    assert!(
        run.stdout.contains("Local LAN ip address : 192.168.0.12"),
        "{text}"
    );
    assert!(run.stdout.contains("Connection Type : IP_Routed"), "{text}");
    assert!(run.stdout.contains("Status : Connected"), "{text}");
    assert!(
        run.stdout.contains("ExternalIPAddress = 203.0.113.1"),
        "{text}"
    );

    // The description URL SSDP gave works on its own, and the gateway
    // passes miniupnpc's checks when not discovered.
    let direct = run_upnpc(&lab.lan, &["-u", &location, "-s"]);
    assert!(direct.success, "{}", direct.text());
    assert!(
        direct.stdout.contains("Found valid IGD")
            && direct.stdout.contains("ExternalIPAddress = 203.0.113.1"),
        "{}",
        direct.text()
    );

    // Empty lists: -l ends at once on 713, -L gets 730 for TCP and for UDP.
    let list = run_upnpc(&lab.lan, &["-u", &location, "-l"]);
    assert!(list.success, "{}", list.text());
    assert!(
        list.stdout
            .contains("GetGenericPortMappingEntry() returned 713"),
        "{}",
        list.text()
    );
    assert_eq!(parse_listing(&list.stdout), Vec::new(), "{}", list.text());
    let list = run_upnpc(&lab.lan, &["-u", &location, "-L"]);
    assert!(list.success, "{}", list.text());
    assert_eq!(
        list.stdout
            .matches("GetListOfPortMappings() returned 730")
            .count(),
        2,
        "{}",
        list.text()
    );
    assert_eq!(parse_listing(&list.stdout), Vec::new(), "{}", list.text());
    assert!(lab.rules().is_empty());
}

// ---------------------------------------------------------------------------
// 2. Add, use, list, delete (TCP and UDP)
// ---------------------------------------------------------------------------

#[test]
fn add_use_list_and_delete_tcp_and_udp_mappings() {
    let lab = upnp_lab();
    let control = control_path(&lab);
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    let lan_udp = udp_socket(&lab.lan, LAN_SERVER, 9000);
    let wan_udp = udp_socket(&lab.wan, WAN_HOST, 0);
    let mut problems = Vec::new();

    // Add, TCP.
    let before = unix_now();
    let added = upnpc_ok(&lab, "-e test -a 192.168.0.12 8000 8080 TCP 3600");
    assert!(
        added.contains(
            "external 203.0.113.1:8080 TCP is redirected to internal 192.168.0.12:8000 (duration=3600)"
        ),
        "{added}"
    );
    // Use it: a WAN host gets to the LAN server, which sees the real client.
    let peer = lab.wan_tcp_reaches(8080, &server);
    assert_eq!(peer.ip(), WAN_HOST);

    // Add, UDP, and use it both ways.
    let added = upnpc_ok(&lab, "-e voice -a 192.168.0.12 9000 9000 UDP 600");
    assert!(
        added.contains("external 203.0.113.1:9000 UDP is redirected to internal 192.168.0.12:9000"),
        "{added}"
    );
    let peer = udp_round_trip(&wan_udp, 9000, &lan_udp);
    assert_eq!(peer, wan_udp.local_addr().unwrap());

    // Listed by GetGenericPortMappingEntry...
    let generic = list_generic(&lab);
    assert_eq!(generic.len(), 2, "{generic:#?}");
    let tcp = listed_mapping(&generic, "TCP", 8080).expect("TCP 8080 in upnpc -l");
    assert_eq!(
        (tcp.client, tcp.internal, tcp.description.as_str()),
        (LAN_SERVER, 8000, "test")
    );
    assert!((3590..=3600).contains(&tcp.lease), "{tcp:?}");
    let udp = listed_mapping(&generic, "UDP", 9000).expect("UDP 9000 in upnpc -l");
    assert_eq!(
        (udp.client, udp.internal, udp.description.as_str()),
        (LAN_SERVER, 9000, "voice")
    );
    assert!((590..=600).contains(&udp.lease), "{udp:?}");
    // ... and by GetListOfPortMappings (IGDv2).
    let (v2, stdout) = list_v2(&lab);
    for (protocol, port, description) in [("TCP", 8080, "test"), ("UDP", 9000, "voice")] {
        match listed_mapping(&v2, protocol, port) {
            Some(entry)
                if entry.client == LAN_SERVER
                    && entry.description == description
                    && entry.lease > 0 => {}
            other => {
                // What the gateway really answered, for the report.
                let raw = lan_http(
                    &lab,
                    soap_request(
                        &control,
                        GOOD_HOST,
                        "GetListOfPortMappings",
                        &[
                            ("NewStartPort", "1"),
                            ("NewEndPort", "65535"),
                            ("NewProtocol", protocol),
                            ("NewManage", "0"),
                            ("NewNumberOfPorts", "1000"),
                        ],
                    ),
                );
                problems.push(format!(
                    "`upnpc -L` does not list {protocol} {port} '{description}' (got {other:?}):\n{stdout}\n--- raw GetListOfPortMappings response:\n{}",
                    raw.text()
                ))
            }
        }
    }

    // natctl sees them as UPnP rules.
    let listed = find_rule(&lab, "upnp-tcp-8080").expect("upnp-tcp-8080 in natctl list");
    assert_eq!(listed["protocol"], "tcp", "{listed:#}");
    assert_eq!(listed["external"], "8080", "{listed:#}");
    assert_eq!(listed["internal_addr"], "192.168.0.12", "{listed:#}");
    assert_eq!(listed["internal"], "8000", "{listed:#}");
    assert_eq!(listed["upnp"]["client"], "192.168.0.12", "{listed:#}");
    assert_eq!(listed["upnp"]["description"], "test", "{listed:#}");
    let expires = listed["upnp"]["expires_at"]
        .as_u64()
        .expect("a lease has expires_at");
    assert!(
        (before + 3600..=unix_now() + 3600).contains(&expires),
        "expires_at {expires} is not about an hour from now: {listed:#}"
    );
    assert!(
        listed["inbound"]["packets"].as_u64().unwrap() > 0,
        "{listed:#}"
    );
    let udp_rule = find_rule(&lab, "upnp-udp-9000").expect("upnp-udp-9000 in natctl list");
    assert_eq!(udp_rule["upnp"]["description"], "voice");
    let text = lab.run("list");
    for name in ["upnp-tcp-8080", "upnp-udp-9000"] {
        assert!(
            text.lines()
                .any(|line| line.contains(name) && line.split_whitespace().nth(1) == Some("UPNP")),
            "`natctl list` does not show {name} as UPNP:\n{text}"
        );
    }
    let table = lab.table_filtered(&["--type", "upnp"]).unwrap();
    let row = table
        .iter()
        .find(|row| row["rule"] == "upnp-tcp-8080" && row["remote_ip"].is_null())
        .unwrap_or_else(|| panic!("no rule row for upnp-tcp-8080: {table:#?}"));
    assert_eq!(row["type"], "UPNP", "{row:#}");
    assert_eq!(row["local_ip"], "192.168.0.12", "{row:#}");
    assert_eq!(row["external_port"], "8080", "{row:#}");
    let timeout = row["timeout_secs"]
        .as_u64()
        .expect("a UPnP row has a timeout");
    assert!((3590..=3600).contains(&timeout), "{row:#}");
    assert!(
        table.iter().all(|row| row["type"] == "UPNP"),
        "--type upnp shows only UPNP rows: {table:#?}"
    );
    assert!(
        lab.table_filtered(&["--type", "static"])
            .unwrap()
            .iter()
            .all(|row| row["rule"] != "upnp-tcp-8080"),
        "a UPnP mapping is not a STATIC row"
    );

    // Delete, TCP: gone from everywhere, and nothing gets in any more.
    let deleted = upnpc_ok(&lab, "-d 8080 TCP");
    assert!(!deleted.contains("failed"), "{deleted}");
    assert!(find_rule(&lab, "upnp-tcp-8080").is_none());
    assert!(listed_mapping(&list_generic(&lab), "TCP", 8080).is_none());
    wan_tcp_blocked(&lab, 8080, &server, "after upnpc -d");
    // Deleting again: no such entry.
    upnpc_refused(&lab, "-d 8080 TCP", 714);

    // Delete, UDP.
    upnpc_ok(&lab, "-d 9000 UDP");
    assert!(find_rule(&lab, "upnp-udp-9000").is_none());
    udp_blocked(&wan_udp, 9000, &lan_udp, "after upnpc -d UDP");
    assert_eq!(list_generic(&lab), Vec::new());

    // A mapping `natctl remove` takes away is gone for UPnP too.
    upnpc_ok(&lab, "-e cli -a 192.168.0.12 8000 8081 TCP 600");
    lab.wan_tcp_reaches(8081, &server);
    lab.run("remove upnp-tcp-8081");
    assert_eq!(list_generic(&lab), Vec::new());
    wan_tcp_blocked(&lab, 8081, &server, "after natctl remove");
    assert!(lab.rules().is_empty());
    check_all(problems);
}

// ---------------------------------------------------------------------------
// 3. AddAnyPortMapping and DeletePortMappingRange
// ---------------------------------------------------------------------------

#[test]
fn add_any_port_mapping_avoids_a_static_rule_and_range_delete_takes_own_mappings() {
    let lab = upnp_lab();
    let static_target = tcp_listener(&lab.lan, LAN_CLIENT, 9090);
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.13:9090");

    // AddPortMapping on the static rule's port: another mechanism has it.
    upnpc_refused(&lab, "-a 192.168.0.12 8000 8080 TCP 600", 729);
    // AddAnyPortMapping: another port, reported back.
    let added = upnpc_ok(&lab, "-e any -n 192.168.0.12 8000 8080 TCP 600");
    let line = added
        .lines()
        .find(|line| line.contains("is redirected to internal 192.168.0.12:8000"))
        .unwrap_or_else(|| panic!("no redirection line: {added}"));
    let reserved: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|external| external.strip_prefix("203.0.113.1:"))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no external port in {line:?}"));
    assert_ne!(reserved, 8080, "{added}");
    assert!(reserved >= 1024, "{added}");
    let name = format!("upnp-tcp-{reserved}");
    let rule = find_rule(&lab, &name).unwrap_or_else(|| panic!("no {name}: {:#?}", lab.rules()));
    assert_eq!(rule["upnp"]["client"], "192.168.0.12");
    assert_eq!(rule["internal"], "8000");
    // It works, and the static rule still leads where it did.
    assert_eq!(lab.wan_tcp_reaches(reserved, &server).ip(), WAN_HOST);
    assert_eq!(lab.wan_tcp_reaches(8080, &static_target).ip(), WAN_HOST);
    let listing = list_generic(&lab);
    assert_eq!(
        listing.len(),
        1,
        "the static rule is not UPnP's: {listing:#?}"
    );
    assert_eq!(listing[0].external, reserved);

    // Two more of the client's own mappings, one UDP outside the range.
    upnpc_ok(&lab, "-a 192.168.0.12 8001 8090 TCP 600");
    upnpc_ok(&lab, "-a 192.168.0.12 8002 8091 TCP 600");
    upnpc_ok(&lab, "-a 192.168.0.12 8003 8092 UDP 600");
    assert_eq!(upnp_rule_names(&lab).len(), 4, "{:#?}", lab.rules());

    // DeletePortMappingRange over all of them: TCP only, UPnP only.
    let deleted = upnpc_ok(&lab, "-N 1024 65535 TCP");
    assert!(
        deleted.contains("UPNP_DeletePortMappingRange() returned : 0"),
        "{deleted}"
    );
    assert_eq!(
        upnp_rule_names(&lab),
        vec!["upnp-udp-8092".to_owned()],
        "{deleted}"
    );
    assert!(find_rule(&lab, "web").is_some(), "the static rule stays");
    assert_eq!(lab.wan_tcp_reaches(8080, &static_target).ip(), WAN_HOST);
    wan_tcp_blocked(&lab, reserved, &server, "after upnpc -N");
    // Nothing of UPnP's left in the range: 730.
    upnpc_refused(&lab, "-N 1024 65535 TCP", 730);
    let listing = list_generic(&lab);
    assert_eq!(listing.len(), 1, "{listing:#?}");
    assert_eq!(
        (listing[0].protocol.as_str(), listing[0].external),
        ("UDP", 8092)
    );
}

// ---------------------------------------------------------------------------
// 4. Lease expiry
// ---------------------------------------------------------------------------

#[test]
fn a_mapping_goes_when_its_lease_runs_out() {
    let lab = upnp_lab();
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    upnpc_ok(&lab, "-e short -a 192.168.0.12 8000 8080 TCP 3");
    let added = Instant::now();
    // While it lasts, it works.
    assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);
    if let Some(entry) = listed_mapping(&list_generic(&lab), "TCP", 8080) {
        assert!((1..=3).contains(&entry.lease), "{entry:?}");
    }

    wait_for("the 3 s mapping to expire", Duration::from_secs(10), || {
        find_rule(&lab, "upnp-tcp-8080").is_none().then_some(())
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
    assert!(
        added.elapsed() >= Duration::from_secs(2),
        "the mapping went after {:?}, before its lease ran out",
        added.elapsed()
    );
    assert!(
        lab.natctl_log()
            .contains("UPnP lease expired: removed upnp-tcp-8080"),
        "{}",
        lab.natctl_log()
    );
    assert_eq!(list_generic(&lab), Vec::new());
    assert!(
        lab.table_filtered(&["--type", "upnp"])
            .unwrap()
            .iter()
            .all(|row| !row["remote_ip"].is_null()),
        "no UPnP rule row is left"
    );
    wan_tcp_blocked(&lab, 8080, &server, "after the lease ran out");
}

#[test]
fn a_mapping_for_the_port_a_host_already_holds_keeps_its_flows_on_it() {
    // RFC 4787 REQ-11: a game's socket on 3074 talks to a server (say its
    // STUN server) through a dynamic mapping that kept the port; the game
    // then maps 3074 by UPnP. The server sees 3074 before, during and
    // after the lease, and the request is not refused for the port the
    // host itself holds.
    let lab = upnp_lab();
    let game = udp_socket(&lab.lan, LAN_SERVER, 3074);
    let server = udp_socket(&lab.wan, WAN_HOST, 3478);
    let source_seen = || {
        drain(&server);
        let mut buffer = [0u8; 16];
        for attempt in 0..5u8 {
            game.send_to(&[b's', attempt], (WAN_HOST, 3478)).unwrap();
            if let Ok((_, peer)) = server.recv_from(&mut buffer) {
                return peer;
            }
        }
        panic!("nothing from the game reached the server");
    };
    let before = source_seen();
    assert_eq!(before, SocketAddr::from((ROUTER_WAN, 3074)));

    let added = upnpc_ok(&lab, "-e game -a 192.168.0.12 3074 3074 UDP 3");
    assert!(
        added.contains("external 203.0.113.1:3074 UDP is redirected to internal 192.168.0.12:3074"),
        "{added}"
    );
    assert_eq!(source_seen(), before, "during the lease");
    // The mapping works for anyone outside.
    let player = udp_socket(&lab.wan, WAN_HOST, 0);
    udp_round_trip(&player, 3074, &game);
    assert_eq!(source_seen(), before, "after a player came in");

    wait_for("the 3 s mapping to expire", Duration::from_secs(10), || {
        find_rule(&lab, "upnp-udp-3074").is_none().then_some(())
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
    assert_eq!(source_seen(), before, "after the lease");
}

// ---------------------------------------------------------------------------
// 5. Security: secure mode, permissions, switching UPnP off and on
// ---------------------------------------------------------------------------

#[test]
fn secure_mode_keeps_clients_to_their_own_mappings_and_permissions_hold() {
    let lab = upnp_lab();
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    // 192.168.0.12 maps a port for itself.
    upnpc_ok(&lab, "-e mine -a 192.168.0.12 8000 8080 TCP 600");

    // From now on the LAN host talks to the router as 192.168.0.13.
    lab.lan
        .ip(&[
            "route",
            "replace",
            "192.168.0.1/32",
            "dev",
            "eth0",
            "src",
            "192.168.0.13",
        ])
        .unwrap();
    let status = upnpc_ok(&lab, "-s");
    assert!(
        status.contains("Local LAN ip address : 192.168.0.13"),
        "upnpc does not speak as .13: {status}"
    );
    // Mapping to someone else: refused.
    upnpc_refused(&lab, "-a 192.168.0.12 8001 8081 TCP 600", 606);
    // Taking over .12's port: a conflict.
    upnpc_refused(&lab, "-a 192.168.0.13 8000 8080 TCP 600", 718);
    // Deleting .12's mapping, alone or in a range: refused.
    upnpc_refused(&lab, "-d 8080 TCP", 606);
    upnpc_refused(&lab, "-N 8000 8100 TCP", 606);
    // A mapping for itself is fine.
    upnpc_ok(&lab, "-a 192.168.0.13 9001 9001 TCP 600");
    let log = lab.natctl_log();
    for action in ["AddPortMapping", "DeletePortMapping"] {
        let needle = format!("UPnP {action} from 192.168.0.13 refused: 606");
        assert!(log.contains(&needle), "no {needle:?} in the log:\n{log}");
    }

    // .12's mapping is untouched and still works.
    let mine = find_rule(&lab, "upnp-tcp-8080").expect("upnp-tcp-8080 stays");
    assert_eq!(mine["upnp"]["client"], "192.168.0.12");
    assert_eq!(mine["internal_addr"], "192.168.0.12");
    assert_eq!(mine["internal"], "8000");
    let theirs = find_rule(&lab, "upnp-tcp-9001").expect("upnp-tcp-9001");
    assert_eq!(theirs["upnp"]["client"], "192.168.0.13");
    assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);

    // Back to .12: a privileged external port is refused by the default
    // permissions, and so is a privileged internal one.
    lab.lan.ip(&["route", "del", "192.168.0.1/32"]).unwrap();
    upnpc_refused(&lab, "-a 192.168.0.12 8000 80 TCP 600", 606);
    upnpc_refused(&lab, "-a 192.168.0.12 22 2222 TCP 600", 606);
    assert!(
        lab.natctl_log()
            .contains("UPnP AddPortMapping from 192.168.0.12 refused: 606"),
        "{}",
        lab.natctl_log()
    );
    assert_eq!(
        {
            let mut names = upnp_rule_names(&lab);
            names.sort();
            names
        },
        vec!["upnp-tcp-8080".to_owned(), "upnp-tcp-9001".to_owned()]
    );
    // .12 may delete its own.
    upnpc_ok(&lab, "-d 8080 TCP");
    assert!(find_rule(&lab, "upnp-tcp-8080").is_none());
}

#[test]
fn upnp_off_hides_the_gateway_and_removes_mappings_and_on_brings_it_back() {
    let lab = upnp_lab();
    let first_control = control_path(&lab);
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    upnpc_ok(&lab, "-a 192.168.0.12 8000 8080 TCP 600");
    lab.run("add web --proto tcp --external 8443 --internal 192.168.0.12:8001");
    assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);

    let off = lab.run("upnp off");
    assert!(off.contains("removed 1 mapping"), "{off}");
    assert_eq!(upnp_rule_names(&lab), Vec::<String>::new());
    assert!(find_rule(&lab, "web").is_some(), "static rules stay");
    wan_tcp_blocked(&lab, 8080, &server, "after upnp off");
    wait_log(&lab, "UPnP IGD stopped", 1);

    // Nothing to discover, nothing to talk to.
    let run = run_upnpc(&lab.lan, &["-i", "-s"]);
    assert!(!run.success, "{}", run.text());
    assert!(
        !run.stdout.contains("192.168.0.1") && run.stderr.contains("No IGD UPnP Device found"),
        "{}",
        run.text()
    );
    let direct = upnpc(&lab, "-a 192.168.0.12 8000 8080 TCP 600");
    assert!(
        !direct.success && direct.stderr.contains("Connection refused"),
        "{}",
        direct.text()
    );
    assert_eq!(upnp_rule_names(&lab), Vec::<String>::new());
    let raw = http_exchange(
        &lab.lan,
        Some(LAN_SERVER),
        SocketAddr::from((ROUTER_LAN, HTTP_PORT)),
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.0.1:5000\r\nConnection: close\r\n\r\n"
            .to_vec(),
        Duration::from_secs(3),
    );
    assert!(
        raw.as_ref().map_or(true, |raw| raw.bytes.is_empty()),
        "the description is still served: {}",
        raw.map(|raw| raw.text()).unwrap_or_default()
    );

    // On again: discovered, and mappings can be made.
    let on = lab.run("upnp on");
    assert!(on.contains("UPnP on"), "{on}");
    wait_igd(&lab, 2);
    let run = run_upnpc(&lab.lan, &["-i", "-s"]);
    assert!(run.success, "{}", run.text());
    assert!(
        run.stdout.contains(&format!(" desc: {DESC_URL}"))
            && run.stdout.contains("ExternalIPAddress = 203.0.113.1"),
        "{}",
        run.text()
    );
    upnpc_ok(&lab, "-a 192.168.0.12 8000 8080 TCP 600");
    assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);
    // A new start, new control and SCPD paths; the old ones are gone.
    let control = control_path(&lab);
    assert_ne!(control, first_control);
    let old = lan_http(
        &lab,
        soap_request(&first_control, GOOD_HOST, "GetExternalIPAddress", &[]),
    );
    assert_eq!(old.status(), Some(404), "{}", old.text());
    let new = lan_http(
        &lab,
        soap_request(&control, GOOD_HOST, "GetExternalIPAddress", &[]),
    );
    assert_eq!(new.status(), Some(200), "{}", new.text());
}

// ---------------------------------------------------------------------------
// 6. Nothing on the WAN side
// ---------------------------------------------------------------------------

#[test]
fn nothing_answers_on_the_wan_side() {
    let lab = upnp_lab();
    let group = SocketAddrV4::new(SSDP_GROUP, 1900);
    let wait = Duration::from_millis(1500);

    // The probe works: from the LAN, the gateway answers.
    let answers = ssdp_search(&lab.lan, LAN_SERVER, group, true, wait);
    assert!(
        answers
            .iter()
            .any(|(from, text)| from.ip() == std::net::IpAddr::V4(ROUTER_LAN)
                && text.contains(&format!("LOCATION: {DESC_URL}"))),
        "no SSDP answer on the LAN: {answers:#?}"
    );
    let description = lan_http(
        &lab,
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.0.1:5000\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    assert_eq!(description.status(), Some(200), "{}", description.text());

    let mut problems = Vec::new();
    let mut search = |what: &str, to: SocketAddrV4, multicast: bool| {
        let before = wan_rx(&lab);
        let answers = ssdp_search(&lab.wan, WAN_HOST, to, multicast, wait);
        if !answers.is_empty() {
            problems.push(format!("{what}: answered {answers:#?}"));
        }
        // The probe did get to the router: three searches came in on wan0.
        let arrived = wan_rx(&lab) - before;
        assert!(arrived >= 3, "{what}: only {arrived} frames reached wan0");
    };
    search("M-SEARCH multicast from the WAN", group, true);
    search(
        "M-SEARCH unicast to the WAN address",
        SocketAddrV4::new(ROUTER_WAN, 1900),
        false,
    );
    let mut get = |what: &str, to: Ipv4Addr| {
        let request = format!(
            "GET /rootDesc.xml HTTP/1.1\r\nHost: {to}:{HTTP_PORT}\r\nConnection: close\r\n\r\n"
        );
        if let Ok(raw) = http_exchange(
            &lab.wan,
            Some(WAN_HOST),
            SocketAddr::from((to, HTTP_PORT)),
            request.into_bytes(),
            Duration::from_secs(3),
        ) && !raw.bytes.is_empty()
        {
            problems.push(format!("{what}: got {}", raw.text()));
        }
    };
    get("GET to the WAN address", ROUTER_WAN);

    // Even a WAN host that routes the LAN prefix to the router gets
    // nothing from the LAN address.
    lab.wan
        .ip(&["route", "add", "192.168.0.0/24", "via", "203.0.113.1"])
        .unwrap();
    get("GET to the LAN address from the WAN", ROUTER_LAN);
    let before = wan_rx(&lab);
    let answers = ssdp_search(
        &lab.wan,
        WAN_HOST,
        SocketAddrV4::new(ROUTER_LAN, 1900),
        false,
        wait,
    );
    assert!(
        wan_rx(&lab) - before >= 3,
        "the searches did not reach wan0"
    );
    if !answers.is_empty() {
        problems.push(format!(
            "M-SEARCH unicast to the LAN address from the WAN: answered {answers:#?}"
        ));
    }
    check_all(problems);
    assert!(lab.rules().is_empty());
}

// ---------------------------------------------------------------------------
// 7. DNS rebinding and strict input
// ---------------------------------------------------------------------------

#[test]
fn foreign_hosts_bad_arguments_big_bodies_and_subscriptions_are_refused() {
    let lab = upnp_lab();
    let control = control_path(&lab);
    let mut problems = Vec::new();
    let mut expect = |what: &str, raw: &Raw, status: u16, upnp_error: Option<u16>| {
        if raw.status() != Some(status) || (upnp_error.is_some() && raw.upnp_error() != upnp_error)
        {
            problems.push(format!(
                "{what}: expected HTTP {status}{}, got:\n{}",
                upnp_error.map_or(String::new(), |code| format!(" with UPnP error {code}")),
                raw.text()
            ));
        }
    };

    // The control: the right Host gets the description.
    let good = lan_http(
        &lab,
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.0.1:5000\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    expect("GET with an IP Host", &good, 200, None);
    assert!(
        good.text().contains("InternetGatewayDevice:2"),
        "{}",
        good.text()
    );

    // DNS rebinding: a name in Host is refused, for reading and for acting.
    let rebound = lan_http(
        &lab,
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_vec(),
    );
    expect("GET with Host: evil.example", &rebound, 400, None);
    let rebound = lan_http(
        &lab,
        soap_request(
            &control,
            "evil.example:5000",
            "AddPortMapping",
            &add_args("6881", "TCP", "600"),
        ),
    );
    expect(
        "AddPortMapping with Host: evil.example",
        &rebound,
        400,
        None,
    );

    // Bad values and a missing argument: 402, nothing mapped.
    for (what, args) in [
        ("NewExternalPort 70000", add_args("70000", "TCP", "600")),
        ("NewLeaseDuration -1", add_args("6881", "TCP", "-1")),
        ("NewProtocol FOO", add_args("6881", "FOO", "600")),
        ("no NewInternalPort", {
            let mut args = add_args("6881", "TCP", "600");
            args.retain(|(name, _)| *name != "NewInternalPort");
            args
        }),
    ] {
        let raw = lan_http(
            &lab,
            soap_request(&control, GOOD_HOST, "AddPortMapping", &args),
        );
        expect(&format!("AddPortMapping with {what}"), &raw, 500, Some(402));
    }
    assert_eq!(lab.rules(), Vec::<Value>::new(), "nothing was mapped");

    // An oversize body (100 KiB) is refused.
    let filler = "x".repeat(100 * 1024);
    let mut big = add_args("6881", "TCP", "600");
    big[6].1 = &filler;
    let raw = lan_http(
        &lab,
        soap_request(&control, GOOD_HOST, "AddPortMapping", &big),
    );
    expect("a 100 KiB AddPortMapping", &raw, 413, None);

    // No eventing.
    let events = control.replacen("/ctl/", "/evt/", 1);
    let raw = lan_http(
        &lab,
        format!("SUBSCRIBE {events} HTTP/1.1\r\nHost: 192.168.0.1:5000\r\nCALLBACK: <http://192.168.0.12:9999/>\r\nNT: upnp:event\r\nTIMEOUT: Second-1800\r\nConnection: close\r\n\r\n").into_bytes(),
    );
    expect("SUBSCRIBE to the events URL", &raw, 412, None);
    assert_eq!(lab.rules(), Vec::<Value>::new(), "nothing was mapped");

    // The daemon is still there and a good request works.
    let raw = lan_http(
        &lab,
        soap_request(
            &control,
            GOOD_HOST,
            "AddPortMapping",
            &add_args("6881", "tcp", "600"),
        ),
    );
    expect("a valid AddPortMapping", &raw, 200, None);
    let rule = find_rule(&lab, "upnp-tcp-6881").expect("the valid request mapped 6881");
    assert_eq!(rule["upnp"]["description"], "raw");
    let raw = lan_http(
        &lab,
        soap_request(&control, GOOD_HOST, "GetExternalIPAddress", &[]),
    );
    expect("GetExternalIPAddress", &raw, 200, None);
    assert!(
        raw.text()
            .contains("<NewExternalIPAddress>203.0.113.1</NewExternalIPAddress>"),
        "{}",
        raw.text()
    );
    check_all(problems);
    assert!(
        !lab.natctl_log().contains("panicked"),
        "{}",
        lab.natctl_log()
    );
}

// ---------------------------------------------------------------------------
// 8. Restart
// ---------------------------------------------------------------------------

#[test]
fn a_leased_mapping_survives_a_daemon_restart() {
    let mut lab = upnp_lab();
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    upnpc_ok(&lab, "-e keep -a 192.168.0.12 8000 8080 TCP 300");
    let before = listed_mapping(&list_generic(&lab), "TCP", 8080).expect("TCP 8080 listed");
    let expires = find_rule(&lab, "upnp-tcp-8080").unwrap()["upnp"]["expires_at"].clone();
    assert!(expires.is_u64(), "{expires}");
    assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);
    // UPnP changes reach the store in batches, a fraction of a second
    // later: a kill -9 before that loses them (a clean stop saves them).
    wait_for(
        "the mapping to reach the store",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(lab.rules_file())
                .ok()
                .filter(|text| text.contains("upnp-tcp-8080"))
        },
    )
    .unwrap();

    lab.kill_daemon().unwrap();
    lab.start_daemon().unwrap();
    wait_igd(&lab, 2);

    let rule = find_rule(&lab, "upnp-tcp-8080").expect("the mapping survives a restart");
    assert_eq!(
        rule["upnp"]["expires_at"], expires,
        "the lease keeps its end"
    );
    assert_eq!(rule["upnp"]["client"], "192.168.0.12");
    assert_eq!(rule["upnp"]["description"], "keep");
    // The lease counts down from where it was (wall clock), never restarts.
    let after = wait_for(
        "the remaining lease to go down",
        Duration::from_secs(5),
        || {
            listed_mapping(&list_generic(&lab), "TCP", 8080)
                .filter(|entry| entry.lease < before.lease)
        },
    )
    .unwrap_or_else(|error| panic!("{error}: {:#?}", list_generic(&lab)));
    assert!(after.lease > 0, "{after:?}");
    assert_eq!(
        (after.client, after.internal, after.description.as_str()),
        (LAN_SERVER, 8000, "keep")
    );
    let row_timeout = lab
        .table_filtered(&["--type", "upnp"])
        .unwrap()
        .iter()
        .find(|row| row["rule"] == "upnp-tcp-8080" && row["remote_ip"].is_null())
        .and_then(|row| row["timeout_secs"].as_u64())
        .expect("a UPnP rule row with a timeout");
    assert!((1..300).contains(&row_timeout), "{row_timeout}");
    assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);
    // And the restarted IGD still manages it.
    upnpc_ok(&lab, "-d 8080 TCP");
    wan_tcp_blocked(&lab, 8080, &server, "after delete following the restart");
}

// ---------------------------------------------------------------------------
// Requests from hostile pages and odd clients (issue 12)
// ---------------------------------------------------------------------------

/// A control request as `soap_request` writes it, with its headers edited.
fn soap_request_with(
    control: &str,
    action: &str,
    args: &[(&str, &str)],
    edit: impl Fn(String) -> String,
) -> Vec<u8> {
    let request = String::from_utf8(soap_request(control, GOOD_HOST, action, args)).unwrap();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    format!("{}\r\n\r\n{body}", edit(head.to_owned())).into_bytes()
}

#[test]
fn web_pages_cannot_map_ports_and_any_remote_may_be_spelled_0_0_0_0() {
    let lab = upnp_lab();
    let control = control_path(&lab);
    let server = tcp_listener(&lab.lan, LAN_SERVER, 6881);
    let mut problems = Vec::new();

    // Filet-o-Firewall: what a page a LAN user visits can POST without a
    // CORS preflight. Each is refused and maps nothing.
    let args = add_args("33890", "TCP", "600");
    for (what, request) in [
        (
            "text/plain, no SOAPAction, with an Origin",
            soap_request_with(&control, "AddPortMapping", &args, |head| {
                head.replace(
                    "Content-Type: text/xml; charset=\"utf-8\"",
                    "Content-Type: text/plain",
                )
                .lines()
                .filter(|line| !line.starts_with("SOAPAction"))
                .chain(["Origin: http://evil.example"])
                .collect::<Vec<_>>()
                .join("\r\n")
            }),
        ),
        (
            "everything right but an Origin",
            soap_request_with(&control, "AddPortMapping", &args, |head| {
                format!("{head}\r\nOrigin: http://evil.example")
            }),
        ),
        (
            "no SOAPAction",
            soap_request_with(&control, "AddPortMapping", &args, |head| {
                head.lines()
                    .filter(|line| !line.starts_with("SOAPAction"))
                    .collect::<Vec<_>>()
                    .join("\r\n")
            }),
        ),
        (
            "a form body",
            soap_request_with(&control, "AddPortMapping", &args, |head| {
                head.replace(
                    "Content-Type: text/xml; charset=\"utf-8\"",
                    "Content-Type: application/x-www-form-urlencoded",
                )
            }),
        ),
    ] {
        let raw = lan_http(&lab, request);
        if raw.status() != Some(403) {
            problems.push(format!("{what}: expected HTTP 403, got:\n{}", raw.text()));
        }
    }
    // A well-formed request to the well-known control path of other
    // gateways, which a page could guess: not found.
    for guessed in ["/ctl/IPConn", "/upnp/control/WANIPConn1"] {
        let raw = lan_http(
            &lab,
            soap_request(guessed, GOOD_HOST, "AddPortMapping", &args),
        );
        if raw.status() != Some(404) {
            problems.push(format!(
                "POST {guessed}: expected HTTP 404, got:\n{}",
                raw.text()
            ));
        }
    }
    check_all(problems);
    assert_eq!(lab.rules(), Vec::<Value>::new(), "a page mapped a port");

    // NewRemoteHost 0.0.0.0 means any remote: the WAN host gets in.
    let mut args = add_args("6881", "TCP", "600");
    args[0].1 = "0.0.0.0";
    let raw = lan_http(
        &lab,
        soap_request(&control, GOOD_HOST, "AddPortMapping", &args),
    );
    assert_eq!(raw.status(), Some(200), "{}", raw.text());
    let rules = lab.rules();
    assert_eq!(rules.len(), 1, "{rules:#?}");
    // No allowed remotes (the list is left out when empty).
    assert!(
        rules[0]
            .get("allow")
            .is_none_or(|allow| allow == &serde_json::json!([])),
        "{rules:#?}"
    );
    assert_eq!(lab.wan_tcp_reaches(6881, &server).ip(), WAN_HOST);
}

// ---------------------------------------------------------------------------
// The router's own ports (issue 12, item 7)
// ---------------------------------------------------------------------------

/// `natctl add ...` that must fail; returns its stderr.
fn natctl_refused(lab: &Lab, command: &str) -> String {
    let output = lab.natctl_output(&words(command)).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "`natctl {command}` succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn the_routers_own_ports_are_never_mapped_and_its_listener_keeps_its_connections() {
    let lab = upnp_lab_with("[nat]\nreserved_ports = [\"7000-7009\"]\n");
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    // The router's own services on its WAN address: a TCP listener (say
    // its SSH) and a UDP socket on every address (say WireGuard).
    let router_ssh = tcp_listener(&lab.router, ROUTER_WAN, 2200);
    let _router_vpn = udp_socket(&lab.router, Ipv4Addr::UNSPECIFIED, 51820);
    let ephemeral: Vec<u16> = join(lab.router.spawn(|| {
        Ok(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")?
                .split_whitespace()
                .map(|port| port.parse().unwrap())
                .collect(),
        )
    }));

    // A listener's port: another mechanism has it.
    upnpc_refused(&lab, "-a 192.168.0.12 8000 2200 TCP 600", 729);
    upnpc_refused(&lab, "-a 192.168.0.12 8000 51820 UDP 600", 729);
    // The reserved list and the kernel's ephemeral range: not for clients.
    upnpc_refused(&lab, "-a 192.168.0.12 8000 7005 TCP 600", 606);
    upnpc_refused(
        &lab,
        &format!("-a 192.168.0.12 8000 {} TCP 600", ephemeral[0]),
        606,
    );
    assert!(upnp_rule_names(&lab).is_empty(), "{:#?}", lab.rules());
    // The router's listener still gets its connections from the WAN.
    assert_eq!(lab.wan_tcp_reaches(2200, &router_ssh).ip(), WAN_HOST);

    // AddAnyPortMapping asked for the listener's port: another one.
    let added = upnpc_ok(&lab, "-e any -n 192.168.0.12 8000 2200 TCP 600");
    let names = upnp_rule_names(&lab);
    assert_eq!(names.len(), 1, "{added}\n{names:?}");
    assert_ne!(names[0], "upnp-tcp-2200", "{added}");
    let external: u16 = names[0].rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(lab.wan_tcp_reaches(external, &server).ip(), WAN_HOST);
    assert_eq!(lab.wan_tcp_reaches(2200, &router_ssh).ip(), WAN_HOST);
    // A service of the router that starts listening on a mapped port
    // later takes it back: the mapping goes within a few seconds.
    let router_late = tcp_listener(&lab.router, Ipv4Addr::UNSPECIFIED, external);
    wait_for(
        "the mapping on the router's new listener's port to go",
        Duration::from_secs(15),
        || upnp_rule_names(&lab).is_empty().then_some(()),
    )
    .unwrap_or_else(|error| panic!("{error}: {:#?}\n{}", lab.rules(), lab.natctl_log()));
    assert_eq!(lab.wan_tcp_reaches(external, &router_late).ip(), WAN_HOST);

    // The admin may not take a listener's port either, and is told whose
    // it is; he may take the ephemeral range and the reserved list.
    let refused = natctl_refused(
        &lab,
        "add ssh --proto tcp --external 2200 --internal 192.168.0.12:22",
    );
    let pid = format!("pid {}", std::process::id());
    assert!(
        refused.contains("TCP port 2200") && refused.contains(&pid) && refused.contains("listens"),
        "{refused}"
    );
    let refused = natctl_refused(
        &lab,
        "add vpn --proto udp --external 51820 --internal 192.168.0.12",
    );
    assert!(
        refused.contains("UDP port 51820") && refused.contains(&pid),
        "{refused}"
    );
    let admins = tcp_listener(&lab.lan, LAN_SERVER, 8001);
    lab.run(&format!(
        "add high --proto tcp --external {} --internal 192.168.0.12:8001",
        ephemeral[0]
    ));
    lab.run("add seven --proto tcp --external 7005 --internal 192.168.0.13:8000");
    assert_eq!(lab.wan_tcp_reaches(ephemeral[0], &admins).ip(), WAN_HOST);
    assert_eq!(lab.wan_tcp_reaches(2200, &router_ssh).ip(), WAN_HOST);

    // An admin rule made before a service of the router listens on its
    // port: the rule keeps carrying the connections it carries, and the
    // new ones are the router's service's (the datapath asks the router's
    // sockets about each new conversation on a forwarded port).
    let lan_server = tcp_listener(&lab.lan, LAN_SERVER, 8002);
    lab.run("add seven-one --proto tcp --external 7001 --internal 192.168.0.12:8002");
    let (kept_wan, kept_lan) = {
        let client = lab
            .wan
            .spawn(move || nat_tests::traffic::connect(SocketAddr::from((ROUTER_WAN, 7001))));
        let (stream, peer) = nat_tests::traffic::accept(&lan_server).unwrap();
        assert_eq!(peer.ip(), WAN_HOST);
        (join(client), stream)
    };
    let router_late = tcp_listener(&lab.router, Ipv4Addr::UNSPECIFIED, 7001);
    let yielded = lab.counters().unwrap()["forward_yielded_to_router"];
    assert_eq!(lab.wan_tcp_reaches(7001, &router_late).ip(), WAN_HOST);
    assert!(lab.counters().unwrap()["forward_yielded_to_router"] > yielded);
    let (mut kept_wan, mut kept_lan) = (kept_wan, kept_lan);
    kept_wan.write_all(b"still").unwrap();
    let mut word = [0u8; 5];
    kept_lan.read_exact(&mut word).unwrap();
    assert_eq!(
        &word, b"still",
        "the kept connection reaches the LAN server"
    );
    kept_lan.write_all(b"there").unwrap();
    kept_wan.read_exact(&mut word).unwrap();
    assert_eq!(&word, b"there", "and its replies come back");
    // The same for UDP: a socket the router binds to the port later gets
    // what new remotes send there.
    lab.run("add game --proto udp --external 7006 --internal 192.168.0.12:9000");
    let router_udp = udp_socket(&lab.router, Ipv4Addr::UNSPECIFIED, 7006);
    router_udp
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    join(lab.wan.spawn(|| {
        let socket = std::net::UdpSocket::bind((WAN_HOST, 0))?;
        socket.send_to(b"to the router", (ROUTER_WAN, 7006))?;
        Ok(())
    }));
    let mut datagram = [0u8; 32];
    let (len, from) = uninterrupted(|| router_udp.recv_from(&mut datagram)).unwrap();
    assert_eq!(&datagram[..len], b"to the router");
    assert_eq!(from.ip(), WAN_HOST);
}

// ---------------------------------------------------------------------------
// Behind another NAT: STUN (issue 12, item 5)
// ---------------------------------------------------------------------------

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the upstream NAT in front of the lab's WAN address is like, and
/// whether its STUN server can run RFC 5780's filtering test.
#[derive(Clone, Copy, PartialEq)]
enum Upstream {
    /// A masquerading NAT (conntrack: only replies get in) in front of a
    /// STUN server with one address: the filtering cannot be tested.
    Untested,
    /// The same NAT, in front of a server with two addresses (RFC 5780).
    Filtering,
    /// A NAT that also hands everything sent to its address to ours (a
    /// "DMZ host"): strangers get in.
    LetsStrangersIn,
}

/// The lab's WAN address (203.0.113.1, reserved) sits behind a second
/// NAT: the WAN host masquerades it to 198.51.100.1 on its way to an
/// "Internet" namespace, where coturn's `turnserver` answers STUN. The
/// IGD then reports the address STUN saw when mappings can be reached
/// through it, and the log says what can and cannot work from the Internet.
fn behind_another_nat(upstream: Upstream, expect_reported: &str, expect_log: &[&str]) {
    const ISP: &str = "198.51.100.1";
    const STUN: &str = "198.51.100.2";
    const STUN_ALT: &str = "198.51.100.3";
    let lab = upnp_lab_with(&format!("stun = \"{STUN}:3478\"\n"));
    let internet = Netns::new("inet").unwrap();
    lab.wan.veth("up0", &internet, "eth0").unwrap();
    lab.wan
        .ip(&["addr", "add", &format!("{ISP}/24"), "dev", "up0"])
        .unwrap();
    for addr in [STUN, STUN_ALT] {
        internet
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])
            .unwrap();
    }
    lab.wan.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let mut commands = vec![
        "add table ip isp",
        "add chain ip isp post { type nat hook postrouting priority 100 ; }",
        "add rule ip isp post oifname up0 masquerade",
    ];
    if upstream == Upstream::LetsStrangersIn {
        commands.extend([
            "add chain ip isp pre { type nat hook prerouting priority -100 ; }",
            "add rule ip isp pre iifname up0 ip daddr 198.51.100.1 dnat to 203.0.113.1",
        ]);
    }
    for command in commands {
        lab.wan.exec("nft", &words(command)).unwrap();
    }
    lab.router
        .ip(&["route", "add", "198.51.100.0/24", "via", "203.0.113.2"])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("nat-upnp-stun-{}", internet.name));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = internet.command("turnserver");
    if upstream == Upstream::Untested {
        // Debian's /etc/turnserver.conf, which turns RFC 5780 off.
        server.args(["-n", "--listening-ip", STUN]);
    } else {
        // An empty configuration of its own, and a second address.
        let conf = dir.join("turnserver.conf");
        std::fs::write(&conf, "").unwrap();
        server
            .arg("-c")
            .arg(&conf)
            .args(["-L", STUN, "-L", STUN_ALT, "--alt-listening-port", "3479"])
            .args(["--no-auth", "--no-tcp"])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.join("turnserver.db"));
    }
    let _stun = Killed(
        server
            .args(["--listening-port", "3478", "--stun-only", "--no-cli"])
            .args(["--no-tls", "--no-dtls", "--log-file", "stdout"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running turnserver (is coturn installed? `cargo xtask setup`)"),
    );

    // The daemon asks again within seconds of a failed probe.
    let reported = wait_for(
        "the daemon to say what STUN found",
        Duration::from_secs(40),
        || {
            let log = lab.natctl_log();
            expect_log
                .iter()
                .all(|line| log.contains(line))
                .then_some(())
        },
    )
    .and_then(|()| {
        wait_for(
            "GetExternalIPAddress to give the address to report",
            Duration::from_secs(10),
            || {
                let status = upnpc(&lab, "-s");
                status
                    .stdout
                    .contains(&format!("ExternalIPAddress = {expect_reported}"))
                    .then_some(status.stdout)
            },
        )
    })
    .unwrap_or_else(|error| panic!("{error}\n{}", lab.natctl_log()));
    assert!(reported.contains("Connected"), "{reported}");
    // NAT-PMP reports the same.
    let natpmpc = lab.lan.exec("natpmpc", &["-g", "192.168.0.1"]).unwrap();
    let text = String::from_utf8_lossy(&natpmpc.stdout);
    assert!(
        text.contains(&format!("Public IP address : {expect_reported}")),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn behind_another_nat_the_public_address_comes_from_stun() {
    behind_another_nat(
        Upstream::Untested,
        "198.51.100.1",
        &[
            "is behind a NAT at 198.51.100.1",
            "reached from the Internet only if that NAT forwards their ports",
        ],
    );
}

/// RFC 5780's filtering test through a NAT that lets only replies in:
/// mappings made here cannot be reached, so the IGD keeps its own address
/// (which miniupnpc-based clients then refuse, rightly) and says why.
#[test]
fn behind_a_filtering_nat_the_igd_keeps_its_address_and_says_mappings_cannot_be_reached() {
    behind_another_nat(
        Upstream::Filtering,
        "203.0.113.1",
        &[
            "is behind a NAT at 198.51.100.1",
            "filters what strangers send (RFC 5780 test)",
            "cannot be reached from the Internet",
        ],
    );
}

/// Through a NAT that lets strangers in (here: one that hands everything
/// to our address), the IGD reports the public address.
#[test]
fn behind_a_nat_that_lets_strangers_in_the_igd_reports_the_public_address() {
    behind_another_nat(
        Upstream::LetsStrangersIn,
        "198.51.100.1",
        &[
            "is behind a NAT at 198.51.100.1",
            "lets strangers in (RFC 5780 test)",
        ],
    );
}

// ---------------------------------------------------------------------------
// Soak: clients churning through a reload and a kill -9 (issue 12)
// ---------------------------------------------------------------------------

/// What one churning client holds, as its answers told it.
type Held = std::collections::BTreeSet<(&'static str, u16)>;

/// One SOAP call from `source` (the calling thread is in the LAN host's
/// namespace): the HTTP status and the UPnP error code, if any; `None`
/// when no answer came.
fn soak_call(
    source: Ipv4Addr,
    control: &str,
    action: &str,
    args: &[(&str, &str)],
) -> Option<(u16, Option<u16>)> {
    let mut stream =
        nat_tests::traffic::connect_from(source, SocketAddr::from((ROUTER_LAN, HTTP_PORT))).ok()?;
    stream
        .write_all(&soap_request(control, GOOD_HOST, action, args))
        .ok()?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).ok()?;
    let raw = Raw { bytes };
    Some((raw.status()?, raw.upnp_error()))
}

/// The control path, read by a thread already in the LAN namespace.
fn soak_control_path(source: Ipv4Addr) -> Option<String> {
    let mut stream =
        nat_tests::traffic::connect_from(source, SocketAddr::from((ROUTER_LAN, HTTP_PORT))).ok()?;
    stream
        .write_all(
            b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.0.1:5000\r\nConnection: close\r\n\r\n",
        )
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let service = text.find("WANIPConnection:")?;
    let (_, rest) = text[service..].split_once("<controlURL>")?;
    Some(rest.split_once("</controlURL>")?.0.to_owned())
}

/// The (protocol, external port) the datapath's inbound rules are on: the
/// `FORWARD_PORTS` slots that hold a rule.
fn datapath_forwards(lab: &Lab) -> std::collections::BTreeSet<(u8, u16)> {
    let data = aya::maps::MapData::from_pin(lab.pin_dir().join("FORWARD_PORTS")).unwrap();
    let map: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    (0..nat_common::FORWARD_PORT_SLOTS)
        .filter(|&slot| nat_common::Forward::from_port_word(map.get(&slot, 0).unwrap()).is_some())
        .map(|slot| nat_common::slot_port(slot).unwrap())
        .collect()
}

/// The daemon's resident memory, in KiB (its pid from `natctl status`).
fn daemon_rss_kib(lab: &Lab) -> u64 {
    let pid = lab.status().unwrap()["pid"]
        .as_u64()
        .expect("a pid in natctl status");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The daemon's UPnP mappings as (client, protocol, port).
fn daemon_mappings(lab: &Lab) -> Vec<(String, String, u16)> {
    lab.rules()
        .iter()
        .filter(|rule| rule["upnp"].is_object())
        .map(|rule| {
            (
                rule["upnp"]["client"].as_str().unwrap().to_owned(),
                rule["protocol"].as_str().unwrap().to_uppercase(),
                rule["external"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// What the clients think they hold, what the daemon lists, what its store
/// holds and what the datapath forwards all agree: nothing lost, nothing
/// duplicated.
fn soak_check(lab: &Lab, when: &str, held: &[(Ipv4Addr, Held)]) {
    let mut expected: Vec<(String, String, u16)> = held
        .iter()
        .flat_map(|(client, ports)| {
            ports
                .iter()
                .map(move |(protocol, port)| (client.to_string(), (*protocol).to_owned(), *port))
        })
        .collect();
    expected.sort();
    let mut listed = daemon_mappings(lab);
    listed.sort();
    assert_eq!(
        listed, expected,
        "{when}: the daemon's mappings are the clients'"
    );
    let names: std::collections::BTreeSet<String> = lab
        .rules()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap().to_owned())
        .collect();
    wait_for(
        &format!("{when}: the store to hold the daemon's rules"),
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(lab.rules_file()).ok()?;
            let stored: std::collections::BTreeSet<String> = text
                .lines()
                .filter_map(|line| line.strip_prefix("name = \""))
                .map(|name| name.trim_end_matches('"').to_owned())
                .collect();
            (stored == names).then_some(())
        },
    )
    .unwrap();
    let mut forwarded: Vec<(u8, u16)> = expected
        .iter()
        .map(|(_, protocol, port)| (if protocol == "TCP" { 6 } else { 17 }, *port))
        .chain([(6, 8080)])
        .collect();
    forwarded.sort();
    assert_eq!(
        datapath_forwards(lab).into_iter().collect::<Vec<_>>(),
        forwarded,
        "{when}: the datapath forwards what the rules say"
    );
}

#[test]
fn soak_clients_churn_through_reload_and_kill_9_and_nothing_is_lost_or_duplicated() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    };
    // Seconds of churn per phase: short in CI, longer by asking.
    let secs: u64 = std::env::var("NATCTL_SOAK_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(3);
    let mut lab = upnp_lab();
    // Traffic through an admin rule all along: the WAN host connects to a
    // LAN server again and again.
    let server = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Each failure with when it happened, so that a failed run says which
    // phase (churn, reload, kill -9, restart) lost a connection, and how.
    let started = std::time::Instant::now();
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // The server stops only after the last connection: closed first, its
    // listener would reset one the connector had just opened.
    let server_stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let (stop, served) = (server_stop.clone(), served.clone());
        std::thread::spawn(move || {
            server.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match server.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let mut byte = [0u8; 1];
                        if stream.read_exact(&mut byte).is_ok() && stream.write_all(b"k").is_ok() {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let connector = {
        let (stop, failed, failures) = (stop.clone(), failed.clone(), failures.clone());
        lab.wan.spawn(move || {
            // Bounded: one connection per 20 ms at most, until told to stop.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let attempt = std::time::Instant::now();
                let outcome = nat_tests::traffic::connect(SocketAddr::from((ROUTER_WAN, 8080)))
                    .and_then(|mut stream| {
                        let local = stream.local_addr()?;
                        stream
                            .write_all(b"h")
                            .with_context(|| format!("writing from {local}"))?;
                        let mut reply = [0u8; 1];
                        stream
                            .read_exact(&mut reply)
                            .with_context(|| format!("reading on {local}"))?;
                        Ok(())
                    });
                if let Err(error) = outcome {
                    failed.fetch_add(1, Ordering::Relaxed);
                    failures.lock().unwrap().push(format!(
                        "at {:.3} s (tried for {:.3} s): {error:#}",
                        attempt.duration_since(started).as_secs_f64(),
                        attempt.elapsed().as_secs_f64()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };

    // Clients: both LAN addresses churn their own ports, TCP and UDP.
    let paused = Arc::new(AtomicBool::new(true));
    let parked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = [(LAN_SERVER, 20000u16), (LAN_CLIENT, 21000u16)]
        .into_iter()
        .map(|(source, base)| {
            let (stop, paused, parked) = (stop.clone(), paused.clone(), parked.clone());
            lab.lan.spawn(move || {
                let mut held = Held::new();
                let mut seed = u64::from(base) * 2_654_435_761 + 1;
                let mut random = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut control = None;
                let mut requests = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if paused.load(Ordering::SeqCst) {
                        parked.fetch_add(1, Ordering::SeqCst);
                        while paused.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        parked.fetch_sub(1, Ordering::SeqCst);
                        // The IGD may have restarted: new paths.
                        control = None;
                        continue;
                    }
                    let path = match &control {
                        Some(path) => path,
                        None => {
                            control = soak_control_path(source);
                            anyhow::ensure!(control.is_some(), "{source}: no description");
                            control.as_ref().unwrap()
                        }
                    };
                    let roll = random();
                    let protocol = if roll & 1 == 0 { "TCP" } else { "UDP" };
                    let port = base + ((roll >> 1) % 24) as u16;
                    let port_text = port.to_string();
                    let client = source.to_string();
                    requests += 1;
                    let answer = if (roll >> 8) % 10 < 6 {
                        let args = [
                            ("NewRemoteHost", ""),
                            ("NewExternalPort", port_text.as_str()),
                            ("NewProtocol", protocol),
                            ("NewInternalPort", port_text.as_str()),
                            ("NewInternalClient", client.as_str()),
                            ("NewEnabled", "1"),
                            ("NewPortMappingDescription", "soak"),
                            ("NewLeaseDuration", "600"),
                        ];
                        let answer = soak_call(source, path, "AddPortMapping", &args);
                        if let Some((200, _)) = answer {
                            held.insert((protocol, port));
                        }
                        answer
                    } else {
                        let args = [
                            ("NewRemoteHost", ""),
                            ("NewExternalPort", port_text.as_str()),
                            ("NewProtocol", protocol),
                        ];
                        let answer = soak_call(source, path, "DeletePortMapping", &args);
                        if let Some((200, _) | (500, Some(714))) = answer {
                            held.remove(&(protocol, port));
                        }
                        answer
                    };
                    match answer {
                        Some((200 | 503, _) | (500, Some(714))) => {}
                        other => anyhow::bail!("{source}: unexpected answer {other:?}"),
                    }
                    if let Some((503, _)) = answer {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                Ok((source, held, requests))
            })
        })
        .collect();
    // Pauses the clients, and returns once both are parked.
    let pause = |paused: &AtomicBool| {
        paused.store(true, Ordering::SeqCst);
        wait_for("the clients to pause", Duration::from_secs(20), || {
            (parked.load(Ordering::SeqCst) == 2).then_some(())
        })
        .unwrap();
    };
    let held_now = |lab: &Lab| -> Vec<(Ipv4Addr, Held)> {
        // What the daemon lists per client is checked against the model
        // the clients keep; they are parked, so read the daemon's view of
        // each and compare after the threads end (below) as well.
        let mut by_client: std::collections::BTreeMap<Ipv4Addr, Held> = Default::default();
        for (client, protocol, port) in daemon_mappings(lab) {
            let protocol: &'static str = if protocol == "TCP" { "TCP" } else { "UDP" };
            by_client
                .entry(client.parse().unwrap())
                .or_default()
                .insert((protocol, port));
        }
        by_client.into_iter().collect()
    };
    wait_for("the clients to start", Duration::from_secs(10), || {
        (parked.load(Ordering::SeqCst) == 2).then_some(())
    })
    .unwrap();

    let mut phases = Vec::new();
    let mut mark = |phase: &str| {
        phases.push(format!("{phase} {:.3} s", started.elapsed().as_secs_f64()));
    };
    // 1. Churn, then a reload under the held mappings.
    mark("churn");
    paused.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(secs));
    pause(&paused);
    let before_reload = held_now(&lab);
    soak_check(&lab, "after churn", &before_reload);
    mark("reload");
    lab.run("reload");
    mark("reloaded");
    soak_check(&lab, "after reload", &before_reload);

    // 2. Churn, then kill -9 and a restart once the store has settled.
    mark("churn");
    paused.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(secs));
    pause(&paused);
    let before_kill = held_now(&lab);
    soak_check(&lab, "before kill -9", &before_kill);
    mark("kill -9");
    lab.kill_daemon().unwrap();
    lab.start_daemon().unwrap();
    wait_igd(&lab, 2);
    mark("restarted");
    soak_check(&lab, "after the restart", &before_kill);

    // 3. Churn against the restarted daemon, then the final count; its
    // memory stays bounded while it churns.
    let rss_start = daemon_rss_kib(&lab);
    mark("churn");
    paused.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(secs));
    pause(&paused);
    let rss_end = daemon_rss_kib(&lab);
    mark("stop");
    stop.store(true, Ordering::SeqCst);
    let mut model = Vec::new();
    let mut requests = 0;
    for client in clients {
        let (source, held, made) = join(client);
        requests += made;
        model.push((source, held));
    }
    connector.join().unwrap().unwrap();
    server_stop.store(true, Ordering::SeqCst);
    acceptor.join().unwrap();
    model.retain(|(_, held)| !held.is_empty());
    soak_check(&lab, "at the end (the clients' own accounts)", &model);
    eprintln!(
        "soak: {requests} requests, {} mappings held at the end, {} connections served, \
         daemon RSS {rss_start} -> {rss_end} KiB over the last phase",
        model.iter().map(|(_, held)| held.len()).sum::<usize>(),
        served.load(Ordering::Relaxed)
    );
    // At most 48 mappings per client: a few MiB of growth would be a leak.
    assert!(
        rss_end < rss_start + 16 * 1024 && rss_end < 256 * 1024,
        "the daemon's memory grew from {rss_start} to {rss_end} KiB"
    );
    assert!(requests > 20, "the clients made only {requests} requests");
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(served > 10, "traffic flowed: {served} connections served");
    assert_eq!(
        failed,
        0,
        "connections through the admin rule failed ({served} served; phases at {}): {:#?}",
        phases.join(", "),
        failures.lock().unwrap()
    );
}
