//! A minimal UPnP control client over raw HTTP/1.1: what miniupnpc sends
//! (one request per connection, `Connection: close`), or keep-alive.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Socket, Type};

use crate::traffic::uninterrupted;

pub const SERVICE: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_RESPONSE: usize = 64 * 1024;

/// Where the control URL is and which of the LAN host's addresses asks.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub server: SocketAddrV4,
    pub path: String,
    pub source: Ipv4Addr,
}

#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// A UDP mapping of `port` on the WAN address to `client:port`.
    Add {
        port: u16,
        client: Ipv4Addr,
        lease: u32,
    },
    Delete {
        port: u16,
    },
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Add { .. } => "AddPortMapping",
            Action::Delete { .. } => "DeletePortMapping",
        }
    }

    fn arguments(&self) -> String {
        match *self {
            Action::Add {
                port,
                client,
                lease,
            } => format!(
                "<NewRemoteHost></NewRemoteHost><NewExternalPort>{port}</NewExternalPort>\
                 <NewProtocol>UDP</NewProtocol><NewInternalPort>{port}</NewInternalPort>\
                 <NewInternalClient>{client}</NewInternalClient><NewEnabled>1</NewEnabled>\
                 <NewPortMappingDescription>upnpbench</NewPortMappingDescription>\
                 <NewLeaseDuration>{lease}</NewLeaseDuration>"
            ),
            Action::Delete { port } => format!(
                "<NewRemoteHost></NewRemoteHost><NewExternalPort>{port}</NewExternalPort>\
                 <NewProtocol>UDP</NewProtocol>"
            ),
        }
    }

    /// The whole request, as miniupnpc formats it.
    fn request(&self, endpoint: &Endpoint, keep_alive: bool) -> Vec<u8> {
        let name = self.name();
        let body = format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
             <u:{name} xmlns:u=\"{SERVICE}\">{}</u:{name}></s:Body></s:Envelope>\r\n",
            self.arguments()
        );
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Debian/12 UPnP/1.1 upnpbench/1.0\r\n\
             Content-Length: {}\r\nContent-Type: text/xml\r\nSOAPAction: \"{SERVICE}#{name}\"\r\n\
             Connection: {}\r\nCache-Control: no-cache\r\nPragma: no-cache\r\n\r\n{body}",
            endpoint.path,
            endpoint.server,
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        )
        .into_bytes()
    }
}

/// Where the time of one request went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// TCP handshake (zero on a reused connection).
    pub connect: Duration,
    /// Request written -> first byte of the response: the server's time.
    pub server: Duration,
    /// Connect (or write, when reused) -> whole response read.
    pub total: Duration,
}

pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server will close the connection after this response.
    pub closes: bool,
}

