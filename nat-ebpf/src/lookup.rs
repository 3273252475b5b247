//! Lookups: configuration, static forwards and their allowed remotes,
//! existing dynamic bindings, and the router's own sockets. New bindings
//! are made in `binding`.
use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
    },
    helpers::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_sk_lookup_tcp, bpf_sk_lookup_udp,
        bpf_sk_release,
    },
    maps::lpm_trie::Key,
};
use nat_common::{
    AllowedRemote, BindingKey, EndpointKey, FILTER_ENDPOINT_INDEPENDENT, FORWARD_RESTRICTED,
    Forward, MAPPING_ENDPOINT_INDEPENDENT, NatConfig, PROTO_TCP, PROTO_UDP,
};

use crate::{
    context::NatContext,
    maps::{
        ALLOWED_REMOTES, BINDINGS, CLOCK, CONFIG, FORWARD_HINTS, FORWARD_PORTS, FORWARDS,
        STRANGER_PORTS,
    },
    parse::{Endpoint, Ipv4Packet, Side},
    session::{
        Conversation, forward_conversation_exists, session_inbound, session_outbound_existing,
    },
};

#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    CONFIG.get(0).filter(|config| config.wan_addr != [0; 4])
}

/// The configuration while the WAN NIC has no address: only the LAN
/// prefix (none either: `None`).
#[inline(always)]
pub fn config_without_wan() -> Option<&'static NatConfig> {
    CONFIG.get(0).filter(|config| config.lan_prefix_len != 0)
}

/// `CLOCK_MONOTONIC_COARSE`, which the kernel moves on each tick, as
/// jiffies. The helper call costs some 15 ns a packet; the verifier inlines
/// `bpf_jiffies64` into a load, so within a tick this CPU's last reading
/// is used again. A reading taken between a tick's jiffies update and its
/// clock update is one tick old for one more tick: at most two ticks in
/// all, which `STAMP_SLACK_NS` allows for.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helpers without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(reading) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: a per-CPU slot, touched only by this CPU with preemption
    // disabled. A slot never written holds 0 (read afresh).
    unsafe {
        if (*reading).jiffies == jiffies && (*reading).now_ns != 0 {
            return (*reading).now_ns;
        }
        let now = bpf_ktime_get_coarse_ns();
        (*reading).jiffies = jiffies;
        (*reading).now_ns = now;
        now
    }
}

#[inline(always)]
pub fn in_prefix(addr: [u8; 4], net: [u8; 4], prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let mask = u32::MAX << (32 - u32::from(prefix_len.min(32)));
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(net) & mask
}

/// The rule `FORWARDS` holds for the outbound `key`; not looked up where
/// `FORWARD_HINTS` says no key of its slot is there.
#[inline(always)]
fn forward(key: EndpointKey) -> Option<Forward> {
    let (word, bit) = nat_common::bit_position(key.hint_slot());
    if FORWARD_HINTS.get(word).is_some_and(|bits| *bits & bit == 0) {
        return None;
    }
    // SAFETY: only the controller writes FORWARDS; a concurrent update can at
    // worst hand this packet the old or the new rule.
    unsafe { FORWARDS.get(key).copied() }
}

/// The rule on `external_port`: its `FORWARD_PORTS` word, read only where
/// `NatConfig::rule_ports` marks the port (so a reply on a dynamic port
/// touches no line of that array).
#[inline(always)]
pub fn forward_inbound(config: &NatConfig, proto: u8, external_port: u16) -> Option<Forward> {
    if !config.rule_ports.holds(proto, external_port) {
        return None;
    }
    let slot = FORWARD_PORTS.get_ptr(nat_common::forward_port_slot(proto, external_port)?)?;
    // SAFETY: a pointer into a live array value, 8-byte aligned; read once
    // (the kernel's READ_ONCE), as the controller stores it whole.
    Forward::from_port_word(unsafe { core::ptr::read_volatile(slot) })
}

/// Whether a static rule holds `external_port`: for the port search of a
/// new mapping, by `NatConfig::rule_ports`, with no hash-table lookup and
/// no key on the stack in any of its probes.
#[inline(always)]
pub fn rule_holds_port(config: &NatConfig, proto: u8, external_port: u16) -> bool {
    config.rule_ports.holds(proto, external_port)
}

/// The static rule whose internal server is `internal`: its `port` is the
/// external port.
#[inline(always)]
pub fn forward_outbound(proto: u8, internal: Endpoint) -> Option<Forward> {
    forward(EndpointKey::outbound(proto, internal.addr, internal.port))
}

