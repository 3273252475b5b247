//! The pinned datapath's lifecycle, in one place: checking bpffs, picking
//! up a datapath a previous daemon left running (its flows never stop) or
//! loading and attaching a fresh one, and tearing it down.
//!
//! Under the pin directory live every map ([`super::maps::PINNED`]), one
//! link per NIC (XDP: `link_nat_lan`, `link_nat_wan`; TC, TCX links:
//! `link_nat_lan_tc`, `link_nat_wan_tc`; removing a link's last pin
//! detaches its program) and the sweep program. Which link is pinned says
//! which mode a NIC runs in, also to a daemon that picks the datapath up.
use std::path::Path;

use aya::maps::{MapData, RingBuf};
use nat_common::{EndpointKey, NatConfig, programs};

use super::{
    Attach, AttachMode, Datapath, DatapathError, KernelSweep, MapChange, MapParts, MapView,
    MapWriter, Maps, Mode, NicAttach, Result, TableSizes,
};
use crate::rules::RuleSet;

const LINK_LAN: &str = "link_nat_lan";
const LINK_WAN: &str = "link_nat_wan";
const LINK_LAN_TC: &str = "link_nat_lan_tc";
const LINK_WAN_TC: &str = "link_nat_wan_tc";
const LINKS: [&str; 4] = [LINK_LAN, LINK_WAN, LINK_LAN_TC, LINK_WAN_TC];
const PROG_SWEEP: &str = "prog_nat_sweep";
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
        .chain([&PROG_SWEEP])
        .any(|name| dir.join(name).exists());
    Maps::unpin(dir);
    let _ = std::fs::remove_file(dir.join(PROG_SWEEP));
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
    let complete =
        pinned(LINK_LAN, LINK_LAN_TC) && pinned(LINK_WAN, LINK_WAN_TC) && Maps::all_pinned(dir);
    if complete {
        return adopt(dir, nat, wan, lan, rules);
    }
    if teardown(dir)? {
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
    } = Maps::open_pinned(dir).map_err(incompatible)?.into_parts();
    let sweep = KernelSweep::from_pin(&dir.join(PROG_SWEEP), sweep).map_err(incompatible)?;
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
        rules,
        adopted: true,
        lan_attach: pinned_attach(lan, LINK_LAN_TC),
        wan_attach: pinned_attach(wan, LINK_WAN_TC),
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
    datapath.pin_program(programs::SWEEP, &dir.join(PROG_SWEEP))?;
    let MapParts {
        writer,
        view,
        sweep,
        new_connections,
    } = datapath.into_maps().into_parts();
    let sweep = KernelSweep::from_pin(&dir.join(PROG_SWEEP), sweep)?;
    Ok(Running {
        writer,
        view,
        new_connections,
        sweep,
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
