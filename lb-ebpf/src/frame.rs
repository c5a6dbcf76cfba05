//! The hooks the one packet path runs at, behind one trait: XDP on the
//! node's external interfaces (north-south traffic, before any skb exists)
//! and tc ingress on pod interfaces (traffic pods send), where a translated
//! packet is delivered with `bpf_redirect_peer`/`bpf_redirect_neigh` and
//! so never meets the host's input routing, netfilter or reverse-path check.
//!
//! Every function taking a `Frame` is generic and `#[inline(always)]`, so
//! each hook gets its own copy of the path with its own helpers inlined
//! and no indirect call.
//!
//! Unsafe in this module: helper calls on the hook's own context pointer
//! (a tail call included: it jumps to a program of the same hook type, or
//! returns when the slot is empty), and reads of `__sk_buff` fields the verifier allows tc programs to read.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
    },
    cty::c_void,
    helpers::generated::{
        bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_adjust_room,
        bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{
    meta::XdpMeta, Reason, FWD_KERNEL, FWD_NEIGH, FWD_PEER, FWD_REDIRECT, FWD_XDP, IFACE_POD,
    IFACE_REDIRECT, V6_EXT, V6_POD,
};

use crate::{
    forward::iface_info,
    maps::{PATH_V6_FRAG_TC, PATH_V6_FRAG_XDP, PATH_V6_TC, PATH_V6_XDP},
    nat,
    parse::{self, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    stats,
};

/// `bpf_check_mtu` flag: check each segment of a GSO packet, not its total.
const BPF_MTU_CHK_SEGS: u64 = 1;

pub trait Frame {
    const PASS: u32;
    const DROP: u32;
    /// tc on a pod interface: everything entering came from a pod.
    const POD_PATH: bool;
    /// Flags for `bpf_check_mtu` on this hook.
    const MTU_FLAGS: u64;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length, including what a GSO skb holds outside its
    /// linear part.
    fn len(&self) -> u32;
    fn ifindex(&self) -> u32;
    fn raw(&self) -> *mut c_void;
    /// Opens `by` bytes between the Ethernet and the IP header; afterwards
    /// the first `ETH_HLEN + by` bytes are the caller's to write.
    fn grow_l3(&self, by: u32) -> bool;
    /// Cuts the frame to `len` bytes.
    fn trim(&self, len: u32) -> bool;
    /// Sends a frame built in reply back where it came from; the MACs are
    /// already swapped.
    fn bounce(&self) -> u32;
    /// Sends a translated frame by its flow's forwarding decision; the MACs
    /// are already written unless the kind is `FWD_KERNEL` or `FWD_NEIGH`.
    fn forward(&self, kind: u8, ifindex: u32) -> u32;
    /// The forwarding kind for a FIB result `rc` with egress `ifindex`.
    fn kind_for(&self, rc: i64, ifindex: u32) -> u8;
    /// Hands the packet to this hook's IPv6 entry program; returns only when
    /// there is none.
    fn to_v6_path(&self);
    /// Hands an IPv6 fragment or ICMPv6 packet to this hook's IPv6 entry
    /// for them; returns only when there is none.
    fn to_v6_rare_path(&self);
}

impl Frame for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const POD_PATH: bool = false;
    const MTU_FLAGS: u64 = 0;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }
    #[inline(always)]
    fn grow_l3(&self, by: u32) -> bool {
        unsafe { bpf_xdp_adjust_head(self.ctx, -(by as i32)) == 0 }
    }
    #[inline(always)]
    fn trim(&self, len: u32) -> bool {
        let have = Frame::len(self) as i32;
        have <= len as i32 || unsafe { bpf_xdp_adjust_tail(self.ctx, len as i32 - have) == 0 }
    }
    #[inline(always)]
    fn bounce(&self) -> u32 {
        let ifindex = self.ifindex();
        if iface_info(ifindex).is_some_and(|f| f & IFACE_REDIRECT != 0) {
            return xdp_action::XDP_TX;
        }
        via_tc(self, FWD_REDIRECT, ifindex);
        xdp_action::XDP_PASS
    }
    #[inline(always)]
    fn forward(&self, kind: u8, ifindex: u32) -> u32 {
        if kind & FWD_XDP != 0 {
            stats::count(Reason::FwdRedirect);
            return unsafe { bpf_redirect(ifindex, 0) as u32 };
        }
        if kind == FWD_KERNEL {
            stats::count(Reason::FwdKernel);
            return xdp_action::XDP_PASS;
        }
        if !via_tc(self, kind, ifindex) {
            give_back_hop(self);
        }
        xdp_action::XDP_PASS
    }
    #[inline(always)]
    fn kind_for(&self, rc: i64, ifindex: u32) -> u8 {
        let kind = skb_kind(rc, ifindex);
        if rc == BPF_FIB_LKUP_RET_SUCCESS as i64
            && iface_info(ifindex).is_some_and(|f| f & IFACE_REDIRECT != 0)
        {
            kind | FWD_XDP
        } else {
            kind
        }
    }
    #[inline(always)]
    fn to_v6_path(&self) {
        unsafe { PATH_V6_XDP.tail_call(self, 0) };
    }
    #[inline(always)]
    fn to_v6_rare_path(&self) {
        unsafe { PATH_V6_FRAG_XDP.tail_call(self, 0) };
    }
}

