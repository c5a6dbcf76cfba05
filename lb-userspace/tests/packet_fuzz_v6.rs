//! BPF_PROG_TEST_RUN tier, fuzzed: `packet_fuzz`'s campaign for IPv6.
//! Valid IPv6 frames of every kind the IPv6 path handles (TCP and UDP both
//! ways, source NAT, extension headers, fragments, ICMPv6 errors about
//! translated flows, rejects, answers for oversize and spent packets),
//! mutated by a seeded PRNG, through `lb` (XDP, also with no room left for
//! its metadata), `lb_pod`, `lb_ext` and `lb_tc`, which tail-call the IPv6
//! programs. A frame may be dropped, or passed untouched; one the program
//! sends on or changes must be as well-formed as its input was: nothing
//! half-rewritten, no byte written outside the fields a translation owns,
//! one off the hop limit exactly when the program routes it, and every
//! answer (TCP RST, ICMPv6 errors) whole.
//!
//! The oracle walks extension headers and sums checksums itself, over the
//! IPv6 pseudo-header, independently of the code under test.
mod common;

use std::{collections::BTreeSet, ops::Range};

use common::{
    external_v6,
    fuzz::{self, set_checksum, set_u16, sums_to_zero, translated, Checked, Family, Oracle},
    packets::split_meta,
    packets_v6::{addr, parse_checked, solicitation, tcp, udp},
};
use etherparse::{
    checksum::Sum16BitWords, icmpv6::DestUnreachableCode, IcmpEchoHeader, Icmpv6Type,
    PacketBuilder, TcpHeaderSlice,
};
use lb_common::{AnnounceKeyV6, AnnounceValue, PROTO_TCP, PROTO_UDP};
use lb_userspace::{datapath::Datapath, model::ModelOptions};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Mutated frames in CI, as many as IPv4's: about 5 s in a debug build on
/// two idle cores.
const DEFAULT_ITERS: u64 = 200_000;
const DEFAULT_SEED: u64 = 0x5eed_f066;

const PROTO_ICMPV6: u8 = 58;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_NONE: u8 = 59;
const NEXTHDR_DEST: u8 = 60;
/// Offsets in a frame: the IPv6 header's payload length, next header and
/// hop limit, and the end of the fixed header.
const PAYLOAD_LEN: usize = 18;
const NEXT_HDR: usize = 20;
const HOP_LIMIT: usize = 21;
const L3_END: usize = 54;

const NODE: &str = "fd00:10::1";
const VIP: &str = "fd00:96::10";
const EMPTY_VIP: &str = "fd00:96::20";
const BACKEND: (&str, u16) = ("fd00:244:2::2", 8080);
const CLIENT: &str = "fd00:244:1::7";
const OUTSIDER: &str = "2001:db8:7::7";
const ROUTER: &str = "fd00:250::fe";
/// A LoadBalancer address this node announces on the interface test runs
/// receive on (the loopback device, 1), and a neighbour asking for it.
const ANNOUNCED: &str = "fd00:10::200";
const ANNOUNCED_MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01];
const NEIGHBOUR: &str = "fd00:10::7";
/// `ranged`'s LB IP in `external_v6::MANIFESTS`.
const RANGED_LB_IP: &str = "fd00:50::12";
const NDP_SOLICIT: u8 = 135;
const NDP_ADVERT: u8 = 136;

/// A ClusterIP Service without endpoints, synced beside
/// `external_v6::MANIFESTS`: `web` (ClusterIP `VIP`, NodePort, LB IP and
/// externalIP, its endpoint `BACKEND` on another node, so outside clients
/// are source-NATed to `NODE`), `local` (policy Local, no endpoint here)
/// and `ranged` (open to `OUTSIDER`'s /64 only, its endpoint here).
const EMPTY_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIPs: ["fd00:96::20"]
  ipFamilies: [IPv6]
  ports:
    - {name: http, port: 80}
    - {name: dns, port: 53, protocol: UDP}
