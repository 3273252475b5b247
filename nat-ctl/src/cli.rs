//! Command-line interface.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use nat_common::{
    FILTER_ADDRESS_AND_PORT_DEPENDENT, FILTER_ADDRESS_DEPENDENT, FILTER_ENDPOINT_INDEPENDENT,
    NatConfig, UNSOLICITED_DROP, UNSOLICITED_PASS, programs,
};
use nat_ctl::{
    datapath::{AttachMode, Datapath, Maps, TableSizes},
    interfaces,
    rules::{ForwardRule, PortRange, check_conflicts},
    table,
};

#[derive(Parser)]
#[command(name = "natctl", version, about = "XDP NAT router control")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// RFC 4787 filtering of inbound packets on dynamic mappings.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Filtering {
    /// Anyone may reach a mapping once it exists (full cone).
    EndpointIndependent,
    /// Only addresses the LAN host has sent to (restricted cone).
    AddressDependent,
    /// Only address:port pairs the LAN host has sent to (port-restricted).
    AddressAndPortDependent,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Unsolicited {
    /// Hand to the router's own stack (its services, ICMP, RST).
    Pass,
    /// Drop silently (stealth).
    Drop,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath, run until SIGINT/SIGTERM, then detach.
    Run {
        /// The WAN NIC; its first IPv4 address is the public address.
        #[arg(long)]
        wan: String,
        /// The LAN NIC; its IPv4 prefix is the LAN.
        #[arg(long)]
        lan: String,
        /// A forwarding entry: PROTO/EXTERNAL=IP[:INTERNAL][,allow=CIDR][,name=NAME],
        /// e.g. tcp/2222=192.168.0.12:22,allow=198.51.100.0/24 (repeatable).
        #[arg(long = "forward", value_name = "SPEC")]
        forwards: Vec<ForwardRule>,
        #[arg(long, value_enum, default_value_t = Filtering::AddressAndPortDependent)]
        filtering: Filtering,
        #[arg(long, value_enum, default_value_t = Unsolicited::Pass)]
        unsolicited: Unsolicited,
        /// Do not let LAN hosts reach forwarded ports through the WAN address.
        #[arg(long)]
        no_hairpin: bool,
        /// External ports (and ICMP ids) for dynamic mappings.
        #[arg(long, default_value = "1024-65535")]
        ports: PortRange,
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// Pin the maps in this bpffs directory so that `table` and `stats`
        /// can read them.
        #[arg(long, default_value = "/sys/fs/bpf/natctl")]
        pin_dir: PathBuf,
    },
    /// Show the NAT table: static forwards and live dynamic entries.
    Table {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "/sys/fs/bpf/natctl")]
        pin_dir: PathBuf,
    },
    /// Show the datapath's counters.
    Stats {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "/sys/fs/bpf/natctl")]
        pin_dir: PathBuf,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            wan,
            lan,
            forwards,
            filtering,
            unsolicited,
            no_hairpin,
            ports,
            xdp_mode,
            pin_dir,
        } => {
            let config = RunConfig {
                wan,
                lan,
                forwards,
                filtering,
                unsolicited,
                hairpin: !no_hairpin,
                ports,
                xdp_mode,
                pin_dir,
            };
            run_datapath(config)
        }
        Command::Table { json, pin_dir } => {
            let maps = open_pins(&pin_dir)?;
            let entries = table::read_table(&maps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", table::format_table(&entries));
            }
            Ok(())
        }
        Command::Stats { json, pin_dir } => {
            let maps = open_pins(&pin_dir)?;
            let counters = maps.counters()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&table::counters_json(&counters))?
                );
            } else {
                print!("{}", table::format_counters(&counters));
            }
            Ok(())
        }
    }
}

fn open_pins(pin_dir: &Path) -> Result<Maps> {
    Maps::open_pinned(pin_dir).with_context(|| {
        format!(
            "no running datapath pinned at {}: start one with `natctl run --wan IF --lan IF`",
            pin_dir.display()
        )
    })
}

struct RunConfig {
    wan: String,
    lan: String,
    forwards: Vec<ForwardRule>,
    filtering: Filtering,
    unsolicited: Unsolicited,
    hairpin: bool,
    ports: PortRange,
    xdp_mode: AttachMode,
    pin_dir: PathBuf,
}

fn run_datapath(run: RunConfig) -> Result<()> {
    if run.wan == run.lan {
        bail!(
            "--wan and --lan are both {:?}: the router needs two different NICs",
            run.wan
        );
    }
    let wan_ifindex = interfaces::ifindex(&run.wan)?;
    let lan_ifindex = interfaces::ifindex(&run.lan)?;
    let wan_net = interfaces::ipv4_network(&run.wan)?;
    let lan_net = interfaces::ipv4_network(&run.lan)?.trunc();
    for rule in &run.forwards {
        rule.validate(lan_net)?;
    }
    check_conflicts(&run.forwards)?;

    interfaces::prepare_router(&run.lan, &run.wan)?;
    std::fs::create_dir_all(&run.pin_dir)
        .with_context(|| format!("creating pin directory {}", run.pin_dir.display()))?;
    // A previous run killed before it could clean up leaves stale pins.
    Maps::unpin(&run.pin_dir);
    let mut datapath =
        Datapath::load(TableSizes::default(), Some(&run.pin_dir)).with_context(|| {
            format!(
                "loading the datapath (is {} on a bpffs? `mount -t bpf bpf DIR`)",
                run.pin_dir.display()
            )
        })?;
    let config = NatConfig {
        wan_addr: wan_net.addr().octets(),
        lan_net: lan_net.network().octets(),
        lan_prefix_len: lan_net.prefix_len(),
        filtering: match run.filtering {
            Filtering::EndpointIndependent => FILTER_ENDPOINT_INDEPENDENT,
            Filtering::AddressDependent => FILTER_ADDRESS_DEPENDENT,
            Filtering::AddressAndPortDependent => FILTER_ADDRESS_AND_PORT_DEPENDENT,
        },
        unsolicited: match run.unsolicited {
            Unsolicited::Pass => UNSOLICITED_PASS,
            Unsolicited::Drop => UNSOLICITED_DROP,
        },
        hairpin: u8::from(run.hairpin),
        wan_ifindex,
        lan_ifindex,
        port_min: run.ports.first,
        port_max: run.ports.last,
    };
    datapath.maps.set_config(&config)?;
    datapath.maps.allow_egress(wan_ifindex)?;
    datapath.maps.allow_egress(lan_ifindex)?;
    for (rule_id, rule) in run.forwards.iter().enumerate() {
        datapath
            .maps
            .insert_rule(&rule.entries(rule_id as u32 + 1))?;
    }
    let (_, lan_mode) = datapath.attach(programs::LAN, &run.lan, lan_ifindex, run.xdp_mode)?;
    let (_, wan_mode) = datapath.attach(programs::WAN, &run.wan, wan_ifindex, run.xdp_mode)?;
    println!(
        "natctl: NAT running: WAN {} ({wan_net}, {wan_mode:?}), LAN {} ({lan_net}, {lan_mode:?}), {} forward(s); maps pinned in {}",
        run.wan,
        run.lan,
        run.forwards.len(),
        run.pin_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    })?;

    Maps::unpin(&run.pin_dir);
    // Dropping the datapath detaches both programs.
    drop(datapath);
    println!("natctl: stopped, datapath detached");
    Ok(())
}
