//! BPF_PROG_TEST_RUN tier, fuzzed: valid IPv4 frames of every kind the
//! packet path handles, mutated by a seeded PRNG, through `lb` (XDP, also
//! with no room left for its metadata), `lb_pod`, `lb_ext` and `lb_tc`
//! (tc); `packet_fuzz_v6` does the same for IPv6. A frame may be dropped,
//! or passed untouched; one the program sends on (XDP_TX, XDP_REDIRECT,
//! TC_ACT_REDIRECT, or a pass with metadata for tc) or changes must be as
//! well-formed as its input was: nothing half-rewritten, no byte written
//! outside the fields a translation owns, and every answer the program
//! builds (TCP RST, ICMP unreachable) whole.
//!
//! `XDPLB_FUZZ_ITERS` and `XDPLB_FUZZ_SEED` replace the CI budget and seed
//! (`cargo xtask fuzz --soak`). A failure names the seed, the iteration and
//! the input in hex. The same seed produces the same inputs; what the maps
//! hold when one arrives also depends on time (flow expiry) and on the
//! kernel's random SNAT port probes.
mod common;

use std::{collections::BTreeSet, net::Ipv4Addr, ops::Range};

use common::{
    be,
    fuzz::{self, set_checksum, set_u16, sums_to_zero, translated, Failure, Family, Oracle},
    load,
    packets::{
        arp_frame, frag_needed, fragments, icmp_error, parse_checked, split_meta, tcp_frame,
        udp_frame, Tcp,
    },
    source_range, Provision,
};
use etherparse::{
    checksum::Sum16BitWords,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    IcmpEchoHeader, Icmpv4Type, IpNumber, Ipv4HeaderSlice, TcpHeaderSlice,
};
use lb_common::{
    Config, FrontendValue, BE_LOCAL, FE_EXTERNAL, FE_SOURCE_RANGES, PROTO_TCP, PROTO_UDP,
};
use lb_userspace::{datapath::Datapath, sync::NodeMaps};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Mutated frames in CI: a debug build takes about 10 s on two idle cores,
/// 25 s on two busy ones.
const DEFAULT_ITERS: u64 = 200_000;
const DEFAULT_SEED: u64 = 0x5eed_f022;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 254);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Behind a next hop with no neighbour entry.
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 2), 8080);
/// Behind `up0`'s resolved next hop, with its small MTU.
const B2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 2), 8080);
const B2_DNS: (Ipv4Addr, u16) = (B2.0, 5353);
/// No route: the kernel's to deal with.
const B3: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 3, 2), 3000);

#[test]
fn mutated_frames_are_passed_dropped_or_sent_well_formed() {
    fuzz::campaign(&Family {
        name: "IPv4",
        default_iters: DEFAULT_ITERS,
        default_seed: DEFAULT_SEED,
        // A resolved next hop for B2 and the clients, none for B1, no
        // route for B3: every outcome of the FIB lookup.
        resolved: "10.250.0.2",
        routes: &[
            ("10.244.1.0/24", "10.250.0.3"),
            ("198.51.100.0/24", "10.250.0.2"),
            ("203.0.113.0/24", "10.250.0.2"),
        ],
        data_plane: provisioned,
        seeds,
        follow_cut,
        mutate,
        oracle: Oracle {
            ethertype: [0x08, 0x00],
            min_len: 34,
            is_answer,
            check_answer,
            check_translation,
        },
    });
}

/// Makes tot_len (and the IPv4 checksum) follow a cut.
fn follow_cut(cut: &mut [u8]) -> bool {
    if cut.len() < 34 {
        return false;
    }
    let len = cut.len();
    set_u16(cut, 16, (len - 14) as u16);
    fix_ip_checksum(cut);
    true
}

