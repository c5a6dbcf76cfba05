//! BPF_PROG_TEST_RUN tier for the tc programs: `lb_pod` runs the same
//! packet path as XDP on what pods send, and both hooks answer a translated
//! packet too big for its egress with fragmentation needed about the packet
//! as its sender sent it. Frames are built and checked with etherparse.
mod common;

use std::net::Ipv4Addr;

use common::{
    load,
    packets::{parse_checked, split_meta, tcp_frame, udp_frame, with_ttl, Tcp},
    uplink::{small_mtu_node, through_tc_and_xdp, through_xdp_without_meta_room, UPLINK_MTU},
    Provision,
};
use etherparse::{
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    Icmpv4Type, Ipv4Header,
};
use lb_common::{Reason, PROTO_TCP, PROTO_UDP};
use lb_userspace::{
    datapath::{run_frame, Datapath, POD_PROGRAM, PROGRAM},
    sync::NodeMaps,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;

const POD: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 5), 40000);
const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 2), 8080);

fn run_tc(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.classifier(POD_PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

fn with_service(proto: u8) -> Datapath {
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, proto, &[B1]);
    dp
}

#[test]
fn pod_to_clusterip_is_translated_at_tc_and_the_reply_comes_back_as_the_vip() {
    let dp = with_service(PROTO_TCP);
    let (action, out) = run_tc(&dp, &tcp_frame(POD, VIP, Tcp::syn(), b"hi", &[]));
    // No route to the backend in the test's namespace: the kernel routes it.
    assert_eq!(action, TC_ACT_OK);
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (POD, B1));
    assert_eq!(p.payload, b"hi");
    assert_eq!(p.ttl, 64, "the kernel takes one off as it routes it");
    assert_eq!(count(&dp, Reason::XlateNew), 1);

    let (_, out) = run_tc(&dp, &tcp_frame(B1, POD, Tcp::syn_ack(), b"ok", &[]));
    let r = parse_checked(&out);
    assert_eq!(((r.src, r.sport), (r.dst, r.dport)), (VIP, POD));
    assert_eq!(count(&dp, Reason::XlateReply), 1);
}

#[test]
fn unknown_port_on_a_clusterip_is_rejected_back_into_the_pod() {
    let dp = with_service(PROTO_TCP);
    let (action, out) = run_tc(&dp, &tcp_frame(POD, (VIP.0, 81), Tcp::syn(), b"", &[]));
    assert_eq!(
        action, TC_ACT_REDIRECT,
        "redirected into the pod it came from"
    );
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), ((VIP.0, 81), POD));
    assert!(p.tcp.unwrap().rst);
    assert_eq!(count(&dp, Reason::RejectUnknownPort), 1);
}

/// Checks `out` is fragmentation needed from the VIP to the pod, with the
/// egress MTU, quoting the pod's packet to the VIP.
fn assert_frag_needed_about_the_vip(out: &[u8]) {
    let p = parse_checked(out);
    assert_eq!((p.src, p.dst), (VIP.0, POD.0));
    let icmp = p.icmp.expect("an ICMP message");
    assert_eq!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: UPLINK_MTU as u16
        })
    );
    let (quoted, rest) = Ipv4Header::from_slice(&p.icmp_payload).unwrap();
    assert_eq!(quoted.header_checksum, quoted.calc_header_checksum());
    assert_eq!(
        (
            Ipv4Addr::from(quoted.source),
            Ipv4Addr::from(quoted.destination)
        ),
        (POD.0, VIP.0),
        "the quote is the packet as the pod sent it"
    );
    let ports = (
        u16::from_be_bytes([rest[0], rest[1]]),
        u16::from_be_bytes([rest[2], rest[3]]),
    );
    assert_eq!(ports, (POD.1, VIP.1));
}

#[test]
fn oversize_pod_packets_get_frag_needed_about_the_clusterip() {
    let (tb, node) = small_mtu_node();
    let dp = with_service(PROTO_UDP);
    let big = udp_frame(POD, VIP, &[7u8; 1400], false);
    let small = udp_frame(POD, VIP, &[7u8; 1000], false);
    let prog = dp.classifier(POD_PROGRAM).unwrap();
    let [big, small] = tb
        .in_ns(&node, || {
            [&big, &small].map(|f| run_frame(prog, f, 1).unwrap())
        })
        .unwrap();
    assert_eq!(big.action, TC_ACT_REDIRECT, "sent back into the pod");
    assert_frag_needed_about_the_vip(&big.frame);
    let p = parse_checked(&small.frame);
    assert_eq!((p.dst, p.dport), B1, "what fits is translated");
    assert_eq!(count(&dp, Reason::IcmpFragNeeded), 1);
}

