//! Answers built by the program in place of the packet: rejects as
//! kube-proxy's REJECT rules answer them (a TCP RST for TCP, ICMP port
//! unreachable for UDP), and the errors a router sends about a translated
//! packet: fragmentation needed (Packet Too Big) when it is too big for its
//! egress, time exceeded when its TTL (hop limit) is spent. Each leaves the
//! way the packet came (`Frame::bounce`).
//!
//! Unsafe in this module: header reads and writes at fixed offsets inside a
//! span `parse::ptr_at` checked as a whole, so each `base.add` stays inside
//! it; after `grow_l3` moves the packet's data, every pointer is taken and
//! checked anew.
use lb_common::{
    checksum::{fold, sum_words},
    conntrack::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    CtKeyV4, CtValueV4, Reason, PROTO_TCP, PROTO_UDP,
};

use crate::{
    frame::Frame,
    monitor,
    parse::{ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV6_HLEN},
    stats,
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const NEW_IP_LEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// RFC 792's minimum quote: the original IP header plus the first 64 bits
/// of its payload, which hold a UDP header whole.
const QUOTE_UDP: usize = 8;
/// A TCP quote runs to the end of the fixed header: the skb of a packet sent
/// with checksum offload cannot be cut shorter than its checksum field.
const QUOTE_TCP: usize = 20;
/// ICMP destination unreachable with its code: port unreachable,
/// fragmentation needed.
const ICMP_PORT_UNREACH: IcmpKind = (3, 3);
const ICMP_FRAG_NEEDED: IcmpKind = (3, 4);
/// ICMP time exceeded in transit.
const ICMP_TIME_EXCEEDED: IcmpKind = (11, 0);
/// ICMPv6 Packet Too Big and time exceeded (hop limit exceeded in transit).
pub const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub const ICMP6_TIME_EXCEEDED: u8 = 3;

/// An ICMP message's type and code.
type IcmpKind = (u8, u8);

/// Answers the packet as a reject; `ihl` is its IPv4 header length in bytes.
#[inline(always)]
pub fn send<C: Frame>(ctx: &C, ihl: usize, proto: u8, reason: Reason) -> (Reason, u32) {
    let built = if proto == PROTO_TCP {
        tcp_rst(ctx, ihl)
    } else {
        icmp_error(ctx, ihl, QUOTE_UDP, ICMP_PORT_UNREACH, 0)
    };
    match built {
        Some(action) => (reason, action),
        None => (Reason::RejectFailed, C::DROP),
    }
}

/// Tells the sender of a packet (as it sent it, untranslated) that the
/// path takes at most `mtu` bytes (RFC 1191). A side event: the packet
/// stays counted under its flow's path (`key`, entry `ct`).
#[inline(always)]
pub fn frag_needed<C: Frame>(
    ctx: &C,
    ihl: usize,
    mtu: u32,
    key: &CtKeyV4,
    ct: *const CtValueV4,
) -> u32 {
    let reasons = (Reason::IcmpFragNeeded, Reason::IcmpFragNeededFailed);
    flow_error(ctx, ihl, (ICMP_FRAG_NEEDED, mtu as u16), key, ct, reasons)
}

/// Tells the sender of a packet (as it sent it, untranslated) that its TTL
/// ran out here (RFC 792 time exceeded, which traceroute reads), as the
/// kernel's forwarding would have: this node routes the translated packet
/// itself. A side event, as `frag_needed` is.
#[inline(always)]
pub fn time_exceeded<C: Frame>(ctx: &C, ihl: usize, key: &CtKeyV4, ct: *const CtValueV4) -> u32 {
    let reasons = (Reason::IcmpTimeExceeded, Reason::IcmpTimeExceededFailed);
    flow_error(ctx, ihl, (ICMP_TIME_EXCEEDED, 0), key, ct, reasons)
}

/// Answers a packet of the flow `key` (entry `ct`) with the ICMP error
/// `kind` (and `mtu` for fragmentation needed), quoting the packet up to
/// the end of its UDP or TCP header; counts `reasons.0`, or drops it and
/// counts `reasons.1` when the answer cannot be built.
#[inline(always)]
fn flow_error<C: Frame>(
    ctx: &C,
    ihl: usize,
    (kind, mtu): (IcmpKind, u16),
    key: &CtKeyV4,
    ct: *const CtValueV4,
    reasons: (Reason, Reason),
) -> u32 {
    let quote = if key.proto == PROTO_TCP {
        QUOTE_TCP
    } else {
        QUOTE_UDP
    };
    let (reason, action) = match icmp_error(ctx, ihl, quote, kind, mtu) {
        Some(action) => (reasons.0, action),
        None => (reasons.1, C::DROP),
    };
    stats::count(reason);
    monitor::flow(ctx.ifindex(), reason, key, ct);
    action
}

#[inline(always)]
fn ipv4_header(ip: *mut Ipv4Hdr, tot_len: usize, proto: u8, src: u32, dst: u32) {
    unsafe {
        (*ip).vihl = 0x45;
        (*ip).tos = 0;
        (*ip).tot_len = (tot_len as u16).to_be();
        (*ip).id = 0;
        (*ip).frag_off = 0x4000u16.to_be();
        (*ip).ttl = 64;
        (*ip).proto = proto;
        (*ip).check = 0;
        (*ip).src = src;
        (*ip).dst = dst;
        let bytes = core::slice::from_raw_parts(ip as *const u8, NEW_IP_LEN);
        (*ip).check = !fold(sum_words(bytes, 0));
    }
}

/// The answer goes back to where the packet came from.
#[inline(always)]
fn set_macs(eth: *mut EthHdr, src: [u8; 6], dst: [u8; 6], proto: u16) {
    unsafe {
        (*eth).dst = src;
        (*eth).src = dst;
        (*eth).proto = proto;
    }
}

/// RFC 793 reset generation: seq from the segment's ACK if it had one, else
/// seq 0 with an ACK covering the segment. Never answers a RST.
#[inline(always)]
fn tcp_rst<C: Frame>(ctx: &C, ihl: usize) -> Option<u32> {
    // One bounds check covering every header written below, so the
    // verifier sees all of them through the same checked pointer. It comes
    // first: after the variable-offset check below, LLVM would prove it
    // redundant and drop it, which the verifier cannot follow.
    let base = ptr_at::<[u8; ETH_HLEN + NEW_IP_LEN + 20]>(ctx, 0)? as *mut u8;
    let tcp = ptr_at::<TcpHdr>(ctx, ETH_HLEN + ihl)?;
    let eth = base as *mut EthHdr;
    let ip = unsafe { base.add(ETH_HLEN) } as *mut Ipv4Hdr;
    let (smac, dmac) = unsafe { ((*eth).src, (*eth).dst) };
    let (saddr, daddr, tot_len) = unsafe { ((*ip).src, (*ip).dst, u16::from_be((*ip).tot_len)) };
    let seg = Segment::read(tcp);
    if seg.flags & TCP_RST != 0 {
        return Some(C::DROP);
    }
    let payload = (tot_len as u32).saturating_sub(ihl as u32 + seg.doff);
    let new_tcp = unsafe { base.add(ETH_HLEN + NEW_IP_LEN) } as *mut TcpHdr;
    set_macs(eth, smac, dmac, ETH_P_IP);
    ipv4_header(ip, NEW_IP_LEN + 20, PROTO_TCP, daddr, saddr);
    let pseudo = pseudo_sum(daddr, saddr, PROTO_TCP, 20);
    rst_header(new_tcp, &seg, payload, pseudo);
    if !ctx.trim((ETH_HLEN + NEW_IP_LEN + 20) as u32) {
        return None;
    }
    Some(ctx.bounce())
}

/// What a RST answer needs of the segment it answers.
#[derive(Clone, Copy)]
struct Segment {
    sport: u16,
    dport: u16,
    /// Host order.
    seq: u32,
    /// As in the packet.
    ack: u32,
    flags: u8,
    /// The TCP header's length in bytes.
    doff: u32,
}

impl Segment {
    #[inline(always)]
    fn read(tcp: *const TcpHdr) -> Self {
        unsafe {
            Segment {
                sport: (*tcp).sport,
                dport: (*tcp).dport,
                seq: u32::from_be((*tcp).seq),
                ack: (*tcp).ack,
                flags: (*tcp).flags,
                doff: ((*tcp).doff_res >> 4) as u32 * 4,
            }
        }
    }
}

/// Writes the RST answering `seg`, which carried `payload` bytes; `pseudo`
/// is the RST's pseudo-header sum.
#[inline(always)]
fn rst_header(tcp: *mut TcpHdr, seg: &Segment, payload: u32, pseudo: u32) {
    let Segment {
        sport,
        dport,
        seq,
        ack,
        flags,
        ..
    } = *seg;
    let seg_len = payload + (flags & TCP_SYN != 0) as u32 + (flags & TCP_FIN != 0) as u32;
    unsafe {
        (*tcp).sport = dport;
        (*tcp).dport = sport;
        if flags & TCP_ACK != 0 {
            (*tcp).seq = ack;
            (*tcp).ack = 0;
            (*tcp).flags = TCP_RST;
        } else {
            (*tcp).seq = 0;
            (*tcp).ack = seq.wrapping_add(seg_len).to_be();
            (*tcp).flags = TCP_RST | TCP_ACK;
        }
        (*tcp).doff_res = 5 << 4;
        (*tcp).window = 0;
        (*tcp).check = 0;
        (*tcp).urg = 0;
        let bytes = core::slice::from_raw_parts(tcp as *const u8, 20);
        (*tcp).check = !fold(sum_words(bytes, pseudo));
    }
}

/// Answers an IPv6 packet as a reject, as `send` does IPv4 ones: a TCP RST,
/// or ICMPv6 port unreachable quoting the packet's IPv6 and UDP headers.
/// Only for packets without extension headers, which rejected traffic
/// (a connection attempt to a Service) does not carry.
#[inline(always)]
pub fn send_v6<C: Frame>(ctx: &C, proto: u8, reason: Reason) -> (Reason, u32) {
    let built = if proto == PROTO_TCP {
        tcp_rst_v6(ctx)
    } else {
        icmp6_port_unreachable(ctx)
    };
    match built {
        Some(action) => (reason, action),
        None => (Reason::RejectFailed, C::DROP),
    }
}

/// The IPv6 pseudo-header sum of `src`, `dst`, `proto` and `len`.
#[inline(always)]
fn pseudo_sum_v6(src: &[u32; 4], dst: &[u32; 4], proto: u8, len: u16) -> u32 {
    let words = |a: &[u32; 4]| a.iter().fold(0u32, |acc, w| acc + (w >> 16) + (w & 0xffff));
    words(src) + words(dst) + (proto as u16).to_be() as u32 + len.to_be() as u32
}

#[inline(always)]
fn tcp_rst_v6<C: Frame>(ctx: &C) -> Option<u32> {
    const LEN: usize = ETH_HLEN + IPV6_HLEN + 20;
    let base = ptr_at::<[u8; LEN]>(ctx, 0)? as *mut u8;
    let eth = base as *mut EthHdr;
    let ip = unsafe { base.add(ETH_HLEN) } as *mut Ipv6Hdr;
    let tcp = unsafe { base.add(ETH_HLEN + IPV6_HLEN) } as *mut TcpHdr;
    let (smac, dmac) = unsafe { ((*eth).src, (*eth).dst) };
    let (saddr, daddr, payload_len, next) = unsafe {
        (
            (*ip).src,
            (*ip).dst,
            u16::from_be((*ip).payload_len),
            (*ip).next_hdr,
        )
    };
    if next != PROTO_TCP {
        return None;
    }
    let seg = Segment::read(tcp);
    if seg.flags & TCP_RST != 0 {
        return Some(C::DROP);
    }
    let payload = (payload_len as u32).saturating_sub(seg.doff);
    set_macs(eth, smac, dmac, ETH_P_IPV6);
    ipv6_header(ip, 20, PROTO_TCP, daddr, saddr);
    let pseudo = pseudo_sum_v6(&daddr, &saddr, PROTO_TCP, 20);
    rst_header(tcp, &seg, payload, pseudo);
    if !ctx.trim(LEN as u32) {
        return None;
    }
    Some(ctx.bounce())
}

#[inline(always)]
fn ipv6_header(ip: *mut Ipv6Hdr, payload_len: usize, next: u8, src: [u32; 4], dst: [u32; 4]) {
    unsafe {
        (*ip).vtc_flow = 0x6000_0000u32.to_be();
        (*ip).payload_len = (payload_len as u16).to_be();
        (*ip).next_hdr = next;
        (*ip).hop_limit = 64;
        (*ip).src = src;
        (*ip).dst = dst;
    }
}

/// Puts Ethernet, IPv6 and ICMPv6 destination-unreachable (port
/// unreachable) headers in front of the original IPv6 header, and trims
/// the quote to that header and the UDP header after it.
#[inline(always)]
fn icmp6_port_unreachable<C: Frame>(ctx: &C) -> Option<u32> {
    const GROW: usize = IPV6_HLEN + ICMP_HLEN;
    const QUOTE: usize = IPV6_HLEN + QUOTE_UDP;
    let old = ptr_at::<[u8; ETH_HLEN + IPV6_HLEN]>(ctx, 0)? as *mut u8;
    let (eth, orig_ip) = (old as *mut EthHdr, unsafe { old.add(ETH_HLEN) }
        as *mut Ipv6Hdr);
    let (smac, dmac) = unsafe { ((*eth).src, (*eth).dst) };
    let (saddr, daddr, next) = unsafe { ((*orig_ip).src, (*orig_ip).dst, (*orig_ip).next_hdr) };
    if next != PROTO_UDP {
        return None;
    }
    if !ctx.grow_l3(GROW as u32) {
        return None;
    }
    if !ctx.trim((ETH_HLEN + GROW + QUOTE) as u32) {
        return None;
    }
    let base = ptr_at::<[u8; ETH_HLEN + GROW + QUOTE]>(ctx, 0)? as *mut u8;
    let eth = base as *mut EthHdr;
    let ip = unsafe { base.add(ETH_HLEN) } as *mut Ipv6Hdr;
    let icmp = unsafe { base.add(ETH_HLEN + IPV6_HLEN) } as *mut [u16; 4];
    set_macs(eth, smac, dmac, ETH_P_IPV6);
    ipv6_header(ip, ICMP_HLEN + QUOTE, IPPROTO_ICMPV6, daddr, saddr);
    // Type 1 (destination unreachable), code 4 (port unreachable).
    unsafe { *icmp = [u16::from_ne_bytes([1, 4]), 0, 0, 0] };
    // ICMPv6 sums its pseudo-header and the whole message, the quote too.
    let quoted = unsafe { &*(base.add(ETH_HLEN + GROW) as *const [u8; QUOTE]) };
    let pseudo = pseudo_sum_v6(&daddr, &saddr, IPPROTO_ICMPV6, (ICMP_HLEN + QUOTE) as u16);
    let header = unsafe { core::slice::from_raw_parts(icmp as *const u8, ICMP_HLEN) };
    let sum = sum_words(header, sum_words(quoted, pseudo));
    unsafe { (*icmp)[1] = !fold(sum) };
    Some(ctx.bounce())
}

/// Tells the sender of an IPv6 packet (as it sent it, untranslated) what a
/// router on its path would: that the path takes at most `value` bytes
/// (`ICMP6_PACKET_TOO_BIG`, RFC 4443, which RFC 8201 path MTU discovery
/// reads), or that its hop limit ran out here (`ICMP6_TIME_EXCEEDED`,
/// `value` 0). Quotes its IPv6 header and transport header as
/// `frag_needed` does for IPv4. Only for packets without extension
/// headers, whose quote the sender would not parse to its transport header
/// otherwise; `None` when it cannot be built.
#[inline(always)]
pub fn flow_error_v6<C: Frame>(ctx: &C, icmp_type: u8, value: u32) -> Option<u32> {
    const GROW: usize = IPV6_HLEN + ICMP_HLEN;
    let old = ptr_at::<[u8; ETH_HLEN + IPV6_HLEN]>(ctx, 0)? as *mut u8;
    let (eth, orig_ip) = (old as *mut EthHdr, unsafe { old.add(ETH_HLEN) }
        as *mut Ipv6Hdr);
    let (smac, dmac) = unsafe { ((*eth).src, (*eth).dst) };
    let (saddr, daddr, proto) = unsafe { ((*orig_ip).src, (*orig_ip).dst, (*orig_ip).next_hdr) };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    if !ctx.grow_l3(GROW as u32) {
        return None;
    }
    // The quote: a fixed size per protocol, so the checksum below reads
    // it in one bounds-checked span.
    let (l4_quote, quoted) = if proto == PROTO_TCP {
        let quoted = ptr_at::<[u8; IPV6_HLEN + QUOTE_TCP]>(ctx, ETH_HLEN + GROW)?;
        (QUOTE_TCP, sum_words(unsafe { &*quoted }, 0))
    } else {
        let quoted = ptr_at::<[u8; IPV6_HLEN + QUOTE_UDP]>(ctx, ETH_HLEN + GROW)?;
        (QUOTE_UDP, sum_words(unsafe { &*quoted }, 0))
    };
    let len = ICMP_HLEN + IPV6_HLEN + l4_quote;
    if !ctx.trim((ETH_HLEN + IPV6_HLEN + len) as u32) {
        return None;
    }
    let base = ptr_at::<[u8; ETH_HLEN + GROW]>(ctx, 0)? as *mut u8;
    let eth = base as *mut EthHdr;
    let ip = unsafe { base.add(ETH_HLEN) } as *mut Ipv6Hdr;
    let icmp = unsafe { base.add(ETH_HLEN + IPV6_HLEN) } as *mut [u16; 4];
    set_macs(eth, smac, dmac, ETH_P_IPV6);
    ipv6_header(ip, len, IPPROTO_ICMPV6, daddr, saddr);
    // The type, code 0, then the MTU (Packet Too Big) or nothing in 32 bits.
    let value = value.to_be();
    unsafe {
        *icmp = [
            u16::from_ne_bytes([icmp_type, 0]),
            0,
            value as u16,
            (value >> 16) as u16,
        ]
    };
    let pseudo = pseudo_sum_v6(&daddr, &saddr, IPPROTO_ICMPV6, len as u16);
    let header = unsafe { core::slice::from_raw_parts(icmp as *const u8, ICMP_HLEN) };
    let sum = sum_words(header, quoted + pseudo);
    unsafe { (*icmp)[1] = !fold(sum) };
    Some(ctx.bounce())
}

#[inline(always)]
fn pseudo_sum(src: u32, dst: u32, proto: u8, len: u16) -> u32 {
    (src >> 16)
        + (src & 0xffff)
        + (dst >> 16)
        + (dst & 0xffff)
        + (proto as u16).to_be() as u32
        + len.to_be() as u32
}

/// Puts Ethernet, IPv4 and ICMP error headers (`kind`, and `mtu` for
/// fragmentation needed) in front of the original IPv4 header, which stays
/// where it is, and trims everything after its first `quote_l4` payload
/// bytes (the caller knows the packet has them).
#[inline(always)]
fn icmp_error<C: Frame>(
    ctx: &C,
    ihl: usize,
    quote_l4: usize,
    (icmp_type, code): IcmpKind,
    mtu: u16,
) -> Option<u32> {
    const GROW: usize = NEW_IP_LEN + ICMP_HLEN;
    let old_eth = ptr_at::<EthHdr>(ctx, 0)?;
    let orig_ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    let (smac, dmac) = unsafe { ((*old_eth).src, (*old_eth).dst) };
    let (saddr, daddr) = unsafe { ((*orig_ip).src, (*orig_ip).dst) };
    if !ctx.grow_l3(GROW as u32) {
        return None;
    }
    let quote = ihl + quote_l4;
    if !ctx.trim((ETH_HLEN + GROW + quote) as u32) {
        return None;
    }
    let base = ptr_at::<[u8; ETH_HLEN + GROW]>(ctx, 0)? as *mut u8;
    let eth = base as *mut EthHdr;
    let ip = unsafe { base.add(ETH_HLEN) } as *mut Ipv4Hdr;
    let icmp = unsafe { base.add(ETH_HLEN + NEW_IP_LEN) } as *mut [u16; 4];
    set_macs(eth, smac, dmac, ETH_P_IP);
    ipv4_header(
        ip,
        NEW_IP_LEN + ICMP_HLEN + quote,
        IPPROTO_ICMP,
        daddr,
        saddr,
    );
    // RFC 1191 puts the next-hop MTU in the last 16 bits of the header;
    // other errors leave them unused.
    unsafe { *icmp = [u16::from_ne_bytes([icmp_type, code]), 0, 0, mtu.to_be()] };
    // The quoted IP header needs no reading: a valid one sums to 0xffff,
    // which adds nothing in ones' complement. A fixed-size read of the
    // quoted transport bytes keeps the verifier to one bounds check; a loop
    // over a variable length gets its checks folded into arithmetic on the
    // packet end, which the verifier refuses.
    let l4 = ETH_HLEN + GROW + ihl;
    let l4_sum = if quote_l4 == QUOTE_TCP {
        sum_words(unsafe { &*ptr_at::<[u8; QUOTE_TCP]>(ctx, l4)? }, 0)
    } else {
        sum_words(unsafe { &*ptr_at::<[u8; QUOTE_UDP]>(ctx, l4)? }, 0)
    };
    let header = unsafe { core::slice::from_raw_parts(icmp as *const u8, ICMP_HLEN) };
    let sum = sum_words(header, l4_sum);
    unsafe { (*icmp)[1] = !fold(sum) };
    Some(ctx.bounce())
}
