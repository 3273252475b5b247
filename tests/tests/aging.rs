//! The aging sweep (the datapath's own `nat_sweep`, as the daemon runs it)
//! and the batch map walk, against the real maps of a loaded (not attached)
//! datapath. The tables are filled from user space
//! with `last_seen_ns` stamps relative to the datapath's clock, then swept.
//!
//! Nothing is attached and no packet is sent, so no network namespace is
//! needed; each test loads its own datapath, so they run in parallel.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::AsFd as _,
    time::Duration,
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use nat_common::{
    Binding, BindingKey, DIR_INBOUND, DIR_OUTBOUND, HOMECOMING_MARGIN_NS, PROTO_ICMP, PROTO_TCP,
    PROTO_UDP, PortOwner, Session, SessionKey, TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED,
    TCP_STATE_NONE, TCP_STATE_OPENING,
};
use nat_ctl::{
    aging::{datapath_now_ns, sweep_params},
    config::Timeouts,
    datapath::{self as batch, Datapath, MapView, SessionTable, SweepReport, TableSizes},
};
use nat_tests::{netns::require_root, plan};

const SEC: u64 = 1_000_000_000;
const WAN: [u8; 4] = plan::ROUTER_WAN.octets();
const REMOTE: [u8; 4] = plan::REMOTE.octets();

fn load(sessions: u32, bindings: u32, forward_sessions: u32) -> Datapath {
    require_root();
    Datapath::load(
        TableSizes {
            forwards: 64,
            bindings,
            sessions,
            forward_sessions,
        },
        None,
    )
    .expect("loading the datapath")
}

/// The sweep's "now": the datapath's clock, but at least 3 hours after boot
/// so that "idle for longer than the 2 h 4 min TCP timeout" is a valid
/// stamp on a machine that booted recently. Nothing refreshes the entries
/// (no program is attached), so only the differences matter.
fn sweep_now() -> u64 {
    datapath_now_ns().max(3 * 3600 * SEC)
}

fn lan(host: u8) -> [u8; 4] {
    let [a, b, c, _] = plan::LAN_NET.octets();
    [a, b, c, host]
}

fn session_key(proto: u8, external_port: u16) -> SessionKey {
    SessionKey {
        remote_addr: REMOTE,
        remote_port: if proto == PROTO_ICMP { 0 } else { 443 },
        external_port,
        proto,
        _pad: [0; 3],
    }
}

fn session(last_seen_ns: u64, tcp_state: u8) -> Session {
    Session {
        last_seen_ns,
        packets: 3,
        bytes: 180,
        internal_addr: lan(12),
        internal_port: 40000,
        tcp_state,
        _pad: 0,
    }
}

/// The session tables as these tests use them: `SESSIONS` and
/// `FORWARD_SESSIONS`, the datapath's open-addressing tables.
trait Sessions {
    fn put(&mut self, key: SessionKey, session: Session);
    fn keys(&self) -> Vec<SessionKey>;
    fn holds(&self, key: &SessionKey) -> bool;
}

impl Sessions for SessionTable {
    fn put(&mut self, key: SessionKey, session: Session) {
        self.insert(key, session).expect("inserting a session");
    }
    fn keys(&self) -> Vec<SessionKey> {
        self.entries().into_iter().map(|(key, _)| key).collect()
    }
    fn holds(&self, key: &SessionKey) -> bool {
        self.get(key).is_some()
    }
}

fn insert_session(
    map: &mut impl Sessions,
    proto: u8,
    external_port: u16,
    last_seen_ns: u64,
    tcp_state: u8,
) -> SessionKey {
    let key = session_key(proto, external_port);
    map.put(key, session(last_seen_ns, tcp_state));
    key
}

fn binding(addr: [u8; 4], port: u16, last_seen_ns: u64) -> Binding {
    Binding {
        addr,
        port,
        _pad: [0; 2],
        last_seen_ns,
    }
}