fn connect(endpoint: &Endpoint) -> Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&SocketAddr::from((endpoint.source, 0)).into())
        .with_context(|| format!("binding to {}", endpoint.source))?;
    socket
        .connect_timeout(&SocketAddr::from(endpoint.server).into(), IO_TIMEOUT)
        .with_context(|| format!("connecting to {}", endpoint.server))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Reads one response: the head, then Content-Length bytes (or up to EOF
/// when there is none). Returns it and when its first byte came.
fn read_response(stream: &mut TcpStream) -> Result<(Response, Instant)> {
    let mut buffer = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let mut first_byte = None;
    let head_end = loop {
        let read = uninterrupted(|| stream.read(&mut chunk)).context("reading the response")?;
        if read == 0 {
            bail!("connection closed after {} bytes of response", buffer.len());
        }
        first_byte.get_or_insert_with(Instant::now);
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MAX_RESPONSE {
            bail!("response head too large");
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line: {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let closes = header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"))
        || head.starts_with("HTTP/1.0");
    match header("content-length") {
        Some(length) => {
            let length: usize = length.parse().context("bad Content-Length")?;
            if length > MAX_RESPONSE {
                bail!("response body too large");
            }
            while buffer.len() < head_end + length {
                let read = uninterrupted(|| stream.read(&mut chunk)).context("reading the body")?;
                if read == 0 {
                    bail!("connection closed inside the body");
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            buffer.truncate(head_end + length);
        }
        None => {
            // No length: the body runs to EOF.
            loop {
                let read = uninterrupted(|| stream.read(&mut chunk)).context("reading the body")?;
                if read == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..read]);
                if buffer.len() > MAX_RESPONSE {
                    bail!("response body too large");
                }
            }
        }
    }
    let body = String::from_utf8_lossy(&buffer[head_end..]).into_owned();
    Ok((
        Response {
            status,
            body,
            closes: closes || header("content-length").is_none(),
        },
        first_byte.expect("at least one byte was read"),
    ))
}

/// Checks that the server did what was asked.
pub fn check(action: &Action, response: &Response) -> Result<()> {
    let expected = format!("{}Response", action.name());
    if response.status != 200 || !response.body.contains(&expected) {
        bail!(
            "{} got HTTP {}: {}",
            action.name(),
            response.status,
            response.body.chars().take(600).collect::<String>()
        );
    }
    Ok(())
}

/// A client: with `keep_alive`, it reuses its connection while the server
/// lets it; otherwise one connection per request, as miniupnpc does.
pub struct Client {
    endpoint: Endpoint,
    keep_alive: bool,
    stream: Option<TcpStream>,
    pub connections: u64,
}

impl Client {
    pub fn new(endpoint: Endpoint, keep_alive: bool) -> Self {
        Self {
            endpoint,
            keep_alive,
            stream: None,
            connections: 0,
        }
    }

    /// One request, checked; returns where its time went.
    pub fn call(&mut self, action: &Action) -> Result<Timing> {
        let (timing, response) = self.call_unchecked(action)?;
        check(action, &response)?;
        Ok(timing)
    }

    pub fn call_unchecked(&mut self, action: &Action) -> Result<(Timing, Response)> {
        match self.stream.take() {
            // A kept-alive connection the server has closed meanwhile: one
            // more try on a new one.
            Some(stream) => match self.exchange(action, Some(stream)) {
                Ok(done) => Ok(done),
                Err(_) => self.exchange(action, None),
            },
            None => self.exchange(action, None),
        }
    }

    fn exchange(
        &mut self,
        action: &Action,
        reused: Option<TcpStream>,
    ) -> Result<(Timing, Response)> {
        let start = Instant::now();
        let mut timing = Timing::default();
        let mut stream = match reused {
            Some(stream) => stream,
            None => {
                let stream = connect(&self.endpoint)?;
                self.connections += 1;
                timing.connect = start.elapsed();
                stream
            }
        };
        let request = action.request(&self.endpoint, self.keep_alive);
        let written = Instant::now();
        stream.write_all(&request).context("writing the request")?;
        let (response, first_byte) = read_response(&mut stream)?;
        let done = Instant::now();
        timing.server = first_byte - written;
        timing.total = done - start;
        if self.keep_alive && !response.closes {
            self.stream = Some(stream);
        }
        Ok((timing, response))
    }
}

/// The WANIPConnection control path the root description gives (natctl
/// draws it at each start; miniupnpd's is fixed).
pub fn control_path(endpoint: &Endpoint) -> Result<String> {
    let mut stream = connect(endpoint)?;
    stream.write_all(
        format!(
            "GET /rootDesc.xml HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            endpoint.server
        )
        .as_bytes(),
    )?;
    let (response, _) = read_response(&mut stream)?;
    let service = response
        .body
        .find("WANIPConnection:")
        .with_context(|| format!("no WANIPConnection in {}", response.body))?;
    let path = response.body[service..]
        .split_once("<controlURL>")
        .and_then(|(_, rest)| rest.split_once("</controlURL>"))
        .map(|(path, _)| path.trim().to_owned())
        .with_context(|| format!("no controlURL in {}", response.body))?;
    Ok(path)
}

/// GET of the root description: the server is up and answering.
pub fn get_description(endpoint: &Endpoint) -> Result<u16> {
    let mut stream = connect(endpoint)?;
    stream.write_all(
        format!(
            "GET /rootDesc.xml HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            endpoint.server
        )
        .as_bytes(),
    )?;
    let (response, _) = read_response(&mut stream)?;
    Ok(response.status)
}
