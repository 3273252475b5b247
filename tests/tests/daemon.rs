//! End-to-end tests of the controller through the real `natctl` binary: the
//! rule lifecycle (add, modify, disable, enable, remove) with real traffic,
//! allow lists and port ranges, errors for bad input that change nothing,
//! the datapath outliving the daemon (stop, SIGKILL mid-transfer, restart,
//! `down` without a daemon, a simulated reboot), the rule store (invalid
//! file, hand edits with reload and SIGHUP), aging with short timeouts, and
//! following a change of the WAN address.
//!
//! Every test has a lab of its own; all traffic stays inside its namespaces,
//! every sending loop is bounded in count and time, and every wait is a
//! bounded poll.
use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use nat_tests::{
    join,
    lab::{LAN_CLIENT, LAN_SERVER, Lab, ROUTER_WAN, WAN_HOST},
    netns::Netns,
    traffic::{accept, connect, pattern, uninterrupted},
    wait_for,
};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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

fn words(command: &str) -> Vec<&str> {
    command.split_whitespace().collect()
}

fn rule<'a>(rules: &'a [Value], name: &str) -> &'a Value {
    rules
        .iter()
        .find(|rule| rule["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {rules:#?}"))
}

/// A listed rule without its hit counters: what must survive a restart.
fn without_counters(rules: &[Value]) -> Vec<Value> {
    rules
        .iter()
        .map(|rule| {
            let mut rule = rule.clone();
            let object = rule.as_object_mut().expect("a rule is an object");
            object.remove("inbound");
            object.remove("outbound");
            rule
        })
        .collect()
}

fn json(lab: &Lab, args: &[&str]) -> Value {
    serde_json::from_str(&lab.natctl(args).unwrap()).unwrap()
}

fn counter(lab: &Lab, label: &str) -> u64 {
    lab.counters().expect("natctl stats")[label]
}

fn static_table(lab: &Lab) -> Vec<Value> {
    lab.table_filtered(&["--type", "static"]).unwrap()
}

fn ip_link(netns: &Netns, dev: &str) -> String {
    String::from_utf8_lossy(&netns.ip(&["link", "show", "dev", dev]).unwrap().stdout).into_owned()
}

