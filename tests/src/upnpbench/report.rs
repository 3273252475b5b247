//! Parts 2 and 5 in the report of `cargo xtask bench`: the rows and the
//! section made of what `upnpbench all` printed (`{"iperf": {...}, "upnp":
//! {...}, "targets": [{"name", "target", "measured", "pass", "why"}]}`).
//! Its targets are judged by the benchmark itself ([`super::upnp::targets`]);
//! here they become rows as they are. Only the figures read here are typed;
//! the rest of upnpbench's output goes to `report.json` as printed.
use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::Result;
use serde::Deserialize;
use serde_json::Value;

use crate::bench::report::{Row, Verdict, direction_text};

/// What the report reads of `upnpbench all`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Output {
    #[serde(default)]
    pub iperf: Option<Iperf>,
    #[serde(default)]
    pub upnp: Option<Upnp>,
    /// `upnpbench natpmp`, a part of its own in the report.
    #[serde(default)]
    pub natpmp: Option<Natpmp>,
    #[serde(default)]
    pub targets: Option<Vec<Target>>,
}

/// NAT-PMP and PCP map and delete runs, by protocol and then by server.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Natpmp {
    #[serde(default)]
    pub natpmp: BTreeMap<String, MapPhases>,
    #[serde(default)]
    pub pcp: BTreeMap<String, MapPhases>,
    pub requests_per_phase: Option<u64>,
    pub rounds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MapPhases {
    pub map: Option<Requests>,
    pub delete: Option<Requests>,
}

/// Part 2, iperf3 through each router.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Iperf {
    pub tool: Option<String>,
    #[serde(default)]
    pub xdp_nat: BTreeMap<String, Goodput>,
    #[serde(default)]
    pub nftables: BTreeMap<String, Goodput>,
    /// By direction (`lan_to_wan`, `wan_to_lan`).
    #[serde(default)]
    pub ratio_xdp_over_nftables: BTreeMap<String, Option<f64>>,
    #[serde(default)]
    pub seconds: Value,
    #[serde(default)]
    pub rounds: Value,
    pub topology: Option<String>,
}

/// One router and direction.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Goodput {
    pub mean_gbps: Option<f64>,
}

/// Part 5, the IGDs' request runs at the first table size.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Upnp {
    pub natctl: Option<Igd>,
    pub miniupnpd: Option<Igd>,
    /// Each mode's description, by name.
    #[serde(default)]
    pub modes: Value,
    pub request: Option<String>,
    pub latency_definition: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Igd {
    pub c1_close: Option<Phases>,
    pub c4_close: Option<Phases>,
    pub c1_keepalive: Option<Phases>,
    /// Reply-to-forwarding delay figures, shown as they are.
    pub forwarding_delay: Option<Value>,
}

