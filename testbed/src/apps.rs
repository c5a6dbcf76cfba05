//! What runs on a cluster: an `xdplb agent` per node, as a process of the
//! node, and each pod's program, and how each shows that it serves.
use std::{
    io::{self, BufRead, BufReader, Write},
    net::{TcpStream, ToSocketAddrs},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    cluster::{pod_iface, Cluster, Run, LB_POOL, LB_POOL6, NODE_LAN_IFACE},
    control_plane::{App, Pod},
    netns::in_netns,
};

const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;
const REDIS_PORT: u16 = 6379;
pub const COUNTER_PORT: u16 = 3000;
/// The port `e2e-probe server` is ready on once all its ports are.
const PROBE_READY_PORT: u16 = 8080;

/// Starts `node`'s agent on the manifests in its folder and its pin path,
/// as a process of the node, logging to `<label>.log`. Where the agent has
/// socket-level hooks for the node's own processes, they go on the node's
/// cgroup rather than the machine's.
pub fn start_agent(cluster: &mut Cluster, node: &str, bin: &Path, label: &str) -> Result<()> {
    let manifests = cluster.run.manifests(node);
    let pin_path = cluster.run.pin_path(node);
    let healthz = format!("127.0.0.1:{HEALTHZ_PORT}");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let mut args = vec![
        "agent",
        "--manifests",
        path_str(&manifests)?,
        "--node-name",
        node,
        "--external-ifaces",
        NODE_LAN_IFACE,
        "--pin-path",
        path_str(&pin_path)?,
        "--healthz-addr",
        &healthz,
        "--metrics-addr",
        &metrics,
        "--lb-pool-range",
        LB_POOL,
        "--lb-pool-range",
        LB_POOL6,
    ];
    let cgroup = cluster.run.cgroup(node);
    if let Some(cgroup) = &cgroup {
        if agent_has_cgroup_path(bin)? {
            args.extend(["--cgroup-path", path_str(cgroup)?]);
        }
    }
    // Its log is a file, read with cat or less: no colour codes.
    let env = [("NO_COLOR".to_owned(), "1".to_owned())];
    cluster.spawn_on_node(node, label, &bin.join("xdplb"), &args, &env)
}

/// Whether `xdplb agent` takes `--cgroup-path` (socket-level translation
/// for the node's own processes).
pub fn agent_has_cgroup_path(bin: &Path) -> Result<bool> {
    Ok(xdplb(bin, &["agent", "--help"])?.contains("--cgroup-path"))
}

/// Starts the pod's program in its namespace and cgroup, logging to
/// `<pod>.log`; `bin` holds the agent's and xtask's programs.
pub fn start_pod(cluster: &mut Cluster, pod: &Pod, bin: &Path, redis: &Path) -> Result<()> {
    match pod.app {
        App::Redis => {
            let port = REDIS_PORT.to_string();
            let args = [
                "--port",
                &port,
                // Both families, each on a socket of its own.
                "--bind",
                "0.0.0.0",
                "::",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--daemonize",
                "no",
            ];
            cluster.spawn(pod, redis, &args, &[])
        }
        App::Counter => {
            let mut env = pod.env.clone();
            env.push(("POD_NAME".into(), pod.name.clone()));
            cluster.spawn(pod, &bin.join("counter"), &[], &env)
        }
        App::Probe => {
            let args = ["server", "--pod", &pod.name];
            cluster.spawn(pod, &bin.join("e2e-probe"), &args, &[])
        }
    }
}

/// Whether `node`'s agent answers /healthz and has attached to the node's
/// external interface and to the veths of the pods named; a test that owns
/// what it needs, so it can be polled while the cluster is borrowed.
pub fn agent_serves<'a>(
    run: &Run,
    node: &str,
    pods: impl IntoIterator<Item = &'a str>,
) -> impl Fn() -> bool {
    let ns = run.ns(node);
    let pin_path = run.pin_path(node);
    let veths: Vec<String> = pods.into_iter().map(pod_iface).collect();
    move || {
        healthy(&ns)
            && link_pinned(&pin_path, NODE_LAN_IFACE)
            && veths.iter().all(|veth| link_pinned(&pin_path, veth))
    }
}

/// kube-proxy's /healthz answers 200 once the first sync is done, which
/// the agent only reports after attaching to its interfaces.
fn healthy(node_ns: &str) -> bool {
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    in_netns(node_ns, || first_line(("127.0.0.1", HEALTHZ_PORT), request))
        .is_ok_and(|status| status.is_ok_and(|status| status.contains(" 200 ")))
}

/// Whether the agent has pinned its tc link of `ifname`, under any layout
/// version (`<pin>/v<N>/tc/<ifname>`): every interface it serves gets one,
/// an external interface's last, after its XDP link if XDP serves it.
pub fn link_pinned(pin_path: &Path, ifname: &str) -> bool {
    std::fs::read_dir(pin_path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| e.path().join("tc").join(ifname).exists())
}

/// Whether the pod's program serves; polled as [`agent_serves`].
pub fn pod_ready<'a>(run: &Run, pod: &'a Pod) -> impl Fn() -> bool + 'a {
    let ns = run.ns(&pod.name);
    move || serving(&ns, pod)
}

fn serving(ns: &str, pod: &Pod) -> bool {
    in_netns(ns, || -> io::Result<bool> {
        match pod.app {
            // Connecting alone does not count as a hit.
            App::Counter => TcpStream::connect((pod.addr, COUNTER_PORT)).map(|_| true),
            App::Probe => TcpStream::connect((pod.addr, PROBE_READY_PORT)).map(|_| true),
            App::Redis => first_line((pod.addr, REDIS_PORT), b"PING\r\n")
                .map(|reply| reply.starts_with("+PONG")),
        }
    })
    .is_ok_and(|r| r.unwrap_or(false))
}

/// The first line of the answer to `request`, which must come within a
/// second.
fn first_line(to: impl ToSocketAddrs, request: &[u8]) -> io::Result<String> {
    let mut stream = TcpStream::connect(to)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(request)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Runs `xdplb` from `bin` and returns its stdout.
pub fn xdplb(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin.join("xdplb"))
        .args(args)
        .output()
        .context("running xdplb")?;
    if !out.status.success() {
        bail!(
            "xdplb {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
