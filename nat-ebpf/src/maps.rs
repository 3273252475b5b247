//! The maps shared with user space. Their names are `nat_common::maps`.
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockMap},
};
use nat_common::{
    ALLOWED_REMOTES_MAX, AllowedRemote, BPF_F_MMAPABLE, Binding, BindingKey, COUNTER_COUNT,
    CounterValue, DEFAULT_BINDINGS_MAX, DEFAULT_FORWARD_SESSIONS_MAX, DEFAULT_FORWARDS_MAX,
    DEFAULT_SESSIONS_MAX, EndpointKey, FORWARD_HINT_WORDS, FORWARD_PORT_SLOTS, FRAGS_MAX, Forward,
    FragEntry, FragKey, MAX_RULES, NEW_CONNECTIONS_BYTES, NatConfig, PORT_SLOTS, PortOwner,
    RELAY_SOCKET_SLOTS, RELAY_TARGETS_MAX, RelayTarget, RuleCounters, SessionKey, SessionSlot,
    SweepParams, SweepStats, session_slots,
};

use crate::{
    egress::{AlignedFibParams, CachedRoute, ROUTE_CACHE_SLOTS},
    reject::ErrorBudget,
};

/// Map update flag: insert only if the key is absent, so that of two CPUs
/// claiming the same key exactly one wins.
pub const BPF_NOEXIST: u64 = 1;

#[map(name = "CONFIG")]
pub static CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// The outbound keys of static rules (a server's endpoint: the external
/// port its replies leave by), written only by the controller.
#[map(name = "FORWARDS")]
pub static FORWARDS: HashMap<EndpointKey, Forward> =
    HashMap::with_max_entries(DEFAULT_FORWARDS_MAX, 0);

/// The inbound rule on each (protocol, external port), by
/// `nat_common::forward_port_slot`: a `Forward::to_port_word`, 0 where no
/// rule is. Indexed, not hashed: a packet to a forwarded port costs an
/// array read where a `FORWARDS` lookup cost a hash, a bucket and a key
/// compare. The controller writes it through a memory map, one 8-byte
/// store a rule (a syscall update copies a value with `memcpy`, which a
/// packet could read half done). 1 MiB.
#[map(name = "FORWARD_PORTS")]
pub static FORWARD_PORTS: Array<u64> = Array::with_max_entries(FORWARD_PORT_SLOTS, BPF_F_MMAPABLE);

/// One bit per slot (`EndpointKey::hint_slot`) that some `FORWARDS` key
/// hashes to, written only by the controller: a clear bit says there is
/// nothing to look up (see `nat_common::FORWARD_HINT_BITS`).
#[map(name = "FORWARD_HINTS")]
pub static FORWARD_HINTS: Array<u64> = Array::with_max_entries(FORWARD_HINT_WORDS, 0);

/// The outbound halves of dynamic mappings, created here on the first
/// outbound packet. A plain hash (not LRU): evicting a live mapping under
/// pressure would silently break a flow, so a full table is a counted drop
/// instead.
#[map(name = "BINDINGS")]
pub static BINDINGS: HashMap<BindingKey, Binding> =
    HashMap::with_max_entries(DEFAULT_BINDINGS_MAX, 0);

/// The inbound halves: who holds each external port (`ports`), claimed
/// here and released by the sweep.
#[map(name = "PORT_OWNERS")]
pub static PORT_OWNERS: Array<PortOwner> = Array::with_max_entries(PORT_SLOTS, 0);

/// Dynamic sessions, an open-addressing table of `SessionSlot`s
/// (`session_table`): one cache line a flow. Its size is set at load
/// (`nat_common::session_slots`), with `NatConfig::session_mask`.
#[map(name = "SESSIONS")]
pub static SESSIONS: Array<SessionSlot> =
    Array::with_max_entries(session_slots(DEFAULT_SESSIONS_MAX), BPF_F_MMAPABLE);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// The NICs we may redirect to, keyed by ifindex.
#[map(name = "EGRESS")]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(16, 0);

/// Conversations through forwarded ports, a table like `SESSIONS`
/// (`session_table`) of its own, sized at load, with
/// `NatConfig::forward_session_mask`: a flood of new remotes on a
/// forwarded port evicts older conversations there and never crowds out
/// the dynamic sessions.
#[map(name = "FORWARD_SESSIONS")]
pub static FORWARD_SESSIONS: Array<SessionSlot> =
    Array::with_max_entries(session_slots(DEFAULT_FORWARD_SESSIONS_MAX), BPF_F_MMAPABLE);

/// Remote prefixes allowed through restricted forwards, per rule id.
#[map(name = "ALLOWED_REMOTES")]
pub static ALLOWED_REMOTES: LpmTrie<AllowedRemote, u8> =
    LpmTrie::with_max_entries(ALLOWED_REMOTES_MAX, 0);

