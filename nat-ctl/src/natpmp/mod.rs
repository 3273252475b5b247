//! NAT-PMP (RFC 6886) and PCP (RFC 6887) on the LAN side: one server on
//! UDP 5351 of the LAN address, bound to the LAN NIC, so nothing answers on
//! the WAN side.
//!
//! - `wire`: the datagram layouts, strict parsing, answers.
//! - `server`: the socket-free state machine over a [`server::Gateway`]
//!   (the daemon's rule transaction): mappings are rules with a NAT-PMP or
//!   PCP lease, under the IGD's policy (secure mode, permissions).
//! - `service`: the socket, the rate limit and the announcements.
pub mod server;
pub mod service;
pub mod wire;
