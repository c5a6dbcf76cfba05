//! LoadBalancer addresses on bare metal: which Service gets which address
//! of the pools (`allocate`), and which node answers ARP (IPv4) or NDP
//! (IPv6) for it (`announcements`). Both are pure functions of the
//! objects, so every agent reaches the same answer without talking to the
//! others.
//!
//! The pools are this agent's alone: an address of a pool in a Service's
//! `status.loadBalancer.ingress` was written there by the status writer
//! (`crate::lb_status`), and records the allocation.
//!
//! The allocation rule, in full, applied to each family on its own with
//! that family's pools and addresses (a dual-stack Service gets one
//! address of each):
//! 1. A Service takes part when it is of type LoadBalancer, is this
//!    proxy's (`service.kubernetes.io/service-proxy-name`), has
//!    `spec.loadBalancerClass` unset or `xdplb.io/l2`, has the family in
//!    `spec.ipFamilies` (without it, that of its cluster IPs; without
//!    those, IPv4), and has no address of the family outside the pools in
//!    `status.loadBalancer.ingress` (one there came from elsewhere and is
//!    served as it is; it is never handed out again).
//! 2. Services are taken in order of `metadata.creationTimestamp` (a
//!    missing one first), then namespace, then name.
//! 3. First every Service whose status records an address of the pools
//!    keeps it, unless it requests others (below) or an earlier one holds
//!    it: the address written survives restarts and changes to the other
//!    Services.
//! 4. Then every Service that requests addresses of the family
//!    (`spec.loadBalancerIP`, or the annotations
//!    `metallb.universe.tf/loadBalancerIPs` and `lbipam.cilium.io/ips`,
//!    comma-separated): it gets the first address of the family it
//!    requests that is in a pool and not yet taken. When none is, it gets
//!    nothing of that family and is reported, as MetalLB and Cilium do: an
//!    address other than the one asked for would be a surprise.
//! 5. Then every other Service, in the same order: it gets the first free
//!    address at or after a start that is a hash of its namespace and name,
//!    walking the family's pools in the order given and wrapping around.
//!
//! Before the status is written (and without the API, with `--manifests`),
//! a new Service (the newest) never moves an older one, and a removed one
//! moves only a younger Service whose hash landed on the freed address and
//! was pushed on to the next free one, or a Service that requested it.
//! Once written, an address stays with its Service: the status computed
//! from rules 4 and 5 is the one rule 3 then keeps.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{namespace_of, service::for_this_proxy, ModelOptions, Problem, LABEL_SERVICE_NAME};

/// `spec.loadBalancerClass` of the Services this agent gives addresses
/// to, besides those without a class.
pub const CLASS_L2: &str = "xdplb.io/l2";
const REQUEST_ANNOTATIONS: [&str; 2] = [
    "metallb.universe.tf/loadBalancerIPs",
    "lbipam.cilium.io/ips",
];

/// An address family; the allocation runs once for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The address numbered `n` in this family.
    fn addr(self, n: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// One pool: an inclusive range of addresses of one family, named as it
/// was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    family: Family,
    first: u128,
    last: u128,
}

impl Pool {
    /// Saturated: an IPv6 range may hold all 2^128 addresses.
    fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }

    fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family && (self.first..=self.last).contains(&number(addr))
    }
}

/// The pools in the order given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pools(Vec<Pool>);

impl Pools {
    /// Pools from `--lb-pool` CIDRs and `--lb-pool-range` FIRST-LAST ranges,
    /// of either family. An IPv4 CIDR leaves out its network and broadcast
    /// addresses (except a /31 or /32, which have none), which hosts on a
    /// LAN of that prefix would not reach; an IPv6 CIDR leaves out its
    /// first address, the Subnet-Router anycast address (except a /127 or
    /// /128). Pools may not overlap.
    pub fn parse(cidrs: &[String], ranges: &[String]) -> Result<Self, String> {
        let mut pools = Vec::new();
        for cidr in cidrs {
            pools.push(parse_cidr(cidr.trim())?);
        }
        for range in ranges {
            pools.push(parse_range(range.trim())?);
        }
        for (i, a) in pools.iter().enumerate() {
            if let Some(b) = pools[..i]
                .iter()
                .find(|b| a.family == b.family && a.first <= b.last && b.first <= a.last)
            {
                return Err(format!(
                    "LoadBalancer pools {} and {} overlap",
                    b.name, a.name
                ));
            }
        }
        Ok(Self(pools))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.0.iter()
    }

