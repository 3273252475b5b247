//! The controller side of the NAT router: loading the XDP datapath, the
//! forwarding-rule model, and reading the NAT table back.
pub mod datapath;
pub mod interfaces;
pub mod rules;
pub mod table;