/// Whether `remote` may use the forward: any remote, unless the rule lists
/// the prefixes allowed in.
#[inline(always)]
pub fn remote_allowed(forward: &Forward, remote: [u8; 4]) -> bool {
    if forward.flags & FORWARD_RESTRICTED == 0 {
        return true;
    }
    let key = Key::new(64, AllowedRemote::new(forward.rule_id, remote));
    ALLOWED_REMOTES.get(key).is_some()
}

/// Refreshes a mapping's stamp (`Binding::last_seen_ns`, or
/// `PortOwner::seen_ns` for one that kept its endpoint's port), at most
/// once per `TOUCH_GRANULARITY_NS`, so that a busy flow does not write a
/// shared cache line on every packet.
#[inline(always)]
fn touch(stamp: *mut u64, now: u64) {
    // SAFETY: a pointer into a map value; a torn stamp is harmless (aging
    // re-reads it).
    unsafe {
        if now.wrapping_sub(*stamp) > nat_common::TOUCH_GRANULARITY_NS {
            *stamp = now;
        }
    }
}

/// The internal endpoint behind a dynamic mapping's external port. Inbound
/// packets never refresh a mapping themselves (RFC 4787 REQ-6 asks only
/// outbound ones to): a reply the filter lets in refreshes its session,
/// which keeps the mapping alive; a stranger's packet, filtered, keeps
/// nothing alive (the attack of RFC 4787 section 4.3).
#[inline(always)]
pub fn binding_inbound(proto: u8, external_port: u16) -> Option<Endpoint> {
    crate::ports::owner(proto, external_port)
}

/// Calls `f` with `key` as the map helpers read it: stored a word at a
/// time, volatile. Under endpoint-independent mapping nine bytes in a row
/// of an outbound key are constant zeroes (direction, remote, padding),
/// which LLVM otherwise clears with a call to the BPF target's
/// byte-at-a-time `memset`, on every packet.
#[inline(always)]
pub fn with_binding_key<R>(key: BindingKey, f: impl FnOnce(&BindingKey) -> R) -> R {
    // SAFETY: BindingKey is repr(C), 16 bytes of plain integers (the
    // transmute fails to compile if its size changes).
    let words = unsafe { core::mem::transmute::<BindingKey, [u64; 2]>(key) };
    let mut slot = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    let slot_words = slot.as_mut_ptr().cast::<u64>();
    // SAFETY: both words are within `slot`, which is 8-byte aligned; once
    // written, `slot` holds a valid BindingKey (alignment 2).
    unsafe {
        slot_words.write_volatile(words[0]);
        slot_words.add(1).write_volatile(words[1]);
        f(&*slot.as_ptr().cast::<BindingKey>())
    }
}

/// The key of `internal`'s mapping toward `remote` under the configured
/// mapping behaviour (RFC 4787 section 4.1).
#[inline(always)]
pub fn mapping_key(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
) -> BindingKey {
    BindingKey::outbound_for(
        config.mapping,
        proto,
        internal.addr,
        internal.port,
        remote.addr,
        remote.port,
    )
}

/// The external port of `key`'s mapping, and the stamp an outbound packet
/// refreshes: its port's slot when it kept its endpoint's own port (it has
/// no outbound half then), else its `BINDINGS` entry, looked up only if
/// that slot counts any remapped endpoint on its port: a new flow's
/// endpoint nearly never is, and the miss would cost it a hash and a
/// bucket's cache line.
#[inline(always)]
fn mapping_of(key: BindingKey) -> Option<(u16, *mut u64)> {
    if let Some(stamp) = crate::ports::own_port_mapping(&key) {
        return Some((key.port, stamp));
    }
    if !crate::ports::may_be_remapped(key.proto, key.port) {
        return None;
    }
    let binding = with_binding_key(key, |key| BINDINGS.get_ptr_mut(key))?;
    // SAFETY: a pointer returned by a map lookup.
    Some(unsafe { ((*binding).port, &raw mut (*binding).last_seen_ns) })
}

/// The external port of `internal`'s existing dynamic mapping toward
/// `remote` (any remote under endpoint-independent mapping).
#[inline(always)]
pub fn binding_outbound(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
    now: u64,
) -> Option<u16> {
    let (port, stamp) = mapping_of(mapping_key(config, proto, internal, remote))?;
    touch(stamp, now);
    Some(port)
}