fn pins_left(lab: &Lab) -> Vec<String> {
    match fs::read_dir(lab.pin_dir()) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Nothing gets through: the WAN host's connection attempt to `port` fails,
/// and none of `listeners` accepts anything within a bounded wait.
fn wan_tcp_blocked(lab: &Lab, port: u16, listeners: &[&TcpListener], what: &str) {
    let connected = join(lab.wan.spawn(move || {
        Ok(TcpStream::connect_timeout(
            &SocketAddr::from((ROUTER_WAN, port)),
            Duration::from_secs(3),
        )
        .is_ok())
    }));
    assert!(!connected, "{what}: the WAN host connected to port {port}");
    for listener in listeners {
        assert_no_connection(listener, what);
    }
}

fn assert_no_connection(listener: &TcpListener, what: &str) {
    listener.set_nonblocking(true).unwrap();
    let got = wait_for(
        "a connection that must not come",
        Duration::from_secs(1),
        || listener.accept().ok(),
    );
    if let Ok((_, peer)) = got {
        panic!(
            "{what}: a connection from {peer} reached {}",
            listener.local_addr().unwrap()
        );
    }
}

/// A datagram from `from` (on the WAN host) to the router's WAN address on
/// `port` arrives at `lan` (bounded retries). Returns its source address as
/// the LAN host saw it.
fn udp_reaches(from: &UdpSocket, port: u16, lan: &UdpSocket) -> SocketAddr {
    let mut buffer = [0u8; 64];
    for attempt in 0..5u8 {
        from.send_to(&[b'u', attempt], (ROUTER_WAN, port)).unwrap();
        if let Ok((len, peer)) = lan.recv_from(&mut buffer) {
            assert_eq!(&buffer[..1], b"u", "{len} bytes from {peer}");
            return peer;
        }
    }
    panic!(
        "no datagram to port {port} reached {}",
        lan.local_addr().unwrap()
    );
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

/// Datagrams to `port` do not arrive at `lan` (three sent, a bounded wait).
fn udp_blocked(from: &UdpSocket, port: u16, lan: &UdpSocket, what: &str) {
    udp_blocked_to(from, (ROUTER_WAN, port).into(), lan, what);
}

/// Sends from a LAN socket (connected to a WAN socket) until the WAN socket
/// receives; returns the source the WAN host saw.
fn lan_udp_seen_from(lan: &UdpSocket, wan: &UdpSocket) -> SocketAddr {
    let mut buffer = [0u8; 64];
    for attempt in 0..5u8 {
        lan.send(&[b'l', attempt]).unwrap();
        if let Ok((_, peer)) = wan.recv_from(&mut buffer) {
            return peer;
        }
    }
    panic!(
        "no datagram from {} reached the WAN host",
        lan.local_addr().unwrap()
    );
}

/// What a refused command did, for the checks that follow.
struct Refusal {
    stderr: String,
}

/// Runs a command that must fail; checks that its stderr is one line
/// naming every one of `needles`, and that nothing changed: `list --json`,
/// the rules file's bytes and the static NAT table. Returns a description
/// of whatever was wrong.
fn refused(lab: &Lab, args: &[&str], needles: &[&str]) -> Result<Refusal, String> {
    let list = lab.run("list --json");
    let file = fs::read(lab.rules_file()).ok();
    let table = static_table(lab);
    let output = lab.natctl_output(args).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut problems = Vec::new();
    if output.status.success() {
        problems.push(format!(
            "succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        ));
    }
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 {
        problems.push(format!(
            "stderr is {} lines, not one: {stderr:?}",
            lines.len()
        ));
    }
    for needle in needles {
        if !stderr.contains(needle) {
            problems.push(format!("stderr does not name {needle:?}: {stderr:?}"));
        }
    }
    if lab.natctl(&["list", "--json"]).unwrap() != list {
        problems.push("`list --json` changed".to_owned());
    }
    if fs::read(lab.rules_file()).ok() != file {
        problems.push("the rules file changed".to_owned());
    }
    if static_table(lab) != table {
        problems.push("the static NAT table changed".to_owned());
    }
    if problems.is_empty() {
        Ok(Refusal { stderr })
    } else {
        Err(format!(
            "`natctl {}`: {}",
            args.join(" "),
            problems.join("; ")
        ))
    }
}

fn check_all(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} case(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 1. The rule lifecycle
// ---------------------------------------------------------------------------

#[test]
fn rule_lifecycle_add_modify_disable_enable_remove() {
    let lab = Lab::start().unwrap();
    let old_target = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    let new_target = tcp_listener(&lab.lan, LAN_SERVER, 8001);

    let added = lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    assert!(added.contains("web") && added.contains("8080"), "{added}");
    let listed = lab.rules();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let web = &listed[0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["protocol"], "tcp");
    assert_eq!(web["external"], "8080");
    assert_eq!(web["internal_addr"], "192.168.0.12");
    assert_eq!(web["internal"], "8000");
    assert_eq!(web["enabled"], true);
    assert_eq!(web["inbound"]["packets"], 0, "{web:#?}");

    // Through the rule.
    let peer = lab.wan_tcp_reaches(8080, &old_target);
    assert_eq!(peer.ip(), WAN_HOST, "the LAN server sees the real client");

    // Hit counters, per-rule stats, the NAT table, the connection log.
    let listed = lab.rules();
    let web = rule(&listed, "web");
    assert!(
        web["inbound"]["packets"].as_u64().unwrap() > 0
            && web["inbound"]["bytes"].as_u64().unwrap() > 0,
        "{web:#?}"
    );
    assert!(web["outbound"]["packets"].as_u64().unwrap() > 0, "{web:#?}");
    let stats = json(&lab, &["stats", "--json"]);
    let rule_stats = stats["rules"]
        .as_array()
        .expect("stats --json has rules")
        .iter()
        .find(|rule| rule["name"] == "web")
        .unwrap_or_else(|| panic!("no web in {stats:#?}"));
    assert!(
        rule_stats["inbound"]["packets"].as_u64().unwrap() > 0,
        "{stats:#?}"
    );
    assert!(stats["counters"]["forwarded"]["packets"].as_u64().unwrap() > 0);
    let table = static_table(&lab);
    assert!(
        table.iter().any(|row| row["rule"] == "web"
            && row["remote_ip"].is_null()
            && row["external_port"] == "8080"
            && row["local_ip"] == "192.168.0.12"
            && row["local_port"] == "8000"
            && row["type"] == "STATIC"),
        "no rule row: {table:#?}"
    );
    assert!(
        table.iter().any(|row| row["remote_ip"] == "203.0.113.2"
            && row["remote_port"] == peer.port()
            && row["external_port"] == "8080"
            && row["local_port"] == "8000"
            && row["type"] == "STATIC"
            && row["protocol"] == "TCP"),
        "no conversation row from the WAN host: {table:#?}"
    );
    let logged = format!(
        "new inbound TCP connection from 203.0.113.2:{}",
        peer.port()
    );
    wait_for("the connection log line", Duration::from_secs(10), || {
        let log = lab.natctl_log();
        log.lines()
            .any(|line| line.contains(&logged) && line.contains("(rule web)"))
            .then_some(())
    })
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));

    // Modify: the rule now leads to port 8001.
    let modified = lab.run("modify web --internal 192.168.0.12:8001");
    assert!(modified.contains("8001"), "{modified}");
    assert_eq!(rule(&lab.rules(), "web")["internal"], "8001");
    let peer = lab.wan_tcp_reaches(8080, &new_target);
    assert_eq!(peer.ip(), WAN_HOST);
    assert_no_connection(&old_target, "after modify, the old target");

    // Disable: nothing gets in.
    lab.run("disable web");
    assert_eq!(rule(&lab.rules(), "web")["enabled"], false);
    assert!(
        !static_table(&lab)
            .iter()
            .any(|row| row["rule"] == "web" && row["remote_ip"].is_null()),
        "a disabled rule is not in the NAT table"
    );
    wan_tcp_blocked(&lab, 8080, &[&new_target, &old_target], "disabled");

    // Enable: back.
    lab.run("enable web");
    assert_eq!(rule(&lab.rules(), "web")["enabled"], true);
    let peer = lab.wan_tcp_reaches(8080, &new_target);
    assert_eq!(peer.ip(), WAN_HOST);

    // Remove: gone.
    lab.run("remove web");
    assert_eq!(lab.rules(), Vec::<Value>::new());
    assert_eq!(lab.natctl(&["list", "--json"]).unwrap().trim(), "[]");
    wan_tcp_blocked(&lab, 8080, &[&new_target, &old_target], "removed");
    assert!(
        !static_table(&lab)
            .iter()
            .any(|row| row["remote_ip"].is_null()),
        "a removed rule is not in the NAT table"
    );
}

// ---------------------------------------------------------------------------
// 2. Both protocols, allow lists, port ranges
// ---------------------------------------------------------------------------

#[test]
fn both_protocols_allow_lists_and_port_ranges() {
    let lab = Lab::start().unwrap();
    let tcp = tcp_listener(&lab.lan, LAN_SERVER, 27015);
    let udp = udp_socket(&lab.lan, LAN_SERVER, 27015);
    let wan_udp = udp_socket(&lab.wan, WAN_HOST, 0);

    lab.run(
        "add game --proto both --external 27015 --internal 192.168.0.12 --allow 203.0.113.0/24",
    );
    let listed = lab.rules();
    let game = rule(&listed, "game");
    assert_eq!(game["protocol"], "both");
    assert_eq!(game["internal"], "27015");
    assert_eq!(game["allow"], serde_json::json!(["203.0.113.0/24"]));

    assert_eq!(lab.wan_tcp_reaches(27015, &tcp).ip(), WAN_HOST);
    assert_eq!(udp_reaches(&wan_udp, 27015, &udp).ip(), WAN_HOST);

    // The WAN host is no longer in the allowed prefix.
    lab.run("modify game --allow 198.51.100.0/24");
    assert_eq!(
        rule(&lab.rules(), "game")["allow"],
        serde_json::json!(["198.51.100.0/24"])
    );
    let not_allowed = counter(&lab, "remote_not_allowed");
    wan_tcp_blocked(&lab, 27015, &[&tcp], "outside the allowed prefix");
    udp_blocked(&wan_udp, 27015, &udp, "outside the allowed prefix");
    let now = counter(&lab, "remote_not_allowed");
    assert!(
        now > not_allowed,
        "remote_not_allowed did not increase ({not_allowed} -> {now})"
    );

    // Any remote again.
    lab.run("modify game --allow-any");
    let listed = lab.rules();
    let game = rule(&listed, "game");
    assert!(
        game.get("allow")
            .is_none_or(|allow| allow == &serde_json::json!([])),
        "{game:#?}"
    );
    assert_eq!(lab.wan_tcp_reaches(27015, &tcp).ip(), WAN_HOST);
    assert_eq!(udp_reaches(&wan_udp, 27015, &udp).ip(), WAN_HOST);

    // A range maps port by port: 5001 -> 6001, and the reply leaves from 5001.
    lab.run("add range --proto udp --external 5000-5002 --internal 192.168.0.13:6000-6002");
    let ranged = udp_socket(&lab.lan, LAN_CLIENT, 6001);
    let neighbour = udp_socket(&lab.lan, LAN_CLIENT, 6000);
    let peer = udp_reaches(&wan_udp, 5001, &ranged);
    assert_eq!(peer.ip(), WAN_HOST);
    ranged.send_to(b"reply", peer).unwrap();
    let mut buffer = [0u8; 16];
    wan_udp
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (len, from) = uninterrupted(|| wan_udp.recv_from(&mut buffer)).unwrap();
    assert_eq!(&buffer[..len], b"reply");
    assert_eq!(from, SocketAddr::from((ROUTER_WAN, 5001)));
    drain(&neighbour);
    let mut buffer = [0u8; 16];
    assert!(
        uninterrupted(|| neighbour.recv_from(&mut buffer)).is_err(),
        "port 5001 must not land on 6000"
    );
    let table = lab
        .table_filtered(&["--proto", "udp", "--type", "static"])
        .unwrap();
    assert!(
        table.iter().any(|row| row["rule"] == "range"
            && row["external_port"] == "5000-5002"
            && row["local_port"] == "6000-6002"
            && row["local_ip"] == "192.168.0.13"),
        "{table:#?}"
    );
}

// ---------------------------------------------------------------------------
// 3. Bad input
// ---------------------------------------------------------------------------

/// Values natctl itself refuses before asking the daemon.
#[test]
fn bad_arguments_are_refused_in_one_line_naming_the_value() {
    let lab = Lab::start().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let cases: &[(&str, &[&str])] = &[
        (
            "add x --proto sctp --external 9000 --internal 192.168.0.12",
            &["sctp"],
        ),
        (
            "add x --proto tcp --external 0 --internal 192.168.0.12",
            &["\"0\""],
        ),
        (
            "add x --proto tcp --external 70000 --internal 192.168.0.12",
            &["70000"],
        ),
        (
            "add x --proto tcp --external 9000 --internal 192.168.0.12:0",
            &["\"0\""],
        ),
        ("modify web --proto sctp", &["sctp"]),
    ];
    let problems = cases
        .iter()
        .filter_map(|(command, needles)| refused(&lab, &words(command), needles).err())
        .collect();
    check_all(problems);
}

/// Rules the daemon refuses: each error is one line naming the value, and
/// neither the rules, the store nor the datapath change.
#[test]
fn bad_rules_are_refused_and_change_nothing() {
    let lab = Lab::start().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    lab.run("add dns --proto udp --external 5353 --internal 192.168.0.13");
    let cases: &[(&str, &[&str])] = &[
        (
            "add x --proto udp --external 5000-5002 --internal 192.168.0.12:6000-6001",
            &["5000-5002", "6000-6001"],
        ),
        (
            "add x --proto tcp --external 9000 --internal 10.0.0.5",
            &["10.0.0.5"],
        ),
        (
            "add x --proto tcp --external 9000 --internal 192.168.0.255",
            &["192.168.0.255"],
        ),
        (
            "add x --proto tcp --external 2222 --internal 192.168.0.1:22",
            &["192.168.0.1", "router's own LAN address"],
        ),
        (
            "add x --proto tcp --external 8080 --internal 192.168.0.13",
            &["8080", "web"],
        ),
        (
            "add x --proto both --external 5353 --internal 192.168.0.12",
            &["5353", "dns"],
        ),
        ("modify dns --proto tcp --external 8080", &["8080", "web"]),
        (
            "add web --proto udp --external 9999 --internal 192.168.0.13",
            &["web", "already exists"],
        ),
        ("modify ghost --external 9002", &["\"ghost\""]),
        ("remove ghost", &["\"ghost\""]),
        ("enable ghost", &["\"ghost\""]),
        ("disable ghost", &["\"ghost\""]),
    ];
    let mut problems: Vec<String> = cases
        .iter()
        .filter_map(|(command, needles)| refused(&lab, &words(command), needles).err())
        .collect();
    // A name with a space in it.
    let bad_name = [
        "add",
        "a b",
        "--proto",
        "tcp",
        "--external",
        "9001",
        "--internal",
        "192.168.0.12",
    ];
    if let Err(problem) = refused(&lab, &bad_name, &["\"a b\""]) {
        problems.push(problem);
    }

    // A LAN host's own UDP "connection" from port 40000 holds a dynamic
    // mapping on external port 40000: a rule for another endpoint may not
    // take that port (one for that endpoint itself adopts the mapping:
    // `upnp::a_mapping_for_the_port_a_host_already_holds_keeps_its_flows_on_it`).
    let wan = udp_socket(&lab.wan, WAN_HOST, 9400);
    let lan = udp_socket(&lab.lan, LAN_CLIENT, 40000);
    lan.connect((WAN_HOST, 9400)).unwrap();
    let seen = lan_udp_seen_from(&lan, &wan);
    assert_eq!(seen, SocketAddr::from((ROUTER_WAN, 40000)));
    let dynamic = lab.table_filtered(&["--type", "dynamic"]).unwrap();
    assert!(
        dynamic.iter().any(|row| row["protocol"] == "UDP"
            && row["local_ip"] == "192.168.0.13"
            && row["local_port"] == "40000"
            && row["external_port"] == "40000"),
        "{dynamic:#?}"
    );
    match refused(
        &lab,
        &words("add x --proto udp --external 40000 --internal 192.168.0.12"),
        &["40000", "dynamic mapping", "192.168.0.13:40000"],
    ) {
        Ok(refusal) => assert!(!refusal.stderr.is_empty()),
        Err(problem) => problems.push(problem),
    }
    // The mapping still works both ways.
    wan.send_to(b"back", seen).unwrap();
    let mut buffer = [0u8; 16];
    let (len, from) = uninterrupted(|| lan.recv_from(&mut buffer))
        .expect("the mapping must survive the refused rule");
    assert_eq!(
        (&buffer[..len], from),
        (&b"back"[..], SocketAddr::from((WAN_HOST, 9400)))
    );
    check_all(problems);

    // And the rules that were there still work.
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
}

// ---------------------------------------------------------------------------
// 4. No daemon
// ---------------------------------------------------------------------------

#[test]
fn without_a_daemon_clients_say_so_and_the_datapath_keeps_forwarding() {
    // XDP mode, so that `ip link` shows the attachment `down` removes (the
    // TC mode's TCX links are checked in e2e.rs).
    let mut lab = Lab::start_xdp().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    // An inbound flow through the rule and an outbound flow, both
    // established while the daemon runs.
    let client = lab.wan.spawn(|| connect((ROUTER_WAN, 8080).into()));
    let (mut inbound_server, _) = accept(&listener).unwrap();
    let mut inbound_client = join(client);
    let wan_listener = tcp_listener(&lab.wan, WAN_HOST, 9000);
    let mut outbound_client = join(lab.lan.spawn(|| connect((WAN_HOST, 9000).into())));
    let (mut outbound_server, _) = accept(&wan_listener).unwrap();

    lab.stop().unwrap();
    let output = lab.natctl_output(&["list"]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "list without a daemon succeeded");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("no natctl daemon is running"), "{stderr}");

    // Established flows go on.
    let mut buffer = [0u8; 5];
    inbound_client.write_all(b"still").unwrap();
    inbound_server.read_exact(&mut buffer).unwrap();
    assert_eq!(&buffer, b"still");
    inbound_server.write_all(b"there").unwrap();
    inbound_client.read_exact(&mut buffer).unwrap();
    assert_eq!(&buffer, b"there");
    outbound_client.write_all(b"going").unwrap();
    outbound_server.read_exact(&mut buffer).unwrap();
    assert_eq!(&buffer, b"going");
    outbound_server.write_all(b"on..").unwrap();
    outbound_client.read_exact(&mut buffer[..4]).unwrap();
    assert_eq!(&buffer[..4], b"on..");
    // New ones too: through the rule, and a new dynamic mapping.
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
    let client = lab.lan.spawn(|| {
        let mut stream = connect((WAN_HOST, 9000).into())?;
        stream.write_all(b"new")?;
        Ok(())
    });
    let (mut stream, peer) = accept(&wan_listener).unwrap();
    join(client);
    let mut buffer = [0u8; 3];
    stream.read_exact(&mut buffer).unwrap();
    assert_eq!((&buffer, peer.ip()), (b"new", ROUTER_WAN.into()));

    // `down` without a daemon detaches what is pinned.
    assert!(!pins_left(&lab).is_empty(), "nothing pinned before down");
    assert!(ip_link(&lab.router, "wan0").contains("xdp"));
    let output = lab.down().unwrap();
    assert!(output.contains("no daemon was running"), "{output}");
    assert!(output.contains("detached"), "{output}");
    assert_eq!(pins_left(&lab), Vec::<String>::new(), "pins left behind");
    for dev in ["wan0", "lan0"] {
        let link = ip_link(&lab.router, dev);
        assert!(!link.contains("xdp"), "{dev} still has XDP: {link}");
    }
    wan_tcp_blocked(&lab, 8080, &[&listener], "after down");
}

// ---------------------------------------------------------------------------
// 5. SIGKILL during long transfers
// ---------------------------------------------------------------------------

const BULK: usize = 32 << 20;
const CHUNK: usize = 64 << 10;

/// Writes `data` in chunks; the first third goes at once, the second only
/// once `phase` >= 1, the last once `phase` >= 2 (bounded waits).
fn gated_writer(mut stream: TcpStream, data: Arc<Vec<u8>>, phase: Arc<AtomicUsize>) -> Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for (index, chunk) in data.chunks(CHUNK).enumerate() {
        let needed = index * CHUNK * 3 / data.len();
        while phase.load(Ordering::SeqCst) < needed {
            ensure!(Instant::now() < deadline, "phase {needed} never came");
            std::thread::sleep(Duration::from_millis(5));
        }
        stream.write_all(chunk)?;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(())
}

/// Reads until `expected` has all arrived, checking every byte in order,
/// then the end of the stream; `progress` says how far it got.
fn verifying_reader(
    mut stream: TcpStream,
    expected: Arc<Vec<u8>>,
    progress: Arc<AtomicUsize>,
) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut position = 0;
    while position < expected.len() {
        let len = uninterrupted(|| stream.read(&mut buffer))
            .with_context(|| format!("reading at offset {position}"))?;
        ensure!(
            len > 0,
            "the stream ended after {position} of {} bytes",
            expected.len()
        );
        ensure!(
            position + len <= expected.len(),
            "{} bytes too many",
            position + len - expected.len()
        );
        if buffer[..len] != expected[position..position + len] {
            let at = (0..len)
                .find(|&i| buffer[i] != expected[position + i])
                .unwrap_or(0);
            bail!("byte {} differs from what was sent", position + at);
        }
        position += len;
        progress.store(position, Ordering::SeqCst);
    }
    ensure!(
        uninterrupted(|| stream.read(&mut buffer))? == 0,
        "data after the end"
    );
    Ok(())
}

/// Lets gated writers finish whatever happens to the test.
struct OpenGates(Arc<AtomicUsize>);

impl Drop for OpenGates {
    fn drop(&mut self) {
        self.0.store(usize::MAX, Ordering::SeqCst);
    }
}

fn dynamic_tcp_row(lab: &Lab, remote_port: u16) -> Option<Value> {
    lab.table_filtered(&["--proto", "tcp", "--type", "dynamic"])
        .unwrap()
        .into_iter()
        .find(|row| row["remote_ip"] == "203.0.113.2" && row["remote_port"] == remote_port)
}

#[test]
fn sigkill_mid_transfer_loses_no_byte_and_keeps_mappings_and_rules() {
    let mut lab = Lab::start_with_config("[nat]\nports = \"50000-50999\"\n").unwrap();
    lab.run("add bulk --proto tcp --external 8443 --internal 192.168.0.12");
    lab.run(
        "add voice --proto udp --external 3478-3479 --internal 192.168.0.13 --allow 203.0.113.0/24",
    );
    let rules_before = without_counters(&lab.rules());

    let upload = Arc::new(pattern(BULK, 51));
    let download = Arc::new(pattern(BULK, 52));
    let phase = Arc::new(AtomicUsize::new(0));
    let _gates = OpenGates(phase.clone());
    let up_progress = Arc::new(AtomicUsize::new(0));
    let down_progress = Arc::new(AtomicUsize::new(0));

    // LAN -> WAN host, through a dynamic mapping.
    let wan_listener = tcp_listener(&lab.wan, WAN_HOST, 9100);
    let up_client = join(lab.lan.spawn(|| connect((WAN_HOST, 9100).into())));
    let (up_server, up_peer) = accept(&wan_listener).unwrap();
    assert_eq!(up_peer.ip(), ROUTER_WAN);
    assert!((50000..=50999).contains(&up_peer.port()), "{up_peer}");
    // WAN host -> LAN, through the rule.
    let lan_listener = tcp_listener(&lab.lan, LAN_SERVER, 8443);
    let down_client = join(lab.wan.spawn(|| connect((ROUTER_WAN, 8443).into())));
    let (down_server, down_peer) = accept(&lan_listener).unwrap();
    assert_eq!(down_peer.ip(), WAN_HOST);

    let writers = [
        {
            let (data, phase) = (upload.clone(), phase.clone());
            std::thread::spawn(move || gated_writer(up_client, data, phase))
        },
        {
            let (data, phase) = (download.clone(), phase.clone());
            std::thread::spawn(move || gated_writer(down_client, data, phase))
        },
    ];
    let readers = [
        {
            let (data, progress) = (upload.clone(), up_progress.clone());
            std::thread::spawn(move || verifying_reader(up_server, data, progress))
        },
        {
            let (data, progress) = (download.clone(), down_progress.clone());
            std::thread::spawn(move || verifying_reader(down_server, data, progress))
        },
    ];
    let progress = || {
        (
            up_progress.load(Ordering::SeqCst),
            down_progress.load(Ordering::SeqCst),
        )
    };
    wait_for(
        "the first third of both transfers",
        Duration::from_secs(60),
        || {
            let (up, down) = progress();
            (up >= BULK / 3 && down >= BULK / 3).then_some(())
        },
    )
    .unwrap_or_else(|error| panic!("{error}: {:?}", progress()));

    // A UDP mapping from a port outside the dynamic range: a new mapping
    // would get a random port, so an unchanged one shows it was kept.
    let wan_udp = udp_socket(&lab.wan, WAN_HOST, 9101);
    let lan_udp = udp_socket(&lab.lan, LAN_SERVER, 41000);
    lan_udp.connect((WAN_HOST, 9101)).unwrap();
    let udp_before = lan_udp_seen_from(&lan_udp, &wan_udp);
    assert!((50000..=50999).contains(&udp_before.port()), "{udp_before}");
    let tcp_row = dynamic_tcp_row(&lab, 9100).expect("the upload's dynamic row");
    assert_eq!(tcp_row["external_port"], up_peer.port().to_string());

    lab.kill_daemon().unwrap();
    let (up, down) = progress();
    assert!(
        up < BULK && down < BULK,
        "the transfers ended before the kill"
    );
    // The datapath forwards with no daemon at all.
    phase.store(1, Ordering::SeqCst);
    wait_for(
        "two thirds of both transfers, daemon dead",
        Duration::from_secs(60),
        || {
            let (up, down) = progress();
            (up >= 2 * BULK / 3 && down >= 2 * BULK / 3).then_some(())
        },
    )
    .unwrap_or_else(|error| panic!("{error}: {:?}", progress()));
    let udp_dead = lan_udp_seen_from(&lan_udp, &wan_udp);
    assert_eq!(
        udp_dead, udp_before,
        "the UDP mapping changed with the daemon dead"
    );

    lab.start_daemon().unwrap();
    let log = lab.natctl_log();
    assert!(
        log.contains("picked up from the pinned datapath"),
        "the restarted daemon did not pick up the datapath: {log}"
    );
    let status = json(&lab, &["status"]);
    assert_eq!(status["picked_up_pinned_datapath"], true, "{status:#?}");
    let (up, down) = progress();
    assert!(
        up < BULK && down < BULK,
        "the transfers ended before the restart"
    );
    phase.store(2, Ordering::SeqCst);

    for writer in writers {
        join(writer);
    }
    for reader in readers {
        join(reader);
    }
    assert_eq!(progress(), (BULK, BULK));

    // The same mappings, the same rules.
    let udp_after = lan_udp_seen_from(&lan_udp, &wan_udp);
    assert_eq!(
        udp_after, udp_before,
        "the UDP mapping changed across the restart"
    );
    let row = dynamic_tcp_row(&lab, 9100).expect("the upload's dynamic row after the restart");
    assert_eq!(row["external_port"], up_peer.port().to_string(), "{row:#?}");
    assert_eq!(without_counters(&lab.rules()), rules_before);
    // And the rule still takes new connections.
    assert_eq!(lab.wan_tcp_reaches(8443, &lan_listener).ip(), WAN_HOST);
}

/// A rule's id and hit counters belong to it across a daemon restart that
/// picks up the datapath, even when a rule added before it was removed.
#[test]
fn rule_ids_and_hit_counters_survive_a_daemon_restart() {
    let mut lab = Lab::start().unwrap();
    lab.run("add spare --proto udp --external 7777 --internal 192.168.0.13");
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    for _ in 0..2 {
        assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
    }
    lab.run("remove spare");
    let before = lab.rules();
    let web_before = rule(&before, "web").clone();
    let packets_before = web_before["inbound"]["packets"].as_u64().unwrap();
    assert!(packets_before > 0, "{web_before:#?}");

    lab.kill_daemon().unwrap();
    lab.start_daemon().unwrap();
    let after = lab.rules();
    let web_after = rule(&after, "web");
    assert_eq!(
        web_after["id"], web_before["id"],
        "the rule's id changed across the restart: {web_before:#} -> {web_after:#}"
    );
    let packets_after = web_after["inbound"]["packets"].as_u64().unwrap();
    assert!(
        packets_after >= packets_before,
        "the rule's hit counter went from {packets_before} to {packets_after} across the restart"
    );
    // Counting carries on under the rule.
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
    let packets_later = rule(&lab.rules(), "web")["inbound"]["packets"]
        .as_u64()
        .unwrap();
    assert!(packets_later > packets_after.max(packets_before));
}

/// The kernel ids of the programs behind the datapath's pinned links (XDP
/// or TC, whichever each NIC got), LAN first.
fn linked_program_ids(lab: &Lab) -> Vec<u64> {
    let mut links: Vec<String> = pins_left(lab)
        .into_iter()
        .filter(|name| name.starts_with("link_nat_"))
        .collect();
    links.sort_by_key(|name| !name.starts_with("link_nat_lan"));
    assert_eq!(links.len(), 2, "{links:?}");
    links
        .iter()
        .map(|name| {
            let path = lab.pin_dir().join(name);
            let output = std::process::Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&path)
                .output()
                .expect("running bpftool (`cargo xtask setup` installs it)");
            let info: Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|error| panic!("bpftool on {}: {error}", path.display()));
            info["prog_id"].as_u64().expect("a prog_id")
        })
        .collect()
}

