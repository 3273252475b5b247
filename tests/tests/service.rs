//! natctl as a router service (issue 15): the Prometheus endpoint, the
//! configuration file the daemon and its clients share, rule schedules and
//! the connection log.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use nat_tests::{
    lab::{LAN_CLIENT, LAN_SERVER, Lab, LabMode, ROUTER_WAN, WAN_HOST},
    traffic::{accept, connect, connect_from, uninterrupted},
    wait_for,
};

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

    // The LAN keeps talking on its own (a last ACK, neighbour discovery), so
    // a counter may move between two readings. Counters only grow: natctl's
    // reading must lie between a scrape before it and one after it, and in a
    // quiet moment, when both scrapes agree, it must equal them.
    const COMPARED: [&str; 4] = ["forwarded", "snat", "wan_rx", "lan_rx"];
    let scraped = wait_for(
        "a quiet moment to compare the scrape with natctl stats",
        Duration::from_secs(20),
        || {
            let before = samples(&scrape(&lab).unwrap());
            let stats = lab.counters().unwrap();
            let after = samples(&scrape(&lab).unwrap());
            for name in COMPARED {
                let (low, read, high) = (
                    counter(&before, name),
                    stats[name] as f64,
                    counter(&after, name),
                );
                assert!(
                    low <= read && read <= high,
                    "{name}: natctl stats read {read}, outside the scrapes around it \
                     ({low} before, {high} after)"
                );
            }
            COMPARED
                .iter()
                .all(|name| counter(&before, name) == counter(&after, name))
                .then_some(after)
        },
    )
    .unwrap();
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

/// A rule's `schedule_state` as `natctl list --json` gives it.
fn schedule_state(lab: &Lab, name: &str) -> serde_json::Value {
    lab.rules()
        .into_iter()
        .find(|rule| rule["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name}"))["schedule_state"]
        .clone()
}

/// Waits (bounded) until the daemon's clock has moved the rule on or off.
fn wait_for_schedule(lab: &Lab, name: &str, on: bool) -> serde_json::Value {
    wait_for(
        &format!("rule {name} to be {}", if on { "on" } else { "off" }),
        Duration::from_secs(40),
        || {
            let state = schedule_state(lab, name);
            (state["on"] == on).then_some(state)
        },
    )
    .unwrap_or_else(|error| panic!("{error}\n{}", lab.natctl_log()))
}

/// The daemon judges schedules by a test clock that starts seconds before
/// a window edge (`--schedule-clock-start`) in a zone with daylight saving
/// time, so the edges come by themselves, without waiting for real hours.
#[test]
fn a_scheduled_rule_lets_remotes_in_only_inside_its_window_and_cuts_at_its_end() {
    // Monday 2026-12-07, 08:59:45 in Berlin (UTC+1 in winter): the window
    // opens 15 s after the daemon's clock starts.
    let mut lab = Lab::start_with_daemon(
        LabMode::Auto,
        "",
        &["--schedule-clock-start", "2026-12-07T07:59:45Z"],
        &[("TZ", "Europe/Berlin")],
    )
    .unwrap();
    lab.natctl(&[
        "add",
        "ssh",
        "--proto",
        "tcp",
        "--external",
        "2222",
        "--internal",
        "192.168.0.12:22",
        "--schedule",
        "mon-fri 09:00-09:01",
    ])
    .unwrap();
    let server = lab
        .lan
        .spawn(|| Ok(TcpListener::bind((LAN_SERVER, 22))?))
        .join()
        .unwrap()
        .unwrap();

    // Outside the window: closed, and shown so.
    let state = schedule_state(&lab, "ssh");
    assert_eq!(state["on"], false, "{state}");
    assert_eq!(state["until_local"], "mon 09:00", "{state}");
    assert_eq!(state["until"], "2026-12-07T09:00:00+01:00", "{state}");
    let listed = lab.run("list");
    assert!(
        listed.contains("schedule mon-fri 09:00-09:01: enabled, off-schedule until mon 09:00"),
        "{listed}"
    );
    let table = lab.table().unwrap();
    let row = table
        .iter()
        .find(|row| row["rule"] == "ssh" && row["remote_ip"].is_null())
        .expect("the rule's row in the table");
    assert_eq!(row["state"], "off-schedule", "{row}");
    // It still holds its port.
    let other = lab
        .natctl_output(&[
            "add",
            "other",
            "--proto",
            "tcp",
            "--external",
            "2222",
            "--internal",
            "192.168.0.13:22",
        ])
        .unwrap();
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("already forwarded by rule ssh"), "{stderr}");
    // A WAN host's SYN goes nowhere.
    let refused = lab
        .wan
        .spawn(|| {
            Ok(
                TcpStream::connect_timeout(&(ROUTER_WAN, 2222).into(), Duration::from_secs(2))
                    .is_err(),
            )
        })
        .join()
        .unwrap()
        .unwrap();
    assert!(refused, "a WAN host connected outside the window");
    assert_eq!(
        schedule_state(&lab, "ssh")["on"],
        false,
        "the window opened during the check: the daemon started too slowly for this test"
    );

    // 09:00 by the daemon's clock: open until 09:01.
    let state = wait_for_schedule(&lab, "ssh", true);
    assert_eq!(state["until_local"], "mon 09:01", "{state}");
    assert_eq!(lab.wan_tcp_reaches(2222, &server).ip(), WAN_HOST);
    // And a LAN host through the WAN address (hairpin), for the contrast
    // below.
    let hairpinned = lab
        .lan
        .spawn(|| connect_from(LAN_CLIENT, (ROUTER_WAN, 2222).into()))
        .join()
        .unwrap()
        .unwrap();
    let (hairpin_inside, _) = accept(&server).unwrap();
    drop((hairpinned, hairpin_inside));
    let mut client = lab
        .wan
        .spawn(|| connect((ROUTER_WAN, 2222).into()))
        .join()
        .unwrap()
        .unwrap();
    let (mut inside, _) = accept(&server).unwrap();
    client.write_all(b"ping").unwrap();
    let mut buffer = [0u8; 4];
    inside.read_exact(&mut buffer).unwrap();

    // A restarted daemon whose clock is 10 s before the window ends; the
    // connection stays up meanwhile (the datapath keeps forwarding).
    lab.stop().unwrap();
    lab.set_daemon_args(&["--schedule-clock-start", "2026-12-07T08:00:50Z"]);
    lab.start_daemon().unwrap();
    let state = wait_for_schedule(&lab, "ssh", false);
    assert_eq!(state["until_local"], "tue 09:00", "{state}");

    // Cut: the remote's next segment is not forwarded, and the router's
    // own stack answers it with a reset.
    client.write_all(b"more").unwrap();
    let read = uninterrupted(|| client.read(&mut buffer));
    assert!(
        matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection outlived its window: {read:?}"
    );
    inside.set_nonblocking(true).unwrap();
    let leaked = inside.read(&mut buffer);
    assert!(
        matches!(&leaked, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "the server got data after the window ended: {leaked:?}"
    );
    // The server's side is cut too: what it still sends leaves as any LAN
    // host's would, and the remote, which knows no such connection, resets
    // it.
    inside.set_nonblocking(false).unwrap();
    inside.write_all(b"bye").unwrap();
    let read = uninterrupted(|| inside.read(&mut buffer));
    assert!(
        matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
        "the server's side outlived the window: {read:?}"
    );
    // Nor can a LAN host use the rule through the WAN address (hairpin):
    // the server's answer no longer leaves by the rule's port.
    let hairpin = lab
        .lan
        .spawn(|| {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.bind(&std::net::SocketAddr::from((LAN_CLIENT, 0)).into())?;
            let target = std::net::SocketAddr::from((ROUTER_WAN, 2222));
            Ok(socket
                .connect_timeout(&target.into(), Duration::from_secs(2))
                .is_err())
        })
        .join()
        .unwrap()
        .unwrap();
    assert!(
        hairpin,
        "a LAN host connected through the WAN address off schedule"
    );
    let conversations: Vec<_> = lab
        .table()
        .unwrap()
        .into_iter()
        .filter(|row| row["rule"] == "ssh" && !row["remote_ip"].is_null())
        .collect();
    assert!(conversations.is_empty(), "{conversations:?}");
    assert!(
        lab.natctl_log()
            .contains("schedule: rule ssh closed (off-schedule)"),
        "{}",
        lab.natctl_log()
    );
}

