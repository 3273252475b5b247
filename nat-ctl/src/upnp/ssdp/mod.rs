//! SSDP (UPnP Device Architecture 1.1/2.0 discovery) for the IGD, on the
//! LAN side only.
//!
//! The parsing and message building (`message`) are pure functions so
//! that they can be unit-tested and fuzzed, and the answering of searches
//! (`responder`) is a state machine without a socket so that tests can
//! drive it; [`run`] wires them to one UDP socket bound to the LAN
//! interface.
//!
//! Everything a LAN host can make us do is bounded: a search is at most
//! [`MAX_DATAGRAM`] bytes and [`MAX_HEADERS`] header lines, each source gets
//! a few searches a second from a small map of token buckets, all sources
//! together get a few more, and at most [`MAX_PENDING`] responses wait for
//! their MX delay at any time. What does not fit is dropped (and logged at
//! debug level), never queued.
#[cfg(test)]
mod fixtures;
mod message;
mod responder;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use ipnet::Ipv4Net;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::UdpSocket,
    sync::watch,
    time::{Instant, sleep, sleep_until},
};

use self::{
    message::is_clean,
    responder::{Dropped, Responder},
};
pub use self::{
    message::{
        MAX_DATAGRAM, MAX_HEADERS, MAX_MX, NotifyKind, SSDP_GROUP, SSDP_PORT, SearchRequest,
        announcements, http_date, matches, notify, parse_search, search_response,
    },
    responder::MAX_PENDING,
};
use super::{Identity, IgdVersion};

/// UDA 1.1 recommends at least 30 minutes.
pub const DEFAULT_MAX_AGE: u32 = 1800;
/// Well inside [`DEFAULT_MAX_AGE`], so that one lost round of NOTIFYs does
/// not make control points forget the gateway.
pub const DEFAULT_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// UDA asks for each NOTIFY round to be sent more than once because UDP
/// loses datagrams; the copies go this far apart.
const ALIVE_REPEAT_GAP: Duration = Duration::from_millis(200);
/// A persistent receive error must not turn the loop into a busy loop.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SsdpError {
    #[error("SSDP datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    #[error("SSDP datagram is not UTF-8")]
    NotUtf8,
    #[error("not an M-SEARCH request line: {0:?}")]
    BadRequestLine(String),
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("malformed header line {0}")]
    BadHeader(usize),
    #[error("duplicate {0} header")]
    DuplicateHeader(&'static str),
    #[error("an M-SEARCH carries no body")]
    UnexpectedBody,
    #[error("MAN header missing or not \"ssdp:discover\"")]
    BadMan,
    #[error("ST header missing or empty")]
    MissingSt,
    #[error("MX header {0:?} is not a non-negative integer")]
    BadMx(String),
    #[error("invalid SSDP configuration: {0}")]
    Config(String),
    #[error("SSDP on interface {ifname}: cannot {what}: {source}")]
    Socket {
        ifname: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug)]
pub struct SsdpConfig {
    pub lan_ifname: String,
    pub lan_addr: Ipv4Addr,
    pub lan_net: Ipv4Net,
    /// The root description's URL, with an IP literal host (control points
    /// on the LAN may have no name service for the gateway), e.g.
    /// `http://192.168.0.1:5000/rootDesc.xml`.
    pub location: String,
    pub identity: Identity,
    pub igd: IgdVersion,
    /// Seconds; [`DEFAULT_MAX_AGE`] unless there is a reason.
    pub max_age: u32,
    /// [`DEFAULT_NOTIFY_INTERVAL`] unless there is a reason; must stay below
    /// `max_age`.
    pub notify_interval: Duration,
}

