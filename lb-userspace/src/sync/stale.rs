//! Flows to backends that are gone. UDP has no end-of-flow signal, so a UDP
//! client (DNS above all) would keep sending to a dead pod until its entry
//! times out: like kube-proxy's conntrack cleanup, those entries are deleted
//! when the backend leaves, and the next datagram picks a live backend.
//! TCP entries are left alone: the peer's RST or the close ends them, and a
//! backend that went away briefly (a restart under the same address) keeps
//! its connections. Affinity entries pointing at the backend go too.
use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::Result;
use lb_common::{addr::to_map, CT_DIR_FORWARD, PROTO_TCP};

use super::NodeMaps;

/// What one `forget` deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Entries of every kind: both directions of a flow, and affinities.
    pub entries: usize,
    /// Flows, as kube-proxy's conntrack reconciler counts them (one kernel
    /// entry holds both directions): the forward entries deleted. A reply
    /// entry whose forward one the LRU had already evicted goes uncounted.
    pub flows: u64,
}

/// Deletes the UDP connection-tracking entries (both directions) and the
/// affinity entries of `removed` backends.
pub fn forget(maps: &mut dyn NodeMaps, removed: &[(u32, Ipv4Addr, u16)]) -> Result<Forgotten> {
    if removed.is_empty() {
        return Ok(Forgotten::default());
    }
    let gone: HashSet<(u32, u16)> = removed
        .iter()
        .map(|&(_, a, p)| (to_map(a), p.to_be()))
        .collect();
    let ids: HashSet<u32> = removed.iter().map(|&(id, _, _)| id).collect();
    let flows = maps.remove_flows(&|k, v| {
        if k.proto == PROTO_TCP {
            return false;
        }
        let backend = if k.dir == CT_DIR_FORWARD {
            (v.nat_addr, v.nat_port)
        } else {
            (k.src_addr, k.src_port)
        };
        gone.contains(&backend)
    })?;
    let affinities = maps.remove_affinities(&|v| ids.contains(&v.backend_id))?;
    Ok(Forgotten {
        entries: flows.len() + affinities,
        flows: flows.iter().filter(|k| k.dir == CT_DIR_FORWARD).count() as u64,
    })
}
