//! The NAT-PMP/PCP service: the UDP socket on the LAN address and NIC, the
//! per-client rate limit, and the announcements of the public address.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::UdpSocket,
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep_until},
};

use super::{
    server::{Outcome, Server},
    wire::{ANNOUNCE_GROUP, ANNOUNCE_PORT, PCP_MAX_LEN, SERVER_PORT},
};

/// RFC 6886 3.2.1: ten announcements, 250 ms apart at first, the interval
/// doubling each time.
pub const ANNOUNCEMENTS: u32 = 10;
pub const FIRST_INTERVAL: Duration = Duration::from_millis(250);
/// How often the public address is looked at for a change.
const ADDRESS_POLL: Duration = Duration::from_secs(1);
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the service needs from the daemon.
pub trait Control: Send + Sync {
    /// One datagram from a LAN host, handled under the daemon's lock.
    fn handle(
        &self,
        server: &Server,
        from: SocketAddrV4,
        data: &[u8],
        now: std::time::Instant,
    ) -> Outcome;
    fn external_address(&self) -> Option<Ipv4Addr>;
    /// Requests per second per client.
    fn rate_limit(&self) -> u32;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub lan_ifname: String,
    pub lan_addr: Ipv4Addr,
}

/// The announcement schedule: restarted whenever the public address
/// changes to a new one.
#[derive(Debug, Default)]
pub struct Announcer {
    address: Option<Ipv4Addr>,
    sent: u32,
    next: Option<Instant>,
}

impl Announcer {
    /// Returns true when a new round of announcements begins.
    pub fn on_address(&mut self, address: Option<Ipv4Addr>, now: Instant) -> bool {
        if address == self.address {
            return false;
        }
        self.address = address;
        self.sent = 0;
        self.next = address.map(|_| now);
        address.is_some()
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// The address to announce now, if one is due; schedules the next.
    pub fn take_due(&mut self, now: Instant) -> Option<Ipv4Addr> {
        let due = self.next.filter(|&next| next <= now)?;
        self.sent += 1;
        self.next = (self.sent < ANNOUNCEMENTS)
            .then(|| due.max(now) + FIRST_INTERVAL * 2u32.pow(self.sent - 1));
        self.address
    }
}

fn socket_error<'a>(
    ifname: &'a str,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> std::io::Error + 'a {
    move |error| {
        std::io::Error::new(
            error.kind(),
            format!("NAT-PMP/PCP on {ifname}: cannot {what}: {error}"),
        )
    }
}

/// UDP 5351 on the LAN address, bound to the LAN NIC: a request that
/// arrives on the WAN side (or to another address) never reaches it.
fn open_socket(config: &ServiceConfig) -> std::io::Result<UdpSocket> {
    let ifname = config.lan_ifname.as_str();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(socket_error(ifname, "create a UDP socket"))?;
    socket
        .bind_device(Some(ifname.as_bytes()))
        .map_err(socket_error(
            ifname,
            "bind to the interface (SO_BINDTODEVICE)",
        ))?;
    let addr = SocketAddrV4::new(config.lan_addr, SERVER_PORT);
    socket
        .bind(&addr.into())
        .map_err(socket_error(ifname, "bind UDP port 5351"))?;
    socket
        .set_multicast_if_v4(&config.lan_addr)
        .map_err(socket_error(ifname, "set IP_MULTICAST_IF"))?;
    // 224.0.0.1 is link-local: TTL 1.
    socket
        .set_multicast_ttl_v4(1)
        .map_err(socket_error(ifname, "set the multicast TTL"))?;
    socket
        .set_multicast_loop_v4(false)
        .map_err(socket_error(ifname, "disable multicast loopback"))?;
    socket
        .set_nonblocking(true)
        .map_err(socket_error(ifname, "make the socket non-blocking"))?;
    UdpSocket::from_std(socket.into()).map_err(socket_error(ifname, "register with tokio"))
}

/// A running service; [`Running::stop`] ends it.
pub struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(STOP_TIMEOUT, self.task).await.is_err() {
            abort.abort();
        }
    }
}

