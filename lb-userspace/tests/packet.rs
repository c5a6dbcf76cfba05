//! BPF_PROG_TEST_RUN tier: crafted frames through the real XDP program.
//! Each test builds the frame, provisions the maps, runs, and checks every
//! rewritten field and checksum with etherparse.
mod common;

use std::net::Ipv4Addr;

use aya::maps::PerCpuValues;
use common::{
    load,
    packets::{arp_frame, parse_checked, tcp_frame, udp_frame, Tcp, CLIENT_MAC},
    Provision,
};
use etherparse::{EtherType, Ethernet2HeaderSlice};
use lb_common::{
    conntrack::STATE_CLOSING, AnnounceKeyV4, AnnounceValue, Config, CtKeyV4, CtValueV4,
    FlowCacheEntryV4, Reason, CT_DIR_FORWARD, PROTO_TCP, PROTO_UDP,
};
use lb_userspace::{
    datapath::{run_frame, Datapath, PROGRAM},
    sync::NodeMaps,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(192, 168, 1, 100), 40000);
const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 2), 8080);
const B2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 2), 8080);
const B3: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 3, 2), 8080);

fn run(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

/// BPF_PROG_TEST_RUN delivers frames as if received on the loopback device
/// (ifindex 1); marking it XDP-capable makes rejects leave with XDP_TX.
fn receive_on_xdp_capable_device(dp: &mut Datapath) {
    let info = lb_common::IfaceInfo {
        flags: lb_common::IFACE_REDIRECT,
    };
    dp.maps.put_iface(1, info).unwrap();
}

fn with_service(backends: &[(Ipv4Addr, u16)], proto: u8) -> (Datapath, Provision) {
    with_service_at(VIP, backends, proto)
}

fn with_service_at(
    frontend: (Ipv4Addr, u16),
    backends: &[(Ipv4Addr, u16)],
    proto: u8,
) -> (Datapath, Provision) {
    let mut dp = load();
    let mut prov = Provision::new();
    prov.service(&mut dp, 7, frontend, proto, backends);
    (dp, prov)
}

#[test]
fn non_ipv4_and_non_service_ipv4_pass_unchanged_and_are_counted() {
    let dp = load();
    let arp = arp_frame();
    let other = tcp_frame(
        CLIENT,
        (Ipv4Addr::new(10, 1, 2, 3), 443),
        Tcp::syn(),
        b"",
        &[],
    );
    for _ in 0..3 {
        assert_eq!(run(&dp, &arp), (XDP_PASS, arp.clone()));
        assert_eq!(run(&dp, &other), (XDP_PASS, other.clone()));
    }
    assert_eq!(count(&dp, Reason::PassNotIpv4), 3);
    assert_eq!(count(&dp, Reason::PassNotOurs), 3);
}

/// The maps hold localhost NodePorts (127.0.0.1) for the socket hooks; a
/// frame from the wire to a loopback address is a martian, which the
/// packet path passes untouched for the kernel to drop, never translates
/// (kube-proxy's CVE-2020-8558).
#[test]
fn loopback_destinations_on_the_wire_are_never_translated() {
    let localhost = (Ipv4Addr::LOCALHOST, 30080);
    let (dp, _) = with_service_at(localhost, &[B1], PROTO_TCP);
    let spoofed = tcp_frame(CLIENT, localhost, Tcp::syn(), b"", &[]);
    assert_eq!(run(&dp, &spoofed), (XDP_PASS, spoofed.clone()));
    assert_eq!(count(&dp, Reason::XlateNew), 0);
    assert_eq!(count(&dp, Reason::PassNotOurs), 1);
}

/// `arp_frame` asks who has 10.0.0.2, telling 10.0.0.1 at `CLIENT_MAC`.
const ARP_TARGET: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const ARP_SENDER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IFACE_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];

fn announce(dp: &mut Datapath, addr: Ipv4Addr, ifindex: u32) {
    let key = AnnounceKeyV4 {
        addr: lb_common::addr::to_map(addr),
        ifindex,
    };
    let value = AnnounceValue {
        mac: IFACE_MAC,
        _pad: 0,
    };
    dp.maps.announce_mut().insert(key, value, 0).unwrap();
}

