//! Types shared by the XDP datapath (`nat-ebpf`) and user space (`nat-ctl`).
//!
//! Every struct here is `#[repr(C)]` with explicit padding so that the kernel
//! and user space agree on its layout byte for byte. Addresses are kept as
//! network-order octets (what the packet carries, and what `Ipv4Addr` takes);
//! ports are kept in host order so that user space can read them directly.
#![no_std]

pub mod aging;

pub use aging::{STAMP_SLACK_NS, TOUCH_GRANULARITY_NS, idle_past, remaining_ns};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `EndpointKey::direction` for an entry keyed by an internal endpoint
/// (looked up by packets leaving the LAN).
pub const DIR_OUTBOUND: u8 = 0;
/// `EndpointKey::direction` for an entry keyed by an external port
/// (looked up by packets arriving for the WAN address). `addr` is zero.
pub const DIR_INBOUND: u8 = 1;

/// Key of a static rule's entry, one per direction. An outbound key (the
/// server's own endpoint) is a `FORWARDS` key; an inbound one (the external
/// port) names the rule's `FORWARD_PORTS` slot ([`forward_port_slot`]),
/// which a packet arriving for the WAN address finds by indexing, not
/// hashing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub direction: u8,
}

impl EndpointKey {
    pub const fn outbound(proto: u8, addr: [u8; 4], port: u16) -> Self {
        Self {
            addr,
            port,
            proto,
            direction: DIR_OUTBOUND,
        }
    }

    pub const fn inbound(proto: u8, external_port: u16) -> Self {
        Self {
            addr: [0; 4],
            port: external_port,
            proto,
            direction: DIR_INBOUND,
        }
    }

    /// This key's slot of `FORWARD_HINTS` (a multiplicative hash of its
    /// eight bytes), computed alike by the datapath and the daemon.
    pub const fn hint_slot(&self) -> u32 {
        let word = ((u32::from_ne_bytes(self.addr) as u64) << 32)
            | ((self.port as u64) << 16)
            | ((self.proto as u64) << 8)
            | self.direction as u64;
        (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FORWARD_HINT_BITS)) as u32
    }
}

/// Where `slot` is in a bitmap of `u64` words (`FORWARD_HINTS`,
/// [`RulePorts`]): the index of its word and its bit in that word.
pub const fn bit_position(slot: u32) -> (u32, u64) {
    (slot / 64, 1 << (slot % 64))
}

/// `FORWARD_HINTS` is a bitmap of `1 << FORWARD_HINT_BITS` slots: a slot's
/// bit is set while a `FORWARDS` key (outbound: inbound keys are not
/// there) has it as its [`EndpointKey::hint_slot`]. A packet from the LAN
/// looks its key up in `FORWARDS` only where the bit is set, so that the
/// hash-table miss almost every packet would pay (most flows are no
/// rule's) becomes an array read. Bits, not
/// counts: at 8 KiB the map stays in the L1 cache, where an array of
/// 65,536 counts (256 KiB) cost a flow of its own a cache line, a miss
/// per packet once flows are many. The daemon counts each slot's keys in
/// its own memory (from `FORWARDS` when it opens the maps), sets a bit
/// before it inserts its slot's first key and clears it after it removes
/// the last: a bit is never clear while a key it stands for is there.
pub const FORWARD_HINT_BITS: u32 = 16;
pub const FORWARD_HINT_SLOTS: u32 = 1 << FORWARD_HINT_BITS;
/// `FORWARD_HINTS`' entries: 64 slots to a word.
pub const FORWARD_HINT_WORDS: u32 = FORWARD_HINT_SLOTS / 64;

/// Key of `BINDINGS`, which holds the outbound halves of dynamic mappings:
/// like an outbound [`EndpointKey`] (`direction` is always
/// [`DIR_OUTBOUND`]), plus the remote the mapping is for. Under
/// endpoint-independent mapping the remote is zero, so one internal
/// endpoint has one mapping; under address-dependent mapping it is the
/// remote address (port 0), under address-and-port-dependent mapping the
/// remote address and port, so each remote gets a mapping (and an external
/// port) of its own. The inbound half is the external port's
/// [`PortOwner`]: one per port in every mode, so a reply needs one lookup
/// and the filter, not the key, decides which remotes may use it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BindingKey {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub direction: u8,
    pub remote_addr: [u8; 4],
    pub remote_port: u16,
    pub _pad: [u8; 2],
}

/// RFC 4787 mapping behaviour: what decides whether an outbound packet
/// reuses an internal endpoint's mapping.
pub const MAPPING_ENDPOINT_INDEPENDENT: u8 = 0;
pub const MAPPING_ADDRESS_DEPENDENT: u8 = 1;
pub const MAPPING_ADDRESS_AND_PORT_DEPENDENT: u8 = 2;

impl BindingKey {
    /// The outbound half of an endpoint-independent mapping.
    pub const fn outbound(proto: u8, addr: [u8; 4], port: u16) -> Self {
        Self::outbound_to(proto, addr, port, [0; 4], 0)
    }

    /// The outbound half of `addr:port`'s mapping toward a remote, as the
    /// `mapping` behaviour keys it (`MAPPING_*`). ICMP queries have no
    /// remote port: address-and-port-dependent is address-dependent there.
    pub const fn outbound_for(
        mapping: u8,
        proto: u8,
        addr: [u8; 4],
        port: u16,
        remote_addr: [u8; 4],
        remote_port: u16,
    ) -> Self {
        match mapping {
            MAPPING_ADDRESS_DEPENDENT => Self::outbound_to(proto, addr, port, remote_addr, 0),
            MAPPING_ADDRESS_AND_PORT_DEPENDENT if proto == PROTO_ICMP => {
                Self::outbound_to(proto, addr, port, remote_addr, 0)
            }
            MAPPING_ADDRESS_AND_PORT_DEPENDENT => {
                Self::outbound_to(proto, addr, port, remote_addr, remote_port)
            }
            _ => Self::outbound(proto, addr, port),
        }
    }

    pub const fn outbound_to(
        proto: u8,
        addr: [u8; 4],
        port: u16,
        remote_addr: [u8; 4],
        remote_port: u16,
    ) -> Self {
        Self {
            addr,
            port,
            proto,
            direction: DIR_OUTBOUND,
            remote_addr,
            remote_port,
            _pad: [0; 2],
        }
    }
}

/// The outbound half of a dynamic mapping: the external address and port
/// its internal endpoint (the key) is translated to. The inbound half is the
/// port's [`PortOwner`] slot; a mapping that kept its endpoint's own port
/// has no outbound half here, its slot says it all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Binding {
    pub addr: [u8; 4],
    pub port: u16,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last packet.
    pub last_seen_ns: u64,
}

/// `PORT_OWNERS` slots: one per (protocol, external port), for the three
/// protocols that have mappings. `LIVE_PORTS` uses the same slots.
pub const PORT_SLOTS: u32 = 3 * 65_536;

/// The slot of a (protocol, external port) in `PORT_OWNERS` and
/// `LIVE_PORTS`: TCP, then UDP, then ICMP, 65536 ports each. Other
/// protocols have no mappings, so no slot.
#[inline(always)]
pub const fn port_slot(proto: u8, port: u16) -> Option<u32> {
    let row = match proto {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        PROTO_ICMP => 2,
        _ => return None,
    };
    Some(row * 65_536 + port as u32)
}

/// The (protocol, port) of a `PORT_OWNERS` slot: [`port_slot`]'s inverse.
#[inline(always)]
pub const fn slot_port(slot: u32) -> Option<(u8, u16)> {
    let proto = match slot >> 16 {
        0 => PROTO_TCP,
        1 => PROTO_UDP,
        2 => PROTO_ICMP,
        _ => return None,
    };
    Some((proto, slot as u16))
}

