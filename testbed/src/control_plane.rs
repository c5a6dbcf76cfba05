//! What a cluster's control plane would do with the seed manifests, so the
//! agents read the objects they would get from an API server: the scheduler
//! places the Deployments' pods, the API server allocates ClusterIPs and
//! nodePorts, the endpoint controller writes EndpointSlices, and a
//! LoadBalancer provider fills `status.loadBalancer.ingress`.
//!
//! Allocation is in order rather than at random as the API server does, so
//! the demo prints the same addresses on every run.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// The ClusterIP range, kubeadm's default 10.96.0.0/16.
const SERVICE_RANGE: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 96, 0, 0), 16);
/// The IPv6 ClusterIP range, a /112 of a ULA prefix (the API server allows
/// at most a /108 for IPv6).
const SERVICE_RANGE_V6: (Ipv6Addr, u32) = (Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 112);
const FIRST_CLUSTER_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11);
/// By convention .1 is the `kubernetes` Service's and .10 kube-dns's.
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;
/// The API server hands out automatic nodePorts above the range's static
/// band (KEP-3668) so they do not take ports manifests ask for; the band is
/// min(max(16, size/32), 128) ports.
const FIRST_AUTO_NODE_PORT: i64 = 30000 + 2768 / 32;
/// A documentation range (RFC 5737) standing in for a cloud's address pool.
const FIRST_LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The stand-in's IPv6 addresses: a ULA prefix outside every subnet of the
/// cluster, which the router sends to the first node as it does the IPv4
/// ones.
const FIRST_LB_IP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0, 0, 0, 0, 0x10);
/// The seed's Services the demo makes dual-stack, as `ipFamilyPolicy:
/// PreferDualStack` with `ipFamilies: [IPv4, IPv6]` in their manifests
/// would: the counter app's and Redis'. Their IPv4 half is as the seed
/// has it.
const DUAL_STACK: &[&str] = &["counter-lb", "counter-app", "redis"];
/// Pod counts the demo runs instead of the Deployments' own: one counter per
/// node, so the table shows both nodes' pods answering.
const REPLICAS: &[(&str, usize)] = &[("counter", 2)];

/// Who fills `status.loadBalancer.ingress` of LoadBalancer Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LbProvider {
    /// A stand-in for a cloud's load balancer: addresses from 203.0.113.10
    /// on, which the router sends to the first node
    /// ([`crate::cluster::Cluster::with_pods`]). It leaves Services of
    /// another `loadBalancerClass` alone.
    #[default]
    StandIn,
    /// None, as on bare metal: the agents' pools
    /// ([`crate::cluster::LB_POOL`]) give every LoadBalancer Service its
    /// address, and one node answers ARP for it.
    AgentsPools,
}

/// The programs the demo runs in place of the seed's container images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    Counter,
    Redis,
    /// The end-to-end suite's pod program (`e2e-probe server`).
    Probe,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Network address of the node's /24 pod CIDR.
    pub pod_net: Ipv4Addr,
    /// The node's IPv6 address on the LAN (a /64).
    pub addr6: Ipv6Addr,
    /// Network address of the node's IPv6 pod CIDR, a /64.
    pub pod_net6: Ipv6Addr,
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub addr: Ipv4Addr,
    /// The pod's IPv6 address, a /128 of its node's IPv6 pod CIDR with the
    /// same host number as its IPv4 address.
    pub addr6: Ipv6Addr,
    pub app: App,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// Named container ports, for Services whose targetPort is a name.
    pub named_ports: BTreeMap<String, i64>,
}

/// Everything the agents and the pods need to know about the cluster.
#[derive(Debug)]
pub struct State {
    pub pods: Vec<Pod>,
    /// The Services as the API server would return them.
    pub services: Vec<Value>,
    pub slices: Vec<Value>,
    pub nodes: Vec<Value>,
    /// The nodes the pods run on, for placing pods added later.
    placement: Vec<Node>,
    /// Deleted pods, whose addresses are not handed out again.
    gone: Vec<Pod>,
    provider: LbProvider,
}

impl State {
    /// `pod`'s hosts file: every Service name as CoreDNS would answer it
    /// inside the cluster, and the pod's own name.
    pub fn hosts_file(&self, pod: &Pod) -> String {
        let mut hosts = format!("127.0.0.1\tlocalhost\n{}\t{}\n", pod.addr, pod.name);
        for (ip, name) in self.cluster_ips() {
            let _ = writeln!(
                hosts,
                "{ip}\t{name} {name}.default {name}.default.svc {name}.default.svc.cluster.local"
            );
        }
        hosts
    }