/// Services of every kind the agent writes, on a node with SNAT: a
/// ClusterIP (TCP and UDP), NodePorts with remote backends, a ClusterIP
/// without backends (rejects), and a LoadBalancer IP with source ranges
/// and affinity.
fn provisioned() -> Datapath {
    let mut dp = load();
    let cfg = Config {
        snat_addr: be(NODE),
        ..Config::DEFAULT
    };
    dp.maps.put_config(cfg).unwrap();
    let mut p = Provision::new();
    p.service(&mut dp, 1, (VIP, 80), PROTO_TCP, &[B1, B2]);
    p.service(&mut dp, 2, (VIP, 53), PROTO_UDP, &[B2_DNS]);
    let external = FrontendValue {
        flags: FE_EXTERNAL,
        ..Default::default()
    };
    p.service_with(&mut dp, 3, (NODE, 31000), PROTO_TCP, &[B3], 0, external);
    p.service_with(&mut dp, 4, (NODE, 31001), PROTO_UDP, &[B2_DNS], 0, external);
    p.service(&mut dp, 5, (EMPTY_VIP, 80), PROTO_TCP, &[]);
    p.service(&mut dp, 6, (EMPTY_VIP, 53), PROTO_UDP, &[]);
    let lb = FrontendValue {
        flags: FE_EXTERNAL | FE_SOURCE_RANGES,
        affinity_timeout_s: 60,
        ..Default::default()
    };
    p.service_with(&mut dp, 7, (LB_IP, 443), PROTO_TCP, &[B1], BE_LOCAL, lb);
    source_range(&mut dp, 7, Ipv4Addr::new(198, 51, 100, 0), 24);
    // NodePorts live on node addresses, which the agent never marks as
    // frontend addresses.
    dp.maps.addrs_mut().remove(&be(NODE)).unwrap();
    dp
}

