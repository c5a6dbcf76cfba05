//! Desired data-plane state computed from Kubernetes Services and
//! EndpointSlices.
//!
//! `desired_state` is a pure function so the API watcher, the manifests
//! folder and the tests all get identical answers from identical objects.
//! Semantics follow kube-proxy; deviations are called out where they happen.

mod changes;
mod endpoints;
#[cfg(test)]
mod fuzz;
pub mod lb_addrs;
mod service;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use changes::{Changes, FamilyChanges};

/// The node this agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Its `topology.kubernetes.io/zone` label, for zone topology hints.
    pub zone: Option<String>,
}

/// The taint the Cluster Autoscaler puts on a node it is about to delete.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// kube-proxy's node eligibility (`ProxyHealthServer.SyncNode`): a node
/// being deleted, or tainted for deletion by the Cluster Autoscaler, should
/// receive no new load-balanced traffic, so its `/healthz` fails while its
/// proxy keeps serving. A node without a Node object among `nodes` is
/// eligible, as kube-proxy's is until it first sees its Node.
pub fn node_eligible(name: &str, nodes: &[Node]) -> bool {
    let Some(node) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
    else {
        return true;
    };
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
    node.metadata.deletion_timestamp.is_none() && !tainted
}

impl NodeInfo {
    /// `name`, with its zone read from its Node object among `nodes`.
    pub fn from_nodes(name: &str, nodes: &[Node]) -> Self {
        let zone = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.metadata.labels.as_ref()?.get(LABEL_ZONE))
            .filter(|z| !z.is_empty())
            .cloned();
        Self {
            name: name.to_string(),
            zone,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Services labelled `service.kubernetes.io/service-proxy-name` belong to
    /// another proxy unless the label carries this value.
    pub service_proxy_name: Option<String>,
    /// Addresses NodePorts listen on; the caller decides (node IPs, a
    /// `--nodeport-addresses` filter), the model only multiplies them out.
    pub nodeport_addresses: Vec<Ipv4Addr>,
    /// Every address of the node. A frontend on one shares it with the
    /// node's own services (SSH, the kubelet, this agent): only its port is
    /// the Service's.
    pub node_addresses: Vec<Ipv4Addr>,
    /// `nodeport_addresses` of IPv6: kube-proxy chooses each family's
    /// addresses on its own.
    pub nodeport_addresses_v6: Vec<Ipv6Addr>,
    /// `node_addresses` of IPv6.
    pub node_addresses_v6: Vec<Ipv6Addr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<ServicePortId, ServicePort>,
    /// Sorted; everything listed here was skipped, everything else applied.
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortId {
    pub namespace: String,
    pub name: String,
    /// The Service port's `name`, "" when unnamed.
    pub port_name: String,
    pub protocol: Proto,
}

impl fmt::Display for ServicePortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port_name, self.protocol
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    /// Sorted by (addr, port, kind); at most one entry per (addr, port).
    pub frontends: Vec<Frontend>,
    /// For ClusterIP traffic, after internalTrafficPolicy.
    pub cluster_backends: Vec<Backend>,
    /// For NodePort, LoadBalancer and externalIP traffic, after
    /// externalTrafficPolicy.
    pub external_backends: Vec<Backend>,
    /// `Some(timeout)` when sessionAffinity is ClientIP.
    pub session_affinity_timeout_s: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    /// Network addresses (host bits cleared) and prefix lengths, sorted.
    pub load_balancer_source_ranges: Vec<(Ipv4Addr, u8)>,
    /// The IPv6 ones, likewise. Kept apart because each family's clients
    /// are checked against its own ranges only.
    pub load_balancer_source_ranges_v6: Vec<(Ipv6Addr, u8)>,
    pub health_check_node_port: Option<u16>,
    /// Ready endpoints on this node, what the health-check port reports:
    /// those of the family that has more, so that an IPv6-only Service's
    /// local pods count and a dual-stack pod counts once.
    pub local_endpoints: usize,
    /// The IPv6 frontends of every kind, as `frontends` are the IPv4 ones.
    pub frontends_v6: Vec<Frontend<Ipv6Addr>>,
    /// The IPv6 endpoints for the IPv6 ClusterIPs, after
    /// internalTrafficPolicy. As kube-proxy's per-family proxiers, each
    /// family's frontends use only that family's endpoints.
    pub cluster_backends_v6: Vec<Backend<Ipv6Addr>>,
    /// The IPv6 endpoints for the other IPv6 frontends, after
    /// externalTrafficPolicy.
    pub external_backends_v6: Vec<Backend<Ipv6Addr>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend<A = Ipv4Addr> {
    pub addr: A,
    pub port: u16,
    pub kind: FrontendKind,
    /// On an address of the node (every NodePort, and an externalIP or
    /// ingress IP that is one): unknown ports there pass to the node
    /// instead of being rejected.
    pub on_node: bool,
}

/// Declaration order is the preference when two kinds of one Service port
/// land on the same address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// Field order makes the derived `Ord` sort by (addr, port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend<A = Ipv4Addr> {
    pub addr: A,
    pub port: u16,
    pub node_name: Option<String>,
    pub is_local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// "Service ns/name", "EndpointSlice ns/name", or a manifest file.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

pub fn desired_state(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeInfo,
    opts: &ModelOptions,
) -> DesiredState {
    let mut problems = Vec::new();
    let endpoints = endpoints::collect::<Ipv4Addr>(slices, &node.name, &mut problems);
    let endpoints_v6 = endpoints::collect::<Ipv6Addr>(slices, &node.name, &mut problems);
    let ports: Vec<_> = services
        .iter()
        .flat_map(|svc| service::ports(svc, opts, &mut problems))
        .collect();
    // The ClusterIPs no endpoint may be at (`skip_vips`). Manifests may
    // give two Services one ClusterIP: the problem names
    // the one whose name sorts first, whatever order they came in.
    let mut vips: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (id, port) in &ports {
        let v4 = port
            .frontends
            .iter()
            .filter(|fe| fe.kind == FrontendKind::ClusterIp)
            .map(|fe| IpAddr::V4(fe.addr));
        let v6 = port
            .frontends_v6
            .iter()
            .filter(|fe| fe.kind == FrontendKind::ClusterIp)
            .map(|fe| IpAddr::V6(fe.addr));
        for vip in v4.chain(v6) {
            let owner = format!("{}/{}", id.namespace, id.name);
            let named = vips.entry(vip).or_insert_with(|| owner.clone());
            if owner < *named {
                *named = owner;
            }
        }
    }
    let mut out = BTreeMap::new();
    for (id, mut port) in ports {
        let object = format!("Service {}/{}", id.namespace, id.name);
        if out.contains_key(&id) {
            problems.push(Problem {
                object,
                message: format!("port {id} is defined more than once; keeping the first"),
            });
            continue;
        }
        let mut all = endpoints.get(&id).cloned().unwrap_or_default();
        skip_vips(&mut all, &vips, &id, &mut problems);
        let cluster_wide = endpoints::cluster(&all, node);
        port.cluster_backends = if port.internal_policy_local {
            endpoints::local(&all)
        } else {
            cluster_wide.clone()
        };
        port.external_backends = if port.external_policy_local {
            endpoints::local(&all)
        } else {
            cluster_wide
        };
        port.local_endpoints = all
            .iter()
            .filter(|c| c.backend.is_local && c.backend.ready)
            .count();
        if !port.frontends_v6.is_empty() {
            let mut all_v6 = endpoints_v6.get(&id).cloned().unwrap_or_default();
            skip_vips(&mut all_v6, &vips, &id, &mut problems);
            let cluster_wide = endpoints::cluster(&all_v6, node);
            port.cluster_backends_v6 = if port.internal_policy_local {
                endpoints::local(&all_v6)
            } else {
                cluster_wide.clone()
            };
            port.external_backends_v6 = if port.external_policy_local {
                endpoints::local(&all_v6)
            } else {
                cluster_wide
            };
            let local_v6 = all_v6
                .iter()
                .filter(|c| c.backend.is_local && c.backend.ready)
                .count();
            port.local_endpoints = port.local_endpoints.max(local_v6);
        }
        out.insert(id, port);
    }
    drop_shared_frontends(&mut out, &mut problems);
    problems.sort();
    problems.dedup();
    DesiredState {
        services: out,
        problems,
    }
}

/// Drops the endpoints of `id` at a ClusterIP: their packets would loop
/// through the Service again. The API server refuses such endpoints,
/// manifests may not.
fn skip_vips<A: Family>(
    all: &mut Vec<endpoints::Candidate<A>>,
    vips: &BTreeMap<IpAddr, String>,
    id: &ServicePortId,
    problems: &mut Vec<Problem>,
) {
    all.retain(|c| match vips.get(&c.backend.addr.into()) {
        Some(owner) => {
            problems.push(Problem {
                object: format!("Service {}/{}", id.namespace, id.name),
                message: format!(
                    "endpoint {} is the ClusterIP of Service {owner}; skipped for port {id}",
                    c.backend.addr
                ),
            });
            false
        }
        None => true,
    })
}

/// The data plane keys services by (address, port, protocol), so two Service
/// ports claiming the same frontend (say, a shared externalIP) cannot both
/// be programmed; the first in id order keeps it so the outcome does not
/// depend on the order objects arrived in.
fn drop_shared_frontends(
    services: &mut BTreeMap<ServicePortId, ServicePort>,
    problems: &mut Vec<Problem>,
) {
    let mut owners: BTreeMap<(IpAddr, u16, Proto), ServicePortId> = BTreeMap::new();
    for (id, port) in services.iter_mut() {
        let mut claim = |addr: IpAddr, fe_port: u16, kind: FrontendKind| match owners.get(&(
            addr,
            fe_port,
            id.protocol,
        )) {
            Some(owner) => {
                problems.push(Problem {
                    object: format!("Service {}/{}", id.namespace, id.name),
                    message: format!(
                        "{}:{}/{} ({kind:?}) is already used by {owner}; dropped for port {id}",
                        fmt_addr(addr),
                        fe_port,
                        id.protocol
                    ),
                });
                false
            }
            None => {
                owners.insert((addr, fe_port, id.protocol), id.clone());
                true
            }
        };
        port.frontends
            .retain(|fe| claim(fe.addr.into(), fe.port, fe.kind));
        port.frontends_v6
            .retain(|fe| claim(fe.addr.into(), fe.port, fe.kind));
    }
}

/// An address as it is written beside a port: IPv6 in brackets.
fn fmt_addr(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Keeps the last good version of a Service whose new version is invalid:
/// an edit with a typo must not take a working Service off the data plane.
/// The remembered version yields every frontend a valid Service port owns
/// now: restoring it as it was would give one frontend two owners, and the
/// map writer would then hand the address to whichever it wrote last and
/// take it from both once the invalid Service is fixed or deleted.
pub fn keep_last_good(previous: &DesiredState, next: &mut DesiredState) {
    let invalid: BTreeSet<(&str, &str)> = next
        .problems
        .iter()
        .filter_map(|p| p.object.strip_prefix("Service ")?.split_once('/'))
        .filter(|&(ns, name)| {
            !next
                .services
                .keys()
                .any(|id| id.namespace == ns && id.name == name)
        })
        .collect();
    if invalid.is_empty() {
        return;
    }
    let mut owners: BTreeMap<(IpAddr, u16, Proto), ServicePortId> = next
        .services
        .iter()
        .flat_map(|(id, sp)| {
            let v4 = sp.frontends.iter().map(|fe| (fe.addr.into(), fe.port));
            let v6 = sp.frontends_v6.iter().map(|fe| (fe.addr.into(), fe.port));
            v4.chain(v6)
                .map(move |(addr, port)| ((addr, port, id.protocol), id.clone()))
        })
        .collect();
    let mut problems = Vec::new();
    for (id, sp) in &previous.services {
        if !invalid.contains(&(id.namespace.as_str(), id.name.as_str())) {
            continue;
        }
        let mut sp = sp.clone();
        let mut keep = |addr: IpAddr, port: u16| {
            let key = (addr, port, id.protocol);
            match owners.get(&key) {
                Some(owner) => {
                    problems.push(Problem {
                        object: format!("Service {}/{}", id.namespace, id.name),
                        message: format!(
                            "its last good version keeps serving, without {}:{}/{}, which {owner} now uses",
                            fmt_addr(addr), port, id.protocol
                        ),
                    });
                    false
                }
                None => {
                    owners.insert(key, id.clone());
                    true
                }
            }
        };
        sp.frontends.retain(|fe| keep(fe.addr.into(), fe.port));
        sp.frontends_v6.retain(|fe| keep(fe.addr.into(), fe.port));
        next.services.insert(id.clone(), sp);
    }
    next.problems.extend(problems);
    next.problems.sort();
    next.problems.dedup();
}

/// An object without a namespace is in "default", as `kubectl apply` would
/// put it; manifests files often leave it out.
fn namespace_of(meta: &ObjectMeta) -> &str {
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    }
}

/// The API defaults a missing protocol to TCP.
fn parse_proto(protocol: Option<&str>) -> Result<Proto, String> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(Proto::Tcp),
        "UDP" => Ok(Proto::Udp),
        "SCTP" => Err("protocol SCTP is not supported".to_string()),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// An address family as Services and EndpointSlices name it.
trait Family: Copy + Ord + fmt::Display + FromStr + Into<IpAddr> {
    /// The EndpointSlice `addressType` of its endpoints.
    const ADDRESS_TYPE: &'static str;
}

impl Family for Ipv4Addr {
    const ADDRESS_TYPE: &'static str = "IPv4";
}

impl Family for Ipv6Addr {
    const ADDRESS_TYPE: &'static str = "IPv6";
}

/// Why `addr` can be no Service's address nor endpoint, as the API server
/// validates them: packets to it never arrive from outside, or belong to
/// every host at once; an IPv4-mapped address is the IPv4 address's own,
/// which sockets reach as that. Link-local addresses are refused for
/// frontends only.
fn unusable(addr: impl Into<IpAddr>, link_local: bool) -> Option<&'static str> {
    let addr = addr.into();
    let (broadcast, mapped, link_local_addr) = match addr {
        IpAddr::V4(a) => (a.is_broadcast(), false, a.is_link_local()),
        IpAddr::V6(a) => (
            false,
            a.to_ipv4_mapped().is_some(),
            a.is_unicast_link_local(),
        ),
    };
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if broadcast {
        Some("the broadcast address")
    } else if mapped {
        Some("an IPv4-mapped address")
    } else if link_local && link_local_addr {
        Some("a link-local address")
    } else {
        None
    }
}

fn parse_port(what: &str, value: i32) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{what} {value} is outside 1..=65535")),
    }
}
