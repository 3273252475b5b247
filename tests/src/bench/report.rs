//! The report of `cargo xtask bench`: reads what each benchmark printed
//! (`<dir>/parts/<part>.json`, or `<part>.error` when it failed), judges
//! every target, and writes `<dir>/report.json` and `<dir>/report.md`.
//! Nothing here measures; nothing here is edited by hand.
//!
//! Parts 2 and 5 come from `upnpbench all` (`parts/upnp.json`): its
//! `targets` become rows as judged there, its `iperf` and `upnp` figures
//! tables.
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The parts natbench writes, in report order.
pub const PARTS: [&str; 5] = ["throughput", "upnp", "cost", "scale", "sweep"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    Info,
    Error,
    NotRun,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "info",
            Verdict::Error => "ERROR",
            Verdict::NotRun => "not run",
        }
    }

    fn judge(pass: bool) -> Self {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

#[derive(Clone, Debug)]
pub struct Row {
    pub part: u32,
    pub what: String,
    pub target: String,
    pub measured: String,
    pub verdict: Verdict,
    pub why: String,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "part": self.part,
            "what": self.what,
            "target": self.target,
            "measured": self.measured,
            "verdict": self.verdict.label(),
            "why": self.why,
        })
    }
}

/// One part's output: its JSON, or why there is none.
enum Part {
    Data(Value),
    Failed(String),
    Missing,
}

fn read_part(dir: &Path, name: &str) -> Part {
    let parts = dir.join("parts");
    if let Ok(error) = fs::read_to_string(parts.join(format!("{name}.error"))) {
        return Part::Failed(error.trim().to_owned());
    }
    match fs::read_to_string(parts.join(format!("{name}.json"))) {
        Ok(text) => match serde_json::from_str(text.trim()) {
            Ok(value) => Part::Data(value),
            Err(error) => Part::Failed(format!("its output is not JSON ({error}): {text:.300}")),
        },
        Err(_) => Part::Missing,
    }
}

fn num(value: &Value, pointer: &str) -> Option<f64> {
    value.pointer(pointer).and_then(Value::as_f64)
}

fn median(value: &Value) -> Option<f64> {
    num(value, "/median")
}