/// The inbound half of a dynamic mapping: who holds an external port, in
/// `PORT_OWNERS` (an array, one slot per protocol and port). A port is
/// claimed by one compare-and-swap of [`PortOwner::owner`] from 0, where a
/// hash-table insert would cost a new mapping a few hundred nanoseconds,
/// and a reply finds its internal endpoint by indexing, not hashing. An
/// external port is never shared between mappings (no port overloading,
/// RFC 4787 REQ-3), so one slot holds one mapping in every mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortOwner {
    /// The internal endpoint and [`PORT_HELD`], as one word so that a
    /// reader never sees half of a change: 0 when the port is free.
    pub owner: u64,
    /// The remote of the outbound half's key (zero under
    /// endpoint-independent mapping), so that the sweep finds its partner.
    pub remote_addr: [u8; 4],
    pub remote_port: u16,
    pub _pad: [u8; 2],
    /// When the port was claimed and, for a mapping that kept its
    /// endpoint's own port (which has no outbound half in `BINDINGS`, see
    /// [`PortOwner::own_port_mapping_of`]), when an outbound packet last
    /// refreshed it. 0 from its release until its next claimant has
    /// stamped it, which the sweep leaves alone.
    pub seen_ns: u64,
    /// How many `BINDINGS` entries have this port as their internal
    /// endpoint's (a mapping whose endpoint's own port was taken): 0 tells
    /// a new flow, which reads this slot anyway, that its endpoint has no
    /// remapped mapping, without a `BINDINGS` miss. Whoever inserts such an
    /// entry adds one first and whoever removes one takes one off after,
    /// both atomically, so it is never below the number of entries; it
    /// counts no matter who holds the port, and is kept when the slot is
    /// claimed or freed.
    pub remapped: u32,
    pub _pad_end: [u8; 4],
}

/// The mark in [`PortOwner::owner`] that tells a held port from a free one
/// (an internal endpoint may be all zeroes, e.g. an ICMP id 0 from 0.0.0.0).
pub const PORT_HELD: u16 = 1;

impl PortOwner {
    /// The owner word of `addr:port`: its octets (as they lie in memory) in
    /// the low 32 bits, its port above them and the held mark on top.
    /// Numbers, not bytes, so that reading one back is a shift and a mask.
    pub const fn owner_word(addr: [u8; 4], port: u16) -> u64 {
        u32::from_ne_bytes(addr) as u64 | (port as u64) << 32 | (PORT_HELD as u64) << 48
    }

    /// The internal endpoint an owner word names, `None` for a free port.
    #[inline(always)]
    pub const fn endpoint_of(word: u64) -> Option<([u8; 4], u16)> {
        if (word >> 48) as u16 != PORT_HELD {
            return None;
        }
        Some(((word as u32).to_ne_bytes(), (word >> 32) as u16))
    }

    /// The internal endpoint holding the port, `None` when it is free.
    pub const fn endpoint(&self) -> Option<([u8; 4], u16)> {
        Self::endpoint_of(self.owner)
    }

    /// Whether this slot, the one of `key`'s own port, is the whole of
    /// `key`'s mapping: a mapping whose external port is its endpoint's own
    /// has no `BINDINGS` entry (the slot already names the endpoint and
    /// the remote it is for), which spares a new flow a hash-table insert.
    /// The datapath asks the same of a live slot in `ports::own_port_mapping`,
    /// reading the owner word once.
    pub fn own_port_mapping_of(&self, key: &BindingKey) -> bool {
        self.owner == Self::owner_word(key.addr, key.port)
            && self.remote_addr == key.remote_addr
            && self.remote_port == key.remote_port
    }

    /// The key of this port's outbound half, `None` when it is free.
    pub const fn outbound_partner(&self, proto: u8) -> Option<BindingKey> {
        let Some((addr, port)) = self.endpoint() else {
            return None;
        };
        Some(BindingKey::outbound_to(
            proto,
            addr,
            port,
            self.remote_addr,
            self.remote_port,
        ))
    }
}

/// A static forwarding entry, written only by the controller. For an inbound
/// key, `addr:port` is the internal server (in `FORWARD_PORTS` as one word,
/// [`Forward::to_port_word`]); for an outbound key (the server's replies),
/// `port` is the external port and `addr` is unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Forward {
    pub addr: [u8; 4],
    pub port: u16,
    /// `FORWARD_RESTRICTED`: only remotes listed in `ALLOWED_REMOTES` for
    /// this rule may come in.
    pub flags: u8,
    pub _pad: u8,
    /// Index into `RULE_COUNTERS`, and the rule's key in `ALLOWED_REMOTES`.
    pub rule_id: u32,
}

pub const FORWARD_RESTRICTED: u8 = 1;

/// Rule ids run from 1 to `MAX_RULES - 1`; 0 is never a rule.
pub const MAX_RULES: u32 = 8192;

/// `FORWARD_PORTS` slots: the TCP and UDP rows of [`port_slot`] (ICMP
/// query ids are never forwarded, so their row is left out).
pub const FORWARD_PORT_SLOTS: u32 = 2 * 65_536;

/// `BPF_F_MMAPABLE`: an array user space may map into its memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

// A `FORWARD_PORTS` word: the server's address (bits 0-31, in memory
// order), its port (32-47), the rule id (48-60) and `FORWARD_RESTRICTED`
// (61). One word, so that the controller changes a rule with one 8-byte
// store, which no CPU tears: a packet reads the old rule or the new one,
// never one's address with the other's port.
const WORD_PORT_SHIFT: u32 = 32;
const WORD_RULE_SHIFT: u32 = 48;
const WORD_RULE_BITS: u32 = 13;
const WORD_RESTRICTED_BIT: u64 = 1 << 61;
const _: () = assert!(MAX_RULES <= 1 << WORD_RULE_BITS);

impl Forward {
    /// This inbound rule as its `FORWARD_PORTS` word; `None` for a rule id
    /// outside `1..MAX_RULES` or a flag the word has no bit for.
    pub const fn to_port_word(&self) -> Option<u64> {
        if self.rule_id == 0 || self.rule_id >= MAX_RULES || self.flags & !FORWARD_RESTRICTED != 0 {
            return None;
        }
        let restricted = if self.flags & FORWARD_RESTRICTED != 0 {
            WORD_RESTRICTED_BIT
        } else {
            0
        };
        Some(
            u32::from_ne_bytes(self.addr) as u64
                | (self.port as u64) << WORD_PORT_SHIFT
                | (self.rule_id as u64) << WORD_RULE_SHIFT
                | restricted,
        )
    }

    /// The rule a `FORWARD_PORTS` word holds; `None` for an empty slot (0:
    /// no rule has id 0).
    #[inline(always)]
    pub const fn from_port_word(word: u64) -> Option<Forward> {
        let rule_id = (word >> WORD_RULE_SHIFT) as u32 & ((1 << WORD_RULE_BITS) - 1);
        if rule_id == 0 {
            return None;
        }
        Some(Forward {
            addr: (word as u32).to_ne_bytes(),
            port: (word >> WORD_PORT_SHIFT) as u16,
            flags: if word & WORD_RESTRICTED_BIT != 0 {
                FORWARD_RESTRICTED
            } else {
                0
            },
            _pad: 0,
            rule_id,
        })
    }
}

/// The slot of an inbound rule on (protocol, external port) in
/// `FORWARD_PORTS`: its [`port_slot`], for TCP and UDP only.
#[inline(always)]
pub const fn forward_port_slot(proto: u8, port: u16) -> Option<u32> {
    match proto {
        PROTO_TCP | PROTO_UDP => port_slot(proto, port),
        _ => None,
    }
}

/// Data of an `ALLOWED_REMOTES` key (an LPM trie): the rule id, always
/// matched in full, then the remote's address, matched up to the allowed
/// prefix. The key's prefix length is therefore `32 + prefix`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AllowedRemote {
    /// Big-endian, like everything an LPM trie compares bit by bit.
    pub rule_id: [u8; 4],
    pub addr: [u8; 4],
}