/// One half of a mapping as the tables hold it: (protocol, direction,
/// internal address, port). An inbound half is its external port's
/// `PORT_OWNERS` slot (address zero), an outbound half its `BINDINGS` key
/// (the internal endpoint).
type Half = (u8, u8, [u8; 4], u16);

fn inbound_half(
    view: &mut MapView,
    proto: u8,
    external_port: u16,
    internal: ([u8; 4], u16),
    seen_ns: u64,
) -> Half {
    view.set_port_owner(
        proto,
        external_port,
        PortOwner {
            owner: PortOwner::owner_word(internal.0, internal.1),
            seen_ns,
            ..PortOwner::default()
        },
    )
    .expect("claiming a port");
    (proto, DIR_INBOUND, [0; 4], external_port)
}

fn outbound_half(
    view: &mut MapView,
    proto: u8,
    internal: ([u8; 4], u16),
    external_port: u16,
    last_seen_ns: u64,
) -> Half {
    let key = BindingKey::outbound(proto, internal.0, internal.1);
    view.put_binding(key, binding(WAN, external_port, last_seen_ns))
        .expect("inserting an outbound binding");
    (proto, DIR_OUTBOUND, internal.0, internal.1)
}

/// A whole mapping: internal endpoint <-> external port, each half with its
/// own idle time. Returns (inbound half, outbound half).
fn mapping(
    view: &mut MapView,
    proto: u8,
    internal: ([u8; 4], u16),
    external_port: u16,
    inbound_seen: u64,
    outbound_seen: u64,
) -> [Half; 2] {
    [
        inbound_half(view, proto, external_port, internal, inbound_seen),
        outbound_half(view, proto, internal, external_port, outbound_seen),
    ]
}

fn sorted_sessions(map: &impl Sessions) -> BTreeSet<(u8, u16, u16)> {
    map.keys()
        .into_iter()
        .map(|k| (k.proto, k.external_port, k.remote_port))
        .collect()
}

/// Every half the tables hold.
fn halves(view: &MapView) -> BTreeSet<Half> {
    let outbound = view
        .bindings()
        .keys()
        .map(|key| key.expect("reading a binding key"))
        .map(|k| (k.proto, DIR_OUTBOUND, k.addr, k.port));
    let inbound = view
        .held_ports()
        .expect("reading the port owners")
        .into_iter()
        .map(|(proto, port, _)| (proto, DIR_INBOUND, [0; 4], port));
    outbound.chain(inbound).collect()
}

fn session_tuples(keys: &[SessionKey]) -> BTreeSet<(u8, u16, u16)> {
    keys.iter()
        .map(|k| (k.proto, k.external_port, k.remote_port))
        .collect()
}

fn assert_counts(
    report: &SweepReport,
    scanned: usize,
    sessions: usize,
    forward: usize,
    bindings: usize,
) {
    assert_eq!(
        (
            report.scanned,
            report.sessions_removed,
            report.forward_sessions_removed,
            report.bindings_removed
        ),
        (scanned, sessions, forward, bindings),
        "(scanned, sessions, forward sessions, bindings) in {report:?}"
    );
}

/// One kernel sweep as of `now`; `generation` must differ from the last
/// sweep's on the same datapath, as the daemon's sweep handle makes sure.
fn run(datapath: &mut Datapath, timeouts: &Timeouts, now: u64, generation: u32) -> SweepReport {
    datapath
        .run_sweep(sweep_params(timeouts, now, generation))
        .expect("kernel sweep")
}

