//! NAT-PMP and PCP map/delete requests per second and latency: natctl
//! against miniupnpd (its NAT-PMP/PCP server, same comparison topology as
//! the IGD benchmark). One LAN client, one request in flight: each MAP is
//! answered before the next goes out, then each mapping is deleted.
use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    Scale,
    kernel::KernelLab,
    miniupnpd::{MINIUPNPD_EXT_LABEL, MINIUPNPD_RULESET, MiniUpnpd},
    round3, summary_ms, target,
};
use crate::{
    lab::Lab,
    netns::Netns,
    plan::{LAN_HOST, ROUTER_LAN},
    traffic::uninterrupted,
    wait_for,
};

/// External (and internal) ports the mappings use: above the IGD
/// benchmark's.
const BASE_PORT: u16 = 30000;
const WARMUP: u16 = 20;
/// A request unanswered this long is sent again (three times at most).
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Pmp,
    Pcp,
}

impl Proto {
    fn label(self) -> &'static str {
        match self {
            Proto::Pmp => "natpmp",
            Proto::Pcp => "pcp",
        }
    }

    /// A TCP MAP request for `port`, `lifetime` 0 deleting it.
    fn request(self, port: u16, lifetime: u32) -> Vec<u8> {
        match self {
            Proto::Pmp => {
                let mut out = vec![0, 2, 0, 0];
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&(if lifetime == 0 { 0 } else { port }).to_be_bytes());
                out.extend_from_slice(&lifetime.to_be_bytes());
                out
            }
            Proto::Pcp => {
                let mut out = vec![2, 1, 0, 0];
                out.extend_from_slice(&lifetime.to_be_bytes());
                out.extend_from_slice(&LAN_HOST.to_ipv6_mapped().octets());
                out.extend_from_slice(&[0x5a; 12]);
                out.extend_from_slice(&[6, 0, 0, 0]);
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&[0; 16]);
                out
            }
        }
    }

    /// The result code of an answer to [`Proto::request`].
    fn result(self, answer: &[u8]) -> Option<u16> {
        match self {
            Proto::Pmp if answer.len() == 16 && answer[1] == 130 => {
                Some(u16::from_be_bytes([answer[2], answer[3]]))
            }
            Proto::Pcp if answer.len() >= 60 && answer[..2] == [2, 0x81] => {
                Some(u16::from(answer[3]))
            }
            _ => None,
        }
    }
}

/// One request, answered: its latency, or an error naming what went wrong.
fn call(socket: &UdpSocket, to: SocketAddr, proto: Proto, request: &[u8]) -> Result<Duration> {
    let mut buffer = [0u8; 1200];
    for _ in 0..3 {
        let started = Instant::now();
        socket.send_to(request, to)?;
        while let Ok(len) = uninterrupted(|| socket.recv(&mut buffer)) {
            if let Some(result) = proto.result(&buffer[..len]) {
                if result != 0 {
                    bail!("{} answered result code {result}", proto.label());
                }
                return Ok(started.elapsed());
            }
        }
    }
    bail!("{} request to {to}: no answer in 3 tries", proto.label())
}

/// `n` MAPs then `n` deletes from the LAN host: (map, delete) latencies
/// and each phase's elapsed time.
fn measure(
    lan: &Netns,
    proto: Proto,
    n: u16,
) -> Result<(Vec<Duration>, Duration, Vec<Duration>, Duration)> {
    lan.spawn(move || -> Result<_> {
        let socket = UdpSocket::bind((LAN_HOST, 0))?;
        socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let to = SocketAddr::from((ROUTER_LAN, 5351));
        let run = |lifetime: u32| -> Result<(Vec<Duration>, Duration)> {
            let started = Instant::now();
            let mut samples = Vec::with_capacity(usize::from(n));
            for k in 0..n {
                let request = proto.request(BASE_PORT + k, lifetime);
                samples.push(call(&socket, to, proto, &request)?);
            }
            Ok((samples, started.elapsed()))
        };
        let (maps, map_time) = run(3600)?;
        let (deletes, delete_time) = run(0)?;
        Ok((maps, map_time, deletes, delete_time))
    })
    .join()
    .expect("benchmark thread panicked")
}

fn phase(samples: &[Duration], elapsed: Duration) -> Value {
    json!({
        "rps": round3(samples.len() as f64 / elapsed.as_secs_f64()),
        "latency": summary_ms(samples),
    })
}

fn wait_answers(lan: &Netns, what: &str) -> Result<()> {
    wait_for(what, Duration::from_secs(15), || {
        lan.spawn(|| -> Result<bool> {
            let socket = UdpSocket::bind((LAN_HOST, 0))?;
            socket.set_read_timeout(Some(Duration::from_millis(300)))?;
            socket.send_to(&[0, 0], (ROUTER_LAN, 5351))?;
            let mut buffer = [0u8; 16];
            Ok(socket.recv(&mut buffer).is_ok_and(|len| len == 12))
        })
        .join()
        .ok()
        .and_then(Result::ok)
        .filter(|&answered| answered)
    })
    .map(drop)
}