impl AllowedRemote {
    pub const fn new(rule_id: u32, addr: [u8; 4]) -> Self {
        Self {
            rule_id: rule_id.to_be_bytes(),
            addr,
        }
    }
}

/// Packets and bytes through one rule, per CPU, indexed by rule id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleCounters {
    /// Remote -> server.
    pub inbound: CounterValue,
    /// Server -> remote.
    pub outbound: CounterValue,
}

/// Sent to user space through `NEW_CONNECTIONS` when a remote opens a new
/// conversation with a forwarded port (not per packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnectionEvent {
    pub remote_addr: [u8; 4],
    pub internal_addr: [u8; 4],
    pub remote_port: u16,
    pub external_port: u16,
    pub internal_port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub rule_id: u32,
}

/// Key of `SESSIONS`: one external endpoint talking to one remote endpoint.
/// With address-dependent filtering the remote port is stored as 0; ICMP
/// query sessions have remote port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SessionKey {
    pub remote_addr: [u8; 4],
    pub remote_port: u16,
    pub external_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

pub const TCP_STATE_NONE: u8 = 0;
/// Only the LAN side has spoken (SYN sent, no answer yet).
pub const TCP_STATE_OPENING: u8 = 1;
pub const TCP_STATE_ESTABLISHED: u8 = 2;
/// FINs have been seen in both directions.
pub const TCP_STATE_CLOSING: u8 = 3;
/// An RST has been seen (data after it brings the connection back).
pub const TCP_STATE_CLOSED: u8 = 4;
/// The side that opened the connection has sent its FIN; the other may
/// still send data for as long as it likes (RFC 5382 REQ-2, RFC 7857).
pub const TCP_STATE_HALF_CLOSED_BY_OPENER: u8 = 5;
/// The other side has sent its FIN; the opener may still send data.
pub const TCP_STATE_HALF_CLOSED_BY_ANSWERER: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Session {
    pub last_seen_ns: u64,
    /// Both directions together, by plain adds: a flow's two directions
    /// may run on different CPUs, and an increment two CPUs make at the
    /// same instant may be lost, which no decision depends on.
    pub packets: u64,
    pub bytes: u64,
    pub internal_addr: [u8; 4],
    pub internal_port: u16,
    pub tcp_state: u8,
    pub _pad: u8,
}

/// `SessionSlot::state`: free, for any key to claim.
pub const SLOT_EMPTY: u64 = 0;
/// Claimed by one writer, which is filling in its key and session: no
/// reader matches it, no other writer takes it.
pub const SLOT_CLAIMED: u64 = 1;
/// Holds a session in its key's home slot ([`session_home`]).
pub const SLOT_LIVE: u64 = 2;
/// Holds a session whose home slot was taken when it was made: it is in
/// its second window ([`session_spill_probes`]), counted in its home slot's
/// `spilled`.
pub const SLOT_LIVE_SPILLED: u64 = 3;

/// Whether a slot's state word says it holds a session.
#[inline(always)]
pub const fn slot_is_live(state: u64) -> bool {
    state == SLOT_LIVE || state == SLOT_LIVE_SPILLED
}

/// The slots of a key's second window ([`session_spill_probes`]): a
/// lookup there reads at most this many slots, and an insert that finds
/// them all taken fails (`session_table_full`). The slots are spread over
/// the table (double hashing), not side by side: homes make dense runs
/// (one remote's sessions on every port), and a window of neighbours that
/// fell inside one would be full however empty the table (the part 4
/// benchmark's fill found one at a quarter full). Spread, each slot is
/// taken about as often as the table is full, so with the table at most
/// half full (as [`session_slots`] sizes it) all 32 are taken about once
/// in 4 billion inserts. Only the sessions whose home slot was taken go
/// there.
pub const SESSION_PROBES: u32 = 32;

/// How much longer ago a home slot's session must have been seen than a
/// session spilled from that home for the sweep to swap them (the spilled
/// one home, the other to its own second window): the sessions that talk
/// then cost a lookup one slot, while two that both talk stay put rather
/// than trade places at every sweep.
pub const HOMECOMING_MARGIN_NS: u64 = 1_000_000_000;

/// One slot of `SESSIONS`, an open-addressing table in an array: key,
/// state and session in one 64-byte cache line (the array is mappable, so
/// its values start on a page boundary and every slot is one line). A
/// kernel hash map keeps a bucket array apart from its elements, and each
/// element (96 bytes here) straddles lines: two or three dependent misses
/// a packet with many flows, where this is one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionSlot {
    /// `SLOT_EMPTY`, `SLOT_CLAIMED`, `SLOT_LIVE` or `SLOT_LIVE_SPILLED`;
    /// changed only by atomic swaps and compare-and-swaps (64 bits: the
    /// BPF CPUs this runs on all have a 64-bit compare-and-swap, not all a
    /// 32-bit one).
    pub state: u64,
    pub key: SessionKey,
    pub _pad: u32,
    pub session: Session,
    /// How many sessions whose home this slot is live in their second
    /// window: while 0, a key that is not here is nowhere. Counted up
    /// (atomically) before such a session is made, down by the sweep after
    /// it frees one; whatever the slot itself holds.
    pub spilled: u64,
}

const _: () = assert!(size_of::<SessionSlot>() == 64);

/// The slots of a `SESSIONS` table that is to hold `sessions`: a power of
/// two, so that a hash masks to a slot, and twice the sessions, so that the
/// table is at most half full and few sessions find their home taken.
pub const fn session_slots(sessions: u32) -> u32 {
    let wanted = if sessions < SESSION_PROBES {
        SESSION_PROBES
    } else {
        sessions
    };
    let slots = (wanted as u64 * 2).next_power_of_two();
    if slots > MAX_SESSION_SLOTS as u64 {
        MAX_SESSION_SLOTS
    } else {
        slots as u32
    }
}

/// The largest `SESSIONS` table: 2^26 slots, 4 GiB.
pub const MAX_SESSION_SLOTS: u32 = 1 << 26;