#[test]
fn an_arp_request_for_an_announced_address_is_answered_in_place() {
    let mut dp = load();
    receive_on_xdp_capable_device(&mut dp);
    announce(&mut dp, ARP_TARGET, 1);
    let request = arp_frame();
    let (action, out) = run(&dp, &request);
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), request.len());
    let eth = Ethernet2HeaderSlice::from_slice(&out).unwrap();
    assert_eq!(eth.destination(), CLIENT_MAC);
    assert_eq!(eth.source(), IFACE_MAC);
    assert_eq!(eth.ether_type(), EtherType::ARP);
    let arp = &out[eth.slice().len()..];
    // Ethernet, IPv4, 6- and 4-byte addresses, a reply.
    assert_eq!(arp[..8], [0, 1, 8, 0, 6, 4, 0, 2]);
    assert_eq!(arp[8..14], IFACE_MAC, "sender MAC");
    assert_eq!(arp[14..18], ARP_TARGET.octets(), "sender address");
    assert_eq!(arp[18..24], CLIENT_MAC, "target MAC");
    assert_eq!(arp[24..28], ARP_SENDER.octets(), "target address");
    // A reachability probe, sent to the interface rather than broadcast.
    let mut probe = request.clone();
    probe[..6].copy_from_slice(&IFACE_MAC);
    let (action, probe_out) = run(&dp, &probe);
    assert_eq!((action, &probe_out[6..]), (XDP_TX, &out[6..]));
    assert_eq!(count(&dp, Reason::ArpReply), 2);
    assert_eq!(count(&dp, Reason::PassNotIpv4), 0);
}

/// Announced on another interface, announced for another address, a
/// gratuitous request (another node claiming the address), a reply, or a
/// request sent to another host's MAC (seen in promiscuous mode): the
/// frame goes to the kernel untouched.
#[test]
fn other_arp_frames_pass_unchanged() {
    let mut dp = load();
    receive_on_xdp_capable_device(&mut dp);
    announce(&mut dp, ARP_TARGET, 2);
    announce(&mut dp, Ipv4Addr::new(10, 0, 0, 3), 1);
    let request = arp_frame();
    assert_eq!(run(&dp, &request), (XDP_PASS, request.clone()));
    announce(&mut dp, ARP_TARGET, 1);
    let mut gratuitous = request.clone();
    gratuitous[28..32].copy_from_slice(&ARP_TARGET.octets());
    assert_eq!(run(&dp, &gratuitous), (XDP_PASS, gratuitous.clone()));
    let mut reply = request.clone();
    reply[21] = 2;
    assert_eq!(run(&dp, &reply), (XDP_PASS, reply.clone()));
    let mut other_host = request.clone();
    other_host[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x09]);
    assert_eq!(run(&dp, &other_host), (XDP_PASS, other_host.clone()));
    assert_eq!(count(&dp, Reason::ArpReply), 0);
    assert_eq!(count(&dp, Reason::PassNotIpv4), 4);
}

#[test]
fn syn_to_vip_is_rewritten_to_a_backend_with_valid_checksums() {
    let (dp, _) = with_service(&[B1, B2], PROTO_TCP);
    let (action, out) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"hello", &[]));
    assert_ne!(action, XDP_DROP);
    let p = parse_checked(&out);
    assert!(
        [B1, B2].contains(&(p.dst, p.dport)),
        "went to {}:{}",
        p.dst,
        p.dport
    );
    assert_eq!((p.src, p.sport), CLIENT);
    assert_eq!(p.payload, b"hello");
    assert_eq!(count(&dp, Reason::XlateNew), 1);
    let s = dp.maps.service_totals(7).unwrap();
    assert_eq!((s.packets, s.bytes), (1, out.len() as u64));
}

#[test]
fn flow_keeps_its_backend_when_the_table_changes_and_replies_return_as_the_vip() {
    let (mut dp, mut prov) = with_service(&[B1, B2], PROTO_TCP);
    let (_, first) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]));
    let chosen = parse_checked(&first);
    let chosen = (chosen.dst, chosen.dport);
    // Replace the service's whole backend set: the flow must not move.
    prov.service(&mut dp, 7, VIP, PROTO_TCP, &[B3]);
    for _ in 0..5 {
        let (_, out) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::ack(), b"data", &[]));
        let p = parse_checked(&out);
        assert_eq!((p.dst, p.dport), chosen);
    }
    // The first goes through conntrack, the rest through the flow cache.
    assert_eq!(count(&dp, Reason::XlateEstablished), 1);
    assert_eq!(count(&dp, Reason::XlateEstablishedCached), 4);

    let (action, out) = run(
        &dp,
        &tcp_frame(chosen, CLIENT, Tcp::syn_ack(), b"resp", &[]),
    );
    assert_ne!(action, XDP_DROP);
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (VIP, CLIENT));
    assert_eq!(p.payload, b"resp");
    assert_eq!(count(&dp, Reason::XlateReply), 1);

    // A new client now lands on the new set.
    let other = (Ipv4Addr::new(192, 168, 1, 101), 40001);
    let (_, out) = run(&dp, &tcp_frame(other, VIP, Tcp::syn(), b"", &[]));
    let p = parse_checked(&out);
    assert_eq!((p.dst, p.dport), B3);
}