/// `http://a.b.c.d[:port]/path`, nothing that could break a header line.
fn valid_location(location: &str) -> bool {
    let Some(rest) = location.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host_ok = match authority.split_once(':') {
        Some((host, port)) => {
            host.parse::<Ipv4Addr>().is_ok() && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => authority.parse::<Ipv4Addr>().is_ok(),
    };
    host_ok
        && path.starts_with('/')
        && !location
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
}

impl SsdpConfig {
    /// Everything the messages carry comes from here, so a value that could
    /// inject a header line or break a USN is refused up front.
    fn validate(&self) -> Result<(), SsdpError> {
        let bad = |what: String| Err(SsdpError::Config(what));
        if !valid_location(&self.location) {
            return bad(format!(
                "LOCATION {:?} is not an http:// URL with an IPv4 literal host and a path",
                self.location
            ));
        }
        if !self.lan_net.contains(&self.lan_addr) {
            return bad(format!("{} is not inside {}", self.lan_addr, self.lan_net));
        }
        for uuid in &self.identity.uuids {
            if uuid.is_empty()
                || uuid.len() > 128
                || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return bad(format!(
                    "device uuid {uuid:?} is not a bare UUID (no \"uuid:\" prefix)"
                ));
            }
        }
        if !is_clean(&self.identity.server) || self.identity.server.contains('\t') {
            return bad("the SERVER string contains control characters".to_owned());
        }
        if self.max_age == 0 {
            return bad("max-age must be at least 1 second".to_owned());
        }
        if self.notify_interval < Duration::from_secs(1)
            || self.notify_interval >= Duration::from_secs(self.max_age.into())
        {
            return bad(format!(
                "the NOTIFY interval {:?} must be at least 1 s and below max-age ({} s)",
                self.notify_interval, self.max_age
            ));
        }
        Ok(())
    }
}

fn socket_error(ifname: &str, what: &'static str) -> impl FnOnce(io::Error) -> SsdpError {
    let ifname = ifname.to_owned();
    move |source| SsdpError::Socket {
        ifname,
        what,
        source,
    }
}

/// The one SSDP socket: bound to the LAN interface, so that nothing that
/// arrives on any other interface (the WAN above all) ever reaches it,
/// whatever its addresses.
fn open_socket(config: &SsdpConfig) -> Result<UdpSocket, SsdpError> {
    let ifname = config.lan_ifname.as_str();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(socket_error(ifname, "create a UDP socket"))?;
    // Other SSDP software on the router (a media server) shares the port.
    socket
        .set_reuse_address(true)
        .map_err(socket_error(ifname, "set SO_REUSEADDR"))?;
    socket
        .set_reuse_port(true)
        .map_err(socket_error(ifname, "set SO_REUSEPORT"))?;
    socket
        .bind_device(Some(ifname.as_bytes()))
        .map_err(socket_error(
            ifname,
            "bind to the interface (SO_BINDTODEVICE)",
        ))?;
    // Without this Linux delivers to a 0.0.0.0 socket the groups joined by
    // any socket on the host, not only ours.
    socket
        .set_multicast_all_v4(false)
        .map_err(socket_error(ifname, "clear IP_MULTICAST_ALL"))?;
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SSDP_PORT);
    socket
        .bind(&any.into())
        .map_err(socket_error(ifname, "bind 0.0.0.0:1900"))?;
    socket
        .join_multicast_v4(&SSDP_GROUP, &config.lan_addr)
        .map_err(socket_error(ifname, "join 239.255.255.250"))?;
    socket
        .set_multicast_if_v4(&config.lan_addr)
        .map_err(socket_error(ifname, "set IP_MULTICAST_IF"))?;
    // UDA: TTL 2 by default, enough for the LAN and no further.
    socket
        .set_multicast_ttl_v4(2)
        .map_err(socket_error(ifname, "set the multicast TTL"))?;
    socket
        .set_multicast_loop_v4(false)
        .map_err(socket_error(ifname, "disable multicast loopback"))?;
    socket
        .set_nonblocking(true)
        .map_err(socket_error(ifname, "make the socket non-blocking"))?;
    UdpSocket::from_std(socket.into()).map_err(socket_error(ifname, "register with tokio"))
}