/// Valid frames of each kind; flows whose replies and ICMP errors are
/// among them are set up on the way.
fn seeds(dp: &Datapath) -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    let port_unreachable = || Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let ttl_exceeded = Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit);

    // TCP to the ClusterIP: both directions, and ICMP errors from a router
    // on either leg about the translated packets.
    let client = (CLIENT, 40000);
    let syn = tcp_frame(client, (VIP, 80), Tcp::syn(), b"hi", &[]);
    let fwd = translated(dp, &syn);
    let p = parse_checked(&fwd);
    let backend = (p.dst, p.dport);
    let syn_ack = tcp_frame(backend, client, Tcp::syn_ack(), b"ok", &[]);
    let back = translated(dp, &syn_ack);
    let rst = Tcp {
        rst: true,
        ..Tcp::ack()
    };
    s.extend([
        syn,
        syn_ack,
        tcp_frame(client, (VIP, 80), Tcp::ack(), &[0x5a; 300], &[]),
        tcp_frame(backend, client, Tcp::ack(), b"data", &[]),
        tcp_frame(client, (VIP, 80), rst, b"", &[]),
        frag_needed(ROUTER, CLIENT, &fwd, 20 + 8),
        icmp_error(ttl_exceeded, ROUTER, CLIENT, &fwd, 20 + 20),
        icmp_error(port_unreachable(), ROUTER, VIP, &back, back.len() - 14),
        // With IP options.
        tcp_frame(
            (CLIENT, 40100),
            (VIP, 80),
            Tcp::syn(),
            b"x",
            &[7, 7, 4, 0, 0, 0, 0, 1],
        ),
        // A pod reaching the Service it backs (hairpin).
        tcp_frame((B1.0, 45000), (VIP, 80), Tcp::syn(), b"", &[]),
    ]);

    // UDP to the ClusterIP, with and without a checksum, and the backend's
    // port unreachable.
    let client = (CLIENT, 40001);
    let query = udp_frame(client, (VIP, 53), b"query", false);
    let fwd = translated(dp, &query);
    let answer = udp_frame(B2_DNS, client, b"answer", false);
    translated(dp, &answer);
    s.extend([
        query,
        udp_frame(client, (VIP, 53), b"query", true),
        answer,
        icmp_error(port_unreachable(), B2_DNS.0, CLIENT, &fwd, 20 + 8),
    ]);
    // Bigger than up0's MTU: fragmentation needed with DF, else the kernel
    // fragments.
    let big = udp_frame(client, (VIP, 53), &[7; 1400], false);
    let mut no_df = big.clone();
    no_df[20] &= !0x40;
    fix_ip_checksum(&mut no_df);
    s.extend([big, no_df]);
    // Fragments: the later one follows the first's translation.
    let (first, later) = fragments(
        &udp_frame((CLIENT, 40002), (VIP, 53), &[0x5a; 1000], false),
        504,
    );
    translated(dp, &first);
    s.extend([first, later]);

    // NodePorts: source NAT to the node, replies, and ICMP errors on both
    // legs.
    let client = (CLIENT, 40003);
    let syn = tcp_frame(client, (NODE, 31000), Tcp::syn(), b"GET", &[]);
    let fwd = translated(dp, &syn);
    let p = parse_checked(&fwd);
    let syn_ack = tcp_frame(B3, (p.src, p.sport), Tcp::syn_ack(), &[1; 40], &[]);
    let back = translated(dp, &syn_ack);
    s.extend([
        syn,
        syn_ack,
        icmp_error(port_unreachable(), ROUTER, NODE, &fwd, 20 + 8),
        frag_needed(ROUTER, NODE, &back, 20 + 28),
    ]);
    let datagram = udp_frame(client, (NODE, 31001), b"ping", false);
    let p = parse_checked(&translated(dp, &datagram));
    s.extend([
        datagram,
        udp_frame(B2_DNS, (p.src, p.sport), b"pong", false),
    ]);

    // Rejects: an unknown port, frontends without backends; source ranges.
    s.extend([
        tcp_frame((CLIENT, 40004), (VIP, 81), Tcp::syn(), b"", &[]),
        tcp_frame((CLIENT, 40004), (EMPTY_VIP, 80), Tcp::syn(), b"abc", &[]),
        udp_frame((CLIENT, 40004), (EMPTY_VIP, 53), &[3; 16], false),
        tcp_frame((CLIENT, 40005), (LB_IP, 443), Tcp::syn(), b"", &[]),
        tcp_frame((OUTSIDER, 40005), (LB_IP, 443), Tcp::syn(), b"", &[]),
    ]);

    // Not ours: another address, an echo request, ARP, a VLAN tag (which
    // the program leaves to the kernel).
    let other = tcp_frame(
        (CLIENT, 40006),
        (Ipv4Addr::new(10, 1, 2, 3), 443),
        Tcp::syn(),
        b"",
        &[],
    );
    let echo = Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 });
    let mut vlan = other[..12].to_vec();
    vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    vlan.extend_from_slice(&other[12..]);
    s.extend([
        icmp_error(echo, CLIENT, VIP, &other, 20),
        other,
        arp_frame(),
        vlan,
    ]);
    s
}

/// An answer the program built in place of `input` (TCP RST, ICMP
/// unreachable) rather than `input` translated: translations keep the
/// length and the protocol, and never set RST.
fn is_answer(input: &[u8], out: &[u8]) -> bool {
    let rst = |f: &[u8]| {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        f[23] == PROTO_TCP && f.get(14 + ihl + 13).is_some_and(|flags| flags & 0x04 != 0)
    };
    out.len() != input.len() || out.get(23) != input.get(23) || (rst(out) && !rst(input))
}

