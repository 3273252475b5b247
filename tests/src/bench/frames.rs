//! The frames the benchmarks send: minimum-size UDP (60 bytes, 64 on the
//! wire with the FCS), with valid checksums, and their templates.
use std::net::SocketAddrV4;

use etherparse::PacketBuilder;
use nat_common::bench::{BenchTemplate, TEMPLATE_MAX};

/// Ethernet 14 + IPv4 20 + UDP 8 + 18 bytes of payload.
pub const FRAME_LEN: usize = 60;
const UDP_SOURCE_PORT: u32 = 34;
const UDP_DESTINATION_PORT: u32 = 36;
const UDP_CHECK: u32 = 40;

/// One UDP flow as it leaves a host: MACs and endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

impl Flow {
    pub fn frame(&self) -> Vec<u8> {
        let payload = [0x5a; FRAME_LEN - 42];
        let mut frame = Vec::with_capacity(FRAME_LEN);
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src.ip().octets(), self.dst.ip().octets(), 64)
            .udp(self.src.port(), self.dst.port())
            .write(&mut frame, &payload)
            .expect("writing a UDP frame to a Vec");
        debug_assert_eq!(frame.len(), FRAME_LEN);
        frame
    }
}

/// Which port of the template moves on with every packet, over how many
/// values (its own value upwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vary {
    Fixed,
    SourcePort(u32),
    DestinationPort(u32),
}

impl Vary {
    pub fn flows(self) -> u32 {
        match self {
            Vary::Fixed => 1,
            Vary::SourcePort(n) | Vary::DestinationPort(n) => n,
        }
    }
}

/// The template of `flow`, its port varied as `vary` says.
pub fn template(flow: &Flow, vary: Vary) -> BenchTemplate {
    let frame = flow.frame();
    assert!(frame.len() <= TEMPLATE_MAX && frame.len().is_multiple_of(4));
    let mut template = BenchTemplate {
        len: frame.len() as u32,
        check_offset: UDP_CHECK,
        ..BenchTemplate::default()
    };
    template.frame[..frame.len()].copy_from_slice(&frame);
    match vary {
        Vary::Fixed => {}
        Vary::SourcePort(flows) => {
            template.flows = flows;
            template.port_offset = UDP_SOURCE_PORT;
            template.base_port = flow.src.port();
        }
        Vary::DestinationPort(flows) => {
            template.flows = flows;
            template.port_offset = UDP_DESTINATION_PORT;
            template.base_port = flow.dst.port();
        }
    }
    if u32::from(template.base_port) + template.flows.max(1) > 65536 {
        panic!("{vary:?} from port {} runs past 65535", template.base_port);
    }
    template
}

#[cfg(test)]
mod tests {
    use etherparse::{SlicedPacket, TransportSlice};

    use super::*;
    use crate::plan::{LAN_HOST, WAN_HOST};

    #[test]
    fn frame_is_minimum_size_udp_at_the_offsets_the_template_uses() {
        let flow = Flow {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: SocketAddrV4::new(LAN_HOST, 0x1234),
            dst: SocketAddrV4::new(WAN_HOST, 0x5678),
        };
        let frame = flow.frame();
        assert_eq!(frame.len(), FRAME_LEN);
        assert_eq!(frame[34..36], [0x12, 0x34]);
        assert_eq!(frame[36..38], [0x56, 0x78]);
        let sliced = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Udp(udp)) = sliced.transport else {
            panic!("not UDP");
        };
        assert_eq!(udp.checksum(), u16::from_be_bytes([frame[40], frame[41]]));
        assert_ne!(udp.checksum(), 0);

        let t = template(&flow, Vary::SourcePort(100));
        assert_eq!((t.port_offset, t.base_port, t.flows), (34, 0x1234, 100));
        let t = template(&flow, Vary::DestinationPort(7));
        assert_eq!((t.port_offset, t.base_port, t.flows), (36, 0x5678, 7));
    }
}
