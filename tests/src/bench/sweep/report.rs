//! Part 4's rows and section of the report for the aging sweep (<= 1 s)
//! and map memory (<= 256 B a mapping).
use std::fmt::Write as _;

use super::{MapMemory, Output};
use crate::bench::report::{Row, Verdict, size_label};

pub fn rows(data: &Output, rows: &mut Vec<Row>) {
    let entries = u64::from(data.entries);
    let pairs = data.binding_pairs;
    let removed = (data.sessions_removed + data.bindings_removed) as u64;
    let what = |who: &str| {
        format!(
            "aging sweep ({who}) over {} sessions and {} mappings, half of them expired",
            size_label(entries),
            pairs
        )
    };
    let (secs, idle) = (
        data.kernel_sweep_secs,
        data.kernel_sweep_nothing_to_remove_secs,
    );
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
                "the walk alone takes {idle:.2} s; the rest is {removed} removals inside the \
                 kernel"
            )
        },
    });
    if let (Some(session), Some(pair)) = (
        data.memlock_bytes_per_session,
        data.memlock_bytes_per_mapping,
    ) {
        rows.push(Row {
            part: 4,
            what: "map memory per mapping (its BINDINGS entry, preallocated, and its PORT_OWNERS slot)".to_owned(),
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
                "preallocated slots cost their key and value, and a hash map's also the \
                 kernel's per-element header and bucket"
                    .to_owned()
            },
        });
    }
}

/// "112.9 B a slot (1001024 slots, 112.9 MB)".
fn memory(map: &MapMemory) -> String {
    format!(
        "{:.1} B a slot ({} slots, {:.1} MB)",
        map.memlock_bytes_per_max_entry,
        map.max_entries,
        map.memlock_bytes as f64 / 1e6
    )
}

pub fn detail(value: &Output, md: &mut String) {
    let _ = writeln!(
        md,
        "`natbench sweep --entries {}` on a loaded, not attached, datapath (tables sized for \
         the entries): {} sessions and {} mappings filled in {:.1} s, half of them idle past \
         their timeout. The daemon's sweep, the datapath's `nat_sweep` run through \
         BPF_PROG_TEST_RUN: {:.2} s, then {:.2} s with nothing left to remove. Memory is the \
         kernel's memlock figure of each preallocated map divided by its slots: SESSIONS {}, \
         BINDINGS {}.",
        value.entries,
        value.entries,
        value.binding_pairs,
        value.fill_secs,
        value.kernel_sweep_secs,
        value.kernel_sweep_nothing_to_remove_secs,
        memory(&value.sessions),
        memory(&value.bindings),
    );
}