/// A natctl of another build finds the datapath an earlier one pinned: on
/// the same map layout it swaps the programs in under the running flows
/// (a live mapping keeps its port); on another layout, or one it cannot
/// tell, it replaces the datapath (mappings start over) and the rules come
/// back from the store; never a refusal that leaves the router without NAT.
#[test]
fn a_natctl_upgrade_swaps_the_pinned_programs_in_place_or_replaces_another_layout() {
    let mut lab = Lab::start_with_config("[nat]\nports = \"50000-50999\"\n").unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    let wan_udp = udp_socket(&lab.wan, WAN_HOST, 9101);
    let lan_udp = udp_socket(&lab.lan, LAN_SERVER, 41000);
    lan_udp.connect((WAN_HOST, 9101)).unwrap();
    let mapped = lan_udp_seen_from(&lan_udp, &wan_udp);
    // The stamp is a pin's name: stamp_layout<N>_<digest of the object>.
    let pins = lab.pin_dir().to_owned();
    let stamp = || -> String {
        let names: Vec<String> = fs::read_dir(&pins)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let stamps: Vec<&String> = names
            .iter()
            .filter(|name| name.starts_with("stamp_layout"))
            .collect();
        assert_eq!(stamps.len(), 1, "{names:?}");
        stamps[0].clone()
    };
    let ours = stamp();
    let (layout, digest) = ours["stamp_layout".len()..].split_once('_').unwrap();
    assert!(
        layout.parse::<u32>().is_ok() && digest.len() == 64,
        "{ours}"
    );
    let layout = layout.to_owned();
    let restamp = |name: Option<&str>| {
        let from = pins.join(stamp());
        match name {
            Some(name) => fs::rename(from, pins.join(name)).unwrap(),
            None => fs::remove_file(from).unwrap(),
        }
    };

    // Another build, the same layout: the programs are swapped in place.
    let programs_before = linked_program_ids(&lab);
    lab.kill_daemon().unwrap();
    restamp(Some(&format!("stamp_layout{layout}_00")));
    lab.start_daemon().unwrap();
    let log = lab.natctl_log();
    assert!(
        log.contains("its programs are replaced by this build's in place"),
        "{log}"
    );
    assert_eq!(json(&lab, &["status"])["picked_up_pinned_datapath"], true);
    let programs_after = linked_program_ids(&lab);
    assert!(
        programs_after[0] != programs_before[0] && programs_after[1] != programs_before[1],
        "the programs were not replaced: {programs_before:?} -> {programs_after:?}"
    );
    assert_eq!(stamp(), ours);
    assert_eq!(
        lan_udp_seen_from(&lan_udp, &wan_udp),
        mapped,
        "the live mapping changed its port across the swap"
    );
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);

    // Another layout, then none recorded (a natctl from before stamps):
    // replaced, the rules back from the store, translation as before.
    for (written, said) in [
        (Some("stamp_layout0_00"), "has another map layout (0,"),
        (None, "has another map layout (none recorded,"),
    ] {
        lab.kill_daemon().unwrap();
        restamp(written);
        lab.start_daemon().unwrap();
        let log = lab.natctl_log();
        assert!(log.contains(said), "{said}: {log}");
        assert_eq!(json(&lab, &["status"])["picked_up_pinned_datapath"], false);
        assert_eq!(stamp(), ours);
        assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
        let seen = lan_udp_seen_from(&lan_udp, &wan_udp);
        assert_eq!(seen.ip(), ROUTER_WAN);
        assert!((50000..=50999).contains(&seen.port()), "{seen}");
    }
}

