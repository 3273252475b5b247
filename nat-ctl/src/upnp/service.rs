//! Starting and stopping the IGD as one service: its HTTP server and its
//! SSDP responder, both on the LAN NIC only.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use ipnet::Ipv4Net;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    Identity, IgdVersion, ServicePaths,
    http::{self, Control, HttpConfig},
    paths,
    ssdp::{self, SsdpConfig},
};

/// SSDP announcements stay valid this long (UDA: at least 1800 s).
const MAX_AGE: u32 = 1800;
/// Re-announced well within MAX_AGE, so that a lost NOTIFY does not make
/// clients forget the gateway.
const NOTIFY_INTERVAL: Duration = Duration::from_secs(600);
/// How long a stop waits for each task: the byebyes to go out, the HTTP
/// requests in flight to be answered.
const STOP_TIMEOUT: Duration =
    Duration::from_secs(crate::connections::DRAIN_DEADLINE.as_secs() + 1);

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub lan_ifname: String,
    pub lan_addr: Ipv4Addr,
    pub lan_net: Ipv4Net,
    pub http_port: u16,
    pub identity: Identity,
    pub igd: IgdVersion,
    pub v1_user_agents: Vec<String>,
    /// Control requests per second per LAN host.
    pub rate_limit: u32,
}

/// A running IGD; [`Running::stop`] sends the SSDP byebyes.
pub struct Running {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub location: String,
    pub lan_addr: Ipv4Addr,
}

pub fn start(config: ServiceConfig, control: Arc<dyn Control>) -> std::io::Result<Running> {
    let listener = http::bind(&config.lan_ifname, config.lan_addr, config.http_port)?;
    let port = listener.local_addr()?.port();
    let location = format!(
        "http://{}:{port}{}",
        config.lan_addr,
        paths::ROOT_DESCRIPTION
    );
    let (shutdown, stop) = watch::channel(false);
    let http_config = Arc::new(HttpConfig {
        lan_ifname: config.lan_ifname.clone(),
        lan_addr: config.lan_addr,
        lan_net: config.lan_net,
        identity: config.identity.clone(),
        igd: config.igd,
        v1_user_agents: config.v1_user_agents.clone(),
        paths: ServicePaths::random(),
        rate_limit: config.rate_limit,
        limiter: std::sync::Mutex::default(),
    });
    let http_task = tokio::spawn(http::serve(listener, http_config, control, stop.clone()));
    let ssdp_config = SsdpConfig {
        lan_ifname: config.lan_ifname.clone(),
        lan_addr: config.lan_addr,
        lan_net: config.lan_net,
        location: location.clone(),
        identity: config.identity,
        igd: config.igd,
        max_age: MAX_AGE,
        notify_interval: NOTIFY_INTERVAL,
    };
    let ssdp_task = tokio::spawn(async move {
        if let Err(error) = ssdp::run(ssdp_config, stop).await {
            tracing::error!("UPnP SSDP stopped: {error}");
        }
    });
    Ok(Running {
        shutdown,
        tasks: vec![http_task, ssdp_task],
        location,
        lan_addr: config.lan_addr,
    })
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// 64-bit FNV-1a: stable across Rust releases, unlike `DefaultHasher`, so
/// the device UUIDs stay the same after an upgrade.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter()
        .fold(0xcbf2_9ce4_8422_2325 ^ seed, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Device UUIDs derived from the machine id and the LAN NIC, so that
/// clients see the same gateway across restarts and reboots.
pub fn identity(lan_ifname: &str, igd: IgdVersion, boot_id: u32) -> Identity {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .unwrap_or_default();
    let uuid = |device: u64| {
        let seed = format!("{}|{lan_ifname}|natctl", machine.trim());
        let high = fnv1a(seed.as_bytes(), device);
        let low = fnv1a(seed.as_bytes(), device.wrapping_add(0x9e37_79b9));
        // Shaped as a version 5 (name-based), RFC 4122 variant UUID.
        let high = (high & !0xf000) | 0x5000;
        let low = (low & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        )
    };
    Identity {
        uuids: [uuid(1), uuid(2), uuid(3)],
        friendly_name: "nat-router IGD".to_owned(),
        boot_id,
        config_id: u32::from(igd.number()),
        server: format!(
            "Linux UPnP/{} natctl/{}",
            if igd == IgdVersion::V2 { "2.0" } else { "1.1" },
            env!("CARGO_PKG_VERSION")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_distinct_and_well_formed() {
        let a = identity("lan0", IgdVersion::V2, 1);
        let b = identity("lan0", IgdVersion::V2, 2);
        assert_eq!(a.uuids, b.uuids);
        assert_ne!(a.uuids[0], a.uuids[1]);
        assert_ne!(identity("lan1", IgdVersion::V2, 1).uuids, a.uuids);
        for uuid in &a.uuids {
            let groups: Vec<_> = uuid.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
            assert_eq!(&uuid[14..15], "5", "{uuid}");
        }
    }
}
