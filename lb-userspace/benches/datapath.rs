//! Per-packet cost of the XDP program under BPF_PROG_TEST_RUN, against a
//! no-op program measured in the same run. Run with `cargo xtask bench`.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs every iteration on one buffer, so
//! after the first the program sees its own output. Each row is therefore
//! built so that its output is again an input of the same path, and the
//! program's own path counters prove it: every row asserts that the counter
//! of the path it names grew by exactly the number of iterations measured.
//! - established: frontends F1 and F2 are each other's only backend, so
//!   C->F1 becomes C->F2, which becomes C->F1 again, each an established hit
//!   served by the flow cache.
//! - reply: the replies of those two flows likewise turn into each other.
//! - established and reply through conntrack: the same ping-pong from a
//!   client port chosen so that both flows share one flow cache slot and
//!   evict each other, so every iteration is a cache miss and a `CT_V4` hit.
//! - non-frontend: passes unchanged, so every iteration is the same miss.
//! - new flow: cannot repeat on one buffer; measured as single runs over
//!   distinct packets with the kernel-reported time, and the no-op measured
//!   the same way is given beside it.
//! - NodePort with source NAT (first packet, established, reverse-NATed
//!   reply) and an affinity hit: single runs over distinct flows, for the
//!   same reason (a translated NodePort packet is no NodePort packet).
//! - NodePort with source NAT when every port of the range is held by a
//!   flow its backend never answered (a flood of new flows to one
//!   backend): single runs, each proven to have taken a stale flow's port.
//! - IPv6 (`lb` tail-calling `lb6`): the same rows, non-frontend,
//!   established and reply from the flow cache and through `CT_V6` by the
//!   same ping-pongs of IPv6 frontends, and new flows as single runs. Measured on a data
//!   plane of their own, with as many IPv6 frontends as the column's
//!   services up to what `FRONTENDS_V6` holds.
// Only the frame builder and the provisioning helper of the test support
// code: the benchmark must not depend on the end-to-end test fixtures.
#[path = "../tests/common/packets.rs"]
mod packets;
#[path = "../tests/common/provision.rs"]
mod provision;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_common::{
    addr::to_map_v6,
    filter::{position_v6, AddrSet},
    flow_cache_slot, flow_cache_slot_v6, Config, CtKey, CtKeyV4, CtValueV4, FrontendValue, Reason,
    CT_DIR_FORWARD, CT_DIR_REPLY, FE_EXTERNAL, MAX_FRONTENDS_V6, PROTO_TCP,
};
use lb_userspace::{
    datapath::{now_ns, run_frame, Capacities, Datapath, PROGRAM},
    sync::NodeMaps,
};
use packets::{tcp6_frame, tcp_frame, Tcp};
use provision::{be, Provision};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;
const MAX_DISCARDS: usize = 4 * ROUNDS;
const SINGLE_RUNS: u16 = 20_000;
/// Flows of each SNAT row; the range (36,280 ports per node address and
/// backend address and port) holds them all at once.
const SNAT_RUNS: u16 = 2_000;
/// The clients whose unanswered flows hold the SNAT range in the stale-range
/// row, and the one whose new flows are measured there.
const STALE_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FLOOD_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 168, 1, 100), 40000);
const F1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 1), 80);
const F2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 2), 80);
const NEW_VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 3), 80);
const BACKEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 0, 2), 8080);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const NODE_PORT: (Ipv4Addr, u16) = (NODE, 31000);
const AFFINITY_VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 4), 80);
const STICKY_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 100);

const fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, last)
}
const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 3, 0, 0, 0, 0, 7), 40000);
const F1_6: (Ipv6Addr, u16) = (v6(1), 80);
const F2_6: (Ipv6Addr, u16) = (v6(2), 80);
const NEW_VIP6: (Ipv6Addr, u16) = (v6(3), 80);
const BACKEND6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 2), 8080);
/// No Service's. The address filter folds an IPv6 address's four words
/// into one by XOR: the folds of the fillers (fd00:100::/112) are every
/// word starting fd00, so this one is outside fd00::/16.
const OTHER6: (Ipv6Addr, u16) = (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 443);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Median ns per iteration over ROUNDS runs of REPEAT, each proven to have
/// counted every iteration under `reason`. A flow cache copy goes back to
/// conntrack when it is due (every 64 jiffies: 64 ms at 1000 Hz, a third
/// of the runs there); a run in which that happened is not this path's and
/// is run again, up to MAX_DISCARDS times.
fn repeated(dp: &Datapath, prog: &str, frame: &[u8], reason: Option<Reason>) -> f64 {
    let mut runs = Vec::new();
    let mut discarded = 0;
    while runs.len() < ROUNDS {
        let before = reason.map(|r| dp.maps.reason_total(r).unwrap());
        let d = run_frame(dp.program(prog).unwrap(), frame, REPEAT)
            .unwrap()
            .duration;
        if let (Some(r), Some(b)) = (reason, before) {
            if dp.maps.reason_total(r).unwrap() - b != REPEAT as u64 {
                discarded += 1;
                assert!(
                    discarded <= MAX_DISCARDS,
                    "{r:?}: runs keep leaving the path"
                );
                continue;
            }
        }
        runs.push(ns(d));
    }
    median(runs)
}

/// Median kernel-reported ns of single runs over distinct frames.
fn single(dp: &Datapath, prog: &str, frames: &[Vec<u8>], reason: Option<Reason>) -> f64 {
    let before = reason.map(|r| dp.maps.reason_total(r).unwrap());
    let runs: Vec<f64> = frames
        .iter()
        .map(|f| ns(run_frame(dp.program(prog).unwrap(), f, 1).unwrap().duration))
        .collect();
    if let (Some(r), Some(b)) = (reason, before) {
        assert_eq!(
            dp.maps.reason_total(r).unwrap() - b,
            frames.len() as u64,
            "{r:?}"
        );
    }
    median(runs)
}

/// Like `single`, returning the output frames too.
fn single_out(dp: &Datapath, frames: &[Vec<u8>], reason: Reason) -> (f64, Vec<Vec<u8>>) {
    let before = dp.maps.reason_total(reason).unwrap();
    let mut outs = Vec::new();
    let runs: Vec<f64> = frames
        .iter()
        .map(|f| {
            let r = run_frame(dp.program(PROGRAM).unwrap(), f, 1).unwrap();
            outs.push(r.frame);
            ns(r.duration)
        })
        .collect();
    let grew = dp.maps.reason_total(reason).unwrap() - before;
    assert_eq!(grew, frames.len() as u64, "{reason:?}");
    (median(runs), outs)
}

/// Median kernel-reported ns of the second of two back-to-back single runs
/// of each frame: a flow's packet right after its previous one, as packets
/// of a busy flow arrive. Each measured run is proven to have counted under
/// `reason`.
fn single_steady(dp: &Datapath, frames: &[Vec<u8>], reason: Reason) -> f64 {
    let prog = dp.program(PROGRAM).unwrap();
    let runs: Vec<f64> = frames
        .iter()
        .map(|f| {
            run_frame(prog, f, 1).unwrap();
            let before = dp.maps.reason_total(reason).unwrap();
            let d = run_frame(prog, f, 1).unwrap().duration;
            assert_eq!(
                dp.maps.reason_total(reason).unwrap() - before,
                1,
                "{reason:?}"
            );
            ns(d)
        })
        .collect();
    median(runs)
}