#[test]
fn many_flows_spread_over_all_backends() {
    let (dp, _) = with_service(&[B1, B2, B3], PROTO_TCP);
    let mut seen = std::collections::HashMap::new();
    for port in 0..300u16 {
        let (_, out) = run(
            &dp,
            &tcp_frame((CLIENT.0, 20000 + port), VIP, Tcp::syn(), b"", &[]),
        );
        let p = parse_checked(&out);
        *seen.entry((p.dst, p.dport)).or_insert(0) += 1;
    }
    for b in [B1, B2, B3] {
        let n = seen.get(&b).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{seen:?}");
    }
}

#[test]
fn udp_keeps_a_zero_checksum_zero_and_fixes_a_real_one() {
    let (dp, _) = with_service(&[B1], PROTO_UDP);
    let (_, out) = run(&dp, &udp_frame(CLIENT, VIP, b"dns?", true));
    let p = parse_checked(&out);
    assert_eq!(((p.dst, p.dport), p.udp_checksum), (B1, Some(0)));
    let (_, out) = run(&dp, &udp_frame((CLIENT.0, 40001), VIP, b"dns?", false));
    let p = parse_checked(&out);
    assert_eq!((p.dst, p.dport), B1);
    assert_ne!(p.udp_checksum, Some(0));
    let (_, out) = run(&dp, &udp_frame(B1, (CLIENT.0, 40001), b"answer", false));
    let p = parse_checked(&out);
    assert_eq!(
        ((p.src, p.sport), p.payload.as_slice()),
        (VIP, &b"answer"[..])
    );
}

#[test]
fn ip_options_are_skipped_not_misparsed() {
    let (dp, _) = with_service(&[B1], PROTO_TCP);
    // Record-route style option padding: 8 bytes, IHL 7.
    let opts = [7, 7, 4, 0, 0, 0, 0, 1];
    let (_, out) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"x", &opts));
    let p = parse_checked(&out);
    assert_eq!(((p.dst, p.dport), (p.src, p.sport)), (B1, CLIENT));
    assert_eq!(p.payload, b"x");
}

#[test]
fn frontend_without_backends_answers_tcp_with_rst() {
    let (mut dp, _) = with_service(&[], PROTO_TCP);
    receive_on_xdp_capable_device(&mut dp);
    let (action, out) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"abc", &[]));
    assert_eq!(action, XDP_TX);
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (VIP, CLIENT));
    let t = p.tcp.unwrap();
    assert!(t.rst && t.ack && !t.syn);
    // SYN (1) + 3 payload bytes acknowledged.
    assert_eq!(t.acknowledgment_number, 1000 + 1 + 3);
    assert_eq!(p.eth_dst, common::packets::CLIENT_MAC);
    assert_eq!(count(&dp, Reason::RejectNoBackend), 1);
}

#[test]
fn frontend_without_backends_answers_udp_with_port_unreachable() {
    let (mut dp, _) = with_service(&[], PROTO_UDP);
    receive_on_xdp_capable_device(&mut dp);
    let sent = udp_frame(CLIENT, VIP, b"0123456789abcdef", false);
    let (action, out) = run(&dp, &sent);
    assert_eq!(action, XDP_TX);
    let p = parse_checked(&out);
    assert_eq!((p.src, p.dst), (VIP.0, CLIENT.0));
    let icmp = p.icmp.unwrap();
    assert_eq!(
        icmp.icmp_type,
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port
        )
    );
    // The quote is the original IP header and the first 8 bytes after it.
    assert_eq!(p.icmp_payload, sent[14..14 + 20 + 8].to_vec());
}

#[test]
fn unknown_port_on_a_vip_is_rejected() {
    let (mut dp, _) = with_service(&[B1], PROTO_TCP);
    receive_on_xdp_capable_device(&mut dp);
    let (action, out) = run(&dp, &tcp_frame(CLIENT, (VIP.0, 81), Tcp::syn(), b"", &[]));
    assert_eq!(action, XDP_TX);
    assert!(parse_checked(&out).tcp.unwrap().rst);
    let (action, _) = run(&dp, &udp_frame(CLIENT, VIP, b"", false));
    assert_eq!(action, XDP_TX, "UDP on a TCP-only port is rejected too");
    assert_eq!(count(&dp, Reason::RejectUnknownPort), 2);
}

#[test]
fn truncated_headers_are_never_rewritten() {
    let (dp, _) = with_service(&[B1], PROTO_TCP);
    let full = tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]);
    // BPF_PROG_TEST_RUN itself refuses frames shorter than an Ethernet header.
    for cut in [14, 14 + 12, 14 + 20 + 3, 14 + 20 + 19] {
        let frame = &full[..cut];
        let (action, out) = run(&dp, frame);
        assert!(action == XDP_PASS || action == XDP_DROP, "cut at {cut}");
        assert_eq!(out, frame, "cut at {cut} must not be modified");
    }
    assert_eq!(count(&dp, Reason::XlateNew), 0);
    assert_eq!(
        count(&dp, Reason::PassMalformed) + count(&dp, Reason::DropMalformed),
        4
    );
}

