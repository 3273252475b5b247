//! The pinned datapath's lifecycle, in one place: checking bpffs, picking
//! up a datapath a previous daemon left running (its flows never stop) or
//! loading and attaching a fresh one, and tearing it down.
//!
//! Under the pin directory live every map ([`super::maps::PINNED`]), one
//! link per NIC (XDP: `link_nat_lan`, `link_nat_wan`; TC, TCX links:
//! `link_nat_lan_tc`, `link_nat_wan_tc`; removing a link's last pin
//! detaches its program), the link of `nat_relay_lookup` in the router's
//! netns (`link_relay_lookup`), the sweep program, the relay's socket
//! filter (`prog_relay_filter`, attached to each daemon's raw sockets), and the stamp of the
//! build that loaded it ([`Stamp`]). Which link is pinned says which mode
//! a NIC runs in, also to a daemon that picks the datapath up; the stamp
//! says whether that daemon may take it as it is, swap its programs in
//! place (an upgrade on the same map layout) or must replace it.
use std::path::{Path, PathBuf};

use aya::{
    maps::{MapData, RingBuf},
    programs::SocketFilter,
};
use nat_common::{EndpointKey, NatConfig, programs};

use super::{
    Attach, AttachMode, Datapath, DatapathError, KernelSweep, MapChange, MapParts, MapView,
    MapWriter, Maps, Mode, NicAttach, RelayMaps, Result, TableSizes,
};
use crate::rules::RuleSet;

const LINK_LAN: &str = "link_nat_lan";
const LINK_WAN: &str = "link_nat_wan";
const LINK_LAN_TC: &str = "link_nat_lan_tc";
const LINK_WAN_TC: &str = "link_nat_wan_tc";
const LINK_RELAY: &str = "link_relay_lookup";
const LINKS: [&str; 5] = [LINK_LAN, LINK_WAN, LINK_LAN_TC, LINK_WAN_TC, LINK_RELAY];
const PROG_SWEEP: &str = "prog_nat_sweep";
const PROG_RELAY_FILTER: &str = "prog_relay_filter";
/// What the pinned datapath was loaded from ([`Stamp`]): the start of the
/// name of a pin.
const STAMP_PREFIX: &str = "stamp_layout";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A NIC the datapath is attached to.
#[derive(Clone, Copy, Debug)]
pub struct Nic<'a> {
    pub name: &'a str,
    pub ifindex: u32,
}

/// A datapath attached and pinned, its maps holding the configuration and
/// the rules it was started with.
pub struct Running {
    pub writer: MapWriter,
    pub view: MapView,
    pub new_connections: RingBuf<MapData>,
    pub sweep: KernelSweep,
    /// For the relay of datagrams the kernel reassembles.
    pub relay: RelayMaps,
    /// The socket filter of the relay's raw sockets.
    pub relay_filter: SocketFilter,
    /// The rules, with the ids the datapath knows them by.
    pub rules: RuleSet,
    /// Picked up from the pins (flows kept) rather than loaded afresh.
    pub adopted: bool,
    /// How each NIC is attached, and why.
    pub lan_attach: NicAttach,
    pub wan_attach: NicAttach,
}

/// How the daemon asks for the NICs to be attached.
#[derive(Clone, Copy, Debug)]
pub struct AttachRequest {
    pub attach: Attach,
    /// For the NICs that get XDP.
    pub xdp_mode: AttachMode,
}

/// Fails unless `dir` (or, before it exists, its parent) is on bpffs:
/// elsewhere the pins would not keep the datapath alive.
pub fn check_bpffs(dir: &Path) -> Result<()> {
    let probe = if dir.exists() {
        dir
    } else {
        dir.parent().unwrap_or(dir)
    };
    let stat = nix::sys::statfs::statfs(probe).map_err(|errno| DatapathError::Io {
        action: "checking the filesystem of",
        path: probe.to_owned(),
        source: errno.into(),
    })?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NotBpffs {
            dir: dir.to_owned(),
            mount: probe.to_owned(),
        });
    }
    Ok(())
}

