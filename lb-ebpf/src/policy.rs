//! Per-frontend policies applied to new flows: loadBalancerSourceRanges and
//! source NAT (traffic from outside to a backend on another node, and a pod
//! reaching itself through its Service).
use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{
    BackendV4, Config, CtKeyV4, FrontendValue, SourceRangeKeyV4, BE_LOCAL, FE_EXTERNAL,
    FE_SOURCE_RANGES, IFACE_POD,
};

use crate::{conntrack, forward::iface_has, maps::SOURCE_RANGES_V4};

/// Traffic entering on a pod interface is in-cluster: source ranges apply
/// only to traffic from outside, as with kube-proxy.
#[inline(always)]
pub fn source_allowed(ctx: &XdpContext, fe: &FrontendValue, src: u32) -> bool {
    if fe.flags & FE_SOURCE_RANGES == 0 {
        return true;
    }
    if iface_has(ctx.ingress_ifindex() as u32, IFACE_POD) {
        return true;
    }
    let key = Key::new(
        64,
        SourceRangeKeyV4 {
            svc_id_be: fe.svc_id.to_be(),
            addr: src,
        },
    );
    SOURCE_RANGES_V4.get(&key).is_some()
}

/// Source NAT when the reply would otherwise bypass this node: a client
/// outside the cluster reaching a backend on another node
/// (externalTrafficPolicy Cluster), or a pod chosen as its own backend
/// (hairpin, as kube-proxy masquerades it).
#[inline(always)]
pub fn needs_snat(fe: &FrontendValue, be: &BackendV4, src: u32, cfg: &Config) -> bool {
    cfg.snat_addr != 0
        && ((fe.flags & FE_EXTERNAL != 0 && be.flags & BE_LOCAL == 0) || be.addr == src)
}

/// A port of the SNAT range whose reply tuple no live flow uses. Starts from
/// the client port's place in the range so that a client's retries land on
/// the same port, and probes a bounded number of neighbours.
#[inline(always)]
pub fn snat_port(be: &BackendV4, flow: &CtKeyV4, cfg: &Config, now: u64) -> Option<u16> {
    let min = cfg.snat_port_min as u32;
    let span = (cfg.snat_port_max as u32).saturating_sub(min) + 1;
    let start = u16::from_be(flow.src_port) as u32 ^ (flow.src_addr >> 16);
    let mut i = 0u32;
    while i < 16 {
        let port = ((min + (start + i) % span) as u16).to_be();
        let reply = CtKeyV4::reply((be.addr, be.port), (cfg.snat_addr, port), flow.proto);
        if conntrack::lookup(&reply, 0, now).is_none() {
            return Some(port);
        }
        i += 1;
    }
    None
}
