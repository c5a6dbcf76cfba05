//! What one Service port puts into the maps, computed without writing: the
//! unit the syncer diffs, reference-counts and remembers.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::Result;
use lb_common::{
    addr::to_map,
    filter::{position, AddrSet},
    FrontendKeyV4, FrontendValue, FE_DROP_EMPTY, FE_EXTERNAL, FE_SOURCE_RANGES, PROTO_TCP,
    PROTO_UDP,
};

use super::alloc::Segments;
use crate::{
    maglev,
    model::{Backend, FrontendKind, Proto, ServicePort},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    pub offset: u32,
    pub size: u32,
    /// Backend ids in the order the table was built from.
    pub members: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// The desired state this was built from; `None` when recovered from
    /// pinned maps, so the first sync re-plans (and finds nothing to write).
    pub spec: Option<ServicePort>,
    pub svc_id: u32,
    pub frontends: BTreeMap<FrontendKeyV4, FrontendValue>,
    pub backends: BTreeSet<(Ipv4Addr, u16)>,
    /// Frontend addresses whose unknown ports are rejected.
    pub addrs: BTreeSet<u32>,
    /// Address-filter bits as (word, bit).
    pub bits: BTreeSet<(u32, u64)>,
    pub ranges: BTreeSet<(Ipv4Addr, u8)>,
    /// By traffic class (0 or `FE_EXTERNAL`).
    pub rings: BTreeMap<u32, Ring>,
    /// Slots of the rings this plan built anew; written once, then dropped.
    pub tables: BTreeMap<u32, Vec<u32>>,
}

pub fn filter_bits<'a>(
    frontends: impl Iterator<Item = &'a FrontendKeyV4>,
    backends: impl Iterator<Item = &'a (Ipv4Addr, u16)>,
) -> BTreeSet<(u32, u64)> {
    frontends
        .map(|k| position(k.addr, AddrSet::Frontend))
        .chain(backends.map(|(a, _)| position(to_map(*a), AddrSet::Backend)))
        .collect()
}

/// Plans Service port `sp` with id `svc_id`, reusing `old`'s rings whose
/// members did not change; `backend_id` hands out backend ids. On error
/// the ring slots it took are free again.
pub fn service(
    svc_id: u32,
    proto: Proto,
    sp: &ServicePort,
    old: Option<&Applied>,
    backend_id: &mut dyn FnMut(&Backend) -> Result<u32>,
    segments: &mut Segments,
) -> Result<Applied> {
    let mut a = Applied {
        spec: Some(sp.clone()),
        svc_id,
        ranges: sp.load_balancer_source_ranges.iter().copied().collect(),
        ..Applied::default()
    };
    match fill(&mut a, proto, sp, old, backend_id, segments) {
        Ok(()) => Ok(a),
        Err(e) => {
            release_new_rings(&a, segments);
            Err(e)
        }
    }
}

/// Gives back the slots of the rings `a` built anew (not those it reuses).
pub fn release_new_rings(a: &Applied, segments: &mut Segments) {
    for (class, ring) in &a.rings {
        if a.tables.contains_key(class) {
            segments.give(ring.offset, ring.size);
        }
    }
}

fn fill(
    a: &mut Applied,
    proto: Proto,
    sp: &ServicePort,
    old: Option<&Applied>,
    backend_id: &mut dyn FnMut(&Backend) -> Result<u32>,
    segments: &mut Segments,
) -> Result<()> {
    for fe in &sp.frontends {
        let external = fe.kind != FrontendKind::ClusterIp;
        let (class, backends, policy_local) = if external {
            (FE_EXTERNAL, &sp.external_backends, sp.external_policy_local)
        } else {
            (0, &sp.cluster_backends, sp.internal_policy_local)
        };
        if !a.rings.contains_key(&class) {
            let ids = backends
                .iter()
                .map(&mut *backend_id)
                .collect::<Result<Vec<u32>>>()?;
            a.backends.extend(backends.iter().map(|b| (b.addr, b.port)));
            let reuse = old
                .and_then(|o| o.rings.get(&class))
                .filter(|r| r.members == ids);
            let ring = match reuse {
                Some(r) => r.clone(),
                None => {
                    let size = if ids.is_empty() {
                        0
                    } else {
                        maglev::ring_size(ids.len())
                    };
                    let offset = if size == 0 { 0 } else { segments.take(size)? };
                    let names: Vec<String> = backends
                        .iter()
                        .map(|b| format!("{}:{}", b.addr, b.port))
                        .collect();
                    let table = maglev::table(&names, size)
                        .into_iter()
                        .map(|i| ids[i as usize])
                        .collect();
                    a.tables.insert(class, table);
                    Ring {
                        offset,
                        size,
                        members: ids,
                    }
                }
            };
            a.rings.insert(class, ring);
        }
        let ring = &a.rings[&class];
        let mut flags = class;
        if policy_local {
            flags |= FE_DROP_EMPTY;
        }
        if external && !sp.load_balancer_source_ranges.is_empty() {
            flags |= FE_SOURCE_RANGES;
        }
        let key = FrontendKeyV4 {
            addr: to_map(fe.addr),
            port: fe.port.to_be(),
            proto: match proto {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
            },
            _pad: 0,
        };
        a.frontends.insert(
            key,
            FrontendValue {
                svc_id: a.svc_id,
                ring_offset: ring.offset,
                ring_size: ring.size,
                flags,
                affinity_timeout_s: sp.session_affinity_timeout_s.unwrap_or(0),
                _pad: 0,
            },
        );
        // On node addresses the node's own ports must keep working: unknown
        // ports there pass to the kernel.
        if !fe.on_node {
            a.addrs.insert(key.addr);
        }
    }
    a.bits = filter_bits(a.frontends.keys(), a.backends.iter());
    Ok(())
}
