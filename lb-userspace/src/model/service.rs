//! One Service into its ServicePorts, frontends and policies; backends are
//! filled in by the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{Service, ServicePort as K8sServicePort, ServiceSpec};

use super::{
    namespace_of, parse_port, parse_proto, unusable, Family, Frontend, FrontendKind, ModelOptions,
    Problem, Proto, ServicePort, ServicePortId, LABEL_SERVICE_PROXY_NAME,
};

/// kube-proxy's default for sessionAffinityConfig.clientIP.timeoutSeconds.
const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// The API server's upper bound for the same field.
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Type {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One family's addresses of a Service.
struct Addrs<A> {
    cluster: Vec<A>,
    external: Vec<A>,
    ingress: Vec<A>,
}

/// Service-wide settings every port shares.
struct Common {
    kind: Type,
    v4: Addrs<Ipv4Addr>,
    v6: Addrs<Ipv6Addr>,
    template: ServicePort,
}

/// The Service's ports, or nothing when it is not ours to proxy. A problem
/// with a Service-wide field skips the whole Service (a half-applied source
/// range list would open it wider than asked); a problem with one port
/// skips only that port.
pub(super) fn ports(
    svc: &Service,
    opts: &ModelOptions,
    problems: &mut Vec<Problem>,
) -> Vec<(ServicePortId, ServicePort)> {
    let namespace = namespace_of(&svc.metadata);
    let Some(name) = svc.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
        problems.push(Problem {
            object: format!("Service {namespace}/"),
            message: "metadata.name is missing".to_string(),
        });
        return Vec::new();
    };
    let object = format!("Service {namespace}/{name}");
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if !for_this_proxy(svc, opts) {
        return Vec::new();
    }
    let common = match common(svc, spec) {
        Ok(Some(common)) => common,
        Ok(None) => return Vec::new(),
        Err(message) => {
            problems.push(Problem { object, message });
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        match service_port(port, &common, opts) {
            Ok((port_name, protocol, sp)) => out.push((
                ServicePortId {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    port_name,
                    protocol,
                },
                sp,
            )),
            Err(message) => problems.push(Problem {
                object: object.clone(),
                message: format!(
                    "port {:?}: {message}",
                    port.name.as_deref().unwrap_or_default()
                ),
            }),
        }
    }
    out
}

/// kube-proxy runs with a label selector that excludes every Service with
/// this label; an alternative proxy takes only those carrying its own name.
pub(super) fn for_this_proxy(svc: &Service, opts: &ModelOptions) -> bool {
    let label = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_SERVICE_PROXY_NAME));
    match label {
        None => true,
        Some(value) => opts.service_proxy_name.as_ref() == Some(value),
    }
}