/// Detaches the datapath pinned under `dir` and removes its pins. Returns
/// whether anything was there.
pub fn teardown(dir: &Path) -> Result<bool> {
    let mut found = false;
    for link in LINKS {
        let path = dir.join(link);
        found |= unpin_link(&path).map_err(|source| DatapathError::Io {
            action: "detaching",
            path,
            source,
        })?;
    }
    found |= super::maps::PINNED
        .iter()
        .chain([&PROG_SWEEP, &PROG_RELAY_FILTER])
        .any(|name| dir.join(name).exists());
    Maps::unpin(dir);
    let _ = std::fs::remove_file(dir.join(PROG_SWEEP));
    let _ = std::fs::remove_file(dir.join(format!("{PROG_SWEEP}_new")));
    let _ = std::fs::remove_file(dir.join(PROG_RELAY_FILTER));
    let _ = std::fs::remove_file(dir.join(format!("{PROG_RELAY_FILTER}_new")));
    let _ = std::fs::remove_file(dir.join(format!("{LINK_RELAY}_new")));
    Stamp::remove(dir);
    let _ = std::fs::remove_dir(dir);
    Ok(found)
}

/// Removing the last reference to a link detaches its program. Returns
/// whether there was a pin.
fn unpin_link(path: &Path) -> std::io::Result<bool> {
    match aya::programs::links::PinnedLink::from_pin(path) {
        Ok(pinned) => {
            drop(pinned.unpin()?);
            Ok(true)
        }
        Err(_) if !path.exists() => Ok(false),
        Err(error) => Err(std::io::Error::other(error)),
    }
}

