//! Flows to backends that are gone. UDP has no end-of-flow signal, so a UDP
//! client (DNS above all) would keep sending to a dead pod until its entry
//! times out: like kube-proxy's conntrack cleanup, those entries are deleted
//! when the backend leaves, and the next datagram picks a live backend.
//! TCP entries are left alone: the peer's RST or the close ends them, and a
//! backend that went away briefly (a restart under the same address) keeps
//! its connections. Affinity entries pointing at the backend go too.
use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::Result;
use lb_common::{addr::to_map, AffinityValue, CtKeyV4, CT_DIR_FORWARD, PROTO_TCP};

use crate::datapath::Maps;

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
pub fn forget(maps: &mut Maps, removed: &[(u32, Ipv4Addr, u16)]) -> Result<Forgotten> {
    let mut forgotten = Forgotten::default();
    if removed.is_empty() {
        return Ok(forgotten);
    }
    let gone: HashSet<(u32, u16)> = removed
        .iter()
        .map(|&(_, a, p)| (to_map(a), p.to_be()))
        .collect();
    let ids: HashSet<u32> = removed.iter().map(|&(id, _, _)| id).collect();
    let mut doomed: Vec<CtKeyV4> = Vec::new();
    for entry in maps.ct.iter() {
        let (k, v) = entry?;
        if k.proto == PROTO_TCP {
            continue;
        }
        let backend = if k.dir == CT_DIR_FORWARD {
            (v.nat_addr, v.nat_port)
        } else {
            (k.src_addr, k.src_port)
        };
        if gone.contains(&backend) {
            doomed.push(k);
        }
    }
    for k in doomed {
        // An entry the LRU evicted meanwhile is already gone.
        if maps.ct.remove(&k).is_ok() {
            forgotten.entries += 1;
            forgotten.flows += u64::from(k.dir == CT_DIR_FORWARD);
        }
        maps.forget_cached(&k)?;
    }
    forgotten.entries += forget_affinity(&mut maps.affinity, &ids);
    forgotten.entries += forget_affinity(&mut maps.sock_affinity, &ids);
    Ok(forgotten)
}

/// Deletes the entries of `map` that stick to a backend in `ids`.
fn forget_affinity<K: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, AffinityValue>,
    ids: &HashSet<u32>,
) -> usize {
    let stale: Vec<K> = map
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, v)| ids.contains(&v.backend_id))
        .map(|(k, _)| k)
        .collect();
    stale.iter().filter(|k| map.remove(k).is_ok()).count()
}
