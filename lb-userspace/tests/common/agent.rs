//! Clusters run by the real `xdplb agent`: per node a client namespace, the
//! node namespace where the agent runs from a manifests folder, and two pod
//! namespaces whose servers answer every line with `<pod name>:<line>`, so a
//! reply tells which backend served it. The agent pins into a bpffs mounted
//! for this cluster only, so a killed agent's data plane survives and a
//! restarted one finds it, without touching the host's /sys/fs/bpf.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use serde::Deserialize;
use testbed::netns::{wait_until, Ns, Testbed};

use super::servers::ServerThreads;

pub const XDPLB: &str = env!("CARGO_BIN_EXE_xdplb");

pub const REDIS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const REDIS_PORT: u16 = 6379;
pub const COUNTER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
pub const COUNTER_PORT: u16 = 3000;
pub const COUNTER_NODE_PORT: u16 = 31000;
/// A port every pod also serves, for Services the tests add themselves.
pub const SPARE_PORT: u16 = 7000;
/// Pods get the same addresses on every node: each node's network is its own.
pub const POD_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2)];
/// What every endpoint in the written EndpointSlices claims as its node.
const ENDPOINT_NODE: &str = "node1";

/// Bound on every connect, read and write of a test connection.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Loading and verifying the program takes a while on a busy 2-core box.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEALTHZ_PORT: u16 = 10256;
pub const METRICS_PORT: u16 = 10249;
const SERVICE_RANGE: &str = "10.96.0.0/16";
const POD_RANGE: &str = "10.244.0.0/16";
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
const BPFFS_PREFIX: &str = "xdplb-test-";
/// How often idle servers look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

pub struct Pod {
    pub name: String,
    pub addr: Ipv4Addr,
}

pub struct Node {
    /// The agent's --node-name.
    pub name: String,
    pub ns: Ns,
    pub client: Ns,
    /// On ext0, facing the client: where NodePorts answer.
    pub addr: Ipv4Addr,
    /// The client's, on the other end of ext0.
    pub client_addr: Ipv4Addr,
    pub pods: [Pod; 2],
    pub pin_path: PathBuf,
    /// Where the agent attaches its socket programs.
    pub cgroup: super::cgroup::Cgroup,
}

/// One row of `xdplb flows -o json`.
#[derive(Debug, Deserialize)]
pub struct Flow {
    pub direction: String,
    pub src: String,
    pub dst: String,
    pub nat: String,
    pub state: String,
}

pub struct Cluster {
    // Declared first so it drops first: a server socket would keep its
    // namespace alive after the testbed deletes it.
    servers: Servers,
    // Before the bpffs: its drop kills the agents, which must not outlive
    // the pins they would recreate.
    pub tb: Testbed,
    pub nodes: Vec<Node>,
    _bpffs: Bpffs,
    /// Holds `manifests/` and the agents' logs.
    dir: TempDir,
}

impl Cluster {
    /// One node per name, each with its own client, pods and pin path.
    pub fn build(node_names: &[&str]) -> Result<Self> {
        super::privileged("agent end-to-end");
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = TempDir::new(&id)?;
        fs::create_dir(dir.0.join("manifests"))?;
        let bpffs = Bpffs::mount(&id)?;
        let tb = Testbed::new()?;
        let mut servers = Servers::default();
        let nodes = node_names
            .iter()
            .enumerate()
            .map(|(i, name)| build_node(&tb, &mut servers, name, i, &bpffs.0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            servers,
            tb,
            nodes,
            _bpffs: bpffs,
            dir,
        })
    }

    fn manifests(&self) -> PathBuf {
        self.dir.0.join("manifests")
    }