/// Picks up the datapath pinned under `dir`, or loads and attaches a fresh
/// one (removing an incomplete one first). Either way its maps end up
/// holding `nat` and `rules`.
pub fn adopt_or_load(
    dir: &Path,
    nat: &NatConfig,
    wan: Nic<'_>,
    lan: Nic<'_>,
    request: AttachRequest,
    rules: &RuleSet,
) -> Result<Running> {
    let pinned = |xdp: &str, tc: &str| dir.join(xdp).exists() || dir.join(tc).exists();
    let complete = pinned(LINK_LAN, LINK_LAN_TC)
        && pinned(LINK_WAN, LINK_WAN_TC)
        && dir.join(LINK_RELAY).exists()
        && dir.join(PROG_RELAY_FILTER).exists()
        && Maps::all_pinned(dir);
    if complete {
        let this = Stamp::of_this_build();
        match Stamp::read(dir) {
            Some(pinned) if pinned == this => return adopt(dir, nat, wan, lan, rules),
            Some(pinned) if pinned.layout == this.layout => match replace_programs(dir) {
                Ok(()) => {
                    tracing::info!(
                        "the datapath pinned in {} was loaded by another build of natctl: its \
                         programs are replaced by this build's in place, its maps and flows \
                         kept",
                        dir.display()
                    );
                    return adopt(dir, nat, wan, lan, rules);
                }
                Err(error) => tracing::warn!(
                    "the datapath pinned in {} was loaded by another build of natctl, and its \
                     programs could not be replaced in place ({error}): starting afresh; the \
                     dynamic mappings and sessions it held are dropped",
                    dir.display()
                ),
            },
            pinned => tracing::warn!(
                "the datapath pinned in {} has another map layout ({}, this natctl's is {}): \
                 an older or newer natctl's. Replacing it: the dynamic mappings and sessions it \
                 held are dropped (connections through the NAT start over); the rules come \
                 back from the store",
                dir.display(),
                pinned.map_or("none recorded".to_owned(), |pinned| pinned
                    .layout
                    .to_string()),
                this.layout
            ),
        }
        teardown(dir)?;
    } else if teardown(dir)? {
        tracing::warn!(
            "found an incomplete datapath in {}; removed it and starting afresh",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).map_err(|source| DatapathError::Io {
        action: "creating",
        path: dir.to_owned(),
        source,
    })?;
    load(dir, nat, wan, lan, request, rules).inspect_err(|_| {
        // Leave nothing half attached behind.
        let _ = teardown(dir);
    })
}

/// What a pinned datapath was loaded from: the layout of its maps
/// ([`nat_common::DATAPATH_LAYOUT`]) and the digest of the eBPF object.
/// bpffs holds BPF objects only, so the stamp is a name: one more pin of
/// the sweep program, `stamp_layout<N>_<digest>`, made when the datapath
/// is loaded. A daemon adopts as it is only a datapath of its own build,
/// and replaces the programs of one with its layout in place.
#[derive(Debug, PartialEq)]
struct Stamp {
    layout: u32,
    object: String,
}

impl Stamp {
    fn of_this_build() -> Self {
        use blake2::{Blake2s256, Digest};
        let digest = Blake2s256::digest(super::OBJECT);
        Self {
            layout: nat_common::DATAPATH_LAYOUT,
            object: digest.iter().map(|byte| format!("{byte:02x}")).collect(),
        }
    }

    fn file_name(&self) -> String {
        format!("{STAMP_PREFIX}{}_{}", self.layout, self.object)
    }

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with(STAMP_PREFIX))
            .collect()
    }

    /// `None` when there is none (a datapath of a natctl from before
    /// stamps) or it cannot be read.
    fn read(dir: &Path) -> Option<Self> {
        let names = Self::names(dir);
        let [name] = names.as_slice() else {
            return None;
        };
        let (layout, object) = name.strip_prefix(STAMP_PREFIX)?.split_once('_')?;
        Some(Self {
            layout: layout.parse().ok()?,
            object: object.to_owned(),
        })
    }

    fn remove(dir: &Path) {
        for name in Self::names(dir) {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}

/// Replaces the programs of the datapath pinned under `dir` by this
/// build's, on the same maps and links: each link is switched to the new
/// program atomically (`bpf_link_update`), so no packet goes untranslated
/// and every flow keeps its mapping. Refused, with nothing changed, when a
/// pinned map's key or value size is not what this build's programs use.
fn replace_programs(dir: &Path) -> Result<()> {
    use aya::programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    };

    let object = aya_obj::Object::parse(super::OBJECT)
        .map_err(|error| DatapathError::Load(aya::EbpfError::ParseError(error)))?;
    let mut loader = aya::EbpfLoader::new();
    for name in super::maps::PINNED {
        let path = dir.join(name);
        let pinned = aya::maps::MapInfo::from_pin(&path)
            .map_err(|source| DatapathError::Map { name, source })?;
        let ours = object
            .maps
            .get(name)
            .ok_or_else(|| DatapathError::Incompatible {
                dir: dir.to_owned(),
                reason: format!("this build has no map {name}"),
            })?;
        let (held, wanted) = (
            (pinned.key_size(), pinned.value_size()),
            (ours.key_size(), ours.value_size()),
        );
        if held != wanted {
            return Err(DatapathError::Incompatible {
                dir: dir.to_owned(),
                reason: format!(
                    "map {name} has keys of {} and values of {} bytes, this build's {} and {}",
                    held.0, held.1, wanted.0, wanted.1
                ),
            });
        }
        // The new programs use the pinned map itself, at its size.
        loader.map_pin_path(name, path);
        loader.map_max_entries(name, pinned.max_entries());
    }
    let mut ebpf = loader.load(super::OBJECT)?;
    // Every program verified and loaded before the first link moves: a
    // program this kernel refuses leaves the running datapath untouched.
    super::load_programs(&mut ebpf)?;
    let program_error = |name: &'static str| move |source| DatapathError::Program { name, source };
    let link_error = |name: &'static str| {
        move |error: aya::programs::links::LinkError| DatapathError::PinLink {
            program: name,
            reason: error.to_string(),
        }
    };
    for (xdp_pin, xdp_name, tc_pin, tc_name) in [
        (LINK_LAN, programs::LAN, LINK_LAN_TC, programs::LAN_TC),
        (LINK_WAN, programs::WAN, LINK_WAN_TC, programs::WAN_TC),
    ] {
        if dir.join(xdp_pin).exists() {
            let pinned = PinnedLink::from_pin(dir.join(xdp_pin)).map_err(link_error(xdp_name))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_error(xdp_name))?;
            super::program(&mut ebpf, xdp_name)?
                .attach_to_link(link)
                .map_err(program_error(xdp_name))?;
        } else {
            let pinned = PinnedLink::from_pin(dir.join(tc_pin)).map_err(link_error(tc_name))?;
            let link =
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_error(tc_name))?;
            super::classifier(&mut ebpf, tc_name)?
                .attach_to_link(link)
                .map_err(program_error(tc_name))?;
        }
    }
    // sk_lookup links cannot be updated in place: the new program is
    // attached beside the old one (both steer to the one pinned socket
    // slot), and its pin replaces the old one's, which detaches it.
    let (path, fresh) = (dir.join(LINK_RELAY), dir.join(format!("{LINK_RELAY}_new")));
    let _ = std::fs::remove_file(&fresh);
    super::attach_relay_lookup(&mut ebpf, &fresh)?;
    std::fs::rename(&fresh, &path).map_err(|source| DatapathError::Io {
        action: "replacing",
        path,
        source,
    })?;
    // The sweep's new pin goes over the old one in one rename (bpffs
    // refuses names with a dot), and so does the relay filter's (the
    // running daemon's sockets keep the old one until it restarts).
    let sweep = super::program(&mut ebpf, programs::SWEEP)?;
    pin_over(dir.join(PROG_SWEEP), |path| sweep.pin(path))?;
    let filter = super::relay_filter(&mut ebpf)?;
    pin_over(dir.join(PROG_RELAY_FILTER), |path| filter.pin(path))?;
    Stamp::remove(dir);
    let stamp = dir.join(Stamp::of_this_build().file_name());
    super::program(&mut ebpf, programs::SWEEP)?
        .pin(&stamp)
        .map_err(|source| DatapathError::Pin {
            path: stamp,
            source,
        })?;
    // The links' pins hold the new programs now, the sweep's its own; this
    // object's handles may go.
    Ok(())
}

