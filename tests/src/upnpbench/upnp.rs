//! Part 5: the UPnP IGD. AddPortMapping and DeletePortMapping requests per
//! second and their latency, and the time from the SOAP reply until the
//! datapath forwards, for natctl and for miniupnpd (Debian package,
//! nftables backend) in the same topology.
use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{lab::Lab, netns::Netns, wait_for};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    Scale,
    delay::forwarding_delay,
    kernel::KernelLab,
    median,
    miniupnpd::{MINIUPNPD_EXT_LABEL, MINIUPNPD_RULESET, MiniUpnpd},
    p_ms, round3,
    soap::{Action, Client, Endpoint, Timing},
    summary_ms, target,
};
use crate::{
    plan::{LAN_HOST, ROUTER_LAN, ROUTER_WAN},
    progress,
};

pub(super) const HTTP_PORT: u16 = 5000;
pub(super) const LEASE: u32 = 3600;
/// Mappings one client may hold in the bench's natctl: more than the
/// largest table it fills (1000), all from the one LAN host.
const BENCH_CLIENT_QUOTA: usize = 4096;
/// External (= internal) ports of the request benchmark: 20000 + i.
const REQUEST_BASE: u16 = 20000;
const CONCURRENCY: usize = 4;
/// Add/delete pairs sent to each IGD before anything is measured.
const WARMUP: u16 = 5;
const WARMUP_BASE: u16 = 19000;

/// One IGD under test: where it listens and how to count its mappings.
struct Igd<'a> {
    label: &'static str,
    lan: &'a Netns,
    wan: &'a Netns,
    endpoint: Endpoint,
    count: Box<dyn Fn() -> Result<usize> + 'a>,
}

/// The IGD's server, before its control path is known.
fn server() -> Endpoint {
    Endpoint {
        server: SocketAddrV4::new(ROUTER_LAN, HTTP_PORT),
        path: String::new(),
        source: LAN_HOST,
    }
}

/// The IGD's control endpoint, as its description gives it.
pub(super) fn endpoint(lan: &Netns) -> Result<Endpoint> {
    let server = server();
    lan.spawn(move || {
        let path = super::soap::control_path(&server)?;
        Ok(Endpoint { path, ..server })
    })
    .join()
    .expect("description thread panicked")
}

fn wait_for_igd(lan: &Netns, what: &str) -> Result<()> {
    let endpoint = server();
    let description = what.to_owned();
    lan.spawn(move || {
        wait_for(&description, Duration::from_secs(15), || {
            matches!(super::soap::get_description(&endpoint), Ok(200)).then_some(())
        })
    })
    .join()
    .expect("probe thread panicked")
}

/// A run of requests: what each took, in the order they were issued.
struct RunStats {
    wall: Duration,
    timings: Vec<Timing>,
    connections: u64,
}

impl RunStats {
    fn rps(&self) -> f64 {
        self.timings.len() as f64 / self.wall.as_secs_f64()
    }

    fn totals(&self) -> Vec<Duration> {
        self.timings.iter().map(|t| t.total).collect()
    }
}

