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
    let mut proto = unsafe { (*ip).next_hdr };
    let mut off = ETH_HLEN + IPV6_HLEN;
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