fn adopt(
    dir: &Path,
    nat: &NatConfig,
    wan: Nic<'_>,
    lan: Nic<'_>,
    rules: &RuleSet,
) -> Result<Running> {
    let incompatible = |error: DatapathError| DatapathError::Incompatible {
        dir: dir.to_owned(),
        reason: error.to_string(),
    };
    let MapParts {
        mut writer,
        view,
        sweep,
        new_connections,
        relay,
    } = Maps::open_pinned(dir).map_err(incompatible)?.into_parts();
    let sweep = KernelSweep::from_pin(&dir.join(PROG_SWEEP), sweep).map_err(incompatible)?;
    let relay_filter = relay_filter_from_pin(dir).map_err(incompatible)?;
    let running = writer.config()?;
    if (running.wan_ifindex, running.lan_ifindex) != (wan.ifindex, lan.ifindex) {
        return Err(DatapathError::OtherNics {
            dir: dir.to_owned(),
            pinned_wan: running.wan_ifindex,
            pinned_lan: running.lan_ifindex,
            wan: wan.ifindex,
            lan: lan.ifindex,
        });
    }
    writer.set_config(nat)?;
    let (rules, fresh) = recover_ids(&writer, rules)?;
    let held = writer.entries()?;
    writer.apply(&MapChange::between(&held, &rules.entries()).with_fresh_rule_ids(fresh))?;
    let pinned_attach = |nic: Nic<'_>, tc_pin: &str| NicAttach {
        interface: nic.name.to_owned(),
        mode: if dir.join(tc_pin).exists() {
            Mode::Tc
        } else {
            Mode::Xdp
        },
        xdp_mode: String::new(),
        reason: "picked up from the pinned datapath, as an earlier daemon attached it \
                 (`natctl down` and a new start choose again)"
            .to_owned(),
    };
    Ok(Running {
        writer,
        view,
        new_connections,
        sweep,
        relay,
        relay_filter,
        rules,
        adopted: true,
        lan_attach: pinned_attach(lan, LINK_LAN_TC),
        wan_attach: pinned_attach(wan, LINK_WAN_TC),
    })
}

/// The relay's socket filter pinned under `dir`.
fn relay_filter_from_pin(dir: &Path) -> Result<SocketFilter> {
    SocketFilter::from_pin(dir.join(PROG_RELAY_FILTER)).map_err(|source| DatapathError::Program {
        name: programs::RELAY_FILTER,
        source,
    })
}