// ---------------------------------------------------------------------------
// 6. Reboot
// ---------------------------------------------------------------------------

#[test]
fn after_a_reboot_the_rules_come_back_from_the_store() {
    let mut lab = Lab::start().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    lab.run("add game --proto both --external 27015-27016 --internal 192.168.0.13 --allow 203.0.113.0/24 --allow 198.51.100.0/24",
    );
    lab.run("add off --proto udp --external 6000 --internal 192.168.0.12 --disabled");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    let game = udp_socket(&lab.lan, LAN_CLIENT, 27016);
    let wan_udp = udp_socket(&lab.wan, WAN_HOST, 0);
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
    assert_eq!(udp_reaches(&wan_udp, 27016, &game).ip(), WAN_HOST);
    let before = without_counters(&lab.rules());
    assert_eq!(before.len(), 3);

    // Power cut, then the boot: nothing pinned survives.
    lab.kill_daemon().unwrap();
    let output = lab.down().unwrap();
    assert!(output.contains("detached"), "{output}");
    assert_eq!(pins_left(&lab), Vec::<String>::new(), "pins left behind");
    assert!(!ip_link(&lab.router, "wan0").contains("xdp"));
    wan_tcp_blocked(&lab, 8080, &[&listener], "datapath detached");
    udp_blocked(&wan_udp, 27016, &game, "datapath detached");

    lab.start_daemon().unwrap();
    let status = json(&lab, &["status"]);
    assert_eq!(status["picked_up_pinned_datapath"], false, "{status:#?}");
    assert_eq!(status["rules"], 3, "{status:#?}");
    assert_eq!(without_counters(&lab.rules()), before);
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);
    assert_eq!(udp_reaches(&wan_udp, 27016, &game).ip(), WAN_HOST);
}

