//! Per-frontend policies applied to new flows: loadBalancerSourceRanges and
//! source NAT (traffic from outside to a backend on another node, and a pod
//! reaching itself through its Service).
//!
//! Unsafe in this module: the random helper, which takes no arguments, and
//! reads of `CT_V4` and `CT_V6` entries, valid until the program returns.
use aya_ebpf::helpers::generated::bpf_get_prandom_u32;
use lb_common::{
    conntrack::STATE_SEEN_REPLY, Config, CtValue, FrontendValue, Reason, BE_LOCAL, FE_EXTERNAL,
    IFACE_POD,
};

use crate::{conntrack::Table, forward::iface_has, frame::Frame, stats};

/// Traffic entering on a pod interface is in-cluster: source ranges apply
/// only to traffic from outside, as with kube-proxy.
#[inline(always)]
pub fn in_cluster<C: Frame>(ctx: &C) -> bool {
    C::POD_PATH || iface_has(ctx.ifindex(), IFACE_POD)
}

/// Source NAT when the reply would otherwise bypass this node: a client
/// outside the cluster reaching a backend on another node
/// (externalTrafficPolicy Cluster), or a pod chosen as its own backend
/// (`hairpin`, as kube-proxy masquerades it). Either family; the caller
/// checks that it has a SNAT address.
#[inline(always)]
pub fn needs_snat(fe: &FrontendValue, backend_flags: u16, hairpin: bool) -> bool {
    (fe.flags & FE_EXTERNAL != 0 && backend_flags & BE_LOCAL == 0) || hairpin
}

/// How many ports of the SNAT range a new flow tries when its client's own
/// port is taken, in either family.
pub const SNAT_PROBES: u32 = 32;
/// When a new flow finds no free port among those it probed, it takes the
/// one held longest by a flow whose backend has not answered, among those
/// it sampled (`SNAT_STALE_SAMPLES`), if that is at least this old, as
/// netfilter's early drop evicts flows that saw no reply when its table is
/// full; the age is the reply entry's, which no forward packet refreshes.
/// Netfilter and Cilium refuse the new flow when their NAT finds no port;
/// that turns a burst of new flows, spoofed SYNs included, into a denial
/// of service for every client of the backend.
/// Taking the oldest makes the age given up follow the load: the range's
/// ports over the rate of new flows to one backend (36,280 ports at
/// 100,000 flows a second: 0.36 s), never below this floor, Linux's
/// shortest TCP retransmission timeout, far beyond an in-cluster backend's
/// answer. The price, paid only then, is that an answer later than that
/// reaches the flow that took the port. The range then carries 180,000 new
/// flows a second towards one backend, where netfilter carries its range
/// over the 30 s unreplied UDP lifetime.
const SNAT_RECLAIM_NS: u64 = 200_000_000;
/// Once a probe finds a stale port, the search ends this many probes later
/// and takes the oldest stale port it saw, unless a free one turns up: an
/// approximate "held longest" by sampling, as Redis evicts its least
/// recently used keys. When the range is full of stale flows (a flood of
/// new flows to one backend), a new flow then costs 5 map lookups instead
/// of all `SNAT_PROBES`, each cache misses in a table of that size: those
/// bucket walks were 30% of all samples in the testbed's north-south row
/// with a new flow per packet.
const SNAT_STALE_SAMPLES: u32 = 4;

/// What a probe found on a port.
#[derive(Clone, Copy)]
enum Probe {
    Free,
    /// Held this many ns by a flow that may give it up (`SNAT_RECLAIM_NS`).
    Stale(u64),
    Taken,
}

/// A source port whose reply tuple no live flow uses: the client's own, as
/// netfilter keeps it whenever the tuple stays unique, else one of the SNAT
/// range, each probe a port drawn at random. A burst of flows (spoofed
/// SYNs included) takes ports in runs; a window of consecutive ports from
/// one random start falls inside such a run, and found no free port in the
/// testbed's flood of new flows 8 times as often (15,836 drops against
/// 2,093). When no probe finds a free port, the port held longest by a
/// stale unreplied flow, of those sampled, is taken from it and that flow
/// forgotten. Either family: `backend` and `snat_addr` are of `flow`'s;
/// `probes` ports of the range are tried.
#[inline(always)]
pub fn snat_port<K: Table>(
    backend: (K::Addr, u16),
    snat_addr: K::Addr,
    flow: &K,
    (cfg, probes): (&Config, u32),
    now: u64,
) -> Option<u16> {
    let reply = |port: u16| K::reply(backend, (snat_addr, port), flow.proto());
    let probe = |port: u16| match reply(port).entry() {
        None => Probe::Free,
        Some(v) => {
            let (state, expires, seen) = unsafe {
                (
                    *K::Value::state(v),
                    *K::Value::expires_ns(v),
                    *K::Value::last_seen_ns(v),
                )
            };
            let age = now.saturating_sub(seen);
            if now > expires {
                Probe::Free
            } else if state & STATE_SEEN_REPLY == 0 && age > SNAT_RECLAIM_NS {
                Probe::Stale(age)
            } else {
                Probe::Taken
            }
        }
    };
    let client_port = flow.src().1;
    // The port held longest by a stale flow, and its age (0: none yet).
    let (mut oldest, mut oldest_age) = (client_port, 0);
    // Probes of the range to make; cut short once a stale port is seen.
    let mut budget = probes;
    match probe(client_port) {
        Probe::Free => return Some(client_port),
        Probe::Stale(age) => (oldest_age, budget) = (age, SNAT_STALE_SAMPLES.min(probes)),
        Probe::Taken => {}
    }
    let ports = cfg.snat_ports;
    let count = ports.count().max(1);
    let mut i = 0u32;
    while i < budget {
        let port = ports.nth(unsafe { bpf_get_prandom_u32() } % count).to_be();
        match probe(port) {
            Probe::Free => return Some(port),
            Probe::Stale(age) => {
                if oldest_age == 0 {
                    budget = budget.min(i + 1 + SNAT_STALE_SAMPLES);
                }
                if age > oldest_age {
                    (oldest, oldest_age) = (port, age);
                }
            }
            Probe::Taken => {}
        }
        i += 1;
    }
    if oldest_age == 0 {
        return None;
    }
    forget_flow_of(&reply(oldest));
    stats::count(Reason::SnatPortReclaimed);
    Some(oldest)
}

/// Deletes the forward entry of the flow whose reverse entry is `reply`;
/// the new flow's entries overwrite the reverse one.
#[inline(always)]
fn forget_flow_of<K: Table>(reply: &K) {
    let Some(v) = reply.entry() else {
        return;
    };
    let (frontend, client) = unsafe { (K::Value::nat(v), K::Value::snat(v)) };
    K::forward(client, frontend, reply.proto()).remove();
}
