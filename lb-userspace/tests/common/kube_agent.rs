//! The real `xdplb agent` on the Kubernetes API: a one-node [`Cluster`]
//! whose agent runs without `--manifests` and reads Services,
//! EndpointSlices and its Node from the API server double through a
//! kubeconfig. The double listens on 127.0.0.1 inside the node's network
//! namespace, where the agent runs (a socket stays in the namespace it was
//! created in), and its tasks run on a runtime of their own, so the tests
//! stay plain threads like the rest of the agent tier.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use super::agent::{Cluster, Node, TIMEOUT, XDPLB};
use super::apiserver::{ApiServer, Kind};

/// The one node's name: the agent's --node-name, the Node object's name,
/// and the nodeName of every endpoint (all pods are on it).
pub const NODE: &str = "node1";
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Loading and verifying the program takes a while on a busy 2-core box.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;
const POLL: Duration = Duration::from_millis(50);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `xdplb services`: each frontend with its sorted backends.
pub type Frontends = BTreeMap<String, Vec<String>>;

pub struct KubeCluster {
    // Drop order matters: the double goes down first, its runtime's
    // shutdown then closes its sockets (which would keep the node's
    // namespace alive), and only then the cluster kills what it spawned and
    // removes the namespaces.
    pub api: ApiServer,
    rt: Runtime,
    pub cluster: Cluster,
    /// The agent's kubeconfig and log.
    dir: TempDir,
}

impl KubeCluster {
    /// One node with its client and two pods, and the API server double
    /// listening inside the node, empty.
    pub fn build() -> Result<Self> {
        let cluster = Cluster::build(&[NODE])?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let node = &cluster.nodes[0];
        let api = cluster
            .tb
            .in_ns(&node.ns, || rt.block_on(ApiServer::start()))?;
        let dir = TempDir::new()?;
        // A copy of its own: the double names its file after the port, and
        // another test's double may get the same port in its namespace.
        let kubeconfig = fs::read_to_string(api.kubeconfig()).context("the double's kubeconfig")?;
        fs::write(dir.0.join("kubeconfig"), kubeconfig)?;
        Ok(Self {
            api,
            rt,
            cluster,
            dir,
        })
    }

    pub fn node(&self) -> &Node {
        &self.cluster.nodes[0]
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("agent.log")
    }