/// MurmurHash3's 64-bit finalizer: every input bit moves the low bits.
#[inline(always)]
const fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The home slot of `key` in a `SESSIONS` table under `seed` (before the
/// table's mask): a hash of the remote endpoint and protocol, plus the
/// external port. The sessions of one remote (a server many of a LAN's
/// connections go to, each from its own port) so lie side by side in the
/// order of their ports, a page holding 64 of them: a packet reaches its
/// flow's line through a TLB entry and prefetched lines its neighbours
/// already used, where a hash of the whole key would scatter them over the
/// whole table, a page (and a page walk) each. Seeded at random per table
/// (`NatConfig::session_seed`), so that nobody outside can tell where a
/// remote's sessions lie. A key whose home is taken goes to its second
/// window, so dense runs of one remote's sessions crowd nobody out.
#[inline(always)]
pub fn session_home(seed: u32, key: &SessionKey) -> u32 {
    let remote = (u32::from_ne_bytes(key.remote_addr) as u64) | ((key.remote_port as u64) << 32);
    let mixed = fmix64(
        remote ^ ((seed as u64) | ((key.proto as u64) << 48)).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    (mixed as u32).wrapping_add(key.external_port as u32)
}

/// The home slot of `key` in a `FORWARD_SESSIONS` table under `seed`:
/// as [`session_home`] with the ports' parts swapped, a hash of the remote
/// address, protocol and external (forwarded) port, plus the remote port.
/// There the external port is the rule's, the same for every
/// conversation, and what varies is the remote: one remote's connections
/// to a forwarded server (a browser's parallel requests, a peer's
/// streams, each from the next ephemeral port) so lie side by side. A
/// hash of the whole key put each on a page of its own: at 10,000
/// conversations, a page walk a packet that made the table slower than the
/// kernel's LRU hash map it replaced, whose elements lie in the order they
/// were made (bench part 3, `forwarded_inbound_many`).
#[inline(always)]
pub fn forward_session_home(seed: u32, key: &SessionKey) -> u32 {
    let remote = (u32::from_ne_bytes(key.remote_addr) as u64) | ((key.external_port as u64) << 32);
    let mixed = fmix64(
        remote ^ ((seed as u64) | ((key.proto as u64) << 48)).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    (mixed as u32).wrapping_add(key.remote_port as u32)
}

/// Which of the two session tables, for the code both share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionTableKind {
    /// `SESSIONS`, homed by [`session_home`].
    Dynamic,
    /// `FORWARD_SESSIONS`, homed by [`forward_session_home`].
    Forwarded,
}

impl SessionTableKind {
    /// `key`'s home slot under `seed`, before the table's mask.
    #[inline(always)]
    pub fn home(self, seed: u32, key: &SessionKey) -> u32 {
        match self {
            Self::Dynamic => session_home(seed, key),
            Self::Forwarded => forward_session_home(seed, key),
        }
    }
}

/// The second window of `key` (before the table's mask): its first slot
/// and the odd step to each next one (probe `i` is `first + i * step`, so
/// every slot of a power-of-two table is reachable), from a hash of the
/// whole key independent of [`session_home`], so that the sessions that
/// found their home taken spread over the table.
#[inline(always)]
pub fn session_spill_probes(seed: u32, key: &SessionKey) -> (u32, u32) {
    let ports = (key.remote_port as u64) | ((key.external_port as u64) << 16);
    let words = (u32::from_ne_bytes(key.remote_addr) as u64) | (ports << 32);
    let salt = ((seed as u64) << 8 | key.proto as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let hash = fmix64(words ^ salt);
    (hash as u32, (hash >> 32) as u32 | 1)
}

/// RFC 4787 filtering behaviour for inbound packets on a dynamic mapping.
pub const FILTER_ENDPOINT_INDEPENDENT: u8 = 0;
pub const FILTER_ADDRESS_DEPENDENT: u8 = 1;
pub const FILTER_ADDRESS_AND_PORT_DEPENDENT: u8 = 2;

/// What happens to an unsolicited inbound packet for the WAN address.
pub const UNSOLICITED_PASS: u8 = 0;
pub const UNSOLICITED_DROP: u8 = 1;

/// IP protocols other than TCP, UDP and ICMP (GRE, ESP, AH, SCTP, ...):
/// translated by address, one LAN host per (protocol, remote address) at a
/// time (VPN passthrough), or dropped from the LAN.
pub const OTHER_PROTOCOLS_TRANSLATE: u8 = 0;
pub const OTHER_PROTOCOLS_DROP: u8 = 1;

/// The single entry of `CONFIG`. A zero `wan_addr` means "not configured":
/// the datapath then passes everything to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    pub wan_addr: [u8; 4],
    pub lan_net: [u8; 4],
    pub lan_prefix_len: u8,
    pub filtering: u8,
    pub unsolicited: u8,
    pub hairpin: u8,
    pub wan_ifindex: u32,
    pub lan_ifindex: u32,
    /// Inclusive range of external ports handed out to dynamic mappings
    /// (and of ICMP query ids).
    pub port_min: u16,
    pub port_max: u16,
    /// `OTHER_PROTOCOLS_TRANSLATE` or `OTHER_PROTOCOLS_DROP`.
    pub other_protocols: u8,
    /// `MAPPING_*`: endpoint-independent (0) unless configured.
    pub mapping: u8,
    pub _pad: [u8; 2],
    /// The router's own address on the LAN NIC: the source of the ICMP
    /// errors the datapath itself sends to LAN hosts (RFC 5508 REQ-8).
    pub lan_addr: [u8; 4],
    /// Inclusive range of external ports for the dynamic mappings of
    /// source ports below 1024 (RFC 4787 REQ-3a): a system port is mapped
    /// to a system port. Zero: such ports are mapped into
    /// `port_min..=port_max` like the others.
    pub low_port_min: u16,
    pub low_port_max: u16,
    /// Moved on by every write of the configuration and whenever the
    /// daemon hears of a change to routes, neighbours, links or addresses:
    /// the datapath's cached routes of an older epoch are looked up again
    /// (`egress`).
    pub route_epoch: u32,
    /// The seed of `SESSIONS`' hashes ([`session_home`],
    /// [`session_spill_probes`]), chosen at random when the table is made and
    /// kept with it (a write of the rest of the configuration keeps it).
    pub session_seed: u32,
    /// `SESSIONS`' slots less one ([`session_slots`], a power of two),
    /// written with the seed.
    pub session_mask: u32,
    /// `FORWARD_SESSIONS`' slots less one, written with the seed, which
    /// that table shares.
    pub forward_session_mask: u32,
    pub _pad_masks: u32,
    /// The external ports static rules hold, which a new mapping skips.
    /// Written with the rules, by the daemon alone (a write of the rest of
    /// the configuration keeps them).
    pub rule_ports: RulePorts,
}

/// Words of [`RulePorts`]: a bit for each [`port_slot`].
pub const RULE_PORT_WORDS: usize = (PORT_SLOTS / 64) as usize;

/// A bit for each (protocol, external port) an inbound rule holds, by
/// [`port_slot`]: set before its `FORWARD_PORTS` slot is written, cleared
/// after the slot is emptied. Also the gate of that slot for every packet
/// to the WAN address: 24 KiB of bits rather than a line of the 1 MiB array
/// for each reply on a dynamic port. In `CONFIG`'s value, which every packet has at hand, so that a
/// new mapping's port search asks no hash table and puts no key on the
/// stack for each port it tries: a `FORWARDS` lookup that missed cost a
/// new flow about 130 ns (bench part 3), and a `FORWARD_HINTS` lookup in
/// the loop took `nat_lan_tc` past the verifier's 512-byte stack. 24 KiB.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RulePorts {
    pub words: [u64; RULE_PORT_WORDS],
}

impl RulePorts {
    /// Whether a rule holds `port` of `proto` (never, for a protocol
    /// without ports).
    #[inline(always)]
    pub fn holds(&self, proto: u8, port: u16) -> bool {
        match port_slot(proto, port) {
            Some(slot) => {
                let (word, bit) = bit_position(slot);
                // `get`: the verifier sees the index bounded.
                self.words
                    .get(word as usize)
                    .is_some_and(|bits| bits & bit != 0)
            }
            None => false,
        }
    }

    /// Marks `port` of `proto` held by a rule, or no longer held.
    pub fn set(&mut self, proto: u8, port: u16, held: bool) {
        if let Some(slot) = port_slot(proto, port) {
            let (word, bit) = bit_position(slot);
            let bits = &mut self.words[word as usize];
            if held {
                *bits |= bit;
            } else {
                *bits &= !bit;
            }
        }
    }
}

impl Default for RulePorts {
    fn default() -> Self {
        Self {
            words: [0; RULE_PORT_WORDS],
        }
    }
}

impl core::fmt::Debug for RulePorts {
    /// How many ports, not 3,072 words.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let held: u32 = self.words.iter().map(|word| word.count_ones()).sum();
        write!(f, "RulePorts({held} held)")
    }
}

/// Source ports below this are mapped into `NatConfig::low_port_min..=
/// low_port_max` (the "well-known" ports of RFC 6335, 0-1023).
pub const LOW_PORTS_END: u16 = 1024;

