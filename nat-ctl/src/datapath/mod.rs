//! The datapath seen from user space: loading and attaching it
//! ([`Datapath`]; XDP or TC per NIC, [`attach`]), its pinned lifecycle
//! ([`pins`]), and its maps, handed out
//! as one handle per owner so that each map has exactly the writer the
//! architecture says:
//!
//! - [`MapWriter`]: configuration and the rule maps; the daemon's rule
//!   transaction holds the only one, and changes rules only through
//!   [`MapWriter::apply`] with a [`MapChange`];
//! - [`MapView`]: read-only handles on what the datapath writes (mappings,
//!   sessions, counters), for the NAT table and the statistics;
//! - [`KernelSweep`]: the aging sweep program and its parameter maps;
//! - the new-connection ring buffer, for the connection log.
pub mod attach;
mod batch;
mod change;
mod forward_ports;
mod maps;
pub mod pins;
mod sessions;
mod sweep;
mod view;
mod writer;

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, SkLookup, SocketFilter, TcAttachType, Xdp, XdpMode,
        links::FdLink,
        tc::{SchedClassifierLinkId, TcAttachOptions},
        xdp::XdpLinkId,
    },
};
use nat_common::{maps as names, programs};

pub use attach::{Attach, Mode, NicAttach};
pub use batch::{DEFAULT_CHUNK, for_each_entry, for_each_in};
pub use change::{MapChange, Step};
pub use maps::{MapParts, Maps, RelayMaps};
pub use sessions::SessionTable;
pub use sweep::{KernelSweep, SweepMaps, SweepReport};
pub use view::MapView;
pub use writer::MapWriter;

/// The eBPF object, built by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("NAT_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map EGRESS: {0}")]
    Egress(#[source] aya::maps::xdp::XdpMapError),
    #[error("reading map {name}: {source}")]
    Walk {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the object has no map named {0}")]
    MissingMap(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinning the link of {program}: {reason}")]
    PinLink {
        program: &'static str,
        reason: String,
    },
    #[error("attaching {program} to {interface} failed in native and generic mode: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to the TC ingress of {interface} (TCX link) failed: {source}")]
    AttachTc {
        program: &'static str,
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "{dir} is not on a BPF filesystem, so the datapath could not outlive the daemon: \
         mount one with `mount -t bpf bpf {mount}`"
    )]
    NotBpffs { dir: PathBuf, mount: PathBuf },
    #[error(
        "the datapath pinned in {dir} cannot be used by this natctl (an older version?): \
         {reason}; `natctl down --pin-dir {dir}` detaches it"
    )]
    Incompatible { dir: PathBuf, reason: String },
    #[error(
        "the datapath pinned in {dir} runs on other NICs (WAN ifindex {pinned_wan}, LAN ifindex \
         {pinned_lan}, not {wan} and {lan}): `natctl down` detaches it first"
    )]
    OtherNics {
        dir: PathBuf,
        pinned_wan: u32,
        pinned_lan: u32,
        wan: u32,
        lan: u32,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pinned rules do not fit this natctl's rule model: {0}")]
    Rules(#[from] crate::rules::RuleError),
    #[error("map {name} is not as this natctl builds it: {reason}")]
    MapShape { name: &'static str, reason: String },
    #[error("mapping map {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no inbound rule can be on {}/{} (only TCP and UDP ports are forwarded)",
        .0.proto, .0.port
    )]
    UnforwardableKey(nat_common::EndpointKey),
    #[error(
        "rule {} (flags {:#x}) does not fit FORWARD_PORTS: rule ids run from 1 to {}, and \
         FORWARD_RESTRICTED is the only flag",
        .0.rule_id, .0.flags, nat_common::MAX_RULES - 1
    )]
    UnpackableForward(nat_common::Forward),
    #[error(
        "no free slot for session {key:?} among the {probes} its hash allows in {table}'s \
         {slots}: the table is too full there",
        probes = nat_common::SESSION_PROBES
    )]
    SessionWindowFull {
        table: &'static str,
        key: nat_common::SessionKey,
        slots: u32,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// How to attach: native (driver) XDP falls back to generic with a warning
/// under `Auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// Sizes of the tables, fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct TableSizes {
    pub forwards: u32,
    pub bindings: u32,
    /// The sessions `SESSIONS` is to hold: it gets twice as many slots
    /// (`nat_common::session_slots`).
    pub sessions: u32,
    /// The same for `FORWARD_SESSIONS`.
    pub forward_sessions: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            forwards: nat_common::DEFAULT_FORWARDS_MAX,
            bindings: nat_common::DEFAULT_BINDINGS_MAX,
            sessions: nat_common::DEFAULT_SESSIONS_MAX,
            forward_sessions: nat_common::DEFAULT_FORWARD_SESSIONS_MAX,
        }
    }
}

