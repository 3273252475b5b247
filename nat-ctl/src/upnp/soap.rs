//! SOAP 1.1 for UPnP control (UDA 1.1 §3 / UDA 2.0 §3): parsing action
//! requests, writing action responses and UPnP faults, and the strict
//! parsers of argument values the actions use. The fault codes are
//! [`UpnpError`] (in `error`); the documents are written with `xml`'s
//! writer.
//!
//! # Errors and what the HTTP layer answers
//!
//! Every failure of a control request is answered with HTTP `500 Internal
//! Server Error` ([`FAULT_HTTP_STATUS`]) carrying a UPnP fault ([`fault`]):
//!
//! * a request that cannot be parsed into an action ([`parse_request`]
//!   fails) gets [`SoapError::upnp_error`]: `401 Invalid Action` when the
//!   envelope, the body or the action cannot be identified (malformed XML,
//!   DOCTYPE, limits exceeded outside the arguments, SOAPACTION header not
//!   matching the body…), `402 Invalid Args` when the action was identified
//!   but its arguments are not acceptable (duplicates, too many, too long,
//!   not plain text, characters not allowed in XML);
//! * an unknown action of a known service is `401 Invalid Action`;
//! * argument values rejected by [`parse_u16_port`], [`parse_u32`],
//!   [`parse_bool`], [`parse_protocol`] or [`parse_ipv4`] are
//!   `402 Invalid Args`; everything else is the action's own error code.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;

use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use super::error::UpnpError;
use super::xml::{XmlDoc, is_xml_char};

/// The SOAP 1.1 envelope namespace.
pub const SOAP_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The SOAP 1.1 encoding style UPnP requires on the envelope.
pub const SOAP_ENCODING_STYLE: &str = "http://schemas.xmlsoap.org/soap/encoding/";
/// The namespace of the `UPnPError` fault detail.
pub const UPNP_CONTROL_NS: &str = "urn:schemas-upnp-org:control-1-0";
/// `CONTENT-TYPE` of responses and faults.
pub const CONTENT_TYPE: &str = "text/xml; charset=\"utf-8\"";
/// HTTP status of every UPnP fault.
pub const FAULT_HTTP_STATUS: u16 = 500;

/// Largest accepted request body, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Deepest accepted element nesting (Envelope is depth 1, an argument 4).
pub const MAX_DEPTH: usize = 8;
/// Most arguments accepted in one action.
pub const MAX_ARGS: usize = 32;
/// Longest accepted argument value, in bytes (after unescaping).
pub const MAX_VALUE_BYTES: usize = 1024;
/// Longest lease IGDv2 accepts (one week); IGDv2 gateways use it for a
/// requested lease of 0 or above it. Applying this is the action's job.
pub const MAX_LEASE_SECS: u32 = 604_800;

/// A parsed UPnP control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoapRequest {
    /// The namespace of the action element, e.g.
    /// `urn:schemas-upnp-org:service:WANIPConnection:2`.
    pub service_type: String,
    /// The local name of the action element, e.g. `AddPortMapping`.
    pub action: String,
    /// The arguments by local name, in document order, values unescaped.
    pub args: Vec<(String, String)>,
}

impl SoapRequest {
    /// The value of an argument, if present.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a control request could not be parsed; see [`SoapError::upnp_error`]
/// for the fault to answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    #[error("request body too large ({0} bytes, at most {max})", max = MAX_BODY_BYTES)]
    TooLarge(usize),
    #[error("request body is not UTF-8")]
    NotUtf8,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("DOCTYPE declarations are not accepted")]
    DocType,
    #[error("elements nested deeper than {max}", max = MAX_DEPTH)]
    TooDeep,
    #[error("unexpected content: {0}")]
    Unexpected(&'static str),
    #[error("no SOAP Envelope")]
    MissingEnvelope,
    #[error("no SOAP Body")]
    MissingBody,
    #[error("no action in the SOAP Body")]
    MissingAction,
    #[error("the action element has no namespace (service type)")]
    NoServiceType,
    #[error("more than {max} arguments", max = MAX_ARGS)]
    TooManyArguments,
    #[error("argument {0} given more than once")]
    DuplicateArgument(String),
    #[error("argument {0} longer than {max} bytes", max = MAX_VALUE_BYTES)]
    ArgumentTooLong(String),
    #[error("argument {0} is not plain text")]
    ArgumentNotText(String),
    #[error("argument {0} contains a character not allowed in XML")]
    IllegalCharacter(String),
    #[error("SOAPACTION header {header:?} does not match the body's {body:?}")]
    ActionMismatch { header: String, body: String },
}