    /// Replaces `file` by rename, as editors and ConfigMap volumes do, so
    /// the agent never reads it half-written.
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.manifests().join(file))
            .with_context(|| format!("writing manifest {file}"))
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        fs::remove_file(self.manifests().join(file))
            .with_context(|| format!("removing manifest {file}"))
    }

    /// The seed's counter app and redis, with the cluster IPs an API server
    /// would have assigned and the EndpointSlices it would have written:
    /// redis on the first pod, the counter app on both.
    pub fn write_seed_manifests(&self) -> Result<()> {
        self.write_manifest(
            "counter-app.yml",
            &fs::read_to_string(Path::new(EXAMPLES).join("counter-app.yml"))?,
        )?;
        self.write_manifest("counter-redis-svc.yml", &seed_redis(REDIS_VIP)?)?;
        self.write_manifest("counter-nodeport.yml", &seed_counter(COUNTER_VIP)?)
    }

    /// Starts `xdplb agent` inside `node`, logging (appended across
    /// restarts) to a file the diagnostics show.
    pub fn start_agent<'a>(&'a self, node: &'a Node) -> Result<Agent<'a>> {
        self.start_agent_with(node, &[], &[])
    }

    /// `start_agent`, the agent run by `wrapper` (a command that execs the
    /// rest of its arguments, as setpriv does) and given `extra` arguments.
    pub fn start_agent_with<'a>(
        &'a self,
        node: &'a Node,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<Agent<'a>> {
        let log = self.log_path(node);
        let manifests = self.manifests();
        let pin = node.pin_path.to_str().context("pin path")?;
        let healthz = format!("127.0.0.1:{HEALTHZ_PORT}");
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        // `exec` all the way down, so the child's pid is the agent's and
        // signals reach it, not a shell. NO_COLOR keeps escape codes out of
        // the log the tests search.
        let mut argv = vec![
            "-c",
            r#"log=$1; shift; exec env NO_COLOR=1 "$@" >>"$log" 2>&1"#,
            "sh",
            log.to_str().context("log path")?,
        ];
        argv.extend(wrapper);
        argv.extend([
            XDPLB,
            "agent",
            "--manifests",
            manifests.to_str().context("manifests path")?,
            "--node-name",
            &node.name,
            "--external-ifaces",
            "ext0",
            "--pin-path",
            pin,
            "--healthz-addr",
            &healthz,
            "--metrics-addr",
            &metrics,
        ]);
        if !extra.contains(&"--cgroup-path") {
            argv.extend(["--cgroup-path", node.cgroup.path()]);
        }
        argv.extend(extra);
        let child = self.tb.spawn(&node.ns, "sh", &argv)?;
        Ok(Agent {
            tb: &self.tb,
            node,
            child,
        })
    }

    fn log_path(&self, node: &Node) -> PathBuf {
        self.dir.0.join(format!("agent-{}.log", node.name))
    }

    /// Everything every agent of `node` logged so far.
    pub fn log(&self, node: &Node) -> String {
        fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Waits up to `timeout` for a warning of `node`'s agents holding every
    /// one of `needles`, and for the end of the sync that logged it, so
    /// what the caller checks next already reflects that sync.
    pub fn wait_for_warning(&self, node: &Node, needles: &[&str], timeout: Duration) -> bool {
        wait_until(timeout, || {
            let log = self.log(node);
            let mut lines = log.lines();
            lines.any(|line| line.contains(" WARN ") && needles.iter().all(|n| line.contains(n)))
                && lines.any(|line| line.contains(" INFO ") && line.contains(" synced "))
        })
    }

    /// The agent's log and the packet path counters, for failure messages.
    pub fn diagnostics(&self, node: &Node) -> String {
        let stats = self
            .xdplb(node, &["stats"])
            .unwrap_or_else(|e| format!("(no stats: {e:#})"));
        format!(
            "\n--- agent log of {} ---\n{}\n--- xdplb stats ---\n{stats}",
            node.name,
            self.log(node)
        )
    }

    /// `r`'s value, or a panic naming `what` with `node`'s diagnostics.
    pub fn must<T>(&self, node: &Node, what: &str, r: Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}{}", self.diagnostics(node)))
    }

    /// Runs `xdplb <args> --pin-path <node's>` inside `node`; its stdout.
    fn xdplb(&self, node: &Node, args: &[&str]) -> Result<String> {
        let pin = node.pin_path.to_str().context("pin path")?;
        let args: Vec<&str> = args.iter().copied().chain(["--pin-path", pin]).collect();
        let out = self.tb.exec(&node.ns, XDPLB, &args)?;
        ensure!(
            out.status.success(),
            "`xdplb {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `xdplb services`: each frontend with its backends.
    pub fn frontends(&self, node: &Node) -> Result<BTreeMap<String, Vec<String>>> {
        #[derive(Deserialize)]
        struct Row {
            frontend: String,
            backends: Vec<String>,
        }
        let rows: Vec<Row> = serde_json::from_str(&self.xdplb(node, &["services", "-o", "json"])?)?;
        Ok(rows.into_iter().map(|r| (r.frontend, r.backends)).collect())
    }

    pub fn flows(&self, node: &Node) -> Result<Vec<Flow>> {
        Ok(serde_json::from_str(
            &self.xdplb(node, &["flows", "-o", "json"])?,
        )?)
    }

    /// Whether `ip link` shows an XDP program on `ifname` of `node`.
    /// The programs on `ifname`: "xdp" for an XDP program, then the names
    /// of the tcx ingress programs.
    pub fn programs_attached(&self, node: &Node, ifname: &str) -> Result<Vec<String>> {
        let out = self
            .tb
            .exec(&node.ns, "ip", &["link", "show", "dev", ifname])?;
        ensure!(out.status.success(), "ip link show {ifname}: {out:?}");
        let mut names = Vec::new();
        if String::from_utf8_lossy(&out.stdout).contains("xdp") {
            names.push("xdp".to_string());
        }
        let (_, tc) = self.tb.in_ns(&node.ns, || {
            SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        })??;
        names.extend(
            tc.iter()
                .filter_map(|p| p.name_as_str().map(str::to_string)),
        );
        Ok(names)
    }

    /// Makes `node`'s ext0 take XDP frames, as a NIC does: its peer, the
    /// client's eth0, runs an XDP program while the returned value lives.
    pub fn client_runs_xdp(&self, node: &Node) -> Result<testbed::xdp_pass::XdpPass> {
        Ok(self
            .tb
            .in_ns(&node.client, || testbed::xdp_pass::attach("eth0"))??)
    }

    /// A TCP connection from `node`'s client to `to`.
    pub fn connect(&self, node: &Node, to: SocketAddrV4, timeout: Duration) -> Result<Conn> {
        let stream = self
            .tb
            .in_ns(&node.client, || {
                TcpStream::connect_timeout(&SocketAddr::V4(to), timeout)
            })?
            .with_context(|| format!("connecting to {to}"))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            to,
            stream: BufReader::new(stream),
        })
    }

    /// One line over a new connection; the reply.
    pub fn request(&self, node: &Node, to: SocketAddrV4, line: &str) -> Result<String> {
        self.connect(node, to, TIMEOUT)?.exchange(line)
    }

    /// Waits up to `bound` until a new connection to `to` is answered by
    /// `pod`; how long that took. Attempts are short so the measured time
    /// says when serving started, not how long a lost SYN waited.
    pub fn wait_served_by(
        &self,
        node: &Node,
        to: SocketAddrV4,
        pod: &Pod,
        bound: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        let want = reply(pod, "hello");
        let mut last = String::from("no attempt");
        while start.elapsed() < bound {
            match self
                .connect(node, to, Duration::from_millis(200))
                .and_then(|mut c| c.exchange("hello"))
            {
                Ok(got) if got == want => return Ok(start.elapsed()),
                Ok(got) => last = format!("answered {got:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(POLL);
        }
        bail!(
            "{to} not served by {} within {bound:?}; last attempt: {last}",
            pod.name
        )
    }

    /// Waits up to `bound` until new connections to `to` fail.
    pub fn wait_unserved(
        &self,
        node: &Node,
        to: SocketAddrV4,
        bound: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < bound {
            let served = self
                .connect(node, to, Duration::from_millis(200))
                .and_then(|mut c| c.exchange("hello"));
            if served.is_err() {
                return Ok(start.elapsed());
            }
            thread::sleep(POLL);
        }
        bail!("{to} still served after {bound:?}")
    }
}

/// What `pod` answers to `line`.
pub fn reply(pod: &Pod, line: &str) -> String {
    format!("{}:{line}", pod.name)
}

/// The pod of `node` whose answer to `line` `answer` is.
pub fn served_by<'a>(node: &'a Node, answer: &str, line: &str) -> Option<&'a Pod> {
    node.pods.iter().find(|pod| answer == reply(pod, line))
}