/// As [`outbound_external`], for an ICMP error about the flow: the mapping
/// is read, never refreshed (RFC 5508 REQ-6).
#[inline(always)]
pub fn outbound_external_unrefreshed(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
) -> Option<u16> {
    let mapped = mapping_of(mapping_key(config, proto, internal, remote)).map(|(port, _)| port);
    match forward_outbound(proto, internal) {
        Some(forward) => match mapped {
            Some(port) if keeps_mapping_port(config, &forward, port, proto, remote) => Some(port),
            _ => Some(forward.port),
        },
        None => mapped.or_else(|| stranger_port(config, proto, internal, remote)),
    }
}

/// Under a per-remote mapping behaviour with endpoint-independent
/// filtering, a remote may come in on a mapping that was made for another
/// remote. The host's ICMP error about such a packet quotes only the
/// host's endpoint and that remote, which key no mapping: the port the
/// remote came in on is remembered here (`STRANGER_PORTS`, an LRU) when it
/// is admitted, so that the error is translated by the mapping that let
/// the packet in. Costs one `BINDINGS` lookup per inbound packet in that
/// configuration only, and a write only for such a remote.
#[inline(always)]
pub fn note_admitted(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
    external_port: u16,
) {
    if config.mapping == MAPPING_ENDPOINT_INDEPENDENT
        || config.filtering != FILTER_ENDPOINT_INDEPENDENT
    {
        return;
    }
    let key = mapping_key(config, proto, internal, remote);
    // SAFETY: a map lookup, copied out at once.
    let known = mapping_of(key).is_some_and(|(port, _)| port == external_port)
        || unsafe { STRANGER_PORTS.get(key) }.is_some_and(|port| *port == u32::from(external_port));
    if !known {
        let _ = STRANGER_PORTS.insert(key, u32::from(external_port), 0);
    }
}

/// The port a remote with no mapping of its own came in on to `internal`
/// (`note_admitted`), while that port is still `internal`'s.
#[inline(always)]
fn stranger_port(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
) -> Option<u16> {
    if config.mapping == MAPPING_ENDPOINT_INDEPENDENT {
        return None;
    }
    let key = mapping_key(config, proto, internal, remote);
    // SAFETY: a map lookup, copied out at once.
    let port = unsafe { STRANGER_PORTS.get(key) }.copied()? as u16;
    (binding_inbound(proto, port)? == internal).then_some(port)
}

/// Whether a flow of a rule's server toward `remote` keeps the port of the
/// server endpoint's live mapping (`mapped`) rather than the rule's: so
/// unless the remote came in on the rule's port.
#[inline(always)]
fn keeps_mapping_port(
    config: &NatConfig,
    forward: &Forward,
    mapped: u16,
    proto: u8,
    remote: Endpoint,
) -> bool {
    mapped != forward.port && !forward_conversation_exists(config, proto, forward.port, remote)
}

/// Where a LAN endpoint appears outside.
#[derive(Clone, Copy)]
pub struct External {
    pub port: u16,
    /// The static rule that fixes the port; 0 for a dynamic mapping.
    pub rule_id: u32,
    /// A dynamic mapping this packet just made.
    pub new_mapping: bool,
}

/// An established flow of `internal` in one lookup: under
/// endpoint-independent mapping, with no static rule for `internal`, a
/// session of `conversation` (whose external port is `internal`'s own,
/// the port a new mapping tries first) that is `internal`'s proves the
/// mapping kept that port, and is refreshed. The mapping itself is not:
/// the sweep keeps a mapping while a session on its port lives, so the
/// session never outlives it. `false`: the mapping is
/// looked up (another port, another mapping behaviour, a rule, a new
/// flow).
#[inline(always)]
pub fn established_outbound(
    config: &NatConfig,
    conversation: &Conversation,
    internal: Endpoint,
    now: u64,
    frame_len: usize,
) -> bool {
    config.mapping == MAPPING_ENDPOINT_INDEPENDENT
        && forward_outbound(conversation.proto, internal).is_none()
        && session_outbound_existing(config, conversation, internal, now, frame_len)
}