/// The layout of the pinned maps: what their keys and values mean. A
/// daemon picks up a pinned datapath of another build in place (flows
/// kept, programs replaced) only when this and every pinned map's key and
/// value sizes match; otherwise it replaces the whole datapath. Bump it
/// with any change to a pinned map's key or value, or to what a field of
/// one means, even at the same size.
///
/// 2: `NatConfig::lan_addr` (the source of the ICMP errors `reject` sends).
/// 3: `RELAY_TARGETS` and `RELAY_SOCKET` pinned; `COUNTERS` without
/// `drop_frag_untracked`, with the relay's counters.
/// 4: `FORWARD_HINTS` pinned (a datapath without it read in place would
/// skip every forward rule).
/// 5: `RELAY_SOCKET` of two slots (the relay's TCP sink), `RELAY_TARGETS`
/// for TCP and ICMP too, and `nat_relay_filter` pinned.
/// 6: `NatConfig::low_port_min`, `low_port_max`; `COUNTERS` with
/// `drop_icmp_bad_checksum` and `drop_icmp_bad_quoted_checksum`.
/// 7: `NatConfig::route_epoch`.
/// 8: a mapping's inbound half in `PORT_OWNERS` (pinned), not `BINDINGS`,
/// whose `Binding` lost the remote fields (16 bytes).
/// 9: `FORWARD_HINTS` a bitmap of `u64` words, not an array of counts;
/// `NatConfig::rule_ports`.
/// 10: `PortOwner::remapped` (32 bytes).
/// 11: inbound rules in `FORWARD_PORTS` (pinned), no longer in `FORWARDS`,
/// which keeps the outbound keys alone.
/// 12: `SESSIONS` an open-addressing array of `SessionSlot`s (mappable),
/// not a hash map; `NatConfig::session_seed`, `session_mask`.
/// 13: `FORWARD_SESSIONS` such a table too, not an LRU hash map;
/// `NatConfig::forward_session_mask`.
/// 14: `SweepStats::sessions_moved_home`, `forward_sessions_moved_home`.
pub const DATAPATH_LAYOUT: u32 = 14;

/// Per-CPU packet and byte counts, indexed by [`Counter`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        /// Index into `COUNTERS`: one per verdict and reason.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($(#[$doc])* $name,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// Stable name used by `natctl stats` and the tests.
            pub const fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }

            /// Counters named `drop_*` are the only verdicts that drop.
            pub const fn drops(self) -> bool {
                matches!(
                    self,
                    Counter::DropPortExhausted
                        | Counter::DropUnsolicited
                        | Counter::DropTableFull
                        | Counter::DropMalformed
                        | Counter::DropUnsupportedProto
                        | Counter::DropIcmpUntranslated
                        | Counter::DropIcmpUnknown
                        | Counter::DropIcmpBadChecksum
                        | Counter::DropIcmpBadQuotedChecksum
                        | Counter::DropFragIdBusy
                        | Counter::DropProtoBusy
                        | Counter::DropNoWanAddress
                        | Counter::DropToLanPrefix
                        | Counter::DropRelayDown
                )
            }
        }
    };
}

counters! {
    /// Every frame seen on LAN ingress.
    LanRx = "lan_rx",
    /// Every frame seen on WAN ingress.
    WanRx = "wan_rx",
    /// LAN -> WAN, source translated, redirected out of the WAN NIC.
    Snat = "snat",
    /// WAN -> LAN reply on a dynamic mapping, redirected to the LAN.
    Dnat = "dnat",
    /// WAN -> LAN through a static forwarding entry.
    Forwarded = "forwarded",
    /// LAN -> WAN address -> LAN, both addresses translated.
    Hairpin = "hairpin",
    /// ICMP error about a translated flow, translated back toward the LAN.
    IcmpErrorIn = "icmp_error_in",
    /// ICMP error from a LAN host about an inbound flow, translated out.
    IcmpErrorOut = "icmp_error_out",
    /// A dynamic mapping was created.
    NewBinding = "new_binding",
    /// No free external port after the bounded probe: dropped.
    DropPortExhausted = "drop_port_exhausted",
    /// A LAN host's packet that could get no mapping (`drop_port_exhausted`,
    /// `drop_table_full`) was answered with ICMP destination unreachable,
    /// code 13, "communication administratively prohibited" (RFC 5508
    /// REQ-8), sent back out of the LAN NIC.
    IcmpProhibitedSent = "icmp_prohibited_sent",
    /// As `icmp_prohibited_sent`, but the per-CPU budget of such errors
    /// was spent: the packet was dropped unanswered.
    IcmpProhibitedRateLimited = "icmp_prohibited_rate_limited",
    /// Unsolicited inbound packet handed to the kernel (router's own services).
    UnsolicitedPass = "unsolicited_pass",
    /// A new conversation on a forwarded port that one of the router's
    /// own sockets wants (a service listening on the port, or a
    /// connection the router made from it): handed to the router's stack.
    ForwardYieldedToRouter = "forward_yielded_to_router",
    /// Unsolicited inbound packet dropped by configuration.
    DropUnsolicited = "drop_unsolicited",
    /// The mapping table is full: dropped.
    DropTableFull = "drop_table_full",
    /// Translated, but the session table is full: replies may be filtered.
    SessionTableFull = "session_table_full",
    /// A new conversation on a forwarded port found `FORWARD_SESSIONS`
    /// full where it would go and took an older conversation's slot.
    ForwardSessionEvicted = "forward_session_evicted",
    /// Inbound packet on a forwarded port from a remote outside the rule's
    /// allowed prefix (then handled as unsolicited).
    RemoteNotAllowed = "remote_not_allowed",
    PassNotIpv4 = "pass_not_ipv4",
    PassVlan = "pass_vlan",
    PassMalformed = "pass_malformed",
    PassFragment = "pass_fragment",
    PassTtlExpired = "pass_ttl_expired",
    /// Not ours to translate: LAN-internal, to or from the router itself,
    /// multicast or broadcast.
    PassLocal = "pass_local",
    PassUnsupportedProto = "pass_unsupported_proto",
    /// The FIB has no forwarding route (unreachable, blackhole, ...).
    PassNoRoute = "pass_no_route",
    /// Larger than the egress MTU: the kernel fragments it or sends the
    /// ICMP "fragmentation needed" that path MTU discovery relies on.
    PassMtuExceeded = "pass_mtu_exceeded",
    /// Translated, but the next hop's MAC is not known yet: the kernel
    /// resolves it and forwards this packet.
    PassNoNeighbour = "pass_no_neighbour",
    /// The redirect to the egress NIC was refused.
    PassRedirectFailed = "pass_redirect_failed",
    /// A new connection on a forwarded port could not be reported to the
    /// controller (its ring was full); the packet itself went through.
    ConnectionEventLost = "connection_event_lost",
    /// From the LAN to the outside, with an IPv4 header the kernel would
    /// forward but an L4 header too short to translate: dropped.
    DropMalformed = "drop_malformed",
    /// From the LAN to the outside, an IP protocol that is not translated:
    /// dropped.
    DropUnsupportedProto = "drop_unsupported_proto",
    /// From the LAN to the outside, an ICMP error about nothing the NAT
    /// translated, or an echo reply answering nobody outside: dropped.
    DropIcmpUntranslated = "drop_icmp_untranslated",
    /// From the LAN to the outside, an ICMP type that is neither a query
    /// mapped by id nor an error: dropped.
    DropIcmpUnknown = "drop_icmp_unknown",
    /// An ICMP error, from either side, whose ICMP checksum does not hold:
    /// dropped untranslated (RFC 5508 REQ-3).
    DropIcmpBadChecksum = "drop_icmp_bad_checksum",
    /// An ICMP error whose own checksum holds but that of the IP header it
    /// quotes does not: dropped untranslated (RFC 5508 REQ-3a).
    DropIcmpBadQuotedChecksum = "drop_icmp_bad_quoted_checksum",
    /// Larger than the egress MTU with DF clear: translated, then handed
    /// to the kernel, which fragments it with the translated header.
    PassMtuTranslated = "pass_mtu_translated",
    /// A first fragment was recorded in `FRAGS` (with its verdict): the
    /// rest of its datagram follows its translation.
    FragTracked = "frag_tracked",
    /// A later fragment (no L4 header) translated by `FRAGS`, redirected.
    FragTranslated = "frag_translated",
    /// A `FRAGS` entry was met past its timeout, or removed by the sweep.
    FragExpired = "frag_expired",
    /// A LAN host's fragmented datagram left with another IP id than its
    /// own: another LAN host's datagram to the same remote held that id,
    /// and the remote would have reassembled the two as one.
    FragIdRewritten = "frag_id_rewritten",
    /// From the LAN, a fragmented datagram for which no free IP id was
    /// found towards its remote (a flood of datagrams in flight): dropped.
    DropFragIdBusy = "drop_frag_id_busy",
    /// From the LAN, another IP protocol (GRE, ESP, ...) to a remote that
    /// another LAN host already talks to in that protocol: only one can be
    /// translated by address. Dropped until that one ages out.
    DropProtoBusy = "drop_proto_busy",
    /// From the LAN to the outside while the WAN NIC has no address
    /// (nothing to translate to; the kernel would forward it as it is).
    DropNoWanAddress = "drop_no_wan_address",
    /// From the WAN to an address in the LAN prefix (the router's own LAN
    /// address included): only the NAT reaches the LAN, and the kernel
    /// would forward it there untranslated or answer from a LAN address.
    DropToLanPrefix = "drop_to_lan_prefix",
    /// A UDP, TCP or ICMP first fragment from outside, let in, whose
    /// datagram's later fragments came first and went to the kernel:
    /// passed for the kernel to reassemble, its target recorded in
    /// `RELAY_TARGETS` for the daemon's relay.
    PassFragReassembly = "pass_frag_reassembly",
    /// A UDP or TCP datagram the kernel reassembled, steered by
    /// `nat_relay_lookup` to the daemon's relay socket (TCP: its sink).
    RelaySteered = "relay_steered",
    /// A datagram the kernel reassembled for a recorded target, dropped by
    /// `nat_relay_lookup`: no relay socket (the daemon is not running).
    DropRelayDown = "drop_relay_down",
}

pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

/// Key of `FRAGS`: one IP datagram in flight, as it arrived (before any
/// translation), by the fields that identify its fragments (RFC 791).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Host order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// What the fragments of one datagram are translated to: the address
/// that replaces the source (leaving the LAN) or the destination
/// (arriving from outside).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragEntry {
    /// When the entry was made: fragments of one datagram arrive within
    /// `FRAG_TIMEOUT_NS` of each other or not at all.
    pub created_ns: u64,
    pub addr: [u8; 4],
    /// Fragments translated by this entry (the first one included).
    pub fragments: u16,
    /// Leaving the LAN, the IP id the datagram leaves with (host order):
    /// its own unless another LAN host's datagram to the same remote holds
    /// it. Arriving from outside, the datagram's own.
    pub id: u16,
}

/// Fragments in flight: an LRU, so that a flood of datagrams that never
/// complete evicts the oldest instead of blocking new ones.
pub const FRAGS_MAX: u32 = 8192;
/// A datagram's fragments must all arrive within this of its first
/// (tracked) one; Linux gives a reassembly 30 s, a NAT needs less.
pub const FRAG_TIMEOUT_NS: u64 = 5_000_000_000;
/// How long a remote's one LAN peer for fragments (the `FRAGS` entry with
/// no destination) stands, for later fragments that come before their
/// first.
pub const FRAG_PEER_TIMEOUT_NS: u64 = 30_000_000_000;

/// Where a datagram that the kernel reassembled goes (`RELAY_TARGETS`,
/// keyed by a `SessionKey`: the remote endpoint, or the LAN host of a
/// hairpinned datagram, and the external port it came to): the internal
/// endpoint the datapath chose for its first fragment, with the
/// datapath's own lookup and filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RelayTarget {
    pub created_ns: u64,
    pub addr: [u8; 4],
    pub port: u16,
    /// 0: the datagram keeps its source (a remote's, from outside). Else
    /// it was hairpinned: it leaves from the WAN address and this port,
    /// its sender's mapping toward the WAN address.
    pub source_port: u16,
}

/// Datagrams on their way through the kernel's reassembly to the relay:
/// an LRU, a flood evicts the oldest.
pub const RELAY_TARGETS_MAX: u32 = 1024;
/// A reassembled datagram is relayed only within this of its first
/// fragment's verdict: as for the fast path, its fragments arrive within
/// `FRAG_TIMEOUT_NS` of each other or not at all.
pub const RELAY_TIMEOUT_NS: u64 = FRAG_TIMEOUT_NS;
/// `RELAY_SOCKET`'s slots: the relay's UDP socket, which reads the UDP
/// datagrams steered to it, and its TCP sink, a listener that discards the
/// TCP ones (the relay reads those from a raw socket) so that the router's
/// own TCP never answers them.
pub const RELAY_SLOT_UDP: u32 = 0;
pub const RELAY_SLOT_TCP_SINK: u32 = 1;
pub const RELAY_SOCKET_SLOTS: u32 = 2;

/// Map names, as user space finds them in the object and in bpffs.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const FORWARDS: &str = "FORWARDS";
    pub const FORWARD_HINTS: &str = "FORWARD_HINTS";
    pub const FORWARD_PORTS: &str = "FORWARD_PORTS";
    pub const BINDINGS: &str = "BINDINGS";
    pub const PORT_OWNERS: &str = "PORT_OWNERS";
    pub const SESSIONS: &str = "SESSIONS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EGRESS: &str = "EGRESS";
    pub const FORWARD_SESSIONS: &str = "FORWARD_SESSIONS";
    pub const ALLOWED_REMOTES: &str = "ALLOWED_REMOTES";
    pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
    pub const NEW_CONNECTIONS: &str = "NEW_CONNECTIONS";
    pub const SWEEP_PARAMS: &str = "SWEEP_PARAMS";
    pub const SWEEP_STATS: &str = "SWEEP_STATS";
    pub const LIVE_PORTS: &str = "LIVE_PORTS";
    pub const FRAGS: &str = "FRAGS";
    pub const RELAY_TARGETS: &str = "RELAY_TARGETS";
    /// A sockmap of the relay's sockets (`RELAY_SLOT_UDP`,
    /// `RELAY_SLOT_TCP_SINK`).
    pub const RELAY_SOCKET: &str = "RELAY_SOCKET";
    pub const CLOCK: &str = "CLOCK";
}

/// Program names in the object.
pub mod programs {
    pub const LAN: &str = "nat_lan";
    pub const WAN: &str = "nat_wan";
    /// The same two in TC mode (`sched_cls` on the NIC's ingress), for NICs
    /// that may hand over partial checksums (veth, tun/tap, virtio_net).
    pub const LAN_TC: &str = "nat_lan_tc";
    pub const WAN_TC: &str = "nat_wan_tc";
    /// Does nothing but pass: attached to a veth peer so that it accepts
    /// frames redirected by XDP (the kernel enables NAPI only then).
    pub const PASS: &str = "xdp_pass";
    /// The aging sweep, run by user space through BPF_PROG_TEST_RUN.
    pub const SWEEP: &str = "nat_sweep";
    /// `sk_lookup` in the router's netns: steers datagrams the kernel
    /// reassembled for a recorded target to the daemon's relay socket.
    pub const RELAY_LOOKUP: &str = "nat_relay_lookup";
    /// The socket filter of the relay's raw TCP and ICMP sockets: only
    /// reassembled datagrams with a recorded target.
    pub const RELAY_FILTER: &str = "nat_relay_filter";
}