fn check_answer(input: &[u8], out: &[u8]) -> Result<(), Failure> {
    if out.len() < 54 {
        return Err(("answer too short", String::new()));
    }
    let mut d = defects(out);
    // An answer quotes the input's IPv4 header and trusts its checksum
    // (a valid header adds nothing to the ICMP checksum), as the kernel
    // would have dropped the input otherwise.
    let header = input.get(14..14 + usize::from(input[14] & 0x0f) * 4);
    if header.is_some_and(|h| !sums_to_zero(&[h])) {
        d.remove(&Defect::IcmpChecksum);
        d.remove(&Defect::InnerIpChecksum);
    }
    if !d.is_empty() {
        return Err(("malformed answer", format!("{d:?}")));
    }
    if out[0..6] != input[6..12] || out[6..12] != input[0..6] {
        return Err(("answer not sent back", "MACs not swapped".into()));
    }
    if out[26..30] != input[30..34] || out[30..34] != input[26..30] {
        return Err(("answer not sent back", "addresses not swapped".into()));
    }
    // Built here with a fresh TTL, whoever sends it on.
    if out[22] != 64 {
        return Err(("answer's TTL", format!("{}", out[22])));
    }
    match out[23] {
        1 => {
            let quote = &out[42..];
            // Destination unreachable, or time exceeded in transit for an
            // input whose TTL is spent.
            let kind = (out[34] == 3) || (out[34..36] == [11, 0] && input[22] <= 1);
            if !kind || input.get(14..14 + quote.len()) != Some(quote) {
                return Err((
                    "bad ICMP answer",
                    "not unreachable or time exceeded quoting the input as sent".into(),
                ));
            }
        }
        6 => {
            let l4 = 14 + usize::from(input[14] & 0x0f) * 4;
            let ports = input.get(l4..l4 + 4).unwrap_or_default();
            if ports.len() < 4 || out[34..36] != ports[2..] || out[36..38] != ports[..2] {
                return Err(("bad TCP answer", "ports not swapped".into()));
            }
        }
        proto => return Err(("bad answer", format!("protocol {proto}"))),
    }
    Ok(())
}

/// A translation writes only the fields it owns and breaks nothing
/// (`fuzz::check_rewrite`).
fn check_translation(input: &[u8], out: &[u8], sent: bool) -> Result<(), Failure> {
    const TTL: usize = 22;
    let mut broke: BTreeSet<Defect> = defects(out).difference(&defects(input)).copied().collect();
    if partial_lookalike(input) {
        broke.remove(&Defect::L4Checksum);
    }
    fuzz::check_rewrite(input, out, sent, TTL, writable(input), broke)
}

/// What a translation may change in `f`: the MACs, the IPv4 addresses and
/// checksum; in a packet with a transport header, its ports and checksum;
/// in an ICMP error, its checksum and the quoted addresses, ports and
/// checksums, inside the IP packet (a frame's trailer is no part of it).
/// Read from the raw bytes, as the program reads them.
fn writable(f: &[u8]) -> Vec<Range<usize>> {
    let mut w = vec![0..12, 24..34];
    let later_fragment = u16::from_be_bytes([f[20], f[21]]) & 0x1fff != 0;
    if later_fragment {
        return w;
    }
    let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
    match f[23] {
        PROTO_TCP => w.extend([l4..l4 + 4, l4 + 16..l4 + 18]),
        PROTO_UDP => w.extend([l4..l4 + 4, l4 + 6..l4 + 8]),
        1 => {
            let end = 14 + usize::from(u16::from_be_bytes([f[16], f[17]]));
            let inner = l4 + 8;
            let inner_check = match f.get(inner + 9) {
                Some(&PROTO_UDP) => inner + 26..inner + 28,
                Some(&PROTO_TCP) => inner + 36..inner + 38,
                _ => 0..0,
            };
            for r in [l4 + 2..l4 + 4, inner + 10..inner + 24, inner_check] {
                w.push(r.start.min(end)..r.end.min(end));
            }
        }
        _ => {}
    }
    w
}

/// Ways a frame with an IPv4 header can be malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Defect {
    /// etherparse refuses the IPv4 header (version, IHL), or its total
    /// length is shorter than the header.
    IpHeader,
    IpChecksum,
    /// The total length runs past the frame.
    Truncated,
    /// The transport header does not fit in the IP packet.
    L4Header,
    L4Checksum,
    UdpLength,
    IcmpChecksum,
    /// An ICMP error's quoted IPv4 header.
    InnerIpChecksum,
}

