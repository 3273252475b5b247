//! The reply-to-forwarding delay: how long after an IGD's SOAP reply to
//! AddPortMapping the mapping forwards a WAN host's probe.
use std::{
    net::{SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    soap::{Action, Client},
    summary_ms,
    upnp::{LEASE, endpoint},
};
use crate::{
    netns::Netns,
    plan::{LAN_HOST, ROUTER_WAN, WAN_HOST},
    traffic::uninterrupted,
};

/// Ports of the forwarding-delay mappings: 12000 + k, below the router's
/// ephemeral range (from 32768), which clients may not map.
const PROBE_BASE: u16 = 12000;
const PROBE_INTERVAL: Duration = Duration::from_micros(100);
/// A mapping that does not forward within this long counts as failed.
const PROBE_LIMIT: Duration = Duration::from_secs(2);
const PROBE_MAGIC: u32 = 0x5550_4e50;

/// What the forwarding-delay prober on the WAN host is told: probe this
/// port until `stop`.
struct ProbeOrder {
    port: u16,
    stop: Arc<AtomicBool>,
    done: mpsc::Sender<u32>,
}

/// The WAN-side prober: for each order, a fresh socket (so that no
/// conntrack entry from an earlier probe can stand in the way) sends a
/// probe to ROUTER_WAN:port every PROBE_INTERVAL until told to stop, at
/// most PROBE_LIMIT long. Each probe carries its sequence number and send
/// time (nanoseconds since `epoch`).
fn prober(
    wan: &Netns,
    epoch: Instant,
) -> (
    mpsc::Sender<ProbeOrder>,
    std::thread::JoinHandle<Result<()>>,
) {
    let (orders, inbox) = mpsc::channel::<ProbeOrder>();
    let handle = wan.spawn(move || {
        // Sleeps of 100 µs, not 150: the default timer slack is 50 µs.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
        while let Ok(order) = inbox.recv() {
            let socket = UdpSocket::bind(SocketAddrV4::new(WAN_HOST, 0))?;
            let to = SocketAddrV4::new(ROUTER_WAN, order.port);
            let start = Instant::now();
            let mut sent = 0u32;
            let mut next = start;
            while !order.stop.load(Ordering::Acquire) && start.elapsed() < PROBE_LIMIT {
                let mut payload = [0u8; 16];
                payload[..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
                payload[4..8].copy_from_slice(&sent.to_be_bytes());
                let at = epoch.elapsed().as_nanos() as u64;
                payload[8..].copy_from_slice(&at.to_be_bytes());
                socket.send_to(&payload, to)?;
                sent += 1;
                next += PROBE_INTERVAL;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
            let _ = order.done.send(sent);
        }
        Ok(())
    });
    (orders, handle)
}

/// One mapping's reply-to-forwarding measurement.
struct Delay {
    /// 200 reply read -> first probe received by the LAN host.
    received: Duration,
    /// 200 reply read -> that probe sent by the WAN host.
    sent: Duration,
    /// Probes sent (and lost) before the first that came through.
    lost: u32,
}

/// For each port: bind the LAN host's UDP socket, AddPortMapping, and the
/// moment the reply is read start probing from the WAN host until a probe
/// arrives; then DeletePortMapping.
pub(super) fn forwarding_delay(lan: &Netns, wan: &Netns, count: usize) -> Result<Value> {
    let epoch = Instant::now();
    let (orders, prober) = prober(wan, epoch);
    let endpoint = endpoint(lan)?;
    let measured = lan
        .spawn(move || -> Result<(Vec<Delay>, Vec<u16>)> {
            let mut delays = Vec::new();
            let mut failed = Vec::new();
            for k in 0..count {
                let port = PROBE_BASE + k as u16;
                let socket = UdpSocket::bind(SocketAddrV4::new(LAN_HOST, port))?;
                socket.set_read_timeout(Some(PROBE_LIMIT + Duration::from_millis(500)))?;
                let mut client = Client::new(endpoint.clone(), false);
                client.call(&Action::Add {
                    port,
                    client: LAN_HOST,
                    lease: LEASE,
                })?;
                let replied = epoch.elapsed();
                let stop = Arc::new(AtomicBool::new(false));
                let (done, sent_count) = mpsc::channel();
                orders
                    .send(ProbeOrder {
                        port,
                        stop: stop.clone(),
                        done,
                    })
                    .context("the prober is gone")?;
                let mut buffer = [0u8; 64];
                let outcome = loop {
                    match uninterrupted(|| socket.recv_from(&mut buffer)) {
                        Ok((16, _)) if buffer[..4] == PROBE_MAGIC.to_be_bytes() => {
                            let received = epoch.elapsed();
                            let seq = u32::from_be_bytes(buffer[4..8].try_into().unwrap());
                            let at = u64::from_be_bytes(buffer[8..16].try_into().unwrap());
                            break Some(Delay {
                                received: received.saturating_sub(replied),
                                sent: Duration::from_nanos(at).saturating_sub(replied),
                                lost: seq,
                            });
                        }
                        Ok(_) => continue,
                        Err(_) => break None,
                    }
                };
                stop.store(true, Ordering::Release);
                let _ = sent_count.recv_timeout(PROBE_LIMIT + Duration::from_secs(1));
                match outcome {
                    Some(delay) => delays.push(delay),
                    None => failed.push(port),
                }
                Client::new(endpoint.clone(), false).call(&Action::Delete { port })?;
            }
            drop(orders);
            Ok((delays, failed))
        })
        .join()
        .expect("forwarding-delay thread panicked");
    let prober_result = prober.join().expect("prober panicked");
    let (delays, failed) = measured?;
    prober_result?;
    if delays.is_empty() {
        bail!(
            "not one of {count} mappings forwarded a probe within {PROBE_LIMIT:?}: the IGD's mappings do not reach the datapath"
        );
    }
    let received: Vec<Duration> = delays.iter().map(|d| d.received).collect();
    let sent: Vec<Duration> = delays.iter().map(|d| d.sent).collect();
    let lost: Vec<u32> = delays.iter().map(|d| d.lost).collect();
    Ok(json!({
        "mappings": count,
        "forwarded": delays.len(),
        "not_forwarded_within_2s": failed,
        "reply_to_first_probe_received": summary_ms(&received),
        "reply_to_that_probe_sent": summary_ms(&sent),
        "probes_lost_before_it": {
            "max": lost.iter().max(),
            "mappings_with_any_lost": lost.iter().filter(|l| **l > 0).count(),
        },
        "probe_interval_us": PROBE_INTERVAL.as_micros() as u64,
    }))
}