impl SoapError {
    /// The UPnP error to answer (in a [`fault`], HTTP 500): `402 Invalid
    /// Args` for problems with the arguments of an identified action, `401
    /// Invalid Action` for everything else.
    pub fn upnp_error(&self) -> UpnpError {
        match self {
            SoapError::TooManyArguments
            | SoapError::DuplicateArgument(_)
            | SoapError::ArgumentTooLong(_)
            | SoapError::ArgumentNotText(_)
            | SoapError::IllegalCharacter(_) => UpnpError::InvalidArgs,
            _ => UpnpError::InvalidAction,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing requests

/// Where the parser is: one frame per open element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Envelope,
    Body,
    Action,
    /// Index into the argument list.
    Arg(usize),
    /// Header, or an element after the Body: content ignored.
    Skip,
}

fn xml_error(e: impl fmt::Display) -> SoapError {
    let mut message = e.to_string();
    if message.len() > 200 {
        let mut end = 200;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    SoapError::Xml(message)
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// What the SOAPACTION header names: `(service type, action)`. The header
/// is `"urn:schemas-upnp-org:service:WANIPConnection:2#AddPortMapping"`,
/// the quotes optional.
pub fn parse_soap_action_header(header: &str) -> Option<(&str, &str)> {
    let header = header.trim();
    let header = header
        .strip_prefix('"')
        .and_then(|h| h.strip_suffix('"'))
        .unwrap_or(header);
    let (service_type, action) = header.rsplit_once('#')?;
    if service_type.is_empty() || action.is_empty() {
        return None;
    }
    Some((service_type, action))
}

/// Parse a UPnP control request: the SOAP envelope in `body` and, when
/// given, the SOAPACTION header, which must name the same service type and
/// action as the body. Limits: [`MAX_BODY_BYTES`], [`MAX_DEPTH`],
/// [`MAX_ARGS`], [`MAX_VALUE_BYTES`]; no DOCTYPE. Never panics.
pub fn parse_request(
    body: &[u8],
    soap_action_header: Option<&str>,
) -> Result<SoapRequest, SoapError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(SoapError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| SoapError::NotUtf8)?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);

    let mut reader = NsReader::from_str(text);
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.allow_unmatched_ends = false;
        config.allow_dangling_amp = false;
        config.expand_empty_elements = false;
        config.trim_text(false);
    }

    let mut stack: Vec<Frame> = Vec::with_capacity(MAX_DEPTH);
    let mut first_event = true;
    let mut envelope_done = false;
    let mut body_seen = false;
    let mut action: Option<(String, String)> = None;
    let mut args: Vec<(String, String)> = Vec::new();
    // Every event consumes input; this only guards against a parser bug.
    let mut budget = text.len().saturating_mul(2).saturating_add(16);

    loop {
        budget = budget
            .checked_sub(1)
            .ok_or(SoapError::Unexpected("parser made no progress"))?;
        let (ns, event) = reader.read_resolved_event().map_err(xml_error)?;
        let is_first = std::mem::replace(&mut first_event, false);
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if stack.len() >= MAX_DEPTH {
                    return Err(SoapError::TooDeep);
                }
                for attr in e.attributes() {
                    attr.map_err(xml_error)?;
                }
                let in_soap_ns =
                    matches!(ns, ResolveResult::Bound(Namespace(n)) if n == SOAP_ENVELOPE_NS);
                let element_ns = match ns {
                    ResolveResult::Bound(Namespace(n)) if !n.is_empty() => Some(n.to_owned()),
                    _ => None,
                };
                let local = e.local_name();
                let local = local.as_ref();
                let frame = match stack.last().copied() {
                    None if envelope_done => {
                        return Err(SoapError::Unexpected("element after the Envelope"));
                    }
                    None if in_soap_ns && local == "Envelope" => {
                        if empty {
                            return Err(SoapError::MissingBody);
                        }
                        Frame::Envelope
                    }
                    None => return Err(SoapError::MissingEnvelope),
                    Some(Frame::Envelope) if in_soap_ns && local == "Body" => {
                        if body_seen {
                            return Err(SoapError::Unexpected("second Body"));
                        }
                        body_seen = true;
                        if empty {
                            return Err(SoapError::MissingAction);
                        }
                        Frame::Body
                    }
                    Some(Frame::Envelope) if in_soap_ns && local == "Header" && !body_seen => {
                        Frame::Skip
                    }
                    // SOAP 1.1 allows further elements after the Body.
                    Some(Frame::Envelope) if body_seen => Frame::Skip,
                    Some(Frame::Envelope) => {
                        return Err(SoapError::Unexpected("element before the Body"));
                    }
                    Some(Frame::Body) => {
                        if action.is_some() {
                            return Err(SoapError::Unexpected("more than one element in the Body"));
                        }
                        let service_type = element_ns.ok_or(SoapError::NoServiceType)?;
                        action = Some((service_type, local.to_owned()));
                        Frame::Action
                    }
                    Some(Frame::Action) => {
                        if args.iter().any(|(n, _)| n == local) {
                            return Err(SoapError::DuplicateArgument(local.to_owned()));
                        }
                        if args.len() >= MAX_ARGS {
                            return Err(SoapError::TooManyArguments);
                        }
                        args.push((local.to_owned(), String::new()));
                        Frame::Arg(args.len() - 1)
                    }
                    Some(Frame::Arg(i)) => {
                        let name = args.get(i).map(|(n, _)| n.clone()).unwrap_or_default();
                        return Err(SoapError::ArgumentNotText(name));
                    }
                    Some(Frame::Skip) => Frame::Skip,
                };
                if !empty {
                    stack.push(frame);
                }
            }
            Event::End(_) => match stack.pop() {
                Some(Frame::Envelope) => envelope_done = true,
                Some(_) => {}
                None => return Err(SoapError::Unexpected("unmatched end tag")),
            },
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last().copied() {
                    Some(Frame::Arg(i)) => append_value(&mut args, i, &content)?,
                    Some(Frame::Skip) => {}
                    _ if is_xml_whitespace(&content) => {}
                    _ => return Err(SoapError::Unexpected("text outside an argument")),
                }
            }
            Event::CData(c) => {
                let content = c.xml10_content();
                match stack.last().copied() {
                    Some(Frame::Arg(i)) => append_value(&mut args, i, &content)?,
                    Some(Frame::Skip) => {}
                    _ => return Err(SoapError::Unexpected("CDATA outside an argument")),
                }
            }
            Event::GeneralRef(r) => {
                let resolved: Cow<'_, str> = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => Cow::Owned(c.to_string()),
                        Ok(None) | Err(_) => {
                            return Err(SoapError::Xml(format!(
                                "invalid character reference &{};",
                                &*r
                            )));
                        }
                    }
                } else {
                    match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => Cow::Borrowed(s),
                        None => return Err(SoapError::Xml("undefined entity reference".into())),
                    }
                };
                match stack.last().copied() {
                    Some(Frame::Arg(i)) => append_value(&mut args, i, &resolved)?,
                    Some(Frame::Skip) => {}
                    _ => return Err(SoapError::Unexpected("reference outside an argument")),
                }
            }
            Event::DocType(_) => return Err(SoapError::DocType),
            Event::Decl(_) => {
                if !is_first {
                    return Err(SoapError::Unexpected("XML declaration not at the start"));
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => {
                if !envelope_done {
                    return Err(if stack.is_empty() {
                        SoapError::MissingEnvelope
                    } else {
                        SoapError::Xml("unexpected end of input".into())
                    });
                }
                break;
            }
        }
    }

    if !body_seen {
        return Err(SoapError::MissingBody);
    }
    let (service_type, action) = action.ok_or(SoapError::MissingAction)?;

    if let Some(header) = soap_action_header {
        let matches = parse_soap_action_header(header)
            .is_some_and(|(st, act)| st == service_type && act == action);
        if !matches {
            let mut header = header.to_owned();
            if header.len() > 256 {
                let mut end = 256;
                while !header.is_char_boundary(end) {
                    end -= 1;
                }
                header.truncate(end);
            }
            return Err(SoapError::ActionMismatch {
                header,
                body: format!("{service_type}#{action}"),
            });
        }
    }

    Ok(SoapRequest {
        service_type,
        action,
        args,
    })
}

