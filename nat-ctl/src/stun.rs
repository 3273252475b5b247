//! The router's public address when its WAN address is not one (a private,
//! shared or reserved address: behind another NAT, such as an ISP's
//! carrier-grade NAT on 100.64/10), learned with a STUN Binding request
//! (RFC 8489, which obsoletes RFC 5389), and whether the upstream NAT lets
//! strangers' packets in (RFC 5780's filtering test), which decides
//! whether mappings made here can be reached from the Internet at all.
//! Messages are encoded and decoded by `stun_codec`.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::{
    Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId, define_attribute_enums,
    rfc5389::{
        attributes::{ErrorCode, MappedAddress, XorMappedAddress},
        methods::BINDING,
    },
    rfc5780::attributes::{ChangeRequest, OtherAddress},
};
use tokio::net::UdpSocket;

define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        ErrorCode,
        ChangeRequest,
        OtherAddress
    ]
);

/// RFC 8489 section 6.2.1: the first retransmission after 500 ms, each
/// later one after twice as long; three sends in all here, so that an
/// unanswered probe ends within 3.5 s.
const RTO: Duration = Duration::from_millis(500);
const SENDS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StunError {
    #[error("STUN server {server:?}: {reason}")]
    Server { server: String, reason: String },
    #[error("STUN server {server}: no answer to a Binding request in {secs:.1} s")]
    NoAnswer { server: SocketAddr, secs: f64 },
    #[error("STUN server {server}: {reason}")]
    BadAnswer { server: SocketAddr, reason: String },
    #[error("STUN: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether `addr` is reachable from the Internet as it is: not private
/// (RFC 1918), shared (RFC 6598, carrier-grade NAT), loopback, link-local,
/// documentation (RFC 5737), benchmarking (RFC 2544), reserved (240/4) or
/// otherwise special (0/8, 192.0.0/24). What miniupnpc 2.2+ checks before
/// it trusts an IGD.
pub fn is_public(addr: Ipv4Addr) -> bool {
    let [a, b, c, _] = addr.octets();
    !(addr.is_private()
        || addr.is_loopback()
        || addr.is_link_local()
        || addr.is_broadcast()
        || addr.is_documentation()
        || addr.is_unspecified()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

/// What a probe found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Where the server saw the request come from: the public address and
    /// the port the upstream NAT gave the probe's socket.
    pub mapped: SocketAddrV4,
    /// RFC 5780: whether the server's answer from its other address and
    /// port came through the upstream NAT (endpoint-independent filtering:
    /// strangers may send in). `None` when the server cannot tell (it has
    /// no other address: OTHER-ADDRESS missing).
    pub strangers_get_in: Option<bool>,
}

/// Resolves `server` ("host:port") to its first IPv4 address.
async fn resolve(server: &str) -> Result<SocketAddr, StunError> {
    let failed = |reason: String| StunError::Server {
        server: server.to_owned(),
        reason,
    };
    tokio::net::lookup_host(server)
        .await
        .map_err(|error| failed(format!("cannot be resolved: {error}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| failed("has no IPv4 address".to_owned()))
}

/// One Binding request (with CHANGE-REQUEST when `change` is given),
/// retransmitted as RFC 8489 says; the success answer's attributes, or
/// `None` when nothing came.
async fn binding(
    socket: &UdpSocket,
    server: SocketAddr,
    change: Option<ChangeRequest>,
) -> Result<Option<Message<Attribute>>, StunError> {
    let id = TransactionId::new(rand::random());
    let mut request = Message::<Attribute>::new(MessageClass::Request, BINDING, id);
    if let Some(change) = change {
        request.add_attribute(change);
    }
    let bad = |reason: String| StunError::BadAnswer { server, reason };
    let bytes = MessageEncoder::new()
        .encode_into_bytes(request)
        .map_err(|error| bad(error.to_string()))?;
    let mut wait = RTO;
    let mut buffer = [0u8; 1500];
    for _ in 0..SENDS {
        socket.send_to(&bytes, server).await?;
        let deadline = tokio::time::Instant::now() + wait;
        // Answers to other transactions (late retransmissions) and
        // garbage are skipped until the deadline.
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
            let Ok(decoded) =
                MessageDecoder::<Attribute>::new().decode_from_bytes(&buffer[..received?])
            else {
                continue;
            };
            let Ok(answer) = decoded else { continue };
            if answer.transaction_id() != id {
                continue;
            }
            return match answer.class() {
                MessageClass::SuccessResponse => Ok(Some(answer)),
                _ => Err(bad(match answer.get_attribute::<ErrorCode>() {
                    Some(code) => format!("error {} {}", code.code(), code.reason_phrase()),
                    None => "an error answer".to_owned(),
                })),
            };
        }
        wait *= 2;
    }
    Ok(None)
}

/// Asks `server` where the router's packets from `local` come from, and
/// tests whether strangers' packets get in through the upstream NAT.
pub async fn probe(server: &str, local: Ipv4Addr) -> Result<Probe, StunError> {
    let server = resolve(server).await?;
    // Any port: the answer says what the upstream NAT made of it. Not
    // connected: the filtering test's answer comes from another address.
    let socket = UdpSocket::bind(SocketAddr::from((local, 0))).await?;
    let Some(answer) = binding(&socket, server, None).await? else {
        return Err(StunError::NoAnswer {
            server,
            secs: (RTO * (2u32.pow(SENDS) - 1)).as_secs_f64(),
        });
    };
    let mapped = answer
        .get_attribute::<XorMappedAddress>()
        .map(XorMappedAddress::address)
        .or_else(|| {
            answer
                .get_attribute::<MappedAddress>()
                .map(MappedAddress::address)
        });
    let mapped = match mapped {
        Some(SocketAddr::V4(mapped)) => mapped,
        other => {
            return Err(StunError::BadAnswer {
                server,
                reason: format!("no IPv4 mapped address in the answer ({other:?})"),
            });
        }
    };
    let strangers_get_in = match answer.get_attribute::<OtherAddress>() {
        Some(other) if other.address().ip() != server.ip() => {
            let changed = binding(&socket, server, Some(ChangeRequest::new(true, true))).await;
            Some(matches!(changed, Ok(Some(_))))
        }
        _ => None,
    };
    Ok(Probe {
        mapped,
        strangers_get_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_means_what_miniupnpc_means() {
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "203.0.113.1",
            "198.51.100.1",
            "192.0.2.1",
            "198.18.0.1",
            "169.254.1.1",
            "127.0.0.1",
            "0.1.2.3",
            "240.0.0.1",
            "192.0.0.8",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "100.128.0.1",
            "100.63.255.255",
            "198.20.0.1",
            "8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    /// A Binding request answered by a server on this host: the mapped
    /// address is read back, and no OTHER-ADDRESS means no filtering test.
    #[tokio::test]
    async fn a_binding_request_learns_the_mapped_address() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let responder = std::thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            let (len, from) = server.recv_from(&mut buffer).unwrap();
            let request = MessageDecoder::<Attribute>::new()
                .decode_from_bytes(&buffer[..len])
                .unwrap()
                .unwrap();
            assert_eq!(request.method(), BINDING);
            let mut answer = Message::<Attribute>::new(
                MessageClass::SuccessResponse,
                BINDING,
                request.transaction_id(),
            );
            // As if an upstream NAT had made it 198.51.100.1:4000.
            answer.add_attribute(XorMappedAddress::new("198.51.100.1:4000".parse().unwrap()));
            let bytes = MessageEncoder::new().encode_into_bytes(answer).unwrap();
            server.send_to(&bytes, from).unwrap();
        });
        let probe = probe(&address.to_string(), Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
        responder.join().unwrap();
        assert_eq!(
            probe,
            Probe {
                mapped: "198.51.100.1:4000".parse().unwrap(),
                strangers_get_in: None,
            }
        );
    }
}