    /// The pools of `family`, in order.
    fn of(&self, family: Family) -> Pools {
        Pools(
            self.0
                .iter()
                .filter(|p| p.family == family)
                .cloned()
                .collect(),
        )
    }

    fn size(&self) -> u128 {
        self.0.iter().map(Pool::size).fold(0, u128::saturating_add)
    }

    /// The `i`th address over all pools, in order.
    fn nth(&self, mut i: u128) -> IpAddr {
        for p in &self.0 {
            if i < p.size() {
                return p.family.addr(p.first + i);
            }
            i -= p.size();
        }
        unreachable!("index beyond the pools")
    }

    fn pool_of(&self, addr: IpAddr) -> Option<&Pool> {
        self.0.iter().find(|p| p.contains(addr))
    }
}

fn parse_addr(what: &str, s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{what}: invalid IP address {s:?}"))
}

fn parse_cidr(cidr: &str) -> Result<Pool, String> {
    let what = format!("--lb-pool {cidr}");
    let bad = || format!("{what}: expected a CIDR such as 192.168.1.240/28 or fd00:10::200/120");
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip = parse_addr(&what, ip)?;
    let family = Family::of(ip);
    let bits = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    // u32's parser would also take "+8", which no CIDR parser accepts.
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u32 = match len.parse() {
        Ok(len) if len <= bits => len,
        _ => return Err(bad()),
    };
    let mask = u128::MAX.checked_shl(bits - len).unwrap_or(0) & (u128::MAX >> (128 - bits));
    let net = number(ip) & mask;
    let top = net | (!mask & (u128::MAX >> (128 - bits)));
    let (first, last) = match family {
        _ if len >= bits - 1 => (net, top),
        Family::V4 => (net + 1, top - 1),
        Family::V6 => (net + 1, top),
    };
    Ok(Pool {
        name: cidr.to_string(),
        family,
        first,
        last,
    })
}

fn parse_range(range: &str) -> Result<Pool, String> {
    let what = format!("--lb-pool-range {range}");
    let (first, last) = range.split_once('-').ok_or_else(|| {
        format!("{what}: expected FIRST-LAST, such as 192.168.1.240-192.168.1.250")
    })?;
    let (first, last) = (
        parse_addr(&what, first.trim())?,
        parse_addr(&what, last.trim())?,
    );
    if Family::of(first) != Family::of(last) {
        return Err(format!("{what}: {first} and {last} are of two families"));
    }
    if number(first) > number(last) {
        return Err(format!("{what}: {first} comes after {last}"));
    }
    Ok(Pool {
        name: format!("{first}-{last}"),
        family: Family::of(first),
        first: number(first),
        last: number(last),
    })
}

/// A Service's address from the pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    pub addr: IpAddr,
    /// The pool's name, as given on the command line.
    pub pool: String,
}

/// (namespace, name) of a Service.
pub type ServiceKey = (String, String);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// At most one address per Service and family.
    pub addrs: BTreeMap<(ServiceKey, Family), Allocated>,
    /// Services that asked for what they cannot have, or found no address.
    pub problems: Vec<Problem>,
    /// Services left without an address because the pools of a family
    /// were full, once per family.
    pub exhausted: usize,
}

