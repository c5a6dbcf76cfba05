//! The 10,000 Services every proxy column serves, one of them measured, and
//! their form for each proxy: manifests for the agent, kube-proxy's
//! iptables and nftables rules, each in one or both address families.
use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::family::{offset, Family};
use ::testbed::control_plane::Node;

pub const COUNT: usize = 10_000;
/// In the middle: kube-proxy's iptables chain is a list, so a Service's
/// place in it sets its cost, and the middle is the average Service.
const MEASURED: usize = COUNT / 2;
pub const PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const NODE_PORT: u16 = 30080;
/// The first ClusterIP of each family, in [`Family::ALL`] order; the IPv6
/// one in fd00:96::/108, the largest IPv6 range the API server allows.
const FIRST_CLUSTER_IP: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(10, 96, 4, 0)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 4, 0)),
];
/// Endpoints of the unmeasured Services: pods of nodes the testbed does
/// not run, so their addresses never take traffic.
const FIRST_OTHER_POD: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(10, 244, 16, 0)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 16, 0, 0, 0, 0, 0)),
];
const MASQ_MARK: &str = "0x4000";

pub struct Service {
    pub name: String,
    /// One per family, in [`Family::ALL`] order.
    cluster_ips: [IpAddr; 2],
    /// Each endpoint's address per family, and its node.
    endpoints: Vec<([IpAddr; 2], String)>,
    pub node_port: Option<u16>,
}

impl Service {
    pub fn cluster_ip(&self, family: Family) -> IpAddr {
        self.cluster_ips[family as usize]
    }

    fn endpoints(&self, family: Family) -> impl Iterator<Item = (IpAddr, &str)> {
        self.endpoints
            .iter()
            .map(move |(addrs, node)| (addrs[family as usize], node.as_str()))
    }
}

pub struct Services {
    pub all: Vec<Service>,
    /// The families the Services have, as their `spec.ipFamilies` lists.
    pub families: Vec<Family>,
}

impl Services {
    /// Unmeasured Services alternate between one and two endpoints; the
    /// measured one, a NodePort Service, has `sink` (its address per
    /// family) on `sink_node` alone.
    pub fn new(sink: [IpAddr; 2], sink_node: &str, families: Vec<Family>) -> Self {
        let all = (0..COUNT)
            .map(|i| {
                let cluster_ips = FIRST_CLUSTER_IP.map(|first| offset(first, i as u32));
                if i == MEASURED {
                    return Service {
                        name: "bench".into(),
                        cluster_ips,
                        endpoints: vec![(sink, sink_node.into())],
                        node_port: Some(NODE_PORT),
                    };
                }
                let endpoints = (0..1 + i % 2)
                    .map(|k| {
                        let n = 2 * i as u32 + k as u32;
                        (
                            FIRST_OTHER_POD.map(|first| offset(first, n)),
                            "node3".to_owned(),
                        )
                    })
                    .collect();
                Service {
                    name: format!("svc-{i:05}"),
                    cluster_ips,
                    endpoints,
                    node_port: None,
                }
            })
            .collect();
        Self { all, families }
    }

    pub fn measured(&self) -> &Service {
        &self.all[MEASURED]
    }