    /// Adds Services as `kubectl apply` would: the API server allocates
    /// what they leave out, and the endpoint controller writes their slices.
    pub fn add_services(&mut self, services: impl IntoIterator<Item = Value>) -> Result<()> {
        self.services.extend(services);
        allocate(&mut self.services, self.provider)?;
        self.refresh_slices();
        Ok(())
    }

    /// Deletes the Service `name` and its EndpointSlices; its ClusterIP and
    /// nodePorts are free again.
    pub fn remove_service(&mut self, name: &str) -> Result<()> {
        let before = self.services.len();
        self.services.retain(|svc| name_of(svc) != name);
        ensure!(self.services.len() < before, "no Service {name}");
        self.refresh_slices();
        Ok(())
    }

    /// Sets the Ready condition of Node `name`, as its kubelet (or the node
    /// controller, once the kubelet falls silent) would.
    pub fn set_node_ready(&mut self, name: &str, ready: bool) -> Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| name_of(n) == name)
            .with_context(|| format!("no Node {name}"))?;
        let status = if ready { "True" } else { "False" };
        node["status"]["conditions"] = json!([{ "type": "Ready", "status": status }]);
        Ok(())
    }

    /// A pod scheduled onto `node`, with the next address of its pod CIDR
    /// no pod of this run has had. Not part of the cluster until
    /// [`State::add_pod`].
    pub fn place_pod(&self, name: &str, node: &str, app: App) -> Result<Pod> {
        let node = self
            .placement
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node}"))?;
        let [a, b, c, _] = node.pod_net.octets();
        let used = self
            .pods
            .iter()
            .chain(self.gone.iter())
            .filter(|p| p.node == node.name)
            .map(|p| p.addr.octets()[3])
            .max()
            .unwrap_or(1);
        ensure!(used < 254, "the pod CIDR of {} is full", node.name);
        Ok(Pod {
            name: name.into(),
            node: node.name.clone(),
            addr: Ipv4Addr::new(a, b, c, used + 1),
            addr6: pod_addr6(node, used + 1),
            app,
            env: Vec::new(),
            labels: BTreeMap::new(),
            named_ports: BTreeMap::new(),
        })
    }

    /// A running pod joins the endpoints of the Services that select it.
    pub fn add_pod(&mut self, pod: Pod) -> Result<()> {
        ensure!(
            self.pods.iter().all(|p| p.name != pod.name),
            "pod {} exists already",
            pod.name
        );
        self.pods.push(pod);
        self.refresh_slices();
        Ok(())
    }

    /// A deleted pod leaves every EndpointSlice.
    pub fn remove_pod(&mut self, name: &str) -> Result<Pod> {
        let index = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let pod = self.pods.remove(index);
        self.gone.push(pod.clone());
        self.refresh_slices();
        Ok(pod)
    }

    fn refresh_slices(&mut self) {
        self.slices = endpoint_slices(&self.services, &self.pods);
    }

    /// `(ClusterIP, name)` of every Service that has one, for pods' hosts files.
    pub fn cluster_ips(&self) -> Vec<(Ipv4Addr, &str)> {
        self.services
            .iter()
            .filter_map(|svc| {
                let ip = svc["spec"]["clusterIP"].as_str()?.parse().ok()?;
                Some((ip, svc["metadata"]["name"].as_str()?))
            })
            .collect()
    }

    pub fn lb_ips(&self) -> Vec<Ipv4Addr> {
        self.services
            .iter()
            .flat_map(|svc| ingress_ips(svc).collect::<Vec<_>>())
            .collect()
    }

    /// The IPv6 LoadBalancer ingress IPs of every Service.
    pub fn lb_ips_v6(&self) -> Vec<Ipv6Addr> {
        self.services
            .iter()
            .flat_map(|svc| ingress_ips_v6(svc).collect::<Vec<_>>())
            .collect()
    }

    /// Writes the Services, EndpointSlices and Nodes into `dir`, one file per
    /// kind, as an agent started with `--manifests dir` expects them. Each
    /// file is replaced at once (written aside, then renamed over), so an
    /// agent watching `dir` never reads half of one.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, objects) in [
            ("services.yaml", &self.services),
            ("endpointslices.yaml", &self.slices),
            ("nodes.yaml", &self.nodes),
        ] {
            let mut text = String::new();
            for object in objects {
                text.push_str("---\n");
                text.push_str(&serde_yaml::to_string(object)?);
            }
            let path = dir.join(file);
            // A dot file: the agent skips those.
            let aside = dir.join(format!(".{file}.new"));
            fs::write(&aside, text).with_context(|| format!("writing {}", aside.display()))?;
            fs::rename(&aside, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// Reads the manifests in `dir` and does the control plane's work for
/// `nodes`, with `provider` for LoadBalancer Services.
pub fn from_manifests(dir: &Path, nodes: &[Node], provider: LbProvider) -> Result<State> {
    let (mut services, deployments) = load(dir)?;
    for svc in &mut services {
        if DUAL_STACK.contains(&name_of(svc)) && svc["spec"]["ipFamilyPolicy"].is_null() {
            svc["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
            svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
        }
    }
    let pods = schedule(&deployments, nodes)?;
    allocate(&mut services, provider)?;
    let slices = endpoint_slices(&services, &pods);
    Ok(State {
        pods,
        services,
        slices,
        nodes: nodes.iter().map(node_object).collect(),
        placement: nodes.to_vec(),
        gone: Vec::new(),
        provider,
    })
}

/// Services and Deployments of every manifest file in `dir`, in file name
/// order as `kubectl apply -f dir` takes them.
fn load(dir: &Path) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    let (mut services, mut deployments) = (Vec::new(), Vec::new());
    for path in files {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object = Value::deserialize(document)
                .with_context(|| format!("parsing {}", path.display()))?;
            match object["kind"].as_str() {
                Some("Service") => services.push(object),
                Some("Deployment") => deployments.push(object),
                // Comment-only documents.
                None if object.is_null() => {}
                other => bail!(
                    "{}: the demo runs Services and Deployments, not {other:?}",
                    path.display()
                ),
            }
        }
    }
    Ok((services, deployments))
}

/// One pod per replica, spread over the nodes in turn, with addresses from
/// their node's pod CIDR.
fn schedule(deployments: &[Value], nodes: &[Node]) -> Result<Vec<Pod>> {
    let mut pods = Vec::new();
    let mut next_host = vec![2u8; nodes.len()];
    for deployment in deployments {
        let name = deployment["metadata"]["name"]
            .as_str()
            .context("a Deployment without metadata.name")?;
        let template = &deployment["spec"]["template"];
        let containers = template["spec"]["containers"]
            .as_array()
            .filter(|c| c.len() == 1)
            .with_context(|| format!("Deployment {name}: the demo runs pods of one container"))?;
        let container = &containers[0];
        let image = container["image"].as_str().unwrap_or_default();
        let app = match image.rsplit('/').next().unwrap_or_default() {
            i if i == "redis" || i.starts_with("redis:") => App::Redis,
            i if i.starts_with("counter") => App::Counter,
            _ => bail!("Deployment {name}: the demo can run the images redis and subicura/counter, not {image:?}"),
        };
        let replicas = match REPLICAS.iter().find(|(n, _)| *n == name) {
            Some(&(_, n)) => n,
            None => usize::try_from(deployment["spec"]["replicas"].as_u64().unwrap_or(1))?,
        };
        let env = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
            .collect::<Vec<_>>();
        let named_ports: BTreeMap<String, i64> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.into(), p["containerPort"].as_i64()?)))
            .collect();
        let labels = string_map(&template["metadata"]["labels"]);
        for replica in 1..=replicas {
            let index = pods.len() % nodes.len();
            let node = &nodes[index];
            let host = next_host[index];
            next_host[index] += 1;
            let [a, b, c, _] = node.pod_net.octets();
            pods.push(Pod {
                name: format!("{name}-{replica}"),
                node: node.name.clone(),
                addr: Ipv4Addr::new(a, b, c, host),
                addr6: pod_addr6(node, host),
                app,
                env: env.clone(),
                labels: labels.clone(),
                named_ports: named_ports.clone(),
            });
        }
    }
    Ok(pods)
}

