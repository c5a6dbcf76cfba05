//! Frames built and checked with etherparse, independently of the code under
//! test: every checksum in an output frame is recomputed here from scratch.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    icmpv4::DestUnreachableHeader, EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type,
    IpFragOffset, IpNumber, Ipv4Header, Ipv6Header, NetHeaders, PacketHeaders, TcpHeader,
    TransportHeader, UdpHeader,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// BPF_PROG_TEST_RUN runs XDP as if the frame came in on the loopback device.
pub const INGRESS_IFINDEX: u32 = 1;

/// The `(kind, ifindex)` of the `XdpMeta` XDP left in front of `out`, if
/// any (BPF_PROG_TEST_RUN returns the metadata with the frame), and the frame.
pub fn split_meta(out: &[u8]) -> (Option<(u8, u32)>, &[u8]) {
    let size = std::mem::size_of::<lb_common::meta::XdpMeta>();
    if out.len() >= size {
        let word = |i: usize| u32::from_ne_bytes(out[i..i + 4].try_into().unwrap());
        let meta = lb_common::meta::XdpMeta {
            magic: word(0),
            ifindex: word(4),
        };
        if let Some(kind) = meta.kind() {
            return (Some((kind, meta.ifindex)), &out[size..]);
        }
    }
    (None, out)
}

#[derive(Clone)]
pub struct Tcp {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub seq: u32,
    pub ack_no: u32,
}

impl Tcp {
    pub fn syn() -> Self {
        Self {
            syn: true,
            ack: false,
            fin: false,
            rst: false,
            seq: 1000,
            ack_no: 0,
        }
    }
    pub fn ack() -> Self {
        Self {
            syn: false,
            ack: true,
            fin: false,
            rst: false,
            seq: 1001,
            ack_no: 5001,
        }
    }
    pub fn syn_ack() -> Self {
        Self {
            syn: true,
            ack: true,
            fin: false,
            rst: false,
            seq: 5000,
            ack_no: 1001,
        }
    }
}

fn eth() -> Ethernet2Header {
    Ethernet2Header {
        source: CLIENT_MAC,
        destination: NODE_MAC,
        ether_type: EtherType::IPV4,
    }
}

fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpNumber,
    payload: usize,
    options: &[u8],
) -> Ipv4Header {
    let mut ip = Ipv4Header::new(payload as u16, 64, proto, src.octets(), dst.octets()).unwrap();
    ip.options = options.try_into().unwrap();
    ip.set_payload_len(payload).unwrap();
    ip.identification = 0x1234;
    ip.header_checksum = ip.calc_header_checksum();
    ip
}

fn tcp_header(src_port: u16, dst_port: u16, t: Tcp) -> TcpHeader {
    let mut tcp = TcpHeader::new(src_port, dst_port, t.seq, 64240);
    tcp.syn = t.syn;
    tcp.ack = t.ack;
    tcp.fin = t.fin;
    tcp.rst = t.rst;
    tcp.acknowledgment_number = t.ack_no;
    tcp
}

