//! Entry points. `lb` is the load balancer in XDP on external interfaces,
//! `lb_pod` the same packet path at tc ingress on pod interfaces, `lb_ext`
//! delivers at tc what `lb` translated but could not send itself, and
//! `lb_tc` runs the path at tc ingress of an external interface where XDP
//! would not pay (see `frame::Tc`); `lb6`, `lb6_pod` and `lb6_tc` run the
//! IPv6 path for the first three (which translate established IPv6 flows'
//! packets themselves), and `lb6_frag*` the same for IPv6
//! fragments and ICMPv6; `noop` exists so benchmarks measure the
//! BPF_PROG_TEST_RUN floor with the same object, and so tests can give a
//! veth's peer an XDP program.
//!
//! Unsafe in this module: the attributes that export `LICENSE` unmangled in
//! the `license` section, where the loader looks for it (GPL-only helpers
//! need it); no other symbol has that name.
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod flow_cache;
mod forward;
mod frags;
mod frame;
mod icmp;
mod icmp6;
mod maps;
mod monitor;
mod nat;
mod ndp;
mod parse;
mod policy;
mod reject;
mod select;
mod service;
mod service6;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use frame::Tc;

// `#[xdp]` wraps the body in an inner function; inlining it saves a
// BPF-to-BPF call (and, with return thunks, a costly return) per packet.
#[xdp]
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
    service::handle(&ctx)
}

/// What the tc path reads, up to the ports quoted in an ICMP error behind
/// IP options, must be in the skb's linear part for direct access.
const PULL_LEN: u32 = 128;

#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if linear < PULL_LEN && len > linear {
        // Fails only when the skb cannot be made writable; the path then
        // passes what it cannot read.
        let _ = ctx.pull_data(len.min(PULL_LEN));
    }
}

#[classifier]
#[inline(always)]
pub fn lb_pod(ctx: TcContext) -> i32 {
    pull_headers(&ctx);
    service::handle(&Tc::<true>(ctx)) as i32
}

#[classifier]
#[inline(always)]
pub fn lb_ext(ctx: TcContext) -> i32 {
    frame::deliver_meta(&ctx).unwrap_or(TC_ACT_OK as u32) as i32
}

/// Also delivers what XDP translated: while the agent moves an interface
/// between `lb` and `lb_tc`, both run for a moment.
#[classifier]
#[inline(always)]
pub fn lb_tc(ctx: TcContext) -> i32 {
    if let Some(action) = frame::deliver_meta(&ctx) {
        return action as i32;
    }
    pull_headers(&ctx);
    service::handle(&Tc::<false>(ctx)) as i32
}

/// The IPv6 path's entries, which the IPv4 programs above tail-call for
/// IPv6 packets (`maps::PATH_V6_XDP`, `PATH_V6_TC`).
#[xdp]
#[inline(always)]
pub fn lb6(ctx: XdpContext) -> u32 {
    service6::handle::<_, false>(&ctx)
}

#[classifier]
#[inline(always)]
pub fn lb6_pod(ctx: TcContext) -> i32 {
    service6::handle::<_, false>(&Tc::<true>(ctx)) as i32
}

#[classifier]
#[inline(always)]
pub fn lb6_tc(ctx: TcContext) -> i32 {
    service6::handle::<_, false>(&Tc::<false>(ctx)) as i32
}

/// The IPv6 entries for fragments, which the three above tail-call, and
/// for ICMPv6, which the IPv4 entries tail-call (`maps::PATH_V6_FRAG_XDP`,
/// `PATH_V6_FRAG_TC`).
#[xdp]
#[inline(always)]
pub fn lb6_frag(ctx: XdpContext) -> u32 {
    service6::handle::<_, true>(&ctx)
}

#[classifier]
#[inline(always)]
pub fn lb6_frag_pod(ctx: TcContext) -> i32 {
    service6::handle::<_, true>(&Tc::<true>(ctx)) as i32
}

#[classifier]
#[inline(always)]
pub fn lb6_frag_tc(ctx: TcContext) -> i32 {
    service6::handle::<_, true>(&Tc::<false>(ctx)) as i32
}

#[xdp]
pub fn noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
