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
//! `parse::ptr_at` checked; field accesses through `IFACES` and connection-tracking
//! entry pointers, valid until the program returns (see `conntrack`).
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup},
};
use lb_common::{conntrack::STATE_ROUTED, CtValue, CT_DIR_FORWARD, FWD_KERNEL, FWD_NEIGH, FWD_XDP};

use crate::{
    conntrack::{is_set, Table},
    frame::Frame,
    maps::IFACES,
    parse::{self, EthHdr, Ipv4Hdr},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
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
    /// Too big and not to be fragmented: the sender must be told `mtu`.
    TellSender(u32),
    /// Too big but fragmentable: the kernel fragments it after the rewrite.
    Fragment,
}

/// What the MTU check reads of the IP header: the packet's length and
/// whether routers may fragment it (IPv4 without DF; never IPv6).
pub struct Size {
    pub len: u16,
    pub fragmentable: bool,
}

/// Checks the packet against its flow's egress, refreshing the flow's
/// forwarding decision first when `refresh` says it is due.
#[inline(always)]
pub fn check<C: Frame, K: Table>(
    ctx: &C,
    size: Size,
    key: &K,
    ct: *mut K::Value,
    refresh: bool,
) -> Fit
where
    K::Addr: FibAddr,
{
    if refresh {
        resolve(ctx, key, ct);
    }
    if surely_fits(&size, ct) {
        return Fit::Fits;
    }
    let ifindex = unsafe { *K::Value::fwd_ifindex(ct) };
    let mut mtu = 0u32;
    let rc = unsafe { bpf_check_mtu(ctx.raw(), ifindex, &mut mtu, 0, C::MTU_FLAGS) };
    if rc <= 0 {
        Fit::Fits
    } else if size.fragmentable {
        Fit::Fragment
    } else {
        Fit::TellSender(mtu)
    }
}

/// Whether a packet of `size` fits the egress of the flow with entry `ct`
/// without asking the helper: the kernel routes it (no egress known), or
/// it is small enough for every link.
#[inline(always)]
pub fn surely_fits<V: CtValue>(size: &Size, ct: *const V) -> bool {
    let ifindex = unsafe { *V::fwd_ifindex(ct.cast_mut()) };
    // A GSO packet's header may hold 0 (BIG TCP) or the whole super-packet's
    // length: both go to the helper, which checks its segments.
    ifindex == 0 || (size.len != 0 && size.len <= MIN_MTU)
}

/// The IPv4 header's `Size`.
#[inline(always)]
pub fn size_v4(ip: *const Ipv4Hdr) -> Size {
    let (tot_len, frag_off) = unsafe { ((*ip).tot_len, (*ip).frag_off) };
    Size {
        len: u16::from_be(tot_len),
        fragmentable: frag_off & IP_DF == 0,
    }
}

/// Whether `send` will route the packet itself rather than hand it to the
/// kernel's routing (`kernel` as there): this node is then the router hop
/// that decrements the TTL (hop limit), and answers a packet whose TTL is
/// spent, as the kernel's forwarding would have. (An XDP frame that finds
/// no room for its metadata goes to the kernel after all, and gets its hop
/// back first: `Frame::forward` for XDP.)
#[inline(always)]
pub fn routes_itself<V: CtValue>(ct: *mut V, kernel: bool) -> bool {
    !kernel && unsafe { *V::fwd_kind(ct) } != FWD_KERNEL
}

/// Sends the rewritten packet on by its flow's decision; `kernel` forces the
/// kernel's routing (which fragments). A packet whose checksum is partial
/// (sent by a local socket behind a veth, never one off the wire) leaves
/// as an skb: an XDP frame would lose the skb's note that the checksum is
/// still to be completed, and reach its receiver with a wrong one.
#[inline(always)]
pub fn send<C: Frame, V: CtValue>(ctx: &C, ct: *mut V, kernel: bool, partial: bool) -> u32 {
    let (mut kind, ifindex) = unsafe { (*V::fwd_kind(ct), *V::fwd_ifindex(ct)) };
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
        // Copies the compiler knows cannot overlap: an assignment of the
        // arrays through raw pointers becomes a call of a byte-by-byte
        // `memmove` in BPF.
        unsafe {
            core::ptr::copy_nonoverlapping(V::fwd_smac(ct), &raw mut (*eth).src, 1);
            core::ptr::copy_nonoverlapping(V::fwd_dmac(ct), &raw mut (*eth).dst, 1);
        }
    }
    ctx.forward(kind, ifindex)
}

/// An address family's part of a FIB lookup's parameters.
pub trait FibAddr: Copy {
    fn set(params: &mut bpf_fib_lookup, src: Self, dst: Self);
}

impl FibAddr for u32 {
    #[inline(always)]
    fn set(params: &mut bpf_fib_lookup, src: u32, dst: u32) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }
}

impl FibAddr for [u32; 4] {
    #[inline(always)]
    fn set(params: &mut bpf_fib_lookup, src: [u32; 4], dst: [u32; 4]) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
}

/// A FIB lookup on the tuple the packet will carry once translated.
#[inline(always)]
pub fn resolve<C: Frame, K: Table>(ctx: &C, key: &K, ct: *mut K::Value)
where
    K::Addr: FibAddr,
{
    let (nat, snat) = unsafe { (K::Value::nat(ct), K::Value::snat(ct)) };
    let snat = is_set(snat.0).then_some(snat.0);
    let (src, dst) = if key.dir() == CT_DIR_FORWARD {
        (snat.unwrap_or(key.src().0), nat.0)
    } else {
        (nat.0, snat.unwrap_or(key.dst().0))
    };
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    K::Addr::set(&mut params, src, dst);
    params.l4_protocol = key.proto();
    // Any non-zero length makes the lookup compare it with the route's MTU
    // rather than check the skb; the minimum never fails, and `check` does
    // the per-packet test.
    params.__bindgen_anon_1.tot_len = 20;
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
        *K::Value::fwd_kind(ct) = kind;
        *K::Value::fwd_ifindex(ct) = if kind == FWD_KERNEL && rc != 0 {
            0
        } else {
            params.ifindex
        };
        core::ptr::copy_nonoverlapping(&params.smac, K::Value::fwd_smac(ct), 1);
        core::ptr::copy_nonoverlapping(&params.dmac, K::Value::fwd_dmac(ct), 1);
        *K::Value::state(ct) |= STATE_ROUTED;
    }
}