#[test]
fn kernel_sweep_removes_exactly_the_expired_entries() {
    let mut datapath = load(256, 256, 256);
    let maps = datapath.maps_mut().view_mut();
    let timeouts = Timeouts::default();
    let now = sweep_now();
    let ago = |secs: u64| now - secs * SEC;

    // Sessions. Timeouts: TCP established 7440 s, other TCP 240 s, UDP
    // 300 s, ICMP 60 s; idle exactly the timeout is not expired yet.
    let s = maps.sessions_mut();
    let tcp_established_old = insert_session(s, PROTO_TCP, 2001, ago(7441), TCP_STATE_ESTABLISHED);
    let tcp_established_idle = insert_session(s, PROTO_TCP, 2002, ago(1000), TCP_STATE_ESTABLISHED);
    let tcp_opening_old = insert_session(s, PROTO_TCP, 2003, ago(241), TCP_STATE_OPENING);
    let tcp_closing_fresh = insert_session(s, PROTO_TCP, 2004, ago(100), TCP_STATE_CLOSING);
    let udp_old = insert_session(s, PROTO_UDP, 3001, ago(301), TCP_STATE_NONE);
    let udp_fresh = insert_session(s, PROTO_UDP, 3002, ago(10), TCP_STATE_NONE);
    let icmp_old = insert_session(s, PROTO_ICMP, 4001, ago(61), TCP_STATE_NONE);
    let icmp_at_timeout = insert_session(s, PROTO_ICMP, 4002, ago(60), TCP_STATE_NONE);
    // Stamped after the sweep read its clock: never expired.
    let udp_future = insert_session(s, PROTO_UDP, 3003, now + SEC, TCP_STATE_NONE);

    // Mappings. Timeouts: TCP 240 s, UDP 300 s, ICMP 60 s.
    let b = &mut *maps;
    // Idle itself, but its session (established, 1000 s) is live: kept.
    let kept_live = mapping(b, PROTO_TCP, (lan(12), 40002), 2002, ago(1000), ago(1000));
    // No live session and both halves idle: both go.
    let gone_tcp = mapping(b, PROTO_TCP, (lan(12), 40001), 2001, ago(300), ago(300));
    // Its session expired, but one half is still fresh: kept.
    let kept_inbound_fresh = mapping(b, PROTO_TCP, (lan(12), 40003), 2003, ago(10), ago(300));
    let kept_outbound_fresh = mapping(b, PROTO_TCP, (lan(12), 40005), 2005, ago(300), ago(10));
    let gone_udp = mapping(b, PROTO_UDP, (lan(13), 50001), 3001, ago(301), ago(400));
    let kept_udp_at_timeout = mapping(b, PROTO_UDP, (lan(13), 50004), 3004, ago(300), ago(299));
    let gone_icmp = mapping(b, PROTO_ICMP, (lan(12), 7), 4001, ago(61), ago(61));
    // Orphans: an idle inbound half without outbound, an idle outbound
    // half without inbound, and two idle halves pointing elsewhere.
    let gone_orphan_in = inbound_half(b, PROTO_UDP, 3005, (lan(50), 5005), ago(400));
    let kept_orphan_in_fresh = inbound_half(b, PROTO_UDP, 3006, (lan(50), 5006), ago(10));
    let gone_orphan_out = outbound_half(b, PROTO_TCP, (lan(51), 6000), 2006, ago(500));
    let gone_crossed_out = outbound_half(b, PROTO_UDP, (lan(52), 7000), 3007, ago(400));
    let gone_crossed_in = inbound_half(b, PROTO_UDP, 3007, (lan(53), 7001), ago(400));
    // An idle orphan on a port that has a live session (udp_fresh): kept.
    let kept_orphan_in_live = inbound_half(b, PROTO_UDP, 3002, (lan(54), 5002), ago(400));
    // Mappings that kept their endpoint's port: the slot alone, its stamp
    // the last outbound packet's.
    let gone_own_port = inbound_half(b, PROTO_UDP, 3010, (lan(14), 3010), ago(301));
    let kept_own_port = inbound_half(b, PROTO_UDP, 3011, (lan(14), 3011), ago(299));

    // Forward sessions.
    let f = maps.forward_sessions_mut();
    let fwd_tcp_old = insert_session(f, PROTO_TCP, 8080, ago(7441), TCP_STATE_ESTABLISHED);
    let fwd_tcp_idle = insert_session(f, PROTO_TCP, 8081, ago(239), TCP_STATE_OPENING);
    let fwd_udp_old = insert_session(f, PROTO_UDP, 5353, ago(301), TCP_STATE_NONE);
    let fwd_icmp_fresh = insert_session(f, PROTO_ICMP, 9, ago(30), TCP_STATE_NONE);

    let report = run(&mut datapath, &timeouts, now, 1);
    eprintln!("{report:?}");
    // Inbound halves are walked first: the outbound half of a mapping
    // they removed (3 such here) is not visited. An own-port mapping
    // counts two halves removed, as every mapping does.
    assert_counts(&report, 9 + 22 + 4 - 3, 4, 2, 12);
    let maps = datapath.maps().view();

    assert_eq!(
        sorted_sessions(maps.sessions()),
        session_tuples(&[
            tcp_established_idle,
            tcp_closing_fresh,
            udp_fresh,
            icmp_at_timeout,
            udp_future,
        ]),
        "sessions left"
    );
    let mut kept = Vec::new();
    for pair in [
        kept_live,
        kept_inbound_fresh,
        kept_outbound_fresh,
        kept_udp_at_timeout,
    ] {
        kept.extend_from_slice(&pair);
    }
    kept.extend([kept_orphan_in_fresh, kept_orphan_in_live, kept_own_port]);
    let left = halves(maps);
    assert_eq!(left, kept.iter().copied().collect(), "halves left");
    assert_eq!(
        sorted_sessions(maps.forward_sessions()),
        session_tuples(&[fwd_tcp_idle, fwd_icmp_fresh]),
        "forward sessions left"
    );
    // The removed ones, spelled out.
    for half in gone_tcp.iter().chain(&gone_udp).chain(&gone_icmp).chain(&[
        gone_orphan_in,
        gone_orphan_out,
        gone_crossed_in,
        gone_crossed_out,
        gone_own_port,
    ]) {
        assert!(!left.contains(half), "{half:?} should have been removed");
    }
    for key in [tcp_established_old, tcp_opening_old, udp_old, icmp_old] {
        assert!(!maps.sessions().holds(&key), "{key:?} should be gone");
    }
    for key in [fwd_tcp_old, fwd_udp_old] {
        assert!(
            !maps.forward_sessions().holds(&key),
            "{key:?} should be gone"
        );
    }
    // Survivors keep their values untouched.
    let survivor = maps
        .binding(&BindingKey::outbound(PROTO_TCP, lan(12), 40002))
        .unwrap();
    assert_eq!(survivor, Some(binding(WAN, 2002, ago(1000))));
    let owner = maps.port_owner(PROTO_TCP, 2002).unwrap().unwrap();
    assert_eq!(owner.endpoint(), Some((lan(12), 40002)));
    assert_eq!(owner.seen_ns, ago(1000));

    // A second sweep at the same time finds nothing more to do.
    let again = run(&mut datapath, &timeouts, now, 2);
    assert_counts(&again, 5 + 11 + 2, 0, 0, 0);
}