#[test]
fn rst_closes_the_flow_in_both_entries() {
    let (dp, _) = with_service(&[B1], PROTO_TCP);
    run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]));
    let rst = Tcp {
        rst: true,
        ..Tcp::ack()
    };
    run(&dp, &tcp_frame(CLIENT, VIP, rst, b"", &[]));
    let key = CtKeyV4 {
        src_addr: common::be(CLIENT.0),
        dst_addr: common::be(VIP.0),
        src_port: CLIENT.1.to_be(),
        dst_port: VIP.1.to_be(),
        proto: PROTO_TCP,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    };
    let fwd = dp.maps.ct().get(&key, 0).unwrap();
    assert_ne!(fwd.state & STATE_CLOSING, 0);
    let rev = dp
        .maps
        .ct()
        .iter()
        .map(|e| e.unwrap())
        .find(|(k, _)| k.dir != CT_DIR_FORWARD)
        .unwrap();
    assert_ne!(rev.1.state & STATE_CLOSING, 0);
}

/// Both entries of the flow from `client` to `VIP`: (forward, reverse).
fn entries(dp: &Datapath, client: (Ipv4Addr, u16)) -> (CtKeyV4, CtValueV4, CtValueV4) {
    let mut found = dp.maps.ct().iter().map(|e| e.unwrap());
    let fwd = found
        .find(|(k, _)| k.dir == CT_DIR_FORWARD && k.src_port == client.1.to_be())
        .unwrap();
    let rev = dp
        .maps
        .ct()
        .iter()
        .map(|e| e.unwrap())
        .find(|(k, _)| k.dir != CT_DIR_FORWARD && k.dst_port == client.1.to_be())
        .unwrap();
    (fwd.0, fwd.1, rev.1)
}

fn lifetime_s(v: &CtValueV4) -> u64 {
    (v.expires_ns - v.last_seen_ns) / 1_000_000_000
}

/// The settings an older agent pinned hold 0 where the unreplied UDP
/// lifetime now lies: until the agent writes its own, the data plane keeps
/// its defaults rather than give such flows no lifetime at all.
#[test]
fn an_older_agents_settings_leave_the_defaults() {
    let (mut dp, _) = with_service(&[B1], PROTO_UDP);
    let older = Config {
        udp_timeout_s: 20,
        udp_unreplied_timeout_s: 0,
        ..Config::DEFAULT
    };
    dp.maps.put_config(older).unwrap();
    let client = (CLIENT.0, 40002);
    run(&dp, &udp_frame(client, VIP, b"q", true));
    let (_, fwd, rev) = entries(&dp, client);
    let default = u64::from(Config::DEFAULT.udp_unreplied_timeout_s);
    assert_eq!((lifetime_s(&fwd), lifetime_s(&rev)), (default, default));
}

/// Each state gets its configured lifetime on both entries, and an entry
/// past its deadline is a new flow. The clock is the test's: it moves the
/// deadline instead of waiting for it.
#[test]
fn entries_live_as_long_as_their_state_allows_then_expire() {
    let (mut dp, _) = with_service(&[B1], PROTO_TCP);
    let cfg = Config {
        tcp_established_timeout_s: 1000,
        tcp_syn_timeout_s: 30,
        tcp_closing_timeout_s: 5,
        udp_timeout_s: 20,
        udp_unreplied_timeout_s: 10,
        ..Config::DEFAULT
    };
    dp.maps.put_config(cfg).unwrap();
    run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]));
    let (_, fwd, rev) = entries(&dp, CLIENT);
    assert_eq!((lifetime_s(&fwd), lifetime_s(&rev)), (30, 30), "SYN sent");
    run(&dp, &tcp_frame(B1, CLIENT, Tcp::syn_ack(), b"", &[]));
    let (key, fwd, rev) = entries(&dp, CLIENT);
    assert_eq!(
        (lifetime_s(&fwd), lifetime_s(&rev)),
        (1000, 1000),
        "reply seen"
    );
    let fin = Tcp {
        fin: true,
        ..Tcp::ack()
    };
    run(&dp, &tcp_frame(CLIENT, VIP, fin.clone(), b"", &[]));
    run(&dp, &tcp_frame(B1, CLIENT, fin, b"", &[]));
    let (_, fwd, rev) = entries(&dp, CLIENT);
    assert_eq!(
        (lifetime_s(&fwd), lifetime_s(&rev)),
        (5, 5),
        "FIN both ways"
    );

    let expired = CtValueV4 {
        expires_ns: fwd.last_seen_ns - 1,
        ..fwd
    };
    dp.maps.ct_mut().insert(key, expired, 0).unwrap();
    let new = count(&dp, Reason::XlateNew);
    run(&dp, &tcp_frame(CLIENT, VIP, Tcp::ack(), b"", &[]));
    assert_eq!(
        count(&dp, Reason::XlateNew),
        new + 1,
        "expired entry replaced"
    );

    let udp = (CLIENT.0, 40001);
    let (mut dp, _) = with_service(&[B1], PROTO_UDP);
    dp.maps.put_config(cfg).unwrap();
    run(&dp, &udp_frame(udp, VIP, b"q", true));
    let (_, fwd, rev) = entries(&dp, udp);
    assert_eq!(
        (lifetime_s(&fwd), lifetime_s(&rev)),
        (10, 10),
        "UDP without a reply: its own lifetime, as netfilter's unreplied"
    );
    run(&dp, &udp_frame(B1, udp, b"a", true));
    let (_, fwd, rev) = entries(&dp, udp);
    assert_eq!(
        (lifetime_s(&fwd), lifetime_s(&rev)),
        (20, 20),
        "UDP replied"
    );
}

