//! Part 1's rows and section of the report: our NAT against the plain
//! forwarder (>= 0.9x) and nftables (>= 5x), and why a miss is one, from
//! this run's own figures (and part 3's, when it ran).
use std::{collections::BTreeMap, fmt::Write as _};

use super::{Output, Samples};
use crate::bench::{
    cost,
    report::{Row, Verdict, direction_text, json_number, noise_note, some, spread_text},
};

/// One router's figures in one throughput case.
struct Carried {
    mpps: f64,
    offered: f64,
}

impl Carried {
    fn of(routers: &BTreeMap<String, Samples>, label: &str) -> Option<Self> {
        let samples = routers.get(label)?;
        Some(Self {
            mpps: samples.mpps.median()?,
            offered: samples.offered_mpps.median()?,
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

pub fn rows(data: &Output, cost: Option<&cost::Output>, rows: &mut Vec<Row>) {
    let cases = &data.cases;
    // The NAT's time per packet with one flow, per direction: what many
    // flows add to it is the cost of their table entries missing the caches.
    let single: Vec<(String, Option<f64>)> = cases
        .iter()
        .filter(|case| case.flows == 1)
        .map(|case| {
            let routers = &case.routers;
            let base = Carried::of(routers, "no_router");
            let nat = Carried::of(routers, "xdp_nat").and_then(|nat| nat.router_ns(base.as_ref()));
            (case.direction.clone(), nat)
        })
        .collect();
    for case in cases {
        let direction = case.direction.as_str();
        let flows = case.flows;
        let routers = &case.routers;
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
            Some(cost.cases.get(case)?.ns.median()? - cost.cases.get("forwarder")?.ns.median()?)
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
        let noise = noise_note(&routers["xdp_nat"].mpps, &routers["xdp_forwarder"].mpps, 2);
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

pub fn detail(data: &Output, md: &mut String) {
    let _ = writeln!(
        md,
        "Mpps received by the sink, median (min-max) of {} alternating samples of {} s each; \
         {}-byte frames ({} on the wire). \"No router\" joins the two hosts' veths directly: \
         what the generator and the sink alone reach. Where nothing was dropped (offered = \
         received), the router ran in the sender's softirq, one packet after the other with \
         the generator and the sink, and its time per packet is 1/rate less 1/(no-router \
         rate).\n",
        data.reps,
        json_number(data.secs_per_sample),
        data.frame_bytes,
        data.wire_bytes
    );
    let _ = writeln!(
        md,
        "| Direction | Flows | {} | router ns/packet: NAT, forwarder, nftables | offered Mpps: NAT, forwarder, nftables |",
        ROUTERS.map(|(_, name)| name).join(" | ")
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|");
    for case in &data.cases {
        let r = &case.routers;
        let base = Carried::of(r, "no_router");
        let per_packet: Vec<String> = ["xdp_nat", "xdp_forwarder", "nftables"]
            .iter()
            .map(|label| ns_text(Carried::of(r, label).and_then(|c| c.router_ns(base.as_ref()))))
            .collect();
        let offered: Vec<String> = ["xdp_nat", "xdp_forwarder", "nftables"]
            .iter()
            .map(|label| {
                r.get(*label)
                    .map_or("-".to_owned(), |s| spread_text(&s.offered_mpps, 2))
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            direction_text(&case.direction),
            case.flows,
            ROUTERS
                .map(|(label, _)| r
                    .get(label)
                    .map_or("-".to_owned(), |s| spread_text(&s.mpps, 2)))
                .join(" | "),
            per_packet.join(", "),
            offered.join(", "),
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
    let _ = writeln!(
        md,
        "\nRouters: XDP NAT = {}; plain forwarder = {}; nftables = {}. Generator: {}. \
         Router counters after the run: `{}`.",
        data.router_nat,
        data.router_forwarder,
        data.router_nftables,
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
            ("router_counters_after", json!({})),
        ] {
            data[key] = value;
        }
        serde_json::from_value(data).unwrap()
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
        super::rows(&typed(&data), None, &mut rows);
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
        super::rows(&typed(&data), None, &mut rows);
        assert_eq!(rows[0].verdict, Verdict::Miss);
        assert!(rows[0].measured.contains("750 vs"), "{}", rows[0].measured);
        assert!(
            rows[0].why.contains("250 ns per packet the generator"),
            "{}",
            rows[0].why
        );
    }
}
