//! BPF_PROG_TEST_RUN tier: ICMPv6 errors about translated flows are
//! translated back (outer destination, quoted packet, every checksum), and a
//! translated packet too big for its egress is answered with Packet Too Big
//! about the packet as its sender sent it, so Path MTU discovery works
//! through the NAT over IPv6 as `packet_icmp` and `packet_pod_path` check it
//! for IPv4. Both show in `xdplb monitor`. Frames are built and checked
//! with etherparse.
mod common;

use std::net::{IpAddr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};

use common::{
    packets::split_meta,
    packets_v6::{addr, parse_checked, tcp, udp},
    uplink::{small_mtu_node, through_tc_and_xdp, through_xdp_without_meta_room, UPLINK_MTU},
    watch,
};
use etherparse::{
    icmpv6::TimeExceededCode, Icmpv6Header, Icmpv6Type, NetHeaders, PacketBuilder, PacketHeaders,
    TransportHeader,
};
use lb_common::{Reason, CT_DIR_FORWARD, PROTO_UDP};
use lb_userspace::{
    datapath::{run_frame, Datapath, POD_PROGRAM, PROGRAM},
    model::ModelOptions,
    monitor::{drain, Event},
};

const XDP_PASS: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const NODE: &str = "fd00:10::1";
const NODE_PORT: u16 = 31000;
const VIP: (&str, u16) = ("fd00:96::10", 80);
const VIP_UDP: (&str, u16) = ("fd00:96::10", 53);
/// On another node, behind the namespace's `up0` in the small-MTU tests.
const BACKEND: (&str, u16) = ("fd00:244:2::2", 8080);
const CLIENT: (&str, u16) = ("fd00:244:1::7", 40000);
const OUTSIDE: (&str, u16) = ("2001:db8:7::7", 41000);
const ROUTER: &str = "fd00:10::fe";

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIPs: ["fd00:96::10"]
  ipFamilies: [IPv6]
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: 31000}
    - {name: dns, port: 53, targetPort: 8080, nodePort: 31053, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports:
  - {name: http, port: 8080}
  - {name: dns, port: 8080, protocol: UDP}
endpoints:
  - addresses: ["fd00:244:2::2"]
    nodeName: node2
"#;

/// node1, with `NODE` as its IPv6 NodePort and SNAT address.
fn node() -> Datapath {
    let opts = ModelOptions {
        nodeport_addresses_v6: vec![addr(NODE)],
        node_addresses_v6: vec![addr(NODE)],
        ..ModelOptions::default()
    };
    common::synced_with_snat_v6(MANIFESTS, &opts)
}

fn xdp(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

fn at(a: &str, port: u16) -> (Ipv6Addr, u16) {
    (addr(a), port)
}

/// The events in `ring`, their times (checked set) cleared for comparison.
fn events(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    drain(ring)
        .into_iter()
        .map(|e| {
            assert_ne!(e.ktime_ns, 0);
            Event { ktime_ns: 0, ..e }
        })
        .collect()
}

fn ip(a: &str) -> Option<IpAddr> {
    Some(addr(a).into())
}

/// Packet Too Big from `from` to `to`, MTU 1280, quoting `packet` (an
/// Ethernet frame) from its IPv6 header on, as much as a router may.
fn packet_too_big(from: &str, to: &str, packet: &[u8]) -> Vec<u8> {
    let quote = &packet[14..packet.len().min(14 + 1232)];
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 1])
        .ipv6(addr(from).octets(), addr(to).octets(), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut out, quote)
        .unwrap();
    out
}

/// An ICMPv6 message, its checksum checked over the pseudo-header.
struct Icmp6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: Icmpv6Type,
    quote: Vec<u8>,
}

fn parse_icmp6(frame: &[u8]) -> Icmp6 {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("output frame parses");
    let Some(NetHeaders::Ipv6(ip, _)) = h.net else {
        panic!("not IPv6")
    };
    let Some(TransportHeader::Icmpv6(icmp)) = h.transport else {
        panic!("not ICMPv6: {:?}", h.transport)
    };
    let quote = h.payload.slice().to_vec();
    let expected = Icmpv6Header::with_checksum(icmp.icmp_type, ip.source, ip.destination, &quote)
        .unwrap()
        .checksum;
    assert_eq!(icmp.checksum, expected, "ICMPv6 checksum");
    Icmp6 {
        src: ip.source.into(),
        dst: ip.destination.into(),
        kind: icmp.icmp_type,
        quote,
    }
}