impl Igd {
    fn mode(&self, name: &str) -> Option<&Phases> {
        match name {
            "c1_close" => self.c1_close.as_ref(),
            "c4_close" => self.c4_close.as_ref(),
            "c1_keepalive" => self.c1_keepalive.as_ref(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Phases {
    pub add: Option<Requests>,
    pub delete: Option<Requests>,
}

/// One run of requests: its rate and latency.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Requests {
    pub rps: Option<f64>,
    #[serde(default)]
    pub latency: Latency,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Latency {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One target as upnpbench judged it.
#[derive(Clone, Debug, Deserialize)]
pub struct Target {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target: String,
    /// The figures behind the verdict, by name.
    #[serde(default)]
    pub measured: Value,
    pub pass: Option<bool>,
    pub why: Option<String>,
}

/// A measured value of upnpbench as text: numbers rounded, objects as
/// `key: value` pairs.
fn value_text(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| format!("{key}: {}", value_text(value)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Number(n) => n.as_f64().map_or_else(
            || n.to_string(),
            |f| format!("{}", (f * 1000.0).round() / 1000.0),
        ),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Adds the rows of parts 2 and 5 and writes their section, from
/// upnpbench's output as printed.
pub fn rows(value: &Value, rows: &mut Vec<Row>, md: &mut String) -> Result<()> {
    let data = Output::deserialize(value)?;
    if let Some(iperf) = &data.iperf {
        iperf_rows(iperf, rows, md);
    }
    if let Some(upnp) = &data.upnp {
        upnp_section(upnp, md);
    }
    if let Some(natpmp) = &data.natpmp {
        natpmp_section(natpmp, md);
    }
    let Some(targets) = &data.targets else {
        let _ = writeln!(
            md,
            "upnpbench printed no `targets`; its output as is:\n\n```json\n{}\n```",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return Ok(());
    };
    for target in targets {
        rows.push(Row {
            // The IGD's and NAT-PMP/PCP's request rates are part 5's kind.
            part: if ["upnp", "natpmp", "pcp"]
                .iter()
                .any(|prefix| target.name.starts_with(prefix))
            {
                5
            } else {
                2
            },
            what: target.name.clone(),
            target: target.target.clone(),
            measured: value_text(&target.measured),
            verdict: match target.pass {
                Some(pass) => Verdict::judge(pass),
                None => Verdict::Error,
            },
            why: target.why.clone().unwrap_or_default(),
        });
    }
    Ok(())
}

fn iperf_rows(iperf: &Iperf, rows: &mut Vec<Row>, md: &mut String) {
    let _ = writeln!(
        md,
        "### Part 2: TCP goodput ({})\n",
        iperf.tool.as_deref().unwrap_or("iperf3")
    );
    let _ = writeln!(
        md,
        "| Direction | XDP NAT Gbit/s | nftables Gbit/s | ratio |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for direction in ["lan_to_wan", "wan_to_lan"] {
        let ours = iperf.xdp_nat.get(direction).and_then(|g| g.mean_gbps);
        let theirs = iperf.nftables.get(direction).and_then(|g| g.mean_gbps);
        let ratio = iperf
            .ratio_xdp_over_nftables
            .get(direction)
            .copied()
            .flatten();
        let text = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            direction_text(direction),
            text(ours),
            text(theirs),
            text(ratio)
        );
        if let (Some(ours), Some(theirs), Some(ratio)) = (ours, theirs, ratio) {
            rows.push(Row {
                part: 2,
                what: format!(
                    "TCP goodput {}, XDP NAT vs nftables",
                    direction_text(direction)
                ),
                target: "- (compared)".to_owned(),
                measured: format!("{ratio:.2}x ({ours:.2} vs {theirs:.2} Gbit/s)"),
                verdict: Verdict::Info,
                why: String::new(),
            });
        }
    }
    let _ = writeln!(
        md,
        "\n{} s per run, {} rounds. Topology: {}\n",
        iperf.seconds,
        iperf.rounds,
        iperf.topology.as_deref().unwrap_or("")
    );
}

fn upnp_section(upnp: &Upnp, md: &mut String) {
    let _ = writeln!(md, "### Part 5: UPnP IGD, natctl vs miniupnpd\n");
    let _ = writeln!(
        md,
        "| IGD | Mode | Action | requests/s | p50 ms | p99 ms |\n|---|---|---|---:|---:|---:|"
    );
    let igds = [("natctl", &upnp.natctl), ("miniupnpd", &upnp.miniupnpd)];
    for (igd, figures) in igds {
        for mode in ["c1_close", "c4_close", "c1_keepalive"] {
            for phase in ["add", "delete"] {
                let phases = figures.as_ref().and_then(|f| f.mode(mode));
                let run =
                    phases.and_then(|p| if phase == "add" { &p.add } else { &p.delete }.as_ref());
                let Some(run) = run else {
                    continue;
                };
                let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    md,
                    "| {igd} | {mode} | {phase} | {} | {} | {} |",
                    run.rps.map_or("-".to_owned(), |v| format!("{v:.0}")),
                    f(run.latency.p50_ms),
                    f(run.latency.p99_ms),
                );
            }
        }
    }
    for (igd, figures) in igds {
        if let Some(delay) = figures.as_ref().and_then(|f| f.forwarding_delay.as_ref()) {
            let _ = writeln!(
                md,
                "\n{igd}, SOAP reply to forwarding: {}",
                value_text(delay)
            );
        }
    }
    let _ = writeln!(
        md,
        "\nModes: {}. Request: {}. Latency: {}.\n",
        value_text(&upnp.modes),
        upnp.request.as_deref().unwrap_or(""),
        upnp.latency_definition.as_deref().unwrap_or("")
    );
}

fn natpmp_section(natpmp: &Natpmp, md: &mut String) {
    let _ = writeln!(md, "### NAT-PMP and PCP, natctl vs miniupnpd\n");
    let _ = writeln!(
        md,
        "| Protocol | Server | Request | requests/s | p50 ms | p99 ms |\n|---|---|---|---:|---:|---:|"
    );
    for (protocol, servers) in [("NAT-PMP", &natpmp.natpmp), ("PCP", &natpmp.pcp)] {
        for (server, phases) in servers {
            for (request, run) in [("map", &phases.map), ("delete", &phases.delete)] {
                let Some(run) = run else {
                    continue;
                };
                let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    md,
                    "| {protocol} | {server} | {request} | {} | {} | {} |",
                    run.rps.map_or("-".to_owned(), |v| format!("{v:.0}")),
                    f(run.latency.p50_ms),
                    f(run.latency.p99_ms),
                );
            }
        }
    }
    let count = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    let _ = writeln!(
        md,
        "\n{} requests per phase, {} round(s); one client, one request in flight.\n",
        count(natpmp.requests_per_phase),
        count(natpmp.rounds)
    );
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn upnp_targets_become_rows() {
        let data = json!({
            "iperf": {"xdp_nat": {"lan_to_wan": {"mean_gbps": 2.0}},
                      "nftables": {"lan_to_wan": {"mean_gbps": 1.0}},
                      "ratio_xdp_over_nftables": {"lan_to_wan": 2.0}},
            "targets": [{"name": "upnp_add_rps_vs_miniupnpd", "target": ">= 2x",
                         "measured": {"ratio": 3.0}, "pass": true, "why": null}]});
        let mut rows = Vec::new();
        let mut md = String::new();
        super::rows(&data, &mut rows, &mut md).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].part, rows[0].verdict), (2, Verdict::Info));
        assert_eq!((rows[1].part, rows[1].verdict), (5, Verdict::Pass));
        assert_eq!(rows[1].measured, "ratio: 3");
    }

    #[test]
    fn natpmp_targets_become_rows_of_part_5_and_a_table() {
        let run = json!({"rps": 900.0, "latency": {"p50_ms": 0.5, "p99_ms": 1.25}});
        let data = json!({
            "natpmp": {
                "natpmp": {"natctl": {"map": run, "delete": run},
                           "miniupnpd": {"map": run, "delete": run}},
                "pcp": {"natctl": {"map": run}},
                "requests_per_phase": 50, "rounds": 1},
            "targets": [{"name": "pcp_map_rps_vs_miniupnpd", "target": ">= 2x",
                         "measured": {"ratio": 1.5}, "pass": false, "why": "slow"}]});
        let mut rows = Vec::new();
        let mut md = String::new();
        super::rows(&data, &mut rows, &mut md).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].part, rows[0].verdict), (5, Verdict::Miss));
        assert!(
            md.contains("| PCP | natctl | map | 900 | 0.500 | 1.250 |"),
            "{md}"
        );
        assert!(md.contains("50 requests per phase"), "{md}");
    }
}
