//! `cargo xtask e2e`: Service scenarios after Kubernetes' own Service e2e
//! tests, on the demo's two-node cluster of network namespaces with an
//! `xdplb agent` per node. A run builds a cluster (the demo's seed pods and
//! Services plus its own probe pods and Services) with the nodes' profile
//! the flags choose, runs every scenario against it, prints PASS or FAIL
//! with evidence for each, and fails if any failed. `--matrix` does that
//! for every profile in turn, each on a cluster of its own, and ends with a
//! table of them.
mod bed;
mod probe;
mod scenarios;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::{
    bootstrap::step,
    ebpf::{self, workspace_root},
    prepare,
    progress::{self, seconds, Progress},
};
use bed::{Bed, Family, REVERSE_SLICE_PORTS};
use testbed::{
    apps,
    cluster::{self, Cluster, NodeProfile, PodLayout},
    control_plane::{self, App, State},
};

#[derive(clap::Args)]
pub struct Args {
    /// Run only these scenarios (numbers, as the suite lists them: 1,5,13).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<usize>,
    /// Leave the cluster running afterwards (remove it with `cargo xtask demo --down`).
    #[arg(long, conflicts_with = "matrix")]
    pub keep: bool,
    /// The nodes' net.ipv4.conf.{all,default}.rp_filter: 2 (loose, systemd's
    /// default on Debian, Ubuntu and most others), 1 (strict, RHEL) or 0.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub rp_filter: u8,
    /// How pods attach to their node: routed (Calico) or bridged (flannel's cni0).
    #[arg(long, value_enum, default_value_t = PodLayout::Routed)]
    pub pod_layout: PodLayout,
    /// Whether pods' processes run below the node's cgroup, where the
    /// agent's socket-level hooks act on them (as the kubelet places them),
    /// or outside it, so that only the packet path serves them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pods_in_hook_cgroup: bool,
    /// The LAN side of each node's uplink runs XDP, so the uplinks take XDP
    /// frames as NICs do and the agent serves them with XDP (otherwise tc).
    #[arg(long)]
    pub uplinks_take_xdp: bool,
    /// Run every combination of --rp-filter, --pod-layout and
    /// --pods-in-hook-cgroup (12 clusters, one after the other) and print
    /// a table of them; ignores those three flags (--uplinks-take-xdp
    /// applies to all 12).
    #[arg(long)]
    pub matrix: bool,
}

impl Args {
    fn profile(&self) -> NodeProfile {
        NodeProfile {
            rp_filter: self.rp_filter,
            pod_layout: self.pod_layout,
            pods_in_hook_cgroup: self.pods_in_hook_cgroup,
            uplinks_take_xdp: self.uplinks_take_xdp,
        }
    }
}

/// Every node profile the matrix covers.
fn matrix(uplinks_take_xdp: bool) -> Vec<NodeProfile> {
    let mut cells = Vec::new();
    for rp_filter in [2, 1, 0] {
        for pod_layout in [PodLayout::Routed, PodLayout::Bridged] {
            for pods_in_hook_cgroup in [true, false] {
                cells.push(NodeProfile {
                    rp_filter,
                    pod_layout,
                    pods_in_hook_cgroup,
                    uplinks_take_xdp,
                });
            }
        }
    }
    cells
}

/// What a scenario that did not fail found.
pub enum Verdict {
    Pass,
    /// The feature is not there yet; the scenario ran and says how it went,
    /// but neither passes nor fails the suite.
    NotYetSupported(String),
}

#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&mut Bed) -> Result<Verdict>,
    /// The family of every address the bed hands the scenario.
    pub family: Family,
}

impl Scenario {
    /// The name as the suite lists it: IPv6 scenarios say so first.
    fn title(&self) -> String {
        match self.family {
            Family::V4 => self.name.to_string(),
            Family::V6 => format!("IPv6: {}", self.name),
        }
    }
}

const SETUP_STEPS: usize = 8;
/// The probe pods' TCP port every single-port Service targets.
pub const PROBE_PORT: i64 = 8080;

pub fn run_cmd(args: &Args) -> Result<()> {
    let cells = if args.matrix {
        matrix(args.uplinks_take_xdp)
    } else {
        vec![args.profile()]
    };
    run_cells(&cells, &args.only, args.keep)
}