/// Two frontends, each the other's only backend, whose flows from CLIENT
/// (`dir` forward), or whose replies to it (`dir` reply), land in the same
/// flow cache slot: their ping-pong misses the cache on every iteration.
fn colliding_pair(dir: u8) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let slot = |f: Ipv4Addr| {
        let (client, frontend) = ((be(CLIENT.0), CLIENT.1), (be(f), 80));
        flow_cache_slot(&ct_key(client, frontend, dir))
    };
    let a = Ipv4Addr::new(10, 97, dir, 1);
    let b = (0..=u16::MAX)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 98, 0, 0)) + i as u32))
        .find(|&b| slot(a) == slot(b))
        .expect("some address collides");
    ((a, 80), (b, 80))
}

/// `colliding_pair` of IPv6 frontends.
fn colliding_pair_v6(dir: u8) -> ((Ipv6Addr, u16), (Ipv6Addr, u16)) {
    let slot = |f: Ipv6Addr| {
        let (client, frontend) = ((to_map_v6(CLIENT6.0), CLIENT6.1), (to_map_v6(f), 80));
        flow_cache_slot_v6(&ct_key(client, frontend, dir))
    };
    let a = Ipv6Addr::new(0xfd00, 0x97, 0, 0, 0, 0, dir as u16, 1);
    let b = (0..=u16::MAX)
        .map(|i| Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, i))
        .find(|&b| slot(a) == slot(b))
        .expect("some address collides");
    ((a, 80), (b, 80))
}

/// The connection-tracking key of the packet between `client` and
/// `frontend` in direction `dir` (ports in host order).
fn ct_key<K: CtKey>(client: (K::Addr, u16), frontend: (K::Addr, u16), dir: u8) -> K {
    let (client, frontend) = (
        (client.0, client.1.to_be()),
        (frontend.0, frontend.1.to_be()),
    );
    if dir == CT_DIR_FORWARD {
        K::forward(client, frontend, PROTO_TCP)
    } else {
        K::reply(frontend, client, PROTO_TCP)
    }
}

/// `n` services in all: the measured ones plus fillers sharing one ring.
fn provision(n: u32) -> Datapath {
    // Room for every flow the rows create, so the LRU never evicts the
    // ping-pong flows being measured.
    let caps = Capacities {
        frontends: 262_144,
        addrs: 262_144,
        ct: 1 << 18,
        ..Capacities::small()
    };
    let mut dp = Datapath::load(&caps, None).expect("load");
    let mut prov = Provision::new();
    prov.service(&mut dp, 1, F1, PROTO_TCP, &[F2]);
    prov.service(&mut dp, 2, F2, PROTO_TCP, &[F1]);
    for (id, dir) in [(7, CT_DIR_FORWARD), (9, CT_DIR_REPLY)] {
        let (a, b) = colliding_pair(dir);
        prov.service(&mut dp, id, a, PROTO_TCP, &[b]);
        prov.service(&mut dp, id + 1, b, PROTO_TCP, &[a]);
    }
    let filler_ring = prov.service(&mut dp, 3, NEW_VIP, PROTO_TCP, &[BACKEND]);
    let cfg = Config {
        snat_addr: be(NODE),
        ..Config::DEFAULT
    };
    dp.maps.put_config(cfg).unwrap();
    let external = FrontendValue {
        flags: FE_EXTERNAL,
        ..Default::default()
    };
    prov.service_with(&mut dp, 5, NODE_PORT, PROTO_TCP, &[BACKEND], 0, external);
    dp.maps.addrs_mut().remove(&be(NODE)).unwrap();
    let sticky = FrontendValue {
        affinity_timeout_s: 10_800,
        ..Default::default()
    };
    prov.service_with(
        &mut dp,
        6,
        AFFINITY_VIP,
        PROTO_TCP,
        &[BACKEND, F1],
        0,
        sticky,
    );
    for i in 3..n {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
        let value = FrontendValue {
            svc_id: 4,
            ring_offset: filler_ring,
            ring_size: 101,
            ..Default::default()
        };
        prov.frontend(&mut dp, (vip, 80), PROTO_TCP, value);
    }
    dp
}

