//! The datagrams of NAT-PMP (RFC 6886, version 0) and PCP (RFC 6887,
//! version 2): their layouts, strict parsing of requests, and building of
//! answers. No sockets, no state: every layout is checked against the
//! RFCs' figures in the tests below.
//!
//! Reserved fields are sent as zero and ignored on reception, as both RFCs
//! require; everything else that is wrong (a length, a version, an opcode,
//! an option) is an error that names the bad value and carries the result
//! code to answer with.
use std::net::{Ipv4Addr, Ipv6Addr};

/// The server's port (both protocols).
pub const SERVER_PORT: u16 = 5351;
/// Where announcements go: the all-hosts group, the clients' port.
pub const ANNOUNCE_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
pub const ANNOUNCE_PORT: u16 = 5350;

pub const PMP_VERSION: u8 = 0;
pub const PCP_VERSION: u8 = 2;

/// NAT-PMP opcodes (RFC 6886 section 3); a response sets the top bit.
pub const PMP_OP_ADDRESS: u8 = 0;
pub const PMP_OP_MAP_UDP: u8 = 1;
pub const PMP_OP_MAP_TCP: u8 = 2;
pub const RESPONSE_BIT: u8 = 0x80;

/// PCP opcodes (RFC 6887 section 19.2).
pub const PCP_OP_ANNOUNCE: u8 = 0;
pub const PCP_OP_MAP: u8 = 1;
pub const PCP_OP_PEER: u8 = 2;

/// PCP option codes (RFC 6887 section 19.3); 128 and above may be ignored.
pub const OPTION_THIRD_PARTY: u8 = 1;
pub const OPTION_PREFER_FAILURE: u8 = 2;
pub const OPTION_FILTER: u8 = 3;
const OPTIONAL_OPTIONS: u8 = 128;

/// PCP sizes (RFC 6887 sections 7 and 8).
pub const PCP_HEADER_LEN: usize = 24;
pub const PCP_MAP_LEN: usize = 36;
pub const PCP_PEER_LEN: usize = 56;
pub const PCP_MAX_LEN: usize = 1100;

/// How long a client should assume an error stands (RFC 6887 section 7.4):
/// long for errors that need a change of configuration, short otherwise.
pub const LONG_ERROR_LIFETIME: u32 = 30 * 60;
pub const SHORT_ERROR_LIFETIME: u32 = 30;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// NAT-PMP result codes (RFC 6886 section 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum PmpResult {
    Success = 0,
    UnsupportedVersion = 1,
    /// "Not Authorized/Refused".
    Refused = 2,
    /// E.g. the gateway has no public address.
    NetworkFailure = 3,
    OutOfResources = 4,
    UnsupportedOpcode = 5,
}

/// PCP result codes (RFC 6887 section 7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PcpResult {
    Success = 0,
    UnsuppVersion = 1,
    NotAuthorized = 2,
    MalformedRequest = 3,
    UnsuppOpcode = 4,
    UnsuppOption = 5,
    MalformedOption = 6,
    NetworkFailure = 7,
    NoResources = 8,
    UnsuppProtocol = 9,
    UserExQuota = 10,
    CannotProvideExternal = 11,
    AddressMismatch = 12,
    ExcessiveRemotePeers = 13,
}

impl PcpResult {
    /// The lifetime an error response carries.
    pub fn error_lifetime(self) -> u32 {
        match self {
            PcpResult::Success => 0,
            PcpResult::NetworkFailure
            | PcpResult::NoResources
            | PcpResult::UserExQuota
            | PcpResult::CannotProvideExternal => SHORT_ERROR_LIFETIME,
            _ => LONG_ERROR_LIFETIME,
        }
    }
}

/// The transport a mapping is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapProtocol {
    Udp,
    Tcp,
}

impl MapProtocol {
    pub fn number(self) -> u8 {
        match self {
            MapProtocol::Udp => PROTO_UDP,
            MapProtocol::Tcp => PROTO_TCP,
        }
    }

    fn pmp_opcode(self) -> u8 {
        match self {
            MapProtocol::Udp => PMP_OP_MAP_UDP,
            MapProtocol::Tcp => PMP_OP_MAP_TCP,
        }
    }
}