/// Runs the scenarios (all, or the numbers in `only`) on a cluster of each
/// profile in turn; fails if any scenario failed or a cluster did not come
/// up. With more than one cell, ends with a table of them.
pub fn run_cells(cells: &[NodeProfile], only: &[usize], keep: bool) -> Result<()> {
    prepare::preflight()?;
    progress::catch_interrupts();
    let scenarios = scenarios::all();
    for n in only {
        if !(1..=scenarios.len()).contains(n) {
            bail!(
                "--only {n}: the scenarios are numbered 1 to {}",
                scenarios.len()
            );
        }
    }
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for (i, profile) in cells.iter().enumerate() {
        if cells.len() > 1 {
            step(&format!("cell {}/{}: {profile}", i + 1, cells.len()));
        }
        let outcome = run_cell(*profile, &scenarios, only, keep)?;
        outcomes.push((*profile, outcome));
    }
    if cells.len() > 1 {
        matrix_summary(&outcomes);
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| !o.passed())
        .map(|(p, o)| format!("{p}: {}", o.line()))
        .collect();
    let total = seconds(started.elapsed());
    if !failed.is_empty() {
        bail!(
            "end-to-end suite failed ({total}):\n  {}",
            failed.join("\n  ")
        );
    }
    eprintln!("end-to-end suite passed ({total})");
    Ok(())
}

/// How one cell went.
struct CellOutcome {
    passed: usize,
    failed: usize,
    not_yet: usize,
    /// Why the cluster did not come up, if it did not.
    setup_error: Option<String>,
    took: Duration,
}

impl CellOutcome {
    fn passed(&self) -> bool {
        self.failed == 0 && self.setup_error.is_none()
    }

    fn line(&self) -> String {
        if let Some(err) = &self.setup_error {
            return format!("cluster did not come up: {err}");
        }
        let mut line = format!("{} passed, {} failed", self.passed, self.failed);
        if self.not_yet > 0 {
            line += &format!(", {} not yet supported", self.not_yet);
        }
        line
    }
}

/// One cluster of `profile`: up, the scenarios, down (unless `keep`).
/// Errors only on an interrupt or a failed teardown; a cluster that does
/// not come up is the cell's failure.
fn run_cell(
    profile: NodeProfile,
    scenarios: &[Scenario],
    only: &[usize],
    keep: bool,
) -> Result<CellOutcome> {
    let started = Instant::now();
    let mut bed = match setup(profile) {
        Ok(bed) => bed,
        Err(err) => {
            progress::check_interrupt()?;
            eprintln!("      cluster setup failed: {err:#}");
            return Ok(CellOutcome {
                passed: 0,
                failed: 0,
                not_yet: 0,
                setup_error: Some(format!("{err:#}")),
                took: started.elapsed(),
            });
        }
    };
    let mut results = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let number = i + 1;
        if !only.is_empty() && !only.contains(&number) {
            continue;
        }
        progress::check_interrupt()?;
        let title = scenario.title();
        eprintln!("\n[{number:>2}/{}] {title}", scenarios.len());
        bed.family = scenario.family;
        let t = Instant::now();
        let result = (scenario.run)(&mut bed);
        let took = t.elapsed();
        let status = match &result {
            Ok(Verdict::Pass) => {
                eprintln!("      PASS ({})", seconds(took));
                Status::Pass
            }
            Ok(Verdict::NotYetSupported(why)) => {
                eprintln!("      NOT YET SUPPORTED ({}): {why}", seconds(took));
                Status::NotYet
            }
            Err(err) => {
                eprintln!("      FAIL ({}): {err:#}", seconds(took));
                eprintln!("{}", bed.evidence());
                Status::Fail
            }
        };
        results.push((number, title, status, took));
    }
    if keep {
        eprintln!(
            "\nThe cluster stays up (run {}); its manifests: {}; remove it with: cargo xtask demo --down",
            bed.cluster.run.id,
            bed.cluster.run.dir.display()
        );
        bed.cluster.keep()?;
    } else {
        let t = Instant::now();
        bed.cluster.remove()?;
        step(&format!("tore the cluster down ({})", seconds(t.elapsed())));
    }
    let outcome = summary(profile, &results, started.elapsed());
    Ok(outcome)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    NotYet,
}

