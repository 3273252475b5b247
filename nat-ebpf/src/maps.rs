//! The maps shared with user space. Their names are `nat_common::maps`.
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use nat_common::{
    Binding, COUNTER_COUNT, CounterValue, DEFAULT_BINDINGS_MAX, DEFAULT_FORWARDS_MAX,
    DEFAULT_SESSIONS_MAX, EndpointKey, Forward, NatConfig, Session, SessionKey,
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// Static forwarding entries, written only by the controller.
#[map(name = "FORWARDS")]
pub static FORWARDS: HashMap<EndpointKey, Forward> =
    HashMap::with_max_entries(DEFAULT_FORWARDS_MAX, 0);

/// Dynamic mappings, created here on the first outbound packet. A plain hash
/// (not LRU): evicting a live mapping under pressure would silently break a
/// flow, so a full table is a counted drop instead.
#[map(name = "BINDINGS")]
pub static BINDINGS: HashMap<EndpointKey, Binding> =
    HashMap::with_max_entries(DEFAULT_BINDINGS_MAX, 0);

#[map(name = "SESSIONS")]
pub static SESSIONS: HashMap<SessionKey, Session> =
    HashMap::with_max_entries(DEFAULT_SESSIONS_MAX, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// The NICs we may redirect to, keyed by ifindex.
#[map(name = "EGRESS")]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(16, 0);