/// New connections to redis (ClusterIP) and the counter app (ClusterIP and
/// NodePort) are answered by their pods.
pub fn assert_seed_serves(cluster: &Cluster, node: &Node, when: &str) {
    let redis = SocketAddrV4::new(REDIS_VIP, REDIS_PORT);
    let answer = cluster.must(node, when, cluster.request(node, redis, "PING"));
    assert_eq!(answer, reply(&node.pods[0], "PING"), "redis, {when}");
    for to in [
        SocketAddrV4::new(COUNTER_VIP, COUNTER_PORT),
        SocketAddrV4::new(node.addr, COUNTER_NODE_PORT),
    ] {
        let answer = cluster.must(node, when, cluster.request(node, to, "GET /"));
        assert!(
            served_by(node, &answer, "GET /").is_some(),
            "counter-app at {to}, {when}: answered {answer:?}"
        );
    }
}

/// A line-at-a-time connection to a pod server through the data plane.
pub struct Conn {
    to: SocketAddrV4,
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.get_ref().local_addr()?)
    }

    /// Sends `line`, returns the answer without its newline.
    pub fn exchange(&mut self, line: &str) -> Result<String> {
        let to = self.to;
        self.stream
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("sending to {to}"))?;
        let mut answer = String::new();
        self.stream
            .read_line(&mut answer)
            .with_context(|| format!("waiting for {to} to answer {line:?}"))?;
        ensure!(
            answer.ends_with('\n'),
            "{to} closed the connection instead of answering {line:?} (got {answer:?})"
        );
        answer.pop();
        Ok(answer)
    }
}