"#;

#[test]
fn mutated_ipv6_frames_are_passed_dropped_or_sent_well_formed() {
    fuzz::campaign(&Family {
        name: "IPv6",
        default_iters: DEFAULT_ITERS,
        default_seed: DEFAULT_SEED,
        // A resolved next hop for the backend and the outsider, none for
        // the client: both outcomes of the FIB lookup.
        resolved: "fd00:250::2",
        routes: &[
            ("fd00:244:1::/64", "fd00:250::3"),
            ("2001:db8:7::/64", "fd00:250::2"),
        ],
        data_plane,
        seeds,
        follow_cut,
        mutate,
        oracle: Oracle {
            ethertype: [0x86, 0xdd],
            min_len: L3_END,
            is_answer,
            check_answer,
            check_translation,
        },
    });
}

fn data_plane() -> Datapath {
    let opts = ModelOptions {
        nodeport_addresses_v6: vec![addr(NODE)],
        node_addresses_v6: vec![addr(NODE)],
        ..ModelOptions::default()
    };
    let manifests = format!("{}---{EMPTY_SERVICE}", external_v6::MANIFESTS);
    let mut dp = common::synced_with_snat_v6(&manifests, &opts);
    let key = AnnounceKeyV6 {
        addr: lb_common::addr::to_map_v6(addr(ANNOUNCED)),
        ifindex: 1,
    };
    let value = AnnounceValue {
        mac: ANNOUNCED_MAC,
        _pad: 0,
    };
    dp.maps.announce_v6_mut().insert(key, value, 0).unwrap();
    dp
}

/// Makes the payload length follow a cut.
fn follow_cut(cut: &mut [u8]) -> bool {
    if cut.len() < L3_END {
        return false;
    }
    let len = cut.len() - L3_END;
    set_u16(cut, PAYLOAD_LEN, len as u16);
    true
}

/// Valid frames of each kind; flows whose replies and ICMPv6 errors are
/// among them are set up on the way.
fn seeds(dp: &Datapath) -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    let unreachable = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };

    // TCP to the ClusterIP from outside (source NAT to the node), both
    // directions, and ICMPv6 errors from a router on either leg.
    let syn = tcp((CLIENT, 40000), (VIP, 80), true, b"hi");
    let fwd = translated(dp, &syn);
    let p = parse_checked(&fwd);
    let (snat, backend) = (p.src, p.dst);
    let syn_ack = tcp_between(backend, snat, true, b"ok");
    let back = translated(dp, &syn_ack);
    s.extend([
        syn,
        syn_ack,
        tcp((CLIENT, 40000), (VIP, 80), false, &[0x5a; 300]),
        tcp_between(backend, snat, false, b"data"),
        icmp6(too_big, ROUTER, &snat.0.to_string(), &fwd),
        icmp6(unreachable, BACKEND.0, &snat.0.to_string(), &fwd),
        icmp6(too_big, ROUTER, VIP, &back),
    ]);

    // UDP to the ClusterIP and its answer; behind extension headers; as
    // fragments; too big for up0; with its hop limit spent.
    let query = udp((CLIENT, 40001), (VIP, 53), b"query");
    let p = parse_checked(&translated(dp, &query));
    s.extend([
        udp_between(p.dst, p.src, b"answer"),
        with_ext(&query, NEXTHDR_DEST, 0),
        with_ext(&query, NEXTHDR_HOP, 1),
        query,
    ]);
    let (first, later) = fragments(&udp((CLIENT, 40002), (VIP, 53), &[0x5a; 1000]), 504);
    translated(dp, &first);
    s.extend([first, later]);
    let mut spent = udp((CLIENT, 40003), (VIP, 53), b"ttl");
    spent[HOP_LIMIT] = 1;
    s.extend([udp((CLIENT, 40003), (VIP, 53), &[7; 1400]), spent]);

    // The NodePort from another network, and its reply.
    let syn = tcp((OUTSIDER, 40004), (NODE, 31000), true, b"GET");
    let p = parse_checked(&translated(dp, &syn));
    s.extend([syn, tcp_between(p.dst, p.src, true, b"")]);

    // LoadBalancer IPs and the externalIP: open to all, Local without an
    // endpoint here, open to one /64 (from inside it and from outside).
    s.extend([
        tcp((OUTSIDER, 40007), (external_v6::LB_IP, 80), true, b""),
        udp((OUTSIDER, 40007), (external_v6::EXTERNAL_IP, 53), b"q"),
        tcp((OUTSIDER, 40007), (external_v6::LOCAL_LB_IP, 80), true, b""),
        tcp((OUTSIDER, 40008), (RANGED_LB_IP, 80), true, b""),
        tcp((CLIENT, 40008), (RANGED_LB_IP, 80), true, b""),
    ]);

    // Rejects: an unknown port, a Service without endpoints.
    s.extend([
        tcp((CLIENT, 40005), (VIP, 81), true, b""),
        tcp((CLIENT, 40005), (EMPTY_VIP, 80), true, b"abc"),
        udp((CLIENT, 40005), (EMPTY_VIP, 53), &[3; 16]),
    ]);

    // Neighbour solicitations for the announced address, with and without
    // the sender's link-layer address.
    let neighbour = addr(NEIGHBOUR);
    s.extend([
        solicitation(neighbour, addr(ANNOUNCED), 255, true),
        solicitation(neighbour, addr(ANNOUNCED), 255, false),
    ]);

    // Not ours: another address, an echo request to the VIP, a solicitation
    // for an address not announced.
    let echo = Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 });
    s.extend([
        tcp((CLIENT, 40006), ("fd00:1::3", 443), true, b""),
        icmp6(echo, CLIENT, VIP, &[0u8; 14 + 8]),
        solicitation(neighbour, addr(NODE), 255, true),
    ]);
    s
}