/// Everything wrong with `f`, checked independently of the code under test:
/// etherparse parses, checksums are summed from scratch, and each covers
/// what its protocol says, bounded by the IPv4 total length rather than the
/// frame's end.
fn defects(f: &[u8]) -> BTreeSet<Defect> {
    use Defect::*;
    let mut d = BTreeSet::new();
    let Ok(ip) = Ipv4HeaderSlice::from_slice(&f[14..]) else {
        d.insert(IpHeader);
        return d;
    };
    if !sums_to_zero(&[ip.slice()]) {
        d.insert(IpChecksum);
    }
    let (start, end) = (14 + ip.slice().len(), 14 + usize::from(ip.total_len()));
    if end < start {
        d.insert(IpHeader);
        return d;
    }
    if end > f.len() {
        // What is missing cannot be summed.
        d.insert(Truncated);
        return d;
    }
    if ip.fragments_offset().value() != 0 {
        return d;
    }
    let l4 = &f[start..end];
    // A first fragment's transport checksum covers bytes it does not hold.
    let whole = !ip.more_fragments();
    match ip.protocol() {
        IpNumber::TCP => {
            if TcpHeaderSlice::from_slice(l4).is_err() {
                d.insert(L4Header);
            } else if whole && !sums_to_zero(&[&pseudo_header(f, l4.len()), l4]) {
                d.insert(L4Checksum);
            }
        }
        IpNumber::UDP if l4.len() < 8 => {
            d.insert(L4Header);
        }
        IpNumber::UDP => {
            if usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() {
                d.insert(UdpLength);
            }
            let none = l4[6..8] == [0, 0];
            if whole && !none && !sums_to_zero(&[&pseudo_header(f, l4.len()), l4]) {
                d.insert(L4Checksum);
            }
        }
        IpNumber::ICMP if l4.len() < 8 => {
            d.insert(L4Header);
        }
        IpNumber::ICMP => {
            if whole && !sums_to_zero(&[l4]) {
                d.insert(IcmpChecksum);
            }
            if matches!(l4[0], 3 | 11) {
                if let Ok(inner) = Ipv4HeaderSlice::from_slice(&l4[8..]) {
                    if !sums_to_zero(&[inner.slice()]) {
                        d.insert(InnerIpChecksum);
                    }
                }
            }
        }
        _ => {}
    }
    d
}

/// The TCP/UDP pseudo-header of the IPv4 packet in frame `f`.
fn pseudo_header(f: &[u8], l4_len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..8].copy_from_slice(&f[26..34]);
    p[9] = f[23];
    p[10..].copy_from_slice(&(l4_len as u16).to_be_bytes());
    p
}

/// A packet sent with checksum offload carries only the pseudo-header sum,
/// and the program tells one from a complete checksum by that value alone
/// (`nat.rs`): a complete checksum that happens to equal it (1 in 65,536)
/// is updated as a partial one, by design.
fn partial_lookalike(f: &[u8]) -> bool {
    let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
    let field = match f[23] {
        PROTO_TCP => l4 + 16,
        PROTO_UDP => l4 + 6,
        _ => return false,
    };
    let end = 14 + usize::from(u16::from_be_bytes([f[16], f[17]]));
    let (Some(check), Some(len)) = (f.get(field..field + 2), end.checked_sub(l4)) else {
        return false;
    };
    fuzz::holds_pseudo_sum(check, &pseudo_header(f, len))
}

