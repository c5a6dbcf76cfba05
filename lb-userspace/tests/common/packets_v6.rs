//! IPv6 frames for the packet tests, built and checked with etherparse,
//! independently of the code under test.
use std::net::Ipv6Addr;

use etherparse::{Icmpv6Type, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};

pub fn addr(a: &str) -> Ipv6Addr {
    a.parse().unwrap()
}

pub fn tcp(from: (&str, u16), to: (&str, u16), syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(addr(from.0).octets(), addr(to.0).octets(), 64)
        .tcp(from.1, to.1, 1000, 64_000);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

pub fn udp(from: (&str, u16), to: (&str, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(addr(from.0).octets(), addr(to.0).octets(), 64)
        .udp(from.1, to.1)
        .write(&mut out, payload)
        .unwrap();
    out
}

pub struct Seen {
    pub src: (Ipv6Addr, u16),
    pub dst: (Ipv6Addr, u16),
    pub payload: Vec<u8>,
    pub hop_limit: u8,
}

/// Parses an output frame and panics unless its transport checksum is
/// right, recomputed here over the IPv6 pseudo-header.
pub fn parse_checked(frame: &[u8]) -> Seen {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("output frame parses");
    let Some(NetHeaders::Ipv6(ip, _)) = h.net else {
        panic!("not IPv6")
    };
    let payload = h.payload.slice().to_vec();
    let (sport, dport) = match h.transport {
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv6(&ip, &payload).unwrap(),
                "TCP checksum"
            );
            (t.source_port, t.destination_port)
        }
        Some(TransportHeader::Udp(u)) => {
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv6(&ip, &payload).unwrap(),
                "UDP checksum"
            );
            (u.source_port, u.destination_port)
        }
        _ => panic!("unexpected transport"),
    };
    Seen {
        src: (ip.source.into(), sport),
        dst: (ip.destination.into(), dport),
        payload,
        hop_limit: ip.hop_limit,
    }
}

/// The link-layer address `solicitation` sends from.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// A Neighbour Solicitation from `src` for `target`, with a Source
/// Link-Layer Address option when `sll`, as etherparse builds it.
pub fn solicitation(src: Ipv6Addr, target: Ipv6Addr, hop_limit: u8, sll: bool) -> Vec<u8> {
    let dst = solicited_node(target);
    let d = dst.octets();
    let mut body = target.octets().to_vec();
    if sll {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&CLIENT_MAC);
    }
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0x33, 0x33, d[12], d[13], d[14], d[15]])
        .ipv6(src.octets(), dst.octets(), hop_limit)
        .icmpv6(Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut out, &body)
        .unwrap();
    out
}