#[test]
fn sweep_keeps_everything_fresh_and_handles_empty_maps() {
    let mut datapath = load(64, 64, 64);
    let timeouts = Timeouts::default();
    let now = sweep_now();

    let empty = run(&mut datapath, &timeouts, now, 1);
    assert_counts(&empty, 0, 0, 0, 0);

    let maps = datapath.maps_mut().view_mut();
    insert_session(
        maps.sessions_mut(),
        PROTO_UDP,
        3001,
        now - SEC,
        TCP_STATE_NONE,
    );
    mapping(maps, PROTO_UDP, (lan(12), 5000), 3001, now - SEC, now);
    insert_session(
        maps.forward_sessions_mut(),
        PROTO_TCP,
        80,
        now,
        TCP_STATE_ESTABLISHED,
    );
    let report = run(&mut datapath, &timeouts, now, 2);
    assert_counts(&report, 4, 0, 0, 0);

    // With a shorter UDP timeout, the same entries are all old.
    let short = Timeouts {
        udp: Duration::from_millis(500),
        tcp_established: Duration::ZERO,
        ..timeouts
    };
    let report = run(&mut datapath, &short, now + 2 * SEC, 3);
    // The mapping's outbound half is not visited: its inbound half,
    // walked first, removed it.
    assert_counts(&report, 3, 1, 1, 2);
    let report = run(&mut datapath, &short, now + 2 * SEC, 4);
    assert_counts(&report, 0, 0, 0, 0);
}

