//! The invariant every end-to-end lab checks: no packet with a LAN-prefix
//! source address ever leaves the router's WAN NIC. A raw `AF_PACKET`
//! socket on the WAN host's interface sees every frame the router sends
//! there; a thread reads it for as long as the lab lives, and the lab
//! fails, naming the packet, if any IPv4 source (or ARP sender) was in the
//! LAN prefix.
use std::{
    fmt::Write as _,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{netns::Netns, plan};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// Leaks kept for the report; the count goes on.
const KEEP: usize = 8;

#[derive(Default)]
struct Seen {
    frames: AtomicU64,
    leaks: AtomicU64,
    first: Mutex<Vec<String>>,
}

/// A capture of the frames arriving at one interface of one namespace.
pub struct WanCapture {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    reader: Option<JoinHandle<Result<()>>>,
}

impl WanCapture {
    /// Opens the socket inside `netns` on `interface` before returning, so
    /// that nothing the router sends afterwards is missed.
    pub fn start(netns: &Netns, interface: &'static str) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let reader = {
            let (stop, seen) = (stop.clone(), seen.clone());
            netns.spawn(move || {
                let socket = open(interface);
                let ok = socket.is_ok();
                let _ = tx.send(socket.as_ref().map(drop).map_err(|e| format!("{e:#}")));
                if let (true, Ok(socket)) = (ok, socket) {
                    read(&socket, &stop, &seen);
                }
                Ok(())
            })
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => bail!("WAN capture: {error}"),
            Err(_) => bail!("WAN capture: the reader thread did not start"),
        }
        Ok(Self {
            stop,
            seen,
            reader: Some(reader),
        })
    }

    /// Stops the capture; `Err` names every LAN-sourced frame it saw (the
    /// first few of them in full).
    pub fn finish(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let leaks = self.seen.leaks.load(Ordering::Relaxed);
        if leaks > 0 {
            let first = self.seen.first.lock().unwrap();
            bail!(
                "{leaks} of {} frames left the router's WAN NIC with a LAN-prefix source ({}):\n{}",
                self.seen.frames.load(Ordering::Relaxed),
                plan::lan_cidr(),
                first.join("\n")
            );
        }
        Ok(self.seen.frames.load(Ordering::Relaxed))
    }
}

impl Drop for WanCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn open(interface: &str) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .with_context(|| format!("no interface {interface}"))?;
    // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex as i32;
    let buffer: libc::c_int = 8 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid pointers and lengths for each call.
    unsafe {
        if libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const buffer).cast(),
            size_of::<libc::c_int>() as u32,
        );
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    Ok(socket)
}

/// Reads until `stop`, with a 100 ms receive timeout so that it notices.
fn read(socket: &OwnedFd, stop: &AtomicBool, seen: &Seen) {
    let mut frame = [0u8; 128];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: a zeroed sockaddr_ll is valid for recvfrom to fill.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: valid buffer and address pointers with their lengths.
        let len = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                frame.as_mut_ptr().cast(),
                frame.len(),
                libc::MSG_TRUNC,
                (&raw mut from).cast(),
                &mut from_len,
            )
        };
        if len < 0 {
            continue;
        }
        // The WAN host's own frames are not the router's.
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        seen.frames.fetch_add(1, Ordering::Relaxed);
        let captured = &frame[..(len as usize).min(frame.len())];
        if let Some(source) = lan_source(captured) {
            let n = seen.leaks.fetch_add(1, Ordering::Relaxed);
            if (n as usize) < KEEP {
                seen.first
                    .lock()
                    .unwrap()
                    .push(describe(captured, len as usize, source));
            }
        }
    }
}

/// The LAN-prefix source of an IPv4 packet or ARP message, if it has one.
fn lan_source(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let at = match ether_type {
        ETH_P_IP => 14 + 12,
        // Sender protocol address.
        ETH_P_ARP => 14 + 14,
        _ => return None,
    };
    let octets: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
    let source = std::net::Ipv4Addr::from(octets);
    plan::is_lan(source).then_some(source)
}

/// One line naming the packet: source, destination, protocol, fragment
/// fields, length, then its first bytes.
fn describe(frame: &[u8], len: usize, source: std::net::Ipv4Addr) -> String {
    let mut line = format!("  from {source}");
    if frame.len() >= 34 && frame[12..14] == ETH_P_IP.to_be_bytes() {
        let ip = &frame[14..];
        let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let frags = u16::from_be_bytes([ip[6], ip[7]]);
        let _ = write!(
            line,
            " to {dst}, protocol {}, id {:#06x}, MF {}, offset {}, DF {},",
            ip[9],
            u16::from_be_bytes([ip[4], ip[5]]),
            frags >> 13 & 1,
            (frags & 0x1fff) * 8,
            frags >> 14 & 1
        );
    } else {
        line.push_str(" (ARP),");
    }
    let _ = write!(line, " {len} bytes:");
    for byte in &frame[..frame.len().min(64)] {
        let _ = write!(line, " {byte:02x}");
    }
    line
}
