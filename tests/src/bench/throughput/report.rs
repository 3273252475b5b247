//! Part 1's rows and section of the report, with the routers on a core of
//! their own: our NAT against the plain forwarder (>= 0.9x the rate), and
//! against nftables (>= 3x in each router's own cost per packet, the lab's
//! fixed cost, the redirect-only router's, taken out; the raw rate ratio
//! beside it), 10 000 flows against 1 (>= 0.9x); TC mode and the
//! flowtable for information. Where a target is missed, the kernel's own
//! run time of each program, measured in the same samples, says where the
//! time went.
use std::{collections::BTreeMap, fmt::Write as _};

use super::{Output, Samples};
use crate::bench::{
    Spread, cost,
    report::{Row, Verdict, direction_text, json_number, noise_note, some, spread_text},
};

/// One router's figures in one throughput case.
struct Carried<'a> {
    mpps: f64,
    samples: &'a Samples,
}

impl<'a> Carried<'a> {
    fn of(routers: &'a BTreeMap<String, Samples>, label: &str) -> Option<Self> {
        let samples = routers.get(label)?;
        Some(Self {
            mpps: samples.mpps.median()?,
            samples,
        })
    }

    /// ns per packet on the router's core: its NAPI kthread's CPU time
    /// per packet where the run measured it (whatever share of the core
    /// this shared machine left it), else 1 / rate.
    fn ns(&self) -> f64 {
        self.samples
            .router_cpu_ns
            .as_ref()
            .and_then(Spread::median)
            .unwrap_or(1e3 / self.mpps)
    }

    /// Packets per µs the router's core would carry given all of it.
    fn capacity(&self) -> f64 {
        1e3 / self.ns()
    }

    /// The router's own ns per packet: its time per packet less the
    /// redirect-only router's (veth rings, NAPI, the redirect itself).
    fn own_ns(&self, fixed: Option<&Carried>) -> Option<f64> {
        let own = self.ns() - fixed?.ns();
        (own.is_finite() && own > 0.0).then_some(own)
    }

    /// The router's programs' own ns per packet (kernel statistics).
    fn bpf_ns(&self) -> Option<f64> {
        self.samples.router_bpf_ns.as_ref()?.median()
    }
}

fn ns_text(ns: Option<f64>) -> String {
    ns.map_or("-".to_owned(), |ns| format!("{ns:.0}"))
}

fn flows_text(direction: &str, flows: u32) -> String {
    format!(
        "{}, {} flow{}",
        direction_text(direction),
        flows,
        if flows == 1 { "" } else { "s" }
    )
}

fn judged(ratio: f64, pass: bool) -> Verdict {
    if ratio.is_finite() {
        Verdict::judge(pass)
    } else {
        Verdict::Error
    }
}

/// Whether the redirect-only router carried about what the generator's
/// core alone carries: then the router's core was not what limited it, and
/// its time per packet overstates the lab's fixed cost.
fn fixed_cost_caveat(fixed: Option<&Carried>, alone: Option<&Carried>) -> String {
    match (fixed, alone) {
        (Some(fixed), Some(alone)) if fixed.mpps >= 0.9 * alone.mpps => format!(
            "; the redirect-only router carried {:.2} Mpps against {:.2} with no router at \
             all: the generator's core, not the router's, limited it, so the fixed cost \
             taken out is an upper bound and the routers' own costs lower bounds",
            fixed.mpps, alone.mpps
        ),
        _ => String::new(),
    }
}