/// The flow cache serves a flow's plain packets in both directions with
/// the same rewrite as conntrack, leaves every SYN, FIN and RST to
/// conntrack, and sends a copy past its refresh time back there.
#[test]
fn flow_cache_serves_plain_packets_and_leaves_state_changes_to_conntrack() {
    let (mut dp, _) = with_service(&[B1], PROTO_TCP);
    let forward = |dp: &Datapath, t: Tcp| run(dp, &tcp_frame(CLIENT, VIP, t, b"data", &[])).1;
    let reply = |dp: &Datapath, t: Tcp| run(dp, &tcp_frame(B1, CLIENT, t, b"resp", &[])).1;
    forward(&dp, Tcp::syn());
    reply(&dp, Tcp::syn_ack());
    for _ in 0..3 {
        let p = parse_checked(&forward(&dp, Tcp::ack()));
        assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (CLIENT, B1));
        let p = parse_checked(&reply(&dp, Tcp::ack()));
        assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (VIP, CLIENT));
    }
    let counts = common::cache_counts;
    // The SYN-ACK changes state, so the first plain packet of each
    // direction fills the cache.
    assert_eq!(counts(&dp), [1, 2, 2, 2]);

    forward(&dp, common::fin());
    reply(&dp, common::fin());
    assert_eq!(counts(&dp), [2, 2, 3, 2], "FINs via conntrack");
    let (_, fwd, rev) = entries(&dp, CLIENT);
    assert_ne!(fwd.state & rev.state & STATE_CLOSING, 0);

    let cache = dp.maps.flow_cache().unwrap();
    let slots: Vec<u32> = (0..lb_common::FLOW_CACHE_SLOTS)
        .filter(|&i| cache.get(&i, 0).unwrap().iter().any(|e| e.ct.svc_id == 7))
        .collect();
    assert_eq!(slots.len(), 2, "one copy per direction");
    forward(&dp, Tcp::ack());
    assert_eq!(counts(&dp)[1], 3);
    let cache = dp.maps.flow_cache_mut().unwrap();
    for slot in slots {
        let aged: Vec<_> = cache
            .get(&slot, 0)
            .unwrap()
            .iter()
            .map(|e| FlowCacheEntryV4 {
                until_jiffies: 0,
                ..*e
            })
            .collect();
        cache
            .set(slot, PerCpuValues::try_from(aged).unwrap(), 0)
            .unwrap();
    }
    forward(&dp, Tcp::ack());
    assert_eq!(
        counts(&dp)[..2],
        [3, 3],
        "a copy due for refresh goes to conntrack"
    );
}

/// A copy outlives no entry: a flow whose entry expires within a second
/// (here UDP without a reply, 1 s) is never cached, so its packets find
/// the entry gone once it expires.
#[test]
fn flows_about_to_expire_are_not_cached() {
    let (mut dp, _) = with_service(&[B1], PROTO_UDP);
    let flow = |dp: &Datapath, port: u16| {
        for _ in 0..3 {
            let (_, out) = run(dp, &udp_frame((CLIENT.0, port), VIP, b"q", false));
            assert_eq!(parse_checked(&out).dst, B1.0);
        }
        [
            Reason::XlateNew,
            Reason::XlateEstablished,
            Reason::XlateEstablishedCached,
        ]
        .map(|r| count(dp, r))
    };
    let short = Config {
        udp_unreplied_timeout_s: 1,
        ..Config::DEFAULT
    };
    dp.maps.put_config(short).unwrap();
    assert_eq!(flow(&dp, 41000), [1, 2, 0], "1 s entries: never cached");
    dp.maps.put_config(Config::DEFAULT).unwrap();
    assert_eq!(flow(&dp, 41001), [2, 2, 2], "default entries: cached");
}

