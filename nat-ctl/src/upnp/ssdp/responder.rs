//! Which searches get answered, and when: the source checks, the token
//! buckets per source and for all of them, and the responses waiting for
//! their MX delay.
use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use ipnet::Ipv4Net;
use rand::Rng;
use tokio::time::Instant;

use super::{
    SsdpConfig, SsdpError,
    message::{matches, parse_search, quote},
};
use crate::upnp::{Identity, IgdVersion};

/// Responses scheduled and not yet sent, across all searches.
pub const MAX_PENDING: usize = 64;
/// Sources with a token bucket; beyond this the stalest is forgotten.
const MAX_SOURCES: usize = 256;
const PER_SOURCE_RATE: f64 = 10.0;
const PER_SOURCE_BURST: f64 = 10.0;
/// A LAN host can spoof many sources inside the LAN prefix; this caps what
/// all of them together can make us send.
const GLOBAL_RATE: f64 = 50.0;
const GLOBAL_BURST: f64 = 50.0;

/// Why a datagram got no answer; logged at debug level only.
#[derive(Debug)]
pub(super) enum Dropped {
    ForeignSource,
    OwnAddress,
    /// Answering privileged ports would let a spoofed search aim us at
    /// echo-like services.
    PrivilegedPort,
    NotSearch,
    Malformed(SsdpError),
    MulticastWithoutMx,
    NoMatch(String),
    SourceRateLimited,
    GlobalRateLimited,
    QueueFull {
        wanted: usize,
    },
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::ForeignSource => f.write_str("source outside the LAN prefix"),
            Dropped::OwnAddress => f.write_str("source is the gateway itself"),
            Dropped::PrivilegedPort => f.write_str("source port below 1024"),
            Dropped::NotSearch => f.write_str("not an M-SEARCH"),
            Dropped::Malformed(error) => write!(f, "malformed: {error}"),
            Dropped::MulticastWithoutMx => f.write_str("multicast search without MX"),
            Dropped::NoMatch(st) => write!(f, "nothing of ours matches ST {st:?}"),
            Dropped::SourceRateLimited => f.write_str("source over its search rate"),
            Dropped::GlobalRateLimited => f.write_str("all sources over the search rate"),
            Dropped::QueueFull { wanted } => write!(
                f,
                "{wanted} responses do not fit in the {MAX_PENDING} pending"
            ),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pending {
    due: Instant,
    pub(super) to: SocketAddrV4,
    pub(super) st: String,
    pub(super) usn: String,
}

/// The search-answering state, apart from any socket so that tests can
/// drive it with made-up datagrams and times.
pub(super) struct Responder {
    lan_addr: Ipv4Addr,
    lan_net: Ipv4Net,
    identity: Identity,
    igd: IgdVersion,
    pending: Vec<Pending>,
    sources: HashMap<Ipv4Addr, Bucket>,
    global: Bucket,
    pub(super) dropped: u64,
}

impl Responder {
    pub(super) fn new(config: &SsdpConfig, now: Instant) -> Self {
        Self {
            lan_addr: config.lan_addr,
            lan_net: config.lan_net,
            identity: config.identity.clone(),
            igd: config.igd,
            pending: Vec::with_capacity(MAX_PENDING),
            sources: HashMap::with_capacity(MAX_SOURCES),
            global: Bucket::full(GLOBAL_BURST, now),
            dropped: 0,
        }
    }