// ---------------------------------------------------------------------------
// What arrives on port 5351
// ---------------------------------------------------------------------------

/// A datagram, sorted by version.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Pmp(Result<PmpRequest, PmpError>),
    Pcp(Result<PcpRequest, PcpError>),
    /// Not answered at all (RFC 6886 section 3.5, RFC 6887 section 8.3):
    /// too short to say what it is, or a response rather than a request.
    Ignored(Ignored),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("a datagram of {0} bytes, too short for a version and an opcode")]
    TooShort(usize),
    #[error("a response (opcode {0:#04x} has the response bit), not a request")]
    Response(u8),
}

/// Version negotiation (RFC 6887 section 9): version 0 is NAT-PMP, 2 is
/// PCP; any other version gets PCP's UNSUPP_VERSION with version 2.
pub fn classify(data: &[u8]) -> Incoming {
    if data.len() < 2 {
        return Incoming::Ignored(Ignored::TooShort(data.len()));
    }
    if data[1] & RESPONSE_BIT != 0 {
        return Incoming::Ignored(Ignored::Response(data[1]));
    }
    match data[0] {
        PMP_VERSION => Incoming::Pmp(parse_pmp(data)),
        _ => Incoming::Pcp(parse_pcp(data)),
    }
}

// ---------------------------------------------------------------------------
// NAT-PMP
// ---------------------------------------------------------------------------

/// A NAT-PMP request (RFC 6886 sections 3.2 and 3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmpRequest {
    /// Opcode 0: the public address.
    Address,
    /// Opcodes 1 (UDP) and 2 (TCP): create, renew or (lifetime 0) delete.
    Map(PmpMap),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmpMap {
    pub protocol: MapProtocol,
    pub internal_port: u16,
    pub suggested_external_port: u16,
    pub lifetime: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PmpError {
    #[error("NAT-PMP opcode {0} is not one of 0 (address), 1 (map UDP), 2 (map TCP)")]
    UnsupportedOpcode(u8),
    /// RFC 6886 has no result code for a malformed request: such a request
    /// is not answered (an answer would claim a result it never had).
    #[error("NAT-PMP opcode {opcode} request of {len} bytes: expected {expected}")]
    Length {
        opcode: u8,
        len: usize,
        expected: usize,
    },
}

fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn ipv6(data: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&data[at..at + 16]);
    Ipv6Addr::from(octets)
}

/// A version-0 datagram with the response bit clear.
pub fn parse_pmp(data: &[u8]) -> Result<PmpRequest, PmpError> {
    let opcode = data[1];
    let (expected, protocol) = match opcode {
        PMP_OP_ADDRESS => (2, None),
        PMP_OP_MAP_UDP => (12, Some(MapProtocol::Udp)),
        PMP_OP_MAP_TCP => (12, Some(MapProtocol::Tcp)),
        _ => return Err(PmpError::UnsupportedOpcode(opcode)),
    };
    if data.len() != expected {
        return Err(PmpError::Length {
            opcode,
            len: data.len(),
            expected,
        });
    }
    let Some(protocol) = protocol else {
        return Ok(PmpRequest::Address);
    };
    // Bytes 2-3 are reserved: ignored on reception (section 3.3).
    Ok(PmpRequest::Map(PmpMap {
        protocol,
        internal_port: be16(data, 4),
        suggested_external_port: be16(data, 6),
        lifetime: be32(data, 8),
    }))
}

/// A NAT-PMP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmpResponse {
    /// Opcode 128 (section 3.2): also the announcement.
    Address {
        result: PmpResult,
        epoch: u32,
        address: Ipv4Addr,
    },
    /// Opcodes 129 and 130 (section 3.3).
    Map {
        protocol: MapProtocol,
        result: PmpResult,
        epoch: u32,
        internal_port: u16,
        external_port: u16,
        lifetime: u32,
    },
    /// The 8-byte form of section 3.5: an unsupported version (opcode 128,
    /// as erratum 3618 corrects) or opcode (the request's, with the top bit).
    Error {
        opcode: u8,
        result: PmpResult,
        epoch: u32,
    },
}

