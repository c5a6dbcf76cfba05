//! The suite's view of the demo's cluster: the control plane's state and
//! the running namespaces together, requests from pods, nodes and the
//! external client, and the nodes' own account (`xdplb explain`, `stats`,
//! `services`) for a request that went wrong.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::probe::{self, Attempt, Conn, Proto, Who};
use crate::progress::{self, check_interrupt, wait_for};
use testbed::{
    apps,
    cluster::{self, Cluster, CLIENT_ADDR, CLIENT_ADDR6},
    control_plane::{self, App, Pod, State},
    lb_pool,
    netns::in_netns,
};

/// Marks a Service whose EndpointSlices list their ports in the reverse of
/// the Service's order, so only a match by port name finds the right one.
pub const REVERSE_SLICE_PORTS: &str = "e2e.xdplb.dev/reverse-slice-ports";
/// Pod creation to the agent attached to the pod's veth.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The address family a scenario runs in: every address the bed hands out
/// (pods', nodes', the client's, ClusterIPs, LoadBalancer IPs) is of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn is_v6(self) -> bool {
        self == Family::V6
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

pub struct Bed {
    pub cluster: Cluster,
    /// The family of the scenario that runs.
    pub family: Family,
    pub state: State,
    /// Where xdplb, counter and e2e-probe are.
    pub bin: PathBuf,
    pub redis: PathBuf,
    /// The label of each node's running agent, for its log and to kill it.
    pub agents: BTreeMap<String, String>,
    /// Whether the agents take `--cgroup-path`, the socket-level hooks
    /// for the nodes' own processes.
    pub host_hooks: bool,
}

/// Where requests come from: a pod, or the client outside the cluster.
#[derive(Clone, Debug)]
pub struct Client {
    pub name: String,
    pub ns: String,
    /// Its address of the family of the scenario that made it.
    pub addr: IpAddr,
    /// The node whose data plane sees its packets first (a pod's own
    /// node); `None` outside the cluster.
    pub node: Option<String>,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{} ({} on {node})", self.name, self.addr),
            None => write!(f, "{} ({})", self.name, self.addr),
        }
    }
}

