//! The benchmark programs of the datapath object (`nat-ebpf/src/bench.rs`):
//! loading them, their maps, and running them through `BPF_PROG_TEST_RUN`.
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, Map, MapData, PerCpuArray, ProgramArray},
    programs::{ProgramFd, SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use nat_common::{
    bench::{self, BenchTemplate},
    maps,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Frames per batch of the live-frames mode.
pub const LIVE_BATCH: u32 = 64;

/// The benchmark maps of one loaded instance of the object.
pub struct BenchMaps {
    template: Array<MapData, BenchTemplate>,
    seq: Array<MapData, u64>,
    next: ProgramArray<MapData>,
    /// The sink's counter: only instances that run the sink use it.
    rx: Option<PerCpuArray<MapData, u64>>,
}

impl BenchMaps {
    fn from_source(mut source: impl FnMut(&'static str) -> Result<Option<Map>>) -> Result<Self> {
        let mut take = |name: &'static str| {
            source(name)?.with_context(|| format!("no map {name} in the object"))
        };
        Ok(Self {
            template: take(bench::TEMPLATE_MAP)?.try_into()?,
            seq: take(bench::SEQ_MAP)?.try_into()?,
            next: take(bench::NEXT_MAP)?.try_into()?,
            rx: source(bench::RX_MAP)?.map(TryInto::try_into).transpose()?,
        })
    }

    /// The maps of the object instance that the loaded programs belong to
    /// (`bench_restore` uses all but the sink's), found by id: for an object
    /// loaded by `nat_ctl::datapath::Datapath`, which keeps the maps it does
    /// not know to itself.
    pub fn of_programs(loaded: &[&Xdp]) -> Result<Self> {
        let mut found = Vec::new();
        for program in loaded {
            let ids = program
                .info()?
                .map_ids()?
                .context("the kernel does not report a program's maps")?;
            for id in ids {
                let data = MapData::from_id(id)?;
                let name = data.info()?.name_as_str().unwrap_or_default().to_owned();
                found.push((name, data));
            }
        }
        Self::from_source(
            |name| match found.iter().position(|(found, _)| found == name) {
                Some(index) => Ok(Some(Map::from_map_data(found.swap_remove(index).1)?)),
                None => Ok(None),
            },
        )
    }

    pub fn set_template(&mut self, template: &BenchTemplate) -> Result<()> {
        self.template.set(0, template, 0)?;
        Ok(())
    }

    /// Restarts the flow sequence.
    pub fn reset_seq(&mut self) -> Result<()> {
        self.seq.set(0, 0, 0)?;
        Ok(())
    }

    /// Makes `bench_restore` hand its packets to `program`.
    pub fn set_next(&mut self, program: &ProgramFd) -> Result<()> {
        self.next.set(0, program, 0)?;
        Ok(())
    }

    /// Frames the sink has counted so far, all CPUs.
    pub fn received(&self) -> Result<u64> {
        let rx = self.rx.as_ref().context("this instance has no sink")?;
        Ok(rx.get(&0, 0)?.iter().sum())
    }
}

/// Map sizes for an instance that only runs benchmark programs: the NAT's
/// own tables are created with the object whatever runs, so keep them tiny.
fn small_loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in [
        maps::FORWARDS,
        maps::FORWARD_PORTS,
        maps::BINDINGS,
        maps::SESSIONS,
        maps::FORWARD_SESSIONS,
    ] {
        loader.map_max_entries(name, 1);
    }
    loader
}

/// An instance of the object for a host's generator and sink, or for the
/// plain forwarder or the XDP_PASS programs of a router.
pub struct BenchObject {
    ebpf: Ebpf,
    pub maps: BenchMaps,
}

impl BenchObject {
    pub fn load() -> Result<Self> {
        let mut ebpf = small_loader()
            .load(nat_ctl::datapath::OBJECT)
            .context("loading the datapath object")?;
        let maps = BenchMaps::from_source(|name| Ok(ebpf.take_map(name)))?;
        Ok(Self { ebpf, maps })
    }

    /// The program `name`, loaded into the kernel on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the object"))?
            .try_into()?;
        if program.fd().is_err() {
            nat_ctl::datapath::load_retrying(|| program.load())
                .with_context(|| format!("loading program {name}"))?;
        }
        Ok(program)
    }

    /// Attaches `name` to `ifindex` in native mode (veths support it; the
    /// generic mode would measure something else). Call inside the
    /// interface's namespace.
    pub fn attach(&mut self, name: &str, ifindex: u32) -> Result<()> {
        self.program(name)?
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to ifindex {ifindex}"))?;
        Ok(())
    }

    /// Packets counted under `counter` by this instance's programs (the
    /// plain forwarder counts what it redirects as `forwarded`), all CPUs.
    pub fn counter_packets(&self, counter: nat_common::Counter) -> Result<u64> {
        let counters: PerCpuArray<_, nat_common::CounterValue> = self
            .ebpf
            .map(maps::COUNTERS)
            .context("no COUNTERS map")?
            .try_into()?;
        Ok(counters
            .get(&(counter as u32), 0)?
            .iter()
            .map(|value| value.packets)
            .sum())
    }

    /// Makes `bench_redirect` send what arrives on each pair's first
    /// interface out of its second.
    pub fn cross_egress(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        let mut egress: DevMapHash<_> = self
            .ebpf
            .map_mut(maps::EGRESS)
            .context("no EGRESS map")?
            .try_into()?;
        for &(from, to) in pairs {
            egress.insert(from, to, None, 0)?;
        }
        Ok(())
    }

    /// Lets the plain forwarder redirect to these interfaces.
    pub fn allow_egress(&mut self, ifindexes: &[u32]) -> Result<()> {
        let mut egress: DevMapHash<_> = self
            .ebpf
            .map_mut(maps::EGRESS)
            .context("no EGRESS map")?
            .try_into()?;
        for &ifindex in ifindexes {
            egress.insert(ifindex, ifindex, None, 0)?;
        }
        Ok(())
    }
}

