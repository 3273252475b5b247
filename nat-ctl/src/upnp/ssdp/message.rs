//! The SSDP messages themselves, as pure functions of their inputs: the
//! parsing of an M-SEARCH, what of ours matches its ST, and the search
//! responses and NOTIFYs that go out.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{SystemTime, UNIX_EPOCH},
};

use super::SsdpError;
use crate::upnp::{
    DEVICE_IGD, DEVICE_WAN, DEVICE_WAN_CONNECTION, Identity, IgdVersion, SERVICE_WAN_COMMON,
    SERVICE_WAN_IP, type_urn,
};

pub const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
pub const SSDP_PORT: u16 = 1900;

/// UDA limits SSDP messages to what fits in one unfragmented datagram; real
/// searches are under 300 bytes.
pub const MAX_DATAGRAM: usize = 2048;
/// Header lines after the request line.
pub const MAX_HEADERS: usize = 32;
/// UDA: an MX above 5 is to be treated as 5.
pub const MAX_MX: u8 = 5;
/// Untrusted text quoted in errors and logs is cut to this many characters.
const QUOTE_LIMIT: usize = 64;

/// An M-SEARCH, as far as the IGD cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchRequest {
    pub st: String,
    /// Required for multicast searches only; the caller knows which it got.
    /// Values above [`MAX_MX`] are already clamped to it.
    pub mx: Option<u8>,
    pub host: Option<String>,
    pub user_agent: Option<String>,
}

impl SearchRequest {
    /// A plain `recvfrom` does not tell the destination address, so the HOST
    /// header stands for it.
    pub fn is_multicast(&self) -> bool {
        self.host
            .as_deref()
            .is_some_and(|host| host == "239.255.255.250:1900" || host == "239.255.255.250")
    }
}

pub(super) fn quote(text: &str) -> String {
    text.chars().take(QUOTE_LIMIT).collect()
}

/// RFC 7230 `tchar`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Header values must never carry what could end a line or hide in a log.
pub(super) fn is_clean(text: &str) -> bool {
    text.chars().all(|c| c == '\t' || !c.is_control())
}

fn set_once(slot: &mut Option<String>, name: &'static str, value: &str) -> Result<(), SsdpError> {
    if slot.is_some() {
        return Err(SsdpError::DuplicateHeader(name));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

fn parse_mx(value: &str) -> Result<u8, SsdpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SsdpError::BadMx(quote(value)));
    }
    // Any number of digits is a valid (huge) MX; only its clamped value
    // matters, so nothing here can overflow.
    let digits = value.trim_start_matches('0');
    if digits.len() > 3 {
        return Ok(MAX_MX);
    }
    let number: u16 = digits.parse().unwrap_or(0);
    Ok(number.min(u16::from(MAX_MX)) as u8)
}

/// Parses an SSDP M-SEARCH. Total: any input gives a value or an error.
///
/// A datagram holds exactly one message, so headers may end with the
/// datagram instead of with a blank line (some control points omit it).
pub fn parse_search(datagram: &[u8]) -> Result<SearchRequest, SsdpError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(SsdpError::TooLarge(datagram.len()));
    }
    let text = std::str::from_utf8(datagram).map_err(|_| SsdpError::NotUtf8)?;
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));

    let request_line = lines.next().unwrap_or_default();
    if request_line != "M-SEARCH * HTTP/1.1" {
        return Err(SsdpError::BadRequestLine(quote(request_line)));
    }

    let (mut man, mut st, mut mx, mut host, mut user_agent) = (None, None, None, None, None);
    let mut count = 0;
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(SsdpError::TooManyHeaders);
        }
        // Obsolete line folding is refused along with everything else that
        // is not `name: value` on one line.
        let (name, value) = line.split_once(':').ok_or(SsdpError::BadHeader(count))?;
        if name.is_empty() || !name.chars().all(is_token_char) || !is_clean(value) {
            return Err(SsdpError::BadHeader(count));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("MAN") {
            set_once(&mut man, "MAN", value)?;
        } else if name.eq_ignore_ascii_case("ST") {
            set_once(&mut st, "ST", value)?;
        } else if name.eq_ignore_ascii_case("MX") {
            set_once(&mut mx, "MX", value)?;
        } else if name.eq_ignore_ascii_case("HOST") {
            set_once(&mut host, "HOST", value)?;
        } else if name.eq_ignore_ascii_case("USER-AGENT") {
            set_once(&mut user_agent, "USER-AGENT", value)?;
        }
    }
    if lines.any(|line| !line.is_empty()) {
        return Err(SsdpError::UnexpectedBody);
    }

    if man.as_deref() != Some("\"ssdp:discover\"") {
        return Err(SsdpError::BadMan);
    }
    let st = st.filter(|st| !st.is_empty()).ok_or(SsdpError::MissingSt)?;
    let mx = mx.as_deref().map(parse_mx).transpose()?;
    Ok(SearchRequest {
        st,
        mx,
        host,
        user_agent,
    })
}

