//! `cargo xtask bench [--quick]`: runs every benchmark of issue 5 on the
//! netns lab and writes the report, `target/bench/report.md` and
//! `report.json`, with the machine it ran on.
//!
//! Each benchmark is a separate process that prints one JSON object
//! (`natbench throughput|cost|scale|sweep`, and `upnpbench all` and
//! `upnpbench natpmp` when that binary exists); its output goes to `target/bench/parts/<part>.json`, or
//! its error to `<part>.error`, so that one failure still leaves a report
//! of the rest. `natbench report` then judges the targets and writes the
//! report; nothing in it is typed by hand. `--quick` runs all of it at
//! small counts, for CI.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// One benchmark run: its part name, program and arguments, and how long
/// it may take before it is stopped.
struct Step {
    part: &'static str,
    program: &'static str,
    args: Vec<String>,
    limit: Duration,
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|&w| w.to_owned()).collect()
}

fn steps(quick: bool) -> Vec<Step> {
    let minutes = |m: u64| Duration::from_secs(60 * m);
    if quick {
        vec![
            Step {
                part: "throughput",
                program: "natbench",
                args: args(&[
                    "throughput",
                    "--secs",
                    "0.3",
                    "--reps",
                    "1",
                    "--warmup-secs",
                    "0.1",
                ]),
                limit: minutes(3),
            },
            Step {
                part: "cost",
                program: "natbench",
                args: args(&[
                    "cost",
                    "--repeat",
                    "20000",
                    "--reps",
                    "3",
                    "--new-flow-repeat",
                    "1000",
                ]),
                limit: minutes(3),
            },
            Step {
                part: "scale",
                program: "natbench",
                args: args(&[
                    "scale",
                    "--sizes",
                    "1000,10000,100000",
                    "--secs",
                    "0.2",
                    "--reps",
                    "1",
                    "--warmup-secs",
                    "0.05",
                    "--repeat",
                    "20000",
                    "--cost-reps",
                    "3",
                ]),
                limit: minutes(3),
            },
            Step {
                part: "sweep",
                program: "natbench",
                args: args(&["sweep", "--entries", "20000"]),
                limit: minutes(2),
            },
            Step {
                part: "upnp",
                program: "upnpbench",
                args: args(&["all", "--quick"]),
                limit: minutes(5),
            },
        ]
    } else {
        vec![
            Step {
                part: "throughput",
                program: "natbench",
                args: args(&["throughput"]),
                limit: minutes(10),
            },
            Step {
                part: "cost",
                program: "natbench",
                args: args(&["cost"]),
                limit: minutes(5),
            },
            Step {
                part: "scale",
                program: "natbench",
                args: args(&["scale"]),
                limit: minutes(15),
            },
            Step {
                part: "sweep",
                program: "natbench",
                args: args(&["sweep", "--entries", "1000000"]),
                limit: minutes(5),
            },
            Step {
                part: "upnp",
                program: "upnpbench",
                args: args(&["all"]),
                limit: minutes(20),
            },
        ]
    }
}

pub fn run(quick: bool) -> Result<ExitCode> {
    setup::run()?;
    if !cmd::is_root()? {
        bail!("the benchmarks need root (network namespaces, XDP, BPF_PROG_TEST_RUN)");
    }
    cmd::run(&mut cmd::cargo([
        "build",
        "--release",
        "-p",
        "nat-ctl",
        "-p",
        "nat-tests",
        "--bins",
    ]))
    .context("building natctl and the benchmarks")?;
    let release = cmd::target_dir()?.join("release");
    let dir = cmd::target_dir()?.join("bench");
    let parts = dir.join("parts");
    // Only this run's figures: never a stale part from an earlier one.
    match fs::remove_dir_all(&parts) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", parts.display())),
    }
    fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;

    let mut failed = Vec::new();
    for step in steps(quick).into_iter().chain([natpmp_step(quick)]) {
        let program = release.join(step.program);
        if !program.is_file() {
            println!(
                "xtask: bench: {}: {} is not built; the report says so",
                step.part, step.program
            );
            continue;
        }
        wait_until_quiet(if quick {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(120)
        })?;
        if let Err(error) = run_step(&program, &step, &parts) {
            println!("xtask: bench: {}: {error:#}", step.part);
            fs::write(
                parts.join(format!("{}.error", step.part)),
                format!("{error:#}\n"),
            )?;
            failed.push(step.part);
        }
    }

    let mut report = Command::new(release.join("natbench"));
    report.arg("report").arg("--dir").arg(&dir);
    if quick {
        report.arg("--quick");
    }
    cmd::run(&mut report).context("writing the report")?;
    println!(
        "xtask: bench: report written to {} and {}",
        dir.join("report.md").display(),
        dir.join("report.json").display()
    );
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("xtask: bench: failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// Waits (at most `limit`) until the machine's CPUs were at least 90% idle
/// over a second: the kernel tears a part's namespaces and tables down in
/// the background after its process exits, and a part measured meanwhile
/// is measured against that work.
fn wait_until_quiet(limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut before = cpu_times()?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_times()?;
        let (busy, total) = (now.0 - before.0, now.1 - before.1);
        let idle = 1.0 - busy as f64 / total.max(1) as f64;
        if idle >= 0.9 {
            return Ok(());
        }
        if start.elapsed() >= limit {
            println!(
                "xtask: bench: the machine is still {:.0}% busy after {limit:?}; measuring anyway",
                100.0 * (1.0 - idle)
            );
            return Ok(());
        }
        before = now;
    }
}

/// The busy and total jiffies of all CPUs so far (`/proc/stat`).
fn cpu_times() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    // user nice system idle iowait irq softirq steal ...; idle and iowait
    // are the idle ones.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Issue 13's NAT-PMP and PCP server against miniupnpd's (requests/s and
/// p99 latency of map and delete, target >= 2x), a part of its own: it
/// starts two labs of its own, and a failure leaves the other parts whole.
fn natpmp_step(quick: bool) -> Step {
    Step {
        part: "natpmp",
        program: "upnpbench",
        args: if quick {
            args(&["natpmp", "--quick"])
        } else {
            args(&["natpmp"])
        },
        limit: Duration::from_secs(if quick { 3 * 60 } else { 10 * 60 }),
    }
}

/// Runs one benchmark with its stdout into `<part>.json` (its progress and
/// errors go to the terminal), stopping it after its time limit.
fn run_step(program: &Path, step: &Step, parts: &Path) -> Result<()> {
    let out_path: PathBuf = parts.join(format!("{}.json", step.part));
    let out = fs::File::create(&out_path)?;
    let mut command = Command::new(program);
    command
        .args(&step.args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped());
    println!("xtask: $ {}", cmd::display(&command));
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    // Shown as it comes, and its end kept for the report of a failure.
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let tail = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut tail = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail).join("\n")
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > step.limit {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&out_path);
            let tail = tail.join().unwrap_or_default();
            bail!("stopped after {:?}, its time limit:\n{tail}", step.limit);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let tail = tail.join().unwrap_or_default();
    if !status.success() {
        let _ = fs::remove_file(&out_path);
        bail!("`{}` failed ({status}):\n{tail}", cmd::display(&command));
    }
    println!(
        "xtask: bench: {} done in {:.0} s",
        step.part,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
