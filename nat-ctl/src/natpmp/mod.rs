//! NAT-PMP (RFC 6886) and PCP (RFC 6887) on the LAN side: one server on
//! UDP 5351 of the LAN address, bound to the LAN NIC, so nothing answers on
//! the WAN side.
//!
//! - `wire`: the datagram layouts, strict parsing, answers.
//! - `mapping`: the mapping model both share, over a [`mapping::Gateway`]
//!   (the daemon's rule transaction): mappings are rules with a NAT-PMP or
//!   PCP lease, under the IGD's policy (secure mode, permissions).
//! - `server`: the socket-free state machine: a datagram in, the answer
//!   out, each request translated into the mapping model.
//! - `service`: the socket, the rate limit and the announcements.
pub mod mapping;
pub mod server;
pub mod service;
#[cfg(test)]
mod testing;
pub mod wire;
