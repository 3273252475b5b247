//! The NAT type a user picks (`[nat] type`, or `mapping` and `filtering`),
//! as the tools applications use to learn it report it: coturn's
//! `turnutils_natdiscovery` (RFC 5780 behaviour discovery: mapping,
//! filtering, hairpinning, and each again with 1500 bytes of padding, so
//! through fragments) and the classic RFC 3489 client pystun3, both from a
//! LAN host, against coturn's `turnserver` on a WAN host with two
//! addresses, through the real `natctl daemon` (TC mode, offloads on).
//!
//! `cargo xtask setup` installs coturn (Debian) and pystun3 (PyPI, into
//! `target/python`). Every server runs inside the lab's WAN namespace with
//! its pid file and database in a directory of its own, and is killed when
//! its test ends; every client run is bounded by `timeout`.
use std::{
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use nat_tests::{
    lab::{LAN_CLIENT, Lab, ROUTER_WAN, WAN_HOST},
    plan::{HOST_IF, WAN_PREFIX},
    wait_for,
};

/// The STUN server's second address (RFC 5780's alternate address).
const WAN_HOST_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
const STUN_PORT: u16 = 3478;
const STUN_ALT_PORT: u16 = 3479;
/// What one client run may take at most: a discovery whose answers are all
/// filtered waits for several retransmissions of each of its tests.
const CLIENT_TIMEOUT_SECS: &str = "60";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// coturn's `turnserver` in STUN-only mode on both of the WAN host's
/// addresses and both ports; killed on drop.
struct StunServer {
    child: Child,
    dir: PathBuf,
}

impl StunServer {
    fn start(lab: &Lab) -> Self {
        lab.wan
            .ip(&[
                "addr",
                "add",
                &format!("{WAN_HOST_ALT}/{WAN_PREFIX}"),
                "dev",
                HOST_IF,
            ])
            .expect("a second address for the WAN host");
        let dir = std::env::temp_dir().join(format!(
            "nat-stun-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        let log = fs::File::create(dir.join("turnserver.log")).unwrap();
        // An empty configuration of its own: Debian's /etc/turnserver.conf
        // turns RFC 5780 and the RFC 3489 backward compatibility off.
        let conf = dir.join("turnserver.conf");
        fs::write(&conf, "").unwrap();
        let (primary, alternate) = (WAN_HOST.to_string(), WAN_HOST_ALT.to_string());
        let child = lab
            .wan
            .command("turnserver")
            .arg("-c")
            .arg(&conf)
            .args(["-L", &primary, "-L", &alternate])
            .args(["--listening-port", &STUN_PORT.to_string()])
            .args(["--alt-listening-port", &STUN_ALT_PORT.to_string()])
            .args([
                "--stun-only",
                "--no-auth",
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
            ])
            .args(["--no-cli", "--log-file", "stdout", "--simple-log"])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--userdb")
            .arg(dir.join("turnserver.db"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting turnserver (is coturn installed? `cargo xtask setup`)");
        let mut server = Self { child, dir };
        // It answers from the alternate port by a socket it binds when it
        // needs it: only the primary port is seen listening.
        let wanted = [&primary, &alternate].map(|addr| format!("{addr}:{STUN_PORT}"));
        let listening = wait_for(
            "turnserver to listen on both addresses",
            Duration::from_secs(20),
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("turnserver exited ({status}): {}", server.log());
                }
                let sockets = lab.wan.exec("ss", &["-Hlun"]).ok()?;
                let sockets = String::from_utf8_lossy(&sockets.stdout).into_owned();
                wanted
                    .iter()
                    .all(|socket| sockets.contains(&format!("{socket} ")))
                    .then_some(())
            },
        );
        if let Err(error) = listening {
            panic!("{error}: {}", server.log());
        }
        server
    }

    fn log(&mut self) -> String {
        fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What a client printed, for the assertion messages.
fn described(what: &str, output: &Output) -> String {
    format!(
        "`{what}`: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `turnutils_natdiscovery FLAGS -L <LAN host> <STUN server>` from the LAN
/// host. `-L` makes its sockets share one local port, as RFC 5780 tests
/// assume.
fn natdiscovery(lab: &Lab, flags: &[&str]) -> String {
    let (local, server) = (LAN_CLIENT.to_string(), WAN_HOST.to_string());
    let output = lab
        .lan
        .command("timeout")
        .args([CLIENT_TIMEOUT_SECS, "turnutils_natdiscovery"])
        .args(flags)
        .args(["-L", &local, "-p", &STUN_PORT.to_string(), &server])
        .output()
        .expect("running turnutils_natdiscovery (is coturn installed? `cargo xtask setup`)");
    let text = described(
        &format!("turnutils_natdiscovery {}", flags.join(" ")),
        &output,
    );
    assert!(output.status.success(), "{text}\n{}", lab.natctl_log());
    text
}

/// pystun3 from the venv `cargo xtask setup` makes under the target
/// directory (the test binary runs from `target/<profile>/deps`).
fn pystun3_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("python/bin/pystun3"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "pystun3 not found in target/python/bin beside {}: run `cargo xtask setup`",
                exe.display()
            )
        })
}

/// pystun3's "NAT Type" and "External IP" lines, run from the LAN host on
/// `source_port`.
fn pystun3(lab: &Lab, source_port: u16) -> (String, String) {
    let (local, server) = (LAN_CLIENT.to_string(), WAN_HOST.to_string());
    let output = lab
        .lan
        .command("timeout")
        .arg(CLIENT_TIMEOUT_SECS)
        .arg(pystun3_path())
        .args(["-H", &server, "-P", &STUN_PORT.to_string()])
        .args(["-i", &local, "-p", &source_port.to_string()])
        .output()
        .expect("running pystun3");
    let text = described("pystun3", &output);
    assert!(output.status.success(), "{text}\n{}", lab.natctl_log());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} line: {text}"))
    };
    (field("NAT Type:"), field("External IP:"))
}

/// natdiscovery's one-line verdict, e.g. "NAT with Endpoint Independent
/// Mapping!".
fn verdict(kind: &str, behaviour: &str) -> String {
    let words = match behaviour {
        "endpoint-independent" => "Endpoint Independent",
        "address-dependent" => "Address Dependent",
        "address-and-port-dependent" => "Address and Port Dependent",
        other => panic!("no such behaviour {other}"),
    };
    format!("NAT with {words} {kind}!")
}

const HAIRPINNED: &str = "Received a request (maybe a successful hairpinning)";

/// Every verdict natdiscovery can give for `kind`: exactly `expected` of
/// them must be in `text`.
fn assert_verdict(text: &str, kind: &str, expected: &str, context: &str) {
    let wanted = verdict(kind, expected);
    assert!(
        text.contains(&wanted),
        "{context}: expected {wanted:?}\n{text}"
    );
    for other in [
        "endpoint-independent",
        "address-dependent",
        "address-and-port-dependent",
    ] {
        if other != expected {
            let unwanted = verdict(kind, other);
            assert!(!text.contains(&unwanted), "{context}: {unwanted:?}\n{text}");
        }
    }
    assert!(
        !text.contains("No NAT!"),
        "{context}: the NAT was not seen\n{text}"
    );
}

/// After one mapping discovery (tests I, II and III: the primary address,
/// the alternate address, the alternate address and port, from one local
/// port), `natctl table` shows a dynamic row per remote, on as many
/// external ports as the mapping behaviour makes mappings.
fn assert_table_shows_the_mappings(lab: &Lab, mapping: &str, context: &str) {
    let rows = lab.table().expect("natctl table");
    let mut ports: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let servers = [WAN_HOST.to_string(), WAN_HOST_ALT.to_string()];
    for row in &rows {
        let field = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
        if field("type") == "DYNAMIC"
            && field("protocol") == "UDP"
            && field("local_ip") == LAN_CLIENT.to_string()
            && servers.contains(&field("remote_ip"))
        {
            ports
                .entry(row["local_port"].to_string())
                .or_default()
                .insert(row["external_port"].to_string());
        }
    }
    let expected = match mapping {
        "endpoint-independent" => 1,
        "address-dependent" => 2,
        _ => 3,
    };
    assert_eq!(
        ports
            .values()
            .map(|external| external.len())
            .collect::<Vec<_>>(),
        [expected],
        "{context}: external ports by local port in `natctl table`: {ports:?}\n{rows:#?}"
    );
}

/// One lab configured with `nat` (the `[nat]` table's keys), asserting what
/// natdiscovery reports with and without padding; and, for a classic type,
/// pystun3's name for it.
fn check(nat: &str, mapping: &str, filtering: &str, rfc3489_name: Option<&str>) {
    let mut lab = Lab::start_with_config(&format!("[nat]\n{nat}\n")).expect("starting the lab");
    let _server = StunServer::start(&lab);
    let context = format!("[nat] {nat}");
    let status = lab.status().expect("natctl status");
    assert_eq!(
        (&status["nat"]["mapping"], &status["nat"]["filtering"]),
        (&mapping.into(), &filtering.into()),
        "{context}: natctl status"
    );
    for padding in [&[][..], &["-P"][..]] {
        let context = format!("{context} {}", padding.join(" "));
        let text = natdiscovery(&lab, &[&["-m"], padding].concat());
        assert_verdict(&text, "Mapping", mapping, &context);
        assert!(text.contains(&ROUTER_WAN.to_string()), "{context}: {text}");
        if padding.is_empty() {
            assert_table_shows_the_mappings(&lab, mapping, &context);
        }
        let text = natdiscovery(&lab, &[&["-f"], padding].concat());
        assert_verdict(&text, "Filtering", filtering, &context);
    }
    // Hairpinning (RFC 4787 REQ-9): a second socket's request to the
    // first one's mapped address comes back to the first through the WAN
    // address, from the second's mapped address; the first one's filter
    // judges it as it would an outsider's, so it passes only when that
    // filter lets anyone in (the first never sent to the WAN address).
    let text = natdiscovery(&lab, &["-H"]);
    assert_eq!(
        text.contains(HAIRPINNED),
        filtering == "endpoint-independent",
        "{context}: hairpinning\n{text}"
    );
    if let Some(name) = rfc3489_name {
        let (nat_type, external) = pystun3(&lab, 54320);
        assert_eq!(nat_type, name, "{context}: pystun3");
        // pystun3 reports the address of its last test, which for a port
        // restricted cone is the one that got no answer.
        let expected = match name {
            "Restric Port NAT" => "None".to_owned(),
            _ => ROUTER_WAN.to_string(),
        };
        assert_eq!(external, expected, "{context}: pystun3");
    }
    lab.check_no_lan_leak().expect("no LAN address on the WAN");
}

#[test]
fn full_cone() {
    check(
        "type = \"full-cone\"",
        "endpoint-independent",
        "endpoint-independent",
        Some("Full Cone"),
    );
}

#[test]
fn restricted_cone() {
    check(
        "type = \"restricted-cone\"",
        "endpoint-independent",
        "address-dependent",
        Some("Restric NAT"),
    );
}

#[test]
fn port_restricted_cone_is_the_default() {
    check(
        "",
        "endpoint-independent",
        "address-and-port-dependent",
        Some("Restric Port NAT"),
    );
    check(
        "type = \"port-restricted-cone\"",
        "endpoint-independent",
        "address-and-port-dependent",
        Some("Restric Port NAT"),
    );
}

#[test]
fn symmetric() {
    check(
        "type = \"symmetric\"",
        "address-and-port-dependent",
        "address-and-port-dependent",
        Some("Symmetric NAT"),
    );
}

/// The five pairs no classic name covers, set by `mapping` and
/// `filtering`.
#[test]
fn every_other_mapping_and_filtering_pair() {
    for (mapping, filtering) in [
        ("address-dependent", "endpoint-independent"),
        ("address-dependent", "address-dependent"),
        ("address-dependent", "address-and-port-dependent"),
        ("address-and-port-dependent", "endpoint-independent"),
        ("address-and-port-dependent", "address-dependent"),
    ] {
        check(
            &format!("mapping = \"{mapping}\"\nfiltering = \"{filtering}\""),
            mapping,
            filtering,
            None,
        );
    }
}

/// `natctl config check` names the behaviour a file sets, and refuses one
/// whose `type` and `mapping` disagree, naming both keys and values.
#[test]
fn config_check_shows_the_type_and_refuses_a_conflict() {
    let dir = std::env::temp_dir().join(format!(
        "nat-stun-config-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap();
    let check = |text: &str| {
        let file = dir.join("natctl.toml");
        fs::write(&file, text).unwrap();
        let output = std::process::Command::new(nat_tests::lab::natctl_path().unwrap())
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let text = described("natctl config check", &output);
        (output.status.success(), text)
    };
    let (ok, text) = check("[nat]\ntype = \"symmetric\"\n");
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "NAT symmetric (address-and-port-dependent mapping, address-and-port-dependent filtering)"
        ),
        "{text}"
    );
    let (ok, text) = check("[nat]\nmapping = \"address-dependent\"\n");
    assert!(ok, "{text}");
    assert!(
        text.contains("NAT address-dependent mapping, address-and-port-dependent filtering"),
        "{text}"
    );
    let (ok, text) = check("[nat]\ntype = \"full-cone\"\nmapping = \"address-dependent\"\n");
    assert!(!ok, "{text}");
    for words in [
        "natctl.toml line 1",
        "type = \"full-cone\"",
        "mapping = \"address-dependent\"",
        "mapping = \"endpoint-independent\"",
    ] {
        assert!(text.contains(words), "{words}: {text}");
    }
    let _ = fs::remove_dir_all(&dir);
}