/// `Ok(None)` for Services nobody proxies (ExternalName, headless).
fn common(svc: &Service, spec: &ServiceSpec) -> Result<Option<Common>, String> {
    let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => Type::ClusterIp,
        "NodePort" => Type::NodePort,
        "LoadBalancer" => Type::LoadBalancer,
        "ExternalName" => return Ok(None),
        other => return Err(format!("unknown spec.type {other:?}")),
    };
    // clusterIPs[0] always equals clusterIP when the API server filled both;
    // manifests may carry either.
    let cluster_ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if cluster_ips.contains(&"None") {
        return Ok(None);
    }
    // Unlike kube-proxy, a Service without a cluster IP is kept: manifests
    // written by hand have none, and their NodePorts should still work.
    // The family of each comes from the address itself; `ipFamilies`
    // only repeats it in the same order.
    let cluster_ips: Vec<&str> = cluster_ips
        .into_iter()
        .filter(|ip| !ip.is_empty())
        .collect();
    let (cluster_ips, cluster_ips_v6) = parse_ips("spec.clusterIPs", cluster_ips.into_iter())?;
    let (external_ips, external_ips_v6) = parse_ips(
        "spec.externalIPs",
        spec.external_ips.iter().flatten().map(String::as_str),
    )?;
    let is_lb = kind == Type::LoadBalancer;
    let (ingress_ips, ingress_ips_v6) = if is_lb {
        // An ingress IP of ipMode Proxy (KEP-1860) belongs to a load
        // balancer that proxies: in-cluster traffic to it must go out to
        // that proxy, so it is no frontend here, as with kube-proxy and
        // Cilium. VIP, the default, is.
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        parse_ips(
            "status.loadBalancer.ingress[].ip",
            ingress
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()),
        )?
    } else {
        (Vec::new(), Vec::new())
    };
    let externally_accessible =
        kind != Type::ClusterIp || !external_ips.is_empty() || !external_ips_v6.is_empty();
    let external_policy_local = externally_accessible
        && policy_is_local(
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
    let health_check_node_port = match spec.health_check_node_port {
        Some(port) if is_lb && external_policy_local && port != 0 => {
            Some(parse_port("spec.healthCheckNodePort", port)?)
        }
        _ => None,
    };
    // The API server rejects source ranges on other types, so a stale
    // list left on a former LoadBalancer means nothing.
    let (ranges, ranges_v6) = if is_lb {
        source_ranges(spec.load_balancer_source_ranges.iter().flatten())?
    } else {
        (Vec::new(), Vec::new())
    };
    let template = ServicePort {
        session_affinity_timeout_s: affinity(spec)?,
        external_policy_local,
        internal_policy_local: policy_is_local(
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?,
        load_balancer_source_ranges: ranges,
        load_balancer_source_ranges_v6: ranges_v6,
        health_check_node_port,
        ..ServicePort::default()
    };
    Ok(Some(Common {
        kind,
        v4: Addrs {
            cluster: cluster_ips,
            external: external_ips,
            ingress: ingress_ips,
        },
        v6: Addrs {
            cluster: cluster_ips_v6,
            external: external_ips_v6,
            ingress: ingress_ips_v6,
        },
        template,
    }))
}

fn service_port(
    port: &K8sServicePort,
    common: &Common,
    opts: &ModelOptions,
) -> Result<(String, Proto, ServicePort), String> {
    let protocol = parse_proto(port.protocol.as_deref())?;
    let number = parse_port("port", port.port)?;
    // A LoadBalancer may legitimately have no nodePort
    // (allocateLoadBalancerNodePorts: false, or a manifest the API server
    // never saw); a NodePort Service without one is broken.
    let node_port = match (common.kind, port.node_port) {
        (Type::ClusterIp, _) => None,
        (Type::NodePort, None | Some(0)) => return Err("nodePort is missing".to_string()),
        (Type::LoadBalancer, None | Some(0)) => None,
        (_, Some(np)) => Some(parse_port("nodePort", np)?),
    };
    Ok((
        port.name.clone().unwrap_or_default(),
        protocol,
        ServicePort {
            frontends: frontends(
                &common.v4,
                &opts.nodeport_addresses,
                &opts.node_addresses,
                number,
                node_port,
            ),
            frontends_v6: frontends(
                &common.v6,
                &opts.nodeport_addresses_v6,
                &opts.node_addresses_v6,
                number,
                node_port,
            ),
            ..common.template.clone()
        },
    ))
}

/// One family's frontends of a Service port, sorted by (addr, port, kind)
/// and at most one per (addr, port): the kind declared first wins.
fn frontends<A: Family>(
    addrs: &Addrs<A>,
    nodeport_addresses: &[A],
    node_addresses: &[A],
    number: u16,
    node_port: Option<u16>,
) -> Vec<Frontend<A>> {
    let at = |addrs: &[A], port: u16, kind: FrontendKind| -> Vec<Frontend<A>> {
        addrs
            .iter()
            .map(|&addr| Frontend {
                addr,
                port,
                kind,
                on_node: kind == FrontendKind::NodePort || node_addresses.contains(&addr),
            })
            .collect()
    };
    let mut out = at(&addrs.cluster, number, FrontendKind::ClusterIp);
    if let Some(np) = node_port {
        out.extend(at(nodeport_addresses, np, FrontendKind::NodePort));
    }
    out.extend(at(&addrs.ingress, number, FrontendKind::LoadBalancer));
    out.extend(at(&addrs.external, number, FrontendKind::ExternalIp));
    out.sort();
    out.dedup_by_key(|fe| (fe.addr, fe.port));
    out
}

/// The IPv4 and the IPv6 addresses among `ips`, or the first that is not
/// valid.
fn parse_ips<'a>(
    what: &str,
    ips: impl Iterator<Item = &'a str>,
) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in ips {
        let addr = ip
            .parse::<IpAddr>()
            .map_err(|_| format!("{what}: invalid IP {ip:?}"))?;
        if let Some(why) = unusable(addr, true) {
            return Err(format!("{what}: {addr} is {why}"));
        }
        match addr {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    Ok((v4, v6))
}

fn policy_is_local(what: &str, policy: Option<&str>) -> Result<bool, String> {
    match policy.unwrap_or("Cluster") {
        "Cluster" => Ok(false),
        "Local" => Ok(true),
        other => Err(format!("{what}: unknown policy {other:?}")),
    }
}

fn affinity(spec: &ServiceSpec) -> Result<Option<u32>, String> {
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => Ok(None),
        "ClientIP" => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_S)),
                Some(t @ 1..=MAX_AFFINITY_TIMEOUT_S) => Ok(Some(t.unsigned_abs())),
                Some(t) => Err(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..={MAX_AFFINITY_TIMEOUT_S}"
                )),
            }
        }
        other => Err(format!("unknown spec.sessionAffinity {other:?}")),
    }
}

/// Networks (host bits cleared) and prefix lengths.
type Ranges<A> = Vec<(A, u8)>;

/// The IPv4 and the IPv6 ranges, each sorted: like kube-proxy's per-family
/// filtering, IPv6 ranges do not restrict IPv4 clients. Host bits are
/// cleared, as Go's ParseCIDR does.
fn source_ranges<'a>(
    ranges: impl Iterator<Item = &'a String>,
) -> Result<(Ranges<Ipv4Addr>, Ranges<Ipv6Addr>), String> {
    let mut out = Vec::new();
    let mut out_v6 = Vec::new();
    for range in ranges {
        let bad = || format!("spec.loadBalancerSourceRanges: invalid CIDR {range:?}");
        let (ip, len) = range.trim().split_once('/').ok_or_else(bad)?;
        // u8's parser would also take "+8", which no CIDR parser accepts.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        match ip.parse::<IpAddr>().map_err(|_| bad())? {
            IpAddr::V4(ip) if len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                out.push((Ipv4Addr::from(u32::from(ip) & mask), len));
            }
            IpAddr::V6(ip) if len <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                out_v6.push((Ipv6Addr::from(u128::from(ip) & mask), len));
            }
            _ => return Err(bad()),
        }
    }
    out.sort();
    out.dedup();
    out_v6.sort();
    out_v6.dedup();
    Ok((out, out_v6))
}