/// The `xdp_md` of a test run: `data_end` is the frame length, and the
/// ingress interface is what the FIB lookup and XDP_TX work from.
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    [0, frame_len as u32, 0, ingress_ifindex, 0, 0]
        .iter()
        .flat_map(|word| word.to_ne_bytes())
        .collect()
}

/// Sends `count` frames from the program (which must restore its template
/// and return XDP_TX) out of `ifindex`, in live-frames mode. Call inside
/// the interface's namespace.
pub fn send_live(program: &Xdp, frame: &[u8], ifindex: u32, count: u32) -> Result<()> {
    let ctx = xdp_md(frame.len(), ifindex);
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN in live-frames mode")?;
    Ok(())
}

/// Runs the program `repeat` times on `frame` arriving on `ifindex`;
/// returns its verdict and the kernel's average time per run.
pub fn time_runs(program: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, f64)> {
    let ctx = xdp_md(frame.len(), ifindex);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    // The kernel reports the mean over the repetitions, in whole ns.
    let ns = result.duration.as_nanos() as f64;
    if result.duration > Duration::from_secs(1) {
        bail!("one run took {ns} ns: something is wrong");
    }
    Ok((result.return_value, ns))
}

/// The `BENCH_NEXT_TC` map of the object instance `restore_tc`
/// (`bench_restore_tc`, loaded) belongs to.
pub fn next_tc_of(restore_tc: &SchedClassifier) -> Result<ProgramArray<MapData>> {
    let ids = restore_tc
        .info()?
        .map_ids()?
        .context("the kernel does not report a program's maps")?;
    for id in ids {
        let data = MapData::from_id(id)?;
        if data.info()?.name_as_str() == Some(bench::NEXT_TC_MAP) {
            return Ok(Map::from_map_data(data)?.try_into()?);
        }
    }
    bail!("bench_restore_tc has no map {}", bench::NEXT_TC_MAP)
}

/// As [`time_runs`], for a TC program on an skb holding `frame`.
pub fn time_runs_tc(
    program: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(u32, f64)> {
    // struct __sk_buff (192 bytes): ingress_ifindex (36), ifindex (40).
    let mut ctx = vec![0u8; 192];
    ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let ns = result.duration.as_nanos() as f64;
    if result.duration > Duration::from_secs(1) {
        bail!("one run took {ns} ns: something is wrong");
    }
    Ok((result.return_value, ns))
}

/// Name of an XDP verdict, for messages.
pub fn verdict_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}
