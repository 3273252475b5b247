//! SSDP M-SEARCH datagrams from the LAN: parsing, matching the search
//! target against the gateway's devices and services, and building the
//! answers, as the responder does for every datagram it receives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nat_ctl::upnp::{Identity, IgdVersion, ssdp};

/// A fixed identity shaped like `service::identity()` makes (which reads
/// /etc/machine-id, so is not used here).
fn identity() -> Identity {
    Identity {
        uuids: [
            "3b9c1e2a-0000-5000-8000-000000000001".to_owned(),
            "3b9c1e2a-0000-5000-8000-000000000002".to_owned(),
            "3b9c1e2a-0000-5000-8000-000000000003".to_owned(),
        ],
        friendly_name: "nat-router IGD".to_owned(),
        boot_id: 7,
        config_id: 2,
        server: "Linux UPnP/2.0 natctl/0.1.0".to_owned(),
    }
}

const LOCATION: &str = "http://192.168.0.1:5000/rootDesc.xml";

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ssdp::parse_search(data) else {
        return;
    };
    let _ = request.is_multicast();
    let identity = identity();
    for igd in [IgdVersion::V2, IgdVersion::V1] {
        for (st, usn) in ssdp::matches(&request.st, &identity, igd) {
            let response =
                ssdp::search_response(&st, &usn, LOCATION, &identity, ssdp::DEFAULT_MAX_AGE);
            std::hint::black_box(response);
        }
    }
});