fn tcp_between(
    from: (std::net::Ipv6Addr, u16),
    to: (std::net::Ipv6Addr, u16),
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    tcp(
        (&from.0.to_string(), from.1),
        (&to.0.to_string(), to.1),
        syn,
        payload,
    )
}

fn udp_between(
    from: (std::net::Ipv6Addr, u16),
    to: (std::net::Ipv6Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    udp(
        (&from.0.to_string(), from.1),
        (&to.0.to_string(), to.1),
        payload,
    )
}

/// An ICMPv6 message from `from` to `to` quoting `packet` (an Ethernet
/// frame) from its IPv6 header on, as much as fits the minimum MTU.
fn icmp6(kind: Icmpv6Type, from: &str, to: &str, packet: &[u8]) -> Vec<u8> {
    let quote = &packet[14..packet.len().min(14 + 1232)];
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 1])
        .ipv6(addr(from).octets(), addr(to).octets(), 64)
        .icmpv6(kind)
        .write(&mut out, quote)
        .unwrap();
    out
}

/// `frame` with an extension header of kind `kind` and `(units + 1) * 8`
/// bytes (padding options) in front of its transport header.
fn with_ext(frame: &[u8], kind: u8, units: u8) -> Vec<u8> {
    let mut ext = vec![0u8; (usize::from(units) + 1) * 8];
    ext[0] = frame[NEXT_HDR];
    ext[1] = units;
    // PadN over the rest of the header.
    ext[2] = 1;
    ext[3] = (ext.len() - 4) as u8;
    let mut out = frame[..L3_END].to_vec();
    out[NEXT_HDR] = kind;
    let len =
        u16::from_be_bytes([out[PAYLOAD_LEN], out[PAYLOAD_LEN + 1]]).wrapping_add(ext.len() as u16);
    set_u16(&mut out, PAYLOAD_LEN, len);
    out.extend_from_slice(&ext);
    out.extend_from_slice(&frame[L3_END..]);
    out
}