// ---------------------------------------------------------------------------
// 7. An invalid store
// ---------------------------------------------------------------------------

#[test]
fn an_invalid_store_stops_the_daemon_and_is_never_overwritten() {
    let mut lab = Lab::start().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let listener = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    lab.stop().unwrap();

    let garbage = "[[rule]]\n\
                   name = \"web\"\n\
                   protocol = \"sctp\"\n\
                   external = \"8080\"\n\
                   internal_addr = \"192.168.0.12\"\n\
                   internal = \"8000\"\n";
    fs::write(lab.rules_file(), garbage).unwrap();
    let path = lab.rules_file().display().to_string();

    // With the datapath still pinned: refused, and the datapath untouched.
    let log_before = lab.natctl_log().len();
    let error = lab
        .start_daemon()
        .expect_err("a daemon started on an invalid rules file");
    let log = lab.natctl_log();
    let new = &log[log_before..];
    assert!(
        new.contains(&format!("{path} line 3")) && new.contains("sctp"),
        "the log does not name the file and line 3: {new}\n({error})"
    );
    assert_eq!(fs::read(lab.rules_file()).unwrap(), garbage.as_bytes());
    assert_eq!(lab.wan_tcp_reaches(8080, &listener).ip(), WAN_HOST);

    // After a reboot (nothing pinned): refused the same way.
    lab.down().unwrap();
    assert_eq!(pins_left(&lab), Vec::<String>::new());
    let log_before = lab.natctl_log().len();
    lab.start_daemon()
        .expect_err("a daemon started on an invalid rules file");
    let log = lab.natctl_log();
    let new = &log[log_before..];
    assert!(
        new.contains(&format!("{path} line 3")) && new.contains("sctp"),
        "the log does not name the file and line 3: {new}"
    );
    assert_eq!(fs::read(lab.rules_file()).unwrap(), garbage.as_bytes());
    let output = lab.natctl_output(&["list"]).unwrap();
    assert!(
        !output.status.success(),
        "a daemon answers after refusing to start"
    );
}