impl Allocation {
    /// Per pool, in order: (name, used, free), free saturated for IPv6
    /// pools larger than a u64 counts.
    pub fn usage(&self, pools: &Pools) -> Vec<(String, u64, u64)> {
        pools
            .iter()
            .map(|p| {
                let used = self.addrs.values().filter(|a| a.pool == p.name).count() as u64;
                let free = p.size() - u128::from(used);
                (
                    p.name.clone(),
                    used,
                    u64::try_from(free).unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    /// `services` with the addresses of the pools in their status ingress
    /// replaced by their allocation, which the model programs as it
    /// programs any other: a Service's address is served from the
    /// allocation, before (or without) the status writer recording it.
    pub fn apply(&self, services: &[Service], pools: &Pools) -> Vec<Service> {
        services
            .iter()
            .map(|svc| {
                let mut svc = svc.clone();
                let ingress = wanted_ingress(&svc, self, pools);
                svc.status
                    .get_or_insert_with(Default::default)
                    .load_balancer
                    .get_or_insert_with(Default::default)
                    .ingress = (!ingress.is_empty()).then_some(ingress);
                svc
            })
            .collect()
    }
}

/// The `status.loadBalancer.ingress` `svc` should have: its entries from
/// elsewhere, and its allocated addresses, IPv4 first (ipMode VIP: the
/// nodes serve them themselves) in place of any address of the pools.
pub fn wanted_ingress(
    svc: &Service,
    alloc: &Allocation,
    pools: &Pools,
) -> Vec<LoadBalancerIngress> {
    let mut ingress: Vec<LoadBalancerIngress> = ingress_of(svc)
        .iter()
        .filter(|i| in_pools(i, pools).is_none())
        .cloned()
        .collect();
    if let Some(key) = key_of(svc) {
        for family in Family::ALL {
            if let Some(a) = alloc.addrs.get(&(key.clone(), family)) {
                ingress.push(LoadBalancerIngress {
                    ip: Some(a.addr.to_string()),
                    ip_mode: Some("VIP".to_string()),
                    ..Default::default()
                });
            }
        }
    }
    ingress
}

/// The Services of this proxy whose `status.loadBalancer.ingress` is not
/// what [`wanted_ingress`] says, with the ingress they should have.
pub fn status_changes(
    services: &[Service],
    alloc: &Allocation,
    pools: &Pools,
    opts: &ModelOptions,
) -> Vec<(ServiceKey, Vec<LoadBalancerIngress>)> {
    services
        .iter()
        .filter(|s| for_this_proxy(s, opts))
        .filter_map(|s| {
            let want = wanted_ingress(s, alloc, pools);
            (want != ingress_of(s)).then(|| Some((key_of(s)?, want)))?
        })
        .collect()
}

fn ingress_of(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

/// The address of an ingress entry when it is in the pools.
fn in_pools(ingress: &LoadBalancerIngress, pools: &Pools) -> Option<IpAddr> {
    let addr = ingress.ip.as_deref()?.parse().ok()?;
    pools.pool_of(addr).map(|_| addr)
}

fn key_of(svc: &Service) -> Option<ServiceKey> {
    let name = svc.metadata.name.as_deref().filter(|n| !n.is_empty())?;
    Some((namespace_of(&svc.metadata).to_string(), name.to_string()))
}

/// The ingress addresses of `svc` of `family`.
fn ingress_ips(svc: &Service, family: Family) -> impl Iterator<Item = IpAddr> + '_ {
    ingress_of(svc)
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .filter(move |a| Family::of(*a) == family)
}

/// The address of `pools` (one family's) `svc`'s status records (rule 3).
fn recorded(svc: &Service, pools: &Pools) -> Option<IpAddr> {
    ingress_of(svc).iter().find_map(|i| in_pools(i, pools))
}

/// The families `svc` has: `spec.ipFamilies`, which the API server fills
/// from `ipFamilyPolicy` and the cluster's families; without it (a
/// manifest written by hand) those of its cluster IPs; without those IPv4.
fn families(svc: &Service) -> BTreeSet<Family> {
    let spec = svc.spec.as_ref();
    let named: BTreeSet<Family> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    if !named.is_empty() {
        return named;
    }
    let of_ips: BTreeSet<Family> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.and_then(|s| s.cluster_ip.as_ref()))
        .filter_map(|ip| ip.parse().ok().map(Family::of))
        .collect();
    if of_ips.is_empty() {
        BTreeSet::from([Family::V4])
    } else {
        of_ips
    }
}

/// Whether the pools of `family` give `svc` an address (rule 1).
fn takes_part(svc: &Service, family: Family, pools: &Pools, opts: &ModelOptions) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && matches!(spec.load_balancer_class.as_deref(), None | Some(CLASS_L2))
        && for_this_proxy(svc, opts)
        && families(svc).contains(&family)
        && ingress_ips(svc, family).all(|a| pools.pool_of(a).is_some())
}

/// The addresses `svc` requests, of both families.
fn requested(svc: &Service) -> Result<Vec<IpAddr>, String> {
    let annotations = svc.metadata.annotations.as_ref();
    let listed = REQUEST_ANNOTATIONS
        .iter()
        .filter_map(|a| annotations?.get(*a).map(|v| (*a, v.as_str())));
    let spec = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .map(|ip| ("spec.loadBalancerIP", ip));
    let mut out = Vec::new();
    for (what, list) in spec.into_iter().chain(listed) {
        for ip in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match ip.parse::<IpAddr>() {
                Ok(a) => out.push(a),
                Err(_) => return Err(format!("{what}: invalid IP {ip:?}")),
            }
        }
    }
    Ok(out)
}

/// FNV-1a, then a finaliser that spreads its bits: stable across agents,
/// versions and platforms, which `std`'s hasher does not promise.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h = (h ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Addresses from `pools` for the Services that need one (see the module
/// documentation for the rule), each family on its own.
pub fn allocate(services: &[Service], pools: &Pools, opts: &ModelOptions) -> Allocation {
    let mut out = Allocation::default();
    for family in Family::ALL {
        let of_family = pools.of(family);
        if !of_family.is_empty() {
            allocate_family(services, family, &of_family, opts, &mut out);
        } else if !pools.is_empty() {
            out.problems.extend(unpooled(services, family, opts));
        }
    }
    out.problems.sort();
    out.problems.dedup();
    out
}

/// The Services that require an address of `family`, which has no pool
/// (`ipFamilyPolicy: RequireDualStack`), reported: they get the other
/// family's only. A PreferDualStack one is served by what there is, as its
/// policy asks.
fn unpooled<'a>(
    services: &'a [Service],
    family: Family,
    opts: &'a ModelOptions,
) -> impl Iterator<Item = Problem> + 'a {
    let none = Pools::default();
    services
        .iter()
        .filter(move |s| {
            let policy = s.spec.as_ref().and_then(|s| s.ip_family_policy.as_deref());
            policy == Some("RequireDualStack") && takes_part(s, family, &none, opts)
        })
        .filter_map(key_of)
        .map(move |(ns, name)| Problem {
            object: format!("Service {ns}/{name}"),
            message: format!(
                "RequireDualStack, but no {family} pool is given (--lb-pool): \
                 it gets no {family} LoadBalancer address"
            ),
        })
}