/// The first and the second fragment of `frame` (no extension headers),
/// split `at` bytes into its transport segment (a multiple of 8).
fn fragments(frame: &[u8], at: usize) -> (Vec<u8>, Vec<u8>) {
    let segment = &frame[L3_END..];
    let piece = |data: &[u8], offset: usize, more: bool| {
        let mut out = frame[..L3_END].to_vec();
        out[NEXT_HDR] = NEXTHDR_FRAGMENT;
        set_u16(&mut out, PAYLOAD_LEN, (8 + data.len()) as u16);
        let field = (offset as u16) | u16::from(more);
        out.extend_from_slice(&[frame[NEXT_HDR], 0]);
        out.extend_from_slice(&field.to_be_bytes());
        out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        out.extend_from_slice(data);
        out
    };
    (
        piece(&segment[..at], 0, true),
        piece(&segment[at..], at, false),
    )
}

/// Where a frame's IPv6 packet ends and its transport header starts, as
/// this test walks the extension headers.
struct Walked {
    /// The end of the packet by its payload length, or of the frame if
    /// that is shorter (`truncated`).
    end: usize,
    truncated: bool,
    /// The transport header's offset and protocol, unless the walk stopped
    /// before one (no next header, an unknown one, too many).
    l4: Option<(usize, u8)>,
    /// Part of a fragmented datagram: no transport checksum to check (a
    /// fragment after the first has no transport header at all).
    fragment: bool,
}

/// Extension headers walked before giving up, far more than the program's.
const MAX_EXT: usize = 8;

/// Ways a frame with an IPv6 header can be malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Defect {
    /// Too short for the fixed header, or not version 6.
    IpHeader,
    /// The payload length runs past the frame.
    Truncated,
    /// An extension header runs past the packet.
    ExtHeader,
    /// The transport header does not fit in the packet.
    L4Header,
    L4Checksum,
    UdpLength,
}

fn walk(f: &[u8]) -> Result<Walked, Defect> {
    walk_within(f, false)
}

/// The transport header as the program finds it: it checks headers
/// against the frame's end, not the payload length (a packet whose
/// length does not cover them is the kernel's to drop, as with IPv4's
/// total length).
fn l4_in_frame(f: &[u8]) -> Option<(usize, u8)> {
    walk_within(f, true).ok().and_then(|w| w.l4)
}

/// `walk`, bounded by the frame's end rather than the payload length when
/// `by_frame`.
fn walk_within(f: &[u8], by_frame: bool) -> Result<Walked, Defect> {
    if f.len() < L3_END || f[14] >> 4 != 6 {
        return Err(Defect::IpHeader);
    }
    let declared = if by_frame {
        f.len()
    } else {
        L3_END + usize::from(u16::from_be_bytes([f[PAYLOAD_LEN], f[PAYLOAD_LEN + 1]]))
    };
    let (end, truncated) = (declared.min(f.len()), declared > f.len());
    let (mut next, mut at) = (f[NEXT_HDR], L3_END);
    let (mut fragment, mut later_fragment) = (false, false);
    for _ in 0..MAX_EXT {
        let len = match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST if at + 2 <= end => {
                (usize::from(f[at + 1]) + 1) * 8
            }
            NEXTHDR_FRAGMENT if at + 8 <= end => {
                let field = u16::from_be_bytes([f[at + 2], f[at + 3]]);
                fragment = true;
                later_fragment |= field & 0xfff8 != 0;
                8
            }
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT => {
                return Err(Defect::ExtHeader)
            }
            proto => {
                let l4 = [PROTO_TCP, PROTO_UDP, PROTO_ICMPV6].contains(&proto);
                return Ok(Walked {
                    end,
                    truncated,
                    l4: (l4 && !later_fragment).then_some((at, proto)),
                    fragment,
                });
            }
        };
        if at + len > end {
            return Err(Defect::ExtHeader);
        }
        (next, at) = (f[at], at + len);
    }
    Ok(Walked {
        end,
        truncated,
        l4: None,
        fragment,
    })
}