/// The IPv6 rows of one column.
struct RowV6 {
    frontends: u32,
    non_frontend: f64,
    established: f64,
    reply: f64,
    established_ct: f64,
    reply_ct: f64,
    new_flow: f64,
}

/// IPv6 frontends F1 and F2, each the other's only backend, a frontend for
/// new flows, and fillers up to `n` frontends or as many as `FRONTENDS_V6`
/// holds. Returns the data plane and its number of IPv6 frontends.
fn provision_v6(n: u32) -> (Datapath, u32) {
    let mut dp = Datapath::load(&Capacities::small(), None).expect("load");
    let mut prov = Provision::new();
    prov.service_v6(&mut dp, 1, F1_6, PROTO_TCP, &[F2_6]);
    prov.service_v6(&mut dp, 2, F2_6, PROTO_TCP, &[F1_6]);
    for (id, dir) in [(7, CT_DIR_FORWARD), (9, CT_DIR_REPLY)] {
        let (a, b) = colliding_pair_v6(dir);
        prov.service_v6(&mut dp, id, a, PROTO_TCP, &[b]);
        prov.service_v6(&mut dp, id + 1, b, PROTO_TCP, &[a]);
    }
    let ring = prov.service_v6(&mut dp, 3, NEW_VIP6, PROTO_TCP, &[BACKEND6]);
    let frontends = n.clamp(7, MAX_FRONTENDS_V6);
    for i in 7..frontends {
        let vip =
            Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0)) + i as u128);
        let value = FrontendValue {
            svc_id: 4,
            ring_offset: ring,
            ring_size: 101,
            ..Default::default()
        };
        prov.frontend_v6(&mut dp, (vip, 80), PROTO_TCP, value);
    }
    (dp, frontends)
}

fn measure_v6(n: u32) -> RowV6 {
    let (mut dp, frontends) = provision_v6(n);
    // The non-frontend row measures the filter's miss, as for IPv4.
    let words = dp.maps.filter_mut().unwrap().words();
    for (addr, set) in [(OTHER6.0, AddrSet::Frontend), (CLIENT6.0, AddrSet::Backend)] {
        let (word, bit) = position_v6(to_map_v6(addr), set);
        assert!(
            words.iter().all(|&(w, bits)| w != word || bits & bit == 0),
            "{addr} is in the address filter's {set:?} set"
        );
    }
    let frames = repeated_frames_v6(&dp);
    let news: Vec<Vec<u8>> = (0..SINGLE_RUNS)
        .map(|p| tcp6_frame((CLIENT6.0, 1024 + p), NEW_VIP6, Tcp::syn(), b""))
        .collect();
    RowV6 {
        frontends,
        non_frontend: frames.measure(&dp, Path::NonFrontend),
        established: frames.measure(&dp, Path::Established),
        reply: frames.measure(&dp, Path::Reply),
        established_ct: frames.measure(&dp, Path::EstablishedCt),
        reply_ct: frames.measure(&dp, Path::ReplyCt),
        new_flow: single(&dp, PROGRAM, &news, Some(Reason::XlateNew)),
    }
}

/// The rows measured by `repeated`, each of which repeats one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    NonFrontend,
    Established,
    Reply,
    EstablishedCt,
    ReplyCt,
}

impl Path {
    const ALL: [Path; 5] = [
        Path::NonFrontend,
        Path::Established,
        Path::Reply,
        Path::EstablishedCt,
        Path::ReplyCt,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::NonFrontend => "non-frontend",
            Path::Established => "established",
            Path::Reply => "reply",
            Path::EstablishedCt => "established-ct",
            Path::ReplyCt => "reply-ct",
        }
    }

    /// The path counter that proves an iteration took this path.
    fn reason(self) -> Reason {
        match self {
            Path::NonFrontend => Reason::PassNotOurs,
            Path::Established => Reason::XlateEstablishedCached,
            Path::Reply => Reason::XlateReplyCached,
            Path::EstablishedCt => Reason::XlateEstablished,
            Path::ReplyCt => Reason::XlateReply,
        }
    }
}