/// Where the data plane routes a translated packet itself (here towards
/// `up0`, by the neighbour helper), this node is the router hop: the TTL
/// loses one, with the header checksum updated, and a packet whose TTL is
/// spent gets ICMP time exceeded about it as its sender sent it, from the
/// VIP, at tc and in XDP alike. A packet the kernel routes keeps its TTL
/// for the kernel to take one off (the test above).
#[test]
fn routed_packets_lose_one_from_their_ttl_and_spent_ones_get_time_exceeded() {
    let (tb, node) = small_mtu_node();
    let dp = with_service(PROTO_UDP);
    let fresh = udp_frame(POD, VIP, b"hi", false);
    let spent = with_ttl(&fresh, 1);
    let [tc_fresh, tc_spent, xdp_fresh, xdp_spent] =
        through_tc_and_xdp(&tb, &node, &dp, [&fresh, &spent]);
    assert_eq!(tc_fresh.action, TC_ACT_REDIRECT, "routed by the program");
    let (meta, xdp_out) = split_meta(&xdp_fresh.frame);
    assert!(meta.is_some(), "routed by the program, through tc");
    for out in [&tc_fresh.frame[..], xdp_out] {
        let p = parse_checked(out);
        assert_eq!((p.dst, p.dport), B1);
        assert_eq!(p.ttl, 63, "one hop taken off, checksum right");
    }
    assert_eq!(tc_spent.action, TC_ACT_REDIRECT, "sent back into the pod");
    let (_, xdp_answer) = split_meta(&xdp_spent.frame);
    for out in [&tc_spent.frame[..], xdp_answer] {
        let e = parse_checked(out);
        assert_eq!((e.src, e.dst), (VIP.0, POD.0));
        assert_eq!(
            e.icmp.map(|i| i.icmp_type),
            Some(Icmpv4Type::TimeExceeded(
                TimeExceededCode::TtlExceededInTransit
            ))
        );
        assert_eq!(
            e.icmp_payload,
            &spent[14..14 + 20 + 8],
            "the IP and UDP headers as sent"
        );
    }
    assert_eq!(count(&dp, Reason::IcmpTimeExceeded), 2);
}

/// A frame XDP meant to send through tc but finds no room for the note to tc
/// (a driver without XDP metadata, or another program's metadata) goes to
/// the kernel's forwarding translated, with its TTL whole: the kernel takes
/// the hop.
#[test]
fn frames_the_kernel_routes_after_all_keep_their_ttl_for_it() {
    let (tb, node) = small_mtu_node();
    let dp = with_service(PROTO_UDP);
    let frame = udp_frame(POD, VIP, b"hi", false);
    let kernel_before = count(&dp, Reason::FwdKernel);
    let (action, out) = through_xdp_without_meta_room(&tb, &node, &dp, &frame);
    assert_eq!(action, XDP_PASS);
    let p = parse_checked(&out);
    assert_eq!((p.dst, p.dport), B1, "translated");
    assert_eq!(p.ttl, 64, "the TTL as sent, header checksum right");
    assert_eq!(count(&dp, Reason::FwdKernel), kernel_before + 1);

    // An answer the program builds has no hop to give back.
    let syn = tcp_frame(POD, (VIP.0, 81), Tcp::syn(), b"", &[]);
    let (action, out) = through_xdp_without_meta_room(&tb, &node, &dp, &syn);
    assert_eq!(action, XDP_PASS);
    let p = parse_checked(&out);
    assert!(p.tcp.unwrap().rst);
    assert_eq!(p.ttl, 64, "the TTL the answer was built with");
}

