//! Bounds-checked header access. Every pointer handed out has been checked
//! against `data_end`, which is also what the verifier insists on.
//!
//! Unsafe in this module: field reads and `&raw mut` projections through
//! pointers `ptr_at` has just checked. A projection makes no reference, so
//! the header can be rewritten through it later without aliasing one.
use core::mem::size_of;

use crate::frame::Frame;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
/// Fragment offset bits of `frag_off` (network order): non-zero on every
/// fragment but the first.
pub const IP_OFFSET_MASK: u16 = 0x1fffu16.to_be();
/// More-Fragments bit of `frag_off` (network order).
pub const IP_MF: u16 = 0x2000u16.to_be();

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

pub const IPV6_HLEN: usize = 40;

/// Whether the IPv6 header at `ip` says version 6: the kernel drops any
/// other (`ipv6_rcv`), so such a packet is neither translated nor
/// answered.
#[inline(always)]
pub fn is_version_6(ip: *const Ipv6Hdr) -> bool {
    unsafe { *ip.cast::<u8>() >> 4 == 6 }
}

/// Extension headers that may precede TCP or UDP and are walked over.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// How many extension headers are walked; a packet with more is passed.
/// Packets to a Service carry none in practice, and each step costs
/// instructions the verifier walks per hook.
const MAX_EXT_HEADERS: usize = 4;

/// Where the IPv6 upper-layer header starts.
pub enum Upper {
    /// `proto` at byte `off` of the frame.
    At { proto: u8, off: usize },
    /// A Fragment header: the datagram is fragmented.
    Fragment,
    /// More extension headers than walked, or a truncated one.
    Unwalked,
}

/// Walks the IPv6 extension headers after the fixed header (RFC 8200 4.1's
/// hop-by-hop, routing and destination options, all of the "length in
/// 8-octet units, not counting the first" form).
#[inline(always)]
pub fn upper_v6(ctx: &impl Frame, ip: *const Ipv6Hdr) -> Upper {
    walk_v6(ctx, unsafe { (*ip).next_hdr }, ETH_HLEN + IPV6_HLEN)
}

/// A fragment of an IPv6 datagram whose first extension header is the
/// Fragment header, as a fragmenting host writes a datagram with no other
/// (RFC 8200 4.5; a Service's traffic carries none).
pub enum FragmentV6 {
    /// The first: `upper` as `upper_v6` gives it.
    First(Upper),
    /// A later one, of upper-layer `proto`: no ports.
    Later { proto: u8, id: u32 },
    /// No Fragment header first, or a truncated one.
    Not,
}

/// The Fragment header right after the fixed header, and what follows it.
#[inline(always)]
pub fn fragment_v6(ctx: &impl Frame, ip: *const Ipv6Hdr) -> FragmentV6 {
    let off = ETH_HLEN + IPV6_HLEN;
    let Some(hdr) = ptr_at::<FragHdr>(ctx, off) else {
        return FragmentV6::Not;
    };
    if unsafe { (*ip).next_hdr } != NEXTHDR_FRAGMENT {
        return FragmentV6::Not;
    }
    let (next, offset, id) = unsafe { ((*hdr).next, (*hdr).offset, (*hdr).id) };
    if offset & FRAG_OFFSET_MASK != 0 {
        return FragmentV6::Later { proto: next, id };
    }
    FragmentV6::First(walk_v6(ctx, next, off + size_of::<FragHdr>()))
}

/// The identification of the datagram a `FragmentV6::First` packet (whose
/// IPv6 header is at `ip`) is the first fragment of, read again where it
/// is needed rather than carried through the path, whose stack has no
/// room for it. Unchecked: `fragment_v6` checked the header's bytes, and
/// the verifier carries that bound on `ip` into functions given it, where
/// a check against the frame's end would need the context, which the
/// compiler passes to them as integers the verifier refuses.
#[inline(always)]
pub fn fragment_id_v6(ip: *const Ipv6Hdr) -> u32 {
    unsafe { (*ip.cast::<u8>().add(IPV6_HLEN).cast::<FragHdr>()).id }
}

/// The IPv6 Fragment header (RFC 8200 4.5).
#[repr(C)]
struct FragHdr {
    next: u8,
    _reserved: u8,
    /// Offset in 8-byte units (13 bits), two reserved bits, then M.
    offset: u16,
    /// As in the packet.
    id: u32,
}

/// The offset bits of `FragHdr::offset`, as in the packet.
const FRAG_OFFSET_MASK: u16 = 0xfff8u16.to_be();

/// Walks the extension headers from `proto` at byte `off`.
#[inline(always)]
fn walk_v6(ctx: &impl Frame, mut proto: u8, mut off: usize) -> Upper {
    for _ in 0..MAX_EXT_HEADERS {
        match proto {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let Some(ext) = ptr_at::<[u8; 2]>(ctx, off) else {
                    return Upper::Unwalked;
                };
                let [next, len] = unsafe { *ext };
                proto = next;
                off += (len as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => return Upper::Fragment,
            _ => return Upper::At { proto, off },
        }
    }
    Upper::Unwalked
}

#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Frame, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// The transport header of a TCP or UDP packet, reduced to what the packet
/// path reads and rewrites: ports and the checksum field.
pub struct L4 {
    pub ports: *mut [u16; 2],
    pub check: *mut u16,
    pub tcp_flags: u8,
    pub is_udp: bool,
}

/// Parses the TCP or UDP header at `off`; `None` when truncated or another protocol.
#[inline(always)]
pub fn l4<C: Frame>(ctx: &C, proto: u8, off: usize) -> Option<L4> {
    if proto == lb_common::PROTO_TCP {
        let tcp: *mut TcpHdr = ptr_at(ctx, off)?;
        Some(L4 {
            ports: tcp.cast(),
            check: unsafe { &raw mut (*tcp).check },
            tcp_flags: unsafe { (*tcp).flags },
            is_udp: false,
        })
    } else {
        let udp: *mut UdpHdr = ptr_at(ctx, off)?;
        Some(L4 {
            ports: udp.cast(),
            check: unsafe { &raw mut (*udp).check },
            tcp_flags: 0,
            is_udp: true,
        })
    }
}
