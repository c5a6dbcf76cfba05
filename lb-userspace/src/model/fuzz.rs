//! `desired_state` over arbitrary Services and EndpointSlices, drawn by a
//! seeded PRNG from pools of valid and invalid values (types, addresses
//! with IPv6 and garbage among them, ports out of range, protocols, policies,
//! affinity timeouts, CIDRs, conditions and hints), with names drawn from a
//! few so that duplicates and shared frontends happen.
//!
//! What the model must make of each Service is worked out from which pool
//! each of its values came from, not from the model's code; the properties:
//! no panic; every problem names an input object and says something; a
//! Service port is programmed exactly when it and its Service are valid and
//! no earlier port has its id; no frontend has two owners, and each is
//! usable and one its Service asked for; every backend is a usable endpoint
//! of a slice joined to its port, never a ClusterIP, and never port 0, and
//! when all those endpoints are ready and unhinted, Cluster policy takes
//! them all; and the answer does not depend on the order objects arrive in.
//!
//! `XDPLB_FUZZ_CASES` and `XDPLB_FUZZ_SEED` replace the case count and the
//! seed (`cargo xtask fuzz --soak`); a failure names the seed and the case,
//! and prints the case's objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort as K8sPort,
    ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use testbed::fuzz_knob;

/// A few seconds in a debug build.
const DEFAULT_CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x5eed_f022;

/// Values of one field: those the model must accept, and those it must
/// refuse (with a problem).
struct Pool<T: 'static> {
    good: &'static [T],
    bad: &'static [T],
}

impl<T: Clone> Pool<T> {
    /// Mostly good values, so that whole Services come out valid often
    /// enough to collide.
    fn draw(&self, rng: &mut ChaCha8Rng) -> T {
        if rng.random_ratio(1, 12) {
            pick(rng, self.bad)
        } else {
            pick(rng, self.good)
        }
    }
}

// One `accepts` per kind of value rather than one generic: a generic one
// would take only `'static` strings.
impl Pool<&'static str> {
    fn accepts(&self, value: &str) -> bool {
        self.good.contains(&value)
    }
}

impl Pool<Option<&'static str>> {
    fn accepts(&self, value: Option<&str>) -> bool {
        self.good.contains(&value)
    }
}

impl Pool<Option<i32>> {
    fn accepts(&self, value: Option<i32>) -> bool {
        self.good.contains(&value)
    }
}

const TYPES: Pool<Option<&str>> = Pool {
    good: &[
        None,
        Some("ClusterIP"),
        Some("NodePort"),
        Some("LoadBalancer"),
        Some("ExternalName"),
    ],
    bad: &[Some(""), Some("clusterIP"), Some("Headless")],
};

/// A Service's addresses. IPv6 is valid (an IPv4-mapped address is not, as
/// the API server refuses it). For cluster IPs "" means none and "None"
/// headless.
const SERVICE_ADDRS: Pool<&str> = Pool {
    good: &[
        "10.96.0.1",
        "10.96.0.2",
        "203.0.113.1",
        "192.168.1.10",
        "10.244.1.1",
        "fd00::1",
        "2001:db8::1",
        "fd00:1::11",
        "fd00:244::1",
    ],
    bad: &[
        "::ffff:10.96.0.1",
        "::",
        "fe80::1",
        "ff02::1",
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "169.254.1.1",
        "10.96.0",
        "10.96.0.256",
        " 10.96.0.1",
        "10.96.0.1/32",
        "garbage",
        "",
        "None",
    ],
};

/// An endpoint's first address; link-local is fine there, IPv6 is not (in
/// an IPv4 slice).
const ENDPOINT_ADDRS: Pool<&str> = Pool {
    good: &[
        "10.244.1.1",
        "10.244.2.1",
        "10.244.2.2",
        "169.254.1.1",
        "10.96.0.1",
        "192.168.1.10",
    ],
    bad: &[
        "fd00::1",
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "garbage",
        "",
    ],
};

/// An endpoint's first address in an IPv6 slice.
const ENDPOINT_ADDRS_V6: Pool<&str> = Pool {
    good: &[
        "fd00:244::1",
        "fd00:244::2",
        "fe80::1",
        "fd00::1",
        "fd00:1::11",
    ],
    bad: &[
        "10.244.1.1",
        "::",
        "::1",
        "ff02::1",
        "::ffff:10.244.1.1",
        "garbage",
    ],
};