// ---------------------------------------------------------------------------
// 8. Hand edits, reload and SIGHUP
// ---------------------------------------------------------------------------

fn hand_rule(name: &str, protocol: &str, external: &str, addr: &str, internal: &str) -> String {
    format!(
        "\n[[rule]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nexternal = \"{external}\"\n\
         internal_addr = \"{addr}\"\ninternal = \"{internal}\"\n"
    )
}

#[test]
fn hand_edits_take_effect_on_reload_and_sighup_and_bad_ones_change_nothing() {
    let lab = Lab::start().unwrap();
    lab.run("add web --proto tcp --external 8080 --internal 192.168.0.12:8000");
    let web = tcp_listener(&lab.lan, LAN_SERVER, 8000);
    let hand = udp_socket(&lab.lan, LAN_CLIENT, 9999);
    let wan_udp = udp_socket(&lab.wan, WAN_HOST, 0);
    udp_blocked(&wan_udp, 9999, &hand, "before the hand edit");

    // A valid hand edit, then `natctl reload`.
    let mut text = fs::read_to_string(lab.rules_file()).unwrap();
    text.push_str(&hand_rule("hand", "udp", "9999", "192.168.0.13", "9999"));
    fs::write(lab.rules_file(), &text).unwrap();
    let reloaded = lab.run("reload");
    assert!(reloaded.contains("2 rule(s)"), "{reloaded}");
    let listed = lab.rules();
    let hand_rule_listed = rule(&listed, "hand");
    assert_eq!(hand_rule_listed["protocol"], "udp");
    assert_eq!(hand_rule_listed["internal_addr"], "192.168.0.13");
    assert_eq!(udp_reaches(&wan_udp, 9999, &hand).ip(), WAN_HOST);
    let good = lab.rules();

    // An invalid hand edit: reload fails naming the line; nothing changes.
    let line = text.lines().count() + 4;
    let mut bad = text.clone();
    bad.push_str(&hand_rule("bad", "sctp", "7000", "192.168.0.12", "7000"));
    fs::write(lab.rules_file(), &bad).unwrap();
    assert_eq!(bad.lines().nth(line - 1), Some("protocol = \"sctp\""));
    let output = lab.natctl_output(&["reload"]).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "reload of an invalid file succeeded"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains(&format!("line {line}")) && stderr.contains("sctp"),
        "{stderr}"
    );
    assert_eq!(without_counters(&lab.rules()), without_counters(&good));
    assert_eq!(
        fs::read_to_string(lab.rules_file()).unwrap(),
        bad,
        "the daemon rewrote the file"
    );
    assert_eq!(udp_reaches(&wan_udp, 9999, &hand).ip(), WAN_HOST);
    assert_eq!(lab.wan_tcp_reaches(8080, &web).ip(), WAN_HOST);

    // SIGHUP does the same as `natctl reload`.
    text.push_str(&hand_rule("hup", "tcp", "2222", "192.168.0.12", "8022"));
    fs::write(lab.rules_file(), &text).unwrap();
    let ssh = tcp_listener(&lab.lan, LAN_SERVER, 8022);
    let pid = json(&lab, &["status"])["pid"]
        .as_i64()
        .expect("status has the pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("the rule added by SIGHUP", Duration::from_secs(10), || {
        lab.rules()
            .iter()
            .any(|rule| rule["name"] == "hup")
            .then_some(())
    })
    .unwrap();
    assert!(
        lab.natctl_log().contains("SIGHUP: reloaded"),
        "{}",
        lab.natctl_log()
    );
    assert_eq!(lab.wan_tcp_reaches(2222, &ssh).ip(), WAN_HOST);
    assert_eq!(udp_reaches(&wan_udp, 9999, &hand).ip(), WAN_HOST);

    // A new dynamic port range in the configuration file.
    let mut config = fs::read_to_string(lab.config_file()).unwrap();
    config.push_str("\n[nat]\nports = \"50000-50999\"\n");
    fs::write(lab.config_file(), &config).unwrap();
    lab.run("reload");
    let status = json(&lab, &["status"]);
    assert_eq!(status["nat"]["ports"], "50000-50999", "{status:#?}");
    let wan = udp_socket(&lab.wan, WAN_HOST, 9500);
    let lan = udp_socket(&lab.lan, LAN_CLIENT, 40001);
    lan.connect((WAN_HOST, 9500)).unwrap();
    let seen = lan_udp_seen_from(&lan, &wan);
    assert_eq!(seen.ip(), ROUTER_WAN);
    assert!(
        (50000..=50999).contains(&seen.port()),
        "a new mapping outside the reloaded range: {seen}"
    );
}

