//! Which attach mode each NIC gets, and why.
//!
//! XDP runs before the kernel builds an skb, so it never sees the skb's
//! checksum state. A NIC that hands over packets whose L4 checksum is only
//! the pseudo-header sum (CHECKSUM_PARTIAL: a veth, tun/tap or virtio_net
//! peer with TX checksum offload on, their default) or GSO packets larger
//! than the MTU needs the TC path, which sees the skb and keeps it right.
//! Physical NICs hand over full checksums: XDP, the faster path.
use serde::Serialize;

/// `natctl daemon --attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// TC for drivers that may hand over partial checksums, XDP otherwise
    /// (and TC where XDP cannot be attached).
    Auto,
    /// XDP on both NICs (`--xdp-mode` says native or generic).
    Xdp,
    /// TC (`sched_cls` on ingress) on both NICs.
    Tc,
}

/// The mode a NIC runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Xdp,
    Tc,
}

/// What a NIC was given and why, for the log and `natctl status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NicAttach {
    pub interface: String,
    pub mode: Mode,
    /// For XDP: "native" or "generic" (empty when picked up from pins).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub xdp_mode: String,
    pub reason: String,
}

/// Drivers that may hand over CHECKSUM_PARTIAL or GSO packets.
const PARTIAL_CHECKSUM_DRIVERS: &[&str] = &["veth", "tun", "virtio_net"];

/// The mode `attach` asks for on `interface`, and why.
pub fn choose(attach: Attach, interface: &str) -> (Mode, String) {
    match attach {
        Attach::Xdp => (Mode::Xdp, "--attach xdp".to_owned()),
        Attach::Tc => (Mode::Tc, "--attach tc".to_owned()),
        Attach::Auto => match driver(interface) {
            Ok(driver) => choose_for_driver(&driver),
            Err(error) => (
                Mode::Xdp,
                format!("auto: driver unknown ({error}); assuming full checksums"),
            ),
        },
    }
}

fn choose_for_driver(driver: &str) -> (Mode, String) {
    if PARTIAL_CHECKSUM_DRIVERS.contains(&driver) {
        (
            Mode::Tc,
            format!(
                "auto: driver {driver} may hand over partial checksums (CHECKSUM_PARTIAL) and \
                 GSO packets, which XDP cannot see"
            ),
        )
    } else {
        (
            Mode::Xdp,
            format!("auto: driver {driver} hands over full checksums"),
        )
    }
}

/// The NIC's driver name, by the ethtool driver-info ioctl (veth has no
/// `device/driver` in sysfs, so that cannot tell).
pub fn driver(interface: &str) -> std::io::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let name = interface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain C structs for which all zeroes is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    request.name[..name.len()].copy_from_slice(name);
    // SAFETY: a datagram socket, closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `request` points at a live, correctly laid out ethtool_drvinfo.
    let rc = unsafe { libc::ioctl(socket, SIOCETHTOOL as _, &mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: ours, closed once.
    unsafe { libc::close(socket) };
    if rc < 0 {
        return Err(error);
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_tc_for_partial_checksum_drivers() {
        for driver in ["veth", "tun", "virtio_net"] {
            let (mode, reason) = choose_for_driver(driver);
            assert_eq!(mode, Mode::Tc, "{driver}");
            assert!(reason.contains(driver), "{reason}");
        }
        for driver in ["ixgbe", "mlx5_core", "e1000e"] {
            assert_eq!(choose_for_driver(driver).0, Mode::Xdp, "{driver}");
        }
    }

    #[test]
    fn explicit_modes_win() {
        assert_eq!(choose(Attach::Xdp, "lo").0, Mode::Xdp);
        assert_eq!(choose(Attach::Tc, "lo").0, Mode::Tc);
    }

    #[test]
    fn loopback_driver_is_read() {
        // Every namespace has `lo`; ethtool reports no driver name for it
        // (an empty string) or fails: either way not a partial-checksum one.
        let (mode, _) = choose(Attach::Auto, "lo");
        assert_eq!(mode, Mode::Xdp);
    }
}
