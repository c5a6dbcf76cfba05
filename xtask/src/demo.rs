//! `cargo xtask demo`: the seed document's counter app and Redis on a
//! two-node cluster of network namespaces, served by one `xdplb agent` per
//! node, with traffic from an external client through a NodePort on each
//! node and through the LoadBalancer address the agents give `counter-lb`
//! from their pool on the nodes' LAN; then the announcing node's agent
//! stops and the other node takes the address over. The counter's
//! Services are dual-stack: their NodePorts answer on the nodes' IPv6
//! addresses too (the agents' pools are IPv4 only, so the LoadBalancer
//! address is).
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    bootstrap::step,
    ebpf::{self, workspace_root},
    prepare::{build, preflight, redis_server, remove_leftovers},
    progress::{self, seconds, wait_agent, wait_pod, Progress},
};
use testbed::{
    apps::{path_str, start_agent, start_pod, xdplb},
    cluster::{self, Cluster, NodeProfile, CLIENT_ADDR, CLIENT_ADDR6, LB_POOL},
    control_plane::{self, App, LbProvider, State},
    lb_pool,
    netns::{self, in_netns},
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

const STEPS: usize = 12;
const REQUESTS_PER_TARGET: usize = 4;
/// The Service whose LoadBalancer address comes from the agents' pool.
const LB_SERVICE: &str = "default/counter-lb";
/// How long the agents may take to give the address and program it.
const LB_ADDRESS_BOUND: Duration = Duration::from_secs(10);
/// Issue #15's goal for another node to take the address over.
const TAKEOVER_GOAL: Duration = Duration::from_secs(3);
/// When the demo gives up on the takeover: the goal plus room for a
/// loaded machine (CI).
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

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
    let mut state = p.step(
        "control plane: placing pods, allocating ClusterIPs and nodePorts, writing EndpointSlices; no LoadBalancer provider",
        false,
        || {
            control_plane::from_manifests(
                &workspace_root().join("deploy/examples"),
                &nodes,
                LbProvider::AgentsPools,
            )
        },
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
    let lb = p.step(
        &format!("the agents give {LB_SERVICE} an address of their pool {LB_POOL}"),
        false,
        || pool_address(&cluster, &bin),
    )?;
    eprintln!(
        "      {LB_SERVICE}: {}, announced by {} (the router has no route for the pool: ARP on the LAN)",
        lb.addr, lb.announcer
    );
    let targets = targets(&cluster, &state, &lb);
    let mut report = Report::new(&cluster);
    p.step(
        &format!(
            "requests from the client ({CLIENT_ADDR}, {CLIENT_ADDR6}), {REQUESTS_PER_TARGET} per target"
        ),
        true,
        || {
            header();
            drive_traffic(&cluster, &state, &bin, &targets, &mut report)
        },
    )?;
    // The node whose agent the failover stops.
    let mut stopped = None;
    if report.failures.is_empty() {
        p.step(
            &format!("the router resolved {} by ARP", lb.addr),
            true,
            || show_arp(&cluster, &lb),
        )?;
        stopped = Some(lb.announcer.clone());
        let took = p.step(
            &format!(
                "stopping {}'s agent (SIGTERM): the other node takes {} over",
                lb.announcer, lb.addr
            ),
            true,
            || fail_over(&mut cluster, &mut state, &bin, &lb, &mut report),
        )?;
        let verdict = match took <= TAKEOVER_GOAL {
            true => "",
            false => ", OVER THE GOAL: a loaded machine?",
        };
        eprintln!(
            "      takeover: {} after the SIGTERM (goal {}{verdict})",
            ms(took),
            seconds(TAKEOVER_GOAL)
        );
    }
    show_maps(&cluster, &bin, stopped.as_deref())?;
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
        if let Some(ip) = control_plane::cluster_ip_of_family(svc, true) {
            let _ = write!(line, " and {ip}");
        }
        for port in spec["ports"].as_array().into_iter().flatten() {
            let _ = write!(line, ", port {}", port["port"]);
            if let Some(np) = port["nodePort"].as_i64() {
                let _ = write!(line, ", nodePort {np}");
            }
        }
        if spec["type"] == "LoadBalancer" && control_plane::ingress_ips(svc).next().is_none() {
            let _ = write!(line, ", LoadBalancer IP from the agents' pool {LB_POOL}");
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
        eprintln!(
            "      Pod {} on {} at {} and {}",
            pod.name, pod.node, pod.addr, pod.addr6
        );
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
    target: SocketAddr,
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
    /// The count the last answer carried.
    last_count: i64,
}

impl Report {
    fn new(cluster: &Cluster) -> Self {
        Self {
            requests: 0,
            failures: Vec::new(),
            answered_by: Vec::new(),
            stats: Vec::new(),
            logs: cluster.run.logs(),
            last_count: 0,
        }
    }

    /// Counts an answer, which must carry the next count.
    fn record(&mut self, number: usize, answer: traffic::Answer) -> Result<()> {
        if answer.count != self.last_count + 1 {
            bail!(
                "request #{number} got count {}, expected {}: the pods do not share one Redis counter",
                answer.count,
                self.last_count + 1
            );
        }
        self.last_count = answer.count;
        match self
            .answered_by
            .iter_mut()
            .find(|(pod, _)| *pod == answer.pod)
        {
            Some((_, n)) => *n += 1,
            None => self.answered_by.push((answer.pod, 1)),
        }
        Ok(())
    }

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

fn header() {
    row(
        &"#",
        "TARGET",
        "RECEIVED BY",
        "ANSWERED BY",
        &"COUNT",
        "LATENCY",
    );
}

/// Sends the requests, printing a row per request, and checks that every
/// answer carries the next count.
fn drive_traffic(
    cluster: &Cluster,
    state: &State,
    bin: &Path,
    targets: &[Target],
    report: &mut Report,
) -> Result<()> {
    let client = cluster.run.ns("client");
    for (label, target, node) in targets {
        for _ in 0..REQUESTS_PER_TARGET {
            progress::check_interrupt()?;
            report.requests += 1;
            let number = report.requests;
            let outcome = in_netns(&client, || traffic::get_any(*target))??;
            let latency = format!("{:.1} ms", outcome.latency.as_secs_f64() * 1e3);
            let what = format!("{label} {target}");
            match outcome.answer {
                Ok(answer) => {
                    row(
                        &number,
                        &what,
                        node,
                        &answered(state, &answer),
                        &answer.count,
                        &latency,
                    );
                    report.record(number, answer)?;
                }
                Err(err) => {
                    let pin = cluster.run.pin_path(node);
                    let explain = xdplb(
                        bin,
                        &[
                            "explain",
                            &SocketAddr::new(client_addr(target), outcome.source_port).to_string(),
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
    Ok(())
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

/// The client's address of `target`'s family.
fn client_addr(target: &SocketAddr) -> IpAddr {
    match target {
        SocketAddr::V4(_) => IpAddr::V4(CLIENT_ADDR),
        SocketAddr::V6(_) => IpAddr::V6(CLIENT_ADDR6),
    }
}

/// (label, address, node that receives it).
type Target = (&'static str, SocketAddr, String);

/// Every NodePort Service on every node (and a dual-stack one on every
/// node's IPv6 address), then the pool address of [`LB_SERVICE`], which
/// the node announcing it receives.
fn targets(cluster: &Cluster, state: &State, lb: &PoolAddress) -> Vec<Target> {
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
                let addr = SocketAddr::new(IpAddr::V4(node.addr), port);
                targets.push(("NodePort", addr, node.name.clone()));
            }
            if control_plane::cluster_ip_of_family(svc, true).is_some() {
                for node in &cluster.nodes {
                    let addr = SocketAddr::new(IpAddr::V6(node.addr6), port);
                    targets.push(("NodePort", addr, node.name.clone()));
                }
            }
        }
    }
    for svc in of_type("LoadBalancer") {
        let name = svc["metadata"]["name"].as_str().unwrap_or_default();
        if format!("default/{name}") != LB_SERVICE {
            continue;
        }
        for port in port_numbers(svc, "port") {
            let addr = SocketAddr::new(IpAddr::V4(lb.addr), port);
            targets.push(("LB IP", addr, lb.announcer.clone()));
        }
    }
    targets
}

/// [`LB_SERVICE`]'s address from the pool and the node that announces it,
/// as `xdplb services` on the first node lists them.
struct PoolAddress {
    addr: Ipv4Addr,
    announcer: String,
}

/// Waits until the first node's agent lists an address of the pool for
/// [`LB_SERVICE`] and a node announcing it.
fn pool_address(cluster: &Cluster, bin: &Path) -> Result<PoolAddress> {
    let node = &cluster.nodes[0].name;
    let found = || -> Result<PoolAddress> {
        let addr = lb_pool::pool_address(bin, &cluster.run, node, LB_SERVICE)?;
        let prefix = format!("{addr}:");
        let announcer = lb_pool::frontends(bin, &cluster.run, node)?
            .iter()
            .filter(|r| {
                r["frontend"]
                    .as_str()
                    .is_some_and(|f| f.starts_with(&prefix))
            })
            .find_map(|r| r["announced_by"].as_str().map(str::to_owned))
            .with_context(|| format!("no node announces {addr}"))?;
        Ok(PoolAddress { addr, announcer })
    };
    let deadline = Instant::now() + LB_ADDRESS_BOUND;
    loop {
        progress::check_interrupt()?;
        match found() {
            Ok(lb) => return Ok(lb),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("after {}", seconds(LB_ADDRESS_BOUND))))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Shows that the router reached the address over its connected LAN, with
/// exactly one node's MAC in its neighbour table: the announcer's.
fn show_arp(cluster: &Cluster, lb: &PoolAddress) -> Result<()> {
    let router = cluster.run.ns("router");
    let addr = lb.addr.to_string();
    for args in [["route", "get", &addr], ["neigh", "show", &addr]] {
        eprintln!("$ ip -n {router} {}", args.join(" "));
        eprint!("{}", netns::exec(&router, "ip", &args)?);
    }
    let macs = node_macs(cluster)?;
    let seen = lb_pool::announcer_seen_by_router(&cluster.run, lb.addr, &macs)?;
    ensure!(
        seen == lb.announcer,
        "the router has {seen}'s MAC for {}, but xdplb services names {} as its announcer",
        lb.addr,
        lb.announcer
    );
    eprintln!(
        "      exactly one MAC for {}: {seen}'s ({}); the client, behind the router, needs no route for it either",
        lb.addr, macs[&seen]
    );
    Ok(())
}

fn node_macs(cluster: &Cluster) -> Result<std::collections::BTreeMap<String, String>> {
    lb_pool::lan_macs(&cluster.run, cluster.nodes.iter().map(|n| n.name.as_str()))
}

/// Stops the announcing node's agent with SIGTERM and marks its Node
/// NotReady in every node's manifests, as the node lifecycle controller
/// would for a node that went down (with `--manifests`, the agents' only
/// sign of another node's liveness); then waits until the router holds the
/// other node's MAC for the address and a request to it is answered
/// through that node. Returns the time from the SIGTERM to that answer,
/// after a few more requests through the new announcer.
fn fail_over(
    cluster: &mut Cluster,
    state: &mut State,
    bin: &Path,
    lb: &PoolAddress,
    report: &mut Report,
) -> Result<Duration> {
    let first = &lb.announcer;
    let other = cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| n != first)
        .context("one node only")?;
    let macs = node_macs(cluster)?;
    let target = targets(cluster, state, lb)
        .into_iter()
        .map(|(_, t, _)| t)
        .find(|t| t.ip() == IpAddr::V4(lb.addr))
        .context("no port of the LoadBalancer address")?;
    let frontend = format!("{target}/TCP");
    let before = lb_pool::frontend_packets(bin, &cluster.run, &other, &frontend)?;

    let started = Instant::now();
    let status = cluster.terminate(&format!("agent-{first}"), Duration::from_secs(10))?;
    ensure!(
        status.success(),
        "{first}'s agent exited with {status} on SIGTERM"
    );
    state.set_node_ready(first, false)?;
    for node in &cluster.nodes {
        state.write(&cluster.run.manifests(&node.name))?;
    }
    eprintln!(
        "      {first}'s agent exited ({status}) and no longer answers ARP for {}; its Node marked NotReady, as the node lifecycle controller would for a node that went down ({})",
        lb.addr,
        ms(started.elapsed())
    );
    let client = cluster.run.ns("client");
    let deadline = started + TAKEOVER_BOUND;
    loop {
        progress::check_interrupt()?;
        let seen = lb_pool::announcer_seen_by_router(&cluster.run, lb.addr, &macs);
        if seen.as_deref().is_ok_and(|n| n == other) {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{other} did not take {} over within {}: {}",
                lb.addr,
                seconds(TAKEOVER_BOUND),
                match seen {
                    Ok(n) => format!("the router still has {n}'s MAC"),
                    Err(e) => format!("{e:#}"),
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "      the router now has {other}'s MAC ({}) for {} ({}: {other}'s gratuitous ARP)",
        macs[&other],
        lb.addr,
        ms(started.elapsed())
    );
    let outcome = in_netns(&client, || traffic::get_any(target))??;
    let took = started.elapsed();
    let answer = outcome
        .answer
        .with_context(|| format!("{target} unanswered after {other} took it over"))?;
    let after = lb_pool::frontend_packets(bin, &cluster.run, &other, &frontend)?;
    ensure!(
        after > before,
        "{other} counted no packet to {frontend}: the answer did not come through it"
    );
    ensure!(
        took <= TAKEOVER_BOUND,
        "the first answer through {other} came {} after the SIGTERM",
        ms(took)
    );
    header();
    report.requests += 1;
    let latency = format!("{:.1} ms", outcome.latency.as_secs_f64() * 1e3);
    let what = format!("LB IP {target}");
    row(
        &report.requests,
        &what,
        &other,
        &answered(state, &answer),
        &answer.count,
        &latency,
    );
    report.record(report.requests, answer)?;
    drive_traffic(
        cluster,
        state,
        bin,
        &[("LB IP", target, other.clone())],
        report,
    )?;
    ensure!(
        report.failures.is_empty(),
        "requests through {} after the takeover got no answer",
        lb.addr
    );
    Ok(took)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The ANSWERED BY column: the pod and its node.
fn answered(state: &State, answer: &traffic::Answer) -> String {
    format!("{} on {}", answer.pod, pod_node(state, &answer.pod))
}

fn pod_node<'a>(state: &'a State, pod: &str) -> &'a str {
    state
        .pods
        .iter()
        .find(|p| p.name == pod)
        .map_or("?", |p| p.node.as_str())
}

/// The backend `xdplb explain` names (`... pinned to 10.244.2.2:3000 by
/// connection tracking` or `... backend id 3 = 10.244.2.2:3000`; IPv6 as
/// `[fd00:244:2::2]:3000`), as (pod, node).
fn backend_of(explain: &str, state: &State) -> Option<(String, String)> {
    let addr = explain
        .split_whitespace()
        .filter_map(|word| word.parse::<SocketAddr>().ok())
        .next_back()?;
    let pod = state.pods.iter().find(|p| match addr.ip() {
        IpAddr::V4(ip) => p.addr == ip,
        IpAddr::V6(ip) => p.addr6 == ip,
    })?;
    Some((pod.name.clone(), pod.node.clone()))
}

/// `xdplb services` of every node (`stopped`: the node whose agent is
/// gone, whose maps hold what it last wrote), and a look at the pins.
fn show_maps(cluster: &Cluster, bin: &Path, stopped: Option<&str>) -> Result<()> {
    for node in &cluster.nodes {
        let pin = cluster.run.pin_path(&node.name);
        let note = match stopped == Some(node.name.as_str()) {
            true => ", whose agent is stopped: its maps show what the agent last wrote",
            false => "",
        };
        eprintln!(
            "\n$ xdplb services --pin-path {}   # {}{note}",
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
            LbProvider::AgentsPools,
        )
        .unwrap();
        let line = "198.51.100.2:41000 -> 192.168.50.11:31000/TCP: existing flow of default/counter-app, pinned to 10.244.2.2:3000 by connection tracking";
        assert_eq!(
            backend_of(line, &state),
            Some(("counter-2".into(), "node2".into()))
        );
        let line = "[fd00:51::2]:41000 -> [fd00:10::11]:31000/TCP: existing flow of default/counter-app, pinned to [fd00:244:2::2]:3000 by connection tracking";
        assert_eq!(
            backend_of(line, &state),
            Some(("counter-2".into(), "node2".into()))
        );
        assert_eq!(backend_of("no address here", &state), None);
    }
}