/// The pool of endpoint addresses of a slice of `address_type`.
fn endpoint_addrs(address_type: &str) -> &'static Pool<&'static str> {
    if address_type == "IPv6" {
        &ENDPOINT_ADDRS_V6
    } else {
        &ENDPOINT_ADDRS
    }
}

const PROTOCOLS: Pool<Option<&str>> = Pool {
    good: &[None, Some("TCP"), Some("UDP")],
    bad: &[Some("SCTP"), Some("tcp"), Some(""), Some("TCP ")],
};

const PORTS: Pool<i32> = Pool {
    good: &[80, 443, 53, 1, 65535],
    bad: &[0, -1, 65536, i32::MAX, i32::MIN],
};

/// nodePort and healthCheckNodePort; 0 stands for "none".
const NODE_PORTS: Pool<Option<i32>> = Pool {
    good: &[None, Some(0), Some(30000), Some(30001)],
    bad: &[Some(-5), Some(70000)],
};

const POLICIES: Pool<Option<&str>> = Pool {
    good: &[None, Some("Cluster"), Some("Local")],
    bad: &[Some("local"), Some("")],
};

const AFFINITIES: Pool<Option<&str>> = Pool {
    good: &[None, Some("None"), Some("ClientIP")],
    bad: &[Some("clientIP"), Some("")],
};

const TIMEOUTS: Pool<Option<i32>> = Pool {
    good: &[None, Some(1), Some(60), Some(86_400)],
    bad: &[Some(0), Some(-1), Some(86_401)],
};

const SOURCE_RANGES: Pool<&str> = Pool {
    good: &[
        "10.0.0.0/8",
        "192.168.1.7/24",
        " 10.0.0.0/8 ",
        "0.0.0.0/0",
        "fd00::/8",
        "2001:db8::1/32",
        "::/0",
    ],
    bad: &[
        "10.0.0.0/33",
        "10.0.0.0",
        "10.0.0.0/+8",
        "10.0.0.0/",
        "fd00::/129",
        "garbage",
        "",
    ],
};

/// Free-form: any string is a valid name to the model. Few, so that
/// slices join Services and names repeat.
const NAMES: &[&str] = &["web", "db"];
const ODD_NAMES: &[&str] = &["a/b", "ü", " "];
const PORT_NAMES: &[Option<&str>] = &[None, Some(""), Some("http")];
const NODES: &[Option<&str>] = &[None, Some("node-a"), Some("node-b"), Some("")];
const ZONES: &[&str] = &["zone-a", "zone-b"];

fn pick<T: Clone>(rng: &mut ChaCha8Rng, from: &[T]) -> T {
    from[rng.random_range(0..from.len())].clone()
}