/// The frame of each `Path`, on a data plane whose ping-pong flows exist.
struct RepeatedFrames {
    non_frontend: Vec<u8>,
    established: Vec<u8>,
    reply: Vec<u8>,
    established_ct: Vec<u8>,
    reply_ct: Vec<u8>,
}

impl RepeatedFrames {
    fn frame(&self, path: Path) -> &[u8] {
        match path {
            Path::NonFrontend => &self.non_frontend,
            Path::Established => &self.established,
            Path::Reply => &self.reply,
            Path::EstablishedCt => &self.established_ct,
            Path::ReplyCt => &self.reply_ct,
        }
    }

    fn measure(&self, dp: &Datapath, path: Path) -> f64 {
        repeated(dp, PROGRAM, self.frame(path), Some(path.reason()))
    }
}

/// The IPv4 frames of the repeated rows, after creating the flows they
/// ping-pong between.
fn repeated_frames(dp: &Datapath) -> RepeatedFrames {
    let established = tcp_frame(CLIENT, F1, Tcp::ack(), b"", &[]);
    run_frame(dp.program(PROGRAM).unwrap(), &established, 2).unwrap();
    let (fa, _) = colliding_pair(CT_DIR_FORWARD);
    let (ra, rb) = colliding_pair(CT_DIR_REPLY);
    for f in [fa, ra] {
        let first = tcp_frame(CLIENT, f, Tcp::ack(), b"", &[]);
        run_frame(dp.program(PROGRAM).unwrap(), &first, 2).unwrap();
    }
    let other = (Ipv4Addr::new(10, 1, 2, 3), 443);
    RepeatedFrames {
        non_frontend: tcp_frame(CLIENT, other, Tcp::ack(), b"", &[]),
        established,
        reply: tcp_frame(F2, CLIENT, Tcp::ack(), b"", &[]),
        established_ct: tcp_frame(CLIENT, fa, Tcp::ack(), b"", &[]),
        reply_ct: tcp_frame(rb, CLIENT, Tcp::ack(), b"", &[]),
    }
}

/// `repeated_frames` of IPv6.
fn repeated_frames_v6(dp: &Datapath) -> RepeatedFrames {
    let established = tcp6_frame(CLIENT6, F1_6, Tcp::ack(), b"");
    run_frame(dp.program(PROGRAM).unwrap(), &established, 2).unwrap();
    let (fa, _) = colliding_pair_v6(CT_DIR_FORWARD);
    let (ra, rb) = colliding_pair_v6(CT_DIR_REPLY);
    for f in [fa, ra] {
        let first = tcp6_frame(CLIENT6, f, Tcp::ack(), b"");
        run_frame(dp.program(PROGRAM).unwrap(), &first, 2).unwrap();
    }
    RepeatedFrames {
        non_frontend: tcp6_frame(CLIENT6, OTHER6, Tcp::ack(), b""),
        established,
        reply: tcp6_frame(F2_6, CLIENT6, Tcp::ack(), b""),
        established_ct: tcp6_frame(CLIENT6, fa, Tcp::ack(), b""),
        reply_ct: tcp6_frame(rb, CLIENT6, Tcp::ack(), b""),
    }
}