/// Sends `actions` from the LAN host with `concurrency` clients, each
/// taking the next action as it finishes one.
fn run_requests(
    lan: &Netns,
    endpoint: &Endpoint,
    actions: Vec<Action>,
    concurrency: usize,
    keep_alive: bool,
) -> Result<RunStats> {
    let actions = Arc::new(actions);
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(concurrency));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let actions = actions.clone();
            let next = next.clone();
            let barrier = barrier.clone();
            let endpoint = endpoint.clone();
            lan.spawn(move || {
                let mut client = Client::new(endpoint, keep_alive);
                let mut done = Vec::new();
                barrier.wait();
                let start = Instant::now();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(action) = actions.get(index) else {
                        break;
                    };
                    let timing = client
                        .call(action)
                        .with_context(|| format!("request {index} ({action:?})"))?;
                    done.push((index, timing));
                }
                Ok((start, Instant::now(), done, client.connections))
            })
        })
        .collect();
    let mut timings = vec![None; actions.len()];
    let mut first = None::<Instant>;
    let mut last = None::<Instant>;
    let mut connections = 0;
    let mut failure = None;
    for worker in workers {
        match worker.join().expect("request thread panicked") {
            Ok((start, end, done, count)) => {
                first = Some(first.map_or(start, |f| f.min(start)));
                last = Some(last.map_or(end, |l| l.max(end)));
                connections += count;
                for (index, timing) in done {
                    timings[index] = Some(timing);
                }
            }
            Err(error) => failure = Some(error),
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(RunStats {
        wall: last.context("no worker")? - first.context("no worker")?,
        timings: timings
            .into_iter()
            .map(|timing| timing.context("a request was never made"))
            .collect::<Result<_>>()?,
        connections,
    })
}

fn adds(count: usize) -> Vec<Action> {
    (0..count)
        .map(|i| Action::Add {
            port: REQUEST_BASE + i as u16,
            client: LAN_HOST,
            lease: LEASE,
        })
        .collect()
}

fn deletes(count: usize) -> Vec<Action> {
    (0..count)
        .map(|i| Action::Delete {
            port: REQUEST_BASE + i as u16,
        })
        .collect()
}

/// The measured modes: (name, concurrency, keep-alive). The first is the
/// one the targets are about: one request per connection, one at a time,
/// as miniupnpc (and most clients) do.
const MODES: [(&str, usize, bool); 3] = [
    ("c1_close", 1, false),
    ("c4_close", CONCURRENCY, false),
    ("c1_keepalive", 1, true),
];

/// All runs of one mode on one IGD, over the rounds.
#[derive(Default)]
struct ModeRuns {
    add: Vec<RunStats>,
    delete: Vec<RunStats>,
}

fn mode_json(runs: &ModeRuns, requests: usize) -> Value {
    // `growing`: the run adds mappings (the IGD holds the most at its
    // end), or deletes them (the most at its start).
    let phase = |stats: &[RunStats], growing: bool| {
        let rps: Vec<f64> = stats.iter().map(RunStats::rps).collect();
        let totals: Vec<Duration> = stats.iter().flat_map(RunStats::totals).collect();
        let connects: Vec<Duration> = stats
            .iter()
            .flat_map(|s| s.timings.iter().map(|t| t.connect))
            .collect();
        let server: Vec<Duration> = stats
            .iter()
            .flat_map(|s| s.timings.iter().map(|t| t.server))
            .collect();
        // Latency against the number of mappings held: the first and the
        // last tenth of each run.
        let tenth = (requests / 10).max(1);
        let first: Vec<Duration> = stats
            .iter()
            .flat_map(|s| s.timings.iter().take(tenth).map(|t| t.total))
            .collect();
        let last: Vec<Duration> = stats
            .iter()
            .flat_map(|s| s.timings.iter().rev().take(tenth).map(|t| t.total))
            .collect();
        let (fewest, most) = if growing {
            (&first, &last)
        } else {
            (&last, &first)
        };
        json!({
            "rps_per_round": rps.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "rps": round3(median(&rps)),
            "latency": summary_ms(&totals),
            "connect": summary_ms(&connects),
            "server_time": summary_ms(&server),
            "p50_fewest_mappings_ms": round3(p_ms(fewest, 50.0)),
            "p50_most_mappings_ms": round3(p_ms(most, 50.0)),
            "connections": stats.iter().map(|s| s.connections).sum::<u64>(),
        })
    };
    json!({ "add": phase(&runs.add, true), "delete": phase(&runs.delete, false) })
}

/// Counts natctl's UPnP mappings (`natctl list --json`).
fn natctl_mappings(lab: &Lab) -> Result<usize> {
    let list: Value = serde_json::from_str(&lab.natctl(&["list", "--json"])?)?;
    let rules = list
        .as_array()
        .or_else(|| list["rules"].as_array())
        .context("natctl list --json: no array of rules")?;
    Ok(rules
        .iter()
        .filter(|rule| {
            rule["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("upnp-"))
        })
        .count())
}

/// Counts miniupnpd's DNAT rules in its prerouting chain.
fn miniupnpd_mappings(router: &Netns) -> Result<usize> {
    let output = router.exec(
        "nft",
        &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
    )?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("dnat"))
        .count())
}