/// The quoted packet's ends; its transport checksum is checked when the
/// quote holds the whole packet.
fn quoted_ends(quote: &[u8]) -> ((Ipv6Addr, u16), (Ipv6Addr, u16)) {
    let whole = u16::from_be_bytes([quote[4], quote[5]]) as usize + 40 == quote.len();
    if whole {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(quote);
        let seen = parse_checked(&frame);
        return (seen.src, seen.dst);
    }
    let a = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&quote[at..at + 16]).unwrap());
    let port = |at: usize| u16::from_be_bytes([quote[at], quote[at + 1]]);
    ((a(8), port(40)), (a(24), port(42)))
}

#[test]
fn packet_too_big_on_the_backend_path_reaches_the_client_about_the_frontend() {
    let dp = node();
    let sent = udp(CLIENT, VIP_UDP, &[5u8; 1300]);
    let (_, translated) = xdp(&dp, &sent);
    let p = parse_checked(&translated);
    assert_eq!(p.dst, at(BACKEND.0, BACKEND.1));

    // A router between the node and the backend cannot forward it.
    let (action, out) = xdp(&dp, &packet_too_big(ROUTER, CLIENT.0, &translated));
    assert_eq!(action, XDP_PASS);
    let e = parse_icmp6(&out);
    assert_eq!((e.src, e.dst), (addr(ROUTER), addr(CLIENT.0)));
    assert_eq!(e.kind, Icmpv6Type::PacketTooBig { mtu: 1280 });
    assert_eq!(
        quoted_ends(&e.quote),
        (at(CLIENT.0, CLIENT.1), at(VIP_UDP.0, VIP_UDP.1)),
        "the client learns about its packet to the VIP"
    );
    assert_eq!(
        &e.quote[..1232],
        &sent[14..14 + 1232],
        "the quote is what the client sent"
    );
    assert_eq!(count(&dp, Reason::XlateIcmpError), 1);
}

#[test]
fn packet_too_big_on_the_client_path_reaches_the_backend_with_source_nat_undone() {
    let mut dp = node();
    let mut ring = watch(&mut dp);
    let (_, to_backend) = xdp(&dp, &tcp(OUTSIDE, (NODE, NODE_PORT), true, b""));
    let fwd = parse_checked(&to_backend);
    assert_eq!(fwd.src.0, addr(NODE), "source NAT to the node");
    let snat_port = fwd.src.1;
    let sent_by_backend = tcp(BACKEND, (NODE, snat_port), false, &[7u8; 1300]);
    let (_, reply) = xdp(&dp, &sent_by_backend);
    let back = parse_checked(&reply);
    assert_eq!(
        (back.src, back.dst),
        (at(NODE, NODE_PORT), at(OUTSIDE.0, OUTSIDE.1))
    );

    let flow = events(&mut ring);
    assert_eq!(flow.len(), 2, "SNAT and the new flow: {flow:?}");

    // A router on the client's side cannot forward the translated reply: it
    // answers the node address, which sent it as the NodePort.
    let (action, out) = xdp(&dp, &packet_too_big(ROUTER, NODE, &reply));
    assert_eq!(action, XDP_PASS);
    let e = parse_icmp6(&out);
    assert_eq!(
        e.dst,
        addr(BACKEND.0),
        "the backend that sent the reply learns the MTU"
    );
    assert_eq!(
        quoted_ends(&e.quote),
        (at(BACKEND.0, BACKEND.1), at(NODE, snat_port))
    );
    // Translated back, the quote is byte for byte what the backend sent,
    // TCP checksum included.
    assert_eq!(&e.quote[..], &sent_by_backend[14..14 + 1232]);
    assert_eq!(
        events(&mut ring),
        [Event {
            reason: Reason::XlateIcmpError as u32,
            svc_id: flow[0].svc_id,
            ifindex: 1,
            saddr: ip(ROUTER),
            daddr: ip(NODE),
            to_addr: ip(BACKEND.0),
            proto: 58,
            ..Event::default()
        }],
        "the error as it arrived, and whom it went to"
    );
}

