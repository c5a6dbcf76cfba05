//! `cargo xtask demo`: the seed document's counter app and Redis on a
//! two-node cluster of network namespaces, served by one `xdplb agent` per
//! node, with traffic from an external client through a NodePort on each
//! node and through a LoadBalancer IP.
use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    bootstrap::step,
    ebpf::{self, workspace_root},
    prepare::{build, preflight, redis_server, remove_leftovers},
    progress::{self, seconds, wait_agent, wait_pod, Progress},
};
use testbed::{
    apps::{path_str, start_agent, start_pod, xdplb},
    cluster::{self, Cluster, NodeProfile, CLIENT_ADDR},
    control_plane::{self, App, State},
    netns::in_netns,
    traffic,
};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the cluster running and print commands to explore it.
    #[arg(long, conflicts_with = "down")]
    pub keep: bool,
    /// Remove the clusters left by --keep (and by killed runs), then exit.
    #[arg(long)]
    pub down: bool,
}

const STEPS: usize = 9;
const REQUESTS_PER_TARGET: usize = 4;

pub fn run_cmd(args: &Args) -> Result<()> {
    preflight()?;
    progress::catch_interrupts();
    if args.down {
        let removed = cluster::down()?;
        if removed.is_empty() {
            step("no demo cluster to remove");
        }
        for id in removed {
            step(&format!("removed demo cluster {id}"));
        }
        return Ok(());
    }
    let mut p = Progress::new(STEPS);
    let redis = p.step("looking for redis-server", false, redis_server)?;
    p.step("building the eBPF object", true, ebpf::build)?;
    let bin = p.step("building xdplb and the counter app", true, || {
        build(&["counter"])
    })?;
    p.step("removing leftovers of killed runs", false, remove_leftovers)?;
    let nodes = cluster::nodes();
    let state = p.step(
        "control plane: placing pods, allocating ClusterIPs, nodePorts and LB IPs, writing EndpointSlices",
        false,
        || control_plane::from_manifests(&workspace_root().join("deploy/examples"), &nodes),
    )?;
    print_objects(&state);
    let mut cluster = p.step(
        "creating namespaces: lan bridge, router, client, node1, node2 and the pods",
        false,
        || Cluster::with_pods(nodes.clone(), NodeProfile::default(), &state),
    )?;
    p.step(
        "starting an xdplb agent on each node, Redis and the counters",
        false,
        || start(&mut cluster, &state, &bin, &redis),
    )?;
    let targets = targets(&cluster, &state);
    let report = p.step(
        &format!("requests from the client ({CLIENT_ADDR}), {REQUESTS_PER_TARGET} per target"),
        true,
        || drive_traffic(&cluster, &state, &bin, &targets),
    )?;
    show_maps(&cluster, &bin)?;
    let total = seconds(p.elapsed());
    if args.keep {
        print_explore(&cluster, &state, &bin, &targets);
        cluster.keep()?;
    } else {
        p.step("tearing the cluster down", false, || cluster.remove())?;
    }
    if !report.failures.is_empty() {
        eprintln!("\n{}", report.explain_failures());
        bail!(
            "demo failed: {} of {} requests got no answer (after {total})",
            report.failures.len(),
            report.requests
        );
    }
    let pods: Vec<String> = report
        .answered_by
        .iter()
        .map(|(pod, n)| format!("{pod} {n}"))
        .collect();
    eprintln!(
        "\ndemo passed in {total}: {} requests answered ({}), the count rising by one each time",
        report.requests,
        pods.join(", ")
    );
    Ok(())
}

fn print_objects(state: &State) {
    for svc in &state.services {
        let spec = &svc["spec"];
        let mut line = format!(
            "      Service {} ({}): ClusterIP {}",
            svc["metadata"]["name"].as_str().unwrap_or_default(),
            spec["type"].as_str().unwrap_or("ClusterIP"),
            spec["clusterIP"].as_str().unwrap_or("none"),
        );
        for port in spec["ports"].as_array().into_iter().flatten() {
            let _ = write!(line, ", port {}", port["port"]);
            if let Some(np) = port["nodePort"].as_i64() {
                let _ = write!(line, ", nodePort {np}");
            }
        }
        for ip in svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let _ = write!(
                line,
                ", LoadBalancer IP {}",
                ip["ip"].as_str().unwrap_or_default()
            );
        }
        eprintln!("{line}");
    }
    for pod in &state.pods {
        eprintln!("      Pod {} on {} at {}", pod.name, pod.node, pod.addr);
    }
}

/// Writes each node's manifests, starts the agents and the pods' programs,
/// and waits until all of them serve.
fn start(cluster: &mut Cluster, state: &State, bin: &Path, redis: &Path) -> Result<()> {
    for node in cluster.nodes.clone() {
        state.write(&cluster.run.manifests(&node.name))?;
        start_agent(cluster, &node.name, bin, &format!("agent-{}", node.name))?;
    }
    for pod in &state.pods {
        start_pod(cluster, pod, bin, redis)?;
    }
    for node in cluster.nodes.clone() {
        wait_agent(cluster, state, &node.name)?;
    }
    for pod in &state.pods {
        wait_pod(cluster, pod)?;
    }
    Ok(())
}