/// A TCP quote runs to the end of the TCP header, and its checksum covers it.
#[test]
fn oversize_tcp_segments_get_frag_needed_quoting_the_whole_tcp_header() {
    let (tb, node) = small_mtu_node();
    let dp = with_service(PROTO_TCP);
    let big = tcp_frame(POD, VIP, Tcp::ack(), &[7u8; 1400], &[]);
    let prog = dp.classifier(POD_PROGRAM).unwrap();
    let r = tb
        .in_ns(&node, || run_frame(prog, &big, 1).unwrap())
        .unwrap();
    assert_eq!(r.action, TC_ACT_REDIRECT);
    assert_frag_needed_about_the_vip(&r.frame);
    let p = parse_checked(&r.frame);
    assert_eq!(p.icmp_payload.len(), 20 + 20, "IP header and TCP header");
    assert_eq!(
        &p.icmp_payload[20..],
        &big[34..54],
        "the TCP header as sent"
    );
}

#[test]
fn oversize_packets_from_outside_get_frag_needed_in_xdp() {
    let (tb, node) = small_mtu_node();
    let dp = with_service(PROTO_UDP);
    let big = udp_frame(POD, VIP, &[7u8; 1400], false);
    let prog = dp.program(PROGRAM).unwrap();
    let r = tb
        .in_ns(&node, || run_frame(prog, &big, 1).unwrap())
        .unwrap();
    assert_eq!(r.action, XDP_PASS);
    let (meta, frame) = split_meta(&r.frame);
    assert_eq!(
        meta.map(|(kind, _)| kind),
        Some(lb_common::FWD_REDIRECT),
        "tc sends it back out where it came in"
    );
    assert_frag_needed_about_the_vip(frame);
    assert_eq!(count(&dp, Reason::IcmpFragNeeded), 1);
}

/// What a Linux socket with checksum offload leaves in the TCP field of an
/// IPv4 frame without options: the folded pseudo-header sum, for the
/// device to complete.
fn offload_partial(frame: &mut [u8]) {
    let sum = |b: &[u8]| -> u32 {
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    };
    let mut s = sum(&frame[26..34]) + 6 + (frame.len() - 34) as u32;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    frame[34 + 16..34 + 18].copy_from_slice(&(s as u16).to_be_bytes());
}

/// An XDP frame cannot carry an skb's note that its checksum is still to
/// be completed: a packet whose field holds a partial sum (a local socket's
/// behind a veth) leaves through tc even where the egress takes XDP frames,
/// and one with a complete checksum leaves by XDP_REDIRECT.
#[test]
fn partial_checksums_leave_as_skbs_even_where_xdp_could_redirect() {
    const XDP_REDIRECT: u32 = 4;
    let (tb, node) = small_mtu_node();
    let neigh = ["neigh", "add", "10.250.0.2", "lladdr", "02:00:00:00:00:02"];
    let out = tb
        .exec(&node, "ip", &[&neigh[..], &["dev", "up0"]].concat())
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut dp = with_service(PROTO_TCP);
    let up0 = tb
        .in_ns(&node, || {
            let name = std::ffi::CString::new("up0").unwrap();
            // SAFETY: a NUL-terminated name.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })
        .unwrap();
    let takes_xdp = lb_common::IfaceInfo {
        flags: lb_common::IFACE_REDIRECT,
    };
    dp.maps.put_iface(up0, takes_xdp).unwrap();
    let client = |last| (Ipv4Addr::new(198, 51, 100, last), 40000);
    let complete = tcp_frame(client(7), VIP, Tcp::syn(), b"hi", &[]);
    let mut partial = tcp_frame(client(8), VIP, Tcp::syn(), b"hi", &[]);
    offload_partial(&mut partial);
    let prog = dp.program(PROGRAM).unwrap();
    let [complete, partial] = tb
        .in_ns(&node, || {
            [&complete, &partial].map(|f| run_frame(prog, f, 1).unwrap())
        })
        .unwrap();
    assert_eq!(complete.action, XDP_REDIRECT, "a complete checksum");
    let p = parse_checked(&complete.frame);
    assert_eq!((p.dst, p.dport), B1);
    assert_eq!(partial.action, XDP_PASS, "a partial checksum");
    let (meta, _) = split_meta(&partial.frame);
    assert_eq!(
        meta,
        Some((lb_common::FWD_REDIRECT, up0)),
        "tc sends it to up0 as an skb"
    );
}
