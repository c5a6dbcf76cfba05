//! What one Service port puts into the maps, computed without writing: the
//! unit the syncer diffs, reference-counts and remembers.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::Result;
use lb_common::{
    addr::{to_map, to_map_v6},
    filter::{position, position_v6, AddrSet},
    FrontendKeyV4, FrontendKeyV6, FrontendValue, FE_DROP_EMPTY, FE_EXTERNAL, FE_SOURCE_RANGES,
    PROTO_TCP, PROTO_UDP,
};

use super::alloc::Segments;
use crate::{
    maglev,
    model::{FrontendKind, Proto, ServicePort},
};

/// The family bit of a ring class, beside `FE_EXTERNAL`: a Service port's
/// IPv6 frontends have rings of their own (`RING_V6` for ClusterIPs,
/// `RING_V6 | FE_EXTERNAL` for the others), of IPv6 backends only, on the
/// same slots array and under the same service id. Never written into a
/// frontend's flags.
pub const RING_V6: u32 = 1 << 31;

/// A backend as the syncer counts it: (address, port), either family.
pub type BackendAddr = (IpAddr, u16);

/// Hands out the backend id of (address, port, on this node).
pub type BackendIds<'a> = dyn FnMut(IpAddr, u16, bool) -> Result<u32> + 'a;

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
    pub frontends_v6: BTreeMap<FrontendKeyV6, FrontendValue>,
    pub backends: BTreeSet<BackendAddr>,
    /// Frontend addresses of both families whose unknown ports are rejected.
    pub addrs: BTreeSet<IpAddr>,
    /// Address-filter bits as (word, bit).
    pub bits: BTreeSet<(u32, u64)>,
    /// loadBalancerSourceRanges of both families.
    pub ranges: BTreeSet<(IpAddr, u8)>,
    /// By traffic class: `FE_EXTERNAL` or not, `RING_V6` or not.
    pub rings: BTreeMap<u32, Ring>,
    /// Slots of the rings this plan built anew; written once, then dropped.
    pub tables: BTreeMap<u32, Vec<u32>>,
}

/// The packet path's address-filter bits of both families' frontends and
/// backends.
pub fn filter_bits<'a>(
    frontends: impl Iterator<Item = &'a FrontendKeyV4>,
    frontends_v6: impl Iterator<Item = &'a FrontendKeyV6>,
    backends: impl Iterator<Item = &'a BackendAddr>,
) -> BTreeSet<(u32, u64)> {
    let backends = backends.map(|(a, _)| match a {
        IpAddr::V4(a) => position(to_map(*a), AddrSet::Backend),
        IpAddr::V6(a) => position_v6(to_map_v6(*a), AddrSet::Backend),
    });
    frontends
        .map(|k| position(k.addr, AddrSet::Frontend))
        .chain(frontends_v6.map(|k| position_v6(k.addr, AddrSet::Frontend)))
        .chain(backends)
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
    backend_id: &mut BackendIds,
    segments: &mut Segments,
) -> Result<Applied> {
    let mut a = Applied {
        spec: Some(sp.clone()),
        svc_id,
        ranges: sp
            .load_balancer_source_ranges
            .iter()
            .map(|&(a, len)| (IpAddr::V4(a), len))
            .chain(
                sp.load_balancer_source_ranges_v6
                    .iter()
                    .map(|&(a, len)| (IpAddr::V6(a), len)),
            )
            .collect(),
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
    backend_id: &mut BackendIds,
    segments: &mut Segments,
) -> Result<()> {
    let proto = match proto {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
    };
    let affinity_timeout_s = sp.session_affinity_timeout_s.unwrap_or(0);
    for fe in &sp.frontends {
        let external = fe.kind != FrontendKind::ClusterIp;
        let (class, backends, policy_local) = if external {
            (FE_EXTERNAL, &sp.external_backends, sp.external_policy_local)
        } else {
            (0, &sp.cluster_backends, sp.internal_policy_local)
        };
        let members = backends
            .iter()
            .map(|b| (IpAddr::V4(b.addr), b.port, b.is_local));
        let ring = ring(a, class, members, old, backend_id, segments)?;
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
            proto,
            _pad: 0,
        };
        a.frontends.insert(
            key,
            FrontendValue {
                svc_id: a.svc_id,
                ring_offset: ring.offset,
                ring_size: ring.size,
                flags,
                affinity_timeout_s,
                _pad: 0,
            },
        );
        // On node addresses the node's own ports must keep working: unknown
        // ports there pass to the kernel.
        if !fe.on_node {
            a.addrs.insert(IpAddr::V4(fe.addr));
        }
    }
    // As kube-proxy filters them per family, only IPv6 ranges restrict
    // IPv6 clients.
    let ranged = !sp.load_balancer_source_ranges_v6.is_empty();
    for fe in &sp.frontends_v6 {
        let external = fe.kind != FrontendKind::ClusterIp;
        let (mut flags, backends, policy_local) = if external {
            (
                FE_EXTERNAL,
                &sp.external_backends_v6,
                sp.external_policy_local,
            )
        } else {
            (0, &sp.cluster_backends_v6, sp.internal_policy_local)
        };
        let members = backends
            .iter()
            .map(|b| (IpAddr::V6(b.addr), b.port, b.is_local));
        let ring = ring(a, RING_V6 | flags, members, old, backend_id, segments)?;
        if policy_local {
            flags |= FE_DROP_EMPTY;
        }
        if external && ranged {
            flags |= FE_SOURCE_RANGES;
        }
        let key = FrontendKeyV6 {
            addr: lb_common::addr::to_map_v6(fe.addr),
            port: fe.port.to_be(),
            proto,
            _pad: 0,
        };
        a.frontends_v6.insert(
            key,
            FrontendValue {
                svc_id: a.svc_id,
                ring_offset: ring.offset,
                ring_size: ring.size,
                flags,
                affinity_timeout_s,
                _pad: 0,
            },
        );
        if !fe.on_node {
            a.addrs.insert(IpAddr::V6(fe.addr));
        }
    }
    a.bits = filter_bits(a.frontends.keys(), a.frontends_v6.keys(), a.backends.iter());
    Ok(())
}

/// The ring of traffic class `class`, built from `members` (address, port,
/// on this node) the first time a frontend of the class asks; `old`'s when
/// its members did not change.
fn ring(
    a: &mut Applied,
    class: u32,
    members: impl Iterator<Item = (IpAddr, u16, bool)> + Clone,
    old: Option<&Applied>,
    backend_id: &mut BackendIds,
    segments: &mut Segments,
) -> Result<Ring> {
    if let Some(ring) = a.rings.get(&class) {
        return Ok(ring.clone());
    }
    let ids = members
        .clone()
        .map(|(addr, port, local)| backend_id(addr, port, local))
        .collect::<Result<Vec<u32>>>()?;
    a.backends
        .extend(members.clone().map(|(addr, port, _)| (addr, port)));
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
            let names: Vec<String> = members
                .map(|(addr, port, _)| format!("{addr}:{port}"))
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
    a.rings.insert(class, ring.clone());
    Ok(ring)
}