#[map(name = "RULE_COUNTERS")]
pub static RULE_COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map(name = "NEW_CONNECTIONS")]
pub static NEW_CONNECTIONS: RingBuf = RingBuf::with_byte_size(NEW_CONNECTIONS_BYTES, 0);

#[map(name = "SWEEP_PARAMS")]
pub static SWEEP_PARAMS: Array<SweepParams> = Array::with_max_entries(1, 0);

#[map(name = "SWEEP_STATS")]
pub static SWEEP_STATS: Array<SweepStats> = Array::with_max_entries(1, 0);

/// The generation of the last sweep that saw a live session on each
/// (protocol, external port): no clearing between sweeps needed.
#[map(name = "LIVE_PORTS")]
pub static LIVE_PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// IP datagrams in flight as fragments (`frag`), by their identity as they
/// arrived: what their later fragments, which carry no L4 header, are
/// translated to. Aged by `FRAG_TIMEOUT_NS` and by the sweep.
#[map(name = "FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(FRAGS_MAX, 0);

/// The budget of ICMP errors the datapath itself sends (`reject`), per
/// CPU.
#[map(name = "ICMP_ERROR_BUDGET")]
pub static ICMP_ERROR_BUDGET: PerCpuArray<ErrorBudget> = PerCpuArray::with_max_entries(1, 0);

/// The external port a remote came in on to a mapping made for another
/// remote (endpoint-independent filtering under a per-remote mapping
/// behaviour), keyed as that remote's own mapping would be: how the host's
/// ICMP errors about its packets are translated (`lookup::note_admitted`).
/// Checked against `BINDINGS` on use, so never aged.
#[map(name = "STRANGER_PORTS")]
pub static STRANGER_PORTS: LruHashMap<BindingKey, u32> =
    LruHashMap::with_max_entries(STRANGER_PORTS_MAX, 0);

const STRANGER_PORTS_MAX: u32 = 16_384;

/// Datagrams the kernel reassembles for a target the datapath chose
/// (`frag::hand_to_relay`), by remote endpoint and external port
/// (`SessionKey`); read by `nat_relay_lookup` and the daemon's relay.
#[map(name = "RELAY_TARGETS")]
pub static RELAY_TARGETS: LruHashMap<SessionKey, RelayTarget> =
    LruHashMap::with_max_entries(RELAY_TARGETS_MAX, 0);

/// The daemon's relay sockets while it runs: its UDP socket
/// (`RELAY_SLOT_UDP`) and its TCP sink (`RELAY_SLOT_TCP_SINK`).
#[map(name = "RELAY_SOCKET")]
pub static RELAY_SOCKET: SockMap = SockMap::with_max_entries(RELAY_SOCKET_SLOTS, 0);

/// The coarse clock as this CPU last read it, and the jiffies it read it
/// at (`lookup::now_ns`): the clock only moves on a tick, so within one
/// tick the value is reused instead of calling the helper again.
#[map(name = "CLOCK")]
pub static CLOCK: PerCpuArray<ClockReading> = PerCpuArray::with_max_entries(1, 0);

/// The routes this CPU looked up last (`egress`), direct-mapped by a hash
/// of what they were looked up for: most packets reuse one instead of
/// calling `bpf_fib_lookup`. Per CPU, the datapath's own.
#[map(name = "ROUTE_CACHE")]
pub static ROUTE_CACHE: PerCpuArray<CachedRoute> =
    PerCpuArray::with_max_entries(ROUTE_CACHE_SLOTS, 0);

/// The parameters of this CPU's `bpf_fib_lookup` (`egress`): 64 bytes
/// the LAN flow's stack has no room for. Per CPU, the datapath's own.
#[map(name = "FIB_SCRATCH")]
pub static FIB_SCRATCH: PerCpuArray<AlignedFibParams> = PerCpuArray::with_max_entries(1, 0);

/// One entry of `CLOCK`; the datapath's own, never seen by user space.
#[repr(C)]
pub struct ClockReading {
    pub jiffies: u64,
    pub now_ns: u64,
}

/// What `validate` sums an ICMP error through, a chunk at a time: the
/// program's stack (512 bytes for all its frames, most of them the LAN
/// flow's) has no room for it. Per CPU, the datapath's own.
#[map(name = "SUM_SCRATCH")]
pub static SUM_SCRATCH: PerCpuArray<[u8; SUM_CHUNK]> = PerCpuArray::with_max_entries(1, 0);

/// The most `bpf_csum_diff` sums in one call.
pub const SUM_CHUNK: usize = 512;
