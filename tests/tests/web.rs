//! The admin page end to end: the real daemon serves it on the LAN address
//! of the lab's router, and a real headless Chromium on the LAN host (its
//! chromedriver and its traffic inside the LAN host's namespace) logs in,
//! adds a rule, sees it in the list and in `natctl list`, opens the port
//! from the WAN host, modifies and deletes it. Plain HTTP from the LAN host
//! shows the refusals: a wrong password, forms without their CSRF token or
//! from another site, a foreign Host header, too many logins; and the WAN
//! host cannot reach the page.
//!
//! A screenshot of each page goes to `target/web-screenshots/`.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use nat_tests::{
    lab::{LAN_CLIENT, LAN_SERVER, Lab, ROUTER_LAN, ROUTER_WAN, natctl_path},
    netns::Netns,
    traffic::{accept, connect, connect_from},
};
use serde_json::Value;

const WEB_PORT: u16 = 8080;
const PASSWORD: &str = "lab admin password";
/// chromedriver's port on the LAN host's own loopback.
const DRIVER_PORT: u16 = 9515;

fn web_lab() -> Lab {
    let lab = Lab::start_with_config(&format!(
        "[web]\nlisten = \"{ROUTER_LAN}:{WEB_PORT}\"\nnames = [\"router.lan\"]\n"
    ))
    .expect("lab");
    set_password(&lab, PASSWORD);
    lab
}