/// Applies one to three mutations, then sometimes makes the checksums
/// right again, so the frame reaches past the program's checks and its
/// output must be fully valid.
fn mutate(rng: &mut ChaCha8Rng, f: &mut Vec<u8>) {
    const INTERESTING: [u8; 8] = [0, 1, 0x40, 0x45, 0x7f, 0x80, 0xfe, 0xff];
    for _ in 0..rng.random_range(1..=3) {
        let l4 = 14 + usize::from(f.get(14).copied().unwrap_or(0x45) & 0x0f) * 4;
        match rng.random_range(0..12) {
            // Headers (Ethernet, IPv4 with options, transport, a quote)
            // are where parsing happens; the rest is payload.
            0..4 => fuzz::mutate_bytes(rng, f, 14 + 60 + 40, &INTERESTING),
            4 if f.len() > 14 => {
                let version = if rng.random_ratio(1, 8) {
                    rng.random_range(0..16u8) << 4
                } else {
                    0x40
                };
                f[14] = version | rng.random_range(0..16u8);
            }
            5 if f.len() >= 18 => {
                let now = usize::from(u16::from_be_bytes([f[16], f[17]]));
                let len = match rng.random_range(0..5) {
                    0 => rng.random_range(0..64),
                    1 => now
                        .saturating_add(rng.random_range(0..=16))
                        .saturating_sub(8),
                    2 => f.len() - 14 + rng.random_range(0..4),
                    3 => 0xffff,
                    _ => rng.random_range(0..=0xffff),
                };
                set_u16(f, 16, len as u16);
            }
            6 if f.len() >= 22 => {
                let flags = rng.random_range(0..4u16) << 13;
                let offset = match rng.random_range(0..3) {
                    0 => 0,
                    1 => rng.random_range(1..4),
                    _ => rng.random_range(0..0x2000),
                };
                set_u16(f, 20, flags | offset);
            }
            7 if f.len() > 23 => {
                f[23] = [1, PROTO_TCP, PROTO_UDP, rng.random()][rng.random_range(0..4)];
            }
            8 if f.len() > l4 + 12 => {
                f[l4 + 12] = rng.random_range(0..16u8) << 4 | (f[l4 + 12] & 0x0f);
            }
            9 if f.len() >= l4 + 6 => {
                let len = [0, 7, 8, rng.random(), (f.len() - l4) as u16];
                set_u16(f, l4 + 4, len[rng.random_range(0..len.len())]);
            }
            10 if f.len() >= l4 + 2 => {
                f[l4] = [0, 3, 8, 11, rng.random()][rng.random_range(0..5)];
                f[l4 + 1] = rng.random_range(0..16);
            }
            11 if f.len() >= l4 + 8 + 10 => {
                let inner = l4 + 8;
                if rng.random() {
                    f[inner] = [0x45, 0x46, 0x4f, 0x44, rng.random()][rng.random_range(0..5)];
                } else {
                    f[inner + 9] = [1, PROTO_TCP, PROTO_UDP, rng.random()][rng.random_range(0..4)];
                }
            }
            _ => {}
        }
    }
    if rng.random_ratio(3, 5) {
        fix_ip_checksum(f);
    }
    if rng.random_ratio(2, 5) {
        fix_l4_checksum(f);
    }
    // A frame starting like an `XdpMeta` would be read as one in XDP's output.
    if split_meta(f).0.is_some() {
        f[0] ^= 1;
    }
}

fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f.get(14).copied().unwrap_or(0) & 0x0f) * 4;
    if ihl >= 20 && f.len() >= 14 + ihl {
        set_checksum(f, 24, |f| Sum16BitWords::new().add_slice(&f[14..14 + ihl]));
    }
}

/// Over the transport segment as the total length bounds it.
fn fix_l4_checksum(f: &mut [u8]) {
    if f.len() < 34 {
        return;
    }
    let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
    let end = (14 + usize::from(u16::from_be_bytes([f[16], f[17]]))).min(f.len());
    if end < l4 {
        return;
    }
    let with_pseudo = |f: &[u8]| {
        Sum16BitWords::new()
            .add_slice(&pseudo_header(f, end - l4))
            .add_slice(&f[l4..end])
    };
    match f[23] {
        PROTO_TCP if end >= l4 + 18 => set_checksum(f, l4 + 16, with_pseudo),
        PROTO_UDP if end >= l4 + 8 => {
            set_checksum(f, l4 + 6, with_pseudo);
            if f[l4 + 6..l4 + 8] == [0, 0] {
                f[l4 + 6..l4 + 8].fill(0xff);
            }
        }
        1 if end >= l4 + 4 => {
            set_checksum(f, l4 + 2, |f| Sum16BitWords::new().add_slice(&f[l4..end]))
        }
        _ => {}
    }
}
