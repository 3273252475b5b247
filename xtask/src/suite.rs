//! `cargo xtask test`: the whole check the CI runs (.ci/run), and `cargo
//! xtask fuzz`, its last step.

use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

/// The cargo-fuzz crate, relative to the workspace root. It is a workspace
/// of its own, so fmt, clippy and the tests of `run` do not see it.
const FUZZ_DIR: &str = "nat-ctl/fuzz";
/// Its targets: the parsers of what LAN hosts send to the UPnP service.
pub const FUZZ_TARGETS: &[&str] = &["ssdp", "soap", "http_head", "natpmp", "igd_actions"];
/// How long `cargo xtask test` runs each target.
pub const FUZZ_SECONDS: u32 = 20;
/// One input running longer than this is a hang, reported like a crash
/// (libFuzzer's default is 20 minutes).
const FUZZ_INPUT_TIMEOUT_SECS: u32 = 10;
/// cargo-fuzz needs a nightly (`-Z sanitizer`).
const NIGHTLY: &str = "+nightly";

/// `cargo test`, with `test_args` for the test binaries.
fn test_command(test_args: &[String]) -> Vec<&str> {
    let mut test = vec!["test"];
    if !test_args.is_empty() {
        test.push("--");
        test.extend(test_args.iter().map(String::as_str));
    }
    test
}

fn run_step(name: &str, args: &[&str]) -> Result<()> {
    let mut command = cmd::cargo(args);
    let status = cmd::status(&mut command)?;
    if !status.success() {
        bail!(
            "step `{name}` failed: `{}` ({status})",
            cmd::display(&command)
        );
    }
    Ok(())
}

/// The end-to-end tests run the real natctl binary, which `cargo test`
/// does not put in target/debug by itself.
const BUILD_NATCTL: [&str; 4] = ["build", "--package", "nat-ctl", "--bins"];

pub fn run(test_args: &[String]) -> Result<()> {
    setup::run()?;
    if !cmd::is_root()? {
        println!("xtask: note: not root; the tests that create netns and attach XDP need root");
    }
    let test = test_command(test_args);
    let steps: [(&str, Vec<&str>); 4] = [
        ("fmt", vec!["fmt", "--all", "--", "--check"]),
        // --workspace only checks, so it covers nat-ebpf too although that
        // crate links only for the bpf target.
        (
            "clippy",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("build", BUILD_NATCTL.to_vec()),
        // The default members: everything but nat-ebpf, which nat-ctl's
        // build script builds for the bpf target.
        ("test", test),
    ];
    for (name, args) in steps {
        run_step(name, &args)?;
    }
    // The benchmarks at small counts, so that they keep working; their
    // figures are not judged here.
    if crate::bench::run(true)? != std::process::ExitCode::SUCCESS {
        bail!("step `bench --quick` failed: see target/bench/report.md");
    }
    fuzz(FUZZ_SECONDS)?;
    println!("xtask: test: fmt, clippy, tests, quick benchmarks and fuzzing passed");
    Ok(())
}

/// How long the spin loops of a stress run may go on, whatever happens to
/// the runs.
const STRESS_LOAD_LIMIT: Duration = Duration::from_secs(3 * 3600);

/// `cargo xtask test --stress RUNS`: the tests, `runs` times in a row, with
/// a spin loop on every core, so that a test which passes only on an idle
/// machine shows itself. Stops at the first failed run.
pub fn stress(runs: u32, test_args: &[String]) -> Result<()> {
    setup::run()?;
    run_step("build", &BUILD_NATCTL)?;
    // Build the test binaries before the load starts: the runs then time
    // the tests, not the compiler.
    run_step("build tests", &["test", "--no-run"])?;
    let test = test_command(test_args);
    let load = BusyCores::start(STRESS_LOAD_LIMIT);
    println!(
        "xtask: stress: {runs} run(s) of `cargo {}` with {} core(s) kept busy",
        test.join(" "),
        load.cores()
    );
    for run in 1..=runs {
        let started = Instant::now();
        run_step(&format!("test (loaded run {run} of {runs})"), &test)
            .with_context(|| format!("{} of {runs} loaded runs passed before it", run - 1))?;
        println!(
            "xtask: stress: run {run} of {runs} passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    drop(load);
    println!("xtask: stress: {runs} of {runs} loaded runs passed");
    Ok(())
}

/// One spinning thread per core until dropped (or `limit` runs out).
struct BusyCores {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCores {
    fn start(limit: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        for _ in 0..100_000 {
                            std::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn cores(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for BusyCores {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Builds the fuzz targets, then runs each for `seconds` from its seed
/// corpus; fails if one crashes or hangs. New inputs libFuzzer finds go to a scratch
/// corpus under the fuzz crate's target directory (kept, so that each run
/// starts where the last one stopped), never into the committed seeds;
/// crashing inputs go to nat-ctl/fuzz/artifacts/<target>/. Both are
/// ignored by git.
pub fn fuzz(seconds: u32) -> Result<()> {
    let fuzz_dir = cmd::workspace_root().join(FUZZ_DIR);
    // One build for all targets (the runs reuse it), so that a compile
    // error is told apart from a crash.
    let mut build = cmd::cargo([NIGHTLY, "fuzz", "build", "--fuzz-dir", FUZZ_DIR]);
    let status = cmd::status(&mut build)?;
    if !status.success() {
        bail!(
            "step `fuzz build` failed: `{}` ({status})",
            cmd::display(&build)
        );
    }
    let mut crashed = Vec::new();
    for &target in FUZZ_TARGETS {
        let scratch = fuzz_dir.join("target").join("corpus").join(target);
        fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        let seeds = fuzz_dir.join("corpus").join(target);
        // libFuzzer writes new inputs to the first corpus directory only.
        let mut run = cmd::cargo([NIGHTLY, "fuzz", "run", target, "--fuzz-dir", FUZZ_DIR]);
        run.arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={FUZZ_INPUT_TIMEOUT_SECS}"))
            // Past the parsers' own limits (16 KiB SOAP bodies, 2 KiB SSDP
            // datagrams, 8 KiB heads), so that short runs reach them too.
            .arg("-max_len=20000");
        let status = cmd::status(&mut run)?;
        if !status.success() {
            eprintln!(
                "xtask: fuzz: {target} failed ({status}); the crashing input is in {}",
                fuzz_dir.join("artifacts").join(target).display()
            );
            crashed.push(target);
        }
    }
    if !crashed.is_empty() {
        bail!(
            "step `fuzz` failed for {}; reproduce with `cargo {NIGHTLY} fuzz run <target> \
             --fuzz-dir {FUZZ_DIR} <input>`",
            crashed.join(", ")
        );
    }
    println!(
        "xtask: fuzz: {} ran {seconds} s each without a crash",
        FUZZ_TARGETS.join(", ")
    );
    Ok(())
}
