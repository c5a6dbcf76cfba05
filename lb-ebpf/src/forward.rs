//! After a rewrite: send the frame straight out of the egress interface with
//! the right MACs when the FIB knows the neighbour and the device takes XDP
//! frames, else let the kernel route it. The decision is cached in the
//! connection-tracking entry and refreshed once per `CT_REFRESH_NS`, so an
//! established flow pays no FIB lookup.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{conntrack::STATE_ROUTED, CtValueV4, Reason, IFACE_REDIRECT};

use crate::{
    maps::IFACES,
    parse::{self, EthHdr, Ipv4Hdr},
    stats,
};

const AF_INET: u8 = 2;

/// Whether interface `ifindex` carries `flag` (`IFACE_*`) in `IFACES`.
#[inline(always)]
pub fn iface_has(ifindex: u32, flag: u32) -> bool {
    IFACES
        .get_ptr(ifindex)
        .is_some_and(|i| unsafe { (*i).flags } & flag != 0)
}

#[inline(always)]
pub fn send(ctx: &XdpContext, ip: *const Ipv4Hdr, ct: *mut CtValueV4, refresh: bool) -> u32 {
    if refresh {
        resolve(ctx, ip, ct);
    }
    let ifindex = unsafe { (*ct).fwd_ifindex };
    if ifindex == 0 {
        stats::count(Reason::FwdKernel);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = parse::ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    unsafe {
        (*eth).src = (*ct).fwd_smac;
        (*eth).dst = (*ct).fwd_dmac;
    }
    stats::count(Reason::FwdRedirect);
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[inline(always)]
fn resolve(ctx: &XdpContext, ip: *const Ipv4Hdr, ct: *mut CtValueV4) {
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    unsafe {
        params.l4_protocol = (*ip).proto;
        params.__bindgen_anon_1.tot_len = u16::from_be((*ip).tot_len);
        params.__bindgen_anon_3.ipv4_src = (*ip).src;
        params.__bindgen_anon_4.ipv4_dst = (*ip).dst;
    }
    params.ifindex = ctx.ingress_ifindex() as u32;
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let redirect =
        rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && iface_has(params.ifindex, IFACE_REDIRECT);
    unsafe {
        if redirect {
            (*ct).fwd_ifindex = params.ifindex;
            (*ct).fwd_smac = params.smac;
            (*ct).fwd_dmac = params.dmac;
        } else {
            (*ct).fwd_ifindex = 0;
        }
        (*ct).state |= STATE_ROUTED;
    }
}
