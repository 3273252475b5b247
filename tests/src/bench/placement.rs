//! Where the work of a throughput measurement runs. By default the router's
//! XDP program runs in the softirq of whoever queued the frame, here the
//! generator's sending thread, so that generator, router and sink take
//! turns on one core and every rate is 1 / (all three). Instead, each
//! router's receiving veths get a NAPI kthread of their own (`threaded`,
//! possible once an XDP program is attached), pinned to a core of its own,
//! and the generator and the hosts' NAPI (the sinks) stay on another: the
//! router's rate is then its own, as long as the generator's core keeps
//! up (the redirect-only router shows how far it does).
use std::{collections::BTreeSet, fs, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{netns::Netns, wait_for};

/// The cores of a measurement: `router` for the routers' NAPI threads,
/// `hosts` for the generator and the sinks. `router` is `None` on a
/// one-core machine, where everything shares core `hosts`.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub router: Option<usize>,
    pub hosts: usize,
}

impl Placement {
    /// Two cores when the machine has them (the first two this process may
    /// use), else one.
    pub fn detect() -> Result<Self> {
        let cpus = allowed_cpus()?;
        let hosts = *cpus.first().context("this process may run on no CPU")?;
        Ok(Self {
            router: cpus.get(1).copied(),
            hosts,
        })
    }

    pub fn describe(&self) -> String {
        match self.router {
            Some(router) => format!(
                "each router's veths have threaded NAPI, their kthreads pinned to CPU \
                 {router}; the generator's sending thread and the hosts' NAPI kthreads (the \
                 sinks) on CPU {}",
                self.hosts
            ),
            None => format!(
                "one CPU ({}): generator, routers and sinks share it, each rate is 1 / (their \
                 sum)",
                self.hosts
            ),
        }
    }
}

pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the set it is given.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        set
    };
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins task `pid` (0: the calling thread) to `cpu`.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a cpu set built here, passed with its size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning task {pid} to CPU {cpu}"));
    }
    Ok(())
}

/// The pids of the NAPI kthreads of interfaces named `interface` (in any
/// namespace: the kernel names them `napi/<interface>-<napi id>`).
fn napi_threads(interface: &str) -> BTreeSet<i32> {
    let prefix = format!("napi/{interface}-");
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            comm.starts_with(&prefix).then_some(pid)
        })
        .collect()
}

/// Gives `interface` of `netns` a NAPI kthread per queue and pins them to
/// `cpu`. Its threads are told from other namespaces' same-named ones by
/// appearing when this one is switched on.
pub fn thread_napi(netns: &Netns, interface: &str, cpu: usize) -> Result<Vec<i32>> {
    let before = napi_threads(interface);
    netns.exec(
        "sh",
        &[
            "-c",
            &format!("echo 1 > /sys/class/net/{interface}/threaded"),
        ],
    )?;
    let threads = wait_for(
        &format!("the NAPI kthread of {interface} in {}", netns.name),
        Duration::from_secs(5),
        || {
            let new: Vec<i32> = napi_threads(interface)
                .difference(&before)
                .copied()
                .collect();
            (!new.is_empty()).then_some(new)
        },
    )?;
    if threads.len() > 1 {
        bail!(
            "{interface} in {}: {} new NAPI kthreads ({threads:?}) where one queue has one: \
             another run is switching NAPI threads on at the same time",
            netns.name,
            threads.len()
        );
    }
    for &pid in &threads {
        pin(pid, cpu)?;
    }
    Ok(threads)
}

/// CPU time task `pid` has had so far, in ns (`/proc/PID/schedstat`): for a
/// router's NAPI kthread, all the work the router did for its packets.
pub fn cpu_ns(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .with_context(|| format!("{path}: {text:?} is not \"<ns on cpu> ...\""))
}
