//! BPF_PROG_TEST_RUN tier for Neighbour Discovery: solicitations for the
//! IPv6 LoadBalancer addresses this node announces are answered by `lb`
//! (XDP) and `lb_tc` (tc) in place; every other solicitation reaches the
//! kernel untouched. Frames are built and checked with etherparse.
mod common;

use std::net::Ipv6Addr;

use common::packets_v6::{solicitation, CLIENT_MAC};
use etherparse::{EtherType, Ethernet2HeaderSlice, Icmpv6Slice, IpNumber, Ipv6HeaderSlice};
use lb_common::{AnnounceKeyV6, AnnounceValue, Reason};
use lb_userspace::datapath::{run_frame, Datapath, PROGRAM};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// `bpf_redirect`'s verdict at tc: out of the interface it came in by.
const TC_ACT_REDIRECT: u32 = 7;

const IFACE_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
const TARGET: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x200);

fn xdp(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn tc(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.classifier("lb_tc").unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

/// BPF_PROG_TEST_RUN delivers frames as if received on the loopback device
/// (ifindex 1); marking it XDP-capable makes bounced frames leave with
/// XDP_TX.
fn loaded() -> Datapath {
    let mut dp = common::load();
    let info = lb_common::IfaceInfo {
        flags: lb_common::IFACE_REDIRECT,
    };
    lb_userspace::sync::NodeMaps::put_iface(&mut dp.maps, 1, info).unwrap();
    dp
}

fn announce(dp: &mut Datapath, addr: Ipv6Addr, ifindex: u32) {
    let key = AnnounceKeyV6 {
        addr: lb_common::addr::to_map_v6(addr),
        ifindex,
    };
    let value = AnnounceValue {
        mac: IFACE_MAC,
        _pad: 0,
    };
    dp.maps.announce_v6_mut().insert(key, value, 0).unwrap();
}

/// Checks `out` is the advertisement answering a solicitation from
/// `CLIENT` for `TARGET`; returns the ICMPv6 message.
fn check_advert(out: &[u8]) -> Vec<u8> {
    let eth = Ethernet2HeaderSlice::from_slice(out).unwrap();
    assert_eq!(eth.destination(), CLIENT_MAC);
    assert_eq!(eth.source(), IFACE_MAC);
    assert_eq!(eth.ether_type(), EtherType::IPV6);
    let ip = Ipv6HeaderSlice::from_slice(&out[14..]).unwrap();
    assert_eq!(ip.source_addr(), TARGET);
    assert_eq!(ip.destination_addr(), CLIENT);
    assert_eq!(ip.hop_limit(), 255);
    assert_eq!(ip.next_header(), IpNumber::IPV6_ICMP);
    assert_eq!((ip.traffic_class(), ip.flow_label().value()), (0, 0));
    let msg = &out[54..54 + usize::from(ip.payload_length())];
    let icmp = Icmpv6Slice::from_slice(msg).unwrap();
    assert!(
        icmp.is_checksum_valid(ip.source(), ip.destination()),
        "ICMPv6 checksum"
    );
    assert_eq!((msg[0], msg[1]), (136, 0), "an advertisement");
    assert_eq!(msg[4..8], [0x60, 0, 0, 0], "Solicited and Override");
    assert_eq!(msg[8..24], TARGET.octets(), "target");
    msg.to_vec()
}

#[test]
fn a_solicitation_with_its_link_layer_address_gets_one_in_the_advertisement() {
    let mut dp = loaded();
    announce(&mut dp, TARGET, 1);
    let ns = solicitation(CLIENT, TARGET, 255, true);
    let (action, out) = xdp(&dp, &ns);
    assert_eq!(action, XDP_TX);
    assert_eq!(out.len(), ns.len());
    let msg = check_advert(&out);
    assert_eq!(msg.len(), 32);
    assert_eq!(msg[24..26], [2, 1], "Target Link-Layer Address option");
    assert_eq!(msg[26..32], IFACE_MAC);
    // A reachability probe, sent to the interface rather than to the
    // target's solicited-node group.
    let mut probe = ns.clone();
    probe[..6].copy_from_slice(&IFACE_MAC);
    let (action, probe_out) = xdp(&dp, &probe);
    assert_eq!((action, probe_out), (XDP_TX, out));
    assert_eq!(count(&dp, Reason::NdpAdvert), 2);
    assert_eq!(count(&dp, Reason::PassIpv6PathMissing), 0);
}

#[test]
fn a_bare_solicitation_gets_a_bare_advertisement_at_tc_too() {
    let mut dp = loaded();
    announce(&mut dp, TARGET, 1);
    let ns = solicitation(CLIENT, TARGET, 255, false);
    let (action, out) = xdp(&dp, &ns);
    assert_eq!(action, XDP_TX);
    assert_eq!(check_advert(&out).len(), 24);
    let (action, out) = tc(&dp, &ns);
    assert_eq!(action, TC_ACT_REDIRECT);
    assert_eq!(check_advert(&out).len(), 24);
    assert_eq!(count(&dp, Reason::NdpAdvert), 2);
}

/// Makes the ICMPv6 checksum of an edited message right again, so that
/// only the edit tells it from a valid one.
fn resum(frame: &mut [u8]) {
    let ip = Ipv6HeaderSlice::from_slice(&frame[14..]).unwrap();
    let (src, dst) = (ip.source(), ip.destination());
    frame[56..58].fill(0);
    let sum = etherparse::checksum::Sum16BitWords::new()
        .add_16bytes(src)
        .add_16bytes(dst)
        .add_4bytes(((frame.len() - 54) as u32).to_be_bytes())
        .add_2bytes([0, 58])
        .add_slice(&frame[54..])
        .ones_complement();
    frame[56..58].copy_from_slice(&sum.to_ne_bytes());
}

/// Not announced on this interface, not announced at all, duplicate
/// address detection, from off the link, an option that is no link-layer
/// address, an advertisement, a checksum that is wrong, or sent to
/// another host's MAC or another address's solicited-node group (seen in
/// promiscuous mode): the kernel's.
#[test]
fn other_solicitations_pass_untouched() {
    let mut dp = loaded();
    announce(&mut dp, TARGET, 2);
    let other = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x201);
    announce(&mut dp, other, 1);
    let on_other_iface = solicitation(CLIENT, TARGET, 255, true);
    let unannounced = solicitation(
        CLIENT,
        Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x202),
        255,
        true,
    );
    let dad = solicitation(Ipv6Addr::UNSPECIFIED, other, 255, false);
    let routed = solicitation(CLIENT, other, 254, true);
    let mut resummed = solicitation(CLIENT, other, 255, true);
    resum(&mut resummed);
    assert_eq!(resummed, solicitation(CLIENT, other, 255, true));
    let mut odd_option = solicitation(CLIENT, other, 255, true);
    odd_option[78] = 14;
    resum(&mut odd_option);
    let mut advert = solicitation(CLIENT, other, 255, true);
    advert[54] = 136;
    resum(&mut advert);
    let mut bad_checksum = solicitation(CLIENT, other, 255, true);
    bad_checksum[57] ^= 1;
    let mut other_host = solicitation(CLIENT, other, 255, true);
    other_host[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x09]);
    let mut other_group = solicitation(CLIENT, other, 255, true);
    other_group[5] ^= 1;
    let frames = [
        on_other_iface,
        unannounced,
        dad,
        routed,
        odd_option,
        advert,
        bad_checksum,
        other_host,
        other_group,
    ];
    for f in &frames {
        assert_eq!(xdp(&dp, f), (XDP_PASS, f.clone()));
    }
    assert_eq!(count(&dp, Reason::NdpAdvert), 0);
    assert_eq!(count(&dp, Reason::PassIpv6PathMissing), 0);
}
