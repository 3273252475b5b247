//! Command-line interface: `natctl daemon`, and the thin clients of its API.
use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, str::FromStr};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use ipnet::Ipv4Net;
use nat_ctl::{
    api::{Client, ClientError, RuleChange, TableFilter},
    config::{DEFAULT_PIN_DIR, DEFAULT_SOCKET_PATH},
    daemon::{self, DaemonOptions},
    datapath::{AttachMode, pins},
    rules::{ForwardRule, PortRange, Protocol, RuleError, parse_allow},
    table::{self, Stats, TableRow},
};
use serde::Deserialize;

#[derive(Parser)]
#[command(name = "natctl", version, about = "XDP NAT router control")]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "NATCTL_SOCKET", default_value = DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load (or pick up) the datapath and serve the API until SIGTERM; the
    /// datapath keeps forwarding after the daemon stops.
    Daemon {
        /// The WAN NIC; its IPv4 address is the public address.
        #[arg(long)]
        wan: String,
        /// The LAN NIC; its IPv4 prefix is the LAN.
        #[arg(long)]
        lan: String,
        /// Configuration file [default: /etc/natctl/natctl.toml if present].
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// bpffs directory for the pinned maps and links (overrides the file).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Rule store (overrides the file).
        #[arg(long)]
        rules_file: Option<PathBuf>,
    },
    /// Add a port-forwarding rule.
    Add {
        /// A name for the rule: letters, digits, '-', '_', '.'.
        name: String,
        #[command(flatten)]
        rule: RuleArgs,
        /// Add it switched off.
        #[arg(long)]
        disabled: bool,
    },
    /// Change fields of a rule; the others keep their values.
    Modify {
        name: String,
        /// Rename the rule.
        #[arg(long = "name", value_name = "NEW_NAME")]
        new_name: Option<String>,
        #[arg(long = "proto", value_name = "tcp|udp|both")]
        protocol: Option<Protocol>,
        /// External port or range, e.g. 8080 or 6881-6889.
        #[arg(long)]
        external: Option<PortRange>,
        /// IP[:PORT[-PORT]]; without ports, the internal ports stay.
        #[arg(long)]
        internal: Option<InternalTarget>,
        /// Replace the allowed remote prefixes (repeatable).
        #[arg(long, value_parser = parse_allow, conflicts_with = "allow_any")]
        allow: Vec<Ipv4Net>,
        /// Allow any remote again.
        #[arg(long)]
        allow_any: bool,
    },
    /// Remove a rule.
    Remove { name: String },
    /// Switch a rule on.
    Enable { name: String },
    /// Switch a rule off, keeping it.
    Disable { name: String },
    /// List the rules with their hit counters.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the NAT table: rules, conversations through them, dynamic
    /// entries.
    Table {
        #[arg(long)]
        json: bool,
        /// tcp, udp or icmp.
        #[arg(long = "proto")]
        protocol: Option<String>,
        /// A local or remote address.
        #[arg(long)]
        address: Option<Ipv4Addr>,
        /// A local, external or remote port.
        #[arg(long)]
        port: Option<u16>,
        /// static, dynamic or upnp.
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// Show the datapath's counters and per-rule hits.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Show what the daemon runs on.
    Status,
    /// Re-read the configuration file and the rule store (as SIGHUP).
    Reload,
    /// Switch the UPnP IGD on or off until the daemon restarts (set
    /// `[upnp] enabled` in the configuration to make it last); off also
    /// removes the mappings clients made.
    Upnp {
        #[arg(value_parser = ["on", "off"])]
        switch: String,
    },
    /// Detach the datapath and remove its pins (stops the daemon too).
    Down {
        /// Where to look when no daemon is running.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(Args)]
struct RuleArgs {
    #[arg(long = "proto", value_name = "tcp|udp|both")]
    protocol: Protocol,
    /// External port or range, e.g. 8080 or 6881-6889.
    #[arg(long)]
    external: PortRange,
    /// The LAN server: IP[:PORT[-PORT]]; the ports default to the external
    /// ones.
    #[arg(long)]
    internal: InternalTarget,
    /// Only these remotes may come in (repeatable); default: any.
    #[arg(long, value_parser = parse_allow)]
    allow: Vec<Ipv4Net>,
}

/// `--internal IP[:PORT[-PORT]]`.
#[derive(Clone, Debug)]
struct InternalTarget {
    addr: Ipv4Addr,
    ports: Option<PortRange>,
}

impl FromStr for InternalTarget {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let (addr, ports) = match s.split_once(':') {
            Some((addr, ports)) => (addr, Some(ports.parse()?)),
            None => (s, None),
        };
        let addr = addr
            .parse()
            .map_err(|_| RuleError::Address(addr.to_owned()))?;
        Ok(Self { addr, ports })
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Daemon {
            wan,
            lan,
            config,
            xdp_mode,
            pin_dir,
            rules_file,
        } => daemon::run(DaemonOptions {
            wan,
            lan,
            config,
            xdp_mode,
            socket: Some(cli.socket),
            pin_dir,
            rules_file,
        }),
        Command::Add {
            name,
            rule,
            disabled,
        } => {
            let rule = ForwardRule {
                name,
                protocol: rule.protocol,
                external: rule.external,
                internal_addr: rule.internal.addr,
                internal: rule.internal.ports.unwrap_or(rule.external),
                allow: rule.allow,
                enabled: !disabled,
                upnp: None,
            };
            let added = call(&client, Method::POST, "/v1/rules", Some(json(&rule)?))?;
            println!("added {}", one_rule(&added)?);
            Ok(())
        }
        Command::Modify {
            name,
            new_name,
            protocol,
            external,
            internal,
            allow,
            allow_any,
        } => {
            let change = RuleChange {
                name: new_name,
                protocol,
                external,
                internal_addr: internal.as_ref().map(|target| target.addr),
                internal: internal.and_then(|target| target.ports),
                allow: if allow_any {
                    Some(Vec::new())
                } else if allow.is_empty() {
                    None
                } else {
                    Some(allow)
                },
                enabled: None,
            };
            let modified = call(
                &client,
                Method::PATCH,
                &format!("/v1/rules/{name}"),
                Some(json(&change)?),
            )?;
            println!("modified {}", one_rule(&modified)?);
            Ok(())
        }
        Command::Remove { name } => {
            call(&client, Method::DELETE, &format!("/v1/rules/{name}"), None)?;
            println!("removed {name}");
            Ok(())
        }
        Command::Enable { name } => {
            call(
                &client,
                Method::POST,
                &format!("/v1/rules/{name}/enable"),
                None,
            )?;
            println!("enabled {name}");
            Ok(())
        }
        Command::Disable { name } => {
            call(
                &client,
                Method::POST,
                &format!("/v1/rules/{name}/disable"),
                None,
            )?;
            println!("disabled {name}");
            Ok(())
        }
        Command::List { json } => {
            let rules = call(&client, Method::GET, "/v1/rules", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else {
                let rules: Vec<ListedRule> =
                    serde_json::from_value(rules).context("reading the daemon's rule list")?;
                print!("{}", format_rules(&rules));
            }
            Ok(())
        }
        Command::Table {
            json,
            protocol,
            address,
            port,
            kind,
        } => {
            let filter = TableFilter {
                protocol,
                address,
                port,
                kind,
            };
            let rows = call(
                &client,
                Method::GET,
                &format!("/v1/table?{}", filter.query()),
                None,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let rows: Vec<TableRow> =
                    serde_json::from_value(rows).context("reading the daemon's NAT table")?;
                print!("{}", table::format_table(&rows));
            }
            Ok(())
        }
        Command::Stats { json } => {
            let stats = call(&client, Method::GET, "/v1/stats", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                let stats: Stats =
                    serde_json::from_value(stats).context("reading the daemon's counters")?;
                print!("{}", table::format_stats(&stats));
            }
            Ok(())
        }
        Command::Status => {
            let status = call(&client, Method::GET, "/v1/status", None)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Reload => {
            let reloaded = call(&client, Method::POST, "/v1/reload", None)?;
            println!("{}", reloaded["reloaded"].as_str().unwrap_or("reloaded"));
            Ok(())
        }
        Command::Upnp { switch } => {
            let answer = call(&client, Method::POST, &format!("/v1/upnp/{switch}"), None)?;
            let removed = answer["removed"]
                .as_array()
                .map(|names| names.len())
                .unwrap_or(0);
            if switch == "off" {
                println!("UPnP off; removed {removed} mapping(s) clients had made");
            } else {
                println!("UPnP on");
            }
            Ok(())
        }
        Command::Down { pin_dir } => match block_on(client.call(Method::POST, "/v1/down", None)) {
            Ok(_) => {
                println!("datapath detached; the daemon is stopping");
                Ok(())
            }
            // A daemon killed without `down` leaves the datapath pinned.
            Err(ClientError::NotRunning(_)) => {
                if pins::teardown(&pin_dir)? {
                    println!(
                        "no daemon was running; detached the datapath pinned in {}",
                        pin_dir.display()
                    );
                } else {
                    println!(
                        "nothing to do: no daemon is running and nothing is pinned in {}",
                        pin_dir.display()
                    );
                }
                Ok(())
            }
            Err(error) => Err(error.into()),
        },
    }
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime")
        .block_on(future)
}

fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    Ok(block_on(client.call(method, path, body))?)
}

fn json(value: &impl serde::Serialize) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

/// A rule as the API lists it.
#[derive(Deserialize)]
struct ListedRule {
    #[serde(flatten)]
    rule: ForwardRule,
    inbound: table::Traffic,
    outbound: table::Traffic,
}

fn one_rule(value: &serde_json::Value) -> Result<String> {
    let ListedRule { rule, .. } =
        serde_json::from_value(value.clone()).context("reading the daemon's answer")?;
    Ok(rule.to_string())
}

fn format_rules(rules: &[ListedRule]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:<5} {:>11} {:<27} {:<8} {:>16} {:>16} ALLOWED REMOTES",
        "NAME",
        "TYPE",
        "PROTO",
        "EXTERNAL",
        "INTERNAL",
        "ENABLED",
        "IN PKTS/BYTES",
        "OUT PKTS/BYTES"
    );
    for listed in rules {
        let rule = &listed.rule;
        let allow = rule.allowed_remotes();
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<5} {:>11} {:<27} {:<8} {:>16} {:>16} {}",
            rule.name,
            rule.kind(),
            rule.protocol.to_string(),
            rule.external.to_string(),
            format!("{}:{}", rule.internal_addr, rule.internal),
            if rule.enabled { "yes" } else { "no" },
            format!("{}/{}", listed.inbound.packets, listed.inbound.bytes),
            format!("{}/{}", listed.outbound.packets, listed.outbound.bytes),
            allow
        );
    }
    out
}
