//! Flows to backends that are gone. UDP has no end-of-flow signal, so a UDP
//! client (DNS above all) would keep sending to a dead pod until its entry
//! times out: like kube-proxy's conntrack cleanup, those entries are deleted
//! when the backend leaves, and the next datagram picks a live backend.
//! TCP entries are left alone: the peer's RST or the close ends them, and a
//! backend that went away briefly (a restart under the same address) keeps
//! its connections. Affinity entries pointing at the backend go too.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use lb_common::{
    addr::{to_map, to_map_v6},
    checksum::Addr,
    CtKey, CtValue, CT_DIR_FORWARD, PROTO_TCP,
};

use super::NodeMaps;

/// What one `forget` deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Entries of every kind: both directions of a flow, and affinities.
    pub entries: usize,
    /// IPv4 flows, as kube-proxy's conntrack reconciler counts them (one
    /// kernel entry holds both directions): the forward entries deleted. A
    /// reply entry whose forward one the LRU had already evicted goes
    /// uncounted.
    pub flows: u64,
    /// IPv6 flows, counted the same way.
    pub flows_v6: u64,
}

/// Deletes the UDP connection-tracking entries (both directions) and the
/// affinity entries of `removed` and `removed_v6` backends.
pub fn forget(
    maps: &mut dyn NodeMaps,
    removed: &[(u32, Ipv4Addr, u16)],
    removed_v6: &[(u32, Ipv6Addr, u16)],
) -> Result<Forgotten> {
    if removed.is_empty() && removed_v6.is_empty() {
        return Ok(Forgotten::default());
    }
    let gone: HashSet<(u32, u16)> = removed
        .iter()
        .map(|&(_, a, p)| (to_map(a), p.to_be()))
        .collect();
    let gone_v6: HashSet<([u32; 4], u16)> = removed_v6
        .iter()
        .map(|&(_, a, p)| (to_map_v6(a), p.to_be()))
        .collect();
    let flows = maps.remove_flows(&|k, v| to_gone(k, v, &gone))?;
    let flows_v6 = maps.remove_flows_v6(&|k, v| to_gone(k, v, &gone_v6))?;
    let ids: HashSet<u32> = removed
        .iter()
        .map(|&(id, _, _)| id)
        .chain(removed_v6.iter().map(|&(id, _, _)| id))
        .collect();
    let affinities = maps.remove_affinities(&|v| ids.contains(&v.backend_id))?;
    let forward = flows.iter().filter(|k| k.dir == CT_DIR_FORWARD).count();
    let forward_v6 = flows_v6.iter().filter(|k| k.dir == CT_DIR_FORWARD).count();
    Ok(Forgotten {
        entries: flows.len() + flows_v6.len() + affinities,
        flows: forward as u64,
        flows_v6: forward_v6 as u64,
    })
}

/// Whether a flow entry is UDP to one of the `gone` backends.
fn to_gone<K, V, A>(k: &K, v: &V, gone: &HashSet<(A, u16)>) -> bool
where
    K: CtKey<Addr = A>,
    V: CtValue<Addr = A>,
    A: Addr + Eq + std::hash::Hash,
{
    if k.proto() == PROTO_TCP {
        return false;
    }
    let backend = if k.dir() == CT_DIR_FORWARD {
        unsafe { V::nat(v) }
    } else {
        k.src()
    };
    gone.contains(&backend)
}
