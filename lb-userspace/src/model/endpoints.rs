//! EndpointSlices into per-Service-port endpoint lists, and kube-proxy's
//! choice of which of them take traffic (`CategorizeEndpoints`).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use super::{
    namespace_of, parse_port, parse_proto, Backend, Family, NodeInfo, Problem, Proto,
    ServicePortId, LABEL_HEADLESS, LABEL_SERVICE_NAME,
};

/// An endpoint and the topology hints its slice gives it.
#[derive(Clone, Debug)]
pub(super) struct Candidate<A> {
    pub backend: Backend<A>,
    /// `hints.forZones`: the zones whose nodes should use it.
    pub zones: Vec<String>,
    /// `hints.forNodes`: the nodes that should use it.
    pub nodes: Vec<String>,
}

/// Every endpoint of every joined slice of family `A`, keyed by the Service port it
/// belongs to (the slice port's name and protocol, as kube-proxy joins
/// them), deduplicated on (addr, port) and sorted. Conditions and hints
/// are kept; `cluster` and `local` choose.
pub(super) fn collect<A: Family>(
    slices: &[EndpointSlice],
    node_name: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<ServicePortId, Vec<Candidate<A>>> {
    // Sorted so that which duplicate wins does not depend on arrival order.
    let mut slices: Vec<&EndpointSlice> = slices.iter().collect();
    slices.sort_by(|a, b| {
        (namespace_of(&a.metadata), &a.metadata.name)
            .cmp(&(namespace_of(&b.metadata), &b.metadata.name))
    });
    let mut merged: BTreeMap<ServicePortId, BTreeMap<(A, u16), Candidate<A>>> = BTreeMap::new();
    for slice in slices {
        // FQDN slices are not for this data plane, the other family's are
        // the other call's.
        if slice.address_type != A::ADDRESS_TYPE {
            continue;
        }
        let labels = slice.metadata.labels.as_ref();
        if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
            continue;
        }
        let namespace = namespace_of(&slice.metadata);
        let mut problem = |message: String| {
            problems.push(Problem {
                object: format!(
                    "EndpointSlice {namespace}/{}",
                    slice.metadata.name.as_deref().unwrap_or_default()
                ),
                message,
            })
        };
        let Some(service) = labels
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .filter(|s| !s.is_empty())
        else {
            problem(format!(
                "no {LABEL_SERVICE_NAME} label; not joined to any Service"
            ));
            continue;
        };
        let endpoints: Vec<Candidate<A>> = slice
            .endpoints
            .iter()
            .filter_map(|ep| endpoint(ep, node_name).map_err(&mut problem).ok())
            .collect();
        for port in slice.ports.iter().flatten() {
            let (port_name, protocol, number) = match slice_port(port) {
                Ok(Some(port)) => port,
                Ok(None) => continue,
                Err(message) => {
                    problem(message);
                    continue;
                }
            };
            let id = ServicePortId {
                namespace: namespace.to_string(),
                name: service.clone(),
                port_name,
                protocol,
            };
            let set = merged.entry(id).or_default();
            for ep in &endpoints {
                let mut candidate = ep.clone();
                candidate.backend.port = number;
                // The same address may sit in two slices while an endpoint
                // moves between them; kube-proxy lets the local copy win,
                // and a ready copy is preferred so a stale one cannot hide it.
                let rank =
                    |c: &Candidate<A>| (c.backend.is_local, c.backend.ready, c.backend.serving);
                match set.entry((candidate.backend.addr, number)) {
                    Entry::Vacant(slot) => {
                        slot.insert(candidate);
                    }
                    Entry::Occupied(mut slot) => {
                        if rank(&candidate) > rank(slot.get()) {
                            slot.insert(candidate);
                        }
                    }
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(id, set)| (id, set.into_values().collect()))
        .collect()
}

/// (name, protocol, number) of a slice port; `None` for SCTP, whose
/// Service port is already reported as unsupported.
fn slice_port(port: &EndpointPort) -> Result<Option<(String, Proto, u16)>, String> {
    let name = port.name.clone().unwrap_or_default();
    let protocol = match parse_proto(port.protocol.as_deref()) {
        Ok(protocol) => protocol,
        Err(_) if port.protocol.as_deref() == Some("SCTP") => return Ok(None),
        Err(message) => return Err(format!("port {name:?}: {message}")),
    };
    let number = port
        .port
        .ok_or_else(|| "port number is missing".to_string())
        .and_then(|n| parse_port("port", n))
        .map_err(|message| format!("port {name:?}: {message}"))?;
    Ok(Some((name, protocol, number)))
}

/// An endpoint with port 0; the slice's ports fill it in.
fn endpoint<A: Family>(ep: &Endpoint, node_name: &str) -> Result<Candidate<A>, String> {
    // Only the first address has defined semantics; kube-proxy ignores the rest.
    let first = ep
        .addresses
        .first()
        .ok_or_else(|| "endpoint without addresses".to_string())?;
    let addr: A = first.parse().map_err(|_| {
        format!(
            "endpoint address {first:?} is not an {} address",
            A::ADDRESS_TYPE
        )
    })?;
    if let Some(why) = super::unusable(addr, false) {
        return Err(format!("endpoint address {addr} is {why}"));
    }
    let conditions = ep.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let node = ep.node_name.clone().filter(|n| !n.is_empty());
    let hints = ep.hints.as_ref();
    Ok(Candidate {
        backend: Backend {
            addr,
            port: 0,
            is_local: !node_name.is_empty() && node.as_deref() == Some(node_name),
            node_name: node,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        },
        zones: hints
            .and_then(|h| h.for_zones.as_ref())
            .map(|z| z.iter().map(|z| z.name.clone()).collect())
            .unwrap_or_default(),
        nodes: hints
            .and_then(|h| h.for_nodes.as_ref())
            .map(|n| n.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default(),
    })
}

/// Which ready endpoints a node's Cluster-policy traffic uses, from the
/// topology hints the EndpointSlice controller wrote (kube-proxy's
/// `topologyModeFromHints`). Hints count only when every ready endpoint has
/// them and one names this node (or its zone); otherwise they are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    Any,
    SameNode,
    SameZone,
}

fn topology<A>(endpoints: &[Candidate<A>], node: &NodeInfo) -> Topology {
    let ready = || endpoints.iter().filter(|c| c.backend.ready);
    let named = |hints: fn(&Candidate<A>) -> &Vec<String>, name: Option<&str>| {
        ready().all(|c| !hints(c).is_empty())
            && name.is_some_and(|n| ready().any(|c| hints(c).iter().any(|h| h == n)))
    };
    if named(|c| &c.nodes, Some(&node.name)) {
        Topology::SameNode
    } else if named(|c| &c.zones, node.zone.as_deref()) {
        Topology::SameZone
    } else {
        Topology::Any
    }
}

/// The endpoints for Cluster traffic policy: the ready ones the topology
/// hints give this node (some, whenever any endpoint is ready).
pub(super) fn cluster<A: Clone>(endpoints: &[Candidate<A>], node: &NodeInfo) -> Vec<Backend<A>> {
    let mode = topology(endpoints, node);
    ready_else_draining(endpoints.iter(), |c| match mode {
        Topology::Any => true,
        Topology::SameNode => c.nodes.contains(&node.name),
        Topology::SameZone => node.zone.as_ref().is_some_and(|z| c.zones.contains(z)),
    })
}

/// The endpoints for Local traffic policy: this node's ready ones. Hints
/// play no part.
pub(super) fn local<A: Clone>(endpoints: &[Candidate<A>]) -> Vec<Backend<A>> {
    ready_else_draining(endpoints.iter().filter(|c| c.backend.is_local), |_| true)
}

/// The ready endpoints of `set` that `wanted` keeps or, if `set` has none
/// ready, its serving-and-terminating ones, so connections drain instead
/// of failing.
fn ready_else_draining<'a, A: Clone + 'a>(
    set: impl Iterator<Item = &'a Candidate<A>> + Clone,
    wanted: impl Fn(&Candidate<A>) -> bool,
) -> Vec<Backend<A>> {
    let ready: Vec<Backend<A>> = set
        .clone()
        .filter(|c| c.backend.ready && wanted(c))
        .map(|c| c.backend.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    set.filter(|c| c.backend.serving && c.backend.terminating)
        .map(|c| c.backend.clone())
        .collect()
}
