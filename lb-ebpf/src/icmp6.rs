//! ICMPv6 errors about translated flows (destination unreachable, Packet
//! Too Big and time exceeded), translated back as `icmp` does ICMP ones:
//! the quoted packet and the outer destination become what the sender of
//! the quoted packet knows, so Path MTU discovery works through the NAT in
//! both directions. IPv6 has no header checksum, but ICMPv6's covers its
//! pseudo-header, so the outer destination's change is folded into it with
//! the quote's.
//!
//! Unsafe in this module: accesses to the outer and the quoted headers
//! through pointers `parse::ptr_at` checked against the frame's end; the
//! quote is rewritten only where it lies inside the IPv6 payload, so a
//! trailer is never touched. The fields of a `CT_V6` entry are copied
//! before use, so the rewrite works on one version of them.
use lb_common::{
    checksum::{apply, diff16, fold, Addr},
    CtKeyV6, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack,
    frame::Frame,
    maps::CT_V6,
    monitor,
    parse::{self, ptr_at, Ipv6Hdr, ETH_HLEN, IPV6_HLEN},
    service::Verdict,
};

pub const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_HLEN: usize = 8;

type Endpoint = ([u32; 4], u16);

/// What an entry says the quote's ends and the outer destination become;
/// each with a flag rather than an `Option`, whose BTF the kernel may
/// refuse (see `service6::pick`).
#[derive(Clone, Copy)]
struct Undo {
    dst: Endpoint,
    rewrite_dst: bool,
    src: Endpoint,
    rewrite_src: bool,
    svc_id: u32,
}

/// Whether the frame's IPv6 header is followed by ICMPv6 (no extension
/// header between).
#[inline(always)]
pub fn first_header_is_icmpv6<C: Frame>(ctx: &C) -> bool {
    ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).is_some_and(|ip| unsafe { (*ip).next_hdr } == IPPROTO_ICMPV6)
}

/// The verdict on an ICMPv6 packet without extension headers: translated
/// when it is an error about a flow this node translates, else passed to
/// the kernel (NDP, echo, errors about other flows). A
/// function of its own so the verifier walks it once beside the path, and
/// a plain verdict, whose BTF the kernel takes (see `service6::pick`).
#[inline(never)]
pub fn translate_error<C: Frame>(ctx: &C, ip: *mut Ipv6Hdr) -> Verdict {
    match translate(ctx, ip) {
        Some(v) => v,
        None => (Reason::PassIcmpv6, C::PASS),
    }
}

#[inline(always)]
fn translate<C: Frame>(ctx: &C, ip: *mut Ipv6Hdr) -> Option<Verdict> {
    // Errors come from routers and hosts without extension headers; one
    // that carries them is left to the kernel.
    let icmp = ptr_at::<[u8; ICMPV6_HLEN]>(ctx, ETH_HLEN + IPV6_HLEN)?;
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMPV6_DEST_UNREACH && kind != ICMPV6_PKT_TOOBIG && kind != ICMPV6_TIME_EXCEED {
        return None;
    }
    let inner_off = ETH_HLEN + IPV6_HLEN + ICMPV6_HLEN;
    let inner = ptr_at::<Ipv6Hdr>(ctx, inner_off)?;
    let (iproto, isrc, idst) = unsafe { ((*inner).next_hdr, (*inner).src, (*inner).dst) };
    // A quote behind extension headers is left to the kernel: packets to
    // Services carry none. Nor can a quote of no IPv6 packet be about one.
    if (iproto != PROTO_TCP && iproto != PROTO_UDP) || !parse::is_version_6(inner) {
        return None;
    }
    // Only bytes inside the IPv6 payload are the message: a frame may
    // carry a trailer, which the checksum does not cover.
    let ip_end = ETH_HLEN + IPV6_HLEN + u16::from_be(unsafe { (*ip).payload_len }) as usize;
    let l4_off = inner_off + IPV6_HLEN;
    if l4_off + 4 > ip_end {
        return None;
    }
    let ports = ptr_at::<[u16; 2]>(ctx, l4_off)?;
    let [isport, idport] = unsafe { *ports };
    // The quoted packet travelled in one direction; the entry of the
    // opposite direction is keyed by its tuple reversed: a packet sent
    // towards a backend (its sender is told about its packet to the
    // frontend), or a translated reply (the backend that sent it is told).
    let mut key = CtKeyV6 {
        src_addr: idst,
        dst_addr: isrc,
        src_port: idport,
        dst_port: isport,
        proto: iproto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    };
    let undo = undo(&key).or_else(|| {
        key.dir = CT_DIR_FORWARD;
        undo(&key)
    })?;
    let check = unsafe { (&raw mut (*icmp)).cast::<u16>().add(1) };
    let mut diff = rewrite_quote(ctx, inner, l4_off, ip_end, iproto, &undo);
    let arrived = unsafe { ((*ip).src, (*ip).dst) };
    // The error goes to the sender of the quote as it becomes.
    if undo.rewrite_src {
        unsafe {
            let old = (*ip).dst;
            (*ip).dst = undo.src.0;
            diff += fold(<[u32; 4]>::diff(old, undo.src.0)) as u32;
        }
    }
    unsafe { *check = apply(*check, fold(diff)) };
    let to = if undo.rewrite_src { undo.src.0 } else { [0; 4] };
    monitor::icmp_error(ctx, arrived, to, undo.svc_id, IPPROTO_ICMPV6);
    Some((Reason::XlateIcmpError, C::PASS))
}