pub fn tcp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    t: Tcp,
    payload: &[u8],
    ip_options: &[u8],
) -> Vec<u8> {
    let mut tcp = tcp_header(src.1, dst.1, t);
    let ip = ipv4(
        src.0,
        dst.0,
        IpNumber::TCP,
        tcp.header_len() + payload.len(),
        ip_options,
    );
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, payload).unwrap();
    let mut out = Vec::new();
    eth().write(&mut out).unwrap();
    ip.write(&mut out).unwrap();
    tcp.write(&mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

/// `frame` (IPv4) with its TTL set to `ttl`, the header checksum made
/// right again.
pub fn with_ttl(frame: &[u8], ttl: u8) -> Vec<u8> {
    let (mut ip, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    ip.time_to_live = ttl;
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = frame[..14].to_vec();
    ip.write(&mut out).unwrap();
    out.extend_from_slice(&frame[14 + ip.header_len()..]);
    out
}

/// An IPv6 TCP frame, without extension headers.
pub fn tcp6_frame(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), t: Tcp, payload: &[u8]) -> Vec<u8> {
    let mut tcp = tcp_header(src.1, dst.1, t);
    let ip = Ipv6Header {
        payload_length: (tcp.header_len() + payload.len()) as u16,
        next_header: IpNumber::TCP,
        hop_limit: 64,
        source: src.0.octets(),
        destination: dst.0.octets(),
        ..Default::default()
    };
    tcp.checksum = tcp.calc_checksum_ipv6(&ip, payload).unwrap();
    let mut out = Vec::new();
    Ethernet2Header {
        ether_type: EtherType::IPV6,
        ..eth()
    }
    .write(&mut out)
    .unwrap();
    ip.write(&mut out).unwrap();
    tcp.write(&mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

/// With `zero_checksum`, the UDP checksum is left 0 ("none", legal on IPv4).
pub fn udp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
    zero_checksum: bool,
) -> Vec<u8> {
    let ip = ipv4(src.0, dst.0, IpNumber::UDP, 8 + payload.len(), &[]);
    let udp = if zero_checksum {
        UdpHeader {
            source_port: src.1,
            destination_port: dst.1,
            length: (8 + payload.len()) as u16,
            checksum: 0,
        }
    } else {
        UdpHeader::with_ipv4_checksum(src.1, dst.1, &ip, payload).unwrap()
    };
    let mut out = Vec::new();
    eth().write(&mut out).unwrap();
    ip.write(&mut out).unwrap();
    udp.write(&mut out).unwrap();
    out.extend_from_slice(payload);
    out
}

/// An ICMP error of `kind` from `from` to `to`, quoting `quoted` (an
/// Ethernet frame whose IP packet is quoted from its IP header on,
/// `quote_len` bytes).
pub fn icmp_error(
    kind: Icmpv4Type,
    from: Ipv4Addr,
    to: Ipv4Addr,
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &quoted[14..14 + quote_len];
    let icmp = Icmpv4Header::with_checksum(kind, quote);
    let mut ip = Ipv4Header::new(
        (icmp.header_len() + quote.len()) as u16,
        64,
        IpNumber::ICMP,
        from.octets(),
        to.octets(),
    )
    .unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::new();
    Ethernet2Header {
        source: [2, 0, 0, 0, 0, 9],
        destination: [2, 0, 0, 0, 0, 2],
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    ip.write(&mut out).unwrap();
    icmp.write(&mut out).unwrap();
    out.extend_from_slice(quote);
    out
}

/// "Fragmentation needed" (next-hop MTU 1400), as `icmp_error` builds it.
pub fn frag_needed(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8], quote_len: usize) -> Vec<u8> {
    let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    });
    icmp_error(kind, from, to, quoted, quote_len)
}

/// Splits an IPv4 datagram (as an Ethernet frame) into two fragments at
/// `at` bytes of IP payload (a multiple of 8).
pub fn fragments(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    let (ip, payload) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let piece = |data: &[u8], offset: usize, more: bool| {
        let mut h = ip.clone();
        h.set_payload_len(data.len()).unwrap();
        h.more_fragments = more;
        h.fragment_offset = IpFragOffset::try_new((offset / 8) as u16).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut out = frame[..14].to_vec();
        h.write(&mut out).unwrap();
        out.extend_from_slice(data);
        out
    };
    (
        piece(&payload[..at], 0, true),
        piece(&payload[at..], at, false),
    )
}

/// An ARP request: anything that is not IPv4 must pass untouched.
pub fn arp_frame() -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: CLIENT_MAC,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    }
    .write(&mut out)
    .unwrap();
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&CLIENT_MAC);
    out.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    out
}

/// What a test asserts on: addresses, ports and checksum validity.
#[derive(Debug)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp: Option<TcpHeader>,
    pub udp_checksum: Option<u16>,
    pub icmp: Option<etherparse::Icmpv4Header>,
    pub icmp_payload: Vec<u8>,
    pub payload: Vec<u8>,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ttl: u8,
}

/// Parses an output frame and panics unless every checksum in it is right.
pub fn parse_checked(frame: &[u8]) -> Parsed {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("output frame parses");
    let Some(etherparse::LinkHeader::Ethernet2(eth)) = h.link else {
        panic!("no ethernet")
    };
    let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
        panic!("not ipv4")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = h.payload.slice().to_vec();
    let mut p = Parsed {
        src: ip.source.into(),
        dst: ip.destination.into(),
        sport: 0,
        dport: 0,
        proto: ip.protocol.0,
        tcp: None,
        udp_checksum: None,
        icmp: None,
        icmp_payload: Vec::new(),
        payload: payload.clone(),
        eth_src: eth.source,
        eth_dst: eth.destination,
        ttl: ip.time_to_live,
    };
    match h.transport {
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(&ip, &payload).unwrap(),
                "TCP checksum"
            );
            (p.sport, p.dport) = (t.source_port, t.destination_port);
            p.tcp = Some(t);
        }
        Some(TransportHeader::Udp(u)) => {
            if u.checksum != 0 {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(&ip, &payload).unwrap(),
                    "UDP checksum"
                );
            }
            (p.sport, p.dport) = (u.source_port, u.destination_port);
            p.udp_checksum = Some(u.checksum);
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(&payload),
                "ICMP checksum"
            );
            p.icmp = Some(i);
            p.icmp_payload = payload;
        }
        _ => panic!("unexpected transport"),
    }
    p
}
