//! Request heads on the UPnP HTTP server: parsed by httparse (the parser
//! under hyper, which the real server uses), then checked and routed by
//! `route_head`, the server's one entry point for untrusted heads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nat_ctl::upnp::{IgdVersion, ServicePaths, http};

/// hyper's default limit on the number of headers.
const MAX_HEADERS: usize = 100;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    // A partial head is what hyper would wait on; only complete heads
    // reach the router.
    let Ok(httparse::Status::Complete(_)) = request.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return;
    };
    // hyper would hand over `uri.path()` and lower-cased header names; the
    // raw request target and names are a superset of those.
    let headers: Vec<(&str, &[u8])> = request
        .headers
        .iter()
        .map(|header| (header.name, header.value))
        .collect();
    let paths = ServicePaths::with_token("fuzz");
    let routed = http::route_head(
        method,
        path,
        &paths,
        &headers,
        IgdVersion::V2,
        &["Windows".into()],
    );
    std::hint::black_box(routed.ok());
});