/// What one in-kernel aging sweep is told: idle timeouts in nanoseconds,
/// and a generation number that marks this sweep's live ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SweepParams {
    pub tcp_established_ns: u64,
    /// TCP before the handshake completes (RFC 5382's transitory timeout,
    /// opening half).
    pub tcp_opening_ns: u64,
    /// TCP after both FINs or an RST (the closing half).
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    pub icmp_ns: u64,
    /// The time to judge idleness by; 0: the kernel's clock now (tests set
    /// it to sweep a scenario as of a chosen instant).
    pub now_ns: u64,
    /// Never 0: a port marked with this sweep's number has a live session.
    pub generation: u32,
    pub _pad: u32,
}

/// What one in-kernel aging sweep did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SweepStats {
    pub scanned: u64,
    pub sessions_removed: u64,
    pub forward_sessions_removed: u64,
    /// BINDINGS entries: a mapping is two.
    pub bindings_removed: u64,
    /// Spilled sessions the sweep brought back to their home slot.
    pub sessions_moved_home: u64,
    pub forward_sessions_moved_home: u64,
}

/// Default map sizes; user space may override them before loading.
pub const DEFAULT_FORWARDS_MAX: u32 = 131_072;
/// One outbound half per held port at most (`PORT_SLOTS`, 196,608).
pub const DEFAULT_BINDINGS_MAX: u32 = 262_144;
pub const DEFAULT_SESSIONS_MAX: u32 = 524_288;
/// Conversations through forwarded ports, in a table of their own (twice
/// the slots, as `SESSIONS`): a flood of new remotes there evicts older
/// conversations, as an LRU would, and never crowds out the dynamic
/// sessions that filtering needs.
pub const DEFAULT_FORWARD_SESSIONS_MAX: u32 = 65_536;
pub const ALLOWED_REMOTES_MAX: u32 = 16_384;
/// Bytes of the new-connection ring; when it is full, events are counted
/// as lost rather than slowing the datapath.
pub const NEW_CONNECTIONS_BYTES: u32 = 256 * 1024;

/// Benchmark-only programs and maps (`nat-ebpf/src/bench.rs`): a traffic
/// generator, a counting sink, a plain forwarder without NAT, and a wrapper
/// that restores a frame template before tail-calling the datapath, for
/// `BPF_PROG_TEST_RUN` with `repeat`. Never loaded by `natctl`.
pub mod bench {
    /// Copies the template, varies a port, returns `XDP_TX`: driven by
    /// `BPF_PROG_TEST_RUN` in live-frames mode on a sending host's veth.
    pub const GENERATOR: &str = "bench_gen";
    /// Counts every frame in `BENCH_RX` and drops it.
    pub const SINK: &str = "bench_sink";
    /// FIB lookup, MAC rewrite and `EGRESS` redirect, no NAT.
    pub const FORWARDER: &str = "bench_fwd";
    /// The same, its routes from the NAT's route cache instead of a FIB
    /// lookup per packet.
    pub const FORWARDER_CACHED: &str = "bench_fwd_cached";
    /// Redirects every frame through `EGRESS` keyed by its ingress
    /// ifindex, nothing else: the lab's own per-packet cost (veth rings,
    /// NAPI, redirect), which the routers' own costs are measured above.
    pub const REDIRECT: &str = "bench_redirect";
    /// A new mapping's three hash-table inserts alone, under the keys the
    /// NAT gives the packet's flow; `XDP_DROP`, or `XDP_ABORTED` when one
    /// fails.
    pub const INSERTS: &str = "bench_inserts";
    /// Restores the template, then tail-calls the program in `BENCH_NEXT`.
    pub const RESTORE: &str = "bench_restore";
    /// The same for the TC programs: restores, then tail-calls the program
    /// in `BENCH_NEXT_TC`.
    pub const RESTORE_TC: &str = "bench_restore_tc";
    /// Returns `TC_ACT_OK`: the TC baseline behind `bench_restore_tc`.
    pub const TC_PASS: &str = "bench_tc_pass";

    pub const TEMPLATE_MAP: &str = "BENCH_TEMPLATE";
    pub const SEQ_MAP: &str = "BENCH_SEQ";
    pub const NEXT_MAP: &str = "BENCH_NEXT";
    pub const NEXT_TC_MAP: &str = "BENCH_NEXT_TC";
    pub const RX_MAP: &str = "BENCH_RX";

    /// Longest frame a template holds; its length must be a multiple of 4.
    pub const TEMPLATE_MAX: usize = 128;