/// A request the client sent that got no answer, with the receiving node's
/// account of where it went.
struct Failure {
    number: usize,
    target: SocketAddrV4,
    received_by: String,
    error: String,
    /// `xdplb explain` on the receiving node.
    explain: String,
}

struct Report {
    requests: usize,
    failures: Vec<Failure>,
    /// Answers per pod, in order of first answer.
    answered_by: Vec<(String, usize)>,
    /// `xdplb stats` of the nodes that received unanswered requests.
    stats: Vec<(String, String)>,
    logs: PathBuf,
}

impl Report {
    fn explain_failures(&self) -> String {
        let mut out = String::from(
            "Requests that got no answer, as their receiving node's connection table tells it:\n",
        );
        for f in &self.failures {
            let _ = writeln!(
                out,
                "  #{} to {} (received by {}): {}\n      {}",
                f.number, f.target, f.received_by, f.error, f.explain
            );
        }
        for (node, stats) in &self.stats {
            let _ = write!(out, "\nxdplb stats on {node}:\n{stats}");
        }
        let _ = write!(
            out,
            "\nThe agents' and pods' logs are in {}.",
            self.logs.display()
        );
        out
    }
}

/// Sends the requests, printing a row per request, and checks that every
/// answer carries the next count.
fn drive_traffic(
    cluster: &Cluster,
    state: &State,
    bin: &Path,
    targets: &[Target],
) -> Result<Report> {
    let client = cluster.run.ns("client");
    row(
        &"#",
        "TARGET",
        "RECEIVED BY",
        "ANSWERED BY",
        &"COUNT",
        "LATENCY",
    );
    let mut report = Report {
        requests: 0,
        failures: Vec::new(),
        answered_by: Vec::new(),
        stats: Vec::new(),
        logs: cluster.run.logs(),
    };
    let mut last_count = 0;
    for (label, target, node) in targets {
        for _ in 0..REQUESTS_PER_TARGET {
            progress::check_interrupt()?;
            report.requests += 1;
            let number = report.requests;
            let outcome = in_netns(&client, || traffic::get(*target))??;
            let latency = format!("{:.1} ms", outcome.latency.as_secs_f64() * 1e3);
            let what = format!("{label} {target}");
            match outcome.answer {
                Ok(answer) => {
                    let pod_node = pod_node(state, &answer.pod);
                    let answered = format!("{} on {pod_node}", answer.pod);
                    row(&number, &what, node, &answered, &answer.count, &latency);
                    if answer.count != last_count + 1 {
                        bail!(
                            "request #{number} got count {}, expected {}: the pods do not share one Redis counter",
                            answer.count,
                            last_count + 1
                        );
                    }
                    last_count = answer.count;
                    match report
                        .answered_by
                        .iter_mut()
                        .find(|(pod, _)| *pod == answer.pod)
                    {
                        Some((_, n)) => *n += 1,
                        None => report.answered_by.push((answer.pod, 1)),
                    }
                }
                Err(err) => {
                    let pin = cluster.run.pin_path(node);
                    let explain = xdplb(
                        bin,
                        &[
                            "explain",
                            &format!("{CLIENT_ADDR}:{}", outcome.source_port),
                            &target.to_string(),
                            "tcp",
                            "--pin-path",
                            path_str(&pin)?,
                        ],
                    )
                    .unwrap_or_else(|e| format!("{e:#}"));
                    let answered = match backend_of(&explain, state) {
                        Some((pod, pod_node)) => format!("NO ANSWER (sent to {pod} on {pod_node})"),
                        None => "NO ANSWER".to_string(),
                    };
                    row(&number, &what, node, &answered, &"-", &latency);
                    report.failures.push(Failure {
                        number,
                        target: *target,
                        received_by: node.clone(),
                        error: format!("{err:#}"),
                        explain: explain.trim().to_owned(),
                    });
                }
            }
        }
    }
    let mut nodes: Vec<&String> = report.failures.iter().map(|f| &f.received_by).collect();
    nodes.sort();
    nodes.dedup();
    for node in nodes {
        let pin = cluster.run.pin_path(node);
        let stats = xdplb(bin, &["stats", "--pin-path", path_str(&pin)?])?;
        report.stats.push((node.clone(), stats));
    }
    Ok(report)
}

fn row(
    number: &dyn std::fmt::Display,
    target: &str,
    node: &str,
    answered: &str,
    count: &dyn std::fmt::Display,
    latency: &str,
) {
    eprintln!("  {number:>2}  {target:<30}  {node:<11}  {answered:<38}  {count:>5}  {latency:>9}");
}