    /// Services, EndpointSlices (one per family, as the EndpointSlice
    /// controller keeps them) and Nodes as `xdplb agent --manifests` reads
    /// them (JSON documents are YAML documents).
    pub fn write_manifests(&self, dir: &Path, nodes: &[Node]) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let titles: Vec<&str> = self.families.iter().map(|f| f.title()).collect();
        let policy = if self.families.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        let mut services = String::new();
        let mut slices = String::new();
        for svc in &self.all {
            let kind = if svc.node_port.is_some() {
                "NodePort"
            } else {
                "ClusterIP"
            };
            let mut port = json!({ "name": "p80", "port": PORT, "protocol": "UDP", "targetPort": TARGET_PORT });
            if let Some(np) = svc.node_port {
                port["nodePort"] = json!(np);
            }
            let ips: Vec<String> = self
                .families
                .iter()
                .map(|&f| svc.cluster_ip(f).to_string())
                .collect();
            document(
                &mut services,
                &json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": { "name": svc.name, "namespace": "default" },
                    "spec": {
                        "type": kind, "clusterIP": ips[0], "clusterIPs": ips,
                        "ipFamilies": titles, "ipFamilyPolicy": policy,
                        "selector": { "app": svc.name }, "ports": [port],
                    },
                }),
            )?;
            for &family in &self.families {
                let endpoints: Vec<Value> = svc
                    .endpoints(family)
                    .map(|(addr, node)| {
                        json!({
                            "addresses": [addr.to_string()],
                            "conditions": { "ready": true, "serving": true, "terminating": false },
                            "nodeName": node,
                        })
                    })
                    .collect();
                let name = match family {
                    Family::Ipv4 => format!("{}-1", svc.name),
                    Family::Ipv6 => format!("{}-ipv6-1", svc.name),
                };
                document(
                    &mut slices,
                    &json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {
                            "name": name, "namespace": "default",
                            "labels": { "kubernetes.io/service-name": svc.name },
                        },
                        "addressType": family.slice_type(),
                        "endpoints": endpoints,
                        "ports": [{ "name": "p80", "port": TARGET_PORT, "protocol": "UDP" }],
                    }),
                )?;
            }
        }
        let mut node_docs = String::new();
        for node in nodes {
            let cidrs: Vec<String> = self.families.iter().map(|f| f.pod_cidr(node)).collect();
            let addresses: Vec<Value> = self
                .families
                .iter()
                .map(|f| json!({ "type": "InternalIP", "address": f.node_addr(node).to_string() }))
                .collect();
            document(
                &mut node_docs,
                &json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": { "name": node.name, "labels": { "kubernetes.io/hostname": node.name } },
                    "spec": { "podCIDR": cidrs[0], "podCIDRs": cidrs },
                    "status": { "addresses": addresses },
                }),
            )?;
        }
        for (file, text) in [
            ("services.yaml", services),
            ("endpointslices.yaml", slices),
            ("nodes.yaml", node_docs),
        ] {
            let path = dir.join(file);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// kube-proxy's iptables mode, for `iptables-restore`: a KUBE-SERVICES
    /// rule per Service port, a KUBE-SVC chain choosing an endpoint at
    /// random, a KUBE-SEP chain per endpoint doing the DNAT, NodePorts
    /// through KUBE-EXT, and masquerading by mark (externalTrafficPolicy
    /// Cluster). For `ip6tables-restore` with [`Family::Ipv6`]: kube-proxy's
    /// IPv6 proxier lays its rules out the same way.
    pub fn iptables(&self, family: Family) -> String {
        let host = family.host_len();
        let cluster_cidr = family.cluster_cidr();
        let mut chains = String::new();
        let mut rules = String::new();
        let mut services = String::new();
        let mut nodeports = String::new();
        for svc in &self.all {
            let spn = format!("default/{}:p80", svc.name);
            let svc_chain = format!("KUBE-SVC-{}", tag(&spn));
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                services,
                "-A KUBE-SERVICES -d {}/{host} -p udp -m comment --comment \"{spn} cluster IP\" -m udp --dport {PORT} -j {svc_chain}",
                svc.cluster_ip(family)
            );
            let _ = writeln!(
                rules,
                "-A {svc_chain} ! -s {cluster_cidr} -d {}/{host} -p udp -m comment --comment \"{spn} cluster IP\" -m udp --dport {PORT} -j KUBE-MARK-MASQ",
                svc.cluster_ip(family)
            );
            let n = svc.endpoints.len();
            for (k, (addr, _)) in svc.endpoints(family).enumerate() {
                let ep = SocketAddr::new(addr, TARGET_PORT).to_string();
                let sep = format!("KUBE-SEP-{}", tag(&format!("{spn}{ep}")));
                let _ = writeln!(chains, ":{sep} - [0:0]");
                // Each rule takes its share of what the ones before it left.
                let statistic = if k + 1 < n {
                    format!(
                        "-m statistic --mode random --probability {:.11} ",
                        1.0 / (n - k) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{spn} -> {ep}\" {statistic}-j {sep}"
                );
                let _ = writeln!(
                    rules,
                    "-A {sep} -s {addr}/{host} -m comment --comment \"{spn}\" -j KUBE-MARK-MASQ"
                );
                let _ = writeln!(
                    rules,
                    "-A {sep} -p udp -m comment --comment \"{spn}\" -m udp -j DNAT --to-destination {ep}"
                );
            }
            if let Some(np) = svc.node_port {
                let ext = format!("KUBE-EXT-{}", tag(&spn));
                let _ = writeln!(chains, ":{ext} - [0:0]");
                let _ = writeln!(
                    nodeports,
                    "-A KUBE-NODEPORTS -p udp -m comment --comment \"{spn}\" -m udp --dport {np} -j {ext}"
                );
                let _ = writeln!(
                    rules,
                    "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
                );
                let _ = writeln!(rules, "-A {ext} -j {svc_chain}");
            }
        }
        format!(
            "*filter\n\
             :INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :KUBE-FORWARD - [0:0]\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
             -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
             -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
             -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             COMMIT\n\
             *nat\n\
             :PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
             :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
             {chains}\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             -A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}\n\
             -A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --set-xmark {MASQ_MARK}/0x0\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
             {services}\
             -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
             {nodeports}{rules}\
             COMMIT\n"
        )
    }

    /// kube-proxy's nftables mode, for `nft -f`: table `ip kube-proxy`
    /// (`ip6 kube-proxy` for [`Family::Ipv6`], its IPv6 proxier's),
    /// the `service-ips` and `service-nodeports` verdict maps, a chain per
    /// Service port choosing an endpoint by `numgen random`, a chain per
    /// endpoint doing the DNAT, and masquerading by mark. Written as one
    /// table block: the same objects kube-proxy's `add` commands make.
    pub fn nftables(&self, family: Family) -> String {
        let ip = family.nft();
        let cluster_cidr = family.cluster_cidr();
        let mut chains = String::new();
        let mut service_ips = Vec::new();
        let mut nodeports = Vec::new();
        for svc in &self.all {
            let spn = format!("default/{}/udp/p80", svc.name);
            let svc_chain = format!("service-{}-{spn}", &tag(&spn)[..8]);
            let mut vmap = Vec::new();
            for (k, (addr, _)) in svc.endpoints(family).enumerate() {
                // As kube-proxy names it: a chain name may not hold the
                // colons of an IPv6 address, so they become dots.
                let name_addr = addr.to_string().replace(':', ".");
                let ep = format!("{spn}__{name_addr}/{TARGET_PORT}");
                let ep_chain = format!("endpoint-{}-{ep}", &tag(&ep)[..8]);
                let to = SocketAddr::new(addr, TARGET_PORT);
                let _ = writeln!(
                    chains,
                    "\tchain {ep_chain} {{\n\t\t{ip} saddr {addr} jump mark-for-masquerade\n\t\tmeta l4proto udp dnat to {to}\n\t}}"
                );
                vmap.push(format!("{k} : goto {ep_chain}"));
            }
            let _ = writeln!(
                chains,
                "\tchain {svc_chain} {{\n\t\t{ip} daddr {} udp dport {PORT} {ip} saddr != {cluster_cidr} jump mark-for-masquerade\n\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
                svc.cluster_ip(family),
                vmap.len(),
                vmap.join(", ")
            );
            service_ips.push(format!(
                "{} . udp . {PORT} : goto {svc_chain}",
                svc.cluster_ip(family)
            ));
            if let Some(np) = svc.node_port {
                let ext = format!("external-{}-{spn}", &tag(&spn)[..8]);
                let _ = writeln!(
                    chains,
                    "\tchain {ext} {{\n\t\tjump mark-for-masquerade\n\t\tgoto {svc_chain}\n\t}}"
                );
                nodeports.push(format!("udp . {np} : goto {ext}"));
            }
        }
        let addr_type = family.nft_addr_type();
        let map = |name: &str, key: &str, elements: &[String]| {
            let elements = if elements.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }}", elements.join(",\n\t\t"))
            };
            format!("\tmap {name} {{ type {key} : verdict ;{elements} }}\n")
        };
        format!(
            "table {ip} kube-proxy {{\n\
             \tcomment \"rules for kube-proxy\"\n\
             {}{}{}\
             \tchain nat-prerouting {{ type nat hook prerouting priority dstnat ; policy accept ; jump services ; }}\n\
             \tchain nat-output {{ type nat hook output priority -100 ; policy accept ; jump services ; }}\n\
             \tchain nat-postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; jump masquerading ; }}\n\
             \tchain filter-forward {{ type filter hook forward priority -110 ; policy accept ; ct state new jump service-endpoints-check ; }}\n\
             \tchain service-endpoints-check {{ {ip} daddr . meta l4proto . th dport vmap @no-endpoint-services ; }}\n\
             \tchain mark-for-masquerade {{ meta mark set meta mark or {MASQ_MARK} ; }}\n\
             \tchain masquerading {{\n\
             \t\tmeta mark and {MASQ_MARK} == 0 return\n\
             \t\tmeta mark set meta mark xor {MASQ_MARK}\n\
             \t\tmasquerade fully-random\n\
             \t}}\n\
             \tchain services {{\n\
             \t\t{ip} daddr . meta l4proto . th dport vmap @service-ips\n\
             \t\tfib daddr type local {ip} daddr != {loopback} meta l4proto . th dport vmap @service-nodeports\n\
             \t}}\n\
             {chains}}}\n",
            map("service-ips", &format!("{addr_type} . inet_proto . inet_service"), &service_ips),
            map("service-nodeports", "inet_proto . inet_service", &nodeports),
            map("no-endpoint-services", &format!("{addr_type} . inet_proto . inet_service"), &[]),
            loopback = family.loopback(),
        )
    }
}

fn document(out: &mut String, object: &Value) -> Result<()> {
    out.push_str("---\n");
    out.push_str(&serde_json::to_string(object)?);
    out.push('\n');
    Ok(())
}

/// A stable 16-character name part, as kube-proxy derives its chain names
/// from a hash of the Service port (and endpoint).
fn tag(s: &str) -> String {
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016X}")
}
