//! Part 4's rows and section of the report for live mappings: the largest
//! size against smaller ones, throughput and per-packet cost (>= 0.8x).
use std::fmt::Write as _;

use super::{Output, SizedCost, SizedSamples, SpilledAmong};
use crate::bench::{
    Spread,
    report::{Row, Verdict, direction_text, json_number, overlap, size_label, spread_text},
};

/// One size's result in an entry of the scale benchmark.
trait AtSize {
    fn mappings(&self) -> u32;
    fn flows(&self) -> u32;
}

impl AtSize for SizedSamples {
    fn mappings(&self) -> u32 {
        self.mappings
    }
    fn flows(&self) -> u32 {
        self.flows
    }
}

impl AtSize for SizedCost {
    fn mappings(&self) -> u32 {
        self.mappings
    }
    fn flows(&self) -> u32 {
        self.flows
    }
}

/// Which sizes to compare in one scale entry: the largest against the
/// smallest that ran the same flows (judged), and against the smallest of
/// all when that one ran fewer flows (for information).
fn pairs<T: AtSize>(results: &[T]) -> Vec<(&T, &T, bool)> {
    let mut sized: Vec<&T> = results.iter().collect();
    sized.sort_by_key(|r| r.mappings());
    let (Some(&smallest), Some(&largest)) = (sized.first(), sized.last()) else {
        return Vec::new();
    };
    let same = sized
        .iter()
        .find(|r| r.flows() == largest.flows())
        .copied()
        .unwrap_or(largest);
    let mut pairs = Vec::new();
    if same.mappings() != largest.mappings() {
        pairs.push((same, largest, true));
    }
    if smallest.mappings() != same.mappings() {
        pairs.push((smallest, largest, false));
    }
    pairs
}

fn percent(part: u32, whole: u32) -> f64 {
    100.0 * f64::from(part) / f64::from(whole.max(1))
}

fn plural(flows: u32) -> &'static str {
    if flows == 1 { "" } else { "s" }
}

pub fn rows(data: &Output, rows: &mut Vec<Row>) {
    let slots = nat_common::session_slots(data.table_max_entries.sessions);
    let label = |r: &dyn AtSize| size_label(u64::from(r.mappings()));
    // The same flows, so the difference is the table's, unless it is noise.
    let table_why = |small: &dyn AtSize,
                     large: &dyn AtSize,
                     small_spread: &Spread,
                     large_spread: &Spread,
                     decimals: usize| {
        let flows = large.flows();
        let spilled = |at: &dyn AtSize| {
            data.fill
                .iter()
                .find(|fill| fill.mappings == at.mappings())
                .and_then(|fill| fill.traffic_spilled.iter().find(|s| s.flows == flows))
                .map(|among| among.spilled)
        };
        let windows = match (spilled(small), spilled(large)) {
            (Some(at_small), Some(at_large)) => format!(
                ": {at_large} of the {flows} flows' sessions ({:.1}%) live in their second \
                 window at {} against {at_small} ({:.1}%) at {}, each of their lookups a read \
                 of the home slot and then of slots spread over the table",
                percent(at_large, flows),
                label(large),
                percent(at_small, flows),
                label(small)
            ),
            _ => String::new(),
        };
        let cause = format!(
            "the same {flows} flow{}, a fuller table: SESSIONS holds {} entries in {slots} \
             slots against {}, so more of them find their home taken and live in their second \
             window{windows}; and the other sessions' lines crowd the caches and the TLB",
            plural(flows),
            large.mappings(),
            small.mappings()
        );
        if overlap(large_spread, small_spread) {
            format!(
                "the samples overlap ({} against {}): within this shared machine's noise; a \
                 real difference would come from {cause}",
                spread_text(large_spread, decimals),
                spread_text(small_spread, decimals)
            )
        } else {
            cause
        }
    };
    let traffic_why = |small: &dyn AtSize, large: &dyn AtSize| {
        format!(
            "not the same traffic: {} flows at {} against {} at {}; each packet looks up another \
             flow's entries, which the CPU's caches and TLB no longer hold",
            large.flows(),
            label(large),
            small.flows(),
            label(small)
        )
    };
    let fewer = |judged: bool| {
        if judged {
            ""
        } else {
            " (fewer flows at the smaller size)"
        }
    };
    for entry in &data.throughput {
        for (small, large, judged) in pairs(&entry.results) {
            let (Some(a), Some(b)) = (small.samples.mpps.median(), large.samples.mpps.median())
            else {
                continue;
            };
            // With the router on a core of its own, judged as part 1 is: on
            // the router's time per packet there, the raw rate beside it.
            let on_core = small
                .samples
                .router_cpu_ns
                .as_ref()
                .and_then(Spread::median)
                .zip(
                    large
                        .samples
                        .router_cpu_ns
                        .as_ref()
                        .and_then(Spread::median),
                );
            let (ratio, measured) = match on_core {
                Some((small_ns, large_ns)) => (
                    small_ns / large_ns,
                    format!(
                        "{:.2}x ({large_ns:.0} vs {small_ns:.0} ns per packet on the router's \
                         core); raw rate {b:.2} vs {a:.2} Mpps",
                        small_ns / large_ns
                    ),
                ),
                None => (b / a, format!("{:.2}x ({b:.2} vs {a:.2} Mpps)", b / a)),
            };
            let ok = ratio >= 0.8;
            rows.push(Row {
                part: 4,
                what: format!(
                    "throughput, {}, {} flow{}: {} vs {} mappings{}",
                    direction_text(&entry.direction),
                    large.flows,
                    plural(large.flows),
                    label(large),
                    label(small),
                    fewer(judged)
                ),
                target: ">= 0.8x".to_owned(),
                measured,
                verdict: if judged {
                    Verdict::judge(ok)
                } else {
                    Verdict::Info
                },
                why: match (ok, judged) {
                    (true, _) => String::new(),
                    (false, true) => {
                        match (&small.samples.router_cpu_ns, &large.samples.router_cpu_ns) {
                            (Some(small_ns), Some(large_ns)) if on_core.is_some() => {
                                table_why(small, large, small_ns, large_ns, 0)
                            }
                            _ => {
                                table_why(small, large, &small.samples.mpps, &large.samples.mpps, 2)
                            }
                        }
                    }
                    (false, false) => traffic_why(small, large),
                },
            });
        }
    }
    for entry in &data.cost {
        let case = entry.case.as_str();
        if case == "restore_only" {
            continue;
        }
        for (small, large, judged) in pairs(&entry.results) {
            let (Some(a), Some(b)) = (small.ns.median(), large.ns.median()) else {
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
                    large.flows,
                    plural(large.flows),
                    label(large),
                    label(small),
                    fewer(judged)
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
                    (false, true) => table_why(small, large, &small.ns, &large.ns, 0),
                    (false, false) => traffic_why(small, large),
                },
            });
        }
    }
}