/// Everything wrong with `f`, checked independently of the code under
/// test: checksums are summed from scratch over what the payload length
/// bounds, with the pseudo-header.
fn defects(f: &[u8]) -> BTreeSet<Defect> {
    let mut d = BTreeSet::new();
    let w = match walk(f) {
        Ok(w) => w,
        Err(e) => {
            d.insert(e);
            return d;
        }
    };
    if w.truncated {
        // What is missing cannot be summed.
        d.insert(Defect::Truncated);
        return d;
    }
    let Some((at, proto)) = w.l4 else {
        return d;
    };
    let l4 = &f[at..w.end];
    let fits = match proto {
        PROTO_TCP => TcpHeaderSlice::from_slice(l4).is_ok(),
        _ => l4.len() >= 8,
    };
    if !fits {
        d.insert(Defect::L4Header);
        return d;
    }
    if proto == PROTO_UDP && usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() {
        d.insert(Defect::UdpLength);
    }
    // A first fragment's checksum covers bytes it does not hold.
    if !w.fragment && !sums_to_zero(&[&pseudo_header(f, l4.len(), proto), l4]) {
        d.insert(Defect::L4Checksum);
    }
    d
}

/// The IPv6 pseudo-header of frame `f` for `len` bytes of protocol `proto`.
fn pseudo_header(f: &[u8], len: usize, proto: u8) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..32].copy_from_slice(&f[22..L3_END]);
    p[32..36].copy_from_slice(&(len as u32).to_be_bytes());
    p[39] = proto;
    p
}

/// An answer the program built in place of `input` (TCP RST, ICMPv6
/// error) rather than `input` translated: translations keep the length and
/// the headers, and never set RST.
fn is_answer(input: &[u8], out: &[u8]) -> bool {
    let rst = |f: &[u8]| {
        l4_in_frame(f).is_some_and(|(at, proto)| {
            proto == PROTO_TCP && f.get(at + 13).is_some_and(|flags| flags & 0x04 != 0)
        })
    };
    out.len() != input.len()
        || out.get(NEXT_HDR) != input.get(NEXT_HDR)
        || (rst(out) && !rst(input))
        || (icmp_type(out) == Some(NDP_ADVERT) && icmp_type(input) != Some(NDP_ADVERT))
}

/// The type of the ICMPv6 message right after the fixed header, if any.
fn icmp_type(f: &[u8]) -> Option<u8> {
    (f.get(NEXT_HDR) == Some(&PROTO_ICMPV6))
        .then(|| f.get(L3_END).copied())
        .flatten()
}

fn check_answer(input: &[u8], out: &[u8]) -> Checked {
    if icmp_type(out) == Some(NDP_ADVERT) {
        return check_advert(input, out);
    }
    let d = defects(out);
    if !d.is_empty() {
        return Err(("malformed answer", format!("{d:?}")));
    }
    let Ok(Walked {
        l4: Some((at, proto)),
        end,
        ..
    }) = walk(out)
    else {
        return Err(("answer without a transport header", String::new()));
    };
    if out[0..6] != input[6..12] || out[6..12] != input[0..6] {
        return Err(("answer not sent back", "MACs not swapped".into()));
    }
    if out[22..38] != input[38..54] || out[38..54] != input[22..38] {
        return Err(("answer not sent back", "addresses not swapped".into()));
    }
    // Built here with a fresh hop limit, whoever sends it on.
    if out[HOP_LIMIT] != 64 {
        return Err(("answer's hop limit", format!("{}", out[HOP_LIMIT])));
    }
    match proto {
        PROTO_ICMPV6 => {
            let quote = &out[at + 8..end];
            // Unreachable, Packet Too Big, or hop limit exceeded for an
            // input whose hop limit is spent.
            let kind = matches!(out[at], 1 | 2) || (out[at] == 3 && input[HOP_LIMIT] <= 1);
            if !kind || input.get(14..14 + quote.len()) != Some(quote) {
                return Err((
                    "bad ICMPv6 answer",
                    "not an error quoting the input as sent".into(),
                ));
            }
        }
        PROTO_TCP => {
            let Some((their_at, _)) = l4_in_frame(input) else {
                return Err(("bad TCP answer", "to no TCP segment".into()));
            };
            let ports = |f: &[u8], at: usize| [f[at..at + 2].to_vec(), f[at + 2..at + 4].to_vec()];
            let (theirs, ours) = (ports(input, their_at), ports(out, at));
            if ours[0] != theirs[1] || ours[1] != theirs[0] {
                return Err(("bad TCP answer", "ports not swapped".into()));
            }
        }
        proto => return Err(("bad answer", format!("protocol {proto}"))),
    }
    Ok(())
}