/// One repeated row of one Service for `seconds`, for a profiler
/// (`cargo xtask bench --profile`): prints `ready` with the ids of `lb`
/// and `lb6` once the flows exist, then each round's ns per packet.
fn profile(row: &str, seconds: u64) {
    let unknown = || -> ! {
        panic!(
            "no row {row}: ipv4- or ipv6- and one of {:?}",
            Path::ALL.map(Path::name)
        )
    };
    let (family, path) = row.split_once('-').unwrap_or_default();
    let path = Path::ALL
        .into_iter()
        .find(|p| p.name() == path)
        .unwrap_or_else(|| unknown());
    let (dp, frames) = match family {
        "ipv4" => {
            let dp = provision(1);
            let frames = repeated_frames(&dp);
            (dp, frames)
        }
        "ipv6" => {
            let (dp, _) = provision_v6(1);
            let frames = repeated_frames_v6(&dp);
            (dp, frames)
        }
        _ => unknown(),
    };
    let id = |name: &str| dp.program(name).unwrap().info().unwrap().id();
    println!("ready {} {}", id(PROGRAM), id("lb6"));
    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < until {
        println!("{row}: {:.1} ns", frames.measure(&dp, path));
    }
}

struct Row {
    services: u32,
    noop: f64,
    noop_single: f64,
    non_frontend: f64,
    new_flow: f64,
    established: f64,
    reply: f64,
    established_ct: f64,
    reply_ct: f64,
    snat_new: f64,
    snat_established: f64,
    snat_reply: f64,
    snat_established_steady: f64,
    snat_reply_steady: f64,
    snat_stale_range: f64,
    affinity_hit: f64,
    v6: RowV6,
}

/// NodePort new flows when every port of the SNAT range, the clients' own
/// included, is held by a flow to the backend that its backend never
/// answered, for longer than a port is kept from a new flow: each new flow
/// must take a stale flow's port. Proven by `SnatPortReclaimed`.
fn snat_stale_range(dp: &mut Datapath) -> f64 {
    let ports = Config::DEFAULT.snat_ports;
    let now = now_ns();
    let frontend = (be(NODE_PORT.0), NODE_PORT.1.to_be());
    let backend = (be(BACKEND.0), BACKEND.1.to_be());
    let unanswered = CtValueV4 {
        expires_ns: now + 60_000_000_000,
        last_seen_ns: now - 1_000_000_000,
        svc_id: 5,
        ..Default::default()
    };
    for n in 0..ports.count() {
        let port = ports.nth(n).to_be();
        let client = (be(STALE_CLIENT), port);
        let snat = (be(NODE), port);
        let forward = CtValueV4 {
            nat_addr: backend.0,
            nat_port: backend.1,
            snat_addr: snat.0,
            snat_port: snat.1,
            ..unanswered
        };
        let reverse = CtValueV4 {
            nat_addr: frontend.0,
            nat_port: frontend.1,
            snat_addr: client.0,
            snat_port: client.1,
            ..unanswered
        };
        let ct = dp.maps.ct_mut();
        ct.insert(CtKeyV4::forward(client, frontend, PROTO_TCP), forward, 0)
            .unwrap();
        ct.insert(CtKeyV4::reply(backend, snat, PROTO_TCP), reverse, 0)
            .unwrap();
    }
    let frames: Vec<Vec<u8>> = (0..u32::from(SNAT_RUNS))
        .map(|n| {
            let client = (FLOOD_CLIENT, ports.nth(n));
            tcp_frame(client, NODE_PORT, Tcp::syn(), b"", &[])
        })
        .collect();
    let reclaimed = || dp.maps.reason_total(Reason::SnatPortReclaimed).unwrap();
    let before = reclaimed();
    let (ns, _) = single_out(dp, &frames, Reason::XlateNew);
    assert_eq!(
        reclaimed() - before,
        frames.len() as u64,
        "SnatPortReclaimed"
    );
    ns
}