impl Bed {
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.state
            .pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    /// The node's address on the LAN, of the bed's family.
    pub fn node_addr(&self, node: &str) -> Result<IpAddr> {
        self.cluster
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| self.pick(n.addr.into(), n.addr6.into()))
            .with_context(|| format!("no node {node}"))
    }

    fn pick(&self, v4: IpAddr, v6: IpAddr) -> IpAddr {
        match self.family {
            Family::V4 => v4,
            Family::V6 => v6,
        }
    }

    pub fn node_names(&self) -> Vec<String> {
        self.cluster.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn pod_client(&self, name: &str) -> Result<Client> {
        let pod = self.pod(name)?;
        Ok(Client {
            name: pod.name.clone(),
            ns: self.cluster.run.ns(&pod.name),
            addr: self.pick(pod.addr.into(), pod.addr6.into()),
            node: Some(pod.node.clone()),
        })
    }

    pub fn outside(&self) -> Client {
        Client {
            name: "client".into(),
            ns: self.cluster.run.ns("client"),
            addr: self.pick(CLIENT_ADDR.into(), CLIENT_ADDR6.into()),
            node: None,
        }
    }

    pub fn service(&self, name: &str) -> Result<&Value> {
        self.state
            .services
            .iter()
            .find(|s| s["metadata"]["name"] == name)
            .with_context(|| format!("no Service {name}"))
    }

    fn port_field(&self, name: &str, port: usize, field: &str) -> Result<u16> {
        let svc = self.service(name)?;
        svc["spec"]["ports"][port][field]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("Service {name} has no ports[{port}].{field}"))
    }

    /// ClusterIP of the bed's family and port `port` (an index into
    /// spec.ports).
    pub fn vip(&self, name: &str, port: usize) -> Result<SocketAddr> {
        let ip = control_plane::cluster_ip_of_family(self.service(name)?, self.family.is_v6())
            .with_context(|| format!("Service {name} has no {} ClusterIP", self.family))?;
        Ok(SocketAddr::new(ip, self.port_field(name, port, "port")?))
    }

    pub fn node_port(&self, name: &str, port: usize, node: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::new(
            self.node_addr(node)?,
            self.port_field(name, port, "nodePort")?,
        ))
    }

    /// The Service's first LoadBalancer ingress IP of the bed's family.
    pub fn lb_ip(&self, name: &str, port: usize) -> Result<SocketAddr> {
        let svc = self.service(name)?;
        let ip = match self.family {
            Family::V4 => control_plane::ingress_ips(svc).next().map(IpAddr::V4),
            Family::V6 => control_plane::ingress_ips_v6(svc).next().map(IpAddr::V6),
        }
        .with_context(|| {
            format!(
                "Service {name} has no {} LoadBalancer ingress IP",
                self.family
            )
        })?;
        Ok(SocketAddr::new(ip, self.port_field(name, port, "port")?))
    }

    /// Writes the control plane's objects into every node's manifests
    /// folder; the agents pick them up within about a second.
    pub fn publish(&mut self) -> Result<()> {
        let reversed: Vec<String> = self
            .state
            .services
            .iter()
            .filter(|s| s["metadata"]["annotations"][REVERSE_SLICE_PORTS] == "true")
            .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        for slice in &mut self.state.slices {
            let owner = slice["metadata"]["labels"]["kubernetes.io/service-name"].clone();
            if reversed.iter().any(|name| owner == name.as_str()) {
                if let Some(ports) = slice["ports"].as_array_mut() {
                    ports.reverse();
                }
            }
        }
        for node in self.node_names() {
            self.state.write(&self.cluster.run.manifests(&node))?;
        }
        Ok(())
    }

    /// Starts a probe pod on `node` (namespace, veth, routes, program),
    /// waits until it serves and the node's agent has attached to its veth,
    /// as a pod becomes ready, and then adds it to the endpoints of the
    /// Services that select it. Returns when the manifests are written.
    pub fn add_probe_pod(
        &mut self,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        ports: &[(&str, i64)],
    ) -> Result<()> {
        let mut pod = self.state.place_pod(name, node, App::Probe)?;
        pod.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pod.named_ports = ports.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self.add_pod(pod)
    }

    /// [`Bed::add_probe_pod`] for a pod of any app, placed by
    /// [`State::place_pod`].
    pub fn add_pod(&mut self, pod: Pod) -> Result<()> {
        let (name, node) = (pod.name.clone(), pod.node.clone());
        self.cluster.add_pod(&pod, &self.state.hosts_file(&pod))?;
        apps::start_pod(&mut self.cluster, &pod, &self.bin, &self.redis)?;
        progress::wait_pod(&mut self.cluster, &pod)?;
        let pin = self.cluster.run.pin_path(&node);
        let veth = cluster::pod_iface(&name);
        wait_for(
            &format!("the agent on {node} attaching to {veth}"),
            ATTACH_TIMEOUT,
            || self.cluster.check_processes(),
            || apps::link_pinned(&pin, &veth),
        )?;
        self.state.add_pod(pod)?;
        self.publish()
    }

    /// Takes the pod out of every EndpointSlice, as deleting it does first;
    /// its namespace stays until [`Cluster::remove_pod`].
    pub fn remove_endpoints_of(&mut self, name: &str) -> Result<()> {
        self.state.remove_pod(name)?;
        self.publish()
    }

    /// The node whose data plane handles `client`'s packets to `target`
    /// first: a pod's node, the node whose address is the target, or (a
    /// LoadBalancer IP) the node the router sends LoadBalancer IPs to.
    pub fn entry_node(&self, client: &Client, target: SocketAddr) -> String {
        if let Some(node) = &client.node {
            return node.clone();
        }
        self.cluster
            .nodes
            .iter()
            .find(|n| target.ip() == n.addr || target.ip() == n.addr6)
            .unwrap_or(&self.cluster.nodes[0])
            .name
            .clone()
    }

    /// Runs `f` in `client`'s namespace and, for a pod, its cgroup.
    pub fn run_in<T: Send>(&self, client: &Client, f: impl FnOnce() -> T + Send) -> Result<T> {
        check_interrupt()?;
        if client.node.is_none() {
            return in_netns(&client.ns, f);
        }
        self.cluster
            .as_pod(&client.name, || in_netns(&client.ns, f))?
    }

    /// Turns a failed attempt into an error that says what the entry
    /// node's connection table and Services make of the request.
    fn explained<T>(
        &self,
        client: &Client,
        target: SocketAddr,
        proto: Proto,
        attempt: Attempt<T>,
    ) -> Result<T> {
        attempt.result.map_err(|err| {
            let node = self.entry_node(client, target);
            let src = SocketAddr::new(client.addr, attempt.source.port());
            let explain = self.explain(&node, src, target, proto);
            err.context(format!(
                "{client} -> {target}/{proto} from port {} after {:.0} ms\n      \
                 xdplb explain on {node}: {}",
                src.port(),
                attempt.took.as_secs_f64() * 1e3,
                explain.trim()
            ))
        })
    }

    pub fn ask(&self, client: &Client, target: SocketAddr, proto: Proto) -> Result<Who> {
        let attempt = self.run_in(client, || probe::who(target, proto))??;
        self.explained(client, target, proto, attempt)
    }

    /// `n` requests, each on a new connection (or socket); stops at the
    /// first that fails.
    pub fn ask_n(
        &self,
        client: &Client,
        target: SocketAddr,
        proto: Proto,
        n: usize,
    ) -> Result<Vec<Who>> {
        let attempts = self.run_in(client, || {
            let mut attempts = Vec::new();
            for _ in 0..n {
                let attempt = probe::who(target, proto)?;
                let failed = attempt.result.is_err();
                attempts.push(attempt);
                if failed {
                    break;
                }
            }
            anyhow::Ok(attempts)
        })??;
        attempts
            .into_iter()
            .map(|a| self.explained(client, target, proto, a))
            .collect()
    }

    /// The time a refused request took to be refused; an error if it was
    /// answered, timed out, or failed otherwise.
    pub fn refused(&self, client: &Client, target: SocketAddr, proto: Proto) -> Result<Duration> {
        let attempt = self.run_in(client, || probe::refusal(target, proto))??;
        let took = attempt.took;
        self.explained(client, target, proto, attempt)?;
        Ok(took)
    }

    pub fn bulk(&self, client: &Client, target: SocketAddr, size: usize) -> Result<Duration> {
        let attempt = self.run_in(client, || probe::bulk(target, size))??;
        self.explained(client, target, Proto::Tcp, attempt)
    }

    /// Uploads `size` bytes; the pod that received them.
    pub fn upload(&self, client: &Client, target: SocketAddr, size: usize) -> Result<String> {
        let attempt = self.run_in(client, || probe::upload(target, size))??;
        self.explained(client, target, Proto::Tcp, attempt)
    }

    pub fn open(&self, client: &Client, target: SocketAddr) -> Result<Conn> {
        self.run_in(client, || probe::Conn::open(target))?
            .with_context(|| format!("{client}: a long-lived connection to {target}"))
    }

    /// `xdplb explain` on `node`, or why it could not say.
    pub fn explain(&self, node: &str, src: SocketAddr, dst: SocketAddr, proto: Proto) -> String {
        let pin = self.cluster.run.pin_path(node);
        let Ok(pin) = apps::path_str(&pin) else {
            return "(pin path not UTF-8)".into();
        };
        apps::xdplb(
            &self.bin,
            &[
                "explain",
                &src.to_string(),
                &dst.to_string(),
                &proto.to_string(),
                "--pin-path",
                pin,
            ],
        )
        .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// `xdplb stats` on `node`: packets by path and reason.
    pub fn stats(&self, node: &str) -> Result<BTreeMap<String, u64>> {
        let pin = self.cluster.run.pin_path(node);
        let text = apps::xdplb(&self.bin, &["stats", "--pin-path", apps::path_str(&pin)?])?;
        Ok(text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
            })
            .collect())
    }

    /// `xdplb services -o json` on `node`: a row per frontend.
    pub fn frontends(&self, node: &str) -> Result<Vec<Value>> {
        lb_pool::frontends(&self.bin, &self.cluster.run, node)
    }

    /// The packet counter `xdplb services` shows for the Service behind
    /// `frontend` (`ip:port/PROTO`) on `node`.
    pub fn frontend_packets(&self, node: &str, frontend: &str) -> Result<u64> {
        lb_pool::frontend_packets(&self.bin, &self.cluster.run, node, frontend)
    }

    /// What the failure report shows of each node: its non-zero packet
    /// counters.
    pub fn evidence(&self) -> String {
        let mut out = String::new();
        for node in self.node_names() {
            match self.stats(&node) {
                Ok(stats) => {
                    let rows: Vec<String> = stats
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(reason, n)| format!("{reason} {n}"))
                        .collect();
                    out += &format!("      xdplb stats on {node}: {}\n", rows.join(", "));
                }
                Err(err) => out += &format!("      xdplb stats on {node}: {err:#}\n"),
            }
        }
        out + &format!(
            "      logs of the agents and pods: {}",
            self.cluster.run.logs().display()
        )
    }
}

/// Polls `f` every 50 ms until it succeeds or `bound` passes. Returns when
/// the try that succeeded began (a try may wait out a timeout, which says
/// nothing about when the change happened) and the distinct errors of the
/// tries before it. The error says what the last try saw.
pub fn within(
    what: &str,
    bound: Duration,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Duration, Vec<String>)> {
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        check_interrupt()?;
        let began = started.elapsed();
        match f() {
            Ok(()) => return Ok((began, seen)),
            Err(err) if started.elapsed() >= bound => {
                return Err(
                    err.context(format!("{what}: not so after {:.1} s", bound.as_secs_f64()))
                )
            }
            Err(err) => {
                let err = format!("{err:#}");
                if !seen.contains(&err) {
                    seen.push(err);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Fails unless the pods that answered are exactly `want`.
pub fn answered_by(what: &str, answers: &[Who], want: &[&str]) -> Result<()> {
    let mut got: Vec<&str> = answers.iter().map(|w| w.pod.as_str()).collect();
    got.sort_unstable();
    got.dedup();
    let mut want = want.to_vec();
    want.sort_unstable();
    if got != want {
        bail!(
            "{what}: {} answers came from {got:?}, expected exactly {want:?}",
            answers.len()
        );
    }
    Ok(())
}
