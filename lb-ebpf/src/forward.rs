//! Where a translated packet goes. A FIB lookup on the translated tuple
//! picks the egress and the MACs, and the hook turns that into a kind of
//! delivery (`Frame::kind_for`); the decision is cached in the connection
//! tracking entry and refreshed once per `CT_REFRESH_NS`, so an established
//! flow pays no FIB lookup. Before the rewrite, a large packet is checked
//! against the egress MTU: the sender must hear about its own packet.
//!
//! Unsafe in this module: `bpf_fib_lookup` and `bpf_check_mtu` on the hook's
//! own context pointer, with a parameter block on the stack that may start
//! zeroed because it is plain integers; header accesses through pointers
//! `parse::ptr_at` checked; field accesses through `IFACES` and `CT_V4` entry
//! pointers, valid until the program returns (see `conntrack`).
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup},
};
use lb_common::{
    conntrack::STATE_ROUTED, CtKeyV4, CtValueV4, CT_DIR_FORWARD, FWD_KERNEL, FWD_NEIGH, FWD_XDP,
};

use crate::{
    frame::Frame,
    maps::IFACES,
    parse::{self, EthHdr, Ipv4Hdr},
};

const AF_INET: u8 = 2;
/// Don't Fragment, in `frag_off` (network order).
const IP_DF: u16 = 0x4000u16.to_be();
/// RFC 791's datagram size every link carries: smaller packets skip the
/// MTU check, which costs a helper call.
const MIN_MTU: u16 = 576;

/// The `IFACES` flags of interface `ifindex`, if the agent registered it.
#[inline(always)]
pub fn iface_info(ifindex: u32) -> Option<u32> {
    IFACES.get_ptr(ifindex).map(|i| unsafe { (*i).flags })
}

/// Whether interface `ifindex` carries `flag` (`IFACE_*`) in `IFACES`.
#[inline(always)]
pub fn iface_has(ifindex: u32, flag: u32) -> bool {
    iface_info(ifindex).is_some_and(|f| f & flag != 0)
}

/// What the MTU check decided for a packet before its rewrite.
pub enum Fit {
    Fits,
    /// Too big and marked Don't Fragment: the sender must be told `mtu`.
    TellSender(u32),
    /// Too big but fragmentable: the kernel fragments it after the rewrite.
    Fragment,
}

/// Checks the packet against its flow's egress, refreshing the flow's
/// forwarding decision first when `refresh` says it is due.
#[inline(always)]
pub fn check<C: Frame>(
    ctx: &C,
    ip: *const Ipv4Hdr,
    key: &CtKeyV4,
    ct: *mut CtValueV4,
    refresh: bool,
) -> Fit {
    if refresh {
        resolve(ctx, key, ct);
    }
    let (tot_len, frag_off) = unsafe { (u16::from_be((*ip).tot_len), (*ip).frag_off) };
    let ifindex = unsafe { (*ct).fwd_ifindex };
    // A GSO packet's header may hold 0 (BIG TCP) or the whole super-packet's
    // length: both go to the helper, which checks its segments.
    if ifindex == 0 || (tot_len != 0 && tot_len <= MIN_MTU) {
        return Fit::Fits;
    }
    let mut mtu = 0u32;
    let rc = unsafe { bpf_check_mtu(ctx.raw(), ifindex, &mut mtu, 0, C::MTU_FLAGS) };
    if rc <= 0 {
        Fit::Fits
    } else if frag_off & IP_DF != 0 {
        Fit::TellSender(mtu)
    } else {
        Fit::Fragment
    }
}

/// Sends the rewritten packet on by its flow's decision; `kernel` forces the
/// kernel's routing (which fragments). A packet whose checksum is partial
/// (sent by a local socket behind a veth, never one off the wire) leaves
/// as an skb: an XDP frame would lose the skb's note that the checksum is
/// still to be completed, and reach its receiver with a wrong one.
#[inline(always)]
pub fn send<C: Frame>(ctx: &C, ct: *const CtValueV4, kernel: bool, partial: bool) -> u32 {
    let (mut kind, ifindex) = unsafe { ((*ct).fwd_kind, (*ct).fwd_ifindex) };
    if partial {
        kind &= !FWD_XDP;
    }
    if kernel || kind == FWD_KERNEL {
        return ctx.forward(FWD_KERNEL, ifindex);
    }
    if kind != FWD_NEIGH {
        let Some(eth) = parse::ptr_at::<EthHdr>(ctx, 0) else {
            return C::PASS;
        };
        unsafe {
            (*eth).src = (*ct).fwd_smac;
            (*eth).dst = (*ct).fwd_dmac;
        }
    }
    ctx.forward(kind, ifindex)
}

/// A FIB lookup on the tuple the packet will carry once translated.
#[inline(always)]
fn resolve<C: Frame>(ctx: &C, key: &CtKeyV4, ct: *mut CtValueV4) {
    let v = unsafe { &*ct };
    let (src, dst) = if key.dir == CT_DIR_FORWARD {
        let src = if v.snat_addr != 0 {
            v.snat_addr
        } else {
            key.src_addr
        };
        (src, v.nat_addr)
    } else {
        let dst = if v.snat_addr != 0 {
            v.snat_addr
        } else {
            key.dst_addr
        };
        (v.nat_addr, dst)
    };
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = key.proto;
    // Any non-zero length makes the lookup compare it with the route's MTU
    // rather than check the skb; the minimum never fails, and `check` does
    // the per-packet test.
    params.__bindgen_anon_1.tot_len = 20;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params.ifindex = ctx.ifindex();
    let rc = unsafe {
        fib_lookup(
            ctx.raw(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let kind = ctx.kind_for(rc, params.ifindex);
    unsafe {
        (*ct).fwd_kind = kind;
        (*ct).fwd_ifindex = if kind == FWD_KERNEL && rc != 0 {
            0
        } else {
            params.ifindex
        };
        (*ct).fwd_smac = params.smac;
        (*ct).fwd_dmac = params.dmac;
        (*ct).state |= STATE_ROUTED;
    }
}