/// "1.23 (1.10-1.40)" from a spread.
fn spread_text(value: &Value, decimals: usize) -> String {
    match (
        num(value, "/median"),
        num(value, "/min"),
        num(value, "/max"),
    ) {
        (Some(m), Some(lo), Some(hi)) if (hi - lo).abs() > f64::EPSILON => {
            format!("{m:.decimals$} ({lo:.decimals$}-{hi:.decimals$})")
        }
        (Some(m), _, _) => format!("{m:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// Whether the samples of two spreads overlap: then a difference between
/// their medians may be this shared machine's noise rather than a real one.
fn overlap(a: &Value, b: &Value) -> bool {
    match (
        num(a, "/min"),
        num(a, "/max"),
        num(b, "/min"),
        num(b, "/max"),
    ) {
        (Some(a_min), Some(a_max), Some(b_min), Some(b_max)) => a_min <= b_max && b_min <= a_max,
        _ => false,
    }
}

fn noise_note(a: &Value, b: &Value, decimals: usize) -> String {
    if overlap(a, b) {
        format!(
            " (the samples overlap, {} against {}: within this shared machine's noise)",
            spread_text(a, decimals),
            spread_text(b, decimals)
        )
    } else {
        String::new()
    }
}

fn size_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn direction_text(label: &str) -> &'static str {
    match label {
        "lan_to_wan" => "LAN -> WAN",
        "wan_to_lan" => "WAN -> LAN",
        _ => "?",
    }
}

/// The machine the report was made on.
pub fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let memory_kib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut caches = Vec::new();
    for index in 0..8 {
        let base = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let read = |file: &str| {
            fs::read_to_string(format!("{base}/{file}"))
                .map(|s| s.trim().to_owned())
                .ok()
        };
        if let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) {
            caches.push(format!("L{level} {kind} {size}"));
        }
    }
    json!({
        "cpu_model": cpu,
        "cpus": cpus,
        "caches_cpu0": caches,
        "memory_gib": (memory_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel,
        "date_utc": date,
        "loadavg_at_report": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

// ---- Part 1 ----

/// One router's figures in one throughput case.
struct Carried {
    mpps: f64,
    offered: f64,
}

impl Carried {
    fn of(routers: &Value, label: &str) -> Option<Self> {
        Some(Self {
            mpps: median(&routers[label]["mpps"])?,
            offered: median(&routers[label]["offered_mpps"])?,
        })
    }

    /// Nothing dropped: the router did its work in the sender's softirq,
    /// one packet after the other with the generator and the sink.
    fn inline(&self) -> bool {
        self.mpps >= 0.97 * self.offered
    }

    /// ns per packet spent in the router: the time per packet at this
    /// rate less the time per packet of the generator and sink alone.
    fn router_ns(&self, base: Option<&Carried>) -> Option<f64> {
        let base = base?;
        (self.inline() && base.inline()).then(|| 1e3 / self.mpps - 1e3 / base.mpps)
    }
}

fn ns_text(ns: Option<f64>) -> String {
    ns.map_or("-".to_owned(), |ns| format!("{ns:.0}"))
}

fn throughput_rows(data: &Value, cost: Option<&Value>, rows: &mut Vec<Row>) {
    let Some(cases) = data["cases"].as_array() else {
        return;
    };
    // The NAT's time per packet with one flow, per direction: what many
    // flows add to it is the cost of their table entries missing the caches.
    let single: Vec<(String, Option<f64>)> = cases
        .iter()
        .filter(|case| case["flows"].as_u64() == Some(1))
        .map(|case| {
            let routers = &case["routers"];
            let base = Carried::of(routers, "no_router");
            let nat = Carried::of(routers, "xdp_nat").and_then(|nat| nat.router_ns(base.as_ref()));
            (case["direction"].as_str().unwrap_or("").to_owned(), nat)
        })
        .collect();
    for case in cases {
        let direction = case["direction"].as_str().unwrap_or("");
        let flows = case["flows"].as_u64().unwrap_or(0);
        let routers = &case["routers"];
        let (Some(nat), Some(fwd), Some(nft)) = (
            Carried::of(routers, "xdp_nat"),
            Carried::of(routers, "xdp_forwarder"),
            Carried::of(routers, "nftables"),
        ) else {
            continue;
        };
        let base = Carried::of(routers, "no_router");
        let base_ns = base.as_ref().map(|b| 1e3 / b.mpps);
        let (nat_ns, fwd_ns, nft_ns) = (
            nat.router_ns(base.as_ref()),
            fwd.router_ns(base.as_ref()),
            nft.router_ns(base.as_ref()),
        );
        let what = format!(
            "{}, {} flow{}",
            direction_text(direction),
            flows,
            if flows == 1 { "" } else { "s" }
        );
        // The NAT's extra work per packet over the forwarder, from part 3.
        let extra_ns = cost.and_then(|cost| {
            let case = if direction == "lan_to_wan" {
                "established_outbound"
            } else {
                "forwarded_inbound"
            };
            Some(median(&cost["cases"][case]["ns"])? - median(&cost["cases"]["forwarder"]["ns"])?)
        });
        let serial = format!(
            "generator, router and sink ran one after the other on the sending core (the \
             router's work runs in the sender's softirq; nothing was dropped), so each rate is \
             1 / (the router's time + the {} ns per packet the generator and sink take without \
             a router)",
            ns_text(base_ns)
        );

        let many_flows = match single.iter().find(|(d, _)| d == direction) {
            Some((_, Some(one))) if flows > 1 => nat_ns.map_or(String::new(), |ns| {
                format!(
                    "; with one flow our NAT spends {one:.0} ns: with {flows} flows the {:.0} \
                     ns more go to looking up another flow's FORWARDS, BINDINGS and SESSIONS \
                     entries at every packet, which the CPU's caches and TLB no longer hold",
                    ns - one
                )
            }),
            _ => String::new(),
        };
        let ratio = nat.mpps / fwd.mpps;
        let noise = noise_note(
            &routers["xdp_nat"]["mpps"],
            &routers["xdp_forwarder"]["mpps"],
            2,
        );
        let why = if ratio >= 0.9 {
            String::new()
        } else if !nat.inline() {
            format!(
                "our NAT dropped: it carried {:.2} of the {:.2} Mpps offered",
                nat.mpps, nat.offered
            )
        } else {
            format!(
                "{serial}: our NAT spends {} ns per packet against the plain forwarder's {} \
                 ns{}{many_flows}{noise}",
                ns_text(nat_ns),
                ns_text(fwd_ns),
                extra_ns.map_or(String::new(), |ns| format!(
                    "; part 3 puts the NAT's extra work on one established flow at {ns:.0} ns \
                     per packet (the FORWARDS, BINDINGS and SESSIONS lookups, the session's \
                     atomic counters, the checksum rewrites)"
                ))
            )
        };
        rows.push(Row {
            part: 1,
            what: format!("{what}: XDP NAT vs plain XDP forwarder"),
            target: ">= 0.9x".to_owned(),
            measured: format!(
                "{ratio:.2}x ({:.2} vs {:.2} Mpps; in the router: {} vs {} ns per packet)",
                nat.mpps,
                fwd.mpps,
                ns_text(nat_ns),
                ns_text(fwd_ns)
            ),
            verdict: if ratio.is_finite() {
                Verdict::judge(ratio >= 0.9)
            } else {
                Verdict::Error
            },
            why,
        });

        let ratio = nat.mpps / nft.mpps;
        let router_ratio = nat_ns.zip(nft_ns).map(|(nat, nft)| nft / nat);
        let why = if ratio >= 5.0 {
            String::new()
        } else if !nat.inline() {
            format!(
                "our NAT dropped: it carried {:.2} of the {:.2} Mpps offered",
                nat.mpps, nat.offered
            )
        } else {
            format!(
                "{serial}: the kernel's path (skb, conntrack, NAT, routing, qdisc) costs {} ns \
                 per packet here, {} times our NAT's {} ns, and the generator's and sink's \
                 share, the same for both, compresses the ratio further",
                ns_text(nft_ns),
                router_ratio.map_or("-".to_owned(), |r| format!("{r:.1}")),
                ns_text(nat_ns)
            )
        };
        rows.push(Row {
            part: 1,
            what: format!("{what}: XDP NAT vs nftables"),
            target: ">= 5x".to_owned(),
            measured: format!(
                "{ratio:.2}x ({:.2} vs {:.2} Mpps; in the router: {} vs {} ns per packet)",
                nat.mpps,
                nft.mpps,
                ns_text(nat_ns),
                ns_text(nft_ns)
            ),
            verdict: if ratio.is_finite() {
                Verdict::judge(ratio >= 5.0)
            } else {
                Verdict::Error
            },
            why,
        });
    }
}

const ROUTERS: [(&str, &str); 4] = [
    ("xdp_nat", "XDP NAT"),
    ("xdp_forwarder", "plain XDP forwarder"),
    ("nftables", "nftables"),
    ("no_router", "no router"),
];

fn throughput_detail(data: &Value, md: &mut String) {
    let _ = writeln!(
        md,
        "Mpps received by the sink, median (min-max) of {} alternating samples of {} s each; \
         {}-byte frames ({} on the wire). \"No router\" joins the two hosts' veths directly: \
         what the generator and the sink alone reach. Where nothing was dropped (offered = \
         received), the router ran in the sender's softirq, one packet after the other with \
         the generator and the sink, and its time per packet is 1/rate less 1/(no-router \
         rate).\n",
        data["reps"], data["secs_per_sample"], data["frame_bytes"], data["wire_bytes"]
    );
    let _ = writeln!(
        md,
        "| Direction | Flows | {} | router ns/packet: NAT, forwarder, nftables | offered Mpps: NAT, forwarder, nftables |",
        ROUTERS.map(|(_, name)| name).join(" | ")
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|");
    for case in data["cases"].as_array().into_iter().flatten() {
        let r = &case["routers"];
        let base = Carried::of(r, "no_router");
        let per_packet: Vec<String> = ["xdp_nat", "xdp_forwarder", "nftables"]
            .iter()
            .map(|label| ns_text(Carried::of(r, label).and_then(|c| c.router_ns(base.as_ref()))))
            .collect();
        let offered: Vec<String> = ["xdp_nat", "xdp_forwarder", "nftables"]
            .iter()
            .map(|label| spread_text(&r[*label]["offered_mpps"], 2))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            direction_text(case["direction"].as_str().unwrap_or("")),
            case["flows"],
            ROUTERS
                .map(|(label, _)| spread_text(&r[label]["mpps"], 2))
                .join(" | "),
            per_packet.join(", "),
            offered.join(", "),
        );
    }
    let shares: Vec<f64> = data["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|case| {
            ROUTERS
                .iter()
                .filter_map(|(label, _)| num(&case["routers"][label], "/sender_cpu_share/min"))
                .collect::<Vec<_>>()
        })
        .collect();
    if let Some(least) = shares.iter().copied().reduce(f64::min) {
        let _ = writeln!(
            md,
            "\nThe sending thread had at least {:.0}% of a core in every sample.",
            least * 100.0
        );
    }
    let _ = writeln!(
        md,
        "\nRouters: XDP NAT = {}; plain forwarder = {}; nftables = {}. Generator: {}. \
         Router counters after the run: `{}`.",
        data["router_nat"].as_str().unwrap_or(""),
        data["router_forwarder"].as_str().unwrap_or(""),
        data["router_nftables"].as_str().unwrap_or(""),
        data["generator"].as_str().unwrap_or(""),
        data["router_counters_after"]
    );
}

// ---- Part 3 ----

const COST_CASES: [(&str, &str); 7] = [
    ("minimal", "minimal XDP program (xdp_pass run directly)"),
    (
        "restore_only",
        "baseline: restore the frame, tail-call xdp_pass",
    ),
    ("forwarder", "plain XDP forwarder (no NAT)"),
    ("established_outbound", "NAT, established flow LAN -> WAN"),
    (
        "established_inbound",
        "NAT, established flow WAN -> LAN (reply)",
    ),
    ("forwarded_inbound", "NAT, WAN -> LAN on a forwarded port"),
    ("new_flow", "NAT, new flow (creates a mapping)"),
];

fn cost_rows(data: &Value, rows: &mut Vec<Row>) {
    let cases = &data["cases"];
    let minimal = median(&cases["minimal"]["ns"]);
    let baseline = median(&cases["restore_only"]["ns"]);
    for case in ["established_outbound", "established_inbound"] {
        let c = &cases[case];
        let (Some(ns), Some(ratio), Some(base), Some(minimal)) = (
            median(&c["ns"]),
            median(&c["ratio_vs_restore_only"]),
            baseline,
            minimal,
        ) else {
            continue;
        };
        // The NAT program alone against the minimal program: take out what
        // the restore and the tail call cost.
        let alone = (ns - base + minimal) / minimal;
        let forwarder = median(&cases["forwarder"]["ns"]);
        let why = if ratio <= 1.5 {
            String::new()
        } else {
            let stage = forwarder.map_or(String::new(), |fwd| {
                format!(
                    "the forwarding stage alone (FIB lookup, TTL, MACs, redirect: the plain \
                     forwarder) costs {:.0} ns, {:.1}x the baseline, and the NAT's own work \
                     (its table lookups, the session's atomic counters, the rewrites) adds \
                     {:.0} ns on top; ",
                    fwd - base,
                    fwd / base,
                    ns - fwd
                )
            });
            format!(
                "{stage}the baseline ({base:.0} ns) is almost only the test harness, the \
                 restore and the tail call"
            )
        };
        rows.push(Row {
            part: 3,
            what: COST_CASES
                .iter()
                .find(|(name, _)| *name == case)
                .map_or(case, |(_, text)| text)
                .to_owned(),
            target: "<= 1.5x the baseline".to_owned(),
            measured: format!(
                "{ratio:.2}x ({ns:.0} vs {base:.0} ns; the NAT program alone vs the minimal \
                 program, estimated: {alone:.1}x; vs the plain forwarder: {})",
                forwarder.map_or("-".to_owned(), |fwd| format!("{:.2}x", ns / fwd))
            ),
            verdict: Verdict::judge(ratio <= 1.5),
            why,
        });
    }
    for case in ["forwarded_inbound", "new_flow"] {
        if let Some(ns) = median(&cases[case]["ns"]) {
            rows.push(Row {
                part: 3,
                what: COST_CASES
                    .iter()
                    .find(|(name, _)| *name == case)
                    .map_or(case, |(_, text)| text)
                    .to_owned(),
                target: "-".to_owned(),
                measured: format!(
                    "{ns:.0} ns, {:.2}x the baseline",
                    median(&cases[case]["ratio_vs_restore_only"]).unwrap_or(f64::NAN)
                ),
                verdict: Verdict::Info,
                why: String::new(),
            });
        }
    }
}

fn cost_detail(data: &Value, md: &mut String) {
    let _ = writeln!(
        md,
        "{}; {} runs per measurement, median (min-max) of {} alternating measurements; new \
         flows: {} runs per measurement, each from a fresh source port, the mappings removed \
         between measurements (the table stays far from full, so the first port probed is \
         free). Every case restores a {}-byte frame template before the program runs, as a \
         repeated run would otherwise see the frame it rewrote.\n",
        data["unit"].as_str().unwrap_or(""),
        data["repeat"],
        data["reps"],
        data["new_flow_repeat"],
        data["frame_bytes"],
    );
    let _ = writeln!(
        md,
        "| Case | ns per packet | ns over the baseline | x baseline | x minimal |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (name, text) in COST_CASES {
        let c = &data["cases"][name];
        if c.is_null() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {text} | {} | {} | {} | {} |",
            spread_text(&c["ns"], 0),
            spread_text(&c["ns_over_restore_only"], 0),
            spread_text(&c["ratio_vs_restore_only"], 2),
            spread_text(&c["ratio_vs_minimal"], 2),
        );
    }
}

// ---- Part 4 ----

/// Which sizes to compare in one scale entry: the largest against the
/// smallest that ran the same flows (judged), and against the smallest of
/// all when that one ran fewer flows (for information).
fn scale_pairs(results: &Value) -> Vec<(Value, Value, bool)> {
    let mut sized: Vec<&Value> = results.as_array().into_iter().flatten().collect();
    sized.sort_by_key(|r| r["mappings"].as_u64().unwrap_or(0));
    let (Some(&smallest), Some(&largest)) = (sized.first(), sized.last()) else {
        return Vec::new();
    };
    let same = sized
        .iter()
        .find(|r| r["flows"] == largest["flows"])
        .copied()
        .unwrap_or(largest);
    let mut pairs = Vec::new();
    if same["mappings"] != largest["mappings"] {
        pairs.push((same.clone(), largest.clone(), true));
    }
    if smallest["mappings"] != same["mappings"] {
        pairs.push((smallest.clone(), largest.clone(), false));
    }
    pairs
}

fn scale_rows(data: &Value, rows: &mut Vec<Row>) {
    let sessions_max = data["table_max_entries"]["sessions"].as_u64().unwrap_or(0);
    let buckets = sessions_max.next_power_of_two();
    let label = |r: &Value| size_label(r["mappings"].as_u64().unwrap_or(0));
    // The same flows, so the difference is the table's, unless it is noise.
    let table_why = |small: &Value, large: &Value, key: &str, decimals: usize| {
        let flows = large["flows"].as_u64().unwrap_or(0);
        let cause = format!(
            "the same {flows} flow{}, a fuller table: SESSIONS holds {} entries in {buckets} \
             hash buckets against {}, so lookups walk longer chains and miss the caches more",
            if flows == 1 { "" } else { "s" },
            large["mappings"],
            small["mappings"]
        );
        if overlap(&large[key], &small[key]) {
            format!(
                "the samples overlap ({} against {}): within this shared machine's noise; a \
                 real difference would come from {cause}",
                spread_text(&large[key], decimals),
                spread_text(&small[key], decimals)
            )
        } else {
            cause
        }
    };
    let traffic_why = |small: &Value, large: &Value| {
        format!(
            "not the same traffic: {} flows at {} against {} at {}; each packet looks up another \
             flow's entries, which the CPU's caches and TLB no longer hold",
            large["flows"],
            label(large),
            small["flows"],
            label(small)
        )
    };
    for entry in data["throughput"].as_array().into_iter().flatten() {
        for (small, large, judged) in scale_pairs(&entry["results"]) {
            let (Some(a), Some(b)) = (median(&small["mpps"]), median(&large["mpps"])) else {
                continue;
            };
            let ratio = b / a;
            let ok = ratio >= 0.8;
            rows.push(Row {
                part: 4,
                what: format!(
                    "throughput, {}, {} flow{}: {} vs {} mappings{}",
                    direction_text(entry["direction"].as_str().unwrap_or("")),
                    large["flows"],
                    if large["flows"] == 1 { "" } else { "s" },
                    label(&large),
                    label(&small),
                    if judged {
                        ""
                    } else {
                        " (fewer flows at the smaller size)"
                    }
                ),
                target: ">= 0.8x".to_owned(),
                measured: format!("{ratio:.2}x ({b:.2} vs {a:.2} Mpps)"),
                verdict: if judged {
                    Verdict::judge(ok)
                } else {
                    Verdict::Info
                },
                why: match (ok, judged) {
                    (true, _) => String::new(),
                    (false, true) => table_why(&small, &large, "mpps", 2),
                    (false, false) => traffic_why(&small, &large),
                },
            });
        }
    }
    for entry in data["cost"].as_array().into_iter().flatten() {
        let case = entry["case"].as_str().unwrap_or("");
        if case == "restore_only" {
            continue;
        }
        for (small, large, judged) in scale_pairs(&entry["results"]) {
            let (Some(a), Some(b)) = (median(&small["ns"]), median(&large["ns"])) else {
                continue;
            };
            // As a rate: packets per second scale with 1 / cost.
            let ratio = a / b;
            let ok = ratio >= 0.8;
            let kind = if case.starts_with("established_outbound") {
                "established LAN -> WAN"
            } else {
                "established WAN -> LAN"
            };
            rows.push(Row {
                part: 4,
                what: format!(
                    "per-packet cost, {kind}, {} flow{}: {} vs {} mappings{}",
                    large["flows"],
                    if large["flows"] == 1 { "" } else { "s" },
                    label(&large),
                    label(&small),
                    if judged {
                        ""
                    } else {
                        " (fewer flows at the smaller size)"
                    }
                ),
                target: ">= 0.8x as a rate".to_owned(),
                measured: format!("{ratio:.2}x ({b:.0} vs {a:.0} ns)"),
                verdict: if judged {
                    Verdict::judge(ok)
                } else {
                    Verdict::Info
                },
                why: match (ok, judged) {
                    (true, _) => String::new(),
                    (false, true) => table_why(&small, &large, "ns", 0),
                    (false, false) => traffic_why(&small, &large),
                },
            });
        }
    }
}

fn scale_detail(data: &Value, md: &mut String) {
    let sizes: Vec<u64> = data["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let _ = writeln!(
        md,
        "A mapping is one live conversation: a SESSIONS entry on a dynamic mapping (a BINDINGS \
         pair). One WAN address holds at most {} dynamic mappings (an inbound key is protocol \
         and external port), so beyond that the conversations are further remotes on the same \
         mappings. Tables: {} (same for every size). Router: {}. Flow sets: 1 flow, a hot set \
         of {} flows (the same at every size), and all = as many of the LAN host's UDP \
         mappings as the size has (at most 64512).\n",
        data["max_binding_pairs_per_wan_address"],
        data["table_max_entries"],
        data["router"].as_str().unwrap_or(""),
        data["hot_flows"],
    );
    for fill in data["fill"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "- {} mappings: {} sessions on {} dynamic mappings, filled in {:.1} s",
            size_label(fill["mappings"].as_u64().unwrap_or(0)),
            fill["sessions"],
            fill["binding_pairs"],
            fill["fill_secs"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        md,
        "\nRouter counters after the throughput runs: `{}`.",
        data["router_counters_after_throughput"]
    );
    let header: Vec<String> = sizes.iter().map(|&n| size_label(n)).collect();
    let _ = writeln!(
        md,
        "\nThroughput, Mpps (median (min-max) of {} alternating samples of {} s):\n",
        data["reps"], data["secs_per_sample"]
    );
    let _ = writeln!(md, "| Direction | Flows | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(sizes.len()));
    for entry in data["throughput"].as_array().into_iter().flatten() {
        let cells: Vec<String> = entry["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let flows = r["flows"].as_u64().unwrap_or(0);
                let s = if flows == 1 { "" } else { "s" };
                format!("{} ({flows} flow{s})", spread_text(&r["mpps"], 2))
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            direction_text(entry["direction"].as_str().unwrap_or("")),
            entry["flow_set"].as_str().unwrap_or(""),
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\nPer-packet cost, ns (BPF_PROG_TEST_RUN, {} runs, median (min-max) of {}):\n",
        data["repeat"], data["cost_reps"]
    );
    let _ = writeln!(md, "| Case | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(sizes.len()));
    for entry in data["cost"].as_array().into_iter().flatten() {
        let cells: Vec<String> = entry["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| spread_text(&r["ns"], 0))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} |",
            entry["case"].as_str().unwrap_or(""),
            cells.join(" | ")
        );
    }
}

fn sweep_rows(data: &Value, rows: &mut Vec<Row>) {
    let entries = data["entries"].as_u64().unwrap_or(0);
    let pairs = data["binding_pairs"].as_u64().unwrap_or(0);
    let removed = data["sessions_removed"].as_u64().unwrap_or(0)
        + data["bindings_removed"].as_u64().unwrap_or(0);
    let what = |who: &str| {
        format!(
            "aging sweep ({who}) over {} sessions and {} mappings, half of them expired",
            size_label(entries),
            pairs
        )
    };
    if let Some(secs) = num(data, "/kernel_sweep_secs") {
        let idle = num(data, "/kernel_sweep_nothing_to_remove_secs").unwrap_or(f64::NAN);
        rows.push(Row {
            part: 4,
            what: what("the daemon's, in the kernel"),
            target: "<= 1 s".to_owned(),
            measured: format!("{secs:.2} s (nothing to remove: {idle:.2} s)"),
            verdict: Verdict::judge(secs <= 1.0),
            why: if secs <= 1.0 {
                String::new()
            } else {
                format!(
                    "the walk alone takes {idle:.2} s; the rest is {removed} removals inside \
                     the kernel"
                )
            },
        });
    }
    if let Some(secs) = num(data, "/sweep_secs") {
        let idle = num(data, "/sweep_nothing_to_remove_secs").unwrap_or(f64::NAN);
        let kernel = data.get("kernel_sweep_secs").is_some();
        let why = if secs <= 1.0 {
            String::new()
        } else {
            format!(
                "the walk itself takes {idle:.2} s; the rest is removals: {removed} entries \
                 expired at once, each costing a re-check lookup and a delete syscall \
                 ({:.1} us each)",
                (secs - idle) * 1e6 / removed.max(1) as f64
            )
        };
        rows.push(Row {
            part: 4,
            what: what(if kernel {
                "user-space fallback, used only when the sweep program is not pinned"
            } else {
                "user space"
            }),
            target: "<= 1 s".to_owned(),
            measured: format!("{secs:.2} s (nothing to remove: {idle:.2} s)"),
            // The daemon runs the kernel's sweep; this one is for reference.
            verdict: if kernel {
                Verdict::Info
            } else {
                Verdict::judge(secs <= 1.0)
            },
            why,
        });
    }
    if let (Some(session), Some(pair)) = (
        num(data, "/memlock_bytes_per_session"),
        num(data, "/memlock_bytes_per_mapping"),
    ) {
        rows.push(Row {
            part: 4,
            what: "map memory per mapping (its two BINDINGS entries, preallocated)".to_owned(),
            target: "<= 256 B".to_owned(),
            measured: format!(
                "{pair:.0} B; each conversation on it adds a {session:.0} B session: {:.0} B \
                 for a mapping with one",
                pair + session
            ),
            verdict: Verdict::judge(pair <= 256.0),
            why: if pair <= 256.0 {
                String::new()
            } else {
                "preallocated hash map slots cost their key, value and the kernel's per-element \
                 header and bucket"
                    .to_owned()
            },
        });
    }
}

/// "112.9 B a slot (1001024 slots, 112.9 MB)".
fn memory(map: &Value) -> String {
    format!(
        "{:.1} B a slot ({} slots, {:.1} MB)",
        map["memlock_bytes_per_max_entry"]
            .as_f64()
            .unwrap_or(f64::NAN),
        map["max_entries"],
        map["memlock_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6
    )
}

fn sweep_detail(value: &Value, md: &mut String) {
    let f = |key: &str| value[key].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        md,
        "`natbench sweep --entries {}` on a loaded, not attached, datapath (tables sized for \
         the entries): {} sessions and {} mappings filled in {:.1} s, half of them idle past \
         their timeout. The daemon's sweep, the datapath's `nat_sweep` run through \
         BPF_PROG_TEST_RUN: {:.2} s, then {:.2} s with nothing left to remove. The user-space \
         fallback of nat-ctl/src/aging.rs on a fresh fill: {:.2} s, then {:.2} s. Memory is the \
         kernel's memlock figure of each preallocated map divided by its slots: SESSIONS {}, \
         BINDINGS {}.",
        value["entries"],
        value["entries"],
        value["binding_pairs"],
        f("fill_secs"),
        f("kernel_sweep_secs"),
        f("kernel_sweep_nothing_to_remove_secs"),
        f("sweep_secs"),
        f("sweep_nothing_to_remove_secs"),
        memory(&value["sessions"]),
        memory(&value["bindings"]),
    );
}

// ---- Parts 2 and 5 (upnpbench, another binary) ----

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

/// `upnpbench all` prints `{"iperf": {...}, "upnp": {...}, "targets":
/// [{"name", "target", "measured", "pass", "why"}]}`.
fn upnp_rows(data: &Value, rows: &mut Vec<Row>, md: &mut String) {
    let iperf = &data["iperf"];
    if iperf.is_object() {
        let _ = writeln!(
            md,
            "### Part 2: TCP goodput ({})\n",
            iperf["tool"].as_str().unwrap_or("iperf3")
        );
        let _ = writeln!(
            md,
            "| Direction | XDP NAT Gbit/s | nftables Gbit/s | ratio |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for direction in ["lan_to_wan", "wan_to_lan"] {
            let ours = num(iperf, &format!("/xdp_nat/{direction}/mean_gbps"));
            let theirs = num(iperf, &format!("/nftables/{direction}/mean_gbps"));
            let ratio = num(iperf, &format!("/ratio_xdp_over_nftables/{direction}"));
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
            iperf["seconds"],
            iperf["rounds"],
            iperf["topology"].as_str().unwrap_or("")
        );
    }
    let upnp = &data["upnp"];
    if upnp.is_object() {
        let _ = writeln!(md, "### Part 5: UPnP IGD, natctl vs miniupnpd\n");
        let _ = writeln!(
            md,
            "| IGD | Mode | Action | requests/s | p50 ms | p99 ms |\n|---|---|---|---:|---:|---:|"
        );
        for igd in ["natctl", "miniupnpd"] {
            for mode in ["c1_close", "c4_close", "c1_keepalive"] {
                for phase in ["add", "delete"] {
                    let run = &upnp[igd][mode][phase];
                    if run.is_null() {
                        continue;
                    }
                    let f = |pointer: &str| {
                        num(run, pointer).map_or("-".to_owned(), |v| format!("{v:.3}"))
                    };
                    let _ = writeln!(
                        md,
                        "| {igd} | {mode} | {phase} | {} | {} | {} |",
                        num(run, "/rps").map_or("-".to_owned(), |v| format!("{v:.0}")),
                        f("/latency/p50_ms"),
                        f("/latency/p99_ms"),
                    );
                }
            }
        }
        for igd in ["natctl", "miniupnpd"] {
            let delay = &upnp[igd]["forwarding_delay"];
            if !delay.is_null() {
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
            value_text(&upnp["modes"]),
            upnp["request"].as_str().unwrap_or(""),
            upnp["latency_definition"].as_str().unwrap_or("")
        );
    }
    let Some(targets) = data["targets"].as_array() else {
        let _ = writeln!(
            md,
            "upnpbench printed no `targets`; its output as is:\n\n```json\n{}\n```",
            serde_json::to_string_pretty(data).unwrap_or_default()
        );
        return;
    };
    for target in targets {
        let name = target["name"].as_str().unwrap_or("");
        rows.push(Row {
            part: if name.starts_with("upnp") { 5 } else { 2 },
            what: name.to_owned(),
            target: target["target"].as_str().unwrap_or("").to_owned(),
            measured: value_text(&target["measured"]),
            verdict: match target["pass"].as_bool() {
                Some(pass) => Verdict::judge(pass),
                None => Verdict::Error,
            },
            why: target["why"].as_str().unwrap_or("").to_owned(),
        });
    }
}

fn rows_table(rows: &[Row], md: &mut String) {
    let _ = writeln!(
        md,
        "| Part | What | Target | Measured | Verdict | Why (misses) |"
    );
    let _ = writeln!(md, "|---:|---|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | **{}** | {} |",
            row.part,
            row.what,
            row.target,
            row.measured,
            row.verdict.label(),
            row.why
        );
    }
}

/// Builds the report from `<dir>/parts`; writes `report.json` and
/// `report.md` into `dir` and returns the markdown.
pub fn write(dir: &Path, quick: bool) -> Result<String> {
    let machine = machine();
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    let mut sections = String::new();
    let parts: Vec<(&str, Part)> = PARTS.iter().map(|&p| (p, read_part(dir, p))).collect();
    let data = |name: &str| {
        parts.iter().find_map(|(p, part)| match part {
            Part::Data(value) if *p == name => Some(value),
            _ => None,
        })
    };
    let titles = [
        ("throughput", 1, "Throughput, 64-byte UDP"),
        (
            "upnp",
            2,
            "TCP goodput and UPnP IGD (upnpbench: parts 2 and 5)",
        ),
        ("cost", 3, "Per-packet cost through BPF_PROG_TEST_RUN"),
        ("scale", 4, "Scale: live mappings"),
        (
            "sweep",
            4,
            "Scale: aging sweep and map memory (natbench sweep)",
        ),
    ];
    for (name, part) in &parts {
        let (_, number, title) = titles
            .iter()
            .find(|(n, _, _)| n == name)
            .copied()
            .unwrap_or((name, 0, name));
        let mut md = String::new();
        match part {
            Part::Data(value) => {
                raw.insert((*name).to_owned(), value.clone());
                match *name {
                    "throughput" => {
                        throughput_rows(value, data("cost"), &mut rows);
                        throughput_detail(value, &mut md);
                    }
                    "cost" => {
                        cost_rows(value, &mut rows);
                        cost_detail(value, &mut md);
                    }
                    "scale" => {
                        scale_rows(value, &mut rows);
                        scale_detail(value, &mut md);
                    }
                    "sweep" => {
                        sweep_rows(value, &mut rows);
                        sweep_detail(value, &mut md);
                    }
                    "upnp" => upnp_rows(value, &mut rows, &mut md),
                    _ => {}
                }
            }
            Part::Failed(error) => {
                raw.insert((*name).to_owned(), json!({ "error": error }));
                rows.push(Row {
                    part: number,
                    what: title.to_owned(),
                    target: "-".to_owned(),
                    measured: "-".to_owned(),
                    verdict: Verdict::Error,
                    why: format!("the benchmark failed: {}", last_line(error)),
                });
                let _ = writeln!(md, "The benchmark failed:\n\n```\n{error}\n```");
            }
            Part::Missing => {
                let why = if *name == "upnp" {
                    "upnpbench is not available in this build (no upnpbench binary beside \
                     natbench): parts 2 and 5 were not measured"
                } else {
                    "this benchmark did not run"
                };
                raw.insert((*name).to_owned(), Value::Null);
                rows.push(Row {
                    part: number,
                    what: title.to_owned(),
                    target: "-".to_owned(),
                    measured: "-".to_owned(),
                    verdict: Verdict::NotRun,
                    why: why.to_owned(),
                });
                let _ = writeln!(md, "Not available: {why}.");
            }
        }
        let _ = writeln!(sections, "## Part {number}: {title}\n\n{md}");
    }
    rows.sort_by_key(|row| row.part);

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark report\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench{}` on {}, {} CPUs ({}), {} GiB, Linux {}, {}. Every figure below \
         was measured in this run; the targets are the issue's. Other work may have shared \
         the CPUs (load average at the end: {}).{}\n",
        if quick { " --quick" } else { "" },
        machine["cpu_model"].as_str().unwrap_or(""),
        machine["cpus"],
        machine["caches_cpu0"]
            .as_array()
            .map(|c| c
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or(""),
        machine["date_utc"].as_str().unwrap_or(""),
        machine["loadavg_at_report"].as_str().unwrap_or(""),
        if quick {
            " **Quick mode**: small counts and short samples, to keep the benchmark working; \
             the verdicts are only indicative."
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Summary\n");
    rows_table(&rows, &mut md);
    let _ = writeln!(md);
    md.push_str(&sections);

    let report = json!({
        "generated_by": format!("cargo xtask bench{}", if quick { " --quick" } else { "" }),
        "quick": quick,
        "machine": machine,
        "summary": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "parts": raw,
    });
    fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )
    .context("writing report.json")?;
    fs::write(dir.join("report.md"), &md).context("writing report.md")?;
    Ok(md)
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_sizes_read_well() {
        let s = json!({"median": 1.234, "min": 1.0, "max": 2.0});
        assert_eq!(spread_text(&s, 2), "1.23 (1.00-2.00)");
        assert_eq!(
            spread_text(&json!({"median": 3.0, "min": 3.0, "max": 3.0}), 1),
            "3.0"
        );
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(100_000), "100k");
        assert_eq!(size_label(1500), "1500");
    }

    #[test]
    fn throughput_targets_are_judged() {
        let spread = |m: f64| json!({"median": m, "min": m, "max": m});
        let data = json!({"cases": [{
            "direction": "lan_to_wan", "flows": 1,
            "routers": {
                "xdp_nat": {"mpps": spread(2.7), "offered_mpps": spread(2.8)},
                "xdp_forwarder": {"mpps": spread(2.8), "offered_mpps": spread(2.8)},
                "nftables": {"mpps": spread(0.5), "offered_mpps": spread(2.8)},
            }
        }]});
        let mut rows = Vec::new();
        throughput_rows(&data, None, &mut rows);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].verdict, Verdict::Pass);
        assert_eq!(rows[1].verdict, Verdict::Pass);
        assert!(rows[1].measured.starts_with("5.40x"));

        // With the no-router rate, the router's own time per packet.
        let mut data = data;
        data["cases"][0]["routers"]["no_router"] =
            json!({"mpps": spread(4.0), "offered_mpps": spread(4.0)});
        data["cases"][0]["routers"]["xdp_nat"] =
            json!({"mpps": spread(1.0), "offered_mpps": spread(1.0)});
        let mut rows = Vec::new();
        throughput_rows(&data, None, &mut rows);
        assert_eq!(rows[0].verdict, Verdict::Miss);
        assert!(rows[0].measured.contains("750 vs"), "{}", rows[0].measured);
        assert!(
            rows[0].why.contains("250 ns per packet the generator"),
            "{}",
            rows[0].why
        );
    }

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
        upnp_rows(&data, &mut rows, &mut md);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].part, rows[0].verdict), (2, Verdict::Info));
        assert_eq!((rows[1].part, rows[1].verdict), (5, Verdict::Pass));
        assert_eq!(rows[1].measured, "ratio: 3");
    }
}