/// An advertisement answers only a valid solicitation from the link (RFC
/// 4861 7.1.1: hop limit 255, a specified source, a valid checksum, code
/// 0) for the announced address, sent to the announced MAC or to the
/// address's solicited-node group, and says that address is at the
/// announced MAC, to the solicitation's sender, built in place.
fn check_advert(input: &[u8], out: &[u8]) -> Checked {
    const AT: usize = L3_END;
    let valid = icmp_type(input) == Some(NDP_SOLICIT)
        && input[AT + 1] == 0
        && input[HOP_LIMIT] == 255
        && input[22..38] != [0; 16]
        && walk(input).is_ok_and(|w| w.end >= AT + 24)
        && defects(input).is_empty();
    if !valid {
        return Err(("advertised for an invalid solicitation", String::new()));
    }
    let target = &input[AT + 8..AT + 24];
    let group = [0x33, 0x33, 0xff, target[13], target[14], target[15]];
    if input[0..6] != ANNOUNCED_MAC && input[0..6] != group {
        return Err((
            "advertised for a solicitation to another host",
            fuzz::hex(&input[0..6]),
        ));
    }
    if target != addr(ANNOUNCED).octets() {
        return Err(("advertised an address not announced", fuzz::hex(target)));
    }
    let d = defects(out);
    if !d.is_empty() {
        return Err(("malformed advertisement", format!("{d:?}")));
    }
    if out.len() != input.len() || out[0..6] != input[6..12] || out[6..12] != ANNOUNCED_MAC {
        return Err(("advertisement not sent back", "length or MACs".into()));
    }
    if out[22..38] != *target || out[38..54] != input[22..38] || out[HOP_LIMIT] != 255 {
        return Err((
            "advertisement not sent back",
            "addresses or hop limit".into(),
        ));
    }
    if out[AT + 1] != 0 || out[AT + 4..AT + 8] != [0x60, 0, 0, 0] || out[AT + 8..AT + 24] != *target
    {
        return Err(("bad advertisement", "code, flags or target".into()));
    }
    let end = walk(out).map_or(0, |w| w.end);
    if end >= AT + 32 && (out[AT + 24..AT + 26] != [2, 1] || out[AT + 26..AT + 32] != ANNOUNCED_MAC)
    {
        return Err(("bad advertisement", "target link-layer address".into()));
    }
    Ok(())
}

/// A translation writes only the fields it owns and breaks nothing
/// (`fuzz::check_rewrite`).
fn check_translation(input: &[u8], out: &[u8], sent: bool) -> Checked {
    let mut broke: BTreeSet<Defect> = defects(out).difference(&defects(input)).copied().collect();
    if partial_lookalike(input) {
        broke.remove(&Defect::L4Checksum);
    }
    fuzz::check_rewrite(input, out, sent, HOP_LIMIT, writable(input), broke)
}