pub fn rows(data: &Output, cost: Option<&cost::Output>, rows: &mut Vec<Row>) {
    let cases = &data.cases;
    for case in cases {
        let direction = case.direction.as_str();
        let flows = case.flows;
        let routers = &case.routers;
        let what = flows_text(direction, flows);
        let nat = Carried::of(routers, "xdp_nat");
        let fixed = Carried::of(routers, "xdp_redirect");
        let alone = Carried::of(routers, "no_router");
        let caveat = fixed_cost_caveat(fixed.as_ref(), alone.as_ref());
        let fixed_text = fixed.as_ref().map_or(String::new(), |fixed| {
            format!(
                "the lab's fixed cost (the redirect-only router's time per packet) is {:.0} \
                 ns per packet",
                fixed.ns()
            )
        });
        let Some(nat) = nat else { continue };

        if let Some(fwd) = Carried::of(routers, "xdp_forwarder") {
            // Per packet on the router's core, so that what else this
            // machine ran on that core does not count.
            let ratio = nat.capacity() / fwd.capacity();
            let noise = noise_note(&nat.samples.mpps, &fwd.samples.mpps, 2);
            // The NAT's extra work per packet over the forwarder, from part 3.
            let extra_ns = cost.and_then(|cost| {
                let case = if direction == "lan_to_wan" {
                    "established_outbound"
                } else {
                    "forwarded_inbound"
                };
                Some(
                    cost.cases.get(case)?.ns.median()?
                        - cost.cases.get("forwarder")?.ns.median()?,
                )
            });
            let why = if ratio >= 0.9 {
                String::new()
            } else {
                format!(
                    "on the router's core our NAT takes {:.0} ns per packet against the \
                     forwarder's {:.0}; of these its program's own run time is {} ns against \
                     {} (kernel statistics, same samples); {fixed_text}{}{caveat}{noise}",
                    nat.ns(),
                    fwd.ns(),
                    ns_text(nat.bpf_ns()),
                    ns_text(fwd.bpf_ns()),
                    extra_ns.map_or(String::new(), |ns| format!(
                        "; part 3 puts the NAT's extra work on one established flow at \
                         {ns:.0} ns per packet (its table lookups, the session's counters, \
                         the checksum rewrites)"
                    ))
                )
            };
            rows.push(Row {
                part: 1,
                what: format!("{what}: XDP NAT vs plain XDP forwarder"),
                target: ">= 0.9x".to_owned(),
                measured: format!(
                    "{ratio:.2}x ({:.0} vs {:.0} ns per packet on the router's core, programs \
                     {} vs {}); raw rate {:.2}x ({:.2} vs {:.2} Mpps)",
                    nat.ns(),
                    fwd.ns(),
                    ns_text(nat.bpf_ns()),
                    ns_text(fwd.bpf_ns()),
                    nat.mpps / fwd.mpps,
                    nat.mpps,
                    fwd.mpps
                ),
                verdict: judged(ratio, ratio >= 0.9),
                why,
            });
        }

        for (label, name, target) in [
            ("nftables", "nftables", Some(3.0)),
            ("nftables_flowtable", "nftables flowtable", None),
        ] {
            let Some(nft) = Carried::of(routers, label) else {
                continue;
            };
            let raw = nat.mpps / nft.mpps;
            let own = nat
                .own_ns(fixed.as_ref())
                .zip(nft.own_ns(fixed.as_ref()))
                .map(|(nat, nft)| nft / nat);
            let ratio = own.unwrap_or(f64::NAN);
            let why = match target {
                Some(_) if ratio.is_nan() => format!(
                    "no own cost to compare: a router's time per packet ({:.0} ns ours, \
                     {:.0} nftables') was not above the fixed cost's, which this machine's \
                     noise does when the routers are not what limits the rate{caveat}",
                    nat.ns(),
                    nft.ns()
                ),
                Some(target) if ratio < target => format!(
                    "own cost per packet: nftables {} ns (skb, conntrack, NAT, routing, \
                     qdisc), our NAT {} ns ({} ns of it its program's run time); \
                     {fixed_text}{caveat}",
                    ns_text(nft.own_ns(fixed.as_ref())),
                    ns_text(nat.own_ns(fixed.as_ref())),
                    ns_text(nat.bpf_ns())
                ),
                _ => String::new(),
            };
            rows.push(Row {
                part: 1,
                what: format!("{what}: XDP NAT vs {name}, own cost per packet"),
                target: target.map_or("-".to_owned(), |t| format!(">= {t}x")),
                measured: format!(
                    "{} ({} vs {} ns over the fixed {}); raw rate {raw:.2}x ({:.2} vs {:.2} \
                     Mpps)",
                    own.map_or("-".to_owned(), |r| format!("{r:.2}x")),
                    ns_text(nft.own_ns(fixed.as_ref())),
                    ns_text(nat.own_ns(fixed.as_ref())),
                    ns_text(fixed.as_ref().map(Carried::ns)),
                    nat.mpps,
                    nft.mpps
                ),
                verdict: match target {
                    Some(_) if ratio.is_nan() => Verdict::Miss,
                    Some(target) => judged(ratio, ratio >= target),
                    None => Verdict::Info,
                },
                why,
            });
        }

        if let Some(tc) = Carried::of(routers, "tc_nat") {
            let nft = Carried::of(routers, "nftables");
            let own = tc
                .own_ns(fixed.as_ref())
                .zip(nft.as_ref().and_then(|nft| nft.own_ns(fixed.as_ref())))
                .map(|(tc, nft)| nft / tc);
            rows.push(Row {
                part: 1,
                what: format!("{what}: TC-mode NAT"),
                target: "-".to_owned(),
                measured: format!(
                    "{:.2} Mpps, {:.0} ns per packet on the router's core ({:.2}x the XDP \
                     NAT's); own cost {} ns, programs {} ns per packet; nftables' own cost {} \
                     of it",
                    tc.mpps,
                    tc.ns(),
                    tc.ns() / nat.ns(),
                    ns_text(tc.own_ns(fixed.as_ref())),
                    ns_text(tc.bpf_ns()),
                    own.map_or("-".to_owned(), |r| format!("{r:.2}x")),
                ),
                verdict: Verdict::Info,
                why: String::new(),
            });
        }

        if flows > 1
            && let Some(one) = cases
                .iter()
                .find(|c| c.direction == case.direction && c.flows == 1)
                .and_then(|c| Carried::of(&c.routers, "xdp_nat"))
        {
            let ratio = nat.capacity() / one.capacity();
            let why = if ratio >= 0.9 {
                String::new()
            } else {
                format!(
                    "on the router's core {flows} flows take {:.0} ns per packet against \
                     {:.0} for one; its program's own run time goes from {} to {} ns: the \
                     difference is the table entries of another flow at every packet (its \
                     SESSIONS slot, or on a forwarded port its FORWARD_SESSIONS slot), which the caches no longer hold{}",
                    nat.ns(),
                    one.ns(),
                    ns_text(one.bpf_ns()),
                    ns_text(nat.bpf_ns()),
                    noise_note(&nat.samples.mpps, &one.samples.mpps, 2)
                )
            };
            rows.push(Row {
                part: 1,
                what: format!("{what}: XDP NAT, {flows} flows vs 1"),
                target: ">= 0.9x".to_owned(),
                measured: format!(
                    "{ratio:.2}x ({:.0} vs {:.0} ns per packet on the router's core, programs \
                     {} vs {}); raw rate {:.2} vs {:.2} Mpps",
                    nat.ns(),
                    one.ns(),
                    ns_text(nat.bpf_ns()),
                    ns_text(one.bpf_ns()),
                    nat.mpps,
                    one.mpps
                ),
                verdict: judged(ratio, ratio >= 0.9),
                why,
            });
        }
    }
    if !data.flowtable.is_empty() && !data.flowtable.starts_with("measured") {
        rows.push(Row {
            part: 1,
            what: "nftables flowtable (the kernel's software fast path)".to_owned(),
            target: "-".to_owned(),
            measured: first_line(&data.flowtable).to_owned(),
            verdict: Verdict::Info,
            why: String::new(),
        });
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

const ROUTERS: [(&str, &str); 7] = [
    ("xdp_nat", "XDP NAT"),
    ("tc_nat", "TC NAT"),
    ("xdp_forwarder", "plain XDP forwarder"),
    ("xdp_redirect", "redirect only"),
    ("nftables", "nftables"),
    ("nftables_flowtable", "nftables flowtable"),
    ("no_router", "no router"),
];

pub fn detail(data: &Output, md: &mut String) {
    let _ = writeln!(
        md,
        "Mpps received by the sink, median (min-max) of {} alternating samples of {} s each; \
         {}-byte frames ({} on the wire). Placement: {}. A router's time per packet is its \
         NAPI kthread's CPU time (`/proc/PID/schedstat`) per packet the sink received, \
         whatever share of its core this machine left it (\"core\": that share; 1/rate where \
         not threaded). \"Redirect only\" is a router whose program does one redirect to \
         the other veth and nothing else: its time per packet is the lab's fixed cost \
         (veth rings, NAPI, redirect), which each router's own cost is counted above. \"No router\" joins the two hosts' veths directly: what \
         the generator's core alone reaches, the ceiling of every router here. Program ns \
         are the kernel's run-time statistics (`run_time_ns / run_cnt` of the programs on \
         the receiving interface, on for the run), which add two clock reads per run.\n",
        data.reps,
        json_number(data.secs_per_sample),
        data.frame_bytes,
        data.wire_bytes,
        if data.placement.is_empty() {
            "not recorded"
        } else {
            &data.placement
        }
    );
    let present: Vec<(&str, &str)> = ROUTERS
        .iter()
        .copied()
        .filter(|(label, _)| data.cases.iter().any(|c| c.routers.contains_key(*label)))
        .collect();
    let _ = writeln!(
        md,
        "| Direction | Flows | {} |",
        present
            .iter()
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---:|{}", "---:|".repeat(present.len()));
    for case in &data.cases {
        let r = &case.routers;
        let fixed = Carried::of(r, "xdp_redirect");
        let cells: Vec<String> = present
            .iter()
            .map(|(label, _)| {
                let Some(samples) = r.get(*label) else {
                    return "-".to_owned();
                };
                let carried = Carried::of(r, label);
                let own = carried.as_ref().and_then(|c| c.own_ns(fixed.as_ref()));
                let bpf = carried.as_ref().and_then(Carried::bpf_ns);
                let mut cell = spread_text(&samples.mpps, 2);
                if let (Some(ns), Some(share)) = (
                    samples.router_cpu_ns.as_ref().and_then(Spread::median),
                    samples.router_cpu_share.as_ref().and_then(Spread::median),
                ) {
                    let _ = write!(cell, "; {ns:.0} ns/pkt, core {:.0}%", share * 100.0);
                }
                if *label != "no_router" && *label != "xdp_redirect" {
                    let _ = write!(cell, "; own {} ns", ns_text(own));
                }
                if bpf.is_some() {
                    let _ = write!(cell, "; prog {} ns", ns_text(bpf));
                }
                cell
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            direction_text(&case.direction),
            case.flows,
            cells.join(" | ")
        );
    }
    let shares: Vec<f64> = data
        .cases
        .iter()
        .flat_map(|case| {
            ROUTERS
                .iter()
                .filter_map(|(label, _)| some(case.routers.get(*label)?.sender_cpu_share.min))
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
    if !data.programs.is_empty() {
        let _ = writeln!(
            md,
            "\n| Router | Interface | Hook | Program | Instructions (xlated) | JIT bytes |\n\
             |---|---|---|---|---:|---:|"
        );
        for (router, programs) in &data.programs {
            for program in programs {
                let _ = writeln!(
                    md,
                    "| {router} | {} | {} | {} | {} | {} |",
                    program.interface,
                    program.hook,
                    program.name,
                    program.xlated_insns,
                    program.jited_bytes
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nRouters: XDP NAT = {}; plain forwarder = {}; nftables = {}. Flowtable: {}. \
         Generator: {}. Router counters after the run: `{}`.",
        data.router_nat,
        data.router_forwarder,
        data.router_nftables,
        if data.flowtable.is_empty() {
            "-"
        } else {
            first_line(&data.flowtable)
        },
        data.generator,
        serde_json::to_string(&data.router_counters_after).unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn typed(data: &Value) -> Output {
        let mut data = data.clone();
        for case in data["cases"].as_array_mut().unwrap() {
            for router in case["routers"].as_object_mut().unwrap().values_mut() {
                router["sender_cpu_share"] = router["mpps"].clone();
                router["offered_mpps"] = router["mpps"].clone();
                router["received"] = json!(0);
                router["sent"] = json!(0);
            }
        }
        for (key, value) in [
            ("frame_bytes", json!(60)),
            ("wire_bytes", json!(64)),
            ("secs_per_sample", json!(1.0)),
            ("reps", json!(1)),
            ("warmup_secs", json!(0.1)),
            ("generator", json!("")),
            ("router_nat", json!("")),
            ("router_nftables", json!("")),
            ("router_forwarder", json!("")),
            (
                "flowtable",
                json!("not available on this kernel: nft said no"),
            ),
            ("router_counters_after", json!({})),
        ] {
            data[key] = value;
        }
        serde_json::from_value(data).unwrap()
    }

    #[test]
    fn throughput_targets_are_judged() {
        let spread = |m: f64| json!({"median": m, "min": m, "max": m});
        // ns per packet: redirect 250, NAT 400 (own 150), forwarder 380,
        // nftables 1000 (own 750: 5x the NAT's).
        let data = json!({"cases": [{
            "direction": "lan_to_wan", "flows": 1,
            "routers": {
                "xdp_nat": {"mpps": spread(2.5), "router_bpf_ns": spread(120.0)},
                "xdp_forwarder": {"mpps": spread(1e3 / 380.0)},
                "xdp_redirect": {"mpps": spread(4.0)},
                "nftables": {"mpps": spread(1.0)},
                "no_router": {"mpps": spread(6.0)},
            }
        }]});
        let mut rows = Vec::new();
        super::rows(&typed(&data), None, &mut rows);
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0].verdict, Verdict::Pass);
        assert_eq!(rows[1].verdict, Verdict::Pass);
        assert!(
            rows[1].measured.starts_with("5.00x"),
            "{}",
            rows[1].measured
        );
        assert!(rows[1].measured.contains("raw rate 2.50x"));
        assert_eq!(rows[2].verdict, Verdict::Info);
        assert!(rows[2].measured.contains("not available on this kernel"));

        // nftables only twice the NAT's own cost: a miss, with the figures.
        let mut data = data;
        data["cases"][0]["routers"]["nftables"] = json!({"mpps": spread(1e3 / 550.0)});
        let mut rows = Vec::new();
        super::rows(&typed(&data), None, &mut rows);
        assert_eq!(rows[1].verdict, Verdict::Miss);
        assert!(rows[1].why.contains("nftables 300 ns"), "{}", rows[1].why);
        assert!(rows[1].why.contains("our NAT 150 ns"), "{}", rows[1].why);
    }
}