/// Sends one NOTIFY round. Send errors (the link going down) are logged,
/// not fatal: the next round may well get through.
async fn send_notifies(
    socket: &UdpSocket,
    config: &SsdpConfig,
    targets: &[(String, String)],
    kind: NotifyKind,
) {
    let group = SocketAddr::from((SSDP_GROUP, SSDP_PORT));
    let mut failed = 0;
    let mut first_error = None;
    for (nt, usn) in targets {
        let message = notify(
            kind,
            nt,
            usn,
            &config.location,
            &config.identity,
            config.max_age,
        );
        if let Err(error) = socket.send_to(message.as_bytes(), group).await {
            failed += 1;
            first_error.get_or_insert(error);
        }
    }
    if let Some(error) = first_error {
        tracing::warn!(
            "SSDP on {}: {failed} of {} NOTIFY {kind:?} failed: {error}",
            config.lan_ifname,
            targets.len()
        );
    }
}

/// Runs SSDP on the LAN until `shutdown` turns true (or its sender goes),
/// then withdraws the announcements and returns.
pub async fn run(config: SsdpConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), SsdpError> {
    config.validate()?;
    let socket = open_socket(&config)?;
    if *shutdown.borrow_and_update() {
        return Ok(());
    }
    let targets = announcements(&config.identity, config.igd);
    let mut responder = Responder::new(&config, Instant::now());
    // One more byte than allowed, so that an oversize datagram shows as
    // such instead of being silently truncated.
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    let mut next_alive = Instant::now();
    let mut repeat_round = false;
    tracing::info!(
        "SSDP on {} ({}): announcing {}",
        config.lan_ifname,
        config.lan_addr,
        config.location
    );

    loop {
        let next_due = responder.next_due();
        tokio::select! {
            biased;
            // The guard wait_for returns is not Send; only the wake-up
            // matters (a dropped sender counts as a shutdown too).
            _ = async { shutdown.wait_for(|&stop| stop).await.map(drop) } => break,
            _ = sleep_until(next_alive) => {
                send_notifies(&socket, &config, &targets, NotifyKind::Alive).await;
                // Each round goes out twice, ALIVE_REPEAT_GAP apart.
                next_alive = Instant::now()
                    + if repeat_round { config.notify_interval } else { ALIVE_REPEAT_GAP };
                repeat_round = !repeat_round;
            }
            _ = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                for pending in responder.take_due(Instant::now()) {
                    let message = search_response(
                        &pending.st,
                        &pending.usn,
                        &config.location,
                        &config.identity,
                        config.max_age,
                    );
                    if let Err(error) = socket.send_to(message.as_bytes(), pending.to).await {
                        tracing::debug!("SSDP: response to {} failed: {error}", pending.to);
                    }
                }
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    let outcome = responder.on_datagram(
                        from,
                        &buffer[..len],
                        Instant::now(),
                        &mut rand::rng(),
                    );
                    match outcome {
                        Ok(count) => tracing::debug!("SSDP: {count} responses scheduled for {from}"),
                        Err(Dropped::NotSearch) => {}
                        Err(reason) => {
                            responder.dropped += 1;
                            tracing::debug!(
                                "SSDP: dropped datagram from {from} ({} dropped so far): {reason}",
                                responder.dropped
                            );
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!("SSDP on {}: receive failed: {error}", config.lan_ifname);
                    sleep(RECV_ERROR_BACKOFF).await;
                }
            },
        }
    }

    send_notifies(&socket, &config, &targets, NotifyKind::ByeBye).await;
    tracing::info!("SSDP on {}: withdrawn", config.lan_ifname);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    #[test]
    fn validates_config() {
        assert!(config().validate().is_ok());
        for location in [
            "http://gateway.lan:5000/rootDesc.xml",
            "https://192.168.77.1/rootDesc.xml",
            "http://192.168.77.1:5000",
            "http://192.168.77.1:0/x",
            "http://192.168.77.1:5000/x\r\nX-Injected: 1",
            "http://192.168.77.1:5000/a b",
        ] {
            let mut bad = config();
            bad.location = location.to_owned();
            assert!(bad.validate().is_err(), "{location:?}");
        }
        let mut bad = config();
        bad.identity.uuids[1] = "uuid:3b9c1e2a".to_owned();
        assert!(bad.validate().is_err());
        let mut bad = config();
        bad.identity.server = "x\r\nEvil: 1".to_owned();
        assert!(bad.validate().is_err());
        let mut bad = config();
        bad.lan_addr = Ipv4Addr::new(10, 0, 0, 1);
        assert!(bad.validate().is_err());
        let mut bad = config();
        bad.notify_interval = Duration::ZERO;
        assert!(bad.validate().is_err());
        let mut bad = config();
        bad.notify_interval = Duration::from_secs(1800);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn run_can_be_spawned() {
        // The daemon spawns it on a multi-threaded runtime.
        fn assert_send<T: Send>(_: &T) {}
        let (_stop, shutdown) = watch::channel(false);
        assert_send(&run(config(), shutdown));
    }

    /// Runs the service for real inside network namespaces: a router with a
    /// LAN and a WAN veth, a LAN client and a WAN host.
    mod netns {
        use std::{
            collections::HashSet,
            fs::File,
            os::fd::AsRawFd,
            process::Command,
            sync::{
                Arc,
                atomic::{AtomicBool, AtomicU32, Ordering},
                mpsc,
            },
            thread::{self, JoinHandle},
            time::Instant as StdInstant,
        };

        use super::*;

        static NEXT: AtomicU32 = AtomicU32::new(0);

        fn run_ip(args: &[&str]) {
            let output = Command::new("ip")
                .args(args)
                .output()
                .expect("running ip (iproute2 must be installed)");
            assert!(
                output.status.success(),
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        /// A namespace with a unique name, deleted on drop.
        struct Ns(String);

        impl Ns {
            fn new(role: &str) -> Self {
                let name = format!(
                    "ssdp-{role}-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                run_ip(&["netns", "add", &name]);
                let ns = Self(name);
                ns.ip(&["link", "set", "lo", "up"]);
                ns
            }

            fn ip(&self, args: &[&str]) {
                let mut full = vec!["-n", self.0.as_str()];
                full.extend_from_slice(args);
                run_ip(&full);
            }

            fn sysctl(&self, key: &str, value: &str) {
                run_ip(&[
                    "netns",
                    "exec",
                    &self.0,
                    "sysctl",
                    "-qw",
                    &format!("{key}={value}"),
                ]);
            }

            /// Runs `work` on a new thread moved into the namespace; sockets
            /// it opens stay there.
            fn spawn<T: Send + 'static>(
                &self,
                work: impl FnOnce() -> T + Send + 'static,
            ) -> JoinHandle<T> {
                let path = format!("/run/netns/{}", self.0);
                thread::spawn(move || {
                    let file = File::open(&path).expect("opening the namespace");
                    // SAFETY: setns only changes this thread's namespace.
                    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(ret, 0, "setns: {}", io::Error::last_os_error());
                    work()
                })
            }
        }

        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }

        const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
        const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
        /// The WAN host claims a LAN address: only the device binding keeps
        /// its searches out.
        const SPOOFER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 99);
        const ROUTER_WAN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
        const LOCATION: &str = "http://192.168.77.1:5000/rootDesc.xml";

        fn udp(bind: SocketAddrV4, multicast_if: Ipv4Addr) -> std::net::UdpSocket {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            socket.set_reuse_address(true).unwrap();
            socket.bind(&bind.into()).unwrap();
            socket.set_multicast_if_v4(&multicast_if).unwrap();
            socket.set_multicast_loop_v4(false).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            socket.into()
        }

        /// Sends `search` up to `attempts` times and collects what answers
        /// it until `want` responses came or `window` passed per attempt.
        fn search_and_collect(
            socket: &std::net::UdpSocket,
            to: SocketAddrV4,
            search: &[u8],
            attempts: usize,
            want: usize,
            window: Duration,
        ) -> Vec<String> {
            let mut buffer = [0u8; 4096];
            for _ in 0..attempts {
                socket.send_to(search, to).unwrap();
                let mut got = Vec::new();
                let deadline = StdInstant::now() + window;
                while StdInstant::now() < deadline && got.len() < want {
                    if let Ok((len, _)) = socket.recv_from(&mut buffer) {
                        got.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
                    }
                }
                if !got.is_empty() {
                    return got;
                }
            }
            Vec::new()
        }

        /// Waits until `done` holds for the messages seen, or fails.
        fn wait_for_notifies(
            messages: &mpsc::Receiver<String>,
            seen: &mut Vec<String>,
            timeout: Duration,
            done: impl Fn(&[String]) -> bool,
        ) {
            let deadline = StdInstant::now() + timeout;
            while !done(seen) {
                let left = deadline.saturating_duration_since(StdInstant::now());
                match messages.recv_timeout(left) {
                    Ok(message) => seen.push(message),
                    Err(_) => panic!("timed out; NOTIFYs seen: {seen:#?}"),
                }
            }
        }

        fn usns_with(messages: &[String], nts: &str) -> Vec<String> {
            messages
                .iter()
                .filter(|message| header(message, "NTS") == Some(nts))
                .filter_map(|message| header(message, "USN").map(str::to_owned))
                .collect()
        }

        fn distinct(usns: Vec<String>) -> usize {
            usns.into_iter().collect::<HashSet<_>>().len()
        }

        #[test]
        fn answers_lan_searches_only_and_announces() {
            assert!(
                nix::unistd::Uid::effective().is_root(),
                "this test needs root (network namespaces)"
            );
            let router = Ns::new("gw");
            let client = Ns::new("lan");
            let wan = Ns::new("wan");
            router.ip(&[
                "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &client.0,
            ]);
            router.ip(&[
                "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &wan.0,
            ]);
            router.ip(&["addr", "add", "192.168.77.1/24", "dev", "lan0"]);
            router.ip(&["addr", "add", "10.77.0.1/24", "dev", "wan0"]);
            router.ip(&["link", "set", "lan0", "up"]);
            router.ip(&["link", "set", "wan0", "up"]);
            // Were the socket not bound to lan0, answers to the spoofer would
            // go back out of the WAN, where the test would see them.
            router.ip(&["route", "add", "192.168.77.99/32", "dev", "wan0"]);
            router.sysctl("net.ipv4.conf.all.rp_filter", "0");
            router.sysctl("net.ipv4.conf.wan0.rp_filter", "0");
            client.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"]);
            client.ip(&["link", "set", "eth0", "up"]);
            wan.ip(&["addr", "add", "192.168.77.99/24", "dev", "eth0"]);
            wan.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
            wan.ip(&["link", "set", "eth0", "up"]);

            // The client listens for NOTIFYs before the service starts.
            let (notify_tx, notifies) = mpsc::channel();
            let (ready_tx, ready) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let listener = client.spawn({
                let stop = stop.clone();
                move || {
                    let socket = udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SSDP_PORT), CLIENT);
                    socket.join_multicast_v4(&SSDP_GROUP, &CLIENT).unwrap();
                    ready_tx.send(()).unwrap();
                    let mut buffer = [0u8; 4096];
                    let deadline = StdInstant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && StdInstant::now() < deadline {
                        if let Ok((len, _)) = socket.recv_from(&mut buffer) {
                            let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                            if text.starts_with("NOTIFY ") && notify_tx.send(text).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            ready.recv_timeout(Duration::from_secs(10)).unwrap();

            let identity = identity();
            let config = SsdpConfig {
                lan_ifname: "lan0".to_owned(),
                lan_addr: ROUTER_LAN,
                lan_net: "192.168.77.0/24".parse().unwrap(),
                location: LOCATION.to_owned(),
                identity: identity.clone(),
                igd: IgdVersion::V2,
                max_age: DEFAULT_MAX_AGE,
                notify_interval: DEFAULT_NOTIFY_INTERVAL,
            };
            let (shutdown_tx, shutdown) = watch::channel(false);
            let service = router.spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(run(config, shutdown))
            });

            // Each announcement goes out twice at start.
            let mut seen = Vec::new();
            wait_for_notifies(&notifies, &mut seen, Duration::from_secs(10), |seen| {
                let alive = usns_with(seen, "ssdp:alive");
                alive.len() >= 18 && distinct(alive) == 9
            });
            for message in &seen {
                assert_eq!(header(message, "LOCATION"), Some(LOCATION));
                assert_eq!(header(message, "HOST"), Some("239.255.255.250:1900"));
            }

            // A multicast search from the LAN is answered, within MX.
            let searcher = client.spawn(move || {
                let socket = udp(SocketAddrV4::new(CLIENT, 0), CLIENT);
                let group = SocketAddrV4::new(SSDP_GROUP, SSDP_PORT);
                let one = search_and_collect(
                    &socket,
                    group,
                    UPNPC_SEARCH,
                    3,
                    1,
                    Duration::from_secs(3),
                );
                let all = search_and_collect(
                    &socket,
                    group,
                    &search("ssdp:all", Some("1")),
                    3,
                    9,
                    Duration::from_secs(3),
                );
                let unicast = b"M-SEARCH * HTTP/1.1\r\nHOST: 192.168.77.1:1900\r\nMAN: \"ssdp:discover\"\r\nST: upnp:rootdevice\r\n\r\n";
                let direct = search_and_collect(
                    &socket,
                    SocketAddrV4::new(ROUTER_LAN, SSDP_PORT),
                    unicast,
                    3,
                    1,
                    Duration::from_secs(1),
                );
                (one, all, direct)
            });
            let (one, all, direct) = searcher.join().unwrap();
            let igd1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
            assert_eq!(one.len(), 1, "{one:#?}");
            assert!(one[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", one[0]);
            assert_eq!(header(&one[0], "LOCATION"), Some(LOCATION));
            assert_eq!(header(&one[0], "ST"), Some(igd1));
            let usn = format!("uuid:{}::{igd1}", identity.uuids[0]);
            assert_eq!(header(&one[0], "USN"), Some(usn.as_str()));
            assert_eq!(
                all.iter()
                    .filter_map(|m| header(m, "USN"))
                    .collect::<HashSet<_>>()
                    .len(),
                9,
                "{all:#?}"
            );
            assert_eq!(direct.len(), 1, "{direct:#?}");
            assert_eq!(header(&direct[0], "ST"), Some("upnp:rootdevice"));

            // The same searches from the WAN side, even from a LAN source
            // address, to the group or to the router's WAN address, get
            // nothing back.
            let from_wan = wan.spawn(|| {
                let socket = udp(SocketAddrV4::new(SPOOFER, 0), SPOOFER);
                let multicast = search_and_collect(
                    &socket,
                    SocketAddrV4::new(SSDP_GROUP, SSDP_PORT),
                    UPNPC_SEARCH,
                    2,
                    1,
                    Duration::from_millis(1500),
                );
                let unicast = b"M-SEARCH * HTTP/1.1\r\nHOST: 10.77.0.1:1900\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n\r\n";
                let direct = search_and_collect(
                    &socket,
                    SocketAddrV4::new(ROUTER_WAN, SSDP_PORT),
                    unicast,
                    2,
                    1,
                    Duration::from_millis(500),
                );
                (multicast, direct)
            });
            let (multicast, direct) = from_wan.join().unwrap();
            assert!(multicast.is_empty(), "{multicast:#?}");
            assert!(direct.is_empty(), "{direct:#?}");

            // Shutdown withdraws every announcement, then returns.
            shutdown_tx.send(true).unwrap();
            let outcome = service.join().unwrap();
            assert!(outcome.is_ok(), "{outcome:?}");
            wait_for_notifies(&notifies, &mut seen, Duration::from_secs(10), |seen| {
                distinct(usns_with(seen, "ssdp:byebye")) == 9
            });
            stop.store(true, Ordering::Relaxed);
            listener.join().unwrap();
        }
    }
}
