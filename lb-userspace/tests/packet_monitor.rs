//! BPF_PROG_TEST_RUN tier for `xdplb monitor`: the program writes no event
//! while no monitor holds the lease (none held, or one run out), and one
//! per drop, reject or new flow while one does, naming the packet as it
//! arrived and what it was translated to.
mod common;

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{MapData, RingBuf};
use common::{
    external_v6::{
        self, CLIENT as CLIENT_V6, LB_IP, LOCAL_LB_IP, NODE as NODE_V6, NODE_PORT, REMOTE,
    },
    load,
    packets::{parse_checked, tcp_frame, Tcp},
    packets_v6, source_range, Provision,
};
use lb_common::{names, FrontendValue, Reason, FE_SOURCE_RANGES, PROTO_TCP};
use lb_userspace::{
    datapath::{run_frame, Datapath, PROGRAM},
    monitor::{drain, monotonic_ns, Event, Lease},
};

const XDP_DROP: u32 = 1;
/// BPF_PROG_TEST_RUN receives on the loopback device.
const LOOPBACK: u32 = 1;

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 168, 1, 100), 40000);
const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 2), 8080);
const B2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 2), 8080);

/// A loaded data plane with the monitor's maps in hand, as `xdplb monitor`
/// holds them.
struct Watched {
    dp: Datapath,
    ring: RingBuf<MapData>,
    lease: Lease,
}

impl Watched {
    fn new(mut dp: Datapath) -> Self {
        let ring = dp.ebpf.take_map(names::MONITOR).unwrap();
        let lease = dp.ebpf.take_map(names::MONITOR_ON).unwrap();
        Self {
            ring: ring.try_into().unwrap(),
            lease: Lease::new(lease).unwrap(),
            dp,
        }
    }

    /// Runs `frame` `repeat` times; the action and the frame after the last.
    fn run(&self, frame: &[u8], repeat: u32) -> (u32, Vec<u8>) {
        let r = run_frame(self.dp.program(PROGRAM).unwrap(), frame, repeat).unwrap();
        (r.action, r.frame)
    }

    fn count(&self, r: Reason) -> u64 {
        self.dp.maps.reason_total(r).unwrap()
    }
}

fn syn_from(client: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> Vec<u8> {
    tcp_frame(client, to, Tcp::syn(), b"", &[])
}

/// The event of a packet from `client` to `to` counted under `reason`,
/// with nothing translated; `ktime_ns` is left for the caller.
fn event<A: Into<IpAddr>>(reason: Reason, client: (A, u16), to: (A, u16)) -> Event {
    Event {
        reason: reason as u32,
        ifindex: LOOPBACK,
        saddr: Some(client.0.into()),
        daddr: Some(to.0.into()),
        sport: client.1.to_be(),
        dport: to.1.to_be(),
        proto: PROTO_TCP,
        ..Event::default()
    }
}

/// An address and port as events hold them.
fn at<A: Into<IpAddr>>((addr, port): (A, u16)) -> (Option<IpAddr>, u16) {
    (Some(addr.into()), port.to_be())
}

/// The events written between `since` and now, with their times checked
/// and cleared for comparison.
fn events_since(w: &mut Watched, since: u64) -> Vec<Event> {
    let until = monotonic_ns();
    drain(&mut w.ring)
        .into_iter()
        .map(|e| {
            assert!(
                (since..=until).contains(&e.ktime_ns),
                "event time {} outside {since}..={until}",
                e.ktime_ns
            );
            Event { ktime_ns: 0, ..e }
        })
        .collect()
}

/// A Service admitting 198.51.100.0/24 only, so `CLIENT` is dropped.
fn source_ranged() -> Watched {
    let mut dp = load();
    let template = FrontendValue {
        flags: FE_SOURCE_RANGES,
        ..Default::default()
    };
    Provision::new().service_with(&mut dp, 7, VIP, PROTO_TCP, &[B1], 0, template);
    source_range(&mut dp, 7, Ipv4Addr::new(198, 51, 100, 0), 24);
    Watched::new(dp)
}

#[test]
fn drops_are_written_only_while_a_monitor_holds_the_lease() {
    let mut w = source_ranged();
    let client = |port| (CLIENT.0, port);

    let (action, _) = w.run(&syn_from(client(40000), VIP), 1);
    assert_eq!(action, XDP_DROP);
    assert_eq!(w.count(Reason::DropSourceRange), 1);
    assert_eq!(drain(&mut w.ring), [], "no lease: no event");

    w.lease.set(monotonic_ns() - 1).unwrap();
    w.run(&syn_from(client(40001), VIP), 1);
    assert_eq!(drain(&mut w.ring), [], "a lease run out: no event");
    assert_eq!(
        w.lease.until().unwrap(),
        0,
        "a lease run out is cleared, so event sites stop reading the clock"
    );

    w.lease.renew().unwrap();
    let since = monotonic_ns();
    w.run(&syn_from(client(40002), VIP), 1);
    let want = Event {
        svc_id: 7,
        ..event(Reason::DropSourceRange, client(40002), VIP)
    };
    assert_eq!(events_since(&mut w, since), [want]);

    w.lease.clear().unwrap();
    w.run(&syn_from(client(40003), VIP), 1);
    assert_eq!(drain(&mut w.ring), [], "lease cleared: no event");
    assert_eq!(w.count(Reason::DropSourceRange), 4);
}

#[test]
fn new_flows_name_their_backend_and_rejects_the_packet_as_it_arrived() {
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, PROTO_TCP, &[B1, B2]);
    let mut w = Watched::new(dp);
    w.lease.renew().unwrap();

    let since = monotonic_ns();
    let (_, out) = w.run(&syn_from(CLIENT, VIP), 1);
    let p = parse_checked(&out);
    let chosen = (p.dst, p.dport);
    assert!([B1, B2].contains(&chosen), "went to {chosen:?}");
    let (to_addr, to_port) = at(chosen);
    let want = Event {
        svc_id: 7,
        to_addr,
        to_port,
        ..event(Reason::XlateNew, CLIENT, VIP)
    };
    assert_eq!(events_since(&mut w, since), [want]);

    w.run(&tcp_frame(CLIENT, VIP, Tcp::ack(), b"data", &[]), 1);
    assert_eq!(w.count(Reason::XlateEstablished), 1);
    assert_eq!(drain(&mut w.ring), [], "an established packet is no event");

    // The reject is built over the packet; the event still shows the
    // client's packet, not the answer.
    let unknown_port = (VIP.0, 81);
    let since = monotonic_ns();
    w.run(&syn_from(CLIENT, unknown_port), 1);
    assert_eq!(w.count(Reason::RejectUnknownPort), 1);
    assert_eq!(
        events_since(&mut w, since),
        [event(Reason::RejectUnknownPort, CLIENT, unknown_port)]
    );
}