#[test]
fn icmpv6_errors_about_unknown_flows_pass_untouched() {
    let dp = node();
    let stranger = udp(CLIENT, ("fd00:244:9::9", 9999), &[1u8; 64]);
    let error = packet_too_big(ROUTER, CLIENT.0, &stranger);
    let (action, out) = xdp(&dp, &error);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, error);
    assert_eq!(count(&dp, Reason::XlateIcmpError), 0);
}

/// Checks `out` is Packet Too Big from the VIP to the client, with the
/// egress MTU, quoting `sent` from its IPv6 header for `quoted` bytes.
fn assert_packet_too_big_about_the_vip(out: &[u8], sent: &[u8], quoted: usize) {
    let e = parse_icmp6(out);
    assert_eq!((e.src, e.dst), (addr(VIP.0), addr(CLIENT.0)));
    assert_eq!(e.kind, Icmpv6Type::PacketTooBig { mtu: UPLINK_MTU });
    assert_eq!(e.quote.len(), 40 + quoted);
    assert_eq!(
        &e.quote[..],
        &sent[14..14 + 40 + quoted],
        "the headers as sent"
    );
}

#[test]
fn oversize_pod_packets_get_packet_too_big_about_the_clusterip() {
    let (tb, ns) = small_mtu_node();
    let dp = node();
    let big = [
        udp(CLIENT, VIP_UDP, &[7u8; 1400]),
        tcp(CLIENT, VIP, false, &[7u8; 1400]),
    ];
    let small = udp(CLIENT, VIP_UDP, &[7u8; 1000]);
    let prog = dp.classifier(POD_PROGRAM).unwrap();
    let [udp_big, tcp_big, small_out] = tb
        .in_ns(&ns, || {
            [&big[0], &big[1], &small].map(|f| run_frame(prog, f, 1).unwrap())
        })
        .unwrap();
    assert_eq!(udp_big.action, TC_ACT_REDIRECT, "sent back into the pod");
    assert_packet_too_big_about_the_vip(&udp_big.frame, &big[0], 8);
    // A TCP quote runs to the end of the TCP header.
    assert_eq!(tcp_big.action, TC_ACT_REDIRECT);
    assert_packet_too_big_about_the_vip(&tcp_big.frame, &big[1], 20);
    let p = parse_checked(&small_out.frame);
    assert_eq!(p.dst, at(BACKEND.0, BACKEND.1), "what fits is translated");
    assert_eq!(count(&dp, Reason::IcmpFragNeeded), 2);
}

/// Where the data plane routes a translated packet itself, the hop limit
/// loses one, and a packet whose hop limit is spent gets time exceeded
/// about it as its sender sent it, from the VIP, at tc and in XDP, as
/// `packet_pod_path` checks for IPv4's TTL.
#[test]
fn routed_packets_lose_one_hop_and_spent_ones_get_time_exceeded() {
    let (tb, ns) = small_mtu_node();
    let dp = node();
    let fresh = udp(CLIENT, VIP_UDP, b"hi");
    let mut spent = fresh.clone();
    spent[14 + 7] = 1;
    let [tc_fresh, tc_spent, xdp_fresh, xdp_spent] =
        through_tc_and_xdp(&tb, &ns, &dp, [&fresh, &spent]);
    assert_eq!(tc_fresh.action, TC_ACT_REDIRECT, "routed by the program");
    let (meta, xdp_out) = split_meta(&xdp_fresh.frame);
    assert!(meta.is_some(), "routed by the program, through tc");
    for out in [&tc_fresh.frame[..], xdp_out] {
        let p = parse_checked(out);
        assert_eq!(p.dst, at(BACKEND.0, BACKEND.1));
        assert_eq!(p.hop_limit, 63, "one hop taken off");
    }
    assert_eq!(tc_spent.action, TC_ACT_REDIRECT, "sent back into the pod");
    let (_, xdp_answer) = split_meta(&xdp_spent.frame);
    for out in [&tc_spent.frame[..], xdp_answer] {
        let e = parse_icmp6(out);
        assert_eq!((e.src, e.dst), (addr(VIP_UDP.0), addr(CLIENT.0)));
        assert_eq!(
            e.kind,
            Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded)
        );
        assert_eq!(&e.quote[..], &spent[14..14 + 48], "the headers as sent");
    }
    assert_eq!(count(&dp, Reason::IcmpTimeExceeded), 2);
}