fn measure(n: u32) -> Row {
    // First, on a data plane of its own that is gone before the next loads.
    let v6 = measure_v6(n);
    let mut dp = provision(n);
    let frames = repeated_frames(&dp);
    let news: Vec<Vec<u8>> = (0..SINGLE_RUNS)
        .map(|p| tcp_frame((CLIENT.0, 1024 + p), NEW_VIP, Tcp::syn(), b"", &[]))
        .collect();
    let nodeport = |f: Tcp| -> Vec<Vec<u8>> {
        (0..SNAT_RUNS)
            .map(|p| tcp_frame((CLIENT.0, 1024 + p), NODE_PORT, f.clone(), b"", &[]))
            .collect()
    };
    let (snat_new, snat_out) = single_out(&dp, &nodeport(Tcp::syn()), Reason::XlateNew);
    let (snat_established, _) = single_out(&dp, &nodeport(Tcp::ack()), Reason::XlateEstablished);
    let replies: Vec<Vec<u8>> = snat_out
        .iter()
        .map(|out| {
            let sport = u16::from_be_bytes([out[34], out[35]]);
            tcp_frame(BACKEND, (NODE, sport), Tcp::ack(), b"", &[])
        })
        .collect();
    let (snat_reply, _) = single_out(&dp, &replies, Reason::XlateReply);
    let snat_established_steady =
        single_steady(&dp, &nodeport(Tcp::ack()), Reason::XlateEstablishedCached);
    let snat_reply_steady = single_steady(&dp, &replies, Reason::XlateReplyCached);
    let snat_stale_range = snat_stale_range(&mut dp);
    let sticky: Vec<Vec<u8>> = (0..SINGLE_RUNS)
        .map(|p| {
            tcp_frame(
                (STICKY_CLIENT, 1024 + p),
                AFFINITY_VIP,
                Tcp::syn(),
                b"",
                &[],
            )
        })
        .collect();
    let (affinity_hit, _) = single_out(&dp, &sticky, Reason::XlateNew);
    assert_eq!(
        dp.maps.affinity().keys().count(),
        1,
        "every flow after the first was an affinity hit"
    );
    Row {
        services: n,
        snat_new,
        snat_established,
        snat_reply,
        snat_established_steady,
        snat_reply_steady,
        snat_stale_range,
        affinity_hit,
        noop: repeated(&dp, "noop", frames.frame(Path::Established), None),
        noop_single: single(&dp, "noop", &news, None),
        non_frontend: frames.measure(&dp, Path::NonFrontend),
        new_flow: single(&dp, PROGRAM, &news, Some(Reason::XlateNew)),
        established: frames.measure(&dp, Path::Established),
        reply: frames.measure(&dp, Path::Reply),
        established_ct: frames.measure(&dp, Path::EstablishedCt),
        reply_ct: frames.measure(&dp, Path::ReplyCt),
        v6,
    }
}