/// The API server's part: ClusterIPs, nodePorts, and (with the stand-in
/// provider) LoadBalancer ingress IPs for Services that lack them.
fn allocate(services: &mut [Value], provider: LbProvider) -> Result<()> {
    let mut cluster_ips = Pool::default();
    let mut cluster_ips_v6_taken = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for svc in services.iter() {
        if let Some(ip) = cluster_ip(svc).filter(|ip| *ip != "None") {
            ensure!(
                in_range(ip.parse().context("spec.clusterIP")?, SERVICE_RANGE),
                "Service {}: clusterIP {ip} is outside the service range 10.96.0.0/16",
                name_of(svc)
            );
            cluster_ips.taken.insert(ip.parse()?);
        }
        for ip in cluster_ips_v6(svc) {
            ensure!(
                in_range_v6(ip, SERVICE_RANGE_V6),
                "Service {}: clusterIP {ip} is outside the IPv6 service range fd00:96::/112",
                name_of(svc)
            );
            cluster_ips_v6_taken.insert(ip);
        }
        for port in ports_of(svc) {
            if let Some(np) = port["nodePort"].as_i64().filter(|np| *np != 0) {
                ensure!(
                    NODE_PORTS.contains(&np) && node_ports.insert(np),
                    "Service {}: nodePort {np} is outside 30000-32767 or already taken",
                    name_of(svc)
                );
            }
        }
    }
    let mut next_cluster_ip = FIRST_CLUSTER_IP;
    let mut next_cluster_ip_v6 = FIRST_CLUSTER_IP_V6;
    let mut next_lb_ip = FIRST_LB_IP;
    let mut next_lb_ip_v6 = FIRST_LB_IP_V6;
    // Services allocated earlier keep their addresses.
    let mut lb_ips: BTreeSet<Ipv4Addr> = services
        .iter()
        .flat_map(|svc| ingress_ips(svc).collect::<Vec<_>>())
        .collect();
    let mut lb_ips_v6: BTreeSet<Ipv6Addr> = services
        .iter()
        .flat_map(|svc| ingress_ips_v6(svc).collect::<Vec<_>>())
        .collect();
    for svc in services.iter_mut() {
        let kind = svc["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_owned();
        if kind == "ExternalName" {
            continue;
        }
        if cluster_ip(svc).is_none() {
            let ip = cluster_ips.take(&mut next_cluster_ip)?;
            svc["spec"]["clusterIP"] = json!(ip.to_string());
            svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }
        // The second family of a dual-stack Service (IPv4 first, as the
        // demo's Services have it).
        if dual_stack(svc)
            && cluster_ip(svc).is_some_and(|ip| ip != "None")
            && cluster_ips_v6(svc).next().is_none()
        {
            let ip = next_free_v6(&mut cluster_ips_v6_taken, &mut next_cluster_ip_v6)?;
            ensure!(
                in_range_v6(ip, SERVICE_RANGE_V6),
                "the IPv6 service range is full"
            );
            let mut ips: Vec<Value> = svc["spec"]["clusterIPs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ips.push(json!(ip.to_string()));
            svc["spec"]["clusterIPs"] = Value::Array(ips);
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            for port in svc["spec"]["ports"].as_array_mut().into_iter().flatten() {
                if port["nodePort"].as_i64().unwrap_or(0) == 0 {
                    let free = (FIRST_AUTO_NODE_PORT..=*NODE_PORTS.end())
                        .chain(*NODE_PORTS.start()..FIRST_AUTO_NODE_PORT)
                        .find(|np| !node_ports.contains(np))
                        .context("no free nodePort left")?;
                    node_ports.insert(free);
                    port["nodePort"] = json!(free);
                }
            }
        }
        // A provider leaves Services of another loadBalancerClass to that
        // class's implementation (xdplb's pools take `xdplb.io/l2`).
        let has_class = svc["spec"]["loadBalancerClass"].is_string();
        if provider == LbProvider::StandIn
            && kind == "LoadBalancer"
            && !has_class
            && ingress_ips(svc).next().is_none()
        {
            while !lb_ips.insert(next_lb_ip) {
                next_lb_ip = Ipv4Addr::from(u32::from(next_lb_ip) + 1);
            }
            svc["status"]["loadBalancer"]["ingress"] =
                json!([{ "ip": next_lb_ip.to_string(), "ipMode": "VIP" }]);
            next_lb_ip = Ipv4Addr::from(u32::from(next_lb_ip) + 1);
            if dual_stack(svc) && ingress_ips_v6(svc).next().is_none() {
                let ip = next_free_v6(&mut lb_ips_v6, &mut next_lb_ip_v6)?;
                if let Some(ingress) = svc["status"]["loadBalancer"]["ingress"].as_array_mut() {
                    ingress.push(json!({ "ip": ip.to_string(), "ipMode": "VIP" }));
                }
            }
        }
    }
    Ok(())
}

/// The first address from `next` on that is not in `taken`, now taken;
/// `next` moves past it.
fn next_free_v6(taken: &mut BTreeSet<Ipv6Addr>, next: &mut Ipv6Addr) -> Result<Ipv6Addr> {
    while !taken.insert(*next) {
        *next = Ipv6Addr::from(u128::from(*next) + 1);
    }
    let ip = *next;
    *next = Ipv6Addr::from(u128::from(ip) + 1);
    Ok(ip)
}

/// Whether the Service asks for both families (`ipFamilyPolicy`
/// PreferDualStack or RequireDualStack; the cluster has both).
fn dual_stack(svc: &Value) -> bool {
    matches!(
        svc["spec"]["ipFamilyPolicy"].as_str(),
        Some("PreferDualStack" | "RequireDualStack")
    )
}

fn cluster_ips_v6(svc: &Value) -> impl Iterator<Item = Ipv6Addr> + '_ {
    svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str()?.parse().ok())
}

