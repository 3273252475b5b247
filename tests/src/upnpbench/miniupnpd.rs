//! miniupnpd, the reference IGD, run on the comparison topology's router
//! (Debian package, nftables backend).
use std::{fs, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use super::{kernel::TempDir, upnp::HTTP_PORT};
use crate::{
    netns::Netns,
    plan::{self, ROUTER_LAN_IF, ROUTER_WAN_IF},
    wait_for,
};

/// miniupnpd treats every special-purpose IPv4 block (RFC 1918, the
/// documentation ranges, 198.18.0.0/15, ...) as "reserved" and refuses to
/// map anything while its external interface's first address is one of
/// them ("Port forwarding is impossible", and ext_ip= is checked the same
/// way). So wan0 first gets this /32, which miniupnpd takes as the
/// external address; the traffic itself stays on 203.0.113.0/24 (the WAN
/// host sends to 203.0.113.1, and miniupnpd's DNAT rules match on the
/// interface and port, not the address). Nothing ever sends a packet to
/// this address, and the isolated namespaces have no route anywhere else.
pub(super) const MINIUPNPD_EXT_LABEL: &str = "100.128.0.1/32";

/// The router's nftables for miniupnpd: what the package's nft_init.sh
/// builds (miniupnpd's default table and chain names), plus masquerade.
pub(super) const MINIUPNPD_RULESET: &str = r#"
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        jump miniupnpd
        iifname "lan0" oifname "wan0" accept
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "wan0" masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"#;

/// miniupnpd running daemonized in the router's namespace; stopped (by the
/// pid in its pid file) on drop.
pub(super) struct MiniUpnpd {
    pidfile: PathBuf,
    dir: TempDir,
}

impl MiniUpnpd {
    pub(super) fn start(router: &Netns) -> Result<Self> {
        Self::start_with(router, false)
    }

    /// With `natpmp`, its NAT-PMP/PCP server too (on the LAN, UDP 5351).
    pub(super) fn start_with(router: &Netns, natpmp: bool) -> Result<Self> {
        let dir = TempDir::new("miniupnpd")?;
        let pidfile = dir.0.join("miniupnpd.pid");
        let conf = dir.0.join("miniupnpd.conf");
        let uuid = format!("75706e70-0000-4000-8000-{:012x}", std::process::id());
        fs::write(
            &conf,
            format!(
                "ext_ifname={ROUTER_WAN_IF}\n\
                 listening_ip={ROUTER_LAN_IF}\n\
                 port={HTTP_PORT}\n\
                 enable_natpmp={natpmp}\n\
                 enable_upnp=yes\n\
                 secure_mode=yes\n\
                 system_uptime=yes\n\
                 notify_interval=60\n\
                 clean_ruleset_interval=600\n\
                 lease_file={}\n\
                 uuid={uuid}\n\
                 upnp_table_name=filter\n\
                 upnp_nat_table_name=filter\n\
                 upnp_forward_chain=miniupnpd\n\
                 upnp_nat_chain=prerouting_miniupnpd\n\
                 upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 allow 1024-65535 {lan} 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                dir.0.join("upnp.leases").display(),
                lan = plan::lan_cidr(),
                natpmp = if natpmp { "yes" } else { "no" },
            ),
        )?;
        let daemon = Self { pidfile, dir };
        // Without -d it daemonizes and logs only notices (to syslog), as
        // it runs in production; the pid file is how we find it again.
        let mut command = router.command("miniupnpd");
        command.arg("-f").arg(&conf).arg("-P").arg(&daemon.pidfile);
        let output = super::run_bounded(&mut command, Duration::from_secs(10))?;
        if !output.status.success() {
            bail!(
                "miniupnpd failed to start ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        wait_for("miniupnpd's pid file", Duration::from_secs(10), || {
            daemon.pid()
        })?;
        Ok(daemon)
    }

    /// The pid from the pid file, if that process is a miniupnpd.
    fn pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("miniupnpd")
            .then_some(pid)
    }
}

impl Drop for MiniUpnpd {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let Some(pid) = self.pid() else { return };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let gone = wait_for("miniupnpd to stop", Duration::from_secs(5), || {
            (!PathBuf::from(format!("/proc/{pid}")).exists()).then_some(())
        });
        if gone.is_err() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = &self.dir;
    }
}