/// `allocate` for one family, whose pools `pools` are.
fn allocate_family(
    services: &[Service],
    family: Family,
    pools: &Pools,
    opts: &ModelOptions,
    out: &mut Allocation,
) {
    let mut order: Vec<(&Service, ServiceKey)> = services
        .iter()
        .filter(|s| takes_part(s, family, pools, opts))
        .filter_map(|s| Some((s, key_of(s)?)))
        .collect();
    order.sort_by(|(a, ka), (b, kb)| {
        (&a.metadata.creation_timestamp, ka).cmp(&(&b.metadata.creation_timestamp, kb))
    });
    order.dedup_by(|(_, a), (_, b)| a == b);
    // Addresses Services already have from elsewhere are not handed out,
    // nor those of the pools still in the status of a Service that left
    // them, until the status writer clears them.
    let mut taken: BTreeMap<IpAddr, String> = BTreeMap::new();
    let part: BTreeSet<&ServiceKey> = order.iter().map(|(_, k)| k).collect();
    for svc in services {
        if let Some(key) = key_of(svc).filter(|k| !part.contains(k)) {
            for addr in ingress_ips(svc, family) {
                taken
                    .entry(addr)
                    .or_insert_with(|| format!("{}/{}", key.0, key.1));
            }
        }
    }
    let problem = |(ns, name): &ServiceKey, message: String| Problem {
        object: format!("Service {ns}/{name}"),
        message,
    };
    let mut requests = Vec::new();
    for (svc, key) in &order {
        match requested(svc) {
            Ok(wanted) => {
                let wanted: Vec<IpAddr> = wanted
                    .into_iter()
                    .filter(|a| Family::of(*a) == family)
                    .collect();
                requests.push((key, recorded(svc, pools), wanted));
            }
            Err(message) => out.problems.push(problem(key, message)),
        }
    }
    let mut give = |key: &ServiceKey, addr: IpAddr, taken: &mut BTreeMap<IpAddr, String>| {
        taken.insert(addr, format!("{}/{}", key.0, key.1));
        let pool = pools.pool_of(addr).expect("in the pools").name.clone();
        out.addrs
            .insert((key.clone(), family), Allocated { addr, pool });
    };
    let mut rest = Vec::new();
    let mut exhausted = 0;
    for (key, recorded, wanted) in requests {
        let keeps = recorded
            .filter(|a| wanted.is_empty() || wanted.contains(a))
            .filter(|a| !taken.contains_key(a));
        match keeps {
            Some(addr) => give(key, addr, &mut taken),
            None => rest.push((key, wanted)),
        }
    }
    let mut unrequested = Vec::new();
    let mut refused = Vec::new();
    for (key, wanted) in rest {
        if wanted.is_empty() {
            unrequested.push(key);
            continue;
        }
        let got = wanted
            .iter()
            .find(|&&a| pools.pool_of(a).is_some() && !taken.contains_key(&a));
        match got {
            Some(&addr) => give(key, addr, &mut taken),
            None => {
                let why: Vec<String> = wanted
                    .iter()
                    .map(|a| match taken.get(a) {
                        Some(owner) => format!("{a} is used by {owner}"),
                        None => format!("{a} is in no pool"),
                    })
                    .collect();
                refused.push(problem(
                    key,
                    format!(
                        "no requested LoadBalancer address is free: {}",
                        why.join(", ")
                    ),
                ));
            }
        }
    }
    let size = pools.size();
    let mut free = size
        - taken
            .keys()
            .filter(|a| pools.pool_of(**a).is_some())
            .count() as u128;
    for key in unrequested {
        if free == 0 {
            exhausted += 1;
            refused.push(problem(
                key,
                format!("no LoadBalancer address: every address of the {family} pools is in use"),
            ));
            continue;
        }
        let start = u128::from(stable_hash(&[key.0.as_bytes(), key.1.as_bytes()])) % size;
        // From `start` to the end, then from the first: (start + i) % size
        // without the sum, which overflows for the largest IPv6 pools.
        let addr = (0..size)
            .map(|i| {
                pools.nth(if i < size - start {
                    start + i
                } else {
                    i - (size - start)
                })
            })
            .find(|a| !taken.contains_key(a))
            .expect("a free address, counted above");
        give(key, addr, &mut taken);
        free -= 1;
    }
    out.problems.extend(refused);
    out.exhausted += exhausted;
}

