//! The admin page (`[web] listen`): the router's web page on the LAN, one
//! more client of the daemon. Every change it makes is a control-API
//! request answered by the same code as the CLI's (and so goes through
//! `State::change`); it keeps nothing of the rules itself.
//!
//! - `server`: the HTTP server, its limits and its routes;
//! - `auth`: the password hash, sessions, CSRF tokens, the login limit;
//! - `form`: the port-forwarding form, parsed with the CLI's parsers;
//! - `pages`: the HTML (maud escapes every value);
//! - `assets`: the stylesheet and the script of the live chart.
mod assets;
pub mod auth;
pub mod form;
pub mod pages;
pub mod server;

use std::{net::SocketAddrV4, path::PathBuf};

use ipnet::Ipv4Net;

pub use self::server::{bind, serve};
use crate::{api::Request, rules::RuleError};

/// A refused request: the message the CLI would print, and the rule error
/// behind it when the rules were at fault.
#[derive(Clone, Debug)]
pub struct Refused {
    pub message: String,
    pub rule: Option<RuleError>,
}

/// What the page asks of the daemon.
pub trait Backend: Send + Sync + 'static {
    /// A control-API request, answered as the API answers it.
    fn request(&self, request: Request) -> Result<serde_json::Value, Refused>;
}

/// Where and how the page is served.
#[derive(Clone, Debug)]
pub struct WebConfig {
    pub listen: SocketAddrV4,
    pub lan_ifname: String,
    pub lan_net: Ipv4Net,
    /// Host names accepted besides the listen address.
    pub names: Vec<String>,
    pub password_file: PathBuf,
}