// ---------------------------------------------------------------------------
// 9. Aging
// ---------------------------------------------------------------------------

fn udp_row(rows: &[Value], local: SocketAddr) -> Option<&Value> {
    rows.iter().find(|row| {
        row["type"] == "DYNAMIC"
            && row["local_ip"].as_str() == Some(local.ip().to_string().as_str())
            && row["local_port"].as_str() == Some(local.port().to_string().as_str())
    })
}

#[test]
fn idle_flows_age_out_and_busy_ones_stay() {
    let lab = Lab::start_with_config(
        "[timeouts]\nudp = 3\nicmp = 3\ntcp_transitory = 3\ntcp_established = 5\nbelow_rfc_minimums = true\n",
    )
    .unwrap();
    let wan = udp_socket(&lab.wan, WAN_HOST, 9200);
    let wan_tcp = tcp_listener(&lab.wan, WAN_HOST, 9201);

    // An idle flow: one datagram and its reply.
    let idle = udp_socket(&lab.lan, LAN_SERVER, 0);
    idle.connect((WAN_HOST, 9200)).unwrap();
    let idle_local = idle.local_addr().unwrap();
    let idle_external = lan_udp_seen_from(&idle, &wan);
    wan.send_to(b"reply", idle_external).unwrap();
    let mut buffer = [0u8; 16];
    assert_eq!(
        uninterrupted(|| idle.recv(&mut buffer)).unwrap(),
        5,
        "the reply must come in"
    );

    // A busy UDP flow and a busy TCP connection.
    let busy = udp_socket(&lab.lan, LAN_CLIENT, 0);
    busy.connect((WAN_HOST, 9200)).unwrap();
    let busy_local = busy.local_addr().unwrap();
    lan_udp_seen_from(&busy, &wan);
    let mut tcp = join(lab.lan.spawn(|| connect((WAN_HOST, 9201).into())));
    let (mut echo, _) = accept(&wan_tcp).unwrap();
    let echo_server = std::thread::spawn(move || -> Result<usize> {
        let mut byte = [0u8; 1];
        let mut echoed = 0;
        for _ in 0..200 {
            if uninterrupted(|| echo.read(&mut byte))? == 0 {
                break;
            }
            echo.write_all(&byte)?;
            echoed += 1;
        }
        Ok(echoed)
    });
    let established = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let keep_busy = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize> {
            let deadline = Instant::now() + Duration::from_secs(45);
            let mut rounds = 0;
            let mut byte = [0u8; 1];
            while !stop.load(Ordering::SeqCst) && rounds < 150 && Instant::now() < deadline {
                busy.send(b"busy")?;
                tcp.write_all(&[rounds as u8])?;
                tcp.read_exact(&mut byte)?;
                ensure!(
                    byte[0] == rounds as u8,
                    "echo {} for {}",
                    byte[0],
                    rounds as u8
                );
                rounds += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            tcp.shutdown(Shutdown::Write)?;
            Ok(rounds)
        })
    };
    let _stop = StopOnDrop(stop.clone());

    let rows = lab.table_filtered(&["--proto", "udp"]).unwrap();
    assert!(udp_row(&rows, idle_local).is_some(), "{rows:#?}");
    assert!(udp_row(&rows, busy_local).is_some(), "{rows:#?}");
    let mappings_before = json(&lab, &["stats", "--json"])["dynamic_mappings"]
        .as_u64()
        .unwrap();
    assert!(mappings_before >= 3, "{mappings_before}");

    // Each sweep's report lasts until the next (a second here): polled
    // more often than that, every report is seen.
    let (mut sessions_removed, mut bindings_removed) = (false, false);
    let mut mappings_now = mappings_before;
    let outcome = wait_for("the idle flow to age out", Duration::from_secs(30), || {
        let stats = json(&lab, &["stats", "--json"]);
        let sweep = &stats["last_sweep"];
        sessions_removed |= sweep["sessions_removed"].as_u64().unwrap_or(0) > 0;
        bindings_removed |= sweep["bindings_removed"].as_u64().unwrap_or(0) > 0;
        mappings_now = stats["dynamic_mappings"].as_u64().unwrap_or(u64::MAX);
        let rows = lab.table_filtered(&["--proto", "udp"]).unwrap();
        (udp_row(&rows, idle_local).is_none()
            && mappings_now < mappings_before
            && sessions_removed
            && bindings_removed
            && established.elapsed() > Duration::from_secs(8))
        .then_some(rows)
    });
    let rows = outcome.unwrap_or_else(|error| {
        panic!(
            "{error}: sweeps seen removing sessions: {sessions_removed}, mappings: \
             {bindings_removed}; mappings {mappings_before} -> {mappings_now}; table {:#?}",
            lab.table().unwrap()
        )
    });
    // The busy ones are still there, well past their timeouts.
    assert!(
        udp_row(&rows, busy_local).is_some(),
        "busy UDP flow aged out: {rows:#?}"
    );
    let tcp_rows = lab
        .table_filtered(&["--proto", "tcp", "--type", "dynamic"])
        .unwrap();
    assert!(
        tcp_rows
            .iter()
            .any(|row| row["remote_port"] == 9201 && row["state"] == "established"),
        "busy TCP connection aged out: {tcp_rows:#?}"
    );

    // The idle mapping is gone: the WAN host can no longer reach in on it.
    udp_blocked_to(&wan, idle_external, &idle, "the aged-out mapping");

    stop.store(true, Ordering::SeqCst);
    let rounds = join(keep_busy);
    assert!(rounds > 0);
    assert_eq!(
        join(echo_server),
        rounds,
        "every busy TCP round trip came back"
    );
}