/// The kernel drops an IPv6 header of another version (`ipv6_rcv`): such
/// a packet, and an ICMPv6 error quoting one, are passed as they came,
/// neither translated nor answered.
#[test]
fn headers_of_another_version_are_neither_translated_nor_answered() {
    let dp = node();
    let mut wrong = udp(CLIENT, VIP_UDP, b"hi");
    wrong[14] = 0x70 | (wrong[14] & 0x0f);
    let mut spent = udp(CLIENT, VIP_UDP, b"hi");
    spent[14 + 7] = 1;
    spent[14] = 0x40 | (spent[14] & 0x0f);
    let (_, fwd) = xdp(&dp, &udp(CLIENT, VIP_UDP, b"hi"));
    let mut error = packet_too_big(ROUTER, NODE, split_meta(&fwd).1);
    error[14 + 40 + 8] = 0x40;
    for frame in [wrong, spent, error] {
        let (action, out) = xdp(&dp, &frame);
        assert_eq!((action, &out), (XDP_PASS, &frame));
    }
    assert_eq!(count(&dp, Reason::PassMalformed), 2);
    assert_eq!(count(&dp, Reason::PassIcmpv6), 1);
}

/// `packet_pod_path`'s frame without room for XDP's metadata, over IPv6.
#[test]
fn frames_the_kernel_routes_after_all_keep_their_hop_limit_for_it() {
    let (tb, ns) = small_mtu_node();
    let dp = node();
    let frame = udp(CLIENT, VIP_UDP, b"hi");
    let kernel_before = count(&dp, Reason::FwdKernel);
    let (action, out) = through_xdp_without_meta_room(&tb, &ns, &dp, &frame);
    assert_eq!(action, XDP_PASS);
    let p = parse_checked(&out);
    assert_eq!(p.dst, at(BACKEND.0, BACKEND.1), "translated");
    assert_eq!(p.hop_limit, 64, "the hop limit as sent");
    assert_eq!(count(&dp, Reason::FwdKernel), kernel_before + 1);
}

#[test]
fn oversize_packets_from_outside_get_packet_too_big_in_xdp() {
    let (tb, ns) = small_mtu_node();
    let mut dp = node();
    let mut ring = watch(&mut dp);
    let big = udp(CLIENT, VIP_UDP, &[7u8; 1400]);
    let prog = dp.program(PROGRAM).unwrap();
    let r = tb.in_ns(&ns, || run_frame(prog, &big, 1).unwrap()).unwrap();
    assert_eq!(r.action, XDP_PASS);
    let (meta, frame) = split_meta(&r.frame);
    assert_eq!(
        meta.map(|(kind, _)| kind),
        Some(lb_common::FWD_REDIRECT),
        "tc sends it back out where it came in"
    );
    let e = parse_icmp6(frame);
    assert_eq!((e.src, e.dst), (addr(VIP_UDP.0), addr(CLIENT.0)));
    assert_eq!(e.kind, Icmpv6Type::PacketTooBig { mtu: UPLINK_MTU });
    assert_eq!(&e.quote[..], &big[14..14 + 48]);
    assert_eq!(count(&dp, Reason::IcmpFragNeeded), 1);
    let seen = events(&mut ring);
    let answer = seen
        .iter()
        .find(|e| e.reason == Reason::IcmpFragNeeded as u32)
        .unwrap_or_else(|| panic!("no Packet Too Big event in {seen:?}"));
    assert_ne!(answer.svc_id, 0, "the flow's Service");
    assert_eq!(
        *answer,
        Event {
            reason: Reason::IcmpFragNeeded as u32,
            svc_id: answer.svc_id,
            ifindex: 1,
            saddr: ip(CLIENT.0),
            daddr: ip(VIP_UDP.0),
            sport: CLIENT.1.to_be(),
            dport: VIP_UDP.1.to_be(),
            to_addr: ip(BACKEND.0),
            to_port: BACKEND.1.to_be(),
            proto: PROTO_UDP,
            dir: CT_DIR_FORWARD,
            ..Event::default()
        },
        "the packet as its sender sent it, and its flow's backend"
    );
}