/// `natctl passwd`, the password on stdin (as a script would give it).
fn set_password(lab: &Lab, password: &str) {
    let mut child = Command::new(natctl_path().unwrap())
        .arg("--config")
        .arg(lab.config_file())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("natctl passwd");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "natctl passwd: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let saved = String::from_utf8_lossy(&output.stdout);
    assert!(saved.contains("web-password"), "{saved}");
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rules(socket: &std::path::Path) -> Vec<Value> {
    let output = Command::new(natctl_path().unwrap())
        .arg("--socket")
        .arg(socket)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn status(socket: &std::path::Path) -> Value {
    let output = Command::new(natctl_path().unwrap())
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A WAN host's connection to the router's WAN address on `port` reaches
/// `listener` (on the LAN host) with its bytes.
fn wan_reaches(wan_netns: &str, port: u16, listener: &TcpListener) -> Result<()> {
    let path = format!("/run/netns/{wan_netns}");
    let client = std::thread::spawn(move || -> Result<()> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut stream = connect((ROUTER_WAN, port).into())?;
        stream.write_all(b"through the admin page's rule")?;
        Ok(())
    });
    let (mut stream, _) = accept(listener)?;
    let mut got = [0u8; 29];
    stream.read_exact(&mut got)?;
    ensure!(&got == b"through the admin page's rule", "{got:?}");
    client.join().expect("WAN client panicked")
}

/// chromedriver in the LAN host's namespace, killed on drop.
struct Driver(Child);

impl Driver {
    fn start(lan: &Netns) -> Self {
        let child = lan
            .command("chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver in the LAN host (`cargo xtask setup` installs it)");
        Self(child)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until the element `id` holds `needle`; returns its text.
async fn wait_text(client: &Client, id: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = client.find(Locator::Id(id)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(needle) {
                return Ok(text);
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("#{id} never said {needle:?} (last: {last:?})")
}

async fn screenshot(client: &Client, name: &str) -> Result<()> {
    let png = client.screenshot().await?;
    ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png)?;
    Ok(())
}

async fn fill(client: &Client, id: &str, value: &str) -> Result<()> {
    let field = client.find(Locator::Id(id)).await?;
    field.clear().await?;
    field.send_keys(value).await?;
    Ok(())
}

/// The browser's part, run in the LAN host's namespace.
async fn browse(socket: PathBuf, lan_netns: String, wan_netns: String) -> Result<()> {
    let profile = std::env::temp_dir().join(format!("natctl-chromium-{}", std::process::id()));
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                // Chromium refuses to run as root without it.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1100,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let driver = format!("http://127.0.0.1:{DRIVER_PORT}");
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.as_object().unwrap().clone())
                .connect(&driver)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() > deadline => {
                    bail!("chromedriver in the LAN host never took a session: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    let mut outcome = flow(&client, &socket, &lan_netns, &wan_netns).await;
    if let Err(error) = outcome {
        // What the browser had on screen, for the failure's message.
        let _ = screenshot(&client, "failure").await;
        let url = client.current_url().await.map(|url| url.to_string());
        let source = client.source().await.unwrap_or_default();
        outcome = Err(error.context(format!("at {url:?}, showing:\n{source}")));
    }
    let _ = client.close().await;
    let _ = std::fs::remove_dir_all(&profile);
    outcome
}

async fn flow(
    client: &Client,
    socket: &std::path::Path,
    lan_netns: &str,
    wan_netns: &str,
) -> Result<()> {
    let base = format!("http://{ROUTER_LAN}:{WEB_PORT}");
    // No page without a login.
    client.goto(&format!("{base}/forwarding")).await?;
    ensure!(client.current_url().await?.path() == "/login");
    screenshot(client, "login").await?;
    fill(client, "password", PASSWORD).await?;
    client.find(Locator::Id("login")).await?.click().await?;
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("rule-form"))
        .await
        .with_context(|| "the port-forwarding page after the login")?;

    // A rule into a host outside the LAN: the CLI's own error, beside the
    // field.
    fill(client, "name", "ssh").await?;
    fill(client, "external", "2222").await?;
    fill(client, "internal_addr", "10.9.9.9").await?;
    fill(client, "internal", "22").await?;
    client.find(Locator::Id("save")).await?.click().await?;
    let error = wait_text(client, "internal_addr-error", "outside the LAN").await?;
    ensure!(
        error == "rule ssh: internal address 10.9.9.9 is outside the LAN 192.168.0.0/24",
        "{error}"
    );
    screenshot(client, "forwarding-error").await?;
    ensure!(rules(socket).is_empty(), "a refused rule was added");

    // The typed values stayed; correct the address and add.
    fill(client, "internal_addr", &LAN_SERVER.to_string()).await?;
    client.find(Locator::Id("save")).await?.click().await?;
    wait_text(client, "notice", "Rule ssh added.").await?;
    let row = client
        .find(Locator::Css("tr[data-rule='ssh']"))
        .await?
        .text()
        .await?;
    ensure!(
        row.contains("2222") && row.contains("192.168.0.12") && row.contains("22"),
        "{row}"
    );
    screenshot(client, "forwarding").await?;
    let listed = rules(socket);
    ensure!(listed.len() == 1, "{listed:?}");
    ensure!(listed[0]["name"] == "ssh" && listed[0]["external"] == "2222");
    ensure!(listed[0]["internal"] == "22" && listed[0]["internal_addr"] == "192.168.0.12");

    let server = TcpListener::bind((LAN_SERVER, 22))?;
    wan_reaches(wan_netns, 2222, &server)?;

    // Disable and enable again, with the row's buttons.
    for (action, done, enabled) in [("disable", "disabled", false), ("enable", "enabled", true)] {
        client
            .find(Locator::Css(&format!(
                "tr[data-rule='ssh'] form[action='/forwarding/{action}'] button"
            )))
            .await?
            .click()
            .await?;
        wait_text(client, "notice", &format!("Rule ssh {done}.")).await?;
        let listed = rules(socket);
        ensure!(listed[0]["enabled"] == enabled, "{listed:?}");
    }

    // On a phone the table becomes cards: no header row.
    client.set_window_size(390, 844).await?;
    client.goto(&format!("{base}/forwarding")).await?;
    let header = client
        .execute(
            "return getComputedStyle(document.querySelector('#rules thead')).display",
            vec![],
        )
        .await?;
    ensure!(header == "none", "the table header on a phone: {header}");
    screenshot(client, "forwarding-phone").await?;
    client.set_window_size(1100, 900).await?;

    // Modify: another external port.
    client
        .find(Locator::Css("tr[data-rule='ssh'] a.button"))
        .await?
        .click()
        .await?;
    wait_text(client, "save", "Save").await?;
    fill(client, "external", "2223").await?;
    // A schedule in the CLI's syntax; a bad one first.
    fill(client, "schedule", "someday").await?;
    client.find(Locator::Id("save")).await?.click().await?;
    wait_text(client, "schedule-error", "someday").await?;
    ensure!(
        rules(socket)[0]["external"] == "2222",
        "a refused change was made"
    );
    fill(client, "schedule", "mon-sun 00:00-24:00").await?;
    client.find(Locator::Id("save")).await?.click().await?;
    wait_text(client, "notice", "Rule ssh modified.").await?;
    let listed = rules(socket);
    ensure!(
        listed.len() == 1 && listed[0]["external"] == "2223",
        "{listed:?}"
    );
    ensure!(listed[0]["schedule"].is_string(), "{listed:?}");
    ensure!(listed[0]["schedule_state"]["on"] == true, "{listed:?}");
    ensure!(listed[0]["internal"] == "22", "{listed:?}");
    wan_reaches(wan_netns, 2223, &server)?;

    // The NAT table, filtered as `natctl table --port 2223` filters.
    client.goto(&format!("{base}/table?port=2223")).await?;
    let table = client.find(Locator::Id("nat-table")).await?.text().await?;
    ensure!(
        table.contains("2223") && table.contains("STATIC"),
        "{table}"
    );
    ensure!(!table.contains("2222"), "{table}");
    screenshot(client, "table").await?;
    client
        .goto(&format!("{base}/table?address=nonsense"))
        .await?;
    wait_text(client, "filter-error", "bad address \"nonsense\"").await?;

    // A LAN host maps a port by NAT-PMP; the page shows it and deletes it.
    let natpmpc = Command::new("ip")
        .args(["netns", "exec", lan_netns, "timeout", "10", "natpmpc", "-g"])
        .arg(ROUTER_LAN.to_string())
        .args(["-a", "5000", "5000", "tcp", "3600"])
        .output()
        .context("running natpmpc (`cargo xtask setup` installs it)")?;
    ensure!(natpmpc.status.success(), "natpmpc: {natpmpc:?}");
    let mapping = rules(socket)
        .into_iter()
        .find(|rule| rule["upnp"]["origin"] == "natpmp")
        .context("the NAT-PMP mapping")?;
    let mapping = mapping["name"].as_str().unwrap().to_owned();
    client.goto(&format!("{base}/mappings")).await?;
    let table = client.find(Locator::Id("mappings")).await?.text().await?;
    ensure!(
        table.contains("NAT-PMP TCP") && table.contains("5000") && table.contains(&mapping),
        "{table}"
    );
    screenshot(client, "mappings").await?;
    client
        .find(Locator::Css("#mappings button.danger"))
        .await?
        .click()
        .await?;
    wait_text(client, "notice", &format!("Rule {mapping} deleted.")).await?;
    ensure!(
        rules(socket)
            .iter()
            .all(|rule| rule["name"] != mapping.as_str())
    );
    // The NAT-PMP/PCP switch, off and on.
    for (now, wanted) in [("off", false), ("on", true)] {
        client
            .find(Locator::Css("form[action='/mappings/natpmp'] button"))
            .await?
            .click()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(socket)["natpmp"] != wanted {
            ensure!(Instant::now() < deadline, "NAT-PMP never switched {now}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let switches = client
            .find(Locator::Css("form[action='/mappings/natpmp']"))
            .await?
            .text()
            .await?;
        ensure!(switches.contains(&format!(": {now}")), "{switches}");
    }

    client.goto(&format!("{base}/traffic")).await?;
    let counters = client.find(Locator::Id("counters")).await?.text().await?;
    ensure!(counters.contains("wan_rx"), "{counters}");
    // The chart polls the counters and draws what it got.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let samples = client
            .execute(
                "return document.getElementById('pps').dataset.samples || '0'",
                vec![],
            )
            .await?;
        if samples.as_str().and_then(|n| n.parse::<u32>().ok()) >= Some(2) {
            break;
        }
        ensure!(Instant::now() < deadline, "the chart never drew: {samples}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    screenshot(client, "traffic").await?;

    // The connection log has the WAN host's two connections.
    client.goto(&format!("{base}/log")).await?;
    let log = client
        .find(Locator::Id("connections"))
        .await?
        .text()
        .await?;
    ensure!(log.matches("203.0.113.2").count() >= 2, "{log}");
    ensure!(log.contains("2223") && log.contains("2222"), "{log}");
    screenshot(client, "log").await?;

    // Delete.
    client.goto(&format!("{base}/forwarding")).await?;
    client
        .find(Locator::Css("tr[data-rule='ssh'] button.danger"))
        .await?
        .click()
        .await?;
    wait_text(client, "notice", "Rule ssh deleted.").await?;
    ensure!(rules(socket).is_empty());

    // Log out: the pages need a login again.
    client
        .find(Locator::Css("form.logout button"))
        .await?
        .click()
        .await?;
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Id("password"))
        .await
        .context("the login page after logging out")?;
    client.goto(&format!("{base}/forwarding")).await?;
    ensure!(client.current_url().await?.path() == "/login");
    Ok(())
}

#[test]
fn a_browser_on_the_lan_forwards_a_port_through_the_admin_page() {
    let lab = web_lab();
    let _driver = Driver::start(&lab.lan);
    let socket = lab.socket();
    let wan = lab.wan.name.clone();
    let lan = lab.lan.name.clone();
    let outcome = lab
        .lan
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(browse(socket, lan, wan))
        })
        .join()
        .expect("the browser thread panicked");
    if let Err(error) = outcome {
        panic!("{error:#}\n{}", lab.natctl_log());
    }
    let log = lab.natctl_log();
    assert!(log.contains("rule added: ssh"), "{log}");
    assert!(log.contains("rule ssh removed"), "{log}");
}

// ---------------------------------------------------------------------------
// Refusals, in plain HTTP from the LAN host
// ---------------------------------------------------------------------------

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn cookie(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            if !key.eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let (cookie, _) = value.trim().split_once(';')?;
            let (key, value) = cookie.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
    }

    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// One request from `from` (a LAN host address) to the page, on a
/// connection of its own.
fn http(lan: &Netns, from: Ipv4Addr, request: String) -> Answer {
    let raw = lan
        .spawn(move || {
            let mut stream = connect_from(from, (ROUTER_LAN, WEB_PORT).into())?;
            stream.write_all(request.as_bytes())?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(String::from_utf8(raw)?)
        })
        .join()
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get(lan: &Netns, from: Ipv4Addr, path: &str, host: &str, cookie: &str) -> Answer {
    http(
        lan,
        from,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
}

fn post(lan: &Netns, from: Ipv4Addr, path: &str, cookie: &str, extra: &str, body: &str) -> Answer {
    http(
        lan,
        from,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {ROUTER_LAN}:{WEB_PORT}\r\nCookie: {cookie}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn encode(value: &str) -> String {
    value.replace(' ', "+")
}

/// A login attempt from `from`; returns the answer.
fn log_in(lan: &Netns, from: Ipv4Addr, password: &str) -> Answer {
    let form = get(lan, from, "/login", &format!("{ROUTER_LAN}:{WEB_PORT}"), "");
    assert_eq!(form.status, 200, "{}", form.body);
    let cookie = form.cookie("natctl_login").expect("a login form cookie");
    post(
        lan,
        from,
        "/login",
        &format!("natctl_login={cookie}"),
        "",
        &format!("csrf={}&password={}", form.csrf(), encode(password)),
    )
}

#[test]
fn the_admin_page_refuses_what_it_must() {
    let mut lab = web_lab();
    let host = format!("{ROUTER_LAN}:{WEB_PORT}");

    // No page without a login; no change either.
    let answer = get(&lab.lan, LAN_SERVER, "/forwarding", &host, "");
    assert_eq!(answer.status, 303);
    assert!(answer.head.contains("location: /login"), "{}", answer.head);
    let add = "name=web&protocol=tcp&external=8443&internal_addr=192.168.0.12&enabled=on";
    assert_eq!(
        post(&lab.lan, LAN_SERVER, "/forwarding/add", "", "", add).status,
        403
    );

    // A wrong password: refused, and no session.
    let wrong = log_in(&lab.lan, LAN_SERVER, "not the password");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("Wrong password."), "{}", wrong.body);
    assert!(wrong.cookie("natctl_session").is_none(), "{}", wrong.head);
    // A login without its form's token.
    let form = get(&lab.lan, LAN_SERVER, "/login", &host, "");
    let login_cookie = format!("natctl_login={}", form.cookie("natctl_login").unwrap());
    let forged = post(
        &lab.lan,
        LAN_SERVER,
        "/login",
        &login_cookie,
        "",
        &format!("password={}", encode(PASSWORD)),
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.cookie("natctl_session").is_none());

    // The right one.
    let right = log_in(&lab.lan, LAN_SERVER, PASSWORD);
    assert_eq!(right.status, 303, "{}", right.body);
    let session = right.cookie("natctl_session").expect("a session cookie");
    assert_eq!(session.len(), 64, "256 random bits in hex");
    let set_cookie = right
        .head
        .lines()
        .find(|line| line.starts_with("set-cookie: natctl_session"))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = format!("natctl_session={session}");
    let page = get(&lab.lan, LAN_SERVER, "/forwarding", &host, &cookie);
    assert_eq!(page.status, 200);
    let csrf = page.csrf();

    // Forms without their token, with another session's, or from another
    // site change nothing.
    let no_token = post(&lab.lan, LAN_SERVER, "/forwarding/add", &cookie, "", add);
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    let wrong_token = format!("csrf={}&{add}", "0".repeat(64));
    assert_eq!(
        post(
            &lab.lan,
            LAN_SERVER,
            "/forwarding/add",
            &cookie,
            "",
            &wrong_token
        )
        .status,
        403
    );
    let with_token = format!("csrf={csrf}&{add}");
    let cross_site = post(
        &lab.lan,
        LAN_SERVER,
        "/forwarding/add",
        &cookie,
        "Origin: http://evil.example\r\n",
        &with_token,
    );
    assert_eq!(cross_site.status, 403, "{}", cross_site.body);
    assert!(lab.rules().is_empty(), "a refused form changed the rules");
    // The same form with its token goes through.
    let added = post(
        &lab.lan,
        LAN_SERVER,
        "/forwarding/add",
        &cookie,
        "",
        &with_token,
    );
    assert_eq!(added.status, 303, "{}", added.body);
    assert_eq!(lab.rules().len(), 1);
    // And a bad one is refused with the CLI's message.
    let clash = format!(
        "csrf={csrf}&name=web2&protocol=both&external=8443&internal_addr=192.168.0.13&enabled=on"
    );
    let clash = post(&lab.lan, LAN_SERVER, "/forwarding/add", &cookie, "", &clash);
    assert_eq!(clash.status, 422);
    assert!(
        clash
            .body
            .contains("rule web2: external TCP port 8443 is already forwarded by rule web"),
        "{}",
        clash.body
    );
    let cli = lab
        .natctl_output(&[
            "add",
            "web2",
            "--proto",
            "both",
            "--external",
            "8443",
            "--internal",
            "192.168.0.13",
        ])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&cli.stderr)
            .contains("rule web2: external TCP port 8443 is already forwarded by rule web"),
        "the CLI says the same"
    );

    // A name the page does not go by (DNS rebinding) is refused, even
    // with a session; a configured one is not.
    let rebound = get(
        &lab.lan,
        LAN_SERVER,
        "/forwarding",
        "evil.example:8080",
        &cookie,
    );
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    assert!(!rebound.body.contains("web"), "{}", rebound.body);
    let named = get(
        &lab.lan,
        LAN_SERVER,
        "/forwarding",
        "router.lan:8080",
        &cookie,
    );
    assert_eq!(named.status, 200);

    // Logging out ends the session.
    let out = post(
        &lab.lan,
        LAN_SERVER,
        "/logout",
        &cookie,
        "",
        &format!("csrf={csrf}"),
    );
    assert_eq!(out.status, 303);
    assert_eq!(
        get(&lab.lan, LAN_SERVER, "/forwarding", &host, &cookie).status,
        303
    );

    // Guessing: after a few attempts, even the right password waits.
    for _ in 0..5 {
        assert_eq!(log_in(&lab.lan, LAN_CLIENT, "guess guess").status, 401);
    }
    let held = log_in(&lab.lan, LAN_CLIENT, PASSWORD);
    assert_eq!(held.status, 429, "{}", held.body);
    assert!(held.head.contains("retry-after:"), "{}", held.head);
    assert!(held.cookie("natctl_session").is_none());

    // The WAN host gets nothing: nothing listens on the WAN address, and
    // the page's socket is bound to the LAN NIC.
    let wan_try = lab
        .wan
        .spawn(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::from((ROUTER_WAN, WEB_PORT)),
                Duration::from_secs(3),
            )
            .is_ok())
        })
        .join()
        .unwrap()
        .unwrap();
    assert!(!wan_try, "the WAN host reached the admin page");
    let sockets = lab.router.exec("ss", &["-Hltn"]).unwrap();
    let sockets = String::from_utf8_lossy(&sockets.stdout);
    assert!(
        sockets.contains(&format!("{ROUTER_LAN}%lan0:{WEB_PORT}")),
        "{sockets}"
    );

    // A stop drains the page's server with the others.
    let log = lab.stop().unwrap();
    assert!(log.contains("daemon stopped"), "{log}");
}

/// On a terminal `natctl passwd` asks twice and refuses two different
/// answers (`script` gives it a pseudo-terminal).
#[test]
fn natctl_passwd_asks_twice_on_a_terminal() {
    let dir = std::env::temp_dir().join(format!("natctl-passwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("natctl.toml");
    std::fs::write(
        &config,
        format!("rules_file = {:?}\n", dir.join("rules.toml")),
    )
    .unwrap();
    let passwd = |answers: &str| {
        let command = format!(
            "{} --config {} passwd",
            natctl_path().unwrap().display(),
            config.display()
        );
        let mut child = Command::new("timeout")
            .args(["20", "script", "-qec", &command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (bsdutils)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answers.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, text) = passwd("first password\rsecond password\r");
    assert!(!ok, "{text}");
    assert!(text.contains("the two passwords differ"), "{text}");
    assert!(!dir.join("web-password").exists());
    let (ok, text) = passwd("same password\rsame password\r");
    assert!(ok, "{text}");
    assert!(text.contains("Again:"), "asked twice: {text}");
    let hash = std::fs::read_to_string(dir.join("web-password")).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_daemon_refuses_an_admin_page_off_the_lan() {
    let error = match Lab::start_with_config(&format!("[web]\nlisten = \"{ROUTER_WAN}:8080\"\n")) {
        Ok(_) => panic!("the daemon served the admin page on the WAN address"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains(&format!(
            "[web] listen = \"{ROUTER_WAN}:8080\": the admin page is served on the LAN only"
        )),
        "{error}"
    );
}