pub fn detail(data: &Output, md: &mut String) {
    let sizes: Vec<u64> = data.sizes.iter().map(|&n| u64::from(n)).collect();
    let _ = writeln!(
        md,
        "A mapping is one live conversation: a SESSIONS entry on a dynamic mapping (its port's \
         PORT_OWNERS slot, and a BINDINGS entry when the port is not its endpoint's own). One \
         WAN address holds at most {} dynamic mappings (a port is held by one mapping, whatever \
         its remotes), so beyond that the conversations are further remotes on the same \
         mappings. Tables: {} (same for every size). Router: {}. Flow sets: 1 flow, a hot set \
         of {} flows (the same at every size), and all = as many of the LAN host's UDP \
         mappings as the size has (at most 64512).\n",
        data.max_binding_pairs_per_wan_address,
        serde_json::to_string(&data.table_max_entries).unwrap_or_default(),
        data.router,
        data.hot_flows,
    );
    let among = |counts: &[SpilledAmong]| {
        if counts.is_empty() {
            return "not counted".to_owned();
        }
        counts
            .iter()
            .map(|among| {
                format!(
                    "{} of {} ({:.1}%)",
                    among.spilled,
                    among.flows,
                    percent(among.spilled, among.flows)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for fill in &data.fill {
        let share = |spilled: u64| 100.0 * spilled as f64 / f64::from(fill.sessions.max(1));
        let _ = writeln!(
            md,
            "- {} mappings: {} sessions on {} dynamic mappings, filled in {:.1} s; {} of the \
             sessions ({:.1}%) live in their second window, of the measured flows' sessions {}; \
             after the measured flows' first traffic the sweep brought {} sessions home, \
             leaving {} ({:.1}%) in their second window, of the measured flows' {}",
            size_label(u64::from(fill.mappings)),
            fill.sessions,
            fill.binding_pairs,
            fill.fill_secs,
            fill.sessions_spilled_at_fill,
            share(fill.sessions_spilled_at_fill),
            among(&fill.traffic_spilled_at_fill),
            fill.sessions_moved_home,
            fill.sessions_spilled,
            share(fill.sessions_spilled),
            among(&fill.traffic_spilled),
        );
    }
    let _ = writeln!(
        md,
        "\nRouter counters after the throughput runs: `{}`.",
        serde_json::to_string(&data.router_counters_after_throughput).unwrap_or_default()
    );
    let header: Vec<String> = sizes.iter().map(|&n| size_label(n)).collect();
    let _ = writeln!(
        md,
        "\nThroughput, Mpps (median (min-max) of {} alternating samples of {} s):\n",
        data.reps,
        json_number(data.secs_per_sample)
    );
    let _ = writeln!(md, "| Direction | Flows | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(sizes.len()));
    for entry in &data.throughput {
        let cells: Vec<String> = entry
            .results
            .iter()
            .map(|r| {
                let flows = r.flows;
                let s = plural(flows);
                format!("{} ({flows} flow{s})", spread_text(&r.samples.mpps, 2))
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            direction_text(&entry.direction),
            entry.flow_set,
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\nPer-packet cost, ns (BPF_PROG_TEST_RUN, {} runs, median (min-max) of {}):\n",
        data.repeat, data.cost_reps
    );
    let _ = writeln!(md, "| Case | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(sizes.len()));
    for entry in &data.cost {
        let cells: Vec<String> = entry
            .results
            .iter()
            .map(|r| spread_text(&r.ns, 0))
            .collect();
        let _ = writeln!(md, "| {} | {} |", entry.case, cells.join(" | "));
    }
}