impl Cluster {
    /// Starts `xdplb monitor <args> --pin-path <node's>` inside `node`,
    /// where interface names resolve as the agent's.
    pub fn start_monitor(&self, node: &Node, args: &[&str]) -> Result<Monitor> {
        let pin = node.pin_path.to_str().context("pin path")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", node.ns.name(), XDPLB, "monitor"])
            .args(args)
            .args(["--pin-path", pin])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning xdplb monitor")?;
        let stdout = child.stdout.take().context("monitor stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Monitor { child, lines })
    }
}

/// A running `xdplb monitor` and the lines it prints; drop kills it if it
/// still runs.
pub struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    /// The next line printed, waiting at most `bound`.
    pub fn next_line(&self, bound: Duration) -> Result<String> {
        self.lines
            .recv_timeout(bound)
            .with_context(|| format!("no line from xdplb monitor within {bound:?}"))
    }

    /// Ctrl-C, then the exit status (bounded wait).
    pub fn interrupt(mut self) -> Result<ExitStatus> {
        stop(&mut self.child, libc::SIGINT, "xdplb monitor")
    }

    /// The exit status, waiting at most `bound` for it.
    pub fn wait_exit(&mut self, bound: Duration) -> Result<ExitStatus> {
        wait_exit(&mut self.child, bound, "xdplb monitor")
    }
}

/// `child`'s exit status, waiting at most `bound` for it; `what` names it.
fn wait_exit(child: &mut Child, bound: Duration, what: &str) -> Result<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(POLL);
    }
    bail!("{what} still runs after {bound:?}")
}

/// Signal `sig` to `child`, then its exit status (bounded wait).
fn stop(child: &mut Child, sig: libc::c_int, what: &str) -> Result<ExitStatus> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: plain syscall; the child is unreaped, so the pid is still ours.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    wait_exit(child, EXIT_TIMEOUT, what)
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `xdplb agent`; drop kills it if it still runs.
pub struct Agent<'a> {
    tb: &'a Testbed,
    node: &'a Node,
    child: Child,
}

