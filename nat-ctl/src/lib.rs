//! The controller side of the NAT router: loading the XDP datapath, the
//! forwarding-rule model and its store, aging, and the control API.
pub mod aging;
pub mod api;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod datapath;
pub mod interfaces;
pub mod limiter;
pub mod metrics;
pub mod natpmp;
pub mod relay;
pub mod router_ports;
pub mod rules;
pub mod schedule;
pub mod store;
pub mod stun;
pub mod table;
pub mod upnp;
pub mod web;