fn maybe<T>(rng: &mut ChaCha8Rng, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> Option<T> {
    rng.random_ratio(2, 3).then(|| f(rng))
}

fn list<T>(rng: &mut ChaCha8Rng, most: usize, mut f: impl FnMut(&mut ChaCha8Rng) -> T) -> Vec<T> {
    let n = rng.random_range(0..=most);
    (0..n).map(|_| f(rng)).collect()
}

fn string(s: Option<&str>) -> Option<String> {
    s.map(str::to_string)
}

/// A name: missing, empty, odd, random, or (mostly) one of a few.
fn name(rng: &mut ChaCha8Rng) -> Option<String> {
    match rng.random_range(0..16) {
        0 => None,
        1 => Some(String::new()),
        2 => Some(pick(rng, ODD_NAMES).to_string()),
        3 => Some(
            (0..rng.random_range(1..8))
                .map(|_| pick(rng, &['a', '-', '.', '/', 'é', ' ', '0']))
                .collect(),
        ),
        _ => Some(pick(rng, NAMES).to_string()),
    }
}

fn metadata(rng: &mut ChaCha8Rng, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta {
        name: name(rng),
        namespace: match rng.random_range(0..4) {
            0 => None,
            1 => Some(String::new()),
            2 => Some("other".to_string()),
            _ => Some("default".to_string()),
        },
        labels,
        ..Default::default()
    }
}

fn service(rng: &mut ChaCha8Rng) -> Service {
    let labels = match rng.random_range(0..8) {
        0 => Some(BTreeMap::new()),
        1 => Some(BTreeMap::from([(
            LABEL_SERVICE_PROXY_NAME.to_string(),
            pick(rng, &["xdplb", "other", ""]).to_string(),
        )])),
        _ => None,
    };
    let metadata = metadata(rng, labels);
    let addr = |rng: &mut ChaCha8Rng| SERVICE_ADDRS.draw(rng).to_string();
    let port = |rng: &mut ChaCha8Rng| K8sPort {
        name: string(pick(rng, PORT_NAMES)),
        protocol: string(PROTOCOLS.draw(rng)),
        port: PORTS.draw(rng),
        node_port: NODE_PORTS.draw(rng),
        ..Default::default()
    };
    let spec = (!rng.random_ratio(1, 40)).then(|| ServiceSpec {
        type_: string(TYPES.draw(rng)),
        cluster_ip: maybe(rng, addr),
        cluster_ips: maybe(rng, |rng| list(rng, 2, addr)),
        external_ips: maybe(rng, |rng| list(rng, 2, addr)),
        ports: maybe(rng, |rng| list(rng, 3, port)),
        external_traffic_policy: string(POLICIES.draw(rng)),
        internal_traffic_policy: string(POLICIES.draw(rng)),
        health_check_node_port: NODE_PORTS.draw(rng),
        session_affinity: string(AFFINITIES.draw(rng)),
        session_affinity_config: maybe(rng, |rng| SessionAffinityConfig {
            client_ip: maybe(rng, |rng| ClientIPConfig {
                timeout_seconds: TIMEOUTS.draw(rng),
            }),
        }),
        load_balancer_source_ranges: maybe(rng, |rng| {
            list(rng, 2, |rng| SOURCE_RANGES.draw(rng).to_string())
        }),
        ..Default::default()
    });
    let ingress = |rng: &mut ChaCha8Rng| LoadBalancerIngress {
        ip: maybe(rng, addr),
        hostname: rng.random_ratio(1, 4).then(|| "lb.example".to_string()),
        ..Default::default()
    };
    let status = maybe(rng, |rng| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(list(rng, 2, ingress)),
        }),
        ..Default::default()
    });
    Service {
        metadata,
        spec,
        status,
    }
}

fn slice(rng: &mut ChaCha8Rng) -> EndpointSlice {
    let mut labels = BTreeMap::new();
    if !rng.random_ratio(1, 10) {
        let service = name(rng).unwrap_or_default();
        labels.insert(LABEL_SERVICE_NAME.to_string(), service);
    }
    if rng.random_ratio(1, 10) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    }
    let labels = (!rng.random_ratio(1, 10)).then_some(labels);
    let metadata = metadata(rng, labels);
    let port = |rng: &mut ChaCha8Rng| EndpointPort {
        name: string(pick(rng, PORT_NAMES)),
        protocol: string(PROTOCOLS.draw(rng)),
        port: (!rng.random_ratio(1, 12)).then(|| PORTS.draw(rng)),
        ..Default::default()
    };
    let zones = |rng: &mut ChaCha8Rng| {
        list(rng, 2, |rng| ForZone {
            name: pick(rng, ZONES).to_string(),
        })
    };
    let nodes = |rng: &mut ChaCha8Rng| {
        list(rng, 2, |rng| ForNode {
            name: pick(rng, &["node-a", "node-b"]).to_string(),
        })
    };
    let address_type = pick(rng, &["IPv4", "IPv4", "IPv4", "IPv6", "FQDN"]).to_string();
    let addrs = endpoint_addrs(&address_type);
    let endpoint = |rng: &mut ChaCha8Rng| Endpoint {
        addresses: list(rng, 2, |rng| addrs.draw(rng).to_string()),
        conditions: maybe(rng, |rng| EndpointConditions {
            ready: maybe(rng, |rng| rng.random_ratio(7, 8)),
            serving: maybe(rng, |rng| rng.random()),
            terminating: maybe(rng, |rng| rng.random()),
        }),
        node_name: string(pick(rng, NODES)),
        zone: rng.random::<bool>().then(|| pick(rng, ZONES).to_string()),
        hints: rng.random_ratio(1, 6).then(|| EndpointHints {
            for_zones: maybe(rng, zones),
            for_nodes: maybe(rng, nodes),
        }),
        ..Default::default()
    };
    EndpointSlice {
        metadata,
        address_type,
        ports: maybe(rng, |rng| list(rng, 2, port)),
        endpoints: list(rng, 3, endpoint),
    }
}

