//! EndpointSlices into per-Service-port endpoint lists, and kube-proxy's
//! choice of which of them take traffic.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use super::{
    namespace_of, parse_port, parse_proto, Backend, Problem, Proto, ServicePortId, LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
};

/// Every endpoint of every joined slice, keyed by the Service port it
/// belongs to (the slice port's name and protocol, as kube-proxy joins
/// them), deduplicated on (addr, port) and sorted. Conditions are kept;
/// `usable` filters.
pub(super) fn collect(
    slices: &[EndpointSlice],
    node_name: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<ServicePortId, Vec<Backend>> {
    // Sorted so that which duplicate wins does not depend on arrival order.
    let mut slices: Vec<&EndpointSlice> = slices.iter().collect();
    slices.sort_by(|a, b| {
        (namespace_of(&a.metadata), &a.metadata.name)
            .cmp(&(namespace_of(&b.metadata), &b.metadata.name))
    });
    let mut merged: BTreeMap<ServicePortId, BTreeMap<(Ipv4Addr, u16), Backend>> = BTreeMap::new();
    for slice in slices {
        // FQDN and IPv6 slices are not for this data plane.
        if slice.address_type != "IPv4" {
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
        let endpoints: Vec<Backend> = slice
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
                let backend = Backend {
                    port: number,
                    ..ep.clone()
                };
                // The same address may sit in two slices while an endpoint
                // moves between them; kube-proxy lets the local copy win,
                // and a ready copy is preferred so a stale one cannot hide it.
                let rank = |b: &Backend| (b.is_local, b.ready, b.serving);
                match set.entry((backend.addr, number)) {
                    Entry::Vacant(slot) => {
                        slot.insert(backend);
                    }
                    Entry::Occupied(mut slot) => {
                        if rank(&backend) > rank(slot.get()) {
                            slot.insert(backend);
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
fn endpoint(ep: &Endpoint, node_name: &str) -> Result<Backend, String> {
    // Only the first address has defined semantics; kube-proxy ignores the rest.
    let first = ep
        .addresses
        .first()
        .ok_or_else(|| "endpoint without addresses".to_string())?;
    let addr: Ipv4Addr = first
        .parse()
        .map_err(|_| format!("endpoint address {first:?} is not an IPv4 address"))?;
    let conditions = ep.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let node = ep.node_name.clone().filter(|n| !n.is_empty());
    Ok(Backend {
        addr,
        port: 0,
        is_local: !node_name.is_empty() && node.as_deref() == Some(node_name),
        node_name: node,
        ready,
        serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
    })
}

/// kube-proxy's CategorizeEndpoints without topology hints: ready
/// endpoints, or if there are none, the serving-and-terminating ones so
/// connections drain instead of failing. `local_only` applies the Local
/// traffic policy first, so the fallback happens within the local set.
pub(super) fn usable(endpoints: &[Backend], local_only: bool) -> Vec<Backend> {
    let candidates = || endpoints.iter().filter(|b| !local_only || b.is_local);
    let ready: Vec<Backend> = candidates().filter(|b| b.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates()
        .filter(|b| b.serving && b.terminating)
        .cloned()
        .collect()
}
