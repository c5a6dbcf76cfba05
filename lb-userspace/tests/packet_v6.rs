//! BPF_PROG_TEST_RUN tier for the IPv6 packet path: an IPv6 ClusterIP
//! written by the agent's model and syncer from manifests, and frames built
//! and checked with etherparse through `lb` (XDP) and `lb_pod` (tc), both of
//! which hand IPv6 to the IPv6 entry programs by tail call.
mod common;

use common::{
    packets::{tcp6_frame, Tcp},
    packets_v6::{addr, parse_checked, tcp, udp, Seen},
};

use std::net::Ipv6Addr;

use etherparse::{IpNumber, NetHeaders, PacketBuilder, PacketHeaders, TcpHeader, TransportHeader};
use lb_common::{
    addr::to_map_v6,
    decide::{self, Client, Decision},
    CtKey, CtKeyV6, Reason, PROTO_TCP,
};
use lb_userspace::{
    cli::Filter,
    datapath::{run_frame, Datapath, MapsViewV6, POD_PROGRAM, PROGRAM},
    inspect::flow_rows,
    model::{ModelOptions, NodeInfo},
    sync::NodeMaps,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIPs: ["fd00:96::10"]
  ipFamilies: [IPv6]
  sessionAffinity: None
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
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
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: ["fd00:244:1::2"]
  - addresses: ["fd00:244:2::2"]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIPs: ["fd00:96::11"]
  ipFamilies: [IPv6]
  ports:
    - {name: http, port: 80}
    - {name: dns, port: 53, protocol: UDP}
"#;

const CLIENT: (&str, u16) = ("fd00:244:3::7", 40000);
const VIP: (&str, u16) = ("fd00:96::10", 80);
const VIP_UDP: (&str, u16) = ("fd00:96::10", 53);
const BACKENDS: [&str; 2] = ["fd00:244:1::2", "fd00:244:2::2"];
/// A Service without endpoints.
const EMPTY: &str = "fd00:96::11";
const XDP_TX: u32 = 3;

/// The data plane with the manifests synced into it, as the agent does.
fn synced() -> Datapath {
    common::synced(MANIFESTS, &NodeInfo::default(), &ModelOptions::default())
}

fn xdp(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn tc(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.classifier(POD_PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

/// Offsets in an untagged Ethernet frame.
const IP6: usize = 14;
const L4: usize = IP6 + 40;

/// `frame` with `headers` (next header, then the header's bytes after its
/// first two) inserted between the IPv6 header and the transport header.
fn with_ext_headers(frame: &[u8], headers: &[u8]) -> Vec<u8> {
    let mut out = frame[..L4].to_vec();
    let upper = frame[IP6 + 6];
    out[IP6 + 6] = headers[0];
    let mut ext = Vec::new();
    for i in 0..headers.len() {
        let next = headers.get(i + 1).copied().unwrap_or(upper);
        // Eight bytes: next header, length 0, then PadN options filling it.
        ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    out.extend_from_slice(&ext);
    out.extend_from_slice(&frame[L4..]);
    let len = u16::from_be_bytes([frame[IP6 + 4], frame[IP6 + 5]]) + ext.len() as u16;
    out[IP6 + 4..IP6 + 6].copy_from_slice(&len.to_be_bytes());
    out
}

/// The backend a translated packet went to, which must be one of the
/// Service's, on the target port.
fn backend_of(seen: &Seen, port: u16) -> Ipv6Addr {
    assert!(
        BACKENDS.iter().any(|b| addr(b) == seen.dst.0),
        "{:?} is no backend",
        seen.dst
    );
    assert_eq!(seen.dst.1, port);
    seen.dst.0
}

#[test]
fn tcp_to_an_ipv6_clusterip_is_translated_both_ways_with_valid_checksums() {
    let dp = synced();
    let (action, out) = xdp(&dp, &tcp(CLIENT, VIP, true, b"hello"));
    // No route to the backend in the test's namespace: the kernel routes it.
    assert_eq!(action, XDP_PASS);
    let seen = parse_checked(&out);
    assert_eq!(seen.src, (addr(CLIENT.0), CLIENT.1));
    assert_eq!(seen.payload, b"hello");
    let backend = backend_of(&seen, 8080);
    assert_eq!(count(&dp, Reason::XlateNew), 1);

    let b = backend.to_string();
    let (_, out) = xdp(&dp, &tcp((&b, 8080), CLIENT, false, b"ok"));
    let reply = parse_checked(&out);
    assert_eq!(
        reply.src,
        (addr(VIP.0), VIP.1),
        "the reply comes from the VIP"
    );
    assert_eq!(reply.dst, (addr(CLIENT.0), CLIENT.1));
    assert_eq!(count(&dp, Reason::XlateReply), 1);

    for _ in 0..3 {
        let (_, out) = xdp(&dp, &tcp(CLIENT, VIP, false, b"more"));
        assert_eq!(
            backend_of(&parse_checked(&out), 8080),
            backend,
            "flow stays"
        );
    }
    // The first through `CT_V6`, the others from the flow cache it filled.
    assert_eq!(count(&dp, Reason::XlateEstablished), 1);
    assert_eq!(count(&dp, Reason::XlateEstablishedCached), 2);

    // `xdplb flows` shows both entries, filtered by an IPv6 address.
    let filter = Filter {
        addr: Some(backend.into()),
        ..Filter::default()
    };
    let mut rows: Vec<[String; 4]> = flow_rows(&dp.maps, &filter)
        .unwrap()
        .into_iter()
        .map(|r| ["direction", "src", "nat", "state"].map(|f| r[f].as_str().unwrap().to_string()))
        .collect();
    rows.sort();
    let client = format!("[{}]:{}", CLIENT.0, CLIENT.1);
    let vip = format!("[{}]:{}", VIP.0, VIP.1);
    let backend = format!("[{backend}]:8080");
    let row = |d: &str, src: &str, nat: &str| [d, src, nat, "established"].map(str::to_string);
    assert_eq!(
        rows,
        [
            row("forward", &client, &backend),
            row("reply", &backend, &vip)
        ]
    );
}

#[test]
fn udp_flows_from_pods_at_tc_spread_over_both_backends() {
    let dp = synced();
    let mut used = std::collections::BTreeSet::new();
    for port in 0..32 {
        let client = (CLIENT.0, 41000 + port);
        let (action, out) = tc(&dp, &udp(client, VIP_UDP, b"q"));
        assert_eq!(action, TC_ACT_OK);
        let seen = parse_checked(&out);
        assert_eq!(seen.src, (addr(client.0), client.1));
        used.insert(backend_of(&seen, 5353));
        let b = seen.dst.0.to_string();
        let (_, out) = tc(&dp, &udp((&b, 5353), client, b"a"));
        let reply = parse_checked(&out);
        assert_eq!(reply.src, (addr(VIP_UDP.0), VIP_UDP.1));
        assert_eq!(reply.dst, (addr(client.0), client.1));
    }
    assert_eq!(used.len(), 2, "Maglev uses both backends");
    assert_eq!(count(&dp, Reason::XlateNew), 32);
    assert_eq!(count(&dp, Reason::XlateReply), 32);
}

/// A socket with checksum offload leaves only the pseudo-header sum in the
/// field; after translation it must be the translated pseudo-header's.
#[test]
fn offloaded_partial_checksums_stay_completable_after_translation() {
    let dp = synced();
    let mut frame = tcp(CLIENT, VIP, true, b"partial");
    let partial = |f: &[u8]| {
        let mut sum: u32 = f[IP6 + 8..L4]
            .chunks(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
            .sum();
        sum += (f.len() - L4) as u32 + IpNumber::TCP.0 as u32;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (sum as u16).to_be_bytes()
    };
    let p = partial(&frame);
    frame[L4 + 16..L4 + 18].copy_from_slice(&p);
    let (_, out) = xdp(&dp, &frame);
    assert_eq!(out[L4 + 16..L4 + 18], partial(&out), "partial sum follows");
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(TransportHeader::Tcp(TcpHeader {
        destination_port, ..
    })) = h.transport
    else {
        panic!("not TCP")
    };
    assert_eq!(destination_port, 8080);
}

/// What `xdplb explain`'s IPv6 view decides for a new flow of `key` from a
/// pod.
fn explained(dp: &Datapath, key: &CtKeyV6) -> Decision<lb_common::BackendV6> {
    decide::new_flow(
        &MapsViewV6(&dp.maps),
        &key.frontend(),
        key.src_addr,
        true,
        &Client::Addr(key.src_addr),
        0,
        || key.hash(),
    )
}

/// `xdplb explain`'s IPv6 view decides each new flow as the program does.
#[test]
fn explain_and_the_program_decide_ipv6_flows_alike() {
    let dp = synced();
    for port in 0..32 {
        let client = (CLIENT.0, 42000u16 + port);
        let key = CtKeyV6::forward(
            (to_map_v6(addr(client.0)), client.1.to_be()),
            (to_map_v6(addr(VIP.0)), VIP.1.to_be()),
            PROTO_TCP,
        );
        let decided = explained(&dp, &key);
        let Decision::Backend { backend, .. } = decided else {
            panic!("{client:?}: {decided:?}")
        };
        let (_, out) = xdp(&dp, &tcp(client, VIP, true, b""));
        let seen = parse_checked(&out);
        assert_eq!(
            (seen.dst.0, seen.dst.1),
            (
                lb_common::addr::from_map_v6(backend.addr),
                u16::from_be(backend.port)
            ),
            "{client:?}"
        );
    }
    let empty = CtKeyV6::forward(
        (to_map_v6(addr(CLIENT.0)), 1u16.to_be()),
        (to_map_v6(addr(EMPTY)), 80u16.to_be()),
        PROTO_TCP,
    );
    assert_eq!(
        explained(&dp, &empty),
        Decision::Refused(Reason::RejectNoBackend)
    );
}

/// BPF_PROG_TEST_RUN delivers frames as if received on the loopback device
/// (ifindex 1); marking it XDP-capable makes rejects leave with XDP_TX.
fn receive_on_xdp_capable_device(dp: &mut Datapath) {
    let info = lb_common::IfaceInfo {
        flags: lb_common::IFACE_REDIRECT,
    };
    dp.maps.put_iface(1, info).unwrap();
}

#[test]
fn a_clusterip_without_endpoints_answers_tcp_with_rst() {
    let mut dp = synced();
    receive_on_xdp_capable_device(&mut dp);
    let (action, out) = xdp(&dp, &tcp(CLIENT, (EMPTY, 80), true, b"abc"));
    assert_eq!(action, XDP_TX);
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(NetHeaders::Ipv6(ip, _)) = h.net else {
        panic!("not IPv6")
    };
    let Some(TransportHeader::Tcp(t)) = h.transport else {
        panic!("not TCP")
    };
    assert_eq!(
        t.checksum,
        t.calc_checksum_ipv6(&ip, &[]).unwrap(),
        "TCP checksum"
    );
    assert_eq!(
        (
            (ip.source.into(), t.source_port),
            (ip.destination.into(), t.destination_port)
        ),
        ((addr(EMPTY), 80), (addr(CLIENT.0), CLIENT.1))
    );
    assert!(t.rst && t.ack && !t.syn);
    // SYN (1) + 3 payload bytes acknowledged.
    assert_eq!(t.acknowledgment_number, 1000 + 1 + 3);
    assert_eq!(count(&dp, Reason::RejectNoBackend), 1);
}

#[test]
fn a_clusterip_without_endpoints_answers_udp_with_port_unreachable() {
    let mut dp = synced();
    receive_on_xdp_capable_device(&mut dp);
    let sent = udp((CLIENT.0, 41000), (EMPTY, 53), b"0123456789abcdef");
    let (action, out) = xdp(&dp, &sent);
    assert_eq!(action, XDP_TX);
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(NetHeaders::Ipv6(ip, _)) = h.net else {
        panic!("not IPv6")
    };
    assert_eq!(
        (ip.source, ip.destination),
        (addr(EMPTY).octets(), addr(CLIENT.0).octets())
    );
    let Some(TransportHeader::Icmpv6(icmp)) = h.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(
        icmp.icmp_type,
        etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port
        )
    );
    let quote = h.payload.slice();
    assert_eq!(
        icmp.checksum,
        icmp.icmp_type
            .calc_checksum(ip.source, ip.destination, quote)
            .unwrap(),
        "ICMPv6 checksum"
    );
    // The quote is the original IPv6 header and its UDP header.
    assert_eq!(quote, &sent[IP6..L4 + 8]);
    assert_eq!(count(&dp, Reason::RejectNoBackend), 1);
}

/// As kube-proxy's nftables proxier rejects traffic to a ClusterIP on a
/// port no Service serves, and as the IPv4 path does (`ADDRS_V6`).
#[test]
fn an_unknown_port_of_an_ipv6_clusterip_is_refused() {
    let mut dp = synced();
    receive_on_xdp_capable_device(&mut dp);
    let (action, out) = xdp(&dp, &tcp(CLIENT, (VIP.0, 81), true, b""));
    assert_eq!(action, XDP_TX);
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(TransportHeader::Tcp(t)) = h.transport else {
        panic!("not TCP")
    };
    assert!(t.rst, "answered with a RST");
    assert_eq!(count(&dp, Reason::RejectUnknownPort), 1);
    let key = CtKeyV6::forward(
        (to_map_v6(addr(CLIENT.0)), 1u16.to_be()),
        (to_map_v6(addr(VIP.0)), 81u16.to_be()),
        PROTO_TCP,
    );
    assert_eq!(
        explained(&dp, &key),
        Decision::Refused(Reason::RejectUnknownPort),
        "xdplb explain says what the data plane does"
    );
}

#[test]
fn extension_headers_are_walked_with_a_bound() {
    let dp = synced();
    const HOP: u8 = 0;
    const DEST: u8 = 60;
    let one = with_ext_headers(&tcp(CLIENT, VIP, true, b"x"), &[HOP]);
    let (_, out) = xdp(&dp, &one);
    let seen = parse_checked(&out);
    backend_of(&seen, 8080);
    assert_eq!(count(&dp, Reason::XlateNew), 1);

    let many = with_ext_headers(
        &tcp(CLIENT, VIP, true, b"x"),
        &[HOP, DEST, DEST, DEST, DEST],
    );
    assert_eq!(
        xdp(&dp, &many),
        (XDP_PASS, many.clone()),
        "passed untouched"
    );
    assert_eq!(count(&dp, Reason::PassIpv6ExtHeaders), 1);
}

#[test]
fn neighbour_discovery_fragments_and_other_traffic_go_to_the_kernel() {
    let dp = synced();
    // A unicast solicitation (neighbour unreachability detection) to a
    // VIP: it passes the address filter, and still goes to the kernel.
    let mut ns = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(addr(CLIENT.0).octets(), addr(VIP.0).octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut ns, &addr(VIP.0).octets())
        .unwrap();
    assert_eq!(xdp(&dp, &ns), (XDP_PASS, ns.clone()));
    assert_eq!(count(&dp, Reason::PassIcmpv6), 1);

    const FRAGMENT: u8 = 44;
    let frag = with_ext_headers(&udp(CLIENT, VIP_UDP, b"x"), &[FRAGMENT]);
    assert_eq!(xdp(&dp, &frag), (XDP_PASS, frag.clone()));
    assert_eq!(count(&dp, Reason::PassFragment), 1);

    let other = tcp(CLIENT, ("fd00:99::1", 443), true, b"");
    assert_eq!(xdp(&dp, &other), (XDP_PASS, other.clone()));
    assert_eq!(count(&dp, Reason::PassNotOurs), 1);
    assert_eq!(count(&dp, Reason::PassIpv6PathMissing), 0);
}

/// The verifier walks at most 1,000,000 instructions of a program, and
/// other kernels' verifiers prune less than this one's: the IPv6 entries
/// keep three quarters of that free (what grows them is whatever the
/// verifier walks once per way into it; see `service6::new_flow`), so that
/// a change that eats the margin fails here rather than on a user's node,
/// where the IPv6 path would be left out. The IPv4 entries, which also
/// translate IPv6 packets of established flows (`service6::established`)
/// and without which nothing loads, keep a quarter free.
#[test]
fn the_entries_leave_the_verifier_a_margin() {
    let dp = synced();
    let xdp = ["lb", "lb6", "lb6_frag"];
    let tc = [
        "lb_pod",
        "lb_tc",
        "lb6_pod",
        "lb6_tc",
        "lb6_frag_pod",
        "lb6_frag_tc",
    ];
    for name in xdp.into_iter().chain(tc) {
        let info = if xdp.contains(&name) {
            dp.program(name).unwrap().info()
        } else {
            dp.classifier(name).unwrap().info()
        }
        .unwrap();
        let walked = info
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16 on)");
        let limit = if name.starts_with("lb6") {
            250_000
        } else {
            750_000
        };
        eprintln!("{name}: the verifier walked {walked} instructions (limit here {limit})");
        assert!(
            walked < limit,
            "{name}: the verifier walked {walked} instructions, limit here {limit}"
        );
    }
}

/// Plain established IPv6 packets are served from this CPU's flow cache,
/// as IPv4 ones are; SYN, FIN and RST segments go to `CT_V6`, and flows
/// the agent removes take their cached copies with them.
#[test]
fn flow_cache_serves_plain_ipv6_packets_and_forgets_removed_flows() {
    let mut dp = synced();
    let client: (Ipv6Addr, u16) = (CLIENT.0.parse().unwrap(), CLIENT.1);
    let vip: (Ipv6Addr, u16) = (VIP.0.parse().unwrap(), VIP.1);
    let forward = |dp: &Datapath, t: Tcp| xdp(dp, &tcp6_frame(client, vip, t, b"data")).1;
    let backend = parse_checked(&forward(&dp, Tcp::syn())).dst;
    let backend = (backend.0, backend.1);
    let reply = |dp: &Datapath, t: Tcp| xdp(dp, &tcp6_frame(backend, client, t, b"resp")).1;
    reply(&dp, Tcp::syn_ack());
    for _ in 0..3 {
        let p = parse_checked(&forward(&dp, Tcp::ack()));
        assert_eq!((p.src, p.dst), (client, backend));
        let p = parse_checked(&reply(&dp, Tcp::ack()));
        assert_eq!((p.src, p.dst), (vip, client));
    }
    let counts = common::cache_counts;
    // The SYN-ACK changes state, so the first plain packet of each
    // direction fills the cache.
    assert_eq!(counts(&dp), [1, 2, 2, 2]);
    let cache = dp.maps.flow_cache_v6().unwrap();
    let copies = (0..lb_common::FLOW_CACHE_SLOTS)
        .filter(|&i| {
            cache
                .get(&i, 0)
                .unwrap()
                .iter()
                .any(|e| e.until_jiffies != 0)
        })
        .count();
    assert_eq!(copies, 2, "one copy per direction");

    forward(&dp, common::fin());
    reply(&dp, common::fin());
    assert_eq!(counts(&dp), [2, 2, 3, 2], "FINs via conntrack");

    // A fresh flow, cached, then removed as the agent removes the flows
    // of a gone endpoint: its next packet finds no copy.
    let client2 = (client.0, client.1 + 1);
    let fwd2 = |dp: &Datapath, t: Tcp| xdp(dp, &tcp6_frame(client2, vip, t, b"data")).1;
    let backend2 = parse_checked(&fwd2(&dp, Tcp::syn())).dst;
    xdp(&dp, &tcp6_frame(backend2, client2, Tcp::syn_ack(), b""));
    fwd2(&dp, Tcp::ack());
    fwd2(&dp, Tcp::ack());
    assert_eq!(counts(&dp)[..2], [3, 3]);
    let removed = dp
        .maps
        .remove_flows_v6(&|k, _| k.src_port == client2.1.to_be() || k.dst_port == client2.1.to_be())
        .unwrap();
    assert_eq!(removed.len(), 2);
    fwd2(&dp, Tcp::ack());
    assert_eq!(counts(&dp)[1], 3, "no copy of a removed flow is used");
}