/// Most slices are for one of the case's Services: its namespace, its name
/// as the label, its ports' names and protocols.
fn aim(rng: &mut ChaCha8Rng, slice: &mut EndpointSlice, svc: &Service) {
    slice.metadata.namespace = svc.metadata.namespace.clone();
    slice.metadata.labels.get_or_insert_default().insert(
        LABEL_SERVICE_NAME.to_string(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
    slice.ports = Some(
        ports
            .map(|p| EndpointPort {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: Some(PORTS.draw(rng)),
                ..Default::default()
            })
            .collect(),
    );
}

/// One random input to `desired_state`.
struct Case {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    node: NodeInfo,
    opts: ModelOptions,
}

fn case(rng: &mut ChaCha8Rng) -> Case {
    let node_addresses = [10, 11, 12].map(|last| Ipv4Addr::new(192, 168, 1, last));
    let node_addresses_v6 =
        [0x10, 0x11, 0x12].map(|last| Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last));
    let services = list(rng, 6, service);
    let slices = list(rng, 6, |rng| {
        let mut s = slice(rng);
        if !services.is_empty() && rng.random_ratio(2, 3) {
            let svc = &services[rng.random_range(0..services.len())];
            aim(rng, &mut s, svc);
        }
        s
    });
    Case {
        services,
        slices,
        node: NodeInfo {
            name: pick(rng, &["node-a", ""]).to_string(),
            zone: rng.random::<bool>().then(|| "zone-a".to_string()),
        },
        opts: ModelOptions {
            service_proxy_name: rng.random::<bool>().then(|| "xdplb".to_string()),
            nodeport_addresses: node_addresses[..rng.random_range(0..=2)].to_vec(),
            node_addresses: node_addresses.to_vec(),
            nodeport_addresses_v6: node_addresses_v6[..rng.random_range(0..=2)].to_vec(),
            node_addresses_v6: node_addresses_v6.to_vec(),
        },
    }
}

/// What the model must make of a Service, from the pools its values came
/// from.
enum Fate {
    /// Not this proxy's, or nothing to proxy (ExternalName, headless, no
    /// spec): no ports and no problem.
    Ignored,
    /// A Service-wide value is invalid (or the name missing): no ports and
    /// a problem.
    Refused,
    Kept(Kept),
}

/// A valid Service's frontend addresses, of both families, and policies.
struct Kept {
    kind: &'static str,
    cluster: Vec<IpAddr>,
    external: Vec<IpAddr>,
    ingress: Vec<IpAddr>,
    internal_local: bool,
}

fn ips(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().filter_map(|a| a.parse().ok()).collect()
}

fn fate(svc: &Service, opts: &ModelOptions) -> Fate {
    if svc.metadata.name.as_deref().unwrap_or_default().is_empty() {
        return Fate::Refused;
    }
    let Some(spec) = &svc.spec else {
        return Fate::Ignored;
    };
    let label = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME));
    if label.is_some_and(|l| opts.service_proxy_name.as_ref() != Some(l)) {
        return Fate::Ignored;
    }
    let kind = match spec.type_.as_deref() {
        None | Some("ClusterIP") => "ClusterIP",
        Some("ExternalName") => return Fate::Ignored,
        Some("NodePort") => "NodePort",
        Some("LoadBalancer") => "LoadBalancer",
        Some(_) => return Fate::Refused,
    };
    let cluster: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if cluster.contains(&"None") {
        return Fate::Ignored;
    }
    let cluster: Vec<&str> = cluster.into_iter().filter(|a| !a.is_empty()).collect();
    let external: Vec<&str> = spec
        .external_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let lb = kind == "LoadBalancer";
    let ingress: Vec<&str> = svc
        .status
        .iter()
        .filter(|_| lb)
        .filter_map(|s| s.load_balancer.as_ref()?.ingress.as_ref())
        .flatten()
        .filter_map(|i| i.ip.as_deref())
        .collect();
    let accessible = kind != "ClusterIP" || !external.is_empty();
    let external_policy = spec.external_traffic_policy.as_deref();
    let external_local = accessible && external_policy == Some("Local");
    let hc_ok = match spec.health_check_node_port {
        Some(port) if lb && external_local && port != 0 => (1..=65535).contains(&port),
        _ => true,
    };
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let affinity_ok = AFFINITIES.accepts(spec.session_affinity.as_deref())
        && (spec.session_affinity.as_deref() != Some("ClientIP") || TIMEOUTS.accepts(timeout));
    let ranges_ok = !lb
        || spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .all(|r| SOURCE_RANGES.accepts(r));
    let valid = [&cluster, &external, &ingress]
        .iter()
        .all(|addrs| addrs.iter().all(|a| SERVICE_ADDRS.accepts(a)))
        && (!accessible || POLICIES.accepts(external_policy))
        && hc_ok
        && affinity_ok
        && POLICIES.accepts(spec.internal_traffic_policy.as_deref())
        && ranges_ok;
    if !valid {
        return Fate::Refused;
    }
    Fate::Kept(Kept {
        kind,
        cluster: ips(&cluster),
        external: ips(&external),
        ingress: ips(&ingress),
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
    })
}

