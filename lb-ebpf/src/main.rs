//! XDP entry points. `lb` is the load balancer; `noop` exists so benchmarks
//! measure the BPF_PROG_TEST_RUN floor with the same object.
#![no_std]
#![no_main]

mod conntrack;
mod flow_cache;
mod forward;
mod frags;
mod icmp;
mod maps;
mod nat;
mod parse;
mod policy;
mod reject;
mod select;
mod service;
mod sock;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

// `#[xdp]` wraps the body in an inner function; inlining it saves a
// BPF-to-BPF call (and, with return thunks, a costly return) per packet.
#[xdp]
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
    service::handle(&ctx)
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
