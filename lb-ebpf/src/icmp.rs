//! ICMP errors about translated flows (destination unreachable, including
//! fragmentation needed, and time exceeded). The quoted packet is the one on
//! the wire, so it shows the backend (or the SNAT address) where the sender
//! knows the frontend (or itself): the quote and the outer destination are
//! translated back, with every checksum involved, so Path MTU discovery works
//! through the NAT in both directions.
//!
//! Unsafe in this module: accesses to the outer and the quoted headers
//! through pointers `parse::ptr_at` checked against the frame's end; the
//! quote is rewritten only where it lies inside the IP packet, so a trailer
//! is never touched. `CT_V4` entries are copied before use, so the rewrite
//! works on one version of each.
use lb_common::{
    checksum::{update16, update32},
    CtKeyV4, CtValueV4, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, PROTO_TCP, PROTO_UDP,
};

use crate::{
    frame::Frame,
    maps::CT_V4,
    monitor,
    parse::{ptr_at, Ipv4Hdr, ETH_HLEN, IP_MF, IP_OFFSET_MASK},
};

pub const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// Checksummed words of the ICMP message change one by one; each change is
/// folded into the ICMP checksum as it happens.
struct Icmp {
    check: *mut u16,
}

impl Icmp {
    #[inline(always)]
    fn set32(&self, field: *mut u32, new: u32) {
        unsafe {
            let old = *field;
            *field = new;
            *self.check = update32(*self.check, old, new);
        }
    }

    #[inline(always)]
    fn set16(&self, field: *mut u16, new: u16) {
        unsafe {
            let old = *field;
            *field = new;
            *self.check = update16(*self.check, old, new);
        }
    }
}

/// `Some` when `ip` carries an ICMP error about a flow this node translates.
#[inline(always)]
pub fn translate_error<C: Frame>(ctx: &C, ip: *mut Ipv4Hdr) -> Option<(Reason, u32)> {
    let (vihl, frag) = unsafe { ((*ip).vihl, (*ip).frag_off) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    // A later fragment holds no ICMP header, only message bytes that may
    // look like one; and rewriting the destination of one fragment would
    // part it from the others. Routers keep errors small enough never to
    // be fragmented (RFC 1812: 576 bytes at most).
    if ihl < 20 || frag & (IP_MF | IP_OFFSET_MASK) != 0 {
        return None;
    }
    let icmp = ptr_at::<IcmpHdr>(ctx, ETH_HLEN + ihl)?;
    let kind = unsafe { (*icmp).kind };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner_off = ETH_HLEN + ihl + 8;
    let inner = ptr_at::<Ipv4Hdr>(ctx, inner_off)?;
    let (ivihl, iproto, isrc, idst) =
        unsafe { ((*inner).vihl, (*inner).proto, (*inner).src, (*inner).dst) };
    // Quotes with IP options are left to the kernel: routers rarely send them.
    if ivihl != 0x45 || (iproto != PROTO_TCP && iproto != PROTO_UDP) {
        return None;
    }
    // Only bytes inside the IP packet are the message: a frame may carry
    // more (an Ethernet trailer pads short frames), which the ICMP checksum
    // does not cover and nothing may rewrite.
    let ip_end = ETH_HLEN + u16::from_be(unsafe { (*ip).tot_len }) as usize;
    if inner_off + 20 + 4 > ip_end {
        return None;
    }
    let ports = ptr_at::<[u16; 2]>(ctx, inner_off + 20)?;
    let [isport, idport] = unsafe { *ports };
    // The quoted packet travelled in one direction; the entry for the
    // opposite direction is keyed by its tuple reversed.
    let reversed = |dir| CtKeyV4 {
        src_addr: idst,
        dst_addr: isrc,
        src_port: idport,
        dst_port: isport,
        proto: iproto,
        dir,
        _pad: 0,
    };
    let icmp = Icmp {
        check: unsafe { &raw mut (*icmp).check },
    };
    // The quote is a packet sent towards a backend: the sender is told about
    // its packet to the frontend. Or it is a translated reply (from the
    // frontend): the backend that sent it is told instead.
    for dir in [CT_DIR_REPLY, CT_DIR_FORWARD] {
        let Some(ct) = CT_V4.get_ptr(reversed(dir)) else {
            continue;
        };
        let v: CtValueV4 = unsafe { *ct };
        let nat = Some((v.nat_addr, v.nat_port));
        let snat = (v.snat_addr != 0).then_some((v.snat_addr, v.snat_port));
        let (dst, src, outer) = if dir == CT_DIR_REPLY {
            (nat, snat, snat.map(|(a, _)| a))
        } else {
            (snat, nat, Some(v.nat_addr))
        };
        rewrite_quote(ctx, &icmp, inner, inner_off, ip_end, iproto, dst, src);
        let arrived = unsafe { ((*ip).src, (*ip).dst) };
        if let Some(addr) = outer {
            set_outer_dst(ip, addr);
        }
        monitor::icmp_error(ctx, arrived, outer.unwrap_or(0), v.svc_id, IPPROTO_ICMP);
        return Some((Reason::XlateIcmpError, C::PASS));
    }
    None
}

#[inline(always)]
fn set_outer_dst(ip: *mut Ipv4Hdr, addr: u32) {
    unsafe {
        let old = (*ip).dst;
        (*ip).dst = addr;
        (*ip).check = update32((*ip).check, old, addr);
    }
}

/// Rewrites the quoted packet's destination and/or source (address, port),
/// with its IP checksum, its transport checksum when the quote (which ends
/// at `ip_end`) holds it, and the ICMP checksum over all of them.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite_quote(
    ctx: &impl Frame,
    icmp: &Icmp,
    inner: *mut Ipv4Hdr,
    inner_off: usize,
    ip_end: usize,
    proto: u8,
    dst: Option<(u32, u16)>,
    src: Option<(u32, u16)>,
) {
    let l4_check: Option<*mut u16> = if proto == PROTO_UDP {
        ptr_at::<[u16; 4]>(ctx, inner_off + 20)
            .filter(|_| inner_off + 20 + 8 <= ip_end)
            .map(|u| unsafe { &raw mut (*u)[3] })
    } else {
        ptr_at::<[u16; 9]>(ctx, inner_off + 20)
            .filter(|_| inner_off + 20 + 18 <= ip_end)
            .map(|t| unsafe { &raw mut (*t)[8] })
    };
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, inner_off + 20) else {
        return;
    };
    for (which, change) in [(1usize, dst), (0usize, src)] {
        let Some((addr, port)) = change else { continue };
        unsafe {
            let field = if which == 1 {
                &raw mut (*inner).dst
            } else {
                &raw mut (*inner).src
            };
            let old_addr = *field;
            let old_port = (*ports)[which];
            icmp.set32(field, addr);
            icmp.set16(
                &raw mut (*inner).check,
                update32((*inner).check, old_addr, addr),
            );
            icmp.set16(&raw mut (*ports)[which], port);
            if let Some(c) = l4_check {
                let cur = *c;
                // A zero UDP checksum means none and stays so.
                if !(proto == PROTO_UDP && cur == 0) {
                    icmp.set16(c, update16(update32(cur, old_addr, addr), old_port, port));
                }
            }
        }
    }
}