/// Fills `map` with `n` distinct sessions whose value encodes the key.
fn fill_sessions(map: &mut impl Sessions, n: u32) {
    for i in 0..n {
        let key = numbered_key(i);
        let mut value = session(u64::from(i), TCP_STATE_NONE);
        value.packets = u64::from(i) * 3;
        map.put(key, value);
    }
}

fn numbered_key(i: u32) -> SessionKey {
    SessionKey {
        remote_addr: [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        remote_port: 1000 + (i % 7) as u16,
        external_port: (i % 60000) as u16,
        proto: PROTO_UDP,
        _pad: [0; 3],
    }
}

fn numbered_index(key: &SessionKey) -> u32 {
    u32::from_be_bytes([
        0,
        key.remote_addr[1],
        key.remote_addr[2],
        key.remote_addr[3],
    ])
}

/// A distinct outbound half for each `i`, its value telling `i`.
fn numbered_binding(i: u32) -> (BindingKey, Binding) {
    let key = BindingKey::outbound(PROTO_UDP, [10, 1, (i >> 8) as u8, i as u8], 5000);
    (key, binding(WAN, (i % 60000) as u16, u64::from(i) * 3))
}

fn numbered_binding_index(key: &BindingKey) -> u32 {
    u32::from_be_bytes([0, 0, key.addr[2], key.addr[3]])
}

/// Walks `map` with the batch walk and checks it against aya's iterator:
/// every entry visited exactly once, with its own value.
fn check_walk(map: &HashMap<MapData, BindingKey, Binding>, n: u32, chunk: u32) {
    let mut visits: BTreeMap<u32, u32> = BTreeMap::new();
    let visited = batch::for_each_entry(
        map.map().fd().as_fd(),
        chunk,
        |key: &BindingKey, value: &Binding| {
            let i = numbered_binding_index(key);
            assert_eq!((*key, *value), numbered_binding(i), "entry {i}");
            *visits.entry(i).or_default() += 1;
        },
    )
    .unwrap_or_else(|error| panic!("batch walk with chunk {chunk}: {error}"));
    assert_eq!(visited, n as usize, "entries visited with chunk {chunk}");
    let twice: Vec<_> = visits.iter().filter(|&(_, &v)| v != 1).collect();
    assert!(twice.is_empty(), "visited more than once: {twice:?}");
    let by_iter: BTreeSet<u32> = map
        .iter()
        .map(|item| {
            let (key, value) = item.expect("aya iter");
            let i = numbered_binding_index(&key);
            assert_eq!((key, value), numbered_binding(i));
            i
        })
        .collect();
    assert_eq!(by_iter.len(), n as usize, "aya's iter");
    let by_batch: BTreeSet<u32> = visits.into_keys().collect();
    assert_eq!(by_batch, by_iter, "batch walk and aya's iter disagree");
}

/// The batch walk over a hash map (`BINDINGS`; the session tables are
/// arrays, read through a memory map).
#[test]
fn batch_walk_visits_every_entry_once() {
    const N: u32 = 10_000;
    let mut datapath = load(64, 16_384, 64);
    let maps = datapath.maps_mut().view_mut();
    // An empty map: nothing, and no error.
    check_walk(maps.bindings(), 0, batch::DEFAULT_CHUNK);
    for i in 0..N {
        let (key, value) = numbered_binding(i);
        maps.put_binding(key, value).expect("inserting a binding");
    }
    // Chunk 1 is smaller than a bucket that holds two entries: the walk has
    // to grow it (ENOSPC) rather than fail or skip the bucket.
    for chunk in [batch::DEFAULT_CHUNK, 1, 3, 1000, N, 1 << 20] {
        check_walk(maps.bindings(), N, chunk);
    }
    assert_eq!(
        batch::for_each_in(maps.bindings(), |_: &BindingKey, _: &Binding| {}).unwrap(),
        N as usize
    );
}

/// `SESSIONS`, sized for 16,384 sessions (32,768 slots), filled to three
/// quarters of that, where a full window is vanishingly rare: every session
/// is found under its key and seen once by a walk, a replaced one holds its
/// new value, and a removed one is gone without hiding any other in its
/// window.
#[test]
fn session_table_holds_what_it_is_sized_for() {
    const SIZED_FOR: u32 = 16_384;
    const N: u32 = SIZED_FOR / 4 * 3;
    let mut datapath = load(SIZED_FOR, 64, 64);
    let maps = datapath.maps_mut().view_mut();
    let table = maps.sessions_mut();
    assert_eq!(table.slots(), 2 * SIZED_FOR);
    assert!(table.is_empty());
    fill_sessions(table, N);
    let mut visits: BTreeMap<u32, u32> = BTreeMap::new();
    let seen = table.for_each(|key, value| {
        let i = numbered_index(key);
        assert_eq!(*key, numbered_key(i), "key {i}");
        assert_eq!(value.packets, u64::from(i) * 3, "value of key {i}");
        *visits.entry(i).or_default() += 1;
    });
    assert_eq!(seen, N as usize);
    assert!(visits.values().all(|&v| v == 1), "a session seen twice");
    for i in 0..N {
        let got = table.get(&numbered_key(i)).expect("every session found");
        assert_eq!(got.last_seen_ns, u64::from(i));
    }
    let mut replaced = session(77, TCP_STATE_NONE);
    replaced.packets = 1;
    table.put(numbered_key(5), replaced);
    assert_eq!(table.get(&numbered_key(5)), Some(replaced));
    assert_eq!(table.len(), N as usize, "a replaced session is not added");
    for i in (0..N).step_by(2) {
        assert!(table.remove(&numbered_key(i)), "removing {i}");
        assert!(!table.remove(&numbered_key(i)), "removing {i} twice");
    }
    for i in 0..N {
        assert_eq!(
            table.get(&numbered_key(i)).is_some(),
            i % 2 == 1,
            "session {i}"
        );
    }
    assert_eq!(table.len(), (N / 2) as usize);
}

/// A table of 64 slots (the smallest) holding 31 sessions, eight of them
/// with one home: seven live in their second window, counted at that home.
/// (With 31 sessions no 32-slot window can be full.) Every one is found;
/// removing some from user space, then the kernel sweep aging out the
/// rest, leaves no count behind (a count left over would send every later
/// miss at that home through its second window).
#[test]
fn session_table_counts_spilled_sessions_back() {
    let mut datapath = load(16, 64, 64);
    let timeouts = Timeouts::default();
    let now = sweep_now();
    let maps = datapath.maps_mut().view_mut();
    let table = maps.sessions_mut();
    assert_eq!(table.slots(), 64);
    // Eight keys sharing a home (there must be such among 64 * 7 + 1),
    // then others up to 31.
    let mut by_home: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for i in 0..64 * 7 + 1 {
        by_home
            .entry(table.home_slot(&numbered_key(i)))
            .or_default()
            .push(i);
    }
    let crowded = by_home
        .values()
        .find(|keys| keys.len() >= 8)
        .expect("pigeonhole");
    let mut chosen: Vec<u32> = crowded[..8].to_vec();
    chosen.extend((0..).filter(|i| !crowded[..8].contains(i)).take(31 - 8));
    for &i in &chosen {
        // Idle past the UDP timeout: the sweep takes them all.
        table.put(numbered_key(i), session(now - 1000 * SEC, TCP_STATE_NONE));
    }
    let (in_window, counted) = table.spilled();
    assert!(
        in_window >= 7,
        "eight sessions of one home, {in_window} spilled"
    );
    assert_eq!(
        in_window, counted,
        "spilled sessions against their homes' counts"
    );
    for &i in &chosen {
        assert!(table.holds(&numbered_key(i)), "session {i} lost");
    }
    for &i in chosen.iter().step_by(3) {
        assert!(table.remove(&numbered_key(i)), "removing {i}");
    }
    let (in_window, counted) = table.spilled();
    assert_eq!(in_window, counted, "after removals from user space");
    for (n, &i) in chosen.iter().enumerate() {
        assert_eq!(table.holds(&numbered_key(i)), n % 3 != 0, "session {i}");
    }
    let left = table.len();
    let report = run(&mut datapath, &timeouts, now, 1);
    assert_eq!(report.sessions_removed, left, "the sweep's removals");
    let table = datapath.maps().view().sessions();
    assert!(table.is_empty());
    assert_eq!(table.spilled(), (0, 0), "counts left behind by the sweep");
}

#[test]
fn batch_walk_refuses_mismatched_maps() {
    let mut datapath = load(64, 64, 64);
    let fd = datapath.maps().view().bindings().map().fd().as_fd();
    let error = batch::for_each_entry::<u32, Binding>(fd, 16, |_, _| {}).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    let error = batch::for_each_entry::<BindingKey, Session>(fd, 16, |_, _| {}).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    // An array walks by index (PORT_OWNERS is walked so), with its own
    // value type only.
    let config_fd = datapath.maps_mut().writer().config_map().map().fd().as_fd();
    let visited = batch::for_each_entry::<u32, nat_common::NatConfig>(config_fd, 16, |_, _| {});
    assert_eq!(visited.unwrap(), 1, "CONFIG has one slot");
    let error = batch::for_each_entry::<u32, Session>(config_fd, 16, |_, _| {}).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
}

fn table_of(datapath: &mut Datapath, forward: bool) -> &mut SessionTable {
    let view = datapath.maps_mut().view_mut();
    if forward {
        view.forward_sessions_mut()
    } else {
        view.sessions_mut()
    }
}

/// Three homes of a small table, each with an owner and a session spilled
/// from it: where the owner was last seen long before the spilled one, the
/// sweep swaps them (the talking one home, the idle one to its own second
/// window); where both were seen within `HOMECOMING_MARGIN_NS` of each
/// other, nothing moves; where the owner is gone, the spilled one comes
/// home. No session is lost or changed by the move, and every home's count
/// of spilled sessions still matches them; a second sweep moves nothing.
fn check_homecoming(forward: bool) {
    let mut datapath = load(16, 64, 64);
    let timeouts = Timeouts::default();
    let now = sweep_now();
    let sessions = table_of(&mut datapath, forward);
    let mut by_home: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for i in 0..4096 {
        by_home
            .entry(sessions.home_slot(&numbered_key(i)))
            .or_default()
            .push(i);
    }
    let pairs: Vec<(u32, u32)> = by_home
        .values()
        .filter(|keys| keys.len() >= 2)
        .map(|keys| (keys[0], keys[1]))
        .take(4)
        .collect();
    let [swapped, close, vacated, expired] = pairs[..] else {
        panic!(
            "four homes of two keys among 4096 in {} slots",
            sessions.slots()
        );
    };
    let stamped = |i: u32, ago: u64| {
        let mut value = session(now - ago, TCP_STATE_NONE);
        value.packets = u64::from(i) + 1;
        (numbered_key(i), value)
    };
    let owners = [
        stamped(swapped.0, 100 * SEC),
        stamped(close.0, 2 * SEC),
        stamped(vacated.0, 50 * SEC),
        // Idle past the UDP timeout: the sweep's to free, never shelved.
        stamped(expired.0, timeouts.udp.as_nanos() as u64 + 10 * SEC),
    ];
    let spilled = [
        stamped(swapped.1, SEC),
        stamped(close.1, 2 * SEC - HOMECOMING_MARGIN_NS / 2),
        stamped(vacated.1, 40 * SEC),
        stamped(expired.1, SEC),
    ];
    for (key, value) in owners.iter().chain(&spilled) {
        sessions.put(*key, *value);
    }
    for (key, _) in &spilled {
        assert_eq!(
            sessions.in_second_window(key),
            Some(true),
            "{key:?} spilled"
        );
    }
    assert!(sessions.remove(&owners[2].0));
    // The walk goes by slot: past the expired occupant's home first, it
    // finds that home free when it reaches the spilled session; else that
    // one waits for the next sweep.
    let freed_first = sessions.home_slot(&spilled[3].0)
        < sessions
            .slot_of(&spilled[3].0)
            .expect("the spilled session's slot");
    let report = run(&mut datapath, &timeouts, now, 1);
    let moved = if forward {
        (
            report.forward_sessions_moved_home,
            report.sessions_moved_home,
        )
    } else {
        (
            report.sessions_moved_home,
            report.forward_sessions_moved_home,
        )
    };
    let moved_at_once = if freed_first { 3 } else { 2 };
    assert_eq!(
        moved,
        (moved_at_once, 0),
        "sessions brought home in {report:?}"
    );
    assert_eq!(
        report.sessions_removed + report.forward_sessions_removed,
        1,
        "only the expired home's occupant is idle past its timeout: {report:?}"
    );
    let sessions = table_of(&mut datapath, forward);
    let expect = [
        (&owners[0], Some(true)),
        (&spilled[0], Some(false)),
        (&owners[1], Some(false)),
        (&spilled[1], Some(true)),
        (&spilled[2], Some(false)),
        // Its home's occupant was freed, never shelved.
        (&spilled[3], Some(!freed_first)),
    ];
    for ((key, value), placed) in expect {
        assert_eq!(
            sessions.in_second_window(key),
            placed,
            "{key:?} after the sweep"
        );
        assert_eq!(
            sessions.get(key),
            Some(*value),
            "{key:?}'s session moved unchanged"
        );
    }
    for (key, _) in [&owners[2], &owners[3]] {
        assert_eq!(sessions.get(key), None, "{key:?}, removed, stays gone");
    }
    assert_eq!(sessions.len(), 6);
    let (in_window, counted) = sessions.spilled();
    let left_out = if freed_first { 2 } else { 3 };
    assert_eq!(
        (in_window, counted),
        (left_out, left_out),
        "spilled sessions against their homes' counts"
    );
    let again = run(&mut datapath, &timeouts, now, 2);
    assert_eq!(
        again.sessions_moved_home + again.forward_sessions_moved_home,
        usize::from(!freed_first),
        "a second sweep brings the one whose home was freed home: {again:?}"
    );
    let sessions = table_of(&mut datapath, forward);
    assert_eq!(sessions.in_second_window(&spilled[3].0), Some(false));
    assert_eq!(sessions.get(&spilled[3].0), Some(spilled[3].1));
    let last = run(&mut datapath, &timeouts, now, 3);
    assert_eq!(
        last.sessions_moved_home + last.forward_sessions_moved_home,
        0,
        "a third sweep moves {last:?}"
    );
}

#[test]
fn the_sweep_brings_a_talking_session_home() {
    check_homecoming(false);
}

#[test]
fn the_sweep_brings_a_talking_forwarded_conversation_home() {
    check_homecoming(true);
}