/// A valid port's id and (address, port) frontends, before any is lost to
/// another Service port; `None` for an invalid one.
fn port_fate(
    svc: &Service,
    kept: &Kept,
    port: &K8sPort,
    opts: &ModelOptions,
) -> Option<(ServicePortId, BTreeSet<(IpAddr, u16)>)> {
    let valid = |p: i32| u16::try_from(p).ok().filter(|&p| p != 0);
    if !PROTOCOLS.accepts(port.protocol.as_deref()) {
        return None;
    }
    let number = valid(port.port)?;
    let node_port = match (kept.kind, port.node_port) {
        ("ClusterIP", _) | ("LoadBalancer", None | Some(0)) => None,
        (_, np) => Some(valid(np?)?),
    };
    let at = |addrs: &[IpAddr], port: u16| addrs.iter().map(|&a| (a, port)).collect::<Vec<_>>();
    let mut frontends: BTreeSet<_> = at(&kept.cluster, number).into_iter().collect();
    if let Some(np) = node_port {
        let v4 = opts.nodeport_addresses.iter().map(|&a| (IpAddr::V4(a), np));
        let v6 = opts
            .nodeport_addresses_v6
            .iter()
            .map(|&a| (IpAddr::V6(a), np));
        frontends.extend(v4.chain(v6));
    }
    frontends.extend(at(&kept.ingress, number));
    frontends.extend(at(&kept.external, number));
    let id = ServicePortId {
        namespace: namespace_of(&svc.metadata).to_string(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        port_name: port.name.clone().unwrap_or_default(),
        protocol: match port.protocol.as_deref() {
            Some("UDP") => Proto::Udp,
            _ => Proto::Tcp,
        },
    };
    Some((id, frontends))
}

/// The (address, port, ready, hinted) of every usable endpoint of the
/// slices of `address_type` joined to Service port `id`.
fn joined(
    slices: &[EndpointSlice],
    id: &ServicePortId,
    address_type: &str,
) -> Vec<(IpAddr, u16, bool, bool)> {
    let mut out = Vec::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let joined = namespace_of(&slice.metadata) == id.namespace
            && slice.address_type == address_type
            && !labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS))
            && labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) == Some(&id.name);
        if !joined {
            continue;
        }
        for port in slice.ports.iter().flatten() {
            let same = port.name.as_deref().unwrap_or_default() == id.port_name
                && PROTOCOLS.accepts(port.protocol.as_deref())
                && (port.protocol.as_deref() == Some("UDP")) == (id.protocol == Proto::Udp);
            let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if !same || number == 0 {
                continue;
            }
            for ep in &slice.endpoints {
                let Some(first) = ep.addresses.first() else {
                    continue;
                };
                if !endpoint_addrs(address_type).accepts(first) {
                    continue;
                }
                let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let hinted = ep.hints.as_ref().is_some_and(|h| {
                    h.for_zones.as_ref().is_some_and(|z| !z.is_empty())
                        || h.for_nodes.as_ref().is_some_and(|n| !n.is_empty())
                });
                out.push((first.parse().unwrap(), number, ready, hinted));
            }
        }
    }
    out
}