fn append_value(
    args: &mut [(String, String)],
    index: usize,
    content: &str,
) -> Result<(), SoapError> {
    let Some((name, value)) = args.get_mut(index) else {
        return Err(SoapError::Unexpected("argument state lost"));
    };
    if value.len().saturating_add(content.len()) > MAX_VALUE_BYTES {
        return Err(SoapError::ArgumentTooLong(name.clone()));
    }
    if !content.chars().all(is_xml_char) {
        return Err(SoapError::IllegalCharacter(name.clone()));
    }
    value.push_str(content);
    Ok(())
}

// ---------------------------------------------------------------------------
// Writing responses

fn envelope_open(doc: &mut XmlDoc) {
    doc.open(
        "s:Envelope",
        &[
            ("xmlns:s", SOAP_ENVELOPE_NS),
            ("s:encodingStyle", SOAP_ENCODING_STYLE),
        ],
    );
    doc.open("s:Body", &[]);
}

fn envelope_close(doc: &mut XmlDoc) {
    doc.close("s:Body");
    doc.close("s:Envelope");
}

/// The response to a successful action: `<u:{action}Response
/// xmlns:u="{service_type}">` with one element per out argument, in order.
pub fn response(service_type: &str, action: &str, args: &[(&str, String)]) -> String {
    let mut doc = XmlDoc::new(false, "\r\n");
    envelope_open(&mut doc);
    let element = format!("u:{action}Response");
    doc.open(&element, &[("xmlns:u", service_type)]);
    for (name, value) in args {
        // An embedded XML document (GetListOfPortMappings' NewPortListing)
        // goes in CDATA: miniupnpc's parser reads it only that way, and any
        // XML parser reads the same text either way.
        if value.starts_with("<?xml") {
            doc.cdata(name, value);
        } else {
            doc.text(name, value);
        }
    }
    doc.close(&element);
    envelope_close(&mut doc);
    doc.finish("\r\n")
}

/// The UPnP fault for `error` (send with HTTP [`FAULT_HTTP_STATUS`]).
pub fn fault(error: UpnpError) -> String {
    let mut doc = XmlDoc::new(false, "\r\n");
    envelope_open(&mut doc);
    doc.open("s:Fault", &[]);
    doc.text("faultcode", "s:Client");
    doc.text("faultstring", "UPnPError");
    doc.open("detail", &[]);
    doc.open("UPnPError", &[("xmlns", UPNP_CONTROL_NS)]);
    doc.text("errorCode", &error.code().to_string());
    doc.text("errorDescription", error.description());
    doc.close("UPnPError");
    doc.close("detail");
    doc.close("s:Fault");
    envelope_close(&mut doc);
    doc.finish("\r\n")
}