/// One allocated address and the node that answers ARP (IPv4) or NDP
/// (IPv6) for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub addr: IpAddr,
    pub pool: String,
    pub service: ServiceKey,
    /// `None` when no node may announce it (no candidate, or none with a
    /// local ready endpoint under externalTrafficPolicy Local).
    pub node: Option<String>,
}

/// Nodes whose Ready condition is True.
pub fn ready_nodes(nodes: &[Node]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// Nodes with a ready endpoint of Service `ns/name`. As the API defines
/// it, an endpoint whose ready condition is unset counts as ready.
fn nodes_with_ready_endpoints(
    slices: &[EndpointSlice],
    (ns, name): &ServiceKey,
) -> BTreeSet<String> {
    slices
        .iter()
        .filter(|s| namespace_of(&s.metadata) == ns)
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SERVICE_NAME))
                == Some(name)
        })
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// Rendezvous (highest random weight) hashing: of `candidates`, the node
/// whose hash with `addr` is highest. Every agent picks the same node from
/// the same candidates, and a node leaving moves only the addresses it
/// announced.
pub fn announcer<'a>(
    addr: impl Into<IpAddr>,
    candidates: impl IntoIterator<Item = &'a String>,
) -> Option<&'a String> {
    let octets = match addr.into() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    candidates
        .into_iter()
        .max_by_key(|n| (stable_hash(&[&octets, n.as_bytes()]), n.as_str()))
}

/// The announcing node of every allocated address: among `candidates`
/// (the nodes alive to announce: Ready, and with the API also renewing
/// their agent's lease), restricted under externalTrafficPolicy Local to
/// those with a local ready endpoint (any other would drop what it
/// attracts).
pub fn announcements(
    services: &[Service],
    slices: &[EndpointSlice],
    candidates: &BTreeSet<String>,
    alloc: &Allocation,
) -> Vec<Announcement> {
    let local: BTreeMap<ServiceKey, bool> = services
        .iter()
        .filter_map(|s| {
            let policy = s.spec.as_ref()?.external_traffic_policy.as_deref();
            Some((key_of(s)?, policy == Some("Local")))
        })
        .collect();
    alloc
        .addrs
        .iter()
        .map(|((key, _), a)| {
            let node = if local.get(key).copied().unwrap_or(false) {
                let with = nodes_with_ready_endpoints(slices, key);
                announcer(a.addr, candidates.intersection(&with)).cloned()
            } else {
                announcer(a.addr, candidates).cloned()
            };
            Announcement {
                addr: a.addr,
                pool: a.pool.clone(),
                service: key.clone(),
                node,
            }
        })
        .collect()
}

impl fmt::Display for Announcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}/{}, pool {}) announced by {}",
            self.addr,
            self.service.0,
            self.service.1,
            self.pool,
            self.node.as_deref().unwrap_or("no node")
        )
    }
}

#[cfg(test)]
mod tests;