pub fn run(scale: &Scale) -> Result<Value> {
    progress!("upnp: starting the natctl lab (UPnP on port {HTTP_PORT})");
    // Unlimited: the bench measures the server, not its rate limit; one
    // client makes every mapping of the run, so its quota (128 by default)
    // is above the largest table measured.
    let lab = Lab::start_with_config(&format!(
        "[upnp]\nhttp_port = {HTTP_PORT}\nrate_limit = 1000000\nmax_mappings_per_client = {BENCH_CLIENT_QUOTA}\n"
    ))?;
    wait_for_igd(&lab.lan, "natctl's UPnP HTTP server")
        .map_err(|error| anyhow::anyhow!("{error}: {}", lab.natctl_log()))?;
    progress!("upnp: starting the nftables topology with miniupnpd");
    let kernel = KernelLab::start(MINIUPNPD_RULESET, Some(MINIUPNPD_EXT_LABEL), true)?;
    let miniupnpd = MiniUpnpd::start(&kernel.router)?;
    wait_for_igd(&kernel.lan, "miniupnpd's HTTP server")?;

    let igds = [
        Igd {
            label: "natctl",
            lan: &lab.lan,
            wan: &lab.wan,
            endpoint: endpoint(&lab.lan)?,
            count: Box::new(|| natctl_mappings(&lab)),
        },
        Igd {
            label: "miniupnpd",
            lan: &kernel.lan,
            wan: &kernel.wan,
            endpoint: endpoint(&kernel.lan)?,
            count: Box::new(|| miniupnpd_mappings(&kernel.router)),
        },
    ];
    // A few requests first, not counted: both servers start cold.
    for igd in &igds {
        let endpoint = igd.endpoint.clone();
        igd.lan
            .spawn(move || -> Result<()> {
                for k in 0..WARMUP {
                    let port = WARMUP_BASE + k;
                    let mut client = Client::new(endpoint.clone(), false);
                    client.call(&Action::Add {
                        port,
                        client: LAN_HOST,
                        lease: LEASE,
                    })?;
                    client.call(&Action::Delete { port })?;
                }
                Ok(())
            })
            .join()
            .expect("warm-up thread panicked")
            .with_context(|| format!("{} warm-up", igd.label))?;
    }
    let mut sizes = serde_json::Map::new();
    for set in &scale.request_sets {
        let n = set.requests;
        // runs[igd][mode]
        let mut runs: Vec<Vec<ModeRuns>> = igds
            .iter()
            .map(|_| MODES.iter().map(|_| ModeRuns::default()).collect())
            .collect();
        // The two IGDs take turns mode by mode, and who goes first
        // alternates by round, so that load from elsewhere on the machine
        // falls on both alike.
        for round in 0..set.rounds {
            for &m in &set.modes {
                for turn in 0..igds.len() {
                    let i = (turn + round) % igds.len();
                    let igd = &igds[i];
                    let (mode, concurrency, keep_alive) = MODES[m];
                    progress!(
                        "upnp: {n} mappings, round {}/{} {} {mode}: {n} AddPortMapping, {n} DeletePortMapping",
                        round + 1,
                        set.rounds,
                        igd.label
                    );
                    let add =
                        run_requests(igd.lan, &igd.endpoint, adds(n), concurrency, keep_alive)
                            .with_context(|| format!("{} {mode} AddPortMapping", igd.label))?;
                    let held = (igd.count)()?;
                    if held != n {
                        bail!(
                            "{} holds {held} mappings after {n} successful AddPortMapping",
                            igd.label
                        );
                    }
                    let delete =
                        run_requests(igd.lan, &igd.endpoint, deletes(n), concurrency, keep_alive)
                            .with_context(|| format!("{} {mode} DeletePortMapping", igd.label))?;
                    let held = (igd.count)()?;
                    if held != 0 {
                        bail!(
                            "{} still holds {held} mappings after {n} successful DeletePortMapping",
                            igd.label
                        );
                    }
                    runs[i][m].add.push(add);
                    runs[i][m].delete.push(delete);
                }
            }
        }
        let mut size = json!({ "requests_per_run": n, "rounds": set.rounds });
        for (i, igd) in igds.iter().enumerate() {
            size[igd.label] = json!({});
            for &m in &set.modes {
                size[igd.label][MODES[m].0] = mode_json(&runs[i][m], n);
            }
        }
        let mut ratios = json!({});
        for &m in &set.modes {
            let mode = MODES[m].0;
            let ratio = |phase: &str| {
                let ours = size["natctl"][mode][phase]["rps"]
                    .as_f64()
                    .unwrap_or(f64::NAN);
                let theirs = size["miniupnpd"][mode][phase]["rps"]
                    .as_f64()
                    .unwrap_or(f64::NAN);
                round3(ours / theirs)
            };
            ratios[mode] = json!({ "add": ratio("add"), "delete": ratio("delete") });
        }
        size["rps_ratio_natctl_over_miniupnpd"] = ratios;
        sizes.insert(n.to_string(), size);
    }
    // The first table size's figures at the top (natctl / miniupnpd /
    // rps_ratio_natctl_over_miniupnpd), every size's under by_table_size.
    let primary = scale.request_sets[0].requests.to_string();
    let mut result = json!({
        "requests_per_run": scale.request_sets[0].requests,
        "rounds": scale.request_sets[0].rounds,
        "natctl": sizes[&primary]["natctl"].clone(),
        "miniupnpd": sizes[&primary]["miniupnpd"].clone(),
        "rps_ratio_natctl_over_miniupnpd": sizes[&primary]["rps_ratio_natctl_over_miniupnpd"].clone(),
        "by_table_size": sizes,
        "warmup": format!("{WARMUP} AddPortMapping/DeletePortMapping pairs per IGD before measuring, not counted"),
        "modes": {
            "c1_close": "one client, one request per connection (Connection: close), as miniupnpc does; the targets are about this mode",
            "c4_close": format!("{CONCURRENCY} clients at once, one request per connection"),
            "c1_keepalive": "one client reusing its connection while the server allows (miniupnpd closes after every response)",
        },
        "request": format!("N AddPortMapping (UDP, external = internal port {REQUEST_BASE}+i, to the LAN host itself as secure mode requires, lease {LEASE} s, SOAP WANIPConnection:1) from {LAN_HOST} to {ROUTER_LAN}:{HTTP_PORT} at the control URL its description gives, then N DeletePortMapping of the same; the IGD holds 0..N mappings during a run"),
        "latency_definition": "latency: connect to whole response read; server_time: request written to first response byte; p50_fewest_mappings/p50_most_mappings: p50 over the tenth of each run in which the IGD held the fewest / the most mappings (the start and the end of an add run, the end and the start of a delete run)",
        "miniupnpd_setup": {
            "version": String::from_utf8_lossy(&std::process::Command::new("miniupnpd").arg("--version").output()?.stdout).trim().replace('\n', "; "),
            "setup": format!("daemonized (production logging), secure_mode=yes, NAT-PMP off, lease_file on the same file system, nftables backend (inet filter table as nft_init.sh builds it) with masquerade; wan0 carries {MINIUPNPD_EXT_LABEL} first because miniupnpd refuses to forward with a reserved external address (203.0.113.0/24 is one)"),
        },
        "natctl_setup": format!("natctl daemon in the lab, [upnp] http_port = 5000, max_mappings_per_client = {BENCH_CLIENT_QUOTA}, defaults otherwise (secure mode)"),
    });

    for igd in &igds {
        progress!(
            "upnp: {} reply-to-forwarding delay over {} mappings",
            igd.label,
            scale.probes
        );
        result[igd.label]["forwarding_delay"] = forwarding_delay(igd.lan, igd.wan, scale.probes)
            .with_context(|| format!("{} forwarding delay", igd.label))?;
    }
    result["forwarding_delay_definition"] = json!(format!(
        "for each mapping: the LAN host binds UDP {LAN_HOST}:port, sends AddPortMapping (port = 40000+k), and as soon as the 200 reply is read the WAN host (a fresh socket each time) sends a UDP probe to {ROUTER_WAN}:port every 100 us until one arrives; reply_to_first_probe_received: reply read -> probe received (includes one trip through the router), reply_to_that_probe_sent: reply read -> that probe sent, probes_lost_before_it: probes sent before the mapping forwarded"
    ));
    drop(igds);
    drop(miniupnpd);
    drop(kernel);
    drop(lab);
    Ok(result)
}

