//! Per-frontend policies applied to new flows: loadBalancerSourceRanges and
//! source NAT (traffic from outside to a backend on another node, and a pod
//! reaching itself through its Service).
use aya_ebpf::{helpers::generated::bpf_get_prandom_u32, maps::lpm_trie::Key};
use lb_common::{
    BackendV4, Config, CtKeyV4, FrontendValue, SourceRangeKeyV4, BE_LOCAL, FE_EXTERNAL,
    FE_SOURCE_RANGES, IFACE_POD,
};

use crate::{conntrack, forward::iface_has, frame::Frame, maps::SOURCE_RANGES_V4};

/// Traffic entering on a pod interface is in-cluster: source ranges apply
/// only to traffic from outside, as with kube-proxy.
#[inline(always)]
pub fn source_allowed<C: Frame>(ctx: &C, fe: &FrontendValue, src: u32) -> bool {
    if fe.flags & FE_SOURCE_RANGES == 0 || C::POD_PATH {
        return true;
    }
    if iface_has(ctx.ifindex(), IFACE_POD) {
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

/// How many ports of the SNAT range a new flow tries when its client's own
/// port is taken.
const SNAT_PROBES: u32 = 32;

/// A source port whose reply tuple no live flow uses: the client's own, as
/// netfilter keeps it whenever the tuple stays unique, else one of the SNAT
/// range from a random start, so that a burst of flows (spoofed SYNs
/// included) spreads over the whole range instead of piling up behind one
/// start.
#[inline(always)]
pub fn snat_port(be: &BackendV4, flow: &CtKeyV4, cfg: &Config, now: u64) -> Option<u16> {
    let free = |port: u16| {
        let reply = CtKeyV4::reply((be.addr, be.port), (cfg.snat_addr, port), flow.proto);
        conntrack::lookup(&reply, 0, now).is_none()
    };
    if free(flow.src_port) {
        return Some(flow.src_port);
    }
    let min = cfg.snat_port_min as u32;
    let span = (cfg.snat_port_max as u32).saturating_sub(min) + 1;
    let start = unsafe { bpf_get_prandom_u32() };
    let mut i = 0u32;
    while i < SNAT_PROBES {
        let port = ((min + start.wrapping_add(i) % span) as u16).to_be();
        if free(port) {
            return Some(port);
        }
        i += 1;
    }
    None
}