fn summary(
    profile: NodeProfile,
    results: &[(usize, String, Status, Duration)],
    took: Duration,
) -> CellOutcome {
    eprintln!("\nend-to-end scenarios ({profile}):");
    for (number, name, status, took) in results {
        let status = match status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotYet => "NOT YET SUPPORTED",
        };
        eprintln!("  {number:>2}  {status:<17}  {:>7}  {name}", seconds(*took));
    }
    let count = |s: Status| results.iter().filter(|r| r.2 == s).count();
    let outcome = CellOutcome {
        passed: count(Status::Pass),
        failed: count(Status::Fail),
        not_yet: count(Status::NotYet),
        setup_error: None,
        took,
    };
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.2 == Status::Fail)
        .map(|r| r.0.to_string())
        .collect();
    let mut line = outcome.line();
    if !failed.is_empty() {
        line += &format!(" (failed: {})", failed.join(","));
    }
    eprintln!("{line} ({})", seconds(took));
    outcome
}

/// The table of cells: their profile, counts and time.
fn matrix_summary(outcomes: &[(NodeProfile, CellOutcome)]) {
    eprintln!("\nend-to-end matrix:");
    eprintln!(
        "  {:<9}  {:<7}  {:<13}  {:<7}  {:>6}  {:>6}  {:>7}  {:>7}  verdict",
        "rp_filter", "layout", "pods' cgroup", "uplinks", "pass", "fail", "not yet", "time"
    );
    for (profile, outcome) in outcomes {
        let cgroup = if profile.pods_in_hook_cgroup {
            "in hook's"
        } else {
            "outside"
        };
        let verdict = match &outcome.setup_error {
            Some(err) => format!("SETUP FAILED: {}", err.lines().next().unwrap_or_default()),
            None if outcome.failed > 0 => "FAIL".into(),
            None => "PASS".into(),
        };
        eprintln!(
            "  {:<9}  {:<7}  {:<13}  {:<7}  {:>6}  {:>6}  {:>7}  {:>7}  {verdict}",
            profile.rp_filter,
            profile.pod_layout.to_string(),
            cgroup,
            if profile.uplinks_take_xdp {
                "XDP"
            } else {
                "tc"
            },
            outcome.passed,
            outcome.failed,
            outcome.not_yet,
            seconds(outcome.took),
        );
    }
}

/// Builds everything and brings the cluster up: the demo's seed pods and
/// Services plus the suite's own.
fn setup(profile: NodeProfile) -> Result<Bed> {
    let mut p = Progress::new(SETUP_STEPS);
    let redis = p.step("looking for redis-server", false, prepare::redis_server)?;
    p.step("building the eBPF object", true, ebpf::build)?;
    let bin = p.step(
        "building xdplb, the counter app and e2e-probe",
        true,
        || prepare::build(&["counter", "e2e-probe"]),
    )?;
    let host_hooks = apps::agent_has_cgroup_path(&bin)?;
    p.step(
        "removing leftovers of killed runs",
        false,
        prepare::remove_leftovers,
    )?;
    let nodes = cluster::nodes();
    let state = p.step(
        "control plane: the seed manifests, the suite's probe pods and Services",
        false,
        || {
            let mut state = control_plane::from_manifests(
                &workspace_root().join("deploy/examples"),
                &nodes,
                control_plane::LbProvider::StandIn,
            )?;
            add_probe_pods(&mut state)?;
            state.add_services(services())?;
            Ok(state)
        },
    )?;
    let cluster = p.step(
        &format!("creating namespaces: lan bridge, router, client, node1, node2 and the pods ({profile})"),
        false,
        || Cluster::with_pods(nodes.clone(), profile, &state),
    )?;
    let mut bed = Bed {
        cluster,
        family: Family::V4,
        state,
        bin,
        redis,
        agents: BTreeMap::new(),
        host_hooks,
    };
    p.step(
        "starting an xdplb agent on each node and the pods' programs",
        false,
        || start(&mut bed),
    )?;
    p.step("waiting for the agents and the pods", false, || {
        for node in bed.node_names() {
            progress::wait_agent(&mut bed.cluster, &bed.state, &node)?;
        }
        for pod in bed.state.pods.clone() {
            progress::wait_pod(&mut bed.cluster, &pod)?;
        }
        Ok(())
    })?;
    eprintln!(
        "      {} pods, {} Services; agents {} --cgroup-path; logs in {}",
        bed.state.pods.len(),
        bed.state.services.len(),
        if bed.host_hooks {
            "take"
        } else {
            "do not take"
        },
        bed.cluster.run.logs().display()
    );
    Ok(bed)
}

fn start(bed: &mut Bed) -> Result<()> {
    bed.publish()?;
    for node in bed.node_names() {
        let label = format!("agent-{node}");
        apps::start_agent(&mut bed.cluster, &node, &bed.bin, &label)?;
        bed.agents.insert(node, label);
    }
    for pod in bed.state.pods.clone() {
        apps::start_pod(&mut bed.cluster, &pod, &bed.bin, &bed.redis)?;
    }
    Ok(())
}

