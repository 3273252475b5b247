//! The report of `cargo xtask bench`: reads what each benchmark printed
//! (`<dir>/parts/<part>.json`, or `<part>.error` when it failed), has each
//! part's own report code judge its targets (`throughput::report`,
//! `cost::report`, `scale::report`, `sweep::report` and, for parts 2 and 5,
//! `crate::upnpbench::report`), and writes `<dir>/report.json` and
//! `<dir>/report.md`. Here: what they share (the rows, the verdicts, the
//! text of figures) and the report around them. Nothing here measures;
//! nothing here is edited by hand.
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde::{Serialize, Serializer, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{Spread, cost, scale, sweep, throughput};
use crate::upnpbench;

/// The parts natbench writes, in report order.
pub const PARTS: [&str; 6] = ["throughput", "upnp", "natpmp", "cost", "scale", "sweep"];

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

    pub fn judge(pass: bool) -> Self {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// One line of the summary (and of `report.json`'s `summary`).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub part: u32,
    pub what: String,
    pub target: String,
    pub measured: String,
    pub verdict: Verdict,
    pub why: String,
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

/// A part's output as the type its benchmark printed.
fn typed<T: DeserializeOwned>(name: &str, value: &Value) -> Result<T> {
    T::deserialize(value).with_context(|| format!("reading the output of {name}"))
}

/// Has the part's own report code add its rows and write its section.
fn part_report(
    name: &str,
    value: &Value,
    cost: Option<&Value>,
    rows: &mut Vec<Row>,
    md: &mut String,
) -> Result<()> {
    match name {
        "throughput" => {
            let data: throughput::Output = typed(name, value)?;
            // Part 3's figures explain part 1's; without them, no matter.
            let cost: Option<cost::Output> = cost.and_then(|c| typed("cost", c).ok());
            throughput::report::rows(&data, cost.as_ref(), rows);
            throughput::report::detail(&data, md);
        }
        "cost" => {
            let data: cost::Output = typed(name, value)?;
            cost::report::rows(&data, rows);
            cost::report::detail(&data, md);
        }
        "scale" => {
            let data: scale::Output = typed(name, value)?;
            scale::report::rows(&data, rows);
            scale::report::detail(&data, md);
        }
        "sweep" => {
            let data: sweep::Output = typed(name, value)?;
            sweep::report::rows(&data, rows);
            sweep::report::detail(&data, md);
        }
        "upnp" | "natpmp" => upnpbench::report::rows(value, rows, md)?,
        _ => {}
    }
    Ok(())
}

fn failed_row(number: u32, title: &str, error: &str) -> Row {
    Row {
        part: number,
        what: title.to_owned(),
        target: "-".to_owned(),
        measured: "-".to_owned(),
        verdict: Verdict::Error,
        why: format!("the benchmark failed: {}", last_line(error)),
    }
}

/// A figure that may be missing (NaN): `None` then.
pub fn some(value: f64) -> Option<f64> {
    (!value.is_nan()).then_some(value)
}

/// A number as JSON writes it (`2.0`, `0.3`): how the report has always
/// shown the benchmarks' settings.
pub fn json_number(value: f64) -> String {
    Value::from(value).to_string()
}

/// "1.23 (1.10-1.40)" from a spread.
pub fn spread_text(spread: &Spread, decimals: usize) -> String {
    match (some(spread.median), some(spread.min), some(spread.max)) {
        (Some(m), Some(lo), Some(hi)) if (hi - lo).abs() > f64::EPSILON => {
            format!("{m:.decimals$} ({lo:.decimals$}-{hi:.decimals$})")
        }
        (Some(m), _, _) => format!("{m:.decimals$}"),
        _ => "-".to_owned(),
    }
}

/// Whether the samples of two spreads overlap: then a difference between
/// their medians may be this shared machine's noise rather than a real one.
pub fn overlap(a: &Spread, b: &Spread) -> bool {
    match (some(a.min), some(a.max), some(b.min), some(b.max)) {
        (Some(a_min), Some(a_max), Some(b_min), Some(b_max)) => a_min <= b_max && b_min <= a_max,
        _ => false,
    }
}

pub fn noise_note(a: &Spread, b: &Spread, decimals: usize) -> String {
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

pub fn size_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

pub fn direction_text(label: &str) -> &'static str {
    match label {
        "lan_to_wan" => "LAN -> WAN",
        "wan_to_lan" => "WAN -> LAN",
        _ => "?",
    }
}

/// The machine the report was made on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub caches_cpu0: Vec<String>,
    pub memory_gib: f64,
    pub kernel: String,
    pub date_utc: String,
    pub loadavg_at_report: String,
}

pub fn machine() -> Machine {
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
    Machine {
        cpu_model: cpu,
        cpus,
        caches_cpu0: caches,
        memory_gib: (memory_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        kernel,
        date_utc: date,
        loadavg_at_report: fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
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
        (
            "natpmp",
            5,
            "NAT-PMP and PCP server (upnpbench natpmp, issue 13)",
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
                if let Err(error) = part_report(name, value, data("cost"), &mut rows, &mut md) {
                    let error = format!("{error:#}");
                    rows.push(failed_row(number, title, &error));
                    let _ = writeln!(md, "Its output does not read:\n\n```\n{error}\n```");
                }
            }
            Part::Failed(error) => {
                raw.insert((*name).to_owned(), json!({ "error": error }));
                rows.push(failed_row(number, title, error));
                let _ = writeln!(md, "The benchmark failed:\n\n```\n{error}\n```");
            }
            Part::Missing => {
                let why = if *name == "upnp" {
                    "upnpbench is not available in this build (no upnpbench binary beside \
                     natbench): parts 2 and 5 were not measured"
                } else if *name == "natpmp" {
                    "upnpbench is not available in this build (no upnpbench binary beside \
                     natbench): NAT-PMP and PCP were not measured"
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
        machine.cpu_model,
        machine.cpus,
        machine.caches_cpu0.join(", "),
        json_number(machine.memory_gib),
        machine.kernel,
        machine.date_utc,
        machine.loadavg_at_report,
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
        "summary": rows,
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
        let s: Spread =
            serde_json::from_value(json!({"median": 1.234, "min": 1.0, "max": 2.0})).unwrap();
        assert_eq!(spread_text(&s, 2), "1.23 (1.00-2.00)");
        let s: Spread =
            serde_json::from_value(json!({"median": 3.0, "min": 3.0, "max": 3.0})).unwrap();
        assert_eq!(spread_text(&s, 1), "3.0");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(size_label(100_000), "100k");
        assert_eq!(size_label(1500), "1500");
    }

    #[test]
    fn rows_and_verdicts_read_as_before() {
        let row = Row {
            part: 4,
            what: "w".to_owned(),
            target: "t".to_owned(),
            measured: "m".to_owned(),
            verdict: Verdict::NotRun,
            why: String::new(),
        };
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            json!({"part": 4, "what": "w", "target": "t", "measured": "m",
                   "verdict": "not run", "why": ""})
        );
        assert_eq!(json_number(2.0), "2.0");
        assert_eq!(json_number(0.3), "0.3");
    }
}