/// (label, address, node that receives it).
type Target = (&'static str, SocketAddrV4, String);

/// Every NodePort Service on every node, then every LoadBalancer IP, which
/// the router sends to the first node.
fn targets(cluster: &Cluster, state: &State) -> Vec<Target> {
    let port_numbers = |svc: &serde_json::Value, field: &str| -> Vec<u16> {
        svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| u16::try_from(p[field].as_u64()?).ok())
            .collect()
    };
    let of_type = |kind: &'static str| {
        state
            .services
            .iter()
            .filter(move |svc| svc["spec"]["type"] == kind)
    };
    let mut targets = Vec::new();
    for svc in of_type("NodePort") {
        for port in port_numbers(svc, "nodePort") {
            for node in &cluster.nodes {
                let addr = SocketAddrV4::new(node.addr, port);
                targets.push(("NodePort", addr, node.name.clone()));
            }
        }
    }
    for svc in of_type("LoadBalancer") {
        for port in port_numbers(svc, "port") {
            for ip in control_plane::ingress_ips(svc) {
                let addr = SocketAddrV4::new(ip, port);
                targets.push(("LB IP", addr, cluster.nodes[0].name.clone()));
            }
        }
    }
    targets
}

fn pod_node<'a>(state: &'a State, pod: &str) -> &'a str {
    state
        .pods
        .iter()
        .find(|p| p.name == pod)
        .map_or("?", |p| p.node.as_str())
}

/// The backend `xdplb explain` names (`... pinned to 10.244.2.2:3000 by
/// connection tracking` or `... backend id 3 = 10.244.2.2:3000`), as (pod,
/// node).
fn backend_of(explain: &str, state: &State) -> Option<(String, String)> {
    let addr = explain
        .split_whitespace()
        .filter_map(|word| word.parse::<SocketAddrV4>().ok())
        .next_back()?;
    let pod = state.pods.iter().find(|p| p.addr == *addr.ip())?;
    Some((pod.name.clone(), pod.node.clone()))
}

fn show_maps(cluster: &Cluster, bin: &Path) -> Result<()> {
    for node in &cluster.nodes {
        let pin = cluster.run.pin_path(&node.name);
        eprintln!(
            "\n$ xdplb services --pin-path {}   # {}",
            pin.display(),
            node.name
        );
        eprint!(
            "{}",
            xdplb(bin, &["services", "--pin-path", path_str(&pin)?])?
        );
    }
    let pin = cluster.run.pin_path(&cluster.nodes[0].name);
    let maps = std::fs::read_dir(&pin)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("maps"))
        .find(|p| p.is_dir())
        .context("no pinned maps")?;
    let mut names: Vec<String> = std::fs::read_dir(&maps)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    eprintln!("\n$ ls {}\n{}", maps.display(), names.join("  "));
    // The smallest map, and the one entry that says how this node source-NATs.
    let config = maps.join("CONFIG");
    eprintln!("\n$ bpftool map dump pinned {}", config.display());
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&config)
        .output()
        .context("running bpftool")?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn print_explore(cluster: &Cluster, state: &State, bin: &Path, targets: &[Target]) {
    let ns = |role: &str| cluster.run.ns(role);
    let xdplb = bin.join("xdplb");
    eprintln!(
        "\nThe cluster stays up (run {}). Explore it:",
        cluster.run.id
    );
    let mut shown = Vec::new();
    for (label, target, _) in targets {
        if !shown.contains(label) {
            shown.push(label);
            eprintln!("  ip netns exec {} curl -s http://{target}/", ns("client"));
        }
    }
    if let Some(pod) = state.pods.iter().find(|p| p.app == App::Counter) {
        eprintln!(
            "  ip netns exec {} curl -s http://counter-app:3000/   # a Service name, from a pod",
            ns(&pod.name)
        );
    }
    for node in &cluster.nodes {
        let pin = cluster.run.pin_path(&node.name);
        eprintln!("  {} flows --pin-path {}", xdplb.display(), pin.display());
    }
    if let Some((_, target, node)) = targets.first() {
        eprintln!(
            "  {} explain {CLIENT_ADDR}:40000 {target} --pin-path {}",
            xdplb.display(),
            cluster.run.pin_path(node).display()
        );
    }
    eprintln!(
        "  ls {}   # the agents' and pods' logs",
        cluster.run.logs().display()
    );
    eprintln!(
        "  cat {}/*   # what node1's agent reads",
        cluster.run.manifests(&cluster.nodes[0].name).display()
    );
    eprintln!("Remove it with: cargo xtask demo --down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_lines_name_their_backend() {
        let state = control_plane::from_manifests(
            &workspace_root().join("deploy/examples"),
            &cluster::nodes(),
        )
        .unwrap();
        let line = "198.51.100.2:41000 -> 192.168.50.11:31000/TCP: existing flow of default/counter-app, pinned to 10.244.2.2:3000 by connection tracking";
        assert_eq!(
            backend_of(line, &state),
            Some(("counter-2".into(), "node2".into()))
        );
        assert_eq!(backend_of("no address here", &state), None);
    }
}
