//! Part 2: TCP goodput through the NAT (iperf3, one stream), our XDP NAT
//! run by `natctl daemon` against nftables masquerade/DNAT on the same
//! topology, LAN -> WAN (masquerade) and WAN -> LAN (a port forward).
use std::{
    process::{Child, Stdio},
    time::Duration,
};

use crate::{lab::Lab, netns::Netns, wait_for};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Scale, kernel::KernelLab, round3, run_bounded};
use crate::plan::{LAN_HOST, ROUTER_LAN, ROUTER_LAN_IF, ROUTER_WAN, ROUTER_WAN_IF, WAN_HOST};
use crate::progress;

const PORT: &str = "5201";

/// nftables for the comparison: masquerade out of wan0, and the same
/// forward natctl gets (TCP 5201 -> the LAN host).
fn ruleset() -> String {
    format!(
        r#"
table ip upnpbench {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{ROUTER_WAN_IF}" tcp dport {PORT} dnat to {LAN_HOST}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{ROUTER_WAN_IF}" masquerade
    }}
}}
"#
    )
}

/// An iperf3 server, killed on drop whatever happens.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run: a one-off server in `server_ns` bound to `bind`, the
/// client in `client_ns` connecting to `to`.
fn iperf(
    server_ns: &Netns,
    bind: &str,
    client_ns: &Netns,
    to: &str,
    secs: u32,
    omit: u32,
) -> Result<Value> {
    let mut command = server_ns.command("iperf3");
    command
        .args(["-s", "-1", "-B", bind, "-p", PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = Server(command.spawn().context("starting iperf3 -s")?);
    wait_for("iperf3 server to listen", Duration::from_secs(5), || {
        if let Ok(Some(_)) = server.0.try_wait() {
            return Some(Err(anyhow::anyhow!("iperf3 server exited")));
        }
        let output = server_ns
            .exec("ss", &["-Hltn", &format!("sport = :{PORT}")])
            .ok()?;
        (!output.stdout.is_empty()).then_some(Ok(()))
    })??;
    let mut client = client_ns.command("iperf3");
    client.args([
        "-c",
        to,
        "-p",
        PORT,
        "-t",
        &secs.to_string(),
        "-O",
        &omit.to_string(),
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let output = run_bounded(
        &mut client,
        Duration::from_secs(u64::from(secs + omit) + 20),
    )?;
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3 -c {to} printed no JSON: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = report.get("error") {
        bail!("iperf3 -c {to} failed: {error}");
    }
    let end = &report["end"];
    let received = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    let sent = end["sum_sent"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let _ = wait_for("iperf3 server to exit", Duration::from_secs(5), || {
        server.0.try_wait().ok().flatten()
    });
    Ok(json!({
        "goodput_gbps": round3(received / 1e9),
        "sender_gbps": round3(sent / 1e9),
        "retransmits": end["sum_sent"]["retransmits"],
        "sender_cpu_percent": end["cpu_utilization_percent"]["host_total"],
        "receiver_cpu_percent": end["cpu_utilization_percent"]["remote_total"],
    }))
}

struct Side<'a> {
    label: &'static str,
    lan: &'a Netns,
    wan: &'a Netns,
    lan_to_wan: Vec<Value>,
    wan_to_lan: Vec<Value>,
}

fn mean_gbps(runs: &[Value]) -> f64 {
    let values: Vec<f64> = runs
        .iter()
        .filter_map(|run| run["goodput_gbps"].as_f64())
        .collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

pub fn run(scale: &Scale) -> Result<Value> {
    progress!("iperf: starting the natctl lab");
    let lab = Lab::start_with_config("[upnp]\nenabled = false\n")?;
    lab.natctl(&[
        "add",
        "bench-iperf",
        "--proto",
        "tcp",
        "--external",
        PORT,
        "--internal",
        &LAN_HOST.to_string(),
    ])?;
    progress!("iperf: starting the nftables topologies");
    let kernel = KernelLab::start(&ruleset(), None, true)?;
    let offload = KernelLab::start(&ruleset(), None, false)?;
    let mut sides = [
        Side {
            label: "xdp_nat",
            lan: &lab.lan,
            wan: &lab.wan,
            lan_to_wan: Vec::new(),
            wan_to_lan: Vec::new(),
        },
        Side {
            label: "nftables",
            lan: &kernel.lan,
            wan: &kernel.wan,
            lan_to_wan: Vec::new(),
            wan_to_lan: Vec::new(),
        },
        Side {
            label: "nftables_host_offloads",
            lan: &offload.lan,
            wan: &offload.wan,
            lan_to_wan: Vec::new(),
            wan_to_lan: Vec::new(),
        },
    ];
    // The first second (slow start) is left out of the longer runs.
    let omit = if scale.quick { 0 } else { 1 };
    for round in 0..scale.iperf_rounds {
        for side in &mut sides {
            progress!(
                "iperf: round {}/{} {} LAN -> WAN ({} s)",
                round + 1,
                scale.iperf_rounds,
                side.label,
                scale.iperf_secs
            );
            let run = iperf(
                side.wan,
                &WAN_HOST.to_string(),
                side.lan,
                &WAN_HOST.to_string(),
                scale.iperf_secs,
                omit,
            )
            .with_context(|| format!("{} LAN -> WAN", side.label))?;
            side.lan_to_wan.push(run);
            progress!(
                "iperf: round {}/{} {} WAN -> LAN through the forward",
                round + 1,
                scale.iperf_rounds,
                side.label
            );
            let run = iperf(
                side.lan,
                &LAN_HOST.to_string(),
                side.wan,
                &ROUTER_WAN.to_string(),
                scale.iperf_secs,
                omit,
            )
            .with_context(|| format!("{} WAN -> LAN", side.label))?;
            side.wan_to_lan.push(run);
        }
    }
    // The forward and the masquerade must have been what carried it.
    let counters = lab.counters()?;
    let mut result = json!({
        "tool": "iperf3, one TCP stream, goodput at the receiver",
        "seconds": scale.iperf_secs,
        "omitted_seconds": omit,
        "rounds": scale.iperf_rounds,
        "topology": format!("LAN host {LAN_HOST} -- router ({ROUTER_LAN_IF} {ROUTER_LAN}, {ROUTER_WAN_IF} {ROUTER_WAN}) -- WAN host {WAN_HOST}, veth pairs"),
        "variants": {
            "xdp_nat": format!("natctl daemon (XDP) on the router, a forward tcp {PORT} -> {LAN_HOST}; hosts as the lab sets them: tx checksum offload off (an XDP-redirected CHECKSUM_PARTIAL frame would be dropped) and xdp_pass (a veth only takes redirected frames then), hence no TSO/GSO: MTU-sized segments"),
            "nftables": format!("kernel forwarding with nftables masquerade and dnat tcp {PORT} -> {LAN_HOST}, router veths without XDP; hosts exactly as for xdp_nat; the like-for-like comparison"),
            "nftables_host_offloads": "as nftables but the hosts keep veth defaults (TSO/GSO, no XDP): 64 KB super-packets cross the kernel router, which the XDP datapath cannot take; shown for context, not in the ratio",
        },
        "natctl_counters": counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    for side in &sides {
        result[side.label] = json!({
            "lan_to_wan": { "runs": side.lan_to_wan, "mean_gbps": round3(mean_gbps(&side.lan_to_wan)) },
            "wan_to_lan": { "runs": side.wan_to_lan, "mean_gbps": round3(mean_gbps(&side.wan_to_lan)) },
        });
    }
    let ratio = |direction: &str| {
        let ours = result["xdp_nat"][direction]["mean_gbps"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let theirs = result["nftables"][direction]["mean_gbps"]
            .as_f64()
            .unwrap_or(f64::NAN);
        round3(ours / theirs)
    };
    result["ratio_xdp_over_nftables"] = json!({
        "lan_to_wan": ratio("lan_to_wan"),
        "wan_to_lan": ratio("wan_to_lan"),
    });
    drop(offload);
    drop(kernel);
    drop(lab);
    Ok(result)
}