pub fn run(scale: &Scale) -> Result<Value> {
    let n: u16 = if scale.quick { 50 } else { 500 };
    let rounds = if scale.quick { 1 } else { 3 };
    crate::progress!("natpmp: starting the natctl lab");
    let lab = Lab::start_with_config(
        // One client makes all 500 mappings: its quota (128 by default)
        // above that.
        "[upnp]\nenabled = false\nmax_mappings_per_client = 4096\n[natpmp]\nrate_limit = 1000000\n",
    )?;
    wait_answers(&lab.lan, "natctl's NAT-PMP server")
        .map_err(|error| anyhow::anyhow!("{error}: {}", lab.natctl_log()))?;
    crate::progress!("natpmp: starting the nftables topology with miniupnpd (NAT-PMP/PCP on)");
    let kernel = KernelLab::start(MINIUPNPD_RULESET, Some(MINIUPNPD_EXT_LABEL), true)?;
    let _miniupnpd = MiniUpnpd::start_with(&kernel.router, true)?;
    wait_answers(&kernel.lan, "miniupnpd's NAT-PMP server")?;
    let servers = [("natctl", &lab.lan), ("miniupnpd", &kernel.lan)];
    let mut result = serde_json::Map::new();
    for proto in [Proto::Pmp, Proto::Pcp] {
        for (label, lan) in servers {
            measure(lan, proto, WARMUP).with_context(|| format!("{label} warm-up"))?;
        }
        let mut by_server = serde_json::Map::new();
        // Who goes first alternates by round.
        let mut collected: Vec<[Vec<Duration>; 4]> = vec![Default::default(), Default::default()];
        let mut elapsed = [[Duration::ZERO; 2]; 2];
        for round in 0..rounds {
            for turn in 0..2 {
                let i = (turn + round) % 2;
                let (label, lan) = servers[i];
                crate::progress!(
                    "natpmp: {} round {}/{rounds} {label}: {n} MAP, {n} delete",
                    proto.label(),
                    round + 1
                );
                let (maps, map_time, deletes, delete_time) =
                    measure(lan, proto, n).with_context(|| format!("{label} {}", proto.label()))?;
                collected[i][0].extend(maps);
                collected[i][1].extend(deletes);
                elapsed[i][0] += map_time;
                elapsed[i][1] += delete_time;
            }
        }
        for (i, (label, _)) in servers.iter().enumerate() {
            by_server.insert(
                (*label).into(),
                json!({
                    "map": phase(&collected[i][0], elapsed[i][0]),
                    "delete": phase(&collected[i][1], elapsed[i][1]),
                }),
            );
        }
        result.insert(proto.label().into(), Value::Object(by_server));
    }
    result.insert("requests_per_phase".into(), json!(n));
    result.insert("rounds".into(), json!(rounds));
    Ok(Value::Object(result))
}

/// natctl's map and delete rates at least twice miniupnpd's, per protocol.
pub fn targets(natpmp: &Value) -> Vec<Value> {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = Vec::new();
    for proto in ["natpmp", "pcp"] {
        for phase in ["map", "delete"] {
            let ours = &natpmp[proto]["natctl"][phase];
            let theirs = &natpmp[proto]["miniupnpd"][phase];
            let ratio = f(&ours["rps"]) / f(&theirs["rps"]);
            let pass = ratio >= 2.0;
            let why = (!pass).then(|| {
                format!(
                    "natctl {:.0} req/s (p50 {:.3} ms, p99 {:.3} ms) vs miniupnpd {:.0} req/s (p50 {:.3} ms, p99 {:.3} ms): {ratio:.2}x",
                    f(&ours["rps"]),
                    f(&ours["latency"]["p50_ms"]),
                    f(&ours["latency"]["p99_ms"]),
                    f(&theirs["rps"]),
                    f(&theirs["latency"]["p50_ms"]),
                    f(&theirs["latency"]["p99_ms"]),
                )
            });
            out.push(target(
                &format!("{proto}_{phase}_rps_vs_miniupnpd"),
                &format!("natctl {proto} {phase} requests/s >= 2x miniupnpd's (one client, one request in flight)"),
                json!({
                    "ratio": round3(ratio),
                    "natctl_rps": ours["rps"],
                    "miniupnpd_rps": theirs["rps"],
                    "natctl_p99_ms": ours["latency"]["p99_ms"],
                    "miniupnpd_p99_ms": theirs["latency"]["p99_ms"],
                }),
                pass,
                why,
            ));
        }
    }
    out
}