/// The devices of the IGD tree, each with its uuid.
fn devices(identity: &Identity) -> [(&'static str, &str); 3] {
    [
        (DEVICE_IGD, &identity.uuids[0]),
        (DEVICE_WAN, &identity.uuids[1]),
        (DEVICE_WAN_CONNECTION, &identity.uuids[2]),
    ]
}

/// The services, each with the uuid of the device that holds it.
fn services(identity: &Identity) -> [(&'static str, &str); 2] {
    [
        (SERVICE_WAN_COMMON, &identity.uuids[1]),
        (SERVICE_WAN_IP, &identity.uuids[2]),
    ]
}

fn our_version(base: &str, igd: IgdVersion) -> u8 {
    type_urn(base, igd)
        .rsplit_once(':')
        .and_then(|(_, version)| version.parse().ok())
        .unwrap_or(1)
}

/// A type version as UDA writes it: a positive decimal without leading
/// zeros, so that the ST we echo is always in canonical form.
fn parse_version(text: &str) -> Option<u8> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Everything the gateway announces: (NT, USN) for each NOTIFY round.
pub fn announcements(identity: &Identity, igd: IgdVersion) -> Vec<(String, String)> {
    let root = &identity.uuids[0];
    let mut all = vec![(
        "upnp:rootdevice".to_owned(),
        format!("uuid:{root}::upnp:rootdevice"),
    )];
    all.extend(
        identity
            .uuids
            .iter()
            .map(|uuid| (format!("uuid:{uuid}"), format!("uuid:{uuid}"))),
    );
    for (base, uuid) in devices(identity).into_iter().chain(services(identity)) {
        let urn = type_urn(base, igd);
        all.push((urn.clone(), format!("uuid:{uuid}::{urn}")));
    }
    all
}

/// The (ST, USN) pairs that answer a search for `st`; empty when nothing of
/// ours matches. A type searched at a lower version than ours is answered at
/// the version searched, as UDA requires of backward-compatible devices.
pub fn matches(st: &str, identity: &Identity, igd: IgdVersion) -> Vec<(String, String)> {
    if st == "ssdp:all" {
        return announcements(identity, igd);
    }
    if st == "upnp:rootdevice" {
        let root = &identity.uuids[0];
        return vec![(st.to_owned(), format!("uuid:{root}::upnp:rootdevice"))];
    }
    if let Some(wanted) = st.strip_prefix("uuid:") {
        // UUIDs are hexadecimal, whose case carries no meaning.
        return identity
            .uuids
            .iter()
            .find(|uuid| uuid.eq_ignore_ascii_case(wanted))
            .map(|uuid| vec![(format!("uuid:{uuid}"), format!("uuid:{uuid}"))])
            .unwrap_or_default();
    }
    let Some((base, version)) = st.rsplit_once(':') else {
        return Vec::new();
    };
    let Some(version) = parse_version(version) else {
        return Vec::new();
    };
    devices(identity)
        .into_iter()
        .chain(services(identity))
        .filter(|&(ours, _)| ours == base && version <= our_version(ours, igd))
        .map(|(ours, uuid)| {
            let urn = format!("{ours}:{version}");
            let usn = format!("uuid:{uuid}::{urn}");
            (urn, usn)
        })
        .collect()
}

/// An RFC 1123 date (`Sun, 06 Nov 1994 08:49:37 GMT`), as HTTP's DATE wants.
pub fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // A clock before 1970 is broken; the epoch is as good a date as any.
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01 (which
/// are never negative here).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The unicast answer to a search, for one (ST, USN).
pub fn search_response(
    st: &str,
    usn: &str,
    location: &str,
    identity: &Identity,
    max_age: u32,
) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n\
         CACHE-CONTROL: max-age={max_age}\r\n\
         DATE: {date}\r\n\
         EXT:\r\n\
         LOCATION: {location}\r\n\
         SERVER: {server}\r\n\
         ST: {st}\r\n\
         USN: {usn}\r\n\
         BOOTID.UPNP.ORG: {boot}\r\n\
         CONFIGID.UPNP.ORG: {config}\r\n\
         \r\n",
        date = http_date(SystemTime::now()),
        server = identity.server,
        boot = identity.boot_id,
        config = identity.config_id,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    Alive,
    ByeBye,
}

/// A multicast NOTIFY for one (NT, USN). A byebye carries no LOCATION,
/// CACHE-CONTROL or SERVER: it only withdraws.
pub fn notify(
    kind: NotifyKind,
    nt: &str,
    usn: &str,
    location: &str,
    identity: &Identity,
    max_age: u32,
) -> String {
    let host = SocketAddrV4::new(SSDP_GROUP, SSDP_PORT);
    let (boot, config) = (identity.boot_id, identity.config_id);
    match kind {
        NotifyKind::Alive => format!(
            "NOTIFY * HTTP/1.1\r\n\
             HOST: {host}\r\n\
             CACHE-CONTROL: max-age={max_age}\r\n\
             LOCATION: {location}\r\n\
             NT: {nt}\r\n\
             NTS: ssdp:alive\r\n\
             SERVER: {server}\r\n\
             USN: {usn}\r\n\
             BOOTID.UPNP.ORG: {boot}\r\n\
             CONFIGID.UPNP.ORG: {config}\r\n\
             \r\n",
            server = identity.server,
        ),
        NotifyKind::ByeBye => format!(
            "NOTIFY * HTTP/1.1\r\n\
             HOST: {host}\r\n\
             NT: {nt}\r\n\
             NTS: ssdp:byebye\r\n\
             USN: {usn}\r\n\
             BOOTID.UPNP.ORG: {boot}\r\n\
             CONFIGID.UPNP.ORG: {config}\r\n\
             \r\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::Rng;

    use super::{super::fixtures::*, *};

    #[test]
    fn parses_upnpc_search() {
        let search = parse_search(UPNPC_SEARCH).unwrap();
        assert_eq!(
            search,
            SearchRequest {
                st: "urn:schemas-upnp-org:device:InternetGatewayDevice:1".to_owned(),
                mx: Some(2),
                host: Some("239.255.255.250:1900".to_owned()),
                user_agent: None,
            }
        );
        assert!(search.is_multicast());
    }

    #[test]
    fn parses_lowercase_headers_bare_lf_and_unknown_headers() {
        let text = b"M-SEARCH * HTTP/1.1\nhost:192.168.0.1:1900\nman:\"ssdp:discover\"\nst:ssdp:all\nuser-agent: Foo/1 UPnP/1.1 Bar/2\nx-custom: whatever\ncpfn.upnp.org: cp\n\n";
        let search = parse_search(text).unwrap();
        assert_eq!(search.st, "ssdp:all");
        assert_eq!(search.mx, None);
        assert_eq!(search.host.as_deref(), Some("192.168.0.1:1900"));
        assert_eq!(search.user_agent.as_deref(), Some("Foo/1 UPnP/1.1 Bar/2"));
        assert!(!search.is_multicast());
    }

    #[test]
    fn accepts_a_search_ending_without_blank_line() {
        let text = b"M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\nST: upnp:rootdevice\r\nMX: 1";
        assert_eq!(parse_search(text).unwrap().mx, Some(1));
    }

    #[test]
    fn requires_man_and_st() {
        let no_man = b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\nMX: 1\r\n\r\n";
        assert!(matches!(parse_search(no_man), Err(SsdpError::BadMan)));
        let unquoted = b"M-SEARCH * HTTP/1.1\r\nMAN: ssdp:discover\r\nST: ssdp:all\r\n\r\n";
        assert!(matches!(parse_search(unquoted), Err(SsdpError::BadMan)));
        let no_st = b"M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n";
        assert!(matches!(parse_search(no_st), Err(SsdpError::MissingSt)));
        let empty_st = b"M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\nST:  \r\n\r\n";
        assert!(matches!(parse_search(empty_st), Err(SsdpError::MissingSt)));
    }

    #[test]
    fn mx_is_strict_and_clamped() {
        for bad in ["-1", "abc", "", "1.5", "+2", "2 3"] {
            assert!(
                matches!(
                    parse_search(&search("ssdp:all", Some(bad))),
                    Err(SsdpError::BadMx(_))
                ),
                "MX {bad:?}"
            );
        }
        for (mx, expected) in [
            ("0", 0),
            ("3", 3),
            ("5", 5),
            ("6", 5),
            ("120", 5),
            ("007", 5),
            ("99999999999999999999999", 5),
        ] {
            let parsed = parse_search(&search("ssdp:all", Some(mx))).unwrap();
            assert_eq!(parsed.mx, Some(expected), "MX {mx:?}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        let oversize = [b'a'; MAX_DATAGRAM + 1];
        assert!(matches!(
            parse_search(&oversize),
            Err(SsdpError::TooLarge(_))
        ));
        // Exactly at the limit is fine, one byte more is not.
        let head = "M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\nX-Pad: ";
        let pad = "p".repeat(MAX_DATAGRAM - head.len() - 4);
        let limit = format!("{head}{pad}\r\n\r\n");
        assert_eq!(limit.len(), MAX_DATAGRAM);
        assert!(parse_search(limit.as_bytes()).is_ok());
        let over = format!("{head}{pad}p\r\n\r\n");
        assert!(matches!(
            parse_search(over.as_bytes()),
            Err(SsdpError::TooLarge(2049))
        ));

        let mut many =
            String::from("M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n");
        for i in 0..MAX_HEADERS - 2 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        assert!(parse_search(format!("{many}\r\n").as_bytes()).is_ok());
        many.push_str("X-last: y\r\n\r\n");
        assert!(matches!(
            parse_search(many.as_bytes()),
            Err(SsdpError::TooManyHeaders)
        ));

        for bad in [
            &b""[..],
            b"\r\n",
            b"\x00\x01\x02garbage\xff",
            b"m-search * HTTP/1.1\r\n\r\n",
            b"M-SEARCH * HTTP/1.0\r\n\r\n",
            b"M-SEARCH  * HTTP/1.1\r\n\r\n",
            b"NOTIFY * HTTP/1.1\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nMAN \"ssdp:discover\"\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\n : x\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nST: a\r\n folded\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nST: a\rb\r\nMAN: \"ssdp:discover\"\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nST: a\r\nST: b\r\nMAN: \"ssdp:discover\"\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nST: a\r\nMAN: \"ssdp:discover\"\r\n\r\nbody",
        ] {
            assert!(
                parse_search(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let non_utf8 = b"M-SEARCH * HTTP/1.1\r\nST: \xc3\x28\r\nMAN: \"ssdp:discover\"\r\n\r\n";
        assert!(matches!(parse_search(non_utf8), Err(SsdpError::NotUtf8)));
    }

    #[test]
    fn parsing_is_total_on_noise() {
        // A cheap stand-in for the fuzzer: mangle a valid search every way.
        let base = search("ssdp:all", Some("3"));
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let mut bytes = base.clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, rng.random()),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let _ = parse_search(&bytes);
        }
    }

    fn sts(answers: &[(String, String)]) -> Vec<&str> {
        answers.iter().map(|(st, _)| st.as_str()).collect()
    }

    #[test]
    fn matches_each_kind_of_search() {
        let id = identity();
        let [u0, u1, u2] = &id.uuids;

        assert_eq!(
            matches("upnp:rootdevice", &id, IgdVersion::V2),
            [(
                "upnp:rootdevice".to_owned(),
                format!("uuid:{u0}::upnp:rootdevice")
            )]
        );
        assert_eq!(
            matches(&format!("uuid:{u1}"), &id, IgdVersion::V2),
            [(format!("uuid:{u1}"), format!("uuid:{u1}"))]
        );
        assert_eq!(
            matches(&format!("uuid:{}", u2.to_uppercase()), &id, IgdVersion::V1),
            [(format!("uuid:{u2}"), format!("uuid:{u2}"))]
        );
        assert!(
            matches(
                "uuid:3b9c1e2a-0000-4000-8000-000000000009",
                &id,
                IgdVersion::V2
            )
            .is_empty()
        );

        let igd2 = "urn:schemas-upnp-org:device:InternetGatewayDevice:2";
        assert_eq!(
            matches(igd2, &id, IgdVersion::V2),
            [(igd2.to_owned(), format!("uuid:{u0}::{igd2}"))]
        );
        assert!(matches(igd2, &id, IgdVersion::V1).is_empty());
        let igd1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
        assert_eq!(
            matches(igd1, &id, IgdVersion::V2),
            [(igd1.to_owned(), format!("uuid:{u0}::{igd1}"))]
        );

        let wan_device = "urn:schemas-upnp-org:device:WANDevice:1";
        assert_eq!(
            matches(wan_device, &id, IgdVersion::V1),
            [(wan_device.to_owned(), format!("uuid:{u1}::{wan_device}"))]
        );
        let connection = "urn:schemas-upnp-org:device:WANConnectionDevice:2";
        assert_eq!(
            matches(connection, &id, IgdVersion::V2),
            [(connection.to_owned(), format!("uuid:{u2}::{connection}"))]
        );

        // A lower version is answered at the version searched.
        let ip1 = "urn:schemas-upnp-org:service:WANIPConnection:1";
        assert_eq!(
            matches(ip1, &id, IgdVersion::V2),
            [(ip1.to_owned(), format!("uuid:{u2}::{ip1}"))]
        );
        let common1 = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1";
        assert_eq!(
            matches(common1, &id, IgdVersion::V2),
            [(common1.to_owned(), format!("uuid:{u1}::{common1}"))]
        );
        // WANCommonInterfaceConfig is version 1 in IGDv2 too.
        assert!(
            matches(
                "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:2",
                &id,
                IgdVersion::V2
            )
            .is_empty()
        );

        for unknown in [
            "",
            "ssdp:al",
            "urn:schemas-upnp-org:device:MediaServer:1",
            "urn:schemas-upnp-org:service:WANPPPConnection:1",
            "urn:schemas-upnp-org:service:WANIPConnection:3",
            "urn:schemas-upnp-org:service:WANIPConnection:0",
            "urn:schemas-upnp-org:service:WANIPConnection:01",
            "urn:schemas-upnp-org:service:WANIPConnection:",
            "urn:schemas-upnp-org:service:WANIPConnection",
            "urn:schemas-upnp-org:service:WANIPConnection:1:1",
            "urn:schemas-upnp-org:service:WANIPConnection:999999",
            "URN:SCHEMAS-UPNP-ORG:SERVICE:WANIPCONNECTION:1",
            "uuid:",
        ] {
            assert!(
                matches(unknown, &id, IgdVersion::V2).is_empty(),
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn ssdp_all_answers_every_announcement() {
        let id = identity();
        for igd in [IgdVersion::V1, IgdVersion::V2] {
            let all = matches("ssdp:all", &id, igd);
            assert_eq!(all.len(), 9);
            assert_eq!(all, announcements(&id, igd));
            let mut usns: Vec<_> = all.iter().map(|(_, usn)| usn.clone()).collect();
            usns.sort();
            usns.dedup();
            assert_eq!(usns.len(), 9, "USNs must be unique");
        }
        let v2 = announcements(&id, IgdVersion::V2);
        let targets = sts(&v2);
        assert_eq!(targets[0], "upnp:rootdevice");
        for expected in [
            "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
            "urn:schemas-upnp-org:device:WANDevice:2",
            "urn:schemas-upnp-org:device:WANConnectionDevice:2",
            "urn:schemas-upnp-org:service:WANIPConnection:2",
            "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
        ] {
            assert!(targets.contains(&expected), "{expected}");
        }
        // Every announced target, searched for, is answered with itself.
        for (nt, usn) in &v2 {
            if nt != "upnp:rootdevice" {
                assert_eq!(
                    matches(nt, &id, IgdVersion::V2),
                    [(nt.clone(), usn.clone())]
                );
            }
        }
    }

    fn assert_crlf(message: &str) {
        assert!(message.ends_with("\r\n\r\n"), "{message:?}");
        assert_eq!(
            message.matches('\n').count(),
            message.matches("\r\n").count()
        );
        assert_eq!(message.matches("\r\n\r\n").count(), 1);
    }

    #[test]
    fn search_response_has_every_header() {
        let id = identity();
        let location = "http://192.168.0.1:5000/rootDesc.xml";
        let usn = format!("uuid:{}::upnp:rootdevice", id.uuids[0]);
        let message = search_response("upnp:rootdevice", &usn, location, &id, 1800);
        assert_crlf(&message);
        assert!(message.starts_with("HTTP/1.1 200 OK\r\n"));
        assert_eq!(header(&message, "CACHE-CONTROL"), Some("max-age=1800"));
        assert_eq!(header(&message, "EXT"), Some(""));
        assert_eq!(header(&message, "LOCATION"), Some(location));
        assert_eq!(header(&message, "SERVER"), Some(id.server.as_str()));
        assert_eq!(header(&message, "ST"), Some("upnp:rootdevice"));
        assert_eq!(header(&message, "USN"), Some(usn.as_str()));
        assert_eq!(header(&message, "BOOTID.UPNP.ORG"), Some("7"));
        assert_eq!(header(&message, "CONFIGID.UPNP.ORG"), Some("3"));
        let date = header(&message, "DATE").unwrap();
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");
    }

    #[test]
    fn notify_has_every_header() {
        let id = identity();
        let location = "http://192.168.0.1:5000/rootDesc.xml";
        let nt = "urn:schemas-upnp-org:service:WANIPConnection:2";
        let usn = format!("uuid:{}::{nt}", id.uuids[2]);

        let alive = notify(NotifyKind::Alive, nt, &usn, location, &id, 1800);
        assert_crlf(&alive);
        assert!(alive.starts_with("NOTIFY * HTTP/1.1\r\n"));
        assert_eq!(header(&alive, "HOST"), Some("239.255.255.250:1900"));
        assert_eq!(header(&alive, "CACHE-CONTROL"), Some("max-age=1800"));
        assert_eq!(header(&alive, "LOCATION"), Some(location));
        assert_eq!(header(&alive, "SERVER"), Some(id.server.as_str()));
        assert_eq!(header(&alive, "NT"), Some(nt));
        assert_eq!(header(&alive, "NTS"), Some("ssdp:alive"));
        assert_eq!(header(&alive, "USN"), Some(usn.as_str()));
        assert_eq!(header(&alive, "BOOTID.UPNP.ORG"), Some("7"));
        assert_eq!(header(&alive, "CONFIGID.UPNP.ORG"), Some("3"));

        let bye = notify(NotifyKind::ByeBye, nt, &usn, location, &id, 1800);
        assert_crlf(&bye);
        assert!(bye.starts_with("NOTIFY * HTTP/1.1\r\n"));
        assert_eq!(header(&bye, "HOST"), Some("239.255.255.250:1900"));
        assert_eq!(header(&bye, "NT"), Some(nt));
        assert_eq!(header(&bye, "NTS"), Some("ssdp:byebye"));
        assert_eq!(header(&bye, "USN"), Some(usn.as_str()));
        assert_eq!(header(&bye, "BOOTID.UPNP.ORG"), Some("7"));
        assert_eq!(header(&bye, "CONFIGID.UPNP.ORG"), Some("3"));
        for absent in ["LOCATION", "CACHE-CONTROL", "SERVER"] {
            assert_eq!(header(&bye, absent), None, "{absent}");
        }
    }

    #[test]
    fn formats_http_dates() {
        let at = |secs| http_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_709_210_096), "Thu, 29 Feb 2024 12:34:56 GMT");
        assert_eq!(at(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