/// A running `natctl connections --follow --json`: its lines, as they come.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(lab: &Lab) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(nat_tests::lab::natctl_path().unwrap())
            .arg("--socket")
            .arg(lab.socket())
            .args(["connections", "--follow", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line, within `timeout`.
    fn next(&self, timeout: Duration) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn connections_follow_shows_a_new_inbound_connection_and_the_history_keeps_it() {
    let mut lab = Lab::start().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let server = lab
        .lan
        .spawn(|| Ok(TcpListener::bind((LAN_SERVER, 8000))?))
        .join()
        .unwrap()
        .unwrap();
    let mut follower = Follower::start(&lab);
    // Nothing yet: the follower waits for the first connection. The
    // history is asked for in the same request, so a connection made now
    // cannot fall between the two.
    assert_eq!(lab.natctl(&["connections", "--json"]).unwrap(), "");

    let client = lab
        .wan
        .spawn(|| {
            let stream = connect((ROUTER_WAN, 8080).into())?;
            Ok(stream.local_addr()?)
        })
        .join()
        .unwrap()
        .unwrap();
    let (_inside, _) = accept(&server).unwrap();
    let line = follower
        .next(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no line from connections --follow\n{}", lab.natctl_log()));
    assert_eq!(line["remote"], client.to_string(), "{line}");
    assert_eq!(line["rule"], "web", "{line}");
    assert_eq!(line["protocol"], "TCP", "{line}");
    assert_eq!(line["external_port"], 8080, "{line}");
    assert_eq!(line["server"], "192.168.0.12:8000", "{line}");
    assert_eq!(line["seq"], 1, "{line}");
    assert!(
        line["time"].as_str().is_some_and(|time| time.len() >= 20),
        "{line}"
    );

    // The history, after the fact: the same record, as JSON and as a table.
    let history = lab.natctl(&["connections", "--json"]).unwrap();
    let records: Vec<serde_json::Value> = history
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records, std::slice::from_ref(&line), "{history}");
    let text = lab.run("connections");
    assert!(text.starts_with("TIME"), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|row| row.contains(&client.to_string())
                && row.contains("web")
                && row.contains("192.168.0.12:8000")),
        "{text}"
    );
    // A second follower starts from the history.
    let second = Follower::start(&lab);
    assert_eq!(second.next(Duration::from_secs(10)), Some(line));

    // A stopping daemon ends the stream: the follower exits cleanly.
    lab.stop().unwrap();
    let status = wait_for("the follower to exit", Duration::from_secs(15), || {
        follower.child.try_wait().ok().flatten()
    })
    .unwrap();
    assert!(status.success(), "connections --follow ended with {status}");
    assert_eq!(follower.next(Duration::from_millis(100)), None);
}