#[derive(Default)]
struct Pool {
    taken: BTreeSet<Ipv4Addr>,
}

impl Pool {
    fn take(&mut self, next: &mut Ipv4Addr) -> Result<Ipv4Addr> {
        while self.taken.contains(next) {
            *next = Ipv4Addr::from(u32::from(*next) + 1);
        }
        ensure!(in_range(*next, SERVICE_RANGE), "the service range is full");
        self.taken.insert(*next);
        Ok(*next)
    }
}

/// The endpoint controller's part: for each Service with a selector, the
/// pods whose labels include it, with every targetPort resolved. Pods that
/// resolve a named targetPort differently go into separate slices, as the
/// controller does.
fn endpoint_slices(services: &[Value], pods: &[Pod]) -> Vec<Value> {
    let mut slices = Vec::new();
    for svc in services {
        let selector = string_map(&svc["spec"]["selector"]);
        if selector.is_empty() {
            continue;
        }
        let name = name_of(svc);
        let mut by_ports: BTreeMap<Vec<(String, i64, String)>, Vec<&Pod>> = BTreeMap::new();
        for pod in pods {
            if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                continue;
            }
            let ports: Option<Vec<_>> = ports_of(svc)
                .map(|port| {
                    let number = match &port["targetPort"] {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => pod.named_ports.get(s).copied(),
                        _ => port["port"].as_i64(),
                    }?;
                    let port_name = port["name"].as_str().unwrap_or_default().to_owned();
                    let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
                    Some((port_name, number, protocol))
                })
                .collect();
            // Like the controller, a pod without the named port serves none.
            if let Some(ports) = ports {
                by_ports.entry(ports).or_default().push(pod);
            }
        }
        for (index, (ports, members)) in by_ports.iter().enumerate() {
            slices.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{}", index + 1),
                    "namespace": namespace_of(svc),
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "xtask-demo",
                    },
                },
                "addressType": "IPv4",
                "endpoints": members.iter().map(|pod| json!({
                    "addresses": [pod.addr.to_string()],
                    "conditions": { "ready": true, "serving": true, "terminating": false },
                    "nodeName": pod.node,
                    "targetRef": { "kind": "Pod", "namespace": namespace_of(svc), "name": pod.name },
                })).collect::<Vec<_>>(),
                "ports": ports.iter().map(|(name, port, protocol)| json!({
                    "name": name, "port": port, "protocol": protocol,
                })).collect::<Vec<_>>(),
            }));
        }
        // The controller keeps one set of slices per family of the
        // Service's.
        if !serves_ipv6(svc) {
            continue;
        }
        for (index, (ports, members)) in by_ports.iter().enumerate() {
            slices.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-ipv6-{}", index + 1),
                    "namespace": namespace_of(svc),
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "xtask-demo",
                    },
                },
                "addressType": "IPv6",
                "endpoints": members.iter().map(|pod| json!({
                    "addresses": [pod.addr6.to_string()],
                    "conditions": { "ready": true, "serving": true, "terminating": false },
                    "nodeName": pod.node,
                    "targetRef": { "kind": "Pod", "namespace": namespace_of(svc), "name": pod.name },
                })).collect::<Vec<_>>(),
                "ports": ports.iter().map(|(name, port, protocol)| json!({
                    "name": name, "port": port, "protocol": protocol,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    slices
}

/// Whether the Service has IPv6 among its families.
fn serves_ipv6(svc: &Value) -> bool {
    svc["spec"]["ipFamilies"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "IPv6"))
}

fn node_object(node: &Node) -> Value {
    let cidr = format!("{}/24", node.pod_net);
    let cidr6 = format!("{}/64", node.pod_net6);
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node.name, "labels": { "kubernetes.io/hostname": node.name } },
        "spec": { "podCIDR": cidr, "podCIDRs": [cidr, cidr6] },
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": node.addr.to_string() },
                { "type": "InternalIP", "address": node.addr6.to_string() },
                { "type": "Hostname", "address": node.name },
            ],
            "conditions": [{ "type": "Ready", "status": "True" }],
        },
    })
}

