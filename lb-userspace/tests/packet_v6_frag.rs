//! BPF_PROG_TEST_RUN tier: IPv6 fragments follow the IPv4 rules. The first
//! fragment of a datagram to an IPv6 ClusterIP is balanced like any packet
//! (on the entries for fragments, which the IPv6 entries tail-call), and
//! the later ones, which carry no ports, follow it to the same backend; a
//! later fragment of a datagram never seen passes untouched. Fragments are
//! cut by hand from a datagram etherparse built, and the translated ones
//! reassembled and checked with etherparse.
mod common;

use common::packets_v6::{addr, parse_checked, udp};
use lb_common::Reason;
use lb_userspace::{
    datapath::{run_frame, Datapath, POD_PROGRAM, PROGRAM},
    model::{ModelOptions, NodeInfo},
};

const CLIENT: (&str, u16) = ("fd00:244:3::7", 40000);
const VIP: (&str, u16) = ("fd00:96::10", 53);
const BACKEND: (&str, u16) = ("fd00:244:2::2", 5353);

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  clusterIPs: ["fd00:96::10"]
  ipFamilies: [IPv6]
  ports:
    - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-v6
  namespace: default
  labels: {kubernetes.io/service-name: dns}
addressType: IPv6
ports:
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: ["fd00:244:2::2"]
"#;

/// Offsets in an untagged Ethernet frame.
const IP6: usize = 14;
const UPPER: usize = IP6 + 40;
const NEXTHDR_FRAGMENT: u8 = 44;
/// Bytes of the datagram's upper-layer part in the first fragment.
const FIRST: usize = 32;

fn synced() -> Datapath {
    common::synced(MANIFESTS, &NodeInfo::default(), &ModelOptions::default())
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

/// `datagram` (an Ethernet frame without extension headers) cut in two
/// fragments of identification `id`: the first with `FIRST` bytes of its
/// upper-layer part, the second with the rest.
fn fragments(datagram: &[u8], id: u32) -> [Vec<u8>; 2] {
    let upper = &datagram[UPPER..];
    let proto = datagram[IP6 + 6];
    let piece = |offset: usize, bytes: &[u8], more: bool| {
        let mut f = datagram[..UPPER].to_vec();
        f[IP6 + 6] = NEXTHDR_FRAGMENT;
        f[IP6 + 4..IP6 + 6].copy_from_slice(&((8 + bytes.len()) as u16).to_be_bytes());
        let field = (offset as u16) | u16::from(more);
        f.extend_from_slice(&[proto, 0]);
        f.extend_from_slice(&field.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(bytes);
        f
    };
    [
        piece(0, &upper[..FIRST], true),
        piece(FIRST, &upper[FIRST..], false),
    ]
}

/// The datagram the two translated fragments make.
fn reassembled(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut d = first[..UPPER].to_vec();
    d[IP6 + 6] = first[UPPER];
    let upper = [&first[UPPER + 8..], &second[UPPER + 8..]].concat();
    d[IP6 + 4..IP6 + 6].copy_from_slice(&(upper.len() as u16).to_be_bytes());
    d.extend_from_slice(&upper);
    d
}

#[test]
fn later_fragments_follow_the_first_to_its_backend() {
    let dp = synced();
    let datagram = udp(CLIENT, VIP, &[9u8; 64]);
    let [first, second] = fragments(&datagram, 0x1234_5678);
    let run = |f: &[u8]| run_frame(dp.program(PROGRAM).unwrap(), f, 1).unwrap();
    let (a, b) = (run(&first), run(&second));
    assert_eq!(
        &b.frame[IP6 + 8..IP6 + 40],
        &a.frame[IP6 + 8..IP6 + 40],
        "the later fragment has the first's addresses"
    );
    let d = parse_checked(&reassembled(&a.frame, &b.frame));
    assert_eq!(d.src, (addr(CLIENT.0), CLIENT.1));
    assert_eq!(
        d.dst,
        (addr(BACKEND.0), BACKEND.1),
        "both fragments went to the backend, the UDP checksum covering the whole datagram"
    );
    assert_eq!(d.payload, [9u8; 64]);
    assert_eq!(count(&dp, Reason::XlateNew), 1);
    assert_eq!(count(&dp, Reason::XlateFragment), 1);
}

#[test]
fn fragments_of_pods_follow_at_tc_too() {
    let dp = synced();
    let datagram = udp(CLIENT, VIP, &[3u8; 100]);
    let [first, second] = fragments(&datagram, 7);
    let run = |f: &[u8]| run_frame(dp.classifier(POD_PROGRAM).unwrap(), f, 1).unwrap();
    let (a, b) = (run(&first), run(&second));
    let d = parse_checked(&reassembled(&a.frame, &b.frame));
    assert_eq!(d.dst, (addr(BACKEND.0), BACKEND.1));
    assert_eq!(count(&dp, Reason::XlateFragment), 1);
}

#[test]
fn a_later_fragment_of_an_unknown_datagram_passes_untouched() {
    let dp = synced();
    let [_, second] = fragments(&udp(CLIENT, VIP, &[1u8; 64]), 99);
    let r = run_frame(dp.program(PROGRAM).unwrap(), &second, 1).unwrap();
    assert_eq!(r.frame, second);
    assert_eq!(count(&dp, Reason::PassFragment), 1);
    assert_eq!(count(&dp, Reason::XlateFragment), 0);
}