impl PmpResponse {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        let head = |out: &mut Vec<u8>, opcode: u8, result: PmpResult, epoch: u32| {
            out.push(PMP_VERSION);
            out.push(opcode | RESPONSE_BIT);
            out.extend_from_slice(&(result as u16).to_be_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
        };
        match *self {
            PmpResponse::Address {
                result,
                epoch,
                address,
            } => {
                head(&mut out, PMP_OP_ADDRESS, result, epoch);
                out.extend_from_slice(&address.octets());
            }
            PmpResponse::Map {
                protocol,
                result,
                epoch,
                internal_port,
                external_port,
                lifetime,
            } => {
                head(&mut out, protocol.pmp_opcode(), result, epoch);
                out.extend_from_slice(&internal_port.to_be_bytes());
                out.extend_from_slice(&external_port.to_be_bytes());
                out.extend_from_slice(&lifetime.to_be_bytes());
            }
            PmpResponse::Error {
                opcode,
                result,
                epoch,
            } => head(&mut out, opcode, result, epoch),
        }
        out
    }
}

// ---------------------------------------------------------------------------
// PCP
// ---------------------------------------------------------------------------

/// The MAP opcode's fields (RFC 6887 section 11.1, figure 9); PEER's
/// first 36 bytes are the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapData {
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    /// Suggested in a request, assigned in a response.
    pub external_port: u16,
    pub external_addr: Ipv6Addr,
}

impl MapData {
    fn parse(data: &[u8]) -> Self {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&data[..12]);
        // 13..16 reserved.
        Self {
            nonce,
            protocol: data[12],
            internal_port: be16(data, 16),
            external_port: be16(data, 18),
            external_addr: ipv6(data, 20),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nonce);
        out.push(self.protocol);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.internal_port.to_be_bytes());
        out.extend_from_slice(&self.external_port.to_be_bytes());
        out.extend_from_slice(&self.external_addr.octets());
    }
}

/// The PEER opcode's fields (section 12.1, figure 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerData {
    pub map: MapData,
    pub remote_port: u16,
    pub remote_addr: Ipv6Addr,
}

/// The FILTER option (section 13.3, figure 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Of the 128-bit address: 96 + the IPv4 prefix for an IPv4 peer; 0
    /// removes every filter.
    pub prefix_len: u8,
    pub remote_port: u16,
    pub remote_addr: Ipv6Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcpOption {
    /// Section 13.1: the mapping is for this internal address instead.
    ThirdParty(Ipv6Addr),
    /// Section 13.2: the suggested port or nothing.
    PreferFailure,
    Filter(Filter),
}