/// A loaded (not yet attached) datapath: its programs, and its maps taken
/// out as typed handles.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
}

impl Datapath {
    /// Loads the object; with `pin_dir`, every map is pinned there as it is
    /// taken out (so that a restarted daemon and `natctl down` find them).
    pub fn load(sizes: TableSizes, pin_dir: Option<&Path>) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::FORWARDS, sizes.forwards)
            .map_max_entries(names::BINDINGS, sizes.bindings)
            .map_max_entries(names::SESSIONS, nat_common::session_slots(sizes.sessions))
            .map_max_entries(
                names::FORWARD_SESSIONS,
                nat_common::session_slots(sizes.forward_sessions),
            )
            .load(OBJECT)?;
        load_programs(&mut ebpf)?;
        let maps = Maps::take(&mut ebpf, pin_dir)?;
        Ok(Self { ebpf, maps })
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The maps, once the programs are attached and their links pinned:
    /// the programs then live on in the kernel without this object.
    pub fn into_maps(self) -> Maps {
        self.maps
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp> {
        program(&mut self.ebpf, name)
    }

    /// Attaches `name` to `ifindex`; returns the mode that worked.
    pub fn attach(
        &mut self,
        name: &'static str,
        interface: &str,
        ifindex: u32,
        mode: AttachMode,
    ) -> Result<(XdpLinkId, XdpMode)> {
        let program = self.program(name)?;
        let first = match mode {
            AttachMode::Generic => XdpMode::Skb,
            AttachMode::Auto | AttachMode::Native => XdpMode::Driver,
        };
        match program.attach_to_if_index(ifindex, first) {
            Ok(link) => Ok((link, first)),
            Err(native_error) if mode == AttachMode::Auto => {
                tracing::warn!(
                    "native XDP on {interface} failed ({native_error}); using generic XDP, which is much slower"
                );
                program
                    .attach_to_if_index(ifindex, XdpMode::Skb)
                    .map(|link| (link, XdpMode::Skb))
                    .map_err(|source| DatapathError::Attach {
                        program: name,
                        interface: interface.to_owned(),
                        source,
                    })
            }
            Err(source) => Err(DatapathError::Attach {
                program: name,
                interface: interface.to_owned(),
                source,
            }),
        }
    }

    /// A TC program (`nat_lan_tc`, `nat_wan_tc`).
    pub fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, name)
    }

    /// Attaches the TC program `name` to the ingress of `interface` as a
    /// TCX link (kernel >= 6.6: a bpf_link, pinnable like the XDP ones, and
    /// no clsact qdisc to manage).
    pub fn attach_tc(
        &mut self,
        name: &'static str,
        interface: &str,
    ) -> Result<SchedClassifierLinkId> {
        self.classifier(name)?
            .attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| DatapathError::AttachTc {
                program: name,
                interface: interface.to_owned(),
                source,
            })
    }

    /// As [`Datapath::pin_link`], for a TC program's TCX link.
    pub fn pin_tc_link(
        &mut self,
        name: &'static str,
        link_id: SchedClassifierLinkId,
        path: &Path,
    ) -> Result<()> {
        let link = self
            .classifier(name)?
            .take_link(link_id)
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd_link = FdLink::try_from(link).map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!("{error} (a netlink TC attachment has no bpf_link to pin)"),
        })?;
        fd_link.pin(path).map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!("{}: {error}", path.display()),
        })?;
        Ok(())
    }

    /// Pins the link of an attached program at `path`, so that the program
    /// stays attached after this process exits (or is killed) until the
    /// pin is removed: a restarted daemon then finds the datapath running.
    pub fn pin_link(&mut self, name: &'static str, link_id: XdpLinkId, path: &Path) -> Result<()> {
        let link = self
            .program(name)?
            .take_link(link_id)
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd_link = FdLink::try_from(link).map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!(
                "{error} (this kernel attached XDP without a bpf_link, which cannot be pinned)"
            ),
        })?;
        fd_link.pin(path).map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!("{}: {error}", path.display()),
        })?;
        Ok(())
    }

    /// Attaches `nat_relay_lookup` to this process's network namespace (the
    /// router's) and pins its link at `path`: reassembled datagrams for a
    /// recorded target go to the relay socket, or nowhere while no daemon
    /// holds one, also between two daemons.
    pub fn attach_relay_lookup(&mut self, path: &Path) -> Result<()> {
        attach_relay_lookup(&mut self.ebpf, path)
    }

    /// The relay's socket filter (`nat_relay_filter`), loaded: tests attach
    /// it to the relay they drive over this datapath.
    pub fn relay_filter(&mut self) -> Result<&mut SocketFilter> {
        relay_filter(&mut self.ebpf)
    }

    /// Pins the relay's socket filter, so that a restarted daemon attaches
    /// it to its raw sockets without loading the object again.
    pub fn pin_relay_filter(&mut self, path: &Path) -> Result<()> {
        relay_filter(&mut self.ebpf)?
            .pin(path)
            .map_err(|source| DatapathError::Pin {
                path: path.to_owned(),
                source,
            })
    }

    /// Pins a loaded program (the sweep) so that a restarted daemon can run
    /// it without loading the object again.
    pub fn pin_program(&mut self, name: &'static str, path: &Path) -> Result<()> {
        self.program(name)?
            .pin(path)
            .map_err(|source| DatapathError::Pin {
                path: path.to_owned(),
                source,
            })
    }

    /// Runs the loaded sweep program once (tests and benchmarks; the daemon
    /// runs a pinned one through [`KernelSweep`]).
    pub fn run_sweep(&mut self, params: nat_common::SweepParams) -> Result<SweepReport> {
        let program = program(&mut self.ebpf, programs::SWEEP)?;
        sweep::run(program, self.maps.sweep_maps_mut(), params)
    }
}