/// How the per-request latency depends on the mappings held, in words,
/// from a run's figures.
fn growth_text(run: &Value, n: &str) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let fewest = f(&run["p50_fewest_mappings_ms"]);
    let most = f(&run["p50_most_mappings_ms"]);
    if most > 1.5 * fewest {
        format!(
            "the cost of a request grows with the mappings held: p50 {fewest:.3} ms over the tenth of the run with the fewest, {most:.3} ms over the tenth with the most (near {n})"
        )
    } else {
        format!(
            "p50 {fewest:.3} ms over the tenth of the run with the fewest mappings, {most:.3} ms with the most (near {n}): no growth to speak of"
        )
    }
}

/// The targets for part 5, judged on the c1_close mode at each
/// table size, with a reason drawn from this run's figures for each miss.
pub fn targets(upnp: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let spread = |run: &Value| {
        let rounds: Vec<f64> = run["rps_per_round"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let min = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if rounds.len() > 1 {
            format!(" (rounds {min:.0} to {max:.0})")
        } else {
            String::new()
        }
    };
    let Some(sizes) = upnp["by_table_size"].as_object() else {
        return out;
    };
    for (n, size) in sizes {
        let natctl = &size["natctl"]["c1_close"];
        let mini = &size["miniupnpd"]["c1_close"];
        for phase in ["add", "delete"] {
            let action = if phase == "add" {
                "AddPortMapping"
            } else {
                "DeletePortMapping"
            };
            let ours = &natctl[phase];
            let theirs = &mini[phase];
            let ratio = f(&ours["rps"]) / f(&theirs["rps"]);
            let pass = ratio >= 2.0;
            let why = (!pass).then(|| {
                format!(
                    "natctl {:.0} req/s{} vs miniupnpd {:.0}{} ({ratio:.2}x): natctl p50 {:.3} ms per request (server time, request written to first response byte, p50 {:.3} ms; connect p50 {:.3} ms) vs miniupnpd p50 {:.3} ms (server time p50 {:.3} ms); natctl: {}; the 2 CPUs were shared with other work",
                    f(&ours["rps"]),
                    spread(ours),
                    f(&theirs["rps"]),
                    spread(theirs),
                    f(&ours["latency"]["p50_ms"]),
                    f(&ours["server_time"]["p50_ms"]),
                    f(&ours["connect"]["p50_ms"]),
                    f(&theirs["latency"]["p50_ms"]),
                    f(&theirs["server_time"]["p50_ms"]),
                    growth_text(ours, n),
                )
            });
            out.push(target(
                &format!("upnp_{phase}_rps_vs_miniupnpd_{n}_mappings"),
                &format!(
                    "natctl {action}/s >= 2x miniupnpd's (one client, one request per connection, 0..{n} mappings held)"
                ),
                json!({
                    "ratio": round3(ratio),
                    "natctl_rps": ours["rps"],
                    "miniupnpd_rps": theirs["rps"],
                }),
                pass,
                why,
            ));
            let p99 = f(&ours["latency"]["p99_ms"]);
            let pass = p99 <= 2.0;
            let why = (!pass).then(|| {
                format!(
                    "p99 {p99:.3} ms (server time p99 {:.3} ms, connect p99 {:.3} ms; p50 {:.3} ms, max {:.3} ms over {} requests); {}; miniupnpd's p99 was {:.3} ms; the 2 CPUs were shared with other work",
                    f(&ours["server_time"]["p99_ms"]),
                    f(&ours["connect"]["p99_ms"]),
                    f(&ours["latency"]["p50_ms"]),
                    f(&ours["latency"]["max_ms"]),
                    ours["latency"]["count"],
                    growth_text(ours, n),
                    f(&theirs["latency"]["p99_ms"]),
                )
            });
            out.push(target(
                &format!("upnp_{phase}_p99_{n}_mappings"),
                &format!("natctl {action} p99 latency <= 2 ms (0..{n} mappings held)"),
                json!({ "p99_ms": round3(p99), "miniupnpd_p99_ms": theirs["latency"]["p99_ms"] }),
                pass,
                why,
            ));
        }
    }
    out
}
