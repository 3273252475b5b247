//! natctl as a router service (issue 15): the Prometheus endpoint, and the
//! configuration file the daemon and its clients share.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use nat_tests::lab::{LAN_SERVER, Lab, WAN_HOST};

const METRICS: &str = "127.0.0.1:9469";

/// A scrape's samples: (metric name, sorted labels) -> value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// `GET /metrics` from inside the router's namespace.
fn scrape(lab: &Lab) -> Result<String> {
    lab.router
        .spawn(|| {
            let mut stream = TcpStream::connect(METRICS).context("connecting to the metrics")?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(
                b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .join()
        .expect("thread panicked")
}

/// The samples of a scrape, parsed by a real Prometheus text parser.
fn samples(response: &str) -> Samples {
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a scrape Prometheus parses");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            ((sample.metric, labels), value)
        })
        .collect()
}

fn counter(samples: &Samples, name: &str) -> f64 {
    samples
        .get(&(
            "natctl_datapath_packets_total".to_owned(),
            vec![("counter".to_owned(), name.to_owned())],
        ))
        .copied()
        .unwrap_or_else(|| panic!("no datapath counter {name}"))
}

#[test]
fn metrics_are_scraped_during_traffic_and_agree_with_natctl_stats() {
    let lab = Lab::start_with_config(&format!("[metrics]\nlisten = \"{METRICS}\"\n")).unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let server = lab
        .lan
        .spawn(|| Ok(TcpListener::bind((LAN_SERVER, 8000))?))
        .join()
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(lab.wan_tcp_reaches(8080, &server).ip(), WAN_HOST);
    }

    let scraped = samples(&scrape(&lab).unwrap());
    let stats = lab.counters().unwrap();
    for name in ["forwarded", "snat", "wan_rx", "lan_rx"] {
        assert_eq!(
            counter(&scraped, name),
            stats[name] as f64,
            "{name}: the scrape and natctl stats disagree"
        );
    }
    assert!(counter(&scraped, "forwarded") >= 3.0, "{scraped:?}");
    // The rule's own hits, and the rule counted by its type.
    let rule_in = (
        "natctl_rule_packets_total".to_owned(),
        vec![
            ("direction".to_owned(), "in".to_owned()),
            ("rule".to_owned(), "web".to_owned()),
            ("type".to_owned(), "STATIC".to_owned()),
        ],
    );
    assert!(scraped[&rule_in] >= 3.0, "{scraped:?}");
    let rules = (
        "natctl_rules".to_owned(),
        vec![("type".to_owned(), "STATIC".to_owned())],
    );
    assert_eq!(scraped[&rules], 1.0);
    assert!(scraped.contains_key(&("natctl_uptime_seconds".to_owned(), vec![])));

    // Nothing answers where it was not asked to listen.
    let outside = lab
        .router
        .spawn(|| Ok(TcpStream::connect((Ipv4Addr::new(192, 168, 0, 1), 9469)).is_err()))
        .join()
        .unwrap()
        .unwrap();
    assert!(outside, "the metrics answer on the LAN address");
}