/// Sets a stop flag when dropped, so a failing test ends its busy thread.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Datagrams to `to` do not arrive at `lan`: three probes sent, then a
/// bounded wait for any of them.
fn udp_blocked_to(from: &UdpSocket, to: SocketAddr, lan: &UdpSocket, what: &str) {
    drain(lan);
    for attempt in 0..3u8 {
        from.send_to(&[b'x', attempt], to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buffer = [0u8; 64];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
    {
        lan.set_read_timeout(Some(left)).unwrap();
        match uninterrupted(|| lan.recv_from(&mut buffer)) {
            // A retry `udp_reaches` sent while the port was open may land
            // after the drain on a loaded machine: not one of these probes.
            Ok((len, _)) if len == 0 || buffer[0] != b'x' => continue,
            Ok((len, peer)) => panic!("{what}: {len} bytes from {peer} reached the LAN"),
            Err(error) => {
                assert!(
                    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "{error}"
                );
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 10. A new WAN address
// ---------------------------------------------------------------------------

#[test]
fn a_new_wan_address_is_followed() {
    let lab = Lab::start().unwrap();
    let listener = tcp_listener(&lab.wan, WAN_HOST, 9300);
    let client = lab.lan.spawn(|| connect((WAN_HOST, 9300).into()));
    let (_, peer) = accept(&listener).unwrap();
    join(client);
    assert_eq!(peer.ip(), ROUTER_WAN);

    lab.router
        .ip(&["addr", "del", "203.0.113.1/24", "dev", "wan0"])
        .unwrap();
    lab.router
        .ip(&["addr", "add", "203.0.113.3/24", "dev", "wan0"])
        .unwrap();
    let new_address = Ipv4Addr::new(203, 0, 113, 3);
    // The daemon learns of the change over netlink: until it has, the
    // datapath still writes the old address, as any NAT would in the
    // moment between the change and its notification.
    wait_for(
        "the daemon to follow the new address",
        Duration::from_secs(10),
        || (json(&lab, &["status"])["wan"]["network"] == "203.0.113.3/24").then_some(()),
    )
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));

    // New connections until one arrives (bounded attempts); any that
    // arrives must come from the new address.
    listener.set_nonblocking(true).unwrap();
    let mut attempts = 0;
    let peer = wait_for(
        "a connection from the new WAN address",
        Duration::from_secs(30),
        || {
            attempts += 1;
            if attempts > 20 {
                return None;
            }
            let _ = join(lab.lan.spawn(|| {
                Ok(TcpStream::connect_timeout(
                    &SocketAddr::from((WAN_HOST, 9300)),
                    Duration::from_secs(1),
                )
                .ok())
            }));
            listener.accept().ok().map(|(_, peer)| peer)
        },
    )
    .unwrap_or_else(|error| panic!("{error}: {}", lab.natctl_log()));
    assert_eq!(peer.ip(), new_address, "the WAN host saw {peer}");
    assert!(
        lab.natctl_log().contains("203.0.113.3/24"),
        "{}",
        lab.natctl_log()
    );
}