/// What a translation may change in `f`: the MACs and the addresses; in a
/// packet with a transport header, its ports and checksum; in an ICMPv6
/// error, its checksum and the quoted addresses, ports and checksum,
/// inside the packet (a frame's trailer is no part of it).
fn writable(f: &[u8]) -> Vec<Range<usize>> {
    let mut w = vec![0..12, 22..L3_END];
    let Some((at, proto)) = l4_in_frame(f) else {
        return w;
    };
    let end = walk(f).map_or(f.len(), |x| x.end);
    match proto {
        PROTO_TCP => w.extend([at..at + 4, at + 16..at + 18]),
        PROTO_UDP => w.extend([at..at + 4, at + 6..at + 8]),
        _ => {
            let inner = at + 8;
            let inner_l4 = inner + 40;
            let inner_check = match f.get(inner + 6) {
                Some(&PROTO_UDP) => inner_l4 + 6..inner_l4 + 8,
                Some(&PROTO_TCP) => inner_l4 + 16..inner_l4 + 18,
                _ => 0..0,
            };
            for r in [
                at + 2..at + 4,
                inner + 8..inner + 40,
                inner_l4..inner_l4 + 4,
                inner_check,
            ] {
                w.push(r.start.min(end)..r.end.min(end));
            }
        }
    }
    w
}

/// A complete checksum the program takes for a partial one
/// (`fuzz::holds_pseudo_sum`).
fn partial_lookalike(f: &[u8]) -> bool {
    let Some((at, proto, end)) = walk(f).ok().and_then(|x| x.l4.map(|(a, p)| (a, p, x.end))) else {
        return false;
    };
    let field = match proto {
        PROTO_TCP => at + 16,
        PROTO_UDP => at + 6,
        _ => return false,
    };
    f.get(field..field + 2)
        .is_some_and(|check| fuzz::holds_pseudo_sum(check, &pseudo_header(f, end - at, proto)))
}

/// Applies one to three mutations, then sometimes makes the transport
/// checksum right again, so the frame reaches past the program's checks
/// and its output must be fully valid.
fn mutate(rng: &mut ChaCha8Rng, f: &mut Vec<u8>) {
    const INTERESTING: [u8; 8] = [0, 1, 0x40, 0x60, 0x7f, 0x80, 0xfe, 0xff];
    const NEXT: [u8; 8] = [
        NEXTHDR_HOP,
        PROTO_TCP,
        PROTO_UDP,
        NEXTHDR_ROUTING,
        NEXTHDR_FRAGMENT,
        PROTO_ICMPV6,
        NEXTHDR_NONE,
        NEXTHDR_DEST,
    ];
    for _ in 0..rng.random_range(1..=3) {
        let (l4, proto) = walk(f)
            .ok()
            .and_then(|w| w.l4)
            .unwrap_or((L3_END, f.get(NEXT_HDR).copied().unwrap_or(0)));
        match rng.random_range(0..13) {
            // Headers (Ethernet, IPv6, extensions, transport, a quote)
            // are where parsing happens; the rest is payload.
            0..4 => fuzz::mutate_bytes(rng, f, L3_END + 48 + 48 + 20, &INTERESTING),
            4 if f.len() > 14 => {
                let version = if rng.random_ratio(1, 8) {
                    rng.random_range(0..16u8)
                } else {
                    6
                };
                f[14] = version << 4 | (f[14] & 0x0f);
            }
            5 if f.len() >= L3_END => {
                let now = usize::from(u16::from_be_bytes([f[PAYLOAD_LEN], f[PAYLOAD_LEN + 1]]));
                let len = match rng.random_range(0..5) {
                    0 => rng.random_range(0..64),
                    1 => now
                        .saturating_add(rng.random_range(0..=16))
                        .saturating_sub(8),
                    2 => f.len() - L3_END + rng.random_range(0..4),
                    3 => 0xffff,
                    _ => rng.random_range(0..=0xffff),
                };
                set_u16(f, PAYLOAD_LEN, len as u16);
            }
            6 if f.len() > NEXT_HDR => {
                f[NEXT_HDR] = if rng.random_ratio(7, 8) {
                    NEXT[rng.random_range(0..NEXT.len())]
                } else {
                    rng.random()
                };
            }
            7 if f.len() > HOP_LIMIT => {
                f[HOP_LIMIT] = [0, 1, 2, 64, 255, rng.random()][rng.random_range(0..6)];
            }
            8 if f.len() >= L3_END => {
                let kind = [NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_DEST]
                    [rng.random_range(0..4)];
                let mut out = with_ext(f, kind, rng.random_range(0..3));
                if kind == NEXTHDR_FRAGMENT {
                    // Not a length but offset, flags and an id.
                    out[L3_END + 1] = 0;
                    let field = rng.random_range(0..4u16) << 3 | rng.random_range(0..2u16);
                    set_u16(&mut out, L3_END + 2, field);
                }
                *f = out;
            }
            9 if proto == PROTO_TCP && f.len() > l4 + 12 => {
                f[l4 + 12] = rng.random_range(0..16u8) << 4 | (f[l4 + 12] & 0x0f);
            }
            10 if proto == PROTO_UDP && f.len() >= l4 + 6 => {
                let len = [0, 7, 8, rng.random(), (f.len() - l4) as u16];
                set_u16(f, l4 + 4, len[rng.random_range(0..len.len())]);
            }
            11 if f.len() >= l4 + 2 => {
                f[l4] = [1, 2, 3, 4, 128, 129, 135, 136, rng.random()][rng.random_range(0..9)];
                f[l4 + 1] = rng.random_range(0..8);
            }
            12 if f.len() >= l4 + 8 + 40 => {
                let inner = l4 + 8;
                if rng.random() {
                    f[inner] = [0x60, 0x40, 0x6f, rng.random()][rng.random_range(0..4)];
                } else {
                    f[inner + 6] = NEXT[rng.random_range(0..NEXT.len())];
                }
            }
            _ => {}
        }
    }
    if rng.random_ratio(2, 5) {
        fix_l4_checksum(f);
    }
    // A frame starting like an `XdpMeta` would be read as one in XDP's output.
    if split_meta(f).0.is_some() {
        f[0] ^= 1;
    }
}