fn usable(addr: IpAddr) -> bool {
    let special = match addr {
        IpAddr::V4(a) => a.is_broadcast(),
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
    };
    !(addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || special)
}

fn link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

/// Every property of the module comment; `Err` says which broke.
fn check(c: &Case, state: &DesiredState) -> Result<(), String> {
    // Problems name an input object.
    let objects: BTreeSet<String> = c
        .services
        .iter()
        .map(|s| ("Service", &s.metadata))
        .chain(c.slices.iter().map(|s| ("EndpointSlice", &s.metadata)))
        .map(|(kind, meta)| {
            let name = meta.name.as_deref().unwrap_or_default();
            format!("{kind} {}/{name}", namespace_of(meta))
        })
        .collect();
    for p in &state.problems {
        if !objects.contains(&p.object) || p.message.is_empty() {
            return Err(format!(
                "problem names no input object, or says nothing: {p:?}"
            ));
        }
    }
    let complained = |svc: &Service| {
        let object = format!(
            "Service {}/{}",
            namespace_of(&svc.metadata),
            svc.metadata.name.as_deref().unwrap_or_default()
        );
        state.problems.iter().any(|p| p.object == object)
    };

    // Which ports must be there, with which frontends; the ClusterIPs no
    // endpoint may be.
    let mut expected: BTreeMap<ServicePortId, BTreeSet<(IpAddr, u16)>> = BTreeMap::new();
    let mut vips = BTreeSet::new();
    let mut internal_local = BTreeSet::new();
    for svc in &c.services {
        let kept = match fate(svc, &c.opts) {
            Fate::Ignored => continue,
            Fate::Refused if complained(svc) => continue,
            Fate::Refused => {
                return Err(format!(
                    "invalid Service {}/{} without a problem",
                    namespace_of(&svc.metadata),
                    svc.metadata.name.as_deref().unwrap_or_default()
                ))
            }
            Fate::Kept(kept) => kept,
        };
        for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let Some((id, frontends)) = port_fate(svc, &kept, port, &c.opts) else {
                if !complained(svc) {
                    return Err(format!("invalid port {port:?} without a problem"));
                }
                continue;
            };
            vips.extend(kept.cluster.iter().copied());
            if expected.contains_key(&id) {
                continue;
            }
            if kept.internal_local {
                internal_local.insert(id.clone());
            }
            expected.insert(id, frontends);
        }
    }
    let present: Vec<_> = state.services.keys().collect();
    if !present.iter().copied().eq(expected.keys()) {
        return Err(format!(
            "ports present {present:?}, expected {:?}",
            expected.keys().collect::<Vec<_>>()
        ));
    }

    let mut owners = BTreeMap::new();
    for (id, sp) in &state.services {
        let v4 = sp.frontends.iter().map(|fe| {
            let on_node = c.opts.node_addresses.contains(&fe.addr);
            (IpAddr::V4(fe.addr), fe.port, fe.kind, fe.on_node, on_node)
        });
        let v6 = sp.frontends_v6.iter().map(|fe| {
            let on_node = c.opts.node_addresses_v6.contains(&fe.addr);
            (IpAddr::V6(fe.addr), fe.port, fe.kind, fe.on_node, on_node)
        });
        for fe in v4.chain(v6) {
            let (addr, port, kind, fe_on_node, at_node_address) = fe;
            let key = (addr, port, id.protocol);
            if let Some(other) = owners.insert(key, id) {
                return Err(format!("{key:?} owned by {other} and {id}"));
            }
            if !usable(addr) || link_local(addr) || port == 0 {
                return Err(format!("{id}: unusable frontend {fe:?}"));
            }
            if !expected[id].contains(&(addr, port)) {
                return Err(format!("{id}: frontend {fe:?} it never asked for"));
            }
            let on_node = kind == FrontendKind::NodePort || at_node_address;
            if fe_on_node != on_node {
                return Err(format!("{id}: frontend {fe:?} on_node wrong"));
            }
        }
    }
    // A frontend a port asked for and lacks is another's of its protocol.
    for (id, frontends) in &expected {
        for &(addr, port) in frontends {
            if !owners.contains_key(&(addr, port, id.protocol)) {
                return Err(format!("{id}: frontend {addr}:{port} lost, to nobody"));
            }
        }
    }

    for (id, sp) in &state.services {
        let v4 = |list: &[Backend]| -> Vec<(IpAddr, u16)> {
            list.iter().map(|b| (b.addr.into(), b.port)).collect()
        };
        let v6 = |list: &[Backend<Ipv6Addr>]| -> Vec<(IpAddr, u16)> {
            list.iter().map(|b| (b.addr.into(), b.port)).collect()
        };
        // IPv6 endpoints are looked at only for a port with IPv6 frontends.
        let wants_v6 = expected[id].iter().any(|(addr, _)| addr.is_ipv6());
        let families = [
            (
                "IPv4",
                v4(&sp.cluster_backends),
                v4(&sp.external_backends),
                true,
            ),
            (
                "IPv6",
                v6(&sp.cluster_backends_v6),
                v6(&sp.external_backends_v6),
                wants_v6,
            ),
        ];
        for (family, cluster, external, used) in families {
            let joined = joined(&c.slices, id, family);
            let endpoints: BTreeSet<_> = joined
                .iter()
                .filter(|e| !vips.contains(&e.0))
                .map(|&(addr, port, ..)| (addr, port))
                .collect();
            for b in cluster.iter().chain(&external) {
                if b.1 == 0 || !usable(b.0) || vips.contains(&b.0) {
                    return Err(format!("{id}: unusable backend {b:?}"));
                }
                if !endpoints.contains(b) {
                    return Err(format!("{id}: backend {b:?} in no slice joined to it"));
                }
            }
            // With every endpoint ready and none hinted, Cluster policy
            // takes them all.
            let simple = joined.iter().all(|&(_, _, ready, hinted)| ready && !hinted);
            if used && simple && !internal_local.contains(id) {
                let cluster: BTreeSet<_> = cluster.into_iter().collect();
                if cluster != endpoints {
                    return Err(format!(
                        "{id}: {family} cluster backends {cluster:?}, endpoints {endpoints:?}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether no two objects of a kind share a namespace and name: duplicates
/// (two manifests files defining one Service) keep the first, by design.
fn unique_names(c: &Case) -> bool {
    let key = |m: &ObjectMeta| {
        (
            namespace_of(m).to_string(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let services: BTreeSet<_> = c.services.iter().map(|s| key(&s.metadata)).collect();
    let slices: BTreeSet<_> = c.slices.iter().map(|s| key(&s.metadata)).collect();
    services.len() == c.services.len() && slices.len() == c.slices.len()
}

fn run_case(c: &Case) -> Result<(), String> {
    let state = catch_unwind(AssertUnwindSafe(|| {
        desired_state(&c.services, &c.slices, &c.node, &c.opts)
    }))
    .map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        format!("desired_state panicked: {what:?}")
    })?;
    check(c, &state)?;
    if unique_names(c) {
        let services: Vec<_> = c.services.iter().rev().cloned().collect();
        let slices: Vec<_> = c.slices.iter().rev().cloned().collect();
        if desired_state(&services, &slices, &c.node, &c.opts) != state {
            return Err("the answer depends on the order of the objects".to_string());
        }
    }
    Ok(())
}

#[test]
fn arbitrary_services_and_slices_keep_the_model_sound() {
    let cases = fuzz_knob("XDPLB_FUZZ_CASES", DEFAULT_CASES);
    let seed = fuzz_knob("XDPLB_FUZZ_SEED", DEFAULT_SEED);
    for i in 0..cases {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i);
        let c = case(&mut rng);
        if let Err(why) = run_case(&c) {
            panic!(
                "seed {seed:#x} case {i}: {why}\nnode {:?}, options {:?}\nservices:\n{}\nslices:\n{}",
                c.node,
                c.opts,
                serde_yaml::to_string(&c.services).unwrap(),
                serde_yaml::to_string(&c.slices).unwrap(),
            );
        }
    }
}