/// "" is how a manifest asks for an allocated one, like leaving it out.
fn cluster_ip(svc: &Value) -> Option<&str> {
    svc["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())
}

fn ports_of(svc: &Value) -> impl Iterator<Item = &Value> {
    svc["spec"]["ports"].as_array().into_iter().flatten()
}

pub fn ingress_ips(svc: &Value) -> impl Iterator<Item = Ipv4Addr> + '_ {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
}

pub fn ingress_ips_v6(svc: &Value) -> impl Iterator<Item = Ipv6Addr> + '_ {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
}

/// The Service's ClusterIP of the family of `v6`, if it has one.
pub fn cluster_ip_of_family(svc: &Value, v6: bool) -> Option<IpAddr> {
    svc["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str()?.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6)
}

/// A pod's IPv6 address: host number `host` of its node's IPv6 pod CIDR.
fn pod_addr6(node: &Node, host: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(node.pod_net6) | u128::from(host))
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

fn in_range(ip: Ipv4Addr, (net, len): (Ipv4Addr, u32)) -> bool {
    u32::from(ip) >> (32 - len) == u32::from(net) >> (32 - len)
}

fn in_range_v6(ip: Ipv6Addr, (net, len): (Ipv6Addr, u32)) -> bool {
    u128::from(ip) >> (128 - len) == u128::from(net) >> (128 - len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> State {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        from_manifests(&dir, &crate::cluster::nodes(), LbProvider::StandIn).unwrap()
    }

    fn service<'a>(state: &'a State, name: &str) -> &'a Value {
        state.services.iter().find(|s| name_of(s) == name).unwrap()
    }

    #[test]
    fn seed_services_get_addresses_and_ports() {
        let state = seed();
        let lb = service(&state, "counter-lb");
        assert_eq!(lb["spec"]["clusterIP"], "10.96.0.11");
        assert_eq!(lb["spec"]["ports"][0]["nodePort"], FIRST_AUTO_NODE_PORT);
        assert_eq!(
            lb["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
        let np = service(&state, "counter-app");
        assert_eq!(np["spec"]["clusterIP"], "10.96.0.12");
        assert_eq!(np["spec"]["ports"][0]["nodePort"], 31000, "kept as written");
        assert_eq!(service(&state, "redis")["spec"]["clusterIP"], "10.96.0.13");
        assert_eq!(state.lb_ips(), [FIRST_LB_IP]);
    }

    #[test]
    fn pods_spread_over_nodes_and_slices_follow_selectors() {
        let state = seed();
        let placed: Vec<_> = state
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.node.as_str(), p.addr.to_string()))
            .collect();
        let v6: Vec<_> = state.pods.iter().map(|p| p.addr6.to_string()).collect();
        assert_eq!(v6, ["fd00:244:1::2", "fd00:244:2::2", "fd00:244:1::3"]);
        assert_eq!(
            placed,
            [
                ("counter-1", "node1", "10.244.1.2".to_string()),
                ("counter-2", "node2", "10.244.2.2".to_string()),
                ("redis-1", "node1", "10.244.1.3".to_string()),
            ]
        );
        let slice = |svc: &str| {
            state
                .slices
                .iter()
                .find(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == svc)
                .unwrap()
        };
        let addrs = |s: &Value| -> Vec<String> {
            s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["addresses"][0].as_str().unwrap().to_owned())
                .collect()
        };
        // tier: app and tier: db tell the counters from Redis, though all share app: counter.
        assert_eq!(addrs(slice("counter-lb")), ["10.244.1.2", "10.244.2.2"]);
        assert_eq!(slice("counter-lb")["ports"][0]["port"], 3000);
        assert_eq!(
            slice("counter-app")["ports"][0]["port"],
            3000,
            "no targetPort: port"
        );
        assert_eq!(addrs(slice("redis")), ["10.244.1.3"]);
        assert_eq!(slice("redis")["endpoints"][0]["nodeName"], "node1");
    }

    #[test]
    fn counter_and_redis_services_are_dual_stack_with_a_slice_set_per_family() {
        let state = seed();
        for (name, ips) in [
            ("counter-lb", ["10.96.0.11", "fd00:96::11"]),
            ("counter-app", ["10.96.0.12", "fd00:96::12"]),
            ("redis", ["10.96.0.13", "fd00:96::13"]),
        ] {
            let svc = service(&state, name);
            assert_eq!(svc["spec"]["clusterIP"], ips[0], "{name}: IPv4 first");
            assert_eq!(svc["spec"]["clusterIPs"], json!(ips), "{name}");
            assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
            assert_eq!(svc["spec"]["ipFamilyPolicy"], "PreferDualStack");
        }
        let lb = service(&state, "counter-lb");
        assert_eq!(
            lb["status"]["loadBalancer"]["ingress"],
            json!([
                { "ip": "203.0.113.10", "ipMode": "VIP" },
                { "ip": "fd00:203::10", "ipMode": "VIP" },
            ])
        );
        assert_eq!(state.lb_ips(), [FIRST_LB_IP], "IPv4 as before");
        assert_eq!(state.lb_ips_v6(), [FIRST_LB_IP_V6]);
        let family = |svc: &str, family: &str| -> Vec<Vec<String>> {
            state
                .slices
                .iter()
                .filter(|s| {
                    s["metadata"]["labels"]["kubernetes.io/service-name"] == svc
                        && s["addressType"] == family
                })
                .map(|s| {
                    s["endpoints"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["addresses"][0].as_str().unwrap().to_owned())
                        .collect()
                })
                .collect()
        };
        assert_eq!(family("counter-lb", "IPv4"), [["10.244.1.2", "10.244.2.2"]]);
        assert_eq!(
            family("counter-lb", "IPv6"),
            [["fd00:244:1::2", "fd00:244:2::2"]]
        );
        assert_eq!(family("redis", "IPv6"), [["fd00:244:1::3"]]);
        assert_eq!(
            state.nodes[0]["spec"]["podCIDRs"],
            json!(["10.244.1.0/24", "fd00:244:1::/64"])
        );
    }

    #[test]
    fn single_stack_services_stay_ipv4_only() {
        let mut state = seed();
        state
            .add_services([json!({
                "metadata": { "name": "v4" },
                "spec": { "type": "LoadBalancer", "selector": { "app": "counter", "tier": "app" },
                          "ports": [{ "port": 80 }] },
            })])
            .unwrap();
        let svc = service(&state, "v4");
        assert_eq!(svc["spec"]["clusterIPs"], json!(["10.96.0.14"]));
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"],
            json!([{ "ip": "203.0.113.11", "ipMode": "VIP" }])
        );
        assert!(state
            .slices
            .iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "v4")
            .all(|s| s["addressType"] == "IPv4"));
    }

    #[test]
    fn dual_stack_services_added_later_get_the_next_ipv6_addresses() {
        let mut state = seed();
        state
            .add_services([json!({
                "metadata": { "name": "dual" },
                "spec": { "type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
                          "ipFamilies": ["IPv4", "IPv6"],
                          "selector": { "app": "later" }, "ports": [{ "port": 80 }] },
            })])
            .unwrap();
        let svc = service(&state, "dual");
        assert_eq!(
            svc["spec"]["clusterIPs"],
            json!(["10.96.0.14", "fd00:96::14"])
        );
        assert_eq!(
            state.lb_ips_v6(),
            [FIRST_LB_IP_V6, "fd00:203::11".parse().unwrap()]
        );
        let pod = state.place_pod("later-1", "node2", App::Counter).unwrap();
        assert_eq!(pod.addr6, "fd00:244:2::3".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn named_target_ports_split_slices_by_resolved_number() {
        let svc = json!({
            "metadata": { "name": "web" },
            "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": "http" }] },
        });
        let pod = |name: &str, port: Option<i64>| Pod {
            name: name.into(),
            node: "node1".into(),
            addr: Ipv4Addr::new(10, 244, 1, 2),
            addr6: "fd00:244:1::2".parse().unwrap(),
            app: App::Counter,
            env: Vec::new(),
            labels: [("app".to_string(), "web".to_string())].into(),
            named_ports: port.map(|p| ("http".to_string(), p)).into_iter().collect(),
        };
        let slices = endpoint_slices(
            &[svc],
            &[pod("a", Some(8080)), pod("b", Some(9090)), pod("c", None)],
        );
        let ports: Vec<_> = slices
            .iter()
            .map(|s| s["ports"][0]["port"].clone())
            .collect();
        assert_eq!(ports, [json!(8080), json!(9090)]);
    }

    #[test]
    fn explicit_node_ports_are_not_handed_out_again() {
        let mut services = vec![
            json!({ "metadata": { "name": "a" }, "spec": { "type": "NodePort", "ports": [{ "port": 1 }] } }),
            json!({ "metadata": { "name": "b" }, "spec": { "type": "NodePort",
                "ports": [{ "port": 1, "nodePort": FIRST_AUTO_NODE_PORT }] } }),
        ];
        allocate(&mut services, LbProvider::StandIn).unwrap();
        assert_eq!(
            services[0]["spec"]["ports"][0]["nodePort"],
            FIRST_AUTO_NODE_PORT + 1
        );
    }

    #[test]
    fn services_of_another_load_balancer_class_get_no_ingress_ip() {
        let mut state = seed();
        state
            .add_services([json!({
                "metadata": { "name": "pooled" },
                "spec": { "type": "LoadBalancer", "loadBalancerClass": "xdplb.io/l2",
                          "selector": { "app": "later" }, "ports": [{ "port": 80 }] },
            })])
            .unwrap();
        let pooled = service(&state, "pooled");
        assert!(pooled["status"].is_null(), "{pooled}");
        assert!(pooled["spec"]["ports"][0]["nodePort"].is_i64());
    }

    #[test]
    fn without_a_provider_load_balancers_keep_an_empty_status() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let state =
            from_manifests(&dir, &crate::cluster::nodes(), LbProvider::AgentsPools).unwrap();
        let lb = service(&state, "counter-lb");
        assert!(lb["status"].is_null(), "{lb}");
        assert_eq!(lb["spec"]["ports"][0]["nodePort"], FIRST_AUTO_NODE_PORT);
        assert!(state.lb_ips().is_empty());
    }

    #[test]
    fn services_added_later_get_fresh_addresses_and_pods_follow() {
        let mut state = seed();
        state
            .add_services([json!({
                "metadata": { "name": "later" },
                "spec": { "type": "LoadBalancer", "selector": { "app": "later" }, "ports": [{ "port": 80 }] },
            })])
            .unwrap();
        let later = service(&state, "later");
        assert_eq!(later["spec"]["clusterIP"], "10.96.0.14");
        assert_eq!(
            later["spec"]["ports"][0]["nodePort"],
            FIRST_AUTO_NODE_PORT + 1
        );
        assert_eq!(
            later["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.11"
        );
        assert_eq!(
            service(&state, "counter-lb")["spec"]["clusterIP"],
            "10.96.0.11",
            "kept"
        );

        let mut pod = state.place_pod("later-1", "node2", App::Counter).unwrap();
        assert_eq!(pod.addr, Ipv4Addr::new(10, 244, 2, 3));
        pod.labels = [("app".to_string(), "later".to_string())].into();
        state.add_pod(pod).unwrap();
        let has_slice = |state: &State| {
            state
                .slices
                .iter()
                .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "later")
        };
        assert!(has_slice(&state));
        state.remove_pod("later-1").unwrap();
        assert!(!has_slice(&state));
        let next = state.place_pod("later-2", "node2", App::Counter).unwrap();
        assert_eq!(
            next.addr,
            Ipv4Addr::new(10, 244, 2, 4),
            "not handed out again"
        );
        state.remove_service("later").unwrap();
        assert!(state.services.iter().all(|s| name_of(s) != "later"));
    }
}