    /// Starts `xdplb agent --kubeconfig ...` inside the node, logging
    /// (appended across restarts) to a file the diagnostics show.
    pub fn start_agent(&self) -> Result<KubeAgent<'_>> {
        self.start_agent_with(&[])
    }

    /// [`KubeCluster::start_agent`] with more arguments.
    pub fn start_agent_with(&self, extra: &[&str]) -> Result<KubeAgent<'_>> {
        let node = self.node();
        let log = self.log_path();
        let kubeconfig = self.dir.0.join("kubeconfig");
        let healthz = format!("127.0.0.1:{HEALTHZ_PORT}");
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        // `exec` all the way down, so the child's pid is the agent's. The
        // environment is cleared of KUBECONFIG so only the flag counts.
        let child = self.cluster.tb.spawn(
            &node.ns,
            "sh",
            &[
                "-c",
                r#"log=$1; shift; exec env -u KUBECONFIG NO_COLOR=1 "$@" >>"$log" 2>&1"#,
                "sh",
                log.to_str().context("log path")?,
                XDPLB,
                "agent",
                "--kubeconfig",
                kubeconfig.to_str().context("kubeconfig path")?,
                "--node-name",
                &node.name,
                "--external-ifaces",
                "ext0",
                "--pin-path",
                node.pin_path.to_str().context("pin path")?,
                "--healthz-addr",
                &healthz,
                "--metrics-addr",
                &metrics,
                "--cgroup-path",
                node.cgroup.path(),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )?;
        Ok(KubeAgent {
            kc: self,
            child: Some(child),
        })
    }

    /// Brings the double back on its address after [`ApiServer::down`],
    /// listening inside the node again.
    pub fn api_up(&self) -> Result<()> {
        self.cluster
            .tb
            .in_ns(&self.node().ns, || self.rt.block_on(self.api.up()))
    }

    /// `xdplb services` of the node.
    pub fn frontends(&self) -> Result<Frontends> {
        self.cluster.frontends(self.node())
    }

    /// Polls `xdplb services` until `check` holds; how long that took.
    pub fn wait_frontends(
        &self,
        what: &str,
        bound: Duration,
        check: impl Fn(&Frontends) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let frontends = self.frontends()?;
            if check(&frontends) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > bound {
                bail!("{what}: not in `xdplb services` within {bound:?}; last: {frontends:#?}");
            }
            thread::sleep(POLL);
        }
    }

    /// The agent's log, the packet path counters and the double's request
    /// log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let node = self.node();
        let stats = node
            .pin_path
            .to_str()
            .context("pin path")
            .and_then(|pin| {
                self.cluster
                    .tb
                    .exec(&node.ns, XDPLB, &["stats", "--pin-path", pin])
            })
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_else(|e| format!("(no stats: {e:#})"));
        let requests: Vec<String> = self
            .api
            .requests()
            .iter()
            .map(|r| format!("{} {} {:?}", r.verb, r.path, r.query))
            .collect();
        format!(
            "\n--- agent log ---\n{}\n--- xdplb stats ---\n{stats}\n--- API requests ---\n{}",
            fs::read_to_string(self.log_path()).unwrap_or_default(),
            requests.join("\n")
        )
    }

    /// `r`'s value, or a panic naming `what` with the diagnostics.
    pub fn must<T>(&self, what: &str, r: Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}{}", self.diagnostics()))
    }

    /// Waits up to `bound` until `check` holds on the double.
    pub fn wait_api(&self, what: &str, bound: Duration, check: impl Fn(&ApiServer) -> bool) {
        let start = Instant::now();
        while !check(&self.api) {
            if start.elapsed() > bound {
                panic!("{what}: not within {bound:?}{}", self.diagnostics());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every kind has had at least `n` requests of `verb`.
    pub fn all_kinds(&self, verb: &str, n: usize) -> bool {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .into_iter()
            .all(|kind| self.api.count(kind, verb) >= n)
    }
}

/// A running `xdplb agent`; drop kills it if it still runs.
pub struct KubeAgent<'a> {
    kc: &'a KubeCluster,
    child: Option<Child>,
}

impl KubeAgent<'_> {
    /// Waits for /healthz to answer 200: the first full sync is done, and
    /// with the Kubernetes source that needs every initial list.
    pub fn wait_ready(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                bail!("the agent exited ({status}) before /healthz answered 200");
            }
            match self.healthz() {
                Ok((200, _)) => return Ok(start.elapsed()),
                Ok((code, body)) => last = format!("HTTP {code} {body}"),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(POLL);
        }
        bail!("/healthz not 200 within {READY_TIMEOUT:?}; last: {last}")
    }

    /// GET /healthz from inside the node: the status code and the JSON body.
    pub fn healthz(&self) -> Result<(u16, Value)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTHZ_PORT));
        let response =
            self.kc
                .cluster
                .tb
                .in_ns(&self.kc.node().ns, || -> io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
                    s.set_read_timeout(Some(TIMEOUT))?;
                    s.write_all(
                        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    )?;
                    let mut response = String::new();
                    s.read_to_string(&mut response)?;
                    Ok(response)
                })??;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let body = serde_json::from_str(body)
            .with_context(|| format!("/healthz body is not JSON: {response:?}"))?;
        Ok((code, body))
    }

    /// Sends SIGTERM and waits up to `bound` for the agent to exit.
    pub fn terminate(&mut self, bound: Duration) -> Result<()> {
        let child = self.child.as_mut().context("the agent is not running")?;
        // SAFETY: a plain syscall on our own child, which is not reaped yet.
        if unsafe { libc::kill(child.id() as i32, libc::SIGTERM) } != 0 {
            bail!("SIGTERM: {}", io::Error::last_os_error());
        }
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            if start.elapsed() > bound {
                bail!("the agent did not exit within {bound:?} of SIGTERM");
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    /// Whether the agent still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for KubeAgent<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A ClusterIP Service with one unnamed TCP port.
pub fn cluster_ip_service(name: &str, cluster_ip: Ipv4Addr, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "ports": [{"port": port, "targetPort": port, "protocol": "TCP"}],
        },
    })
}

/// A NodePort Service with one unnamed TCP port.
pub fn node_port_service(name: &str, cluster_ip: Ipv4Addr, port: u16, node_port: u16) -> Value {
    let mut service = cluster_ip_service(name, cluster_ip, port);
    service["spec"]["type"] = "NodePort".into();
    service["spec"]["externalTrafficPolicy"] = "Cluster".into();
    service["spec"]["ports"][0]["nodePort"] = node_port.into();
    service
}

/// The EndpointSlice `name` of Service `service`'s unnamed port: ready
/// endpoints on this node at `backends`, serving `port`.
pub fn endpoint_slice(name: &str, service: &str, port: u16, backends: &[Ipv4Addr]) -> Value {
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|addr| {
            json!({
                "addresses": [addr.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE,
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": port, "protocol": "TCP"}],
    })
}

/// This node's Node object.
pub fn node_object(node: &Node) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name},
        "status": {"addresses": [{"type": "InternalIP", "address": node.addr.to_string()}]},
    })
}

/// `object` with label `key` set to `value`.
pub fn labelled(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"][key] = value.into();
    object
}

/// `object` in namespace `namespace` (the double defaults to "default").
pub fn in_namespace(mut object: Value, namespace: &str) -> Value {
    object["metadata"]["namespace"] = namespace.into();
    object
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "xdplb-kube-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