/// Attaches `program` (XDP) or `tc_program` to `nic` as `request` says and
/// pins the link; falls back to TC under `--attach auto` when XDP cannot
/// be attached at all.
fn attach_nic(
    datapath: &mut Datapath,
    dir: &Path,
    nic: Nic<'_>,
    (program, pin): (&'static str, &str),
    (tc_program, tc_pin): (&'static str, &str),
    request: AttachRequest,
) -> Result<NicAttach> {
    let (mut mode, mut reason) = super::attach::choose(request.attach, nic.name);
    if mode == Mode::Xdp {
        match datapath.attach(program, nic.name, nic.ifindex, request.xdp_mode) {
            Ok((link, used)) => {
                datapath.pin_link(program, link, &dir.join(pin))?;
                let xdp_mode = match used {
                    aya::programs::XdpMode::Skb => "generic",
                    _ => "native",
                };
                return Ok(NicAttach {
                    interface: nic.name.to_owned(),
                    mode,
                    xdp_mode: xdp_mode.to_owned(),
                    reason,
                });
            }
            Err(error) if request.attach == Attach::Auto => {
                mode = Mode::Tc;
                reason = format!("auto: XDP could not be attached ({error})");
            }
            Err(error) => return Err(error),
        }
    }
    let link = datapath.attach_tc(tc_program, nic.name)?;
    datapath.pin_tc_link(tc_program, link, &dir.join(tc_pin))?;
    Ok(NicAttach {
        interface: nic.name.to_owned(),
        mode,
        xdp_mode: String::new(),
        reason,
    })
}

fn load(
    dir: &Path,
    nat: &NatConfig,
    wan: Nic<'_>,
    lan: Nic<'_>,
    request: AttachRequest,
    rules: &RuleSet,
) -> Result<Running> {
    let mut datapath = Datapath::load(TableSizes::default(), Some(dir))?;
    let writer = datapath.maps_mut().writer();
    writer.set_config(nat)?;
    writer.allow_egress(wan.ifindex)?;
    writer.allow_egress(lan.ifindex)?;
    writer.apply(&MapChange::for_rules(&RuleSet::default(), rules))?;
    // Rules and configuration are in place before the first packet.
    let lan_attach = attach_nic(
        &mut datapath,
        dir,
        lan,
        (programs::LAN, LINK_LAN),
        (programs::LAN_TC, LINK_LAN_TC),
        request,
    )?;
    let wan_attach = attach_nic(
        &mut datapath,
        dir,
        wan,
        (programs::WAN, LINK_WAN),
        (programs::WAN_TC, LINK_WAN_TC),
        request,
    )?;
    datapath.attach_relay_lookup(&dir.join(LINK_RELAY))?;
    datapath.pin_relay_filter(&dir.join(PROG_RELAY_FILTER))?;
    datapath.pin_program(programs::SWEEP, &dir.join(PROG_SWEEP))?;
    datapath.pin_program(
        programs::SWEEP,
        &dir.join(Stamp::of_this_build().file_name()),
    )?;
    let MapParts {
        writer,
        view,
        sweep,
        new_connections,
        relay,
    } = datapath.into_maps().into_parts();
    let sweep = KernelSweep::from_pin(&dir.join(PROG_SWEEP), sweep)?;
    let relay_filter = relay_filter_from_pin(dir)?;
    Ok(Running {
        writer,
        view,
        new_connections,
        sweep,
        relay,
        relay_filter,
        rules: rules.clone(),
        adopted: false,
        lan_attach,
        wan_attach,
    })
}

/// The ids the pinned datapath knows the rules by, so that a restarted
/// daemon keeps each rule's counters: an enabled rule's first inbound entry
/// carries its id. Rules found there keep it; the others get free ids
/// (returned, for their counters to be zeroed: the slot may hold a removed
/// rule's counts). The store's order is kept (GetGenericPortMappingEntry
/// indexes by it).
fn recover_ids(writer: &MapWriter, rules: &RuleSet) -> Result<(RuleSet, Vec<u32>)> {
    let mut found = Vec::new();
    for (_, rule) in rules.iter() {
        let key = EndpointKey::inbound(rule.protocol.numbers()[0], rule.external.first);
        let pinned = if rule.enabled {
            writer.forward(&key)?
        } else {
            None
        };
        let id = pinned.filter(|forward| {
            forward.addr == rule.internal_addr.octets() && forward.port == rule.internal.first
        });
        found.push((rule.clone(), id.map(|forward| forward.rule_id)));
    }
    let mut recovered = RuleSet::default();
    // Known ids first, so that no fresh id takes one of them.
    for (rule, id) in found.iter().filter(|(_, id)| id.is_some()) {
        recovered.add(rule.clone(), *id)?;
    }
    let mut fresh = Vec::new();
    for (rule, id) in &found {
        if id.is_none() {
            fresh.push(recovered.add(rule.clone(), None)?);
        }
    }
    let mut ordered = RuleSet::default();
    for (rule, _) in &found {
        let (id, rule) = recovered.get(&rule.name).expect("added above");
        ordered.add(rule.clone(), Some(id))?;
    }
    Ok((ordered, fresh))
}

/// Pins a program at `path` over the one pinned there, through a fresh
/// name and a rename, so that `path` always holds one or the other.
fn pin_over(
    path: PathBuf,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    let fresh = path.with_file_name(format!("{}_new", file_name.unwrap_or_default()));
    let _ = std::fs::remove_file(&fresh);
    pin(&fresh).map_err(|source| DatapathError::Pin {
        path: fresh.clone(),
        source,
    })?;
    std::fs::rename(&fresh, &path).map_err(|source| DatapathError::Io {
        action: "replacing",
        path,
        source,
    })
}