#[test]
fn counters_match_the_packets_run() {
    let (dp, _) = with_service(&[B1, B2], PROTO_TCP);
    for port in 0..10u16 {
        run(
            &dp,
            &tcp_frame((CLIENT.0, 30000 + port), VIP, Tcp::syn(), b"", &[]),
        );
        run(
            &dp,
            &tcp_frame((CLIENT.0, 30000 + port), VIP, Tcp::ack(), b"", &[]),
        );
    }
    assert_eq!(count(&dp, Reason::XlateNew), 10);
    assert_eq!(count(&dp, Reason::XlateEstablished), 10);
    assert_eq!(dp.maps.service_totals(7).unwrap().packets, 20);
    let total: u64 = dp
        .maps
        .reason_totals()
        .unwrap()
        .iter()
        .filter(|(r, _)| !matches!(r, Reason::FwdKernel | Reason::FwdRedirect | Reason::CtClash))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 20);
}

/// A ClusterIP Service port on `VIP` over `backends`, as the model produces
/// it, for tests that program the maps through the agent's own sync.
fn vip_service(
    name: &str,
    proto: lb_userspace::model::Proto,
    backends: &[(Ipv4Addr, u16)],
) -> (
    lb_userspace::model::ServicePortId,
    lb_userspace::model::ServicePort,
) {
    use lb_userspace::model::{Backend, Frontend, FrontendKind, ServicePort, ServicePortId};
    let id = ServicePortId {
        namespace: "default".into(),
        name: name.into(),
        port_name: String::new(),
        protocol: proto,
    };
    let sp = ServicePort {
        frontends: vec![Frontend {
            addr: VIP.0,
            port: VIP.1,
            kind: FrontendKind::ClusterIp,
            on_node: false,
        }],
        cluster_backends: backends
            .iter()
            .map(|&(addr, port)| Backend {
                addr,
                port,
                node_name: None,
                is_local: false,
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
        ..Default::default()
    };
    (id, sp)
}

/// The agent's own writer (rings written through the memory-mapped slot
/// array, not the test helper's syscalls) must program a service every
/// packet can use.
#[test]
fn services_written_by_the_agent_sync_serve_every_flow() {
    use lb_userspace::{
        model::{DesiredState, Proto},
        sync::Syncer,
    };
    let mut dp = load();
    let desired = DesiredState {
        services: [vip_service("web", Proto::Tcp, &[B1, B2, B3])].into(),
        problems: Vec::new(),
    };
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    syncer.sync(&desired, &mut dp.maps).unwrap();

    let fe = dp.maps.frontends().iter().next().unwrap().unwrap().1;
    for slot in fe.ring_offset..fe.ring_offset + fe.ring_size {
        let id = dp.maps.maglev().get(&slot, 0).unwrap();
        assert_ne!(id, 0, "slot {slot} as the kernel sees it");
    }
    let mut seen = std::collections::HashSet::new();
    for port in 0..200u16 {
        let (_, out) = run(
            &dp,
            &tcp_frame((CLIENT.0, 10000 + port), VIP, Tcp::syn(), b"", &[]),
        );
        let p = parse_checked(&out);
        seen.insert((p.dst, p.dport));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(count(&dp, Reason::XlateNew), 200);
    assert_eq!(count(&dp, Reason::RejectNoBackend), 0);
}

/// One's-complement sum of big-endian 16-bit words, independent of the code
/// under test.
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold16(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// What a Linux socket with checksum offload leaves in the field, and what
/// the device then does: sum the segment with that value in place.
fn offload_partial(frame: &mut [u8]) {
    let l4 = &frame[34..];
    let pseudo = ones_sum(&frame[26..34]) + 6 + l4.len() as u32;
    let partial = fold16(pseudo);
    frame[34 + 16..34 + 18].copy_from_slice(&partial.to_be_bytes());
}

fn device_completes(frame: &mut [u8]) {
    let sum = !fold16(ones_sum(&frame[34..]));
    frame[34 + 16..34 + 18].copy_from_slice(&sum.to_be_bytes());
}

/// Pod traffic arrives from a veth with checksum offload: the TCP field holds
/// the pseudo-header sum only. After translation the device must still be
/// able to complete it into a valid checksum.
#[test]
fn offloaded_partial_checksums_stay_completable_after_translation() {
    let (dp, _) = with_service(&[B1], PROTO_TCP);
    let mut frame = tcp_frame(CLIENT, VIP, Tcp::syn(), b"payload", &[]);
    offload_partial(&mut frame);
    let (_, mut out) = run(&dp, &frame);
    device_completes(&mut out);
    let p = parse_checked(&out);
    assert_eq!((p.dst, p.dport), B1);

    let mut reply = tcp_frame(B1, CLIENT, Tcp::syn_ack(), b"back", &[]);
    offload_partial(&mut reply);
    let (_, mut out) = run(&dp, &reply);
    device_completes(&mut out);
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (VIP, CLIENT));
}

/// kube-proxy's conntrack cleanup: when a backend leaves, its UDP flows are
/// forgotten (the next datagram picks a live backend) and its TCP flows stay.
#[test]
fn removed_backends_lose_their_udp_flows_but_keep_tcp() {
    use lb_userspace::{
        model::{DesiredState, Proto},
        sync::{stale, Syncer},
    };
    let mut dp = load();
    let service = |proto: Proto, backends: &[(Ipv4Addr, u16)]| {
        vip_service(&proto.to_string(), proto, backends)
    };
    let both = DesiredState {
        services: [service(Proto::Udp, &[B1]), service(Proto::Tcp, &[B1])].into(),
        problems: Vec::new(),
    };
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    syncer.sync(&both, &mut dp.maps).unwrap();
    run(&dp, &udp_frame(CLIENT, VIP, b"q", false));
    run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]));
    assert_eq!(dp.maps.ct().keys().count(), 4);

    let moved = DesiredState {
        services: [service(Proto::Udp, &[B2]), service(Proto::Tcp, &[B2])].into(),
        problems: Vec::new(),
    };
    let report = syncer.sync(&moved, &mut dp.maps).unwrap();
    assert_eq!(
        stale::forget(&mut dp.maps, &report.removed, &report.removed_v6).unwrap(),
        stale::Forgotten {
            entries: 2,
            flows: 1,
            flows_v6: 0
        }
    );
    let left: Vec<CtKeyV4> = dp.maps.ct().keys().map(|k| k.unwrap()).collect();
    assert!(
        left.len() == 2 && left.iter().all(|k| k.proto == PROTO_TCP),
        "{left:?}"
    );
    let (_, out) = run(&dp, &udp_frame(CLIENT, VIP, b"q", false));
    assert_eq!(
        (parse_checked(&out).dst, parse_checked(&out).dport),
        B2,
        "next datagram re-balanced"
    );
    let (_, out) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::ack(), b"", &[]));
    assert_eq!(
        (parse_checked(&out).dst, parse_checked(&out).dport),
        B1,
        "TCP flow kept"
    );
}