fn main() {
    if let Err(e) = testbed::netns::require_root("datapath benchmark") {
        panic!("{e:#}");
    }
    if let Ok(row) = std::env::var("XDPLB_BENCH_ROW") {
        let seconds = std::env::var("XDPLB_BENCH_SECONDS").map_or(15, |s| s.parse().unwrap());
        return profile(&row, seconds);
    }
    let rows: Vec<Row> = [1, 1_000, 100_000].into_iter().map(measure).collect();
    println!("\nns per packet, BPF_PROG_TEST_RUN, median of {ROUNDS} x {REPEAT} (new flow: median of {SINGLE_RUNS} single runs, SNAT rows of {SNAT_RUNS})");
    println!(
        "{:<28}{:>12}{:>12}{:>12}",
        "path \\ services", 1, 1_000, 100_000
    );
    let line_at = |name: &str, decimals: usize, f: &dyn Fn(&Row) -> f64| {
        print!("{name:<28}");
        for r in &rows {
            print!("{:>12.*}", decimals, f(r));
        }
        println!();
    };
    let line = |name: &str, f: &dyn Fn(&Row) -> f64| line_at(name, 1, f);
    // Two decimals for the ratios: at one, 1.16 would read as the target.
    let ratio = |name: &str, f: &dyn Fn(&Row) -> f64| line_at(name, 2, f);
    line("no-op floor (repeat)", &|r| r.noop);
    line("non-frontend", &|r| r.non_frontend);
    line("established (flow cache)", &|r| r.established);
    line("reply (flow cache)", &|r| r.reply);
    line("established (conntrack)", &|r| r.established_ct);
    line("reply (conntrack)", &|r| r.reply_ct);
    line("IPv6 non-frontend", &|r| r.v6.non_frontend);
    line("IPv6 established (cache)", &|r| r.v6.established);
    line("IPv6 reply (flow cache)", &|r| r.v6.reply);
    line("IPv6 established (conntrack)", &|r| r.v6.established_ct);
    line("IPv6 reply (conntrack)", &|r| r.v6.reply_ct);
    line("no-op floor (single run)", &|r| r.noop_single);
    line("new flow (single run)", &|r| r.new_flow);
    line("IPv6 new flow (single run)", &|r| r.v6.new_flow);
    line("NodePort SNAT first (single)", &|r| r.snat_new);
    line("NodePort SNAT established (s)", &|r| r.snat_established);
    line("reply, reverse SNAT (single)", &|r| r.snat_reply);
    line("SNAT established, steady (s)", &|r| {
        r.snat_established_steady
    });
    line("reverse SNAT reply, steady (s)", &|r| r.snat_reply_steady);
    line("SNAT new, stale range (s)", &|r| r.snat_stale_range);
    line("affinity hit, new flow (s)", &|r| r.affinity_hit);
    println!();
    line("non-frontend / floor", &|r| r.non_frontend / r.noop);
    line("established / floor", &|r| r.established / r.noop);
    line("reply / floor", &|r| r.reply / r.noop);
    line("established (ct) / floor", &|r| r.established_ct / r.noop);
    line("reply (ct) / floor", &|r| r.reply_ct / r.noop);
    line("IPv6 non-frontend / floor", &|r| r.v6.non_frontend / r.noop);
    line("IPv6 est. (cache) / floor", &|r| r.v6.established / r.noop);
    line("IPv6 reply (cache) / floor", &|r| r.v6.reply / r.noop);
    line("IPv6 est. (ct) / floor", &|r| r.v6.established_ct / r.noop);
    line("IPv6 reply (ct) / floor", &|r| r.v6.reply_ct / r.noop);
    line("new flow - single floor", &|r| r.new_flow - r.noop_single);
    line("IPv6 new flow - s.floor", &|r| {
        r.v6.new_flow - r.noop_single
    });
    line("SNAT established - s.floor", &|r| {
        r.snat_established - r.noop_single
    });
    line("reverse SNAT reply - s.floor", &|r| {
        r.snat_reply - r.noop_single
    });
    line("SNAT est. steady / s.floor", &|r| {
        r.snat_established_steady / r.noop_single
    });
    line("rev. SNAT steady / s.floor", &|r| {
        r.snat_reply_steady / r.noop_single
    });
    line("SNAT stale range - s.floor", &|r| {
        r.snat_stale_range - r.noop_single
    });
    println!("\nIPv6 over IPv4, the same path (target: at most 1.15)");
    ratio("non-frontend", &|r| r.v6.non_frontend / r.non_frontend);
    ratio("established (flow cache)", &|r| {
        r.v6.established / r.established
    });
    ratio("reply (flow cache)", &|r| r.v6.reply / r.reply);
    ratio("established (conntrack)", &|r| {
        r.v6.established_ct / r.established_ct
    });
    ratio("reply (conntrack)", &|r| r.v6.reply_ct / r.reply_ct);
    ratio("new flow", &|r| r.v6.new_flow / r.new_flow);
    println!(
        "\nEvery row's path counter grew by exactly its iteration count (asserted); services: {:?}",
        rows.iter().map(|r| r.services).collect::<Vec<_>>()
    );
    println!(
        "IPv6 rows on a data plane of their own, IPv6 frontends: {:?}",
        rows.iter().map(|r| r.v6.frontends).collect::<Vec<_>>()
    );
}