/// Binds the socket (an error is returned, not logged) and runs the
/// service until stopped.
pub fn start(config: ServiceConfig, control: Arc<dyn Control>) -> std::io::Result<Running> {
    let socket = open_socket(&config)?;
    let (shutdown, stop) = watch::channel(false);
    let task = tokio::spawn(run(socket, config, control, stop));
    Ok(Running { shutdown, task })
}

async fn announce(socket: &UdpSocket, server: &Server, address: Ipv4Addr, ifname: &str) {
    let now = std::time::Instant::now();
    let group = SocketAddr::from((ANNOUNCE_GROUP, ANNOUNCE_PORT));
    for message in [
        server.pmp_announcement(address, now),
        server.pcp_announcement(now),
    ] {
        if let Err(error) = socket.send_to(&message, group).await {
            tracing::warn!("NAT-PMP/PCP on {ifname}: announcement failed: {error}");
        }
    }
}

async fn run(
    socket: UdpSocket,
    config: ServiceConfig,
    control: Arc<dyn Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut server = Server::new(std::time::Instant::now());
    let mut announcer = Announcer::default();
    // One byte more than PCP allows, so an oversize request shows as such.
    let mut buffer = vec![0u8; PCP_MAX_LEN + 1];
    let mut next_poll = Instant::now();
    let mut dropped: u64 = 0;
    tracing::info!(
        "NAT-PMP/PCP on {} ({}:{SERVER_PORT})",
        config.lan_ifname,
        config.lan_addr
    );
    loop {
        let next_due = announcer.next_due();
        tokio::select! {
            biased;
            _ = async { shutdown.wait_for(|&stop| stop).await.map(drop) } => break,
            _ = sleep_until(next_poll) => {
                next_poll = Instant::now() + ADDRESS_POLL;
                let address = control.external_address();
                if announcer.on_address(address, Instant::now()) {
                    tracing::info!(
                        "NAT-PMP/PCP on {}: announcing public address {} to {ANNOUNCE_GROUP}:{ANNOUNCE_PORT}",
                        config.lan_ifname,
                        address.unwrap_or(Ipv4Addr::UNSPECIFIED)
                    );
                }
            }
            _ = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                if let Some(address) = announcer.take_due(Instant::now()) {
                    announce(&socket, &server, address, &config.lan_ifname).await;
                }
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, SocketAddr::V4(from))) => {
                    let now = std::time::Instant::now();
                    if !server.admit(*from.ip(), now, control.rate_limit()) {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::info!(
                                "NAT-PMP/PCP: {from} is over its rate; {dropped} requests dropped so far"
                            );
                        }
                        continue;
                    }
                    match control.handle(&server, from, &buffer[..len], now) {
                        Outcome::Answer(answer) => {
                            if let Err(error) = socket.send_to(&answer, from).await {
                                tracing::debug!("NAT-PMP/PCP: answer to {from} failed: {error}");
                            }
                        }
                        Outcome::Dropped(why) => {
                            tracing::debug!("NAT-PMP/PCP: dropped a datagram from {from}: {why}");
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!("NAT-PMP/PCP on {}: receive failed: {error}", config.lan_ifname);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracing::info!("NAT-PMP/PCP on {}: stopped", config.lan_ifname);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_announcements_at_doubling_intervals_then_again_on_a_change() {
        let start = Instant::now();
        let mut announcer = Announcer::default();
        let wan = Ipv4Addr::new(203, 0, 113, 1);
        assert!(announcer.on_address(Some(wan), start));
        assert!(!announcer.on_address(Some(wan), start));
        let mut times = Vec::new();
        let mut now = start;
        while let Some(due) = announcer.next_due() {
            now = due;
            assert_eq!(announcer.take_due(now), Some(wan));
            times.push(now - start);
            assert!(times.len() <= 10);
        }
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750, 127750]
        );
        // Not due yet: nothing.
        let new = Ipv4Addr::new(203, 0, 113, 9);
        assert!(announcer.on_address(Some(new), now));
        assert_eq!(announcer.take_due(now), Some(new));
        assert_eq!(announcer.take_due(now), None);
        // Losing the address stops the round.
        assert!(!announcer.on_address(None, now));
        assert_eq!(announcer.next_due(), None);
    }
}