    /// The single entry of `BENCH_TEMPLATE`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct BenchTemplate {
        /// Bytes of `frame` copied into the packet (a multiple of 4).
        pub len: u32,
        /// How many values the varied port takes, `base_port` upwards, one
        /// per packet in turn; 0 or 1: the port stays as in `frame`.
        pub flows: u32,
        /// Offset of the varied 16-bit port in the frame.
        pub port_offset: u32,
        /// Offset of the L4 checksum covering that port, fixed up
        /// incrementally; 0: none.
        pub check_offset: u32,
        pub base_port: u16,
        pub _pad: [u8; 6],
        pub frame: [u8; TEMPLATE_MAX],
    }

    impl Default for BenchTemplate {
        fn default() -> Self {
            Self {
                len: 0,
                flows: 0,
                port_offset: 0,
                check_offset: 0,
                base_port: 0,
                _pad: [0; 6],
                frame: [0; TEMPLATE_MAX],
            }
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), integers and byte arrays, padding spelled out.
    unsafe impl aya::Pod for BenchTemplate {}
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and byte
    // arrays, with every padding byte spelled out as a field.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for BindingKey {}
    unsafe impl aya::Pod for Binding {}
    unsafe impl aya::Pod for PortOwner {}
    unsafe impl aya::Pod for Forward {}
    unsafe impl aya::Pod for SessionKey {}
    unsafe impl aya::Pod for Session {}
    unsafe impl aya::Pod for SessionSlot {}
    unsafe impl aya::Pod for NatConfig {}
    unsafe impl aya::Pod for CounterValue {}
    unsafe impl aya::Pod for AllowedRemote {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for ConnectionEvent {}
    unsafe impl aya::Pod for SweepParams {}
    unsafe impl aya::Pod for SweepStats {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for RelayTarget {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// Rule keys of nearby ports and hosts land in different slots of
    /// `FORWARD_HINTS`, so that a few rules leave almost every packet's
    /// bit clear (nothing to look up).
    #[test]
    fn forward_hint_slots_spread_nearby_keys() {
        let mut seen = [false; FORWARD_HINT_SLOTS as usize];
        let mut distinct = 0;
        let mut mark = |key: EndpointKey| {
            let slot = key.hint_slot() as usize;
            assert!(slot < FORWARD_HINT_SLOTS as usize);
            if !seen[slot] {
                seen[slot] = true;
                distinct += 1;
            }
        };
        for port in 1000..3000 {
            mark(EndpointKey::inbound(PROTO_TCP, port));
            mark(EndpointKey::inbound(PROTO_UDP, port));
        }
        for host in 2..=255 {
            mark(EndpointKey::outbound(PROTO_TCP, [192, 168, 1, host], 22));
        }
        // 4,253 keys in 65,536 slots: random ones would share about 130.
        assert!(distinct > 4_000, "only {distinct} distinct slots");
    }

    #[test]
    fn a_forward_goes_through_its_port_word_unchanged() {
        for forward in [
            Forward {
                addr: [192, 168, 1, 20],
                port: 8080,
                flags: 0,
                _pad: 0,
                rule_id: 1,
            },
            Forward {
                addr: [255, 255, 255, 254],
                port: 65535,
                flags: FORWARD_RESTRICTED,
                _pad: 0,
                rule_id: MAX_RULES - 1,
            },
        ] {
            let word = forward.to_port_word().unwrap();
            assert_ne!(word, 0);
            assert_eq!(Forward::from_port_word(word), Some(forward));
        }
        assert_eq!(Forward::from_port_word(0), None);
    }

    #[test]
    fn a_forward_the_word_cannot_hold_has_none() {
        let fits = Forward {
            addr: [10, 0, 0, 1],
            port: 22,
            flags: 0,
            _pad: 0,
            rule_id: 7,
        };
        assert!(fits.to_port_word().is_some());
        for forward in [
            Forward { rule_id: 0, ..fits },
            Forward {
                rule_id: MAX_RULES,
                ..fits
            },
            Forward { flags: 2, ..fits },
        ] {
            assert_eq!(forward.to_port_word(), None, "{forward:?}");
        }
        assert_eq!(forward_port_slot(PROTO_ICMP, 1), None);
        assert_eq!(
            forward_port_slot(PROTO_UDP, 65535),
            Some(FORWARD_PORT_SLOTS - 1)
        );
    }

    #[test]
    fn rule_ports_hold_each_protocols_ports_apart() {
        let mut ports = RulePorts::default();
        ports.set(PROTO_TCP, 40000, true);
        ports.set(PROTO_ICMP, 65535, true);
        assert!(ports.holds(PROTO_TCP, 40000));
        assert!(!ports.holds(PROTO_UDP, 40000));
        assert!(!ports.holds(PROTO_TCP, 40001));
        assert!(ports.holds(PROTO_ICMP, 65535));
        // GRE and the like have no ports to hold.
        ports.set(47, 40000, true);
        assert!(!ports.holds(47, 40000));
        ports.set(PROTO_TCP, 40000, false);
        assert!(!ports.holds(PROTO_TCP, 40000));
        let held: u32 = ports.words.iter().map(|word| word.count_ones()).sum();
        assert_eq!(held, 1);
    }

    #[test]
    fn an_owner_word_names_its_endpoint_and_only_a_held_one() {
        for (addr, port) in [([192, 168, 0, 10], 4000), ([0; 4], 0), ([255; 4], 65535)] {
            let word = PortOwner::owner_word(addr, port);
            assert_ne!(word, 0, "{addr:?}:{port} must not look free");
            assert_eq!(PortOwner::endpoint_of(word), Some((addr, port)));
        }
        assert_eq!(PortOwner::endpoint_of(0), None);
    }

    #[test]
    fn session_tables_are_twice_their_load_in_a_power_of_two() {
        assert_eq!(session_slots(DEFAULT_SESSIONS_MAX), 1 << 20);
        assert_eq!(session_slots(1_000_000), 1 << 21);
        assert_eq!(session_slots(0), 2 * SESSION_PROBES);
        assert_eq!(session_slots(u32::MAX), MAX_SESSION_SLOTS);
    }

    #[test]
    fn one_remotes_conversations_on_a_forwarded_port_lie_side_by_side() {
        let key = |remote_port, external_port| SessionKey {
            remote_addr: [198, 51, 100, 7],
            remote_port,
            external_port,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let home = forward_session_home(7, &key(40000, 443));
        for offset in 1..100u16 {
            let next = forward_session_home(7, &key(40000 + offset, 443));
            assert_eq!(next, home.wrapping_add(u32::from(offset)));
        }
        assert_ne!(forward_session_home(7, &key(40000, 80)), home);
        assert_ne!(forward_session_home(8, &key(40000, 443)), home);
        let other_remote = SessionKey {
            remote_addr: [198, 51, 100, 8],
            ..key(40000, 443)
        };
        assert_ne!(forward_session_home(7, &other_remote), home);
        assert_eq!(SessionTableKind::Forwarded.home(7, &key(40000, 443)), home);
        assert_eq!(
            SessionTableKind::Dynamic.home(7, &key(40000, 443)),
            session_home(7, &key(40000, 443))
        );
    }

    #[test]
    fn one_remotes_sessions_lie_side_by_side_and_the_seed_moves_them() {
        let key = |remote_port, external_port| SessionKey {
            remote_addr: [198, 51, 100, 7],
            remote_port,
            external_port,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let home = session_home(7, &key(443, 40000));
        for offset in 1..100u16 {
            let next = session_home(7, &key(443, 40000 + offset));
            assert_eq!(next, home.wrapping_add(u32::from(offset)));
        }
        // Another remote port, protocol or seed: somewhere else.
        assert_ne!(session_home(7, &key(80, 40000)), home);
        assert_ne!(session_home(8, &key(443, 40000)), home);
        let udp = SessionKey {
            proto: PROTO_UDP,
            ..key(443, 40000)
        };
        assert_ne!(session_home(7, &udp), home);
        // The second window does not follow the home: neighbours spread.
        let mut spills = [0u32; 64];
        for (offset, spill) in spills.iter_mut().enumerate() {
            *spill = session_spill_probes(7, &key(443, 40000 + offset as u16)).0 >> 20;
        }
        spills.sort_unstable();
        let distinct = 1 + spills.windows(2).filter(|pair| pair[0] != pair[1]).count();
        assert!(distinct > 32, "second windows bunched: {spills:?}");
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EndpointKey>(), 8);
        assert_eq!(size_of::<BindingKey>(), 16);
        assert_eq!(size_of::<Binding>(), 16);
        assert_eq!(size_of::<PortOwner>(), 32);
        assert_eq!(size_of::<Forward>(), 12);
        assert_eq!(size_of::<AllowedRemote>(), 8);
        assert_eq!(size_of::<RuleCounters>(), 32);
        assert_eq!(size_of::<ConnectionEvent>(), 20);
        assert_eq!(size_of::<SweepParams>(), 56);
        assert_eq!(size_of::<SweepStats>(), 48);
        assert_eq!(size_of::<SessionKey>(), 12);
        assert_eq!(size_of::<Session>(), 32);
        assert_eq!(size_of::<NatConfig>(), 56 + 8 * RULE_PORT_WORDS);
        assert_eq!(size_of::<SessionSlot>(), 64);
        assert_eq!(size_of::<bench::BenchTemplate>(), 152);
        assert_eq!(size_of::<CounterValue>(), 16);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragEntry>(), 16);
        assert_eq!(size_of::<RelayTarget>(), 16);
    }

    #[test]
    fn mapping_behaviour_decides_how_much_of_the_remote_keys_a_mapping() {
        let (host, remote) = ([192, 168, 0, 10], [198, 51, 100, 2]);
        let key = |mapping, proto| BindingKey::outbound_for(mapping, proto, host, 4000, remote, 53);
        let remote_of = |key: BindingKey| (key.remote_addr, key.remote_port);
        assert_eq!(
            key(MAPPING_ENDPOINT_INDEPENDENT, PROTO_UDP),
            BindingKey::outbound(PROTO_UDP, host, 4000)
        );
        assert_eq!(
            remote_of(key(MAPPING_ADDRESS_DEPENDENT, PROTO_UDP)),
            (remote, 0)
        );
        assert_eq!(
            remote_of(key(MAPPING_ADDRESS_AND_PORT_DEPENDENT, PROTO_UDP)),
            (remote, 53)
        );
        assert_eq!(
            remote_of(key(MAPPING_ADDRESS_AND_PORT_DEPENDENT, PROTO_ICMP)),
            (remote, 0)
        );
        let owner = PortOwner {
            owner: PortOwner::owner_word(host, 4000),
            remote_addr: remote,
            remote_port: 53,
            ..Default::default()
        };
        assert_eq!(
            owner.outbound_partner(PROTO_UDP),
            Some(key(MAPPING_ADDRESS_AND_PORT_DEPENDENT, PROTO_UDP))
        );
        assert_eq!(PortOwner::default().outbound_partner(PROTO_UDP), None);
    }

    #[test]
    fn exactly_the_drop_counters_drop() {
        for counter in Counter::ALL {
            assert_eq!(
                counter.drops(),
                counter.label().starts_with("drop_"),
                "{}",
                counter.label()
            );
        }
    }

    #[test]
    fn counter_labels_are_unique() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }
}