    /// Handles one received datagram: schedules its responses, or says why
    /// it gets none.
    pub(super) fn on_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        rng: &mut impl Rng,
    ) -> Result<usize, Dropped> {
        let SocketAddr::V4(from) = from else {
            return Err(Dropped::ForeignSource);
        };
        let ip = *from.ip();
        if ip == self.lan_addr {
            return Err(Dropped::OwnAddress);
        }
        let subnet_broadcast = self.lan_net.prefix_len() < 31
            && (ip == self.lan_net.network() || ip == self.lan_net.broadcast());
        if !self.lan_net.contains(&ip) || subnet_broadcast {
            return Err(Dropped::ForeignSource);
        }
        if from.port() < 1024 {
            return Err(Dropped::PrivilegedPort);
        }
        // Other devices' NOTIFYs and responses reach the same port all the
        // time; they are not errors worth a log line each.
        if !datagram.starts_with(b"M-SEARCH ") {
            return Err(Dropped::NotSearch);
        }
        let search = parse_search(datagram).map_err(Dropped::Malformed)?;
        let mx = match (search.mx, search.is_multicast()) {
            (None, true) => return Err(Dropped::MulticastWithoutMx),
            (mx, _) => mx.unwrap_or(0),
        };
        let answers = matches(&search.st, &self.identity, self.igd);
        if answers.is_empty() {
            return Err(Dropped::NoMatch(quote(&search.st)));
        }
        // Searches that match nothing cost nothing to ignore, so only the
        // ones we would answer are charged.
        if !self.take_source_token(ip, now) {
            return Err(Dropped::SourceRateLimited);
        }
        if !self.global.take(now, GLOBAL_RATE, GLOBAL_BURST) {
            return Err(Dropped::GlobalRateLimited);
        }
        // All or nothing: a partial answer to ssdp:all would look like a
        // different device tree.
        if self.pending.len() + answers.len() > MAX_PENDING {
            return Err(Dropped::QueueFull {
                wanted: answers.len(),
            });
        }
        let window_ms = u64::from(mx) * 1000;
        let scheduled = answers.len();
        for (st, usn) in answers {
            // UDA spreads responses over [0, MX) so that many devices do not
            // answer a multicast search in the same instant.
            let delay = if window_ms == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(rng.random_range(0..window_ms))
            };
            self.pending.push(Pending {
                due: now + delay,
                to: from,
                st,
                usn,
            });
        }
        Ok(scheduled)
    }

    fn take_source_token(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            // A bucket that has refilled is the same as no bucket.
            let refill = Duration::from_secs_f64(PER_SOURCE_BURST / PER_SOURCE_RATE);
            self.sources
                .retain(|_, bucket| now.saturating_duration_since(bucket.last) < refill);
            if self.sources.len() >= MAX_SOURCES
                && let Some(stalest) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.last)
                    .map(|(ip, _)| *ip)
            {
                self.sources.remove(&stalest);
            }
        }
        self.sources
            .entry(ip)
            .or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now))
            .take(now, PER_SOURCE_RATE, PER_SOURCE_BURST)
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|pending| pending.due).min()
    }

    /// Removes and returns the responses due by `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Pending> {
        let (due, later) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|pending| pending.due <= now);
        self.pending = later;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures::*, *};

    fn from(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(192, 168, 77, last), port))
    }

    #[test]
    fn responder_filters_sources_and_schedules_within_mx() {
        let now = Instant::now();
        let mut responder = Responder::new(&config(), now);
        let mut rng = rand::rng();
        let all = search("ssdp:all", Some("3"));

        for (source, expected) in [
            (SocketAddr::from(([10, 0, 0, 2], 50000)), "ForeignSource"),
            (from(1, 50000), "OwnAddress"),
            (from(0, 50000), "ForeignSource"),
            (from(255, 50000), "ForeignSource"),
            (from(2, 7), "PrivilegedPort"),
        ] {
            let outcome = responder.on_datagram(source, &all, now, &mut rng);
            assert!(
                format!("{outcome:?}").contains(expected),
                "{source}: {outcome:?}"
            );
        }
        assert!(matches!(
            responder.on_datagram(from(2, 50000), &search("ssdp:all", None), now, &mut rng),
            Err(Dropped::MulticastWithoutMx)
        ));
        assert!(matches!(
            responder.on_datagram(from(2, 50000), b"NOTIFY * HTTP/1.1\r\n\r\n", now, &mut rng),
            Err(Dropped::NotSearch)
        ));
        assert!(matches!(
            responder.on_datagram(
                from(2, 50000),
                &search("urn:schemas-upnp-org:device:MediaServer:1", Some("1")),
                now,
                &mut rng
            ),
            Err(Dropped::NoMatch(_))
        ));
        assert!(responder.pending.is_empty());

        assert_eq!(
            responder
                .on_datagram(from(2, 50000), &all, now, &mut rng)
                .unwrap(),
            9
        );
        assert!(responder.pending.iter().all(|pending| {
            pending.due >= now
                && pending.due < now + Duration::from_secs(3)
                && pending.to == SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 2), 50000)
        }));
        let next = responder.next_due().unwrap();
        assert!(
            responder
                .take_due(now - Duration::from_millis(1))
                .is_empty()
        );
        let due = responder.take_due(next);
        assert!(!due.is_empty());
        assert_eq!(
            responder.take_due(now + Duration::from_secs(3)).len(),
            9 - due.len()
        );
        assert_eq!(responder.next_due(), None);

        // A unicast search without MX is answered at once.
        let unicast = b"M-SEARCH * HTTP/1.1\r\nHOST: 192.168.77.1:1900\r\nMAN: \"ssdp:discover\"\r\nST: upnp:rootdevice\r\n\r\n";
        assert_eq!(
            responder
                .on_datagram(from(3, 40000), unicast, now, &mut rng)
                .unwrap(),
            1
        );
        assert_eq!(responder.take_due(now).len(), 1);
    }

    #[test]
    fn responder_rate_limits_per_source() {
        let mut now = Instant::now();
        let mut responder = Responder::new(&config(), now);
        let mut rng = rand::rng();
        let root = search("upnp:rootdevice", Some("1"));
        for _ in 0..PER_SOURCE_BURST as usize {
            responder
                .on_datagram(from(2, 50000), &root, now, &mut rng)
                .unwrap();
            responder.take_due(now + Duration::from_secs(1));
        }
        assert!(matches!(
            responder.on_datagram(from(2, 50000), &root, now, &mut rng),
            Err(Dropped::SourceRateLimited)
        ));
        // Another source is not affected, and the first recovers in time.
        responder
            .on_datagram(from(3, 50000), &root, now, &mut rng)
            .unwrap();
        now += Duration::from_millis(200);
        responder
            .on_datagram(from(2, 50001), &root, now, &mut rng)
            .unwrap();
    }

    #[test]
    fn responder_bounds_pending_sources_and_total_rate() {
        let now = Instant::now();
        let mut responder = Responder::new(&config(), now);
        let mut rng = rand::rng();
        let all = search("ssdp:all", Some("5"));
        let fits = MAX_PENDING / 9;
        for i in 0..fits {
            responder
                .on_datagram(from(10 + i as u8, 50000), &all, now, &mut rng)
                .unwrap();
        }
        assert!(matches!(
            responder.on_datagram(from(100, 50000), &all, now, &mut rng),
            Err(Dropped::QueueFull { wanted: 9 })
        ));
        assert_eq!(responder.pending.len(), fits * 9);
        assert!(responder.pending.len() <= MAX_PENDING);

        // Spoofing many LAN sources runs into the global bucket.
        let mut responder = Responder::new(&config(), now);
        let root = search("upnp:rootdevice", Some("1"));
        let mut accepted = 0;
        let mut limited = 0;
        for i in 0..200u32 {
            let source = SocketAddr::from((Ipv4Addr::from(0xc0a8_4d00 + 2 + i % 250), 50000));
            match responder.on_datagram(source, &root, now, &mut rng) {
                Ok(_) => accepted += 1,
                Err(Dropped::GlobalRateLimited) => limited += 1,
                Err(other) => panic!("{other}"),
            }
            responder.take_due(now + Duration::from_secs(1));
        }
        assert_eq!(accepted, GLOBAL_BURST as usize);
        assert_eq!(limited, 200 - accepted);

        // The bucket map stays bounded whatever the number of sources.
        let mut responder = Responder::new(&config(), now);
        let big = Responder {
            lan_net: "10.0.0.0/8".parse().unwrap(),
            lan_addr: Ipv4Addr::new(10, 0, 0, 1),
            ..responder
        };
        responder = big;
        for i in 0..2000u32 {
            let at = now + Duration::from_millis(u64::from(i));
            let source = SocketAddr::from((Ipv4Addr::from(0x0a00_0100 + i), 50000));
            let _ = responder.on_datagram(source, &root, at, &mut rng);
            responder.take_due(at + Duration::from_secs(1));
            assert!(responder.sources.len() <= MAX_SOURCES);
        }
    }
}
