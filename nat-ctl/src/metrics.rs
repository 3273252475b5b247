//! The Prometheus endpoint (`[metrics] listen`): the daemon's figures,
//! taken afresh at every scrape and encoded in the OpenMetrics text format
//! by prometheus-client. Nothing is kept between scrapes: the datapath's
//! counters are the source of truth.
use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};

use crate::connections::{Connections, DRAIN_DEADLINE};

/// The figures of one scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Each datapath counter: its label, packets and bytes.
    pub counters: Vec<(String, u64, u64)>,
    pub rules: Vec<RuleFigures>,
    /// Rules by type (STATIC, UPNP, NATPMP, PCP).
    pub rules_by_type: Vec<(String, u64)>,
    pub dynamic_mappings: u64,
    pub last_sweep_secs: Option<f64>,
    pub uptime_secs: u64,
    /// The relay of reassembled datagrams (`crate::relay`): each figure by
    /// name.
    pub relay: Vec<(String, u64)>,
    /// Client requests: protocol, action, result, how many.
    pub requests: Vec<(String, String, String, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct RuleFigures {
    pub name: String,
    pub kind: String,
    pub inbound_packets: u64,
    pub inbound_bytes: u64,
    pub outbound_packets: u64,
    pub outbound_bytes: u64,
}

/// Where a scrape's figures come from: the daemon.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> Result<Snapshot, String>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabel {
    counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    r#type: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: String,
    action: String,
    result: String,
}

/// The snapshot in the OpenMetrics text format.
pub fn encode_snapshot(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("natctl");
    let packets = Family::<CounterLabel, Counter>::default();
    let bytes = Family::<CounterLabel, Counter>::default();
    for (counter, p, b) in &snapshot.counters {
        let label = CounterLabel {
            counter: counter.clone(),
        };
        packets.get_or_create(&label).inc_by(*p);
        bytes.get_or_create(&label).inc_by(*b);
    }
    registry.register(
        "datapath_packets",
        "Packets the datapath counted, by counter (see natctl stats)",
        packets,
    );
    registry.register(
        "datapath_bytes",
        "Bytes the datapath counted, by counter",
        bytes,
    );

    let rule_packets = Family::<RuleLabels, Counter>::default();
    let rule_bytes = Family::<RuleLabels, Counter>::default();
    for rule in &snapshot.rules {
        for (direction, p, b) in [
            ("in", rule.inbound_packets, rule.inbound_bytes),
            ("out", rule.outbound_packets, rule.outbound_bytes),
        ] {
            let labels = RuleLabels {
                rule: rule.name.clone(),
                r#type: rule.kind.clone(),
                direction: direction.to_owned(),
            };
            rule_packets.get_or_create(&labels).inc_by(p);
            rule_bytes.get_or_create(&labels).inc_by(b);
        }
    }
    registry.register(
        "rule_packets",
        "Packets through each forwarding rule, by direction",
        rule_packets,
    );
    registry.register(
        "rule_bytes",
        "Bytes through each forwarding rule, by direction",
        rule_bytes,
    );

    let rules = Family::<TypeLabel, Gauge>::default();
    for (kind, count) in &snapshot.rules_by_type {
        rules
            .get_or_create(&TypeLabel {
                r#type: kind.clone(),
            })
            .set(*count as i64);
    }
    registry.register(
        "rules",
        "Forwarding rules and client mappings, by type",
        rules,
    );
    let dynamic = Gauge::<i64>::default();
    dynamic.set(snapshot.dynamic_mappings as i64);
    registry.register(
        "dynamic_mappings",
        "Dynamic mappings the datapath holds",
        dynamic,
    );
    if let Some(secs) = snapshot.last_sweep_secs {
        let sweep = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        sweep.set(secs);
        registry.register(
            "last_sweep_seconds",
            "How long the last aging sweep took",
            sweep,
        );
    }
    let uptime = Gauge::<i64>::default();
    uptime.set(snapshot.uptime_secs as i64);
    registry.register("uptime_seconds", "How long the daemon has run", uptime);

    let relay = Family::<CounterLabel, Counter>::default();
    for (figure, value) in &snapshot.relay {
        relay
            .get_or_create(&CounterLabel {
                counter: figure.clone(),
            })
            .inc_by(*value);
    }
    registry.register(
        "relay",
        "The relay of datagrams the kernel reassembled for the datapath \
         (fragments out of order): relayed, relayed_bytes, relayed_tcp, relayed_icmp, \
         dropped_* by reason",
        relay,
    );

    let requests = Family::<RequestLabels, Counter>::default();
    for (protocol, action, result, count) in &snapshot.requests {
        requests
            .get_or_create(&RequestLabels {
                protocol: protocol.clone(),
                action: action.clone(),
                result: result.clone(),
            })
            .inc_by(*count);
    }
    registry.register(
        "client_requests",
        "UPnP, NAT-PMP and PCP requests from LAN hosts, by action and result",
        requests,
    );

    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from valid parts")
}

fn respond(source: &dyn Source, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    if request.uri().path() != "/metrics" {
        return answer(
            StatusCode::NOT_FOUND,
            "text/plain",
            "the metrics are at /metrics\n".into(),
        );
    }
    match source.snapshot() {
        Ok(snapshot) => answer(StatusCode::OK, CONTENT_TYPE, encode_snapshot(&snapshot)),
        Err(error) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{error}\n"),
        ),
    }
}

/// Serves `GET /metrics` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn Source>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = Connections::new(shutdown.clone());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!("metrics accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let source = source.clone();
        let service = hyper::service::service_fn(move |request| {
            let source = source.clone();
            async move {
                let response = tokio::task::block_in_place(|| respond(source.as_ref(), &request));
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        connections.spawn(connection, Some(CONNECTION_DEADLINE));
    }
    drop(listener);
    connections.drain(DRAIN_DEADLINE).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_encodes_as_openmetrics() {
        let snapshot = Snapshot {
            counters: vec![("snat".into(), 10, 600), ("dnat".into(), 4, 240)],
            rules: vec![RuleFigures {
                name: "ssh".into(),
                kind: "STATIC".into(),
                inbound_packets: 3,
                inbound_bytes: 180,
                ..RuleFigures::default()
            }],
            rules_by_type: vec![("STATIC".into(), 1), ("UPNP".into(), 2)],
            dynamic_mappings: 5,
            last_sweep_secs: Some(0.25),
            uptime_secs: 42,
            relay: vec![("relayed".into(), 2), ("dropped_rate_limited".into(), 1)],
            requests: vec![("UPnP".into(), "AddPortMapping".into(), "ok".into(), 7)],
        };
        let text = encode_snapshot(&snapshot);
        for line in [
            "natctl_datapath_packets_total{counter=\"snat\"} 10",
            "natctl_datapath_bytes_total{counter=\"dnat\"} 240",
            "natctl_rule_packets_total{rule=\"ssh\",type=\"STATIC\",direction=\"in\"} 3",
            "natctl_rules{type=\"UPNP\"} 2",
            "natctl_dynamic_mappings 5",
            "natctl_last_sweep_seconds 0.25",
            "natctl_uptime_seconds 42",
            "natctl_relay_total{counter=\"relayed\"} 2",
            "natctl_relay_total{counter=\"dropped_rate_limited\"} 1",
            "natctl_client_requests_total{protocol=\"UPnP\",action=\"AddPortMapping\",result=\"ok\"} 7",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|got| got == line),
                "{line} not in:\n{text}"
            );
        }
    }
}