/// Over the transport segment as the payload length bounds it.
fn fix_l4_checksum(f: &mut [u8]) {
    let Some((at, proto, end)) = walk(f).ok().and_then(|x| x.l4.map(|(a, p)| (a, p, x.end))) else {
        return;
    };
    let field = match proto {
        PROTO_TCP if end >= at + 18 => at + 16,
        PROTO_UDP if end >= at + 8 => at + 6,
        PROTO_ICMPV6 if end >= at + 4 => at + 2,
        _ => return,
    };
    set_checksum(f, field, |f| {
        Sum16BitWords::new()
            .add_slice(&pseudo_header(f, end - at, proto))
            .add_slice(&f[at..end])
    });
    if proto == PROTO_UDP && f[field..field + 2] == [0, 0] {
        f[field..field + 2].fill(0xff);
    }
}

#[test]
fn the_oracle_walks_extension_headers_and_checksums_itself() {
    let query = udp((CLIENT, 40001), (VIP, 53), b"query");
    assert!(defects(&query).is_empty());
    let ext = with_ext(&query, NEXTHDR_DEST, 1);
    let w = walk(&ext).unwrap();
    assert_eq!(w.l4, Some((L3_END + 16, PROTO_UDP)));
    assert!(defects(&ext).is_empty(), "{:?}", defects(&ext));
    let (first, later) = fragments(&query, 8);
    assert_eq!(walk(&first).unwrap().l4, Some((L3_END + 8, PROTO_UDP)));
    assert_eq!(walk(&later).unwrap().l4, None);
    let mut broken = query.clone();
    *broken.last_mut().unwrap() ^= 1;
    assert_eq!(defects(&broken), BTreeSet::from([Defect::L4Checksum]));
    fix_l4_checksum(&mut broken);
    assert!(defects(&broken).is_empty());
}