// ---------------------------------------------------------------------------
// Strict argument parsers

/// Decimal digits only (surrounding whitespace trimmed), checked against
/// `max`.
fn parse_decimal(value: &str, max: u32) -> Result<u32, UpnpError> {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UpnpError::InvalidArgs);
    }
    let mut n: u32 = 0;
    for b in digits.bytes() {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u32::from(b - b'0')))
            .ok_or(UpnpError::InvalidArgs)?;
    }
    if n > max {
        return Err(UpnpError::InvalidArgs);
    }
    Ok(n)
}

/// A port number: decimal digits only, no sign, surrounding whitespace
/// trimmed, at most 65535, and 0 only if `allow_zero`; else 402.
pub fn parse_u16_port(value: &str, allow_zero: bool) -> Result<u16, UpnpError> {
    let n = parse_decimal(value, u32::from(u16::MAX))?;
    if n == 0 && !allow_zero {
        return Err(UpnpError::InvalidArgs);
    }
    u16::try_from(n).map_err(|_| UpnpError::InvalidArgs)
}

/// An unsigned 32-bit value (lease duration, index, count): decimal digits
/// only, no sign, surrounding whitespace trimmed; negative, non-decimal or
/// above `u32::MAX` is 402. Clamping a lease to [`MAX_LEASE_SECS`] (IGDv2:
/// 0 and anything above mean one week) is the action's job.
pub fn parse_u32(value: &str) -> Result<u32, UpnpError> {
    parse_decimal(value, u32::MAX)
}

/// A UPnP boolean: `1`/`0`/`true`/`false`/`yes`/`no`, case-insensitive,
/// surrounding whitespace trimmed; else 402.
pub fn parse_bool(value: &str) -> Result<bool, UpnpError> {
    let value = value.trim();
    if ["1", "true", "yes"]
        .iter()
        .any(|t| value.eq_ignore_ascii_case(t))
    {
        Ok(true)
    } else if ["0", "false", "no"]
        .iter()
        .any(|f| value.eq_ignore_ascii_case(f))
    {
        Ok(false)
    } else {
        Err(UpnpError::InvalidArgs)
    }
}

/// `TCP` or `UDP`, case-insensitive, surrounding whitespace trimmed; else 402.
pub fn parse_protocol(value: &str) -> Result<&'static str, UpnpError> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("TCP") {
        Ok("TCP")
    } else if value.eq_ignore_ascii_case("UDP") {
        Ok("UDP")
    } else {
        Err(UpnpError::InvalidArgs)
    }
}

/// A dotted-quad IPv4 address, surrounding whitespace trimmed; else 402
/// (the empty wildcard is for the caller to handle before).
pub fn parse_ipv4(value: &str) -> Result<Ipv4Addr, UpnpError> {
    value.trim().parse().map_err(|_| UpnpError::InvalidArgs)
}

#[cfg(test)]
mod cdata_tests {
    use super::*;

    #[test]
    fn embedded_documents_go_in_cdata_and_read_back_the_same() {
        let listing = "<?xml version=\"1.0\"?><p:PortMappingList><p:NewDescription>a]]>b</p:NewDescription></p:PortMappingList>";
        let body = response(
            "urn:schemas-upnp-org:service:WANIPConnection:2",
            "GetListOfPortMappings",
            &[("NewPortListing", listing.to_owned())],
        );
        assert!(body.contains("<NewPortListing><![CDATA[<?xml"), "{body}");
        // An XML parser gets the document back unchanged.
        let mut reader = quick_xml::Reader::from_str(&body);
        let mut text = String::new();
        let mut inside = false;
        loop {
            match reader.read_event().unwrap() {
                Event::Start(start) if start.name().as_ref() == "NewPortListing" => inside = true,
                Event::End(end) if end.name().as_ref() == "NewPortListing" => break,
                Event::CData(data) if inside => text.push_str(&data.into_inner()),
                Event::Eof => panic!("no NewPortListing in {body}"),
                _ => {}
            }
        }
        assert_eq!(text, listing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
    const V2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";

    const MINIUPNPC_ADD: &str = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewRemoteHost></NewRemoteHost><NewExternalPort>6881</NewExternalPort><NewProtocol>TCP</NewProtocol><NewInternalPort>6881</NewInternalPort><NewInternalClient>192.168.0.12</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>libminiupnpc</NewPortMappingDescription><NewLeaseDuration>0</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>\r\n";

    fn envelope(service: &str, action: &str, args: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"{SOAP_ENVELOPE_NS}\" s:encodingStyle=\"{SOAP_ENCODING_STYLE}\"><s:Body><u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>\r\n"
        )
    }

    /// Parse a whole document with quick-xml, checking well-formedness.
    fn well_formed(doc: &str) {
        let mut reader = NsReader::from_str(doc);
        let mut depth = 0i32;
        loop {
            match reader.read_event() {
                Ok(Event::Start(_)) => depth += 1,
                Ok(Event::End(_)) => depth -= 1,
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}\n{doc}"),
            }
        }
        assert_eq!(depth, 0, "unbalanced: {doc}");
    }