/// On a device whose peer may run no XDP program (a veth), the reject is
/// passed with metadata telling the tc program on the same interface to
/// send it back out there, past the kernel's input checks.
#[test]
fn rejects_on_other_devices_go_through_tc() {
    let (dp, _) = with_service(&[], PROTO_TCP);
    let (action, out) = run(&dp, &tcp_frame(CLIENT, VIP, Tcp::syn(), b"", &[]));
    assert_eq!(action, XDP_PASS);
    let (meta, frame) = common::packets::split_meta(&out);
    assert_eq!(
        meta,
        Some((lb_common::FWD_REDIRECT, common::packets::INGRESS_IFINDEX)),
        "tc is told to send it back out of the interface it came in on"
    );
    let p = parse_checked(frame);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (VIP, CLIENT));
    assert!(p.tcp.unwrap().rst);
    assert_eq!(
        p.eth_src,
        common::packets::NODE_MAC,
        "addressed back to the client's MAC"
    );
}

/// On the kernel's maps, sized small: Service ports past a full map are
/// refused by name before any of their entries is written, and those that
/// fit serve.
#[test]
fn service_ports_past_a_full_map_are_refused_and_the_rest_serve() {
    use lb_userspace::{
        datapath::Capacities,
        model::{DesiredState, Proto},
        sync::Syncer,
    };
    common::privileged("BPF_PROG_TEST_RUN packet tests");
    let caps = Capacities {
        frontends: 4,
        ..Capacities::small()
    };
    let mut dp = Datapath::load(&caps, None).unwrap();
    let services = (0..6u8)
        .map(|i| {
            let (mut id, mut sp) = vip_service("web", Proto::Tcp, &[B1, B2]);
            id.name = format!("web-{i}");
            sp.frontends[0].addr = Ipv4Addr::new(10, 96, 0, 10 + i);
            (id, sp)
        })
        .collect();
    let desired = DesiredState {
        services,
        problems: Vec::new(),
    };
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    for _ in 0..3 {
        let report = syncer.sync(&desired, &mut dp.maps).unwrap();
        let refused: Vec<&str> = report
            .refused
            .iter()
            .map(|r| r.service.name.as_str())
            .collect();
        assert_eq!(refused, ["web-4", "web-5"]);
        assert!(report.refused[0].reason.contains("FRONTENDS_V4"));
    }
    assert_eq!(dp.maps.frontends().keys().count(), 4);
    assert_eq!(
        dp.maps.svc_names().keys().count(),
        4,
        "no name of a refused port"
    );
    let (_, out) = run(
        &dp,
        &tcp_frame(
            CLIENT,
            (Ipv4Addr::new(10, 96, 0, 13), 80),
            Tcp::syn(),
            b"",
            &[],
        ),
    );
    assert!([B1.0, B2.0].contains(&parse_checked(&out).dst));
    assert_eq!(count(&dp, Reason::XlateNew), 1);
}