impl Agent<'_> {
    /// Waits for /healthz to answer 200, i.e. for the first full sync with
    /// the program attached to every interface it wants.
    pub fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}) before /healthz answered 200");
            }
            match self.healthz() {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("HTTP {code}"),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("/healthz not 200 within {READY_TIMEOUT:?}; last: {last}")
    }

    /// The status code of GET /healthz, from inside the node.
    pub fn healthz(&self) -> Result<u16> {
        Ok(self.http_get(HEALTHZ_PORT, "/healthz")?.0)
    }

    /// Status code and body of GET `path` on the node's loopback `port`,
    /// from inside the node.
    pub fn http_get(&self, port: u16, path: &str) -> Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let response = self.tb.in_ns(&self.node.ns, || -> io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
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
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((code, body.to_string()))
    }

    /// The body of GET /metrics, from inside the node.
    pub fn metrics(&self) -> Result<String> {
        Ok(self.http_get(METRICS_PORT, "/metrics")?.1)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent still runs.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// The exit status, waiting at most `bound` for it.
    pub fn wait_exit(&mut self, bound: Duration) -> Result<ExitStatus> {
        wait_exit(&mut self.child, bound, "the agent")
    }

    pub fn kill_9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then the exit status (bounded wait).
    pub fn terminate(mut self) -> Result<ExitStatus> {
        stop(&mut self.child, libc::SIGTERM, "the agent")
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal ClusterIP Service on port `port` (targetPort the same).
pub fn cluster_ip_service(name: &str, cluster_ip: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  clusterIP: {cluster_ip}
  ports:
    - port: {port}
      protocol: TCP
"
    )
}

/// The EndpointSlice of Service `service`'s unnamed port: ready endpoints
/// at `backends`, serving `port`.
pub fn endpoint_slice(service: &str, port: u16, backends: &[Ipv4Addr]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|addr| {
            format!(
                "  - addresses: [\"{addr}\"]
    conditions:
      ready: true
    nodeName: {ENDPOINT_NODE}
"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-1
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
  - port: {port}
    protocol: TCP
endpoints:
{endpoints}"
    )
}

/// deploy/examples/counter-redis-svc.yml with `cluster_ip`, plus its slice.
pub fn seed_redis(cluster_ip: impl std::fmt::Display) -> Result<String> {
    Ok(format!(
        "{}---\n{}",
        seed_with_cluster_ip("counter-redis-svc.yml", &cluster_ip.to_string())?,
        endpoint_slice("redis", REDIS_PORT, &POD_ADDRS[..1])
    ))
}

/// deploy/examples/counter-nodeport.yml with `cluster_ip`, plus its slice.
pub fn seed_counter(cluster_ip: impl std::fmt::Display) -> Result<String> {
    Ok(format!(
        "{}---\n{}",
        seed_with_cluster_ip("counter-nodeport.yml", &cluster_ip.to_string())?,
        endpoint_slice("counter-app", COUNTER_PORT, &POD_ADDRS)
    ))
}

/// The seed file's documents with `spec.clusterIP` set on its Service: the
/// seed leaves it to the API server, which the manifests source has not.
fn seed_with_cluster_ip(file: &str, cluster_ip: &str) -> Result<String> {
    let path = Path::new(EXAMPLES).join(file);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut value = serde_yaml::Value::deserialize(document)?;
        if value["kind"] == "Service" {
            value["spec"]["clusterIP"] = cluster_ip.into();
        }
        out += "---\n";
        out += &serde_yaml::to_string(&value)?;
    }
    Ok(out)
}

/// Node `name` (the `index`th) with its client and pods, servers started.
fn build_node(
    tb: &Testbed,
    servers: &mut Servers,
    name: &str,
    index: usize,
    bpffs: &Path,
) -> Result<Node> {
    let subnet = 50 + u8::try_from(index)?;
    let addr = Ipv4Addr::new(192, 168, subnet, 1);
    let client_addr = Ipv4Addr::new(192, 168, subnet, 2);
    let client = tb.add_ns(&format!("{name}-client"))?;
    let ns = tb.add_ns(name)?;
    // A node as a distribution ships it: forwarding on, loose reverse-path
    // filtering (systemd's 2), no accept_local. Before any link exists, so
    // every interface inherits `default`.
    tb.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
    for conf in ["all", "default"] {
        tb.sysctl(&ns, &format!("net.ipv4.conf.{conf}.rp_filter"), "2")?;
    }

    tb.veth(&client, "eth0", &ns, "ext0")?;
    tb.addr(&client, "eth0", &format!("{client_addr}/24"))?;
    tb.up(&client, "eth0")?;
    tb.addr(&ns, "ext0", &format!("{addr}/24"))?;
    tb.route(&client, &format!("{SERVICE_RANGE} via {addr}"))?;
    tb.route(&client, &format!("{POD_RANGE} via {addr}"))?;

    let pods = [1, 2].map(|i| Pod {
        name: format!("{name}-p{i}"),
        addr: POD_ADDRS[i - 1],
    });
    // `veth*` is among the agent's default --pod-ifaces: it attaches to
    // these itself, as it would to a CNI's.
    let pod_ifaces = ["veth-p1", "veth-p2"];
    for (pod, node_if) in pods.iter().zip(pod_ifaces) {
        let pod_ns = tb.add_ns(&pod.name)?;
        let [a, b, c, _] = pod.addr.octets();
        let gateway = Ipv4Addr::new(a, b, c, 1);
        tb.veth(&pod_ns, "eth0", &ns, node_if)?;
        tb.addr(&pod_ns, "eth0", &format!("{}/24", pod.addr))?;
        tb.up(&pod_ns, "eth0")?;
        tb.route(&pod_ns, &format!("default via {gateway}"))?;
        tb.addr(&ns, node_if, &format!("{gateway}/24"))?;
        servers.start(tb, &pod_ns, pod)?;
    }

    for ifname in ["ext0", "veth-p1", "veth-p2"] {
        tb.up(&ns, ifname)?;
    }
    // Every real node has a default route, here towards its client; loose
    // reverse-path filtering only passes sources some route leads back to.
    tb.route(&ns, &format!("default via {client_addr}"))?;
    Ok(Node {
        name: name.to_string(),
        ns,
        client,
        addr,
        client_addr,
        pods,
        pin_path: bpffs.join(name),
        cgroup: super::cgroup::Cgroup::new(false)?,
    })
}

/// The pods' servers; drop stops and joins them.
#[derive(Default)]
struct Servers(ServerThreads);

impl Servers {
    /// Binds every server port of `pod` in `ns` (the sockets stay there).
    fn start(&mut self, tb: &Testbed, ns: &Ns, pod: &Pod) -> Result<()> {
        for port in [REDIS_PORT, COUNTER_PORT, SPARE_PORT] {
            let listener = tb
                .in_ns(ns, || TcpListener::bind((pod.addr, port)))?
                .with_context(|| format!("binding {}:{port} in {}", pod.addr, pod.name))?;
            let name = pod.name.clone();
            self.0.spawn(move |stop| serve(&name, listener, stop));
        }
        Ok(())
    }
}

/// Accepts until stopped; each connection gets its own thread, since the
/// tests hold some open across agent restarts.
fn serve(name: &str, listener: TcpListener, stop: &AtomicBool) {
    if let Err(err) = listener.set_nonblocking(true) {
        eprintln!("{name}: server not started: {err}");
        return;
    }
    thread::scope(|scope| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, peer)) => {
                    scope.spawn(move || {
                        if let Err(err) = answer_lines(name, conn, stop) {
                            eprintln!("{name}: connection from {peer} failed: {err}");
                        }
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(err) => {
                    eprintln!("{name}: server stopped: {err}");
                    return;
                }
            }
        }
    });
}