impl PcpOption {
    fn code(&self) -> u8 {
        match self {
            PcpOption::ThirdParty(_) => OPTION_THIRD_PARTY,
            PcpOption::PreferFailure => OPTION_PREFER_FAILURE,
            PcpOption::Filter(_) => OPTION_FILTER,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        match self {
            PcpOption::ThirdParty(addr) => body.extend_from_slice(&addr.octets()),
            PcpOption::PreferFailure => {}
            PcpOption::Filter(filter) => {
                body.push(0);
                body.push(filter.prefix_len);
                body.extend_from_slice(&filter.remote_port.to_be_bytes());
                body.extend_from_slice(&filter.remote_addr.octets());
            }
        }
        out.push(self.code());
        out.push(0);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PcpBody {
    Announce,
    Map(MapData),
    Peer(PeerData),
}

/// A PCP request (section 7.1), options checked as section 7.3 says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcpRequest {
    pub opcode: u8,
    pub lifetime: u32,
    /// The client's address as it put it in the header (IPv4-mapped).
    pub client: Ipv6Addr,
    pub body: PcpBody,
    /// The options to process, in order; optional ones we do not know
    /// (code 128 and above) are left out.
    pub options: Vec<PcpOption>,
}

impl PcpRequest {
    pub fn third_party(&self) -> Option<Ipv6Addr> {
        self.options.iter().find_map(|option| match option {
            PcpOption::ThirdParty(addr) => Some(*addr),
            _ => None,
        })
    }

    pub fn prefer_failure(&self) -> bool {
        self.options.contains(&PcpOption::PreferFailure)
    }

    pub fn filters(&self) -> impl Iterator<Item = &Filter> {
        self.options.iter().filter_map(|option| match option {
            PcpOption::Filter(filter) => Some(filter),
            _ => None,
        })
    }
}

/// What was wrong with a PCP request; [`PcpError::result`] is the code to
/// answer with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PcpProblem {
    #[error("version {0}: this server speaks PCP version 2 (and NAT-PMP, version 0)")]
    Version(u8),
    #[error("a request of {0} bytes: PCP requests are 24 to 1100 bytes, a multiple of 4")]
    Length(usize),
    #[error("opcode {0} is not one of 0 (ANNOUNCE), 1 (MAP), 2 (PEER)")]
    Opcode(u8),
    #[error("opcode {opcode} needs {needed} bytes of opcode data, the request has {got}")]
    ShortBody {
        opcode: u8,
        needed: usize,
        got: usize,
    },
    #[error("option {code}: {len} bytes of data run past the end of the request")]
    OptionOverrun { code: u8, len: usize },
    #[error("option {code}: length {len}, expected {expected}")]
    OptionLength {
        code: u8,
        len: usize,
        expected: usize,
    },
    #[error("option {code} is not valid with opcode {opcode}")]
    OptionNotForOpcode { code: u8, opcode: u8 },
    #[error("option {0} appears more than once")]
    OptionRepeated(u8),
    #[error("option {0} is not supported (mandatory options are 1 to 3)")]
    UnknownOption(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct PcpError {
    pub problem: PcpProblem,
    pub result: PcpResult,
    /// The request's opcode, for the response.
    pub opcode: u8,
    /// The request's opcode data when it could be read, copied into the
    /// error response (section 7.2).
    pub body: Option<PcpBody>,
}

fn pcp_error(problem: PcpProblem, opcode: u8, body: Option<PcpBody>) -> PcpError {
    let result = match &problem {
        PcpProblem::Version(_) => PcpResult::UnsuppVersion,
        PcpProblem::Length(_) | PcpProblem::ShortBody { .. } => PcpResult::MalformedRequest,
        PcpProblem::Opcode(_) => PcpResult::UnsuppOpcode,
        PcpProblem::UnknownOption(_) => PcpResult::UnsuppOption,
        PcpProblem::OptionOverrun { .. }
        | PcpProblem::OptionLength { .. }
        | PcpProblem::OptionNotForOpcode { .. }
        | PcpProblem::OptionRepeated(_) => PcpResult::MalformedOption,
    };
    PcpError {
        problem,
        result,
        opcode,
        body,
    }
}

/// A datagram of any version but 0, with the response bit clear.
pub fn parse_pcp(data: &[u8]) -> Result<PcpRequest, PcpError> {
    let opcode = data[1] & !RESPONSE_BIT;
    if data[0] != PCP_VERSION {
        return Err(pcp_error(PcpProblem::Version(data[0]), opcode, None));
    }
    if data.len() < PCP_HEADER_LEN || data.len() > PCP_MAX_LEN || !data.len().is_multiple_of(4) {
        return Err(pcp_error(PcpProblem::Length(data.len()), opcode, None));
    }
    // Bytes 2-3 are reserved.
    let lifetime = be32(data, 4);
    let client = ipv6(data, 8);
    let rest = &data[PCP_HEADER_LEN..];
    let needed = match opcode {
        PCP_OP_ANNOUNCE => 0,
        PCP_OP_MAP => PCP_MAP_LEN,
        PCP_OP_PEER => PCP_PEER_LEN,
        _ => return Err(pcp_error(PcpProblem::Opcode(opcode), opcode, None)),
    };
    if rest.len() < needed {
        return Err(pcp_error(
            PcpProblem::ShortBody {
                opcode,
                needed,
                got: rest.len(),
            },
            opcode,
            None,
        ));
    }
    let body = match opcode {
        PCP_OP_MAP => PcpBody::Map(MapData::parse(rest)),
        PCP_OP_PEER => PcpBody::Peer(PeerData {
            map: MapData::parse(rest),
            remote_port: be16(rest, 36),
            // 38..40 reserved.
            remote_addr: ipv6(rest, 40),
        }),
        _ => PcpBody::Announce,
    };
    let options = parse_options(&rest[needed..], opcode)
        .map_err(|problem| pcp_error(problem, opcode, Some(body.clone())))?;
    Ok(PcpRequest {
        opcode,
        lifetime,
        client,
        body,
        options,
    })
}

fn parse_options(mut data: &[u8], opcode: u8) -> Result<Vec<PcpOption>, PcpProblem> {
    let mut options = Vec::new();
    while !data.is_empty() {
        // The request's length is a multiple of 4, so 4 bytes are there.
        let code = data[0];
        let len = usize::from(be16(data, 2));
        let padded = len.div_ceil(4) * 4;
        if 4 + padded > data.len() {
            return Err(PcpProblem::OptionOverrun { code, len });
        }
        let value = &data[4..4 + len];
        data = &data[4 + padded..];
        let (expected, allowed) = match code {
            OPTION_THIRD_PARTY => (16, opcode == PCP_OP_MAP || opcode == PCP_OP_PEER),
            OPTION_PREFER_FAILURE => (0, opcode == PCP_OP_MAP),
            OPTION_FILTER => (20, opcode == PCP_OP_MAP),
            OPTIONAL_OPTIONS.. => continue,
            _ => return Err(PcpProblem::UnknownOption(code)),
        };
        if !allowed {
            return Err(PcpProblem::OptionNotForOpcode { code, opcode });
        }
        if len != expected {
            return Err(PcpProblem::OptionLength {
                code,
                len,
                expected,
            });
        }
        let option = match code {
            OPTION_THIRD_PARTY => PcpOption::ThirdParty(ipv6(value, 0)),
            OPTION_PREFER_FAILURE => PcpOption::PreferFailure,
            _ => PcpOption::Filter(Filter {
                prefix_len: value[1],
                remote_port: be16(value, 2),
                remote_addr: ipv6(value, 4),
            }),
        };
        if code != OPTION_FILTER && options.iter().any(|o: &PcpOption| o.code() == code) {
            return Err(PcpProblem::OptionRepeated(code));
        }
        options.push(option);
    }
    Ok(options)
}

/// A PCP response (section 7.2, figure 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcpResponse {
    pub opcode: u8,
    pub result: PcpResult,
    pub lifetime: u32,
    pub epoch: u32,
    pub body: Option<PcpBody>,
    pub options: Vec<PcpOption>,
}

impl PcpResponse {
    /// An error answer, from what could be read of the request.
    pub fn error(error: &PcpError, epoch: u32) -> Self {
        Self {
            opcode: error.opcode,
            result: error.result,
            lifetime: error.result.error_lifetime(),
            epoch,
            body: error.body.clone(),
            options: Vec::new(),
        }
    }

    /// The unsolicited ANNOUNCE (section 14.1.3).
    pub fn announce(epoch: u32) -> Self {
        Self {
            opcode: PCP_OP_ANNOUNCE,
            result: PcpResult::Success,
            lifetime: 0,
            epoch,
            body: None,
            options: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PCP_HEADER_LEN + PCP_PEER_LEN);
        out.push(PCP_VERSION);
        out.push(self.opcode | RESPONSE_BIT);
        out.push(0);
        out.push(self.result as u8);
        out.extend_from_slice(&self.lifetime.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&[0; 12]);
        match &self.body {
            None | Some(PcpBody::Announce) => {}
            Some(PcpBody::Map(map)) => map.write(&mut out),
            Some(PcpBody::Peer(peer)) => {
                peer.map.write(&mut out);
                out.extend_from_slice(&peer.remote_port.to_be_bytes());
                out.extend_from_slice(&[0; 2]);
                out.extend_from_slice(&peer.remote_addr.octets());
            }
        }
        for option in &self.options {
            option.write(&mut out);
        }
        out.truncate(PCP_MAX_LEN);
        out
    }
}

/// An IPv4 address as PCP carries it (IPv4-mapped IPv6, section 5).
pub fn mapped(addr: Ipv4Addr) -> Ipv6Addr {
    addr.to_ipv6_mapped()
}

/// The IPv4 address in an IPv4-mapped field, if it is one.
pub fn unmapped(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    addr.to_ipv4_mapped()
}

/// A request as a client builds it: for the tests, the fuzz target's
/// round trips and the benchmark.
pub fn pcp_request_bytes(request: &PcpRequest) -> Vec<u8> {
    let mut out = vec![PCP_VERSION, request.opcode, 0, 0];
    out.extend_from_slice(&request.lifetime.to_be_bytes());
    out.extend_from_slice(&request.client.octets());
    match &request.body {
        PcpBody::Announce => {}
        PcpBody::Map(map) => map.write(&mut out),
        PcpBody::Peer(peer) => {
            peer.map.write(&mut out);
            out.extend_from_slice(&peer.remote_port.to_be_bytes());
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(&peer.remote_addr.octets());
        }
    }
    for option in &request.options {
        option.write(&mut out);
    }
    out
}

/// A NAT-PMP map request as a client builds it (RFC 6886 figure 3.3).
pub fn pmp_map_bytes(map: &PmpMap) -> Vec<u8> {
    let mut out = vec![PMP_VERSION, map.protocol.pmp_opcode(), 0, 0];
    out.extend_from_slice(&map.internal_port.to_be_bytes());
    out.extend_from_slice(&map.suggested_external_port.to_be_bytes());
    out.extend_from_slice(&map.lifetime.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_data() -> MapData {
        MapData {
            nonce: *b"0123456789ab",
            protocol: PROTO_TCP,
            internal_port: 6881,
            external_port: 7000,
            external_addr: mapped(Ipv4Addr::new(203, 0, 113, 1)),
        }
    }

    fn map_request(options: Vec<PcpOption>) -> PcpRequest {
        PcpRequest {
            opcode: PCP_OP_MAP,
            lifetime: 3600,
            client: mapped(Ipv4Addr::new(192, 168, 0, 12)),
            body: PcpBody::Map(map_data()),
            options,
        }
    }

    #[test]
    fn pmp_address_request_and_response_layouts() {
        // RFC 6886 3.2: a request is version and opcode only.
        assert_eq!(classify(&[0, 0]), Incoming::Pmp(Ok(PmpRequest::Address)));
        let response = PmpResponse::Address {
            result: PmpResult::Success,
            epoch: 0x0102_0304,
            address: Ipv4Addr::new(203, 0, 113, 1),
        };
        assert_eq!(
            response.to_bytes(),
            [0, 128, 0, 0, 1, 2, 3, 4, 203, 0, 113, 1]
        );
    }

    #[test]
    fn pmp_map_request_and_response_layouts() {
        // RFC 6886 3.3: vers, op, reserved, internal, suggested, lifetime.
        let bytes = [0, 2, 0xff, 0xff, 0x1a, 0xe1, 0x1b, 0x58, 0, 0, 0x1c, 0x20];
        let expected = PmpMap {
            protocol: MapProtocol::Tcp,
            internal_port: 6881,
            suggested_external_port: 7000,
            lifetime: 7200,
        };
        // The reserved field is ignored on reception.
        assert_eq!(
            classify(&bytes),
            Incoming::Pmp(Ok(PmpRequest::Map(expected)))
        );
        assert_eq!(pmp_map_bytes(&expected)[4..], bytes[4..]);
        let response = PmpResponse::Map {
            protocol: MapProtocol::Udp,
            result: PmpResult::Success,
            epoch: 9,
            internal_port: 6881,
            external_port: 7000,
            lifetime: 3600,
        };
        assert_eq!(
            response.to_bytes(),
            [
                0, 129, 0, 0, 0, 0, 0, 9, 0x1a, 0xe1, 0x1b, 0x58, 0, 0, 0x0e, 0x10
            ]
        );
    }

    #[test]
    fn pmp_errors_name_the_bad_value() {
        assert_eq!(
            classify(&[0, 3, 0, 0]),
            Incoming::Pmp(Err(PmpError::UnsupportedOpcode(3)))
        );
        let Incoming::Pmp(Err(error)) = classify(&[0, 1, 0, 0]) else {
            panic!("a short map request must be an error");
        };
        assert_eq!(
            error,
            PmpError::Length {
                opcode: 1,
                len: 4,
                expected: 12
            }
        );
        assert!(error.to_string().contains("4 bytes"), "{error}");
        assert!(matches!(
            classify(&[0, 0, 0]),
            Incoming::Pmp(Err(PmpError::Length { len: 3, .. }))
        ));
        // Section 3.5 (with erratum 3618): 8 bytes, opcode 128 | request's.
        let error = PmpResponse::Error {
            opcode: 0,
            result: PmpResult::UnsupportedVersion,
            epoch: 5,
        };
        assert_eq!(error.to_bytes(), [0, 128, 0, 1, 0, 0, 0, 5]);
    }

    #[test]
    fn responses_and_runts_are_ignored() {
        assert_eq!(classify(&[0]), Incoming::Ignored(Ignored::TooShort(1)));
        assert_eq!(classify(&[]), Incoming::Ignored(Ignored::TooShort(0)));
        assert_eq!(
            classify(&[0, 128, 0, 0]),
            Incoming::Ignored(Ignored::Response(128))
        );
        assert_eq!(
            classify(&[2, 0x81]),
            Incoming::Ignored(Ignored::Response(0x81))
        );
    }

    #[test]
    fn pcp_map_request_layout_round_trips() {
        let request = map_request(vec![
            PcpOption::PreferFailure,
            PcpOption::Filter(Filter {
                prefix_len: 120,
                remote_port: 0,
                remote_addr: mapped(Ipv4Addr::new(198, 51, 100, 0)),
            }),
        ]);
        let bytes = pcp_request_bytes(&request);
        // RFC 6887 figures 2, 9, 13, 15: 24 + 36 + 4 + 24 bytes.
        assert_eq!(bytes.len(), 24 + 36 + 4 + 24);
        assert_eq!(&bytes[..4], &[2, 1, 0, 0]);
        assert_eq!(&bytes[4..8], &3600u32.to_be_bytes());
        assert_eq!(
            &bytes[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 0, 12]
        );
        assert_eq!(&bytes[24..36], b"0123456789ab");
        assert_eq!(&bytes[36..40], &[6, 0, 0, 0]);
        assert_eq!(&bytes[40..44], &[0x1a, 0xe1, 0x1b, 0x58]);
        assert_eq!(&bytes[56..60], &[0xff, 0xff, 203, 0, 113, 1][2..]);
        assert_eq!(&bytes[60..64], &[OPTION_PREFER_FAILURE, 0, 0, 0]);
        assert_eq!(&bytes[64..68], &[OPTION_FILTER, 0, 0, 20]);
        assert_eq!(&bytes[68..72], &[0, 120, 0, 0]);
        assert_eq!(classify(&bytes), Incoming::Pcp(Ok(request)));
    }

    #[test]
    fn pcp_response_layout() {
        let response = PcpResponse {
            opcode: PCP_OP_MAP,
            result: PcpResult::Success,
            lifetime: 7200,
            epoch: 42,
            body: Some(PcpBody::Map(map_data())),
            options: vec![],
        };
        let bytes = response.to_bytes();
        assert_eq!(bytes.len(), 60);
        // Figure 3: version, R + opcode, reserved, result, lifetime, epoch,
        // 96 reserved bits.
        assert_eq!(&bytes[..4], &[2, 0x81, 0, 0]);
        assert_eq!(&bytes[4..8], &7200u32.to_be_bytes());
        assert_eq!(&bytes[8..12], &42u32.to_be_bytes());
        assert_eq!(&bytes[12..24], &[0; 12]);
        assert_eq!(&bytes[24..36], b"0123456789ab");
        let announce = PcpResponse::announce(7).to_bytes();
        assert_eq!(
            announce,
            [
                2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn pcp_peer_layout() {
        let request = PcpRequest {
            opcode: PCP_OP_PEER,
            lifetime: 60,
            client: mapped(Ipv4Addr::new(192, 168, 0, 12)),
            body: PcpBody::Peer(PeerData {
                map: map_data(),
                remote_port: 443,
                remote_addr: mapped(Ipv4Addr::new(198, 51, 100, 7)),
            }),
            options: vec![],
        };
        let bytes = pcp_request_bytes(&request);
        assert_eq!(bytes.len(), 24 + 56);
        assert_eq!(&bytes[60..64], &[1, 0xbb, 0, 0]);
        assert_eq!(classify(&bytes), Incoming::Pcp(Ok(request)));
    }

    fn pcp_err(bytes: &[u8]) -> PcpError {
        match classify(bytes) {
            Incoming::Pcp(Err(error)) => error,
            other => panic!("expected a PCP error, got {other:?}"),
        }
    }

    #[test]
    fn pcp_errors_carry_their_result_codes() {
        let good = pcp_request_bytes(&map_request(vec![]));
        // Versions other than 0 and 2.
        for version in [1u8, 3, 255] {
            let mut bytes = good.clone();
            bytes[0] = version;
            let error = pcp_err(&bytes);
            assert_eq!(error.result, PcpResult::UnsuppVersion);
            assert!(error.to_string().contains(&format!("version {version}")));
        }
        // Lengths: too short, not a multiple of 4, too long.
        for len in [4usize, 23, 62] {
            let mut bytes = good.clone();
            bytes.resize(len, 0);
            assert_eq!(pcp_err(&bytes).result, PcpResult::MalformedRequest, "{len}");
        }
        let mut long = good.clone();
        long.resize(1104, 0);
        assert_eq!(pcp_err(&long).problem, PcpProblem::Length(1104));
        // A MAP without its 36 bytes.
        let mut short = good.clone();
        short.truncate(48);
        assert_eq!(
            pcp_err(&short).problem,
            PcpProblem::ShortBody {
                opcode: 1,
                needed: 36,
                got: 24
            }
        );
        // Unknown opcode.
        let mut bytes = good.clone();
        bytes[1] = 5;
        assert_eq!(pcp_err(&bytes).result, PcpResult::UnsuppOpcode);
        // A mandatory option we do not know; an optional one is skipped.
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[9, 0, 0, 0]);
        assert_eq!(pcp_err(&bytes).problem, PcpProblem::UnknownOption(9));
        let error = pcp_err(&bytes);
        assert_eq!(error.result, PcpResult::UnsuppOption);
        assert!(error.body.is_some(), "the MAP data is copied back");
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[200, 0, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(classify(&bytes), Incoming::Pcp(Ok(_))));
        // Options that overrun, have the wrong length, repeat, or do not
        // belong to the opcode.
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[OPTION_FILTER, 0, 0, 20, 0, 0, 0, 0]);
        assert_eq!(pcp_err(&bytes).result, PcpResult::MalformedOption);
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[OPTION_PREFER_FAILURE, 0, 0, 4, 0, 0, 0, 0]);
        assert_eq!(
            pcp_err(&bytes).problem,
            PcpProblem::OptionLength {
                code: 2,
                len: 4,
                expected: 0
            }
        );
        let mut bytes = good.clone();
        bytes.extend_from_slice(&[
            OPTION_PREFER_FAILURE,
            0,
            0,
            0,
            OPTION_PREFER_FAILURE,
            0,
            0,
            0,
        ]);
        assert_eq!(pcp_err(&bytes).problem, PcpProblem::OptionRepeated(2));
        let mut announce = good[..24].to_vec();
        announce[1] = PCP_OP_ANNOUNCE;
        announce.extend_from_slice(&[OPTION_PREFER_FAILURE, 0, 0, 0]);
        assert_eq!(
            pcp_err(&announce).problem,
            PcpProblem::OptionNotForOpcode { code: 2, opcode: 0 }
        );
        // Error responses: the error's lifetime and the copied MAP data.
        let response = PcpResponse::error(&pcp_err(&bytes), 3).to_bytes();
        assert_eq!(
            &response[..4],
            &[2, 0x81, 0, PcpResult::MalformedOption as u8]
        );
        assert_eq!(&response[4..8], &LONG_ERROR_LIFETIME.to_be_bytes());
        assert_eq!(response.len(), 60);
    }
}
