//! `natlab demo`: the netns demo lab. Builds a LAN host, the router and a WAN
//! host, runs the XDP NAT on the router with `natctl`, shows traffic both
//! ways and the NAT table, and removes everything again.
use std::io::{Read, Write};
use std::net::TcpListener;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nat_tests::{
    lab::{LAN_SERVER, Lab, ROUTER_LAN, ROUTER_WAN, WAN_HOST},
    traffic::{accept, connect},
};

#[derive(Parser)]
#[command(about = "Network-namespace lab for the XDP NAT router")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo and clean up.
    Demo,
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn join<T>(handle: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("a traffic thread panicked"))?
}

fn demo() -> Result<()> {
    step(&format!(
        "Building the lab: LAN host {LAN_SERVER} -- router ({ROUTER_LAN} | {ROUTER_WAN}) -- WAN host {WAN_HOST}"
    ));
    let mut lab = Lab::start()?;
    println!("natctl daemon --wan wan0 --lan lan0");
    print!("{}", lab.natctl_log());
    let add = [
        "add",
        "web",
        "--proto",
        "tcp",
        "--external",
        "8080",
        "--internal",
        &format!("{LAN_SERVER}:8000"),
    ];
    println!("natctl {}", add.join(" "));
    print!("{}", lab.natctl(&add)?);
    print!("{}", lab.natctl(&["list"])?);

    step("LAN host pings the WAN host (ICMP id mapped like a port)");
    let ping = lab.lan.exec(
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &WAN_HOST.to_string()],
    )?;
    print!("{}", String::from_utf8_lossy(&ping.stdout));

    step("LAN host opens a TCP connection to the WAN host (source NAT)");
    let listener = join(lab.wan.spawn(|| Ok(TcpListener::bind((WAN_HOST, 9000))?)))?;
    let client = lab.lan.spawn(|| {
        let mut stream = connect((WAN_HOST, 9000).into())?;
        stream.write_all(b"hello from the LAN")?;
        Ok(())
    });
    let (mut stream, peer) = accept(&listener)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    join(client)?;
    println!("WAN host got {text:?} from {peer} (the router's WAN address, not {LAN_SERVER})");
    if peer.ip() != ROUTER_WAN {
        bail!("the WAN host saw {peer}, expected {ROUTER_WAN}");
    }

    step(&format!(
        "WAN host connects to {ROUTER_WAN}:8080, forwarded to the LAN server {LAN_SERVER}:8000"
    ));
    let web = join(lab.lan.spawn(|| Ok(TcpListener::bind((LAN_SERVER, 8000))?)))?;
    let client = lab.wan.spawn(|| {
        let mut stream = connect((ROUTER_WAN, 8080).into())?;
        stream.write_all(b"GET / from the Internet")?;
        Ok(())
    });
    let (mut stream, peer) = accept(&web)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    join(client)?;
    println!("LAN server got {text:?} from {peer}");

    step("The daemon's log of new inbound connections on forwarded ports");
    for line in lab
        .natctl_log()
        .lines()
        .filter(|line| line.contains("new inbound"))
    {
        println!("{line}");
    }

    step("natctl table");
    print!("{}", lab.natctl(&["table"])?);
    step("natctl stats (packets that took the XDP path)");
    print!("{}", lab.natctl(&["stats"])?);

    step("natctl down: detaching the datapath and removing the lab");
    print!("{}", lab.down()?);
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo => demo().context("demo failed"),
    }
}
