//! Command-line interface: `natctl daemon`, and the thin clients of its API.
use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, str::FromStr};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use nat_ctl::{
    api::{
        Client, ClientError, ConnectionRecord, FollowedLine, ListedRule, RuleChange, TableFilter,
    },
    config::{DEFAULT_CONFIG_PATH, DaemonConfig},
    daemon::{self, DaemonOptions},
    datapath::{Attach, AttachMode, pins},
    rules::{ForwardRule, PortRange, Protocol, RuleError, parse_allow},
    schedule::Schedule,
    table,
};

#[derive(Parser)]
#[command(name = "natctl", version, about = "XDP NAT router control")]
pub struct Cli {
    /// Configuration file [default: /etc/natctl/natctl.toml if present].
    /// The daemon runs by it; the other commands take the API socket and
    /// the pin directory from it.
    #[arg(long, global = true, env = "NATCTL_CONFIG")]
    config: Option<PathBuf>,
    /// The daemon's API socket [default: the configuration's `socket`].
    #[arg(long, global = true, env = "NATCTL_SOCKET")]
    socket: Option<PathBuf>,
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
        /// Per NIC: TC for drivers that may hand over partial checksums
        /// (veth, tun/tap, virtio_net), XDP otherwise (auto); or the same
        /// mode on both.
        #[arg(long, value_enum, default_value_t = Attach::Auto)]
        attach: Attach,
        /// For the NICs that get XDP: native with a generic fallback
        /// (auto), or only one of them.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        xdp_mode: AttachMode,
        /// bpffs directory for the pinned maps and links (overrides the file).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Rule store (overrides the file).
        #[arg(long)]
        rules_file: Option<PathBuf>,
        /// For tests: judge schedules by a clock that starts at this
        /// instant (RFC 3339) and runs at the real rate.
        #[arg(long, hide = true)]
        schedule_clock_start: Option<jiff::Timestamp>,
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
        /// Replace the schedule, e.g. "mon-fri 09:00-18:00"; "always"
        /// removes it.
        #[arg(long)]
        schedule: Option<Schedule>,
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
        /// static, dynamic, upnp, natpmp or pcp.
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// Show the datapath's counters and per-rule hits.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Show the new inbound connections on forwarded ports (remote, rule,
    /// LAN server, time): the daemon's last 1000.
    Connections {
        /// Then show each new one as it comes, until the daemon stops.
        #[arg(long)]
        follow: bool,
        /// One JSON object a line.
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
    /// Switch the NAT-PMP and PCP server (one switch for both: they share
    /// UDP port 5351) on or off until the daemon restarts (`[natpmp]
    /// enabled` makes it last); off also removes their mappings.
    Natpmp {
        #[arg(value_parser = ["on", "off"])]
        switch: String,
    },
    /// Detach the datapath and remove its pins (stops the daemon too).
    Down {
        /// Where to look when no daemon is running [default: the
        /// configuration's `pin_dir`].
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Set the admin page's password ([web] listen): read from the
    /// terminal (twice) or one line from stdin, stored as an Argon2id hash
    /// in the configuration's `[web] password_file`.
    Passwd,
    /// Work with configuration files, without a daemon.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the completion script for a shell (for packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page in roff (for packaging).
    #[command(hide = true)]
    Manpage,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a configuration file as the daemon would read it.
    Check {
        /// The file [default: --config, else /etc/natctl/natctl.toml].
        file: Option<PathBuf>,
    },
}

/// Where the clients find the daemon: a flag wins; else the configuration
/// file's value (the file is read only when a flag leaves something to
/// find).
fn client_paths(
    config: Option<&std::path::Path>,
    socket: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
) -> Result<(PathBuf, PathBuf)> {
    if let (Some(socket), Some(pin_dir)) = (&socket, &pin_dir) {
        return Ok((socket.clone(), pin_dir.clone()));
    }
    let (file, _) = DaemonConfig::load(config)?;
    Ok((
        socket.unwrap_or(file.socket),
        pin_dir.unwrap_or(file.pin_dir),
    ))
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
    /// Only let remotes in during these weekly windows, in the router's
    /// local time: "[DAYS] HH:MM-HH:MM" separated by commas, e.g.
    /// "mon-fri 09:00-18:00, sat 10:00-12:00" or "fri 22:00-02:00";
    /// default: always.
    #[arg(long)]
    schedule: Option<Schedule>,
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
    let command = match cli.command {
        Command::Daemon {
            wan,
            lan,
            attach,
            xdp_mode,
            pin_dir,
            rules_file,
            schedule_clock_start,
        } => {
            return daemon::run(DaemonOptions {
                schedule_clock_start,
                wan,
                lan,
                config: cli.config,
                attach,
                xdp_mode,
                socket: cli.socket,
                pin_dir,
                rules_file,
            });
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => return check_config(file.as_deref().or(cli.config.as_deref())),
        Command::Passwd => return passwd(cli.config.as_deref()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "natctl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Manpage => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .section("8")
                .render(&mut std::io::stdout())?;
            return Ok(());
        }
        command => command,
    };
    let down_pin_dir = match &command {
        Command::Down { pin_dir } => pin_dir.clone(),
        // Only `down` needs a pin directory: any will do for the others.
        _ => Some(PathBuf::new()),
    };
    let (socket, pin_dir) = client_paths(cli.config.as_deref(), cli.socket, down_pin_dir)?;
    let client = Client::new(&socket);
    match command {
        Command::Daemon { .. }
        | Command::Passwd
        | Command::Config { .. }
        | Command::Completions { .. }
        | Command::Manpage => unreachable!("handled above"),
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
                schedule: rule.schedule.unwrap_or_default(),
                off_schedule: false,
            };
            let added = block_on(client.add_rule(&rule))?;
            println!("added {}", added.rule);
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
            schedule,
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
                schedule,
            };
            let modified = block_on(client.modify_rule(&name, &change))?;
            println!("modified {}", modified.rule);
            Ok(())
        }
        Command::Remove { name } => {
            block_on(client.remove_rule(&name))?;
            println!("removed {name}");
            Ok(())
        }
        Command::Enable { name } => {
            block_on(client.set_enabled(&name, true))?;
            println!("enabled {name}");
            Ok(())
        }
        Command::Disable { name } => {
            block_on(client.set_enabled(&name, false))?;
            println!("disabled {name}");
            Ok(())
        }
        Command::List { json } => {
            let rules = block_on(client.list_rules())?;
            if json {
                print_json(&rules)?;
            } else {
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
            let rows = block_on(client.table(&filter))?;
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", table::format_table(&rows));
            }
            Ok(())
        }
        Command::Stats { json } => {
            let stats = block_on(client.stats())?;
            if json {
                print_json(&stats)?;
            } else {
                print!("{}", table::format_stats(&stats));
            }
            Ok(())
        }
        Command::Connections { follow, json } => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if !json {
                writeln!(out, "{}", connection_header())?;
            }
            let mut print = |line: FollowedLine| -> std::io::Result<()> {
                match line {
                    FollowedLine::Connection(record) if json => {
                        writeln!(out, "{}", serde_json::to_string(&record)?)?
                    }
                    FollowedLine::Connection(record) => {
                        writeln!(out, "{}", connection_row(&record))?
                    }
                    FollowedLine::Missed { missed } => eprintln!(
                        "natctl: fell behind and missed {missed} connection(s); they are in \
                         `natctl connections`"
                    ),
                }
                // Each line as it comes, also into a pipe.
                out.flush()
            };
            if follow {
                block_on(client.follow_connections(print))?;
            } else {
                for record in block_on(client.connections())? {
                    if print(FollowedLine::Connection(record)).is_err() {
                        break;
                    }
                }
            }
            Ok(())
        }
        Command::Status => print_json(&block_on(client.status())?),
        Command::Reload => {
            println!("{}", block_on(client.reload())?.reloaded);
            Ok(())
        }
        Command::Upnp { switch } => {
            let on = switch == "on";
            let answer = block_on(client.upnp(on))?;
            if on {
                println!("UPnP on");
            } else {
                println!(
                    "UPnP off; removed {} mapping(s) clients had made",
                    answer.removed.len()
                );
            }
            Ok(())
        }
        Command::Natpmp { switch } => {
            let on = switch == "on";
            let answer = block_on(client.natpmp(on))?;
            if on {
                println!("NAT-PMP/PCP on");
            } else {
                println!(
                    "NAT-PMP/PCP off; removed {} mapping(s) clients had made",
                    answer.removed.len()
                );
            }
            Ok(())
        }
        Command::Down { .. } => match block_on(client.down()) {
            Ok(_) => {
                println!("datapath detached; the daemon is stopping");
                Ok(())
            }
            // A daemon killed without `down` leaves the datapath pinned.
            Err(ClientError::NotRunning(_)) => {
                // As the daemon does: no forwarding without translation.
                nat_ctl::interfaces::stop_forwarding_pinned(&pin_dir);
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

/// `natctl config check`: the file read as the daemon reads it.
fn check_config(file: Option<&std::path::Path>) -> Result<()> {
    let (config, read) = DaemonConfig::load(file)?;
    match read {
        Some(path) => println!(
            "{}: valid; rules in {}, API on {}, pins in {}; NAT {}",
            path.display(),
            config.rules_file.display(),
            config.socket.display(),
            config.pin_dir.display(),
            nat_behaviour(&config.nat)
        ),
        None => println!("no configuration file at {DEFAULT_CONFIG_PATH}: the defaults apply"),
    }
    Ok(())
}

/// "port-restricted-cone (endpoint-independent mapping, ...)".
fn nat_behaviour(nat: &nat_ctl::config::NatSettings) -> String {
    let pair = format!("{} mapping, {} filtering", nat.mapping, nat.filtering);
    match nat.nat_type() {
        Some(nat_type) => format!("{nat_type} ({pair})"),
        None => pair,
    }
}

/// `natctl passwd`: a TTY is asked twice without echo; a pipe gives one
/// line.
fn passwd(config: Option<&std::path::Path>) -> Result<()> {
    use std::io::IsTerminal as _;
    let (config, _) = DaemonConfig::load(config)?;
    let path = config.password_file();
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New admin page password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(
            first == again,
            "the two passwords differ; nothing was changed"
        );
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    let hash = nat_ctl::web::auth::hash_password(&password)?;
    nat_ctl::web::auth::save_password_hash(&path, &hash)?;
    println!("admin page password saved to {}", path.display());
    Ok(())
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime")
        .block_on(future)
}

/// Prints an answer for `--json` through a `Value`, whose map sorts the
/// keys: the order they have always been printed in.
fn print_json(answer: &impl serde::Serialize) -> Result<()> {
    let value = serde_json::to_value(answer)?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
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
        if let Some(state) = schedule_line(listed) {
            let _ = writeln!(out, "{:<20} {state}", "");
        }
    }
    out
}

fn connection_header() -> String {
    format!(
        "{:<25} {:<5} {:<21} {:>8} {:<20} SERVER",
        "TIME", "PROTO", "REMOTE", "EXTERNAL", "RULE"
    )
}

fn connection_row(record: &ConnectionRecord) -> String {
    format!(
        "{:<25} {:<5} {:<21} {:>8} {:<20} {}",
        record.time,
        record.protocol,
        record.remote.to_string(),
        record.external_port,
        record.rule,
        record.server
    )
}

/// The line under a scheduled rule: `schedule mon-fri 09:00-18:00: enabled,
/// off-schedule until mon 09:00`.
fn schedule_line(listed: &ListedRule) -> Option<String> {
    let state = listed.schedule_state.as_ref()?;
    let mut line = format!(
        "schedule {}: {}, {}",
        listed.rule.schedule,
        if listed.rule.enabled {
            "enabled"
        } else {
            "disabled"
        },
        if state.on {
            "on-schedule"
        } else {
            "off-schedule"
        }
    );
    if let Some(until) = &state.until_local {
        let _ = write!(line, " until {until}");
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_find_the_daemon_by_flag_then_by_the_configuration_file() {
        let dir = std::env::temp_dir().join(format!("natctl-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("natctl.toml");
        std::fs::write(
            &file,
            "socket = \"/tmp/x/natctl.sock\"\npin_dir = \"/sys/fs/bpf/other\"\n",
        )
        .unwrap();
        let flag_socket = PathBuf::from("/run/flag.sock");
        let flag_pins = PathBuf::from("/sys/fs/bpf/flag");

        // The file's values when no flag is given.
        assert_eq!(
            client_paths(Some(&file), None, None).unwrap(),
            ("/tmp/x/natctl.sock".into(), "/sys/fs/bpf/other".into())
        );
        // A flag wins over the file, for what it names only.
        assert_eq!(
            client_paths(Some(&file), Some(flag_socket.clone()), None).unwrap(),
            (flag_socket.clone(), "/sys/fs/bpf/other".into())
        );
        // Both flags: the file is not even read (it may be broken).
        let missing = dir.join("missing.toml");
        assert_eq!(
            client_paths(
                Some(&missing),
                Some(flag_socket.clone()),
                Some(flag_pins.clone())
            )
            .unwrap(),
            (flag_socket, flag_pins)
        );
        // A file given but missing is an error naming it.
        let error = client_paths(Some(&missing), None, None).unwrap_err();
        assert!(format!("{error:#}").contains("missing.toml"), "{error:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn config_is_a_flag_of_every_subcommand() {
        let cli = Cli::try_parse_from(["natctl", "list", "--config", "/etc/x.toml"]).unwrap();
        assert_eq!(cli.config, Some("/etc/x.toml".into()));
        let cli = Cli::try_parse_from([
            "natctl",
            "--config",
            "/etc/x.toml",
            "daemon",
            "--wan",
            "eth0",
            "--lan",
            "eth1",
        ])
        .unwrap();
        assert_eq!(cli.config, Some("/etc/x.toml".into()));
        assert_eq!(cli.socket, None, "no default socket: the file's is used");
    }
}