/// The program `name` of `ebpf`, as the kind `P` it must be.
fn typed_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// How many times a program's load is tried while the verifier gives up
/// with EAGAIN, as libbpf does.
const VERIFY_ATTEMPTS: u32 = 5;

/// Runs `load` (a program's `load()`) again while it fails with EAGAIN: the
/// verifier abandons a long verification when a signal is pending for the
/// loading thread (a SIGCHLD the daemon's runtime handles, a terminal's
/// SIGWINCH), which says nothing about the program.
pub fn load_retrying(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < VERIFY_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Verifies and loads every program `natctl` runs (and `xdp_pass`, which
/// the labs attach to veth peers): for a fresh datapath, and for an upgrade
/// in place, which loads all of them before it moves the first link.
fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    for name in [
        programs::LAN,
        programs::WAN,
        programs::PASS,
        programs::SWEEP,
    ] {
        let program = program(ebpf, name)?;
        verify(name, || program.load())?;
    }
    for name in [programs::LAN_TC, programs::WAN_TC] {
        let program = classifier(ebpf, name)?;
        verify(name, || program.load())?;
    }
    let program = relay_lookup(ebpf)?;
    verify(programs::RELAY_LOOKUP, || program.load())?;
    let program = relay_filter(ebpf)?;
    verify(programs::RELAY_FILTER, || program.load())
}

/// [`load_retrying`], its error naming the program.
fn verify(
    name: &'static str,
    load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<()> {
    load_retrying(load).map_err(|source| DatapathError::Program { name, source })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    typed_program(ebpf, name)
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    typed_program(ebpf, name)
}

/// As [`Datapath::attach_relay_lookup`], for any loaded object (an upgrade
/// in place loads one of its own).
fn attach_relay_lookup(ebpf: &mut Ebpf, path: &Path) -> Result<()> {
    let name = programs::RELAY_LOOKUP;
    let netns_path = Path::new("/proc/self/ns/net");
    let netns = std::fs::File::open(netns_path).map_err(|source| DatapathError::Io {
        action: "opening",
        path: netns_path.to_owned(),
        source,
    })?;
    let program = relay_lookup(ebpf)?;
    let link_id = program
        .attach(&netns)
        .map_err(|source| DatapathError::Program { name, source })?;
    let link = program
        .take_link(link_id)
        .map_err(|source| DatapathError::Program { name, source })?;
    FdLink::from(link)
        .pin(path)
        .map_err(|error| DatapathError::PinLink {
            program: name,
            reason: format!("{}: {error}", path.display()),
        })?;
    Ok(())
}

fn relay_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup> {
    typed_program(ebpf, programs::RELAY_LOOKUP)
}

fn relay_filter(ebpf: &mut Ebpf) -> Result<&mut SocketFilter> {
    typed_program(ebpf, programs::RELAY_FILTER)
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Whether a map operation failed only because the key was not there.
fn is_not_found(error: &aya::maps::MapError) -> bool {
    match error {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::ENOENT)
        }
        _ => false,
    }
}