/// A Service port with the longest name Kubernetes allows keeps its id
/// across a restart: its name is read back whole from the kernel's map.
#[test]
fn the_longest_service_names_survive_a_restart() {
    use lb_userspace::{
        model::{DesiredState, Proto},
        sync::Syncer,
    };
    let mut dp = load();
    let (mut id, sp) = vip_service("web", Proto::Udp, &[B1]);
    id.namespace = "n".repeat(63);
    id.name = "s".repeat(63);
    id.port_name = "p".repeat(15);
    let desired = DesiredState {
        services: [(id, sp)].into(),
        problems: Vec::new(),
    };
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    syncer.sync(&desired, &mut dp.maps).unwrap();
    let mut restarted = Syncer::recover(&mut dp.maps).unwrap();
    let report = restarted.sync(&desired, &mut dp.maps).unwrap();
    assert_eq!(report.writes, 0, "{report:?}");
}

/// `xdplb flows` reads connection tracking in batches: it sees every entry
/// the map's own iterator sees, and its filters pick by Service and by
/// address.
#[test]
fn flows_are_read_in_batches_and_filtered() {
    use lb_userspace::model::{DesiredState, Proto};
    use lb_userspace::{cli::Filter, datapath::lookup_all, inspect::flow_rows, sync::Syncer};
    let mut dp = load();
    let (web, web_sp) = vip_service("web", Proto::Tcp, &[B1, B2]);
    let (mut db, mut db_sp) = vip_service("db", Proto::Tcp, &[B3]);
    db.name = "db".into();
    db_sp.frontends[0].addr = Ipv4Addr::new(10, 96, 0, 11);
    let desired = DesiredState {
        services: [(web, web_sp), (db, db_sp)].into(),
        problems: Vec::new(),
    };
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    syncer.sync(&desired, &mut dp.maps).unwrap();
    for port in 0..3000u16 {
        run(
            &dp,
            &tcp_frame((CLIENT.0, 10000 + port), VIP, Tcp::syn(), b"", &[]),
        );
    }
    let db_vip = (Ipv4Addr::new(10, 96, 0, 11), 80);
    for port in 0..5u16 {
        run(
            &dp,
            &tcp_frame((CLIENT.0, 20000 + port), db_vip, Tcp::syn(), b"", &[]),
        );
    }
    let batched: std::collections::HashSet<CtKeyV4> =
        lookup_all::<CtKeyV4, CtValueV4>(aya::maps::IterableMap::map(dp.maps.ct()))
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
    let iterated: std::collections::HashSet<CtKeyV4> =
        dp.maps.ct().keys().map(|k| k.unwrap()).collect();
    assert_eq!(batched.len(), 2 * 3005, "forward and reply entries");
    assert_eq!(batched, iterated);

    let rows = |filter: Filter| flow_rows(&dp.maps, &filter).unwrap();
    assert_eq!(rows(Filter::default()).len(), 2 * 3005);
    let db_rows = rows(Filter {
        service: Some("default/db".into()),
        ..Filter::default()
    });
    assert_eq!(db_rows.len(), 10);
    assert!(db_rows.iter().all(|r| r["service"] == "default/db:/TCP"));
    let b3_rows = rows(Filter {
        addr: Some(B3.0.into()),
        ..Filter::default()
    });
    assert_eq!(b3_rows.len(), 10, "the db flows, both directions");
    assert!(rows(Filter {
        service: Some("default/db:/UDP".into()),
        ..Filter::default()
    })
    .is_empty());
}

/// The map names the agent pins by are exactly the object's maps, less the
/// ones it rebuilds: a map added to the program but not to the list would
/// not survive a restart.
#[test]
fn every_map_of_the_object_is_pinned_or_rebuilt_by_name() {
    common::privileged("BPF_PROG_TEST_RUN packet tests");
    let ebpf = aya::Ebpf::load(lb_userspace::datapath::OBJECT).unwrap();
    let mut in_object: Vec<&str> = ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|n| !n.starts_with(".rodata") && !n.starts_with(".data"))
        .collect();
    in_object.sort();
    let mut named: Vec<&str> = lb_common::names::ALL
        .iter()
        .chain(lb_common::names::UNPINNED)
        .copied()
        .collect();
    named.sort();
    assert_eq!(in_object, named);
}
