//! Entry points. `lb` is the load balancer in XDP on external interfaces,
//! `lb_pod` the same packet path at tc ingress on pod interfaces, `lb_ext`
//! delivers at tc what `lb` translated but could not send itself; `noop`
//! exists so benchmarks measure the BPF_PROG_TEST_RUN floor with the same
//! object.
#![no_std]
#![no_main]

mod conntrack;
mod flow_cache;
mod forward;
mod frags;
mod frame;
mod icmp;
mod maps;
mod monitor;
mod nat;
mod parse;
mod policy;
mod reject;
mod select;
mod service;
mod sock;
mod stats;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

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

#[classifier]
#[inline(always)]
pub fn lb_pod(ctx: TcContext) -> i32 {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    let len = ctx.len();
    if linear < PULL_LEN && len > linear {
        // Fails only when the skb cannot be made writable; the path then
        // passes what it cannot read.
        let _ = ctx.pull_data(len.min(PULL_LEN));
    }
    service::handle(&ctx) as i32
}

#[classifier]
#[inline(always)]
pub fn lb_ext(ctx: TcContext) -> i32 {
    frame::deliver_meta(&ctx) as i32
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