/// Answers each line with `<name>:<line>` until the peer closes.
fn answer_lines(name: &str, conn: TcpStream, stop: &AtomicBool) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    // Short, so an idle connection notices the stop flag.
    conn.set_read_timeout(Some(POLL))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                writer.write_all(&[name.as_bytes(), b":", &line].concat())?;
                line.clear();
            }
            // What arrived before the timeout stays in `line`.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(id: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("xdplb-e2e-{id}"));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A bpffs of its own under /run: `ip netns exec` gives the agent a private
/// mount namespace, and a bpffs mounted in there would vanish with the
/// agent, pins and all. One mounted here, before the agent starts, is
/// shared into it and outlives it. Drop unpins and unmounts.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(id: &str) -> Result<Self> {
        remove_leftover_bpffs();
        let root = Path::new("/run").join(format!("{BPFFS_PREFIX}{id}"));
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let bpffs = Self(root);
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs.0)
            .output()?;
        ensure!(
            out.status.success(),
            "mount -t bpf bpf {}: {}",
            bpffs.0.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(bpffs)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        unpin_and_unmount(&self.0);
    }
}

/// Runs `xdplb agent --cleanup` on every pin path under `root`, the way an
/// operator removes a data plane, then unmounts `root` and removes it.
fn unpin_and_unmount(root: &Path) {
    // Only directories: bpffs also shows its own maps.debug and progs.debug.
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let cleanup = Command::new(XDPLB)
            .args(["agent", "--cleanup", "--pin-path"])
            .arg(entry.path())
            .output();
        match cleanup {
            Ok(out) if out.status.success() => {}
            other => eprintln!(
                "xdplb agent --cleanup {}: {other:?}",
                entry.path().display()
            ),
        }
    }
    match Command::new("umount").arg(root).output() {
        Ok(out) if out.status.success() => {
            if let Err(err) = fs::remove_dir(root) {
                eprintln!("removing {}: {err}", root.display());
            }
        }
        other => eprintln!("umount {}: {other:?}", root.display()),
    }
}

/// Unmounts the bpffs of runs that died before their drop did.
fn remove_leftover_bpffs() {
    for entry in fs::read_dir("/run").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(BPFFS_PREFIX)
            .and_then(|id| id.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            unpin_and_unmount(&entry.path());
        }
    }
}