    #[test]
    fn miniupnpc_add_port_mapping() {
        let header = "\"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\"";
        let req = parse_request(MINIUPNPC_ADD.as_bytes(), Some(header)).unwrap();
        assert_eq!(req.service_type, V1);
        assert_eq!(req.action, "AddPortMapping");
        let names: Vec<&str> = req.args.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "NewRemoteHost",
                "NewExternalPort",
                "NewProtocol",
                "NewInternalPort",
                "NewInternalClient",
                "NewEnabled",
                "NewPortMappingDescription",
                "NewLeaseDuration"
            ]
        );
        assert_eq!(req.arg("NewRemoteHost"), Some(""));
        assert_eq!(req.arg("NewExternalPort"), Some("6881"));
        assert_eq!(req.arg("NewInternalClient"), Some("192.168.0.12"));
        assert_eq!(req.arg("NewPortMappingDescription"), Some("libminiupnpc"));
        assert_eq!(req.arg("NewLeaseDuration"), Some("0"));
        assert_eq!(req.arg("Nope"), None);
        // Header without quotes, and no header at all.
        let unquoted = "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping";
        assert_eq!(
            parse_request(MINIUPNPC_ADD.as_bytes(), Some(unquoted)).unwrap(),
            req
        );
        assert_eq!(parse_request(MINIUPNPC_ADD.as_bytes(), None).unwrap(), req);
    }

    #[test]
    fn no_argument_action_and_empty_elements() {
        let body = envelope(V2, "GetExternalIPAddress", "");
        let req = parse_request(
            body.as_bytes(),
            Some(&format!("\"{V2}#GetExternalIPAddress\"")),
        )
        .unwrap();
        assert_eq!(req.action, "GetExternalIPAddress");
        assert!(req.args.is_empty());
        // Self-closing action element.
        let body = format!(
            "<s:Envelope xmlns:s=\"{SOAP_ENVELOPE_NS}\"><s:Body><u:GetStatusInfo xmlns:u=\"{V2}\"/></s:Body></s:Envelope>"
        );
        let req = parse_request(body.as_bytes(), None).unwrap();
        assert_eq!(req.action, "GetStatusInfo");
        assert!(req.args.is_empty());
        // `<X/>` is "".
        let body = envelope(
            V1,
            "DeletePortMapping",
            "<NewRemoteHost/><NewExternalPort>80</NewExternalPort><NewProtocol>UDP</NewProtocol>",
        );
        let req = parse_request(body.as_bytes(), None).unwrap();
        assert_eq!(req.arg("NewRemoteHost"), Some(""));
        assert_eq!(req.arg("NewProtocol"), Some("UDP"));
    }

    #[test]
    fn any_order_prefixes_whitespace_header() {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- hi -->\n<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"{SOAP_ENVELOPE_NS}\">\n  <SOAP-ENV:Header><x:y xmlns:x=\"urn:x\">ignored<z/></x:y></SOAP-ENV:Header>\n  <SOAP-ENV:Body>\n    <m:DeletePortMapping xmlns:m=\"{V2}\">\n      <NewProtocol>TCP</NewProtocol>\n      <NewExternalPort>80</NewExternalPort>\n      <NewRemoteHost></NewRemoteHost>\n    </m:DeletePortMapping>\n  </SOAP-ENV:Body>\n</SOAP-ENV:Envelope>\n"
        );
        let req =
            parse_request(body.as_bytes(), Some(&format!(" {V2}#DeletePortMapping "))).unwrap();
        assert_eq!(req.service_type, V2);
        assert_eq!(req.action, "DeletePortMapping");
        assert_eq!(req.arg("NewProtocol"), Some("TCP"));
        assert_eq!(req.arg("NewExternalPort"), Some("80"));
        assert_eq!(req.arg("NewRemoteHost"), Some(""));
        // Default namespace for the action, prefixed arguments.
        let body = format!(
            "<e:Envelope xmlns:e=\"{SOAP_ENVELOPE_NS}\"><e:Body><GetGenericPortMappingEntry xmlns=\"{V1}\"><NewPortMappingIndex>3</NewPortMappingIndex></GetGenericPortMappingEntry></e:Body></e:Envelope>"
        );
        let req = parse_request(body.as_bytes(), None).unwrap();
        assert_eq!(req.service_type, V1);
        assert_eq!(req.arg("NewPortMappingIndex"), Some("3"));
        // With a UTF-8 BOM.
        let with_bom = format!("\u{FEFF}{body}");
        assert_eq!(parse_request(with_bom.as_bytes(), None).unwrap(), req);
    }

    #[test]
    fn escaped_text() {
        let body = envelope(
            V1,
            "AddPortMapping",
            "<NewPortMappingDescription>a &amp; b &lt;c&gt; &quot;d&apos; &#233;&#x41; <![CDATA[<raw>&amp;]]></NewPortMappingDescription>",
        );
        let req = parse_request(body.as_bytes(), None).unwrap();
        assert_eq!(
            req.arg("NewPortMappingDescription"),
            Some("a & b <c> \"d' \u{e9}A <raw>&amp;")
        );
        // Undefined entity and illegal characters.
        let body = envelope(
            V1,
            "AddPortMapping",
            "<NewPortMappingDescription>&foo;</NewPortMappingDescription>",
        );
        assert!(matches!(
            parse_request(body.as_bytes(), None),
            Err(SoapError::Xml(_))
        ));
        let body = envelope(
            V1,
            "AddPortMapping",
            "<NewPortMappingDescription>&#1;</NewPortMappingDescription>",
        );
        assert_eq!(
            parse_request(body.as_bytes(), None),
            Err(SoapError::IllegalCharacter(
                "NewPortMappingDescription".into()
            ))
        );
        let body = envelope(
            V1,
            "AddPortMapping",
            "<NewPortMappingDescription>&#0;</NewPortMappingDescription>",
        );
        assert!(parse_request(body.as_bytes(), None).is_err());
        let body = envelope(
            V1,
            "AddPortMapping",
            "<NewPortMappingDescription>a & b</NewPortMappingDescription>",
        );
        assert!(matches!(
            parse_request(body.as_bytes(), None),
            Err(SoapError::Xml(_))
        ));
    }

    #[test]
    fn doctype_rejected() {
        let body = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE s:Envelope [<!ENTITY x \"xxxxxxxx\">]>{}",
            envelope(V1, "GetExternalIPAddress", "")
                .trim_start_matches("<?xml version=\"1.0\"?>\r\n")
        );
        assert_eq!(
            parse_request(body.as_bytes(), None),
            Err(SoapError::DocType)
        );
        assert_eq!(SoapError::DocType.upnp_error(), UpnpError::InvalidAction);
    }

    #[test]
    fn limits() {
        // Depth: an argument containing an element is rejected, and nesting
        // beyond MAX_DEPTH (here in a Header) too.
        let body = envelope(V1, "AddPortMapping", "<NewRemoteHost><a/></NewRemoteHost>");
        assert_eq!(
            parse_request(body.as_bytes(), None),
            Err(SoapError::ArgumentNotText("NewRemoteHost".into()))
        );
        let deep = format!(
            "<s:Envelope xmlns:s=\"{SOAP_ENVELOPE_NS}\"><s:Header>{}{}</s:Header><s:Body><u:A xmlns:u=\"urn:x\"/></s:Body></s:Envelope>",
            "<a>".repeat(10),
            "</a>".repeat(10)
        );
        assert_eq!(
            parse_request(deep.as_bytes(), None),
            Err(SoapError::TooDeep)
        );
        let ok = format!(
            "<s:Envelope xmlns:s=\"{SOAP_ENVELOPE_NS}\"><s:Header>{}{}</s:Header><s:Body><u:A xmlns:u=\"urn:x\"/></s:Body></s:Envelope>",
            "<a>".repeat(6),
            "</a>".repeat(6)
        );
        assert!(parse_request(ok.as_bytes(), None).is_ok());
        let very_deep = "<a>".repeat(5000);
        assert!(parse_request(very_deep.as_bytes(), None).is_err());

        // Arguments: count, length, duplicates.
        let many: String = (0..=MAX_ARGS).map(|i| format!("<A{i}>x</A{i}>")).collect();
        let body = envelope(V1, "X", &many);
        assert_eq!(
            parse_request(body.as_bytes(), None),
            Err(SoapError::TooManyArguments)
        );
        let enough: String = (0..MAX_ARGS).map(|i| format!("<A{i}>x</A{i}>")).collect();
        assert_eq!(
            parse_request(envelope(V1, "X", &enough).as_bytes(), None)
                .unwrap()
                .args
                .len(),
            MAX_ARGS
        );
        let long = format!("<D>{}</D>", "x".repeat(MAX_VALUE_BYTES + 1));
        let err = parse_request(envelope(V1, "X", &long).as_bytes(), None).unwrap_err();
        assert_eq!(err, SoapError::ArgumentTooLong("D".into()));
        assert_eq!(err.upnp_error(), UpnpError::InvalidArgs);
        let fits = format!("<D>{}</D>", "&amp;".repeat(MAX_VALUE_BYTES));
        assert_eq!(
            parse_request(envelope(V1, "X", &fits).as_bytes(), None)
                .unwrap()
                .arg("D")
                .unwrap()
                .len(),
            MAX_VALUE_BYTES
        );
        let dup =
            "<NewProtocol>TCP</NewProtocol><p:NewProtocol xmlns:p=\"urn:p\">UDP</p:NewProtocol>";
        assert_eq!(
            parse_request(envelope(V1, "X", dup).as_bytes(), None),
            Err(SoapError::DuplicateArgument("NewProtocol".into()))
        );
        // Body size.
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            parse_request(&big, None),
            Err(SoapError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }

    #[test]
    fn soap_action_mismatch() {
        for header in [
            format!("\"{V1}#DeletePortMapping\""),
            format!("\"{V2}#AddPortMapping\""),
            "AddPortMapping".to_string(),
            String::new(),
            "\"\"".to_string(),
            format!("\"{V1}#\""),
        ] {
            let err = parse_request(MINIUPNPC_ADD.as_bytes(), Some(&header)).unwrap_err();
            assert!(
                matches!(err, SoapError::ActionMismatch { .. }),
                "{header}: {err:?}"
            );
            assert_eq!(err.upnp_error(), UpnpError::InvalidAction);
        }
        assert_eq!(
            parse_soap_action_header("\"urn:a:service:B:1#C\""),
            Some(("urn:a:service:B:1", "C"))
        );
    }

    #[test]
    fn structure_errors() {
        let cases: &[(&str, SoapError)] = &[
            ("", SoapError::MissingEnvelope),
            ("   ", SoapError::MissingEnvelope),
            ("<a/>", SoapError::MissingEnvelope),
            // Envelope in the wrong namespace.
            (
                "<s:Envelope xmlns:s=\"urn:other\"><s:Body/></s:Envelope>",
                SoapError::MissingEnvelope,
            ),
            ("<Envelope><Body/></Envelope>", SoapError::MissingEnvelope),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"/>",
                SoapError::MissingBody,
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"></s:Envelope>",
                SoapError::MissingBody,
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope>",
                SoapError::MissingAction,
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body> </s:Body></s:Envelope>",
                SoapError::MissingAction,
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><A/></s:Body></s:Envelope>",
                SoapError::NoServiceType,
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:A xmlns:u=\"urn:x\"/><u:B xmlns:u=\"urn:x\"/></s:Body></s:Envelope>",
                SoapError::Unexpected("more than one element in the Body"),
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:A xmlns:u=\"urn:x\"/></s:Body></s:Envelope><x/>",
                SoapError::Unexpected("element after the Envelope"),
            ),
            (
                "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:A xmlns:u=\"urn:x\">text</u:A></s:Body></s:Envelope>",
                SoapError::Unexpected("text outside an argument"),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                &parse_request(body.as_bytes(), None).unwrap_err(),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let garbage: &[&[u8]] = &[
            b"\xff\xfe\x00<",
            b"<<<>>>",
            b"<s:Envelope xmlns:s=",
            b"<?xml version=\"1.0\"?><?xml version=\"1.0\"?>",
            b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:A xmlns:u=\"urn:x\"><B>1</C></u:A></s:Body></s:Envelope>",
            b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" a a><s:Body/></s:Envelope>",
            b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" x=\"1\" x=\"2\"><s:Body/></s:Envelope>",
            b"</a>",
            b"&amp;",
            b"<!-- unterminated",
            b"<![CDATA[x]]>",
        ];
        for body in garbage {
            assert!(
                parse_request(body, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Every prefix of valid requests: an error (or, for the complete
        // envelope followed by partial trailing whitespace, success), no panic.
        let full = MINIUPNPC_ADD.as_bytes();
        let envelope_end = MINIUPNPC_ADD.trim_end().len();
        for cut in 0..full.len() {
            let result = parse_request(&full[..cut], None);
            assert_eq!(result.is_ok(), cut >= envelope_end, "cut at {cut}");
        }
        // Pseudo-random byte mutations.
        let mut state: u32 = 0x1234_5678;
        for _ in 0..5000 {
            let mut mutated = full.to_vec();
            for _ in 0..3 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let pos = (state >> 8) as usize % mutated.len();
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                mutated[pos] = (state >> 16) as u8;
            }
            let _ = parse_request(&mutated, Some("x#y"));
        }
    }

    #[test]
    fn response_round_trip() {
        let out = response(
            V2,
            "GetSpecificPortMappingEntry",
            &[
                ("NewInternalPort", "6881".to_string()),
                ("NewInternalClient", "192.168.0.12".to_string()),
                ("NewEnabled", "1".to_string()),
                (
                    "NewPortMappingDescription",
                    "a<b>&\"c'\r\n\u{1}".to_string(),
                ),
                ("NewLeaseDuration", String::new()),
            ],
        );
        assert!(out.starts_with("<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:GetSpecificPortMappingEntryResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"><NewInternalPort>6881</NewInternalPort>"), "{out}");
        assert!(out.contains("<NewLeaseDuration></NewLeaseDuration>"));
        well_formed(&out);
        // Our own parser reads the response back (its element is the action).
        let parsed = parse_request(out.as_bytes(), None).unwrap();
        assert_eq!(parsed.service_type, V2);
        assert_eq!(parsed.action, "GetSpecificPortMappingEntryResponse");
        assert_eq!(
            parsed.arg("NewPortMappingDescription"),
            Some("a<b>&\"c'\r\n\u{FFFD}")
        );
        assert_eq!(parsed.arg("NewLeaseDuration"), Some(""));
    }

    #[test]
    fn faults() {
        let all = [
            (UpnpError::InvalidAction, 401, "Invalid Action"),
            (UpnpError::InvalidArgs, 402, "Invalid Args"),
            (UpnpError::ActionFailed, 501, "Action Failed"),
            (UpnpError::ActionNotAuthorized, 606, "Action not authorized"),
            (
                UpnpError::SpecifiedArrayIndexInvalid,
                713,
                "SpecifiedArrayIndexInvalid",
            ),
            (UpnpError::NoSuchEntryInArray, 714, "NoSuchEntryInArray"),
            (
                UpnpError::WildCardNotPermittedInSrcIP,
                715,
                "WildCardNotPermittedInSrcIP",
            ),
            (
                UpnpError::WildCardNotPermittedInExtPort,
                716,
                "WildCardNotPermittedInExtPort",
            ),
            (
                UpnpError::ConflictInMappingEntry,
                718,
                "ConflictInMappingEntry",
            ),
            (
                UpnpError::SamePortValuesRequired,
                724,
                "SamePortValuesRequired",
            ),
            (
                UpnpError::OnlyPermanentLeasesSupported,
                725,
                "OnlyPermanentLeasesSupported",
            ),
            (
                UpnpError::RemoteHostOnlySupportsWildcard,
                726,
                "RemoteHostOnlySupportsWildcard",
            ),
            (
                UpnpError::ExternalPortOnlySupportsWildcard,
                727,
                "ExternalPortOnlySupportsWildcard",
            ),
            (UpnpError::NoPortMapsAvailable, 728, "NoPortMapsAvailable"),
            (
                UpnpError::ConflictWithOtherMechanisms,
                729,
                "ConflictWithOtherMechanisms",
            ),
            (UpnpError::PortMappingNotFound, 730, "PortMappingNotFound"),
            (
                UpnpError::WildCardNotPermittedInIntPort,
                732,
                "WildCardNotPermittedInIntPort",
            ),
            (
                UpnpError::InconsistentParameters,
                733,
                "InconsistentParameters",
            ),
        ];
        for (error, code, description) in all {
            assert_eq!(error.code(), code);
            assert_eq!(error.description(), description);
            let out = fault(error);
            well_formed(&out);
            assert!(
                out.contains("<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>"),
                "{out}"
            );
            assert!(out.contains(&format!(
                "<detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>{description}</errorDescription></UPnPError></detail>"
            )), "{out}");
        }
        assert_eq!(
            UpnpError::NoSuchEntryInArray.to_string(),
            "714 NoSuchEntryInArray"
        );
    }

    #[test]
    fn strict_number_parsers() {
        assert_eq!(parse_u16_port("6881", false), Ok(6881));
        assert_eq!(parse_u16_port(" 80 ", false), Ok(80));
        assert_eq!(parse_u16_port("65535", false), Ok(65535));
        assert_eq!(parse_u16_port("0", true), Ok(0));
        assert_eq!(parse_u16_port("00080", false), Ok(80));
        for bad in [
            "0",
            "65536",
            "70000",
            "-1",
            "+80",
            "0x50",
            "8 0",
            "",
            " ",
            "80a",
            "1e3",
            "99999999999999999999",
            "８０",
        ] {
            assert_eq!(
                parse_u16_port(bad, false),
                Err(UpnpError::InvalidArgs),
                "{bad:?}"
            );
        }
        assert_eq!(parse_u32("0"), Ok(0));
        assert_eq!(parse_u32("604800"), Ok(604_800));
        assert_eq!(parse_u32("4294967295"), Ok(u32::MAX));
        for bad in [
            "-1",
            "4294967296",
            "+1",
            "1.5",
            "",
            "0x10",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_u32(bad), Err(UpnpError::InvalidArgs), "{bad:?}");
        }
        for (s, b) in [
            ("1", true),
            ("0", false),
            ("TRUE", true),
            ("False", false),
            ("yes", true),
            ("No", false),
            (" 1 ", true),
        ] {
            assert_eq!(parse_bool(s), Ok(b), "{s:?}");
        }
        for bad in ["", "2", "on", "y", "truee"] {
            assert_eq!(parse_bool(bad), Err(UpnpError::InvalidArgs), "{bad:?}");
        }
        assert_eq!(parse_protocol("TCP"), Ok("TCP"));
        assert_eq!(parse_protocol("udp"), Ok("UDP"));
        assert_eq!(parse_protocol("Tcp"), Ok("TCP"));
        for bad in ["FOO", "", "TCPX", "ICMP"] {
            assert_eq!(parse_protocol(bad), Err(UpnpError::InvalidArgs), "{bad:?}");
        }
        assert_eq!(
            parse_ipv4("192.168.0.12"),
            Ok(Ipv4Addr::new(192, 168, 0, 12))
        );
        assert_eq!(parse_ipv4(" 10.0.0.1 "), Ok(Ipv4Addr::new(10, 0, 0, 1)));
        for bad in ["", "256.1.1.1", "1.2.3", "a.b.c.d", "::1", "1.2.3.4.5"] {
            assert_eq!(parse_ipv4(bad), Err(UpnpError::InvalidArgs), "{bad:?}");
        }
    }
}
