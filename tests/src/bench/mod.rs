//! The benchmarks behind `cargo xtask bench` (issue 5), run by `natbench`:
//!
//! - [`throughput`]: packets per second through a router of LAN host,
//!   router and WAN host namespaces ([`topo`]), with a generator and a sink
//!   made of XDP programs ([`bpf`]): our NAT, a plain XDP forwarder and
//!   nftables, side by side;
//! - [`cost`]: nanoseconds per packet through `BPF_PROG_TEST_RUN`;
//! - [`scale`]: both again with tables holding many live mappings;
//! - [`sweep`]: the aging sweep over a full table, and map memory;
//! - [`report`]: the markdown and JSON report, with a verdict per target.
//!
//! Each part returns a typed output (what `natbench` prints as JSON) and
//! has a `report` module beside it that turns that output into the
//! report's rows and its section; [`report`] reads the outputs back and
//! puts the report together. Every figure is measured by the run that
//! reports it.
pub mod bpf;
pub mod cost;
pub mod frames;
pub mod placement;
pub mod progs;
pub mod report;
mod routers;
pub mod scale;
pub mod sweep;
pub mod throughput;
pub mod topo;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

use crate::netns::{Netns, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bpffs of our own, mounted on a fresh temporary directory and removed
/// on drop: pins made here touch nothing of the machine's /sys/fs/bpf.
pub struct PrivateBpffs {
    dir: PathBuf,
    mounted: bool,
}

impl PrivateBpffs {
    pub fn mount(role: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "natbench-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut bpffs = Self {
            dir,
            mounted: false,
        };
        run(
            "mount",
            &["-t", "bpf", "bpf", bpffs.dir.to_str().context("path")?],
        )?;
        bpffs.mounted = true;
        Ok(bpffs)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `work` on a thread of its own inside `netns` and waits for it: XDP
/// attachment, netlink and `BPF_PROG_TEST_RUN` act in the caller's
/// namespace, and only the calling thread may move.
pub fn in_netns<T: Send>(netns: &Netns, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns.enter()?;
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in namespace {} panicked", netns.name))?
    })
}

/// Median, minimum and maximum of repeated measurements. Without samples
/// they are NaN, which JSON writes as `null` (and reads back as NaN).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spread {
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
    #[serde(default, deserialize_with = "nans_if_null")]
    pub samples: Vec<f64>,
}

fn nan_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

fn nans_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    let values = Vec::<Option<f64>>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

impl Spread {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples: samples.to_vec(),
        }
    }

    /// The median, unless there was none.
    pub fn median(&self) -> Option<f64> {
        (!self.median.is_nan()).then_some(self.median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0]).median, 2.5);
        assert!(Spread::of(&[]).median.is_nan());
    }

    #[test]
    fn spread_reads_back_what_it_wrote() {
        let text = serde_json::to_string(&Spread::of(&[])).unwrap();
        assert_eq!(
            text,
            r#"{"median":null,"min":null,"max":null,"samples":[]}"#
        );
        let back: Spread = serde_json::from_str(&text).unwrap();
        assert!(back.median().is_none() && back.min.is_nan());
    }
}