/// Puts an `XdpMeta` in front of the frame, telling the tc program on this
/// interface to send it with `kind` to `ifindex` once XDP passes it.
/// Returns `false` when there is no room for it (a driver without XDP
/// metadata, or room another program took): the kernel routes the frame.
#[inline(always)]
fn via_tc(ctx: &XdpContext, kind: u8, ifindex: u32) -> bool {
    let size = core::mem::size_of::<XdpMeta>();
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size as i32)) } != 0 {
        stats::count(Reason::FwdKernel);
        return false;
    }
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, (*ctx.ctx).data as usize) };
    if meta + size > data {
        return false;
    }
    unsafe { *(meta as *mut XdpMeta) = XdpMeta::new(kind, ifindex) };
    true
}

/// Undoes the TTL (hop limit) decrement of a translated frame `send` meant
/// to route itself (`forward::routes_itself`) and hands to the kernel after
/// all, whose forwarding takes the hop.
#[inline(always)]
fn give_back_hop(ctx: &XdpContext) {
    let Some(eth) = parse::ptr_at::<EthHdr>(ctx, 0) else {
        return;
    };
    match unsafe { (*eth).proto } {
        ETH_P_IP => {
            if let Some(ip) = parse::ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) {
                nat::give_back_hop(ip);
            }
        }
        ETH_P_IPV6 => {
            if let Some(ip) = parse::ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN) {
                nat::give_back_hop_v6(ip);
            }
        }
        _ => {}
    }
}

/// The skb-level forwarding kind for a FIB result: into a pod's namespace
/// directly when the egress is a pod interface, to a known interface with the
/// FIB's MACs, and through the kernel's neighbour code for any other
/// interface (a bridge, a tunnel) or a neighbour not resolved yet.
#[inline(always)]
fn skb_kind(rc: i64, ifindex: u32) -> u8 {
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        match iface_info(ifindex) {
            Some(f) if f & IFACE_POD != 0 => FWD_PEER,
            Some(_) => FWD_REDIRECT,
            None => FWD_NEIGH,
        }
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        FWD_NEIGH
    } else {
        FWD_KERNEL
    }
}

/// At tc ingress behind `lb`: sends an skb the way the `XdpMeta` XDP left in
/// front of it says; `None` for an skb XDP left no record on.
#[inline(always)]
pub fn deliver_meta(ctx: &TcContext) -> Option<u32> {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<XdpMeta>() > data {
        return None;
    }
    let slot = meta as *mut XdpMeta;
    let meta = unsafe { *slot };
    let kind = meta.kind()?;
    // The kernel keeps an skb's metadata length across a veth: unerased,
    // this would steer the packet again wherever it arrives next.
    unsafe { (*slot).magic = 0 };
    Some(redirect_skb(kind, meta.ifindex))
}

/// Redirects an skb the way `kind` says.
#[inline(always)]
pub fn redirect_skb(kind: u8, ifindex: u32) -> u32 {
    let rc = match kind & !FWD_XDP {
        FWD_REDIRECT => {
            stats::count(Reason::FwdRedirect);
            unsafe { bpf_redirect(ifindex, 0) }
        }
        FWD_PEER => {
            stats::count(Reason::FwdPeer);
            unsafe { bpf_redirect_peer(ifindex, 0) }
        }
        FWD_NEIGH => {
            stats::count(Reason::FwdNeigh);
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) }
        }
        _ => {
            stats::count(Reason::FwdKernel);
            return TC_ACT_OK as u32;
        }
    };
    rc as u32
}

/// The packet path at tc ingress. `POD`: a pod interface, where
/// everything entering came from a pod; otherwise an external interface
/// that runs the path at tc instead of XDP (a veth whose peer takes no XDP
/// frames, where native XDP would convert, and often copy, every skb only
/// to turn it back into one).
pub struct Tc<const POD: bool>(pub TcContext);

impl<const POD: bool> Frame for Tc<POD> {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    const POD_PATH: bool = POD;
    const MTU_FLAGS: u64 = BPF_MTU_CHK_SEGS;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.0.as_ptr()
    }
    /// `BPF_ADJ_ROOM_MAC` moves the Ethernet header forward and points the
    /// skb's network header at the room, where the new IP header goes.
    #[inline(always)]
    fn grow_l3(&self, by: u32) -> bool {
        unsafe { bpf_skb_adjust_room(self.0.skb.skb, by as i32, BPF_ADJ_ROOM_MAC, 0) == 0 }
    }
    #[inline(always)]
    fn trim(&self, len: u32) -> bool {
        unsafe { bpf_skb_change_tail(self.0.skb.skb, len, 0) == 0 }
    }
    /// Back where the packet came from: into the pod it came from, or out
    /// of the external interface it entered by. A frame built from a packet
    /// a pod sent with checksum offload stays CHECKSUM_PARTIAL, whose
    /// receiver trusts it: delivered on the receive side, nothing completes
    /// a checksum at an offset that no longer holds one.
    #[inline(always)]
    fn bounce(&self) -> u32 {
        if POD {
            stats::count(Reason::FwdPeer);
            unsafe { bpf_redirect_peer(self.ifindex(), 0) as u32 }
        } else {
            stats::count(Reason::FwdRedirect);
            unsafe { bpf_redirect(self.ifindex(), 0) as u32 }
        }
    }
    #[inline(always)]
    fn forward(&self, kind: u8, ifindex: u32) -> u32 {
        redirect_skb(kind, ifindex)
    }
    #[inline(always)]
    fn kind_for(&self, rc: i64, ifindex: u32) -> u8 {
        skb_kind(rc, ifindex)
    }
    #[inline(always)]
    fn to_v6_path(&self) {
        let index = if POD { V6_POD } else { V6_EXT };
        unsafe { PATH_V6_TC.tail_call(&self.0, index) };
    }
    #[inline(always)]
    fn to_v6_rare_path(&self) {
        let index = if POD { V6_POD } else { V6_EXT };
        unsafe { PATH_V6_FRAG_TC.tail_call(&self.0, index) };
    }
}