/// A client pod and a web pod on each node. The web pods name their ports
/// (`metrics` differs between them, so their EndpointSlices differ too).
fn add_probe_pods(state: &mut State) -> Result<()> {
    for (n, node) in [(1, "node1"), (2, "node2")] {
        let mut client = state.place_pod(&format!("client-{n}"), node, App::Probe)?;
        client.labels = labels(&[("app", "client")]);
        state.add_pod(client)?;
        let name = format!("web-{n}");
        let mut web = state.place_pod(&name, node, App::Probe)?;
        web.labels = labels(&[("app", "web"), ("instance", &name)]);
        let metrics = if n == 1 { 8081 } else { 8083 };
        web.named_ports = [
            ("http".to_string(), PROBE_PORT),
            ("metrics".into(), metrics),
        ]
        .into();
        state.add_pod(web)?;
    }
    Ok(())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A Service as a manifest would have it, before the API server allocates
/// its addresses: dual-stack, IPv4 first, so that each scenario runs in
/// both families on the same Services (issue #14).
pub fn service(name: &str, kind: &str, selector: Value, ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "type": kind,
            "selector": selector,
            "ports": ports,
            "ipFamilyPolicy": "PreferDualStack",
            "ipFamilies": ["IPv4", "IPv6"],
        },
    })
}

/// Port 80 to the probe's port 8080.
pub fn web_port() -> Value {
    json!([{ "port": 80, "targetPort": PROBE_PORT, "protocol": "TCP" }])
}

/// The suite's Services. The ones scenarios add and remove are made by the
/// scenarios.
fn services() -> Vec<Value> {
    let web = json!({ "app": "web" });
    let node1 = json!({ "instance": "web-1" });
    let node2 = json!({ "instance": "web-2" });
    let mut multi = service(
        "multi",
        "ClusterIP",
        web.clone(),
        json!([
            { "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" },
            { "name": "metrics", "port": 81, "targetPort": "metrics", "protocol": "TCP" },
        ]),
    );
    multi["metadata"]["annotations"] = json!({ REVERSE_SLICE_PORTS: "true" });
    let mut np_cluster = service(
        "np-cluster",
        "NodePort",
        web.clone(),
        json!([
            { "name": "tcp", "port": 80, "targetPort": PROBE_PORT, "protocol": "TCP" },
            { "name": "udp", "port": 80, "targetPort": PROBE_PORT, "protocol": "UDP" },
        ]),
    );
    np_cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
    let mut np_local = service("np-local", "NodePort", web.clone(), web_port());
    np_local["spec"]["externalTrafficPolicy"] = json!("Local");
    let mut lb_pool = service("lb-pool", "LoadBalancer", web.clone(), web_port());
    lb_pool["spec"]["loadBalancerClass"] = json!("xdplb.io/l2");
    // The agents' pools are IPv4.
    lb_pool["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    lb_pool["spec"]["ipFamilies"] = json!(["IPv4"]);
    let mut sticky = service("sticky", "NodePort", web.clone(), web_port());
    sticky["spec"]["sessionAffinity"] = json!("ClientIP");
    vec![
        service("basic", "ClusterIP", json!({ "app": "basic" }), web_port()),
        multi,
        service("web", "ClusterIP", web.clone(), web_port()),
        service("web-node1", "ClusterIP", node1.clone(), web_port()),
        service("web-node2", "ClusterIP", node2.clone(), web_port()),
        np_cluster,
        np_local,
        service(
            "lb-web",
            "LoadBalancer",
            web.clone(),
            json!([{ "port": 8000, "targetPort": PROBE_PORT, "protocol": "TCP" }]),
        ),
        lb_pool,
        service(
            "empty",
            "NodePort",
            json!({ "app": "nothing" }),
            json!([
                { "name": "tcp", "port": 80, "targetPort": PROBE_PORT, "protocol": "TCP" },
                { "name": "udp", "port": 80, "targetPort": PROBE_PORT, "protocol": "UDP" },
            ]),
        ),
        sticky,
        service(
            "dns",
            "ClusterIP",
            web,
            json!([
                { "name": "dns-tcp", "port": 53, "targetPort": 8053, "protocol": "TCP" },
                { "name": "dns-udp", "port": 53, "targetPort": 8054, "protocol": "UDP" },
            ]),
        ),
        service("np-node1", "NodePort", node1, web_port()),
        service("np-node2", "NodePort", node2, web_port()),
    ]
}
