//! Test harness for the NAT router: network namespaces that a test creates
//! and removes itself, a packet lab that runs the datapath through
//! `BPF_PROG_TEST_RUN`, and an end-to-end lab of LAN host, router and WAN
//! host joined by veth pairs.
//!
//! It also holds the benchmarks of `cargo xtask bench`: [`bench`] (run by
//! `natbench`) and [`upnpbench`] (run by `upnpbench`).
//!
//! Every address used lies inside namespaces created here, all of them
//! from one address plan, [`plan`]: none of it is reachable from, or routed
//! to, the host.
pub mod bench;
pub mod capture;
pub mod internet;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod plan;
pub mod traffic;
pub mod upnpbench;

use std::time::{Duration, Instant};

/// The result of work a test ran on another thread (often inside a
/// namespace, `Netns::spawn`): a panic or an error there fails the test.
pub fn join<T>(handle: std::thread::JoinHandle<anyhow::Result<T>>) -> T {
    handle
        .join()
        .expect("thread panicked")
        .expect("thread failed")
}

/// Polls `check` until it returns `Some`, for at most `timeout`. Tests wait
/// for conditions this way, never with fixed sleeps.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