/// What the entry for `key` undoes, by its direction.
#[inline(always)]
fn undo(key: &CtKeyV6) -> Option<Undo> {
    let ct = CT_V6.get_ptr(key)?;
    let (nat, snat) = unsafe {
        (
            ((*ct).nat_addr, (*ct).nat_port),
            ((*ct).snat_addr, (*ct).snat_port),
        )
    };
    let svc_id = unsafe { (*ct).svc_id };
    let snatted = conntrack::is_set(snat.0);
    Some(if key.dir == CT_DIR_REPLY {
        Undo {
            dst: nat,
            rewrite_dst: true,
            src: snat,
            rewrite_src: snatted,
            svc_id,
        }
    } else {
        Undo {
            dst: snat,
            rewrite_dst: snatted,
            src: nat,
            rewrite_src: true,
            svc_id,
        }
    })
}

/// Rewrites the quoted packet's ends by `undo`, with its transport
/// checksum when the quote (which ends at `ip_end`) holds it; returns the
/// unfolded difference the ICMPv6 checksum takes for all of it.
#[inline(always)]
fn rewrite_quote(
    ctx: &impl Frame,
    inner: *mut Ipv6Hdr,
    l4_off: usize,
    ip_end: usize,
    proto: u8,
    undo: &Undo,
) -> u32 {
    let l4_check: Option<*mut u16> = if proto == PROTO_UDP {
        ptr_at::<[u16; 4]>(ctx, l4_off)
            .filter(|_| l4_off + 8 <= ip_end)
            .map(|u| unsafe { &raw mut (*u)[3] })
    } else {
        ptr_at::<[u16; 9]>(ctx, l4_off)
            .filter(|_| l4_off + 18 <= ip_end)
            .map(|t| unsafe { &raw mut (*t)[8] })
    };
    let Some(ports) = ptr_at::<[u16; 2]>(ctx, l4_off) else {
        return 0;
    };
    let mut icmp_diff = 0u32;
    for which in [1usize, 0] {
        let ((addr, port), rewrite) = if which == 1 {
            (undo.dst, undo.rewrite_dst)
        } else {
            (undo.src, undo.rewrite_src)
        };
        if !rewrite {
            continue;
        }
        unsafe {
            let field = if which == 1 {
                &raw mut (*inner).dst
            } else {
                &raw mut (*inner).src
            };
            let old_addr = *field;
            let old_port = (*ports)[which];
            *field = addr;
            (*ports)[which] = port;
            let d = fold(<[u32; 4]>::diff(old_addr, addr)) as u32 + diff16(old_port, port);
            icmp_diff += fold(d) as u32;
            if let Some(c) = l4_check {
                let cur = *c;
                // A zero UDP checksum means none and stays so.
                if !(proto == PROTO_UDP && cur == 0) {
                    let new = apply(cur, fold(d));
                    *c = new;
                    icmp_diff += diff16(cur, new);
                }
            }
        }
        icmp_diff = fold(icmp_diff) as u32;
    }
    icmp_diff
}
