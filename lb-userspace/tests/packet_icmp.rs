//! BPF_PROG_TEST_RUN tier: ICMP errors about translated flows are translated
//! back (outer destination, quoted packet, every checksum), so Path MTU
//! discovery works through the NAT.
mod common;

use std::net::Ipv4Addr;

use common::{
    be, load,
    packets::{frag_needed, parse_checked, tcp_frame, udp_frame, Tcp},
    Provision,
};
use etherparse::{IpFragOffset, Ipv4Header};
use lb_common::{Config, FrontendValue, Reason, FE_EXTERNAL, PROTO_TCP, PROTO_UDP};
use lb_userspace::{
    datapath::{run_frame, Datapath, PROGRAM},
    sync::NodeMaps,
};

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 7), 40000);
const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 53);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 2), 5353);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

fn run(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

/// The quoted IP header, checked, and the quoted ports.
fn quote_of(icmp_payload: &[u8]) -> (Ipv4Header, u16, u16) {
    let (ip, rest) = Ipv4Header::from_slice(icmp_payload).unwrap();
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "quoted IP checksum"
    );
    (
        ip,
        u16::from_be_bytes([rest[0], rest[1]]),
        u16::from_be_bytes([rest[2], rest[3]]),
    )
}

/// A router quoting only 8 bytes of a TCP segment leaves its checksum out of
/// the quote; a frame padded after the IP packet (an Ethernet trailer) must
/// not have those bytes taken for it and rewritten.
#[test]
fn bytes_after_the_ip_packet_are_never_rewritten() {
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, PROTO_TCP, &[B1]);
    let (_, translated) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]));
    let mut frame = frag_needed(ROUTER, CLIENT.0, &translated, 20 + 8);
    let trailer = [0xa5u8; 12];
    frame.extend_from_slice(&trailer);
    let (action, out) = run(&dp, &frame);
    assert_eq!(action, 2);
    let p = parse_checked(&out);
    let (ip, sport, dport) = quote_of(&p.icmp_payload);
    assert_eq!((Ipv4Addr::from(ip.source), sport), CLIENT);
    assert_eq!((Ipv4Addr::from(ip.destination), dport), VIP);
    assert_eq!(
        &out[out.len() - trailer.len()..],
        &trailer,
        "trailer untouched"
    );
}

#[test]
fn frag_needed_on_the_backend_path_reaches_the_client_about_the_frontend() {
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, PROTO_UDP, &[B1]);
    let (_, translated) = run(&dp, &udp_frame(CLIENT, VIP, &[0u8; 1200], false));
    let sent = parse_checked(&translated);
    assert_eq!((sent.dst, sent.dport), B1);

    // A router between the node and the backend cannot forward it.
    let (action, out) = run(&dp, &frag_needed(ROUTER, CLIENT.0, &translated, 20 + 8));
    assert_eq!(action, 2);
    let p = parse_checked(&out);
    assert_eq!((p.src, p.dst), (ROUTER, CLIENT.0));
    let (ip, sport, dport) = quote_of(&p.icmp_payload);
    assert_eq!((Ipv4Addr::from(ip.source), sport), CLIENT);
    assert_eq!(
        (Ipv4Addr::from(ip.destination), dport),
        VIP,
        "the client learns about its packet to the VIP"
    );
    assert_eq!(dp.maps.reason_total(Reason::XlateIcmpError).unwrap(), 1);
}

#[test]
fn frag_needed_on_the_client_path_reaches_the_backend_with_source_nat_undone() {
    let mut dp = load();
    dp.maps
        .put_config(Config {
            snat_addr: be(NODE),
            ..Config::DEFAULT
        })
        .unwrap();
    let frontend = (NODE, 31000);
    let template = FrontendValue {
        flags: FE_EXTERNAL,
        ..Default::default()
    };
    Provision::new().service_with(&mut dp, 7, frontend, PROTO_TCP, &[B1], 0, template);
    dp.maps.addrs_mut().remove(&be(NODE)).unwrap();
    let (_, to_backend) = run(&dp, &tcp_frame(CLIENT, frontend, Tcp::syn(), b"", &[]));
    let fwd = parse_checked(&to_backend);
    let snat_port = fwd.sport;
    let sent_by_backend = tcp_frame(B1, (NODE, snat_port), Tcp::syn_ack(), &[7u8; 1300], &[]);
    let (_, reply) = run(&dp, &sent_by_backend);
    let back = parse_checked(&reply);
    assert_eq!(
        ((back.src, back.sport), (back.dst, back.dport)),
        (frontend, CLIENT)
    );

    // A router on the client's side cannot forward the translated reply: it
    // answers the node address, which sent it as the NodePort.
    let (_, out) = run(&dp, &frag_needed(ROUTER, NODE, &reply, 20 + 28));
    let p = parse_checked(&out);
    assert_eq!(
        p.dst, B1.0,
        "the backend that sent the reply learns the MTU"
    );
    let (ip, sport, dport) = quote_of(&p.icmp_payload);
    assert_eq!((Ipv4Addr::from(ip.source), sport), B1);
    assert_eq!((Ipv4Addr::from(ip.destination), dport), (NODE, snat_port));
    // Translated back, the quote is byte for byte what the backend sent,
    // TCP checksum included (28 quoted bytes hold it).
    assert_eq!(p.icmp_payload, sent_by_backend[14..14 + 48].to_vec());
}

#[test]
fn icmp_errors_about_unknown_flows_pass_untouched() {
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, PROTO_UDP, &[B1]);
    let stranger = udp_frame(
        (Ipv4Addr::new(10, 9, 9, 9), 1),
        (Ipv4Addr::new(10, 8, 8, 8), 2),
        b"x",
        false,
    );
    let frame = frag_needed(ROUTER, Ipv4Addr::new(10, 9, 9, 9), &stranger, 28);
    assert_eq!(run(&dp, &frame), (2, frame.clone()));
    assert_eq!(dp.maps.reason_total(Reason::XlateIcmpError).unwrap(), 0);
}

/// A later fragment holds message bytes, not an ICMP header, however much
/// they look like one; and a first fragment translated alone would part
/// from the rest. No fragment of an ICMP error is translated (found by the
/// packet fuzzer: a later fragment had its payload rewritten).
#[test]
fn fragments_of_icmp_errors_pass_untouched() {
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, PROTO_UDP, &[B1]);
    let (_, translated) = run(&dp, &udp_frame(CLIENT, VIP, b"query", false));
    let error = frag_needed(ROUTER, CLIENT.0, &translated, 20 + 8);
    for (more, offset) in [(true, 0), (false, 1), (true, 1)] {
        let (mut ip, _) = Ipv4Header::from_slice(&error[14..]).unwrap();
        ip.more_fragments = more;
        ip.fragment_offset = IpFragOffset::try_new(offset).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let mut frame = error[..14].to_vec();
        ip.write(&mut frame).unwrap();
        frame.extend_from_slice(&error[34..]);
        assert_eq!(
            run(&dp, &frame),
            (2, frame.clone()),
            "MF {more}, offset {offset}"
        );
    }
    assert_eq!(dp.maps.reason_total(Reason::XlateIcmpError).unwrap(), 0);
}