/// A reader that falls behind loses events, never packets, and every lost
/// event is counted.
#[test]
fn a_full_ring_counts_the_events_it_lost() {
    let mut w = source_ranged();
    w.lease.renew().unwrap();
    // The ring holds about 4,700 events of 48 bytes and their headers.
    let sent = 6_000;
    let (action, _) = w.run(&syn_from(CLIENT, VIP), sent);
    assert_eq!(action, XDP_DROP);
    let read = drain(&mut w.ring).len() as u64;
    let lost = w.count(Reason::MonitorEventsLost);
    assert!(lost > 0, "{read} events read, none lost");
    assert_eq!(read + lost, sent as u64);
    assert_eq!(w.count(Reason::DropSourceRange), sent as u64);
}

/// `external_v6`'s node, watched under a lease.
fn watched_v6() -> Watched {
    let mut w = Watched::new(external_v6::node());
    w.lease.renew().unwrap();
    w
}

fn v6((a, port): (&str, u16)) -> (std::net::Ipv6Addr, u16) {
    (packets_v6::addr(a), port)
}

#[test]
fn a_new_ipv6_flow_names_its_backend_and_source_nat() {
    let mut w = watched_v6();
    let nodeport = (NODE_V6, NODE_PORT);
    let since = monotonic_ns();
    let (_, out) = w.run(&packets_v6::tcp(CLIENT_V6, nodeport, true, b""), 1);
    let p = packets_v6::parse_checked(&out);
    assert_eq!((p.src, p.dst), (v6((NODE_V6, 40000)), v6(REMOTE)));

    let events = events_since(&mut w, since);
    assert_eq!(events.len(), 2, "{events:?}");
    let svc_id = events[0].svc_id;
    assert_ne!(svc_id, 0);
    let (to_addr, to_port) = at(v6(REMOTE));
    let (snat_addr, snat_port) = at(p.src);
    let of = |reason| Event {
        svc_id,
        to_addr,
        to_port,
        snat_addr,
        snat_port,
        ..event(reason, v6(CLIENT_V6), v6(nodeport))
    };
    assert_eq!(events, [of(Reason::SnatNewFlow), of(Reason::XlateNew)]);

    w.run(&packets_v6::tcp(CLIENT_V6, nodeport, false, b"more"), 1);
    assert_eq!(drain(&mut w.ring), [], "an established packet is no event");
}

/// Dropped by the traffic policy, or answered with a reject.
#[test]
fn a_refused_ipv6_flow_names_its_reason() {
    let mut w = watched_v6();
    for (to, reason) in [
        ((LOCAL_LB_IP, 80), Reason::DropNoLocalBackend),
        ((LB_IP, 81), Reason::RejectUnknownPort),
    ] {
        let since = monotonic_ns();
        w.run(&packets_v6::tcp(CLIENT_V6, to, true, b""), 1);
        assert_eq!(w.count(reason), 1);
        let events = events_since(&mut w, since);
        assert_eq!(events.len(), 1, "{events:?}");
        let want = event(reason, v6(CLIENT_V6), v6(to));
        assert_eq!(
            events[0],
            Event {
                svc_id: events[0].svc_id,
                ..want
            }
        );
        if reason == Reason::DropNoLocalBackend {
            assert_ne!(events[0].svc_id, 0, "the frontend's Service");
        }
    }
}

/// A TCP packet cut inside its header: dropped before its ports are read.
#[test]
fn a_malformed_ipv6_packet_names_its_addresses() {
    let mut w = watched_v6();
    let frame = packets_v6::tcp(CLIENT_V6, (LB_IP, 80), true, b"");
    let since = monotonic_ns();
    let (action, _) = w.run(&frame[..14 + 40 + 10], 1);
    assert_eq!(action, XDP_DROP);
    assert_eq!(
        events_since(&mut w, since),
        [Event {
            reason: Reason::DropMalformed as u32,
            ifindex: LOOPBACK,
            saddr: Some(v6(CLIENT_V6).0.into()),
            daddr: Some(packets_v6::addr(LB_IP).into()),
            proto: PROTO_TCP,
            ..Event::default()
        }]
    );
}