/// The external port of `internal` toward `remote`: its static rule's,
/// else its existing dynamic mapping's. A rule wins so that a forwarded
/// server's replies leave by the port its clients came in on, and a rule
/// (admin, UPnP, NAT-PMP, PCP) is endpoint-independent whatever the
/// mapping behaviour; but a live mapping the endpoint had before a rule
/// for another port keeps its flows on its port (`keeps_mapping_port`).
#[inline(always)]
pub fn outbound_external(
    config: &NatConfig,
    proto: u8,
    internal: Endpoint,
    remote: Endpoint,
    now: u64,
) -> Option<External> {
    if let Some(forward) = forward_outbound(proto, internal) {
        // A rule made for another port while the endpoint has a live
        // mapping never re-ports that mapping's flows (RFC 4787 REQ-11):
        // only the rule's own conversations, whose remotes came in on its
        // port, leave by it. (A rule for the mapping's own port adopts it.)
        if let Some((port, stamp)) = mapping_of(mapping_key(config, proto, internal, remote))
            && keeps_mapping_port(config, &forward, port, proto, remote)
        {
            touch(stamp, now);
            return Some(External {
                port,
                rule_id: 0,
                new_mapping: false,
            });
        }
        return Some(External {
            port: forward.port,
            rule_id: forward.rule_id,
            new_mapping: false,
        });
    }
    let port = binding_outbound(config, proto, internal, remote, now)?;
    Some(External {
        port,
        rule_id: 0,
        new_mapping: false,
    })
}

/// Whether one of the router's own sockets wants `packet`, which came to
/// its WAN address: a service it runs (SSH, a VPN), or its own client
/// traffic (DNS, NTP, DHCP renewals). Asked only of packets no mapping or
/// rule takes, so it costs nothing on the fast path.
#[inline(always)]
pub fn local_socket_wants(ctx: &impl NatContext, packet: &Ipv4Packet) -> bool {
    router_socket_takes(
        ctx,
        packet.proto,
        packet.endpoint(Side::Source),
        packet.endpoint(Side::Destination),
    )
}

/// Whether a socket of the router's own (a listener, a bound UDP socket,
/// or a connection to `remote`) would take `remote`'s `proto` packets to
/// `local`, one of the router's endpoints. Never for ICMP.
#[inline(always)]
pub fn router_socket_takes(
    ctx: &impl NatContext,
    proto: u8,
    remote: Endpoint,
    local: Endpoint,
) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: u32::from_ne_bytes(remote.addr),
                daddr: u32::from_ne_bytes(local.addr),
                sport: remote.port.to_be(),
                dport: local.port.to_be(),
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the context is the program's, the tuple lives on this stack
    // frame for the call, and a socket found is released at once. Each
    // helper is called by name: the verifier refuses indirect calls.
    unsafe {
        let socket = match proto {
            PROTO_TCP => bpf_sk_lookup_tcp(ctx.raw(), &mut tuple, size, netns, 0),
            PROTO_UDP => bpf_sk_lookup_udp(ctx.raw(), &mut tuple, size, netns, 0),
            _ => return false,
        };
        if socket.is_null() {
            return false;
        }
        bpf_sk_release(socket.cast());
    }
    true
}

/// Who is behind an external port.
#[derive(Clone, Copy)]
pub enum Target {
    /// The server of a static rule.
    Forward(Forward),
    /// The internal endpoint of a dynamic mapping.
    Binding(Endpoint),
}

impl Target {
    #[inline(always)]
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Target::Forward(forward) => Endpoint {
                addr: forward.addr,
                port: forward.port,
            },
            Target::Binding(internal) => *internal,
        }
    }
}

/// Whom a packet from outside on `conversation` goes to: the server of
/// the static rule on its external port (whose allowed remotes the caller
/// checks), else the LAN endpoint of the conversation's session (refreshed:
/// one lookup for a reply), else, where endpoint-independent filtering lets
/// any remote in, the mapping's. `None`: unsolicited, as the filter or the
/// lack of any mapping says. The same answer as [`inbound_target`] and the
/// filter, as a session never outlives its mapping.
#[inline(always)]
pub fn inbound_admitted(
    config: &NatConfig,
    conversation: &Conversation,
    now: u64,
    frame_len: usize,
) -> Option<Target> {
    let (proto, external_port) = (conversation.proto, conversation.external_port);
    if let Some(forward) = forward_inbound(config, proto, external_port) {
        return Some(Target::Forward(forward));
    }
    if let Some(internal) = session_inbound(config, conversation, now, frame_len) {
        return Some(Target::Binding(internal));
    }
    if config.filtering != FILTER_ENDPOINT_INDEPENDENT {
        return None;
    }
    binding_inbound(proto, external_port).map(Target::Binding)
}

/// Who is behind `external_port`: a static rule, else a dynamic mapping
/// (dynamic ports never collide with a rule's, see `binding`). ICMP query
/// ids are only ever dynamic.
#[inline(always)]
pub fn inbound_target(config: &NatConfig, proto: u8, external_port: u16) -> Option<Target> {
    if let Some(forward) = forward_inbound(config, proto, external_port) {
        return Some(Target::Forward(forward));
    }
    binding_inbound(proto, external_port).map(Target::Binding)
}
