//! `cargo xtask bench --testbed`: UDP datagrams per second delivered to a
//! pod on the demo's two-node namespace cluster, with no proxy, with
//! kube-proxy's iptables and nftables rules for 10,000 Services, and with
//! xdplb serving the same Services.
//!
//! Every column gets a fresh cluster, so no column inherits another's rules,
//! programs or connection tracking. The nodes are set up as a systemd host
//! leaves them (loose reverse-path filter, no accept_local), whatever the
//! demo's defaults; pods keep the demo's routed layout. A sender pod `src`
//! on node1 and a sink pod on node2; the client behind the router. Every
//! path is measured in IPv4 and in IPv6, the Services dual-stack when both
//! are.
mod family;
mod proof;
mod report;
mod services;

use std::{
    fmt,
    fs::{self, File},
    io::{BufRead, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    bootstrap::{run, step},
    ebpf::{self, workspace_root},
    prepare,
    progress::{self, check_interrupt, seconds, wait_for},
};
use ::testbed::{
    apps,
    cluster::{self, Cluster, NodeProfile, NODE_LAN_IFACE},
    command,
    control_plane::{App, Pod},
    netns,
};
pub use family::Family;
use report::Results;
use services::Services;

const RUNS: usize = 3;
const WINDOW: Duration = Duration::from_secs(3);
/// The sink's warm-up before its window, and a margin after it.
const SEND_EXTRA: Duration = Duration::from_millis(1000);
const FLOWS: usize = 64;
/// Source addresses a new-flow sender uses per run; a run never reuses
/// another's, so every (address, port) of a cell is new.
const SOURCES_PER_RUN: u8 = 64;
const FIRST_EXTRA_SOURCE: u8 = 64;
/// Loading 10,000 Services on a busy 2-core machine, unoptimised agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Bounds a sender or sink that would hang despite its own deadlines.
const PROCESS_LIMIT: &str = "30";

const SRC_POD: &str = "src";
const SINK_POD: &str = "sink";
/// The pods' host number in their node's pod CIDR, in both families.
const POD_HOST: u8 = 2;
/// The cgroup below the agent's that holds a pod's sender "under the hooks".
const POD_CGROUP: &str = "bench-pod";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Column {
    NoProxy,
    Iptables,
    Nftables,
    Xdplb,
}

impl Column {
    pub const ALL: [Column; 4] = [
        Column::NoProxy,
        Column::Iptables,
        Column::Nftables,
        Column::Xdplb,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::NoProxy => "no proxy",
            Column::Iptables => "iptables",
            Column::Nftables => "nftables",
            Column::Xdplb => "xdplb",
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

/// What a row sends, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    EastWestHooks,
    EastWestFlows,
    EastWestNewFlow,
    NorthSouthFlows,
    NorthSouthNewFlow,
}

impl Traffic {
    pub const ALL: [Traffic; 5] = [
        Traffic::EastWestHooks,
        Traffic::EastWestFlows,
        Traffic::EastWestNewFlow,
        Traffic::NorthSouthFlows,
        Traffic::NorthSouthNewFlow,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Traffic::EastWestHooks => "east-west, pods under the socket hooks, 64 connected flows",
            Traffic::EastWestFlows => "east-west, per-packet pod path, 64 flows, 10k Services",
            Traffic::EastWestNewFlow => {
                "east-west, per-packet, a new flow per packet, 10k Services"
            }
            Traffic::NorthSouthFlows => {
                "north-south to a NodePort, endpoint on the other node, 64 flows, 10k Services"
            }
            Traffic::NorthSouthNewFlow => "north-south, a new flow per packet, 10k Services",
        }
    }

    pub fn short(self) -> [&'static str; 2] {
        match self {
            Traffic::EastWestHooks => ["east-west", "socket hooks"],
            Traffic::EastWestFlows => ["east-west", "64 flows"],
            Traffic::EastWestNewFlow => ["east-west", "new flow/packet"],
            Traffic::NorthSouthFlows => ["north-south", "64 flows"],
            Traffic::NorthSouthNewFlow => ["north-south", "new flow/packet"],
        }
    }

    /// Only a proxy with socket hooks has a hooks path to measure.
    fn applies(self, column: Column) -> bool {
        self != Traffic::EastWestHooks || matches!(column, Column::NoProxy | Column::Xdplb)
    }

    fn north_south(self) -> bool {
        matches!(self, Traffic::NorthSouthFlows | Traffic::NorthSouthNewFlow)
    }

    fn new_flows(self) -> bool {
        matches!(self, Traffic::EastWestNewFlow | Traffic::NorthSouthNewFlow)
    }
}

/// A row of the table: a kind of traffic in one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub family: Family,
    pub traffic: Traffic,
}

impl Row {
    /// IPv4's rows, then IPv6's, in the table's order.
    pub fn all() -> impl Iterator<Item = Row> {
        Family::ALL.into_iter().flat_map(|family| {
            Traffic::ALL
                .into_iter()
                .map(move |traffic| Row { family, traffic })
        })
    }

    /// IPv4's titles are those of the single-family table before.
    pub fn title(self) -> String {
        match self.family {
            Family::Ipv4 => self.traffic.title().to_owned(),
            Family::Ipv6 => format!("IPv6: {}", self.traffic.title()),
        }
    }

    pub fn short(self) -> [&'static str; 3] {
        let [path, flows] = self.traffic.short();
        [path, flows, self.family.title()]
    }
}

/// One run of one cell.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Datagrams per second the sink received in its window.
    pub rate: f64,
    pub sent: u64,
    /// Everything the sink received, window or not.
    pub received: u64,
}

/// Every cell, or only those of `columns`, `rows` (from 1) and `families`
/// where given: a partial table for working on one path. The Services have
/// the families of the rows measured.
pub fn run_cmd(columns: &[Column], rows: &[usize], families: &[Family]) -> Result<()> {
    let started = Instant::now();
    let load_before = load_average();
    prepare::preflight()?;
    progress::catch_interrupts();
    let tools = ensure_netfilter_tools()?;
    ebpf::build()?;
    let bin = build()?;
    prepare::remove_leftovers()?;
    let nodes = cluster::nodes();
    let picked: Vec<Row> = Row::all()
        .enumerate()
        .filter(|(i, r)| {
            (rows.is_empty() || rows.contains(&(i + 1)))
                && (families.is_empty() || families.contains(&r.family))
        })
        .map(|(_, r)| r)
        .collect();
    ensure!(!picked.is_empty(), "no row left to measure");
    let mut measured: Vec<Family> = picked.iter().map(|r| r.family).collect();
    measured.dedup();
    let sink = Family::ALL.map(|f| f.pod_addr(&nodes[1], POD_HOST));
    let services = Services::new(sink, &nodes[1].name, measured);
    let mut results = Results { cells: Vec::new() };
    for column in Column::ALL
        .into_iter()
        .filter(|c| columns.is_empty() || columns.contains(c))
    {
        check_interrupt()?;
        let setup = Instant::now();
        step(&format!("column {column}: building a fresh cluster"));
        let bed = Bed::create(column, &bin, &services)?;
        step(&format!(
            "column {column}: cluster ready in {}",
            seconds(setup.elapsed())
        ));
        for &row in picked.iter().filter(|r| r.traffic.applies(column)) {
            let counters = bed.counters(row, &services)?;
            let mut samples = Vec::new();
            for run in 0..RUNS {
                check_interrupt()?;
                let sample = bed.measure(row, run, &services)?;
                eprintln!(
                    "      {column:<9} {:<84} run {}: {:>10}  (sent {}, received {})",
                    row.title(),
                    run + 1,
                    report::rate(sample.rate),
                    sample.sent,
                    sample.received
                );
                samples.push(sample);
            }
            if let Some(before) = counters {
                let received = samples.iter().map(|s| s.received).sum();
                let after = bed.counters(row, &services)?.context("counters vanished")?;
                let shown = before.check(&after, row, received)?;
                step(&format!("{column}, {}: {shown}", row.title()));
            }
            results.cells.push((row, column, samples));
        }
        bed.remove()?;
    }
    let context = format!(
        "{RUNS} runs per cell, {} s each; kernel {}; iptables: {}; nftables: {}; {} CPUs, load average before the run: {load_before}; the whole bench took {}.",
        WINDOW.as_secs(),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        tools.0,
        tools.1,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        seconds(started.elapsed())
    );
    let table = results.markdown(&context);
    let out = target_dir().join("bench-testbed");
    fs::create_dir_all(&out)?;
    fs::write(out.join("table.md"), &table)?;
    fs::write(out.join("plot.svg"), results.svg())?;
    println!("\n{table}");
    println!(
        "Written: {} and {}",
        out.join("table.md").display(),
        out.join("plot.svg").display()
    );
    Ok(())
}

/// One column's cluster: the namespaces, and the pod cgroup below node1's,
/// which must go before the cluster's teardown removes node1's cgroup.
struct Bed {
    pod_cgroup: Option<PodCgroup>,
    cluster: Cluster,
    column: Column,
    traffic: PathBuf,
    /// Holds `xdplb`, which reads the agents' counters.
    bin: PathBuf,
}

struct PodCgroup(PathBuf);

impl Drop for PodCgroup {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir(&self.0) {
            eprintln!("bench: removing cgroup {}: {err}", self.0.display());
        }
    }
}

impl Bed {
    fn create(column: Column, bin: &Bins, services: &Services) -> Result<Self> {
        let nodes = cluster::nodes();
        // The demo's default nodes: systemd's loose reverse-path filtering,
        // forwarding on, offloads on, routed pods.
        let mut cluster = Cluster::create(nodes.clone(), NodeProfile::default())?;
        // The client reaches pods directly only through node1, as a network
        // routing the pod CIDRs to a node would.
        for &family in &services.families {
            netns::exec(
                &cluster.run.ns("router"),
                "ip",
                &[
                    "route",
                    "add",
                    family.cluster_cidr(),
                    "via",
                    &family.node_addr(&nodes[0]).to_string(),
                ],
            )?;
        }
        for (name, node) in [(SRC_POD, &nodes[0]), (SINK_POD, &nodes[1])] {
            let pod = Pod {
                name: name.into(),
                node: node.name.clone(),
                addr: family::pod_v4(node, POD_HOST),
                addr6: family::pod_v6(node, POD_HOST),
                app: App::Probe,
                env: Vec::new(),
                labels: Default::default(),
                named_ports: Default::default(),
            };
            cluster.add_pod(
                &pod,
                &format!("127.0.0.1\tlocalhost\n{}\t{name}\n", pod.addr),
            )?;
        }
        for &family in &services.families {
            add_sources(&cluster, family)?;
        }
        let pod_cgroup = match cluster.run.cgroup(&nodes[0].name) {
            Some(node) => {
                let dir = node.join(POD_CGROUP);
                fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Some(PodCgroup(dir))
            }
            None => None,
        };
        match column {
            Column::NoProxy => {}
            Column::Iptables => {
                for &family in &services.families {
                    let program = family.restore_program();
                    load_rules(&cluster, family, program, &[], services.iptables(family))?;
                }
            }
            Column::Nftables => {
                for &family in &services.families {
                    load_rules(&cluster, family, "nft", &["-f"], services.nftables(family))?;
                }
            }
            Column::Xdplb => start_agents(&mut cluster, &bin.dir, services)?,
        }
        check_proxy(&cluster, column)?;
        Ok(Self {
            pod_cgroup,
            cluster,
            column,
            traffic: bin.traffic.clone(),
            bin: bin.dir.clone(),
        })
    }

    fn remove(mut self) -> Result<()> {
        drop(self.pod_cgroup.take());
        self.cluster.remove()
    }

    /// Where the row's sender sends in this column.
    fn destination(&self, row: Row, services: &Services) -> SocketAddr {
        let family = row.family;
        let nodes = cluster::nodes();
        match (self.column, row.traffic.north_south()) {
            (Column::NoProxy, _) => {
                SocketAddr::new(family.pod_addr(&nodes[1], POD_HOST), services::TARGET_PORT)
            }
            (_, true) => SocketAddr::new(family.node_addr(&nodes[0]), services::NODE_PORT),
            (_, false) => SocketAddr::new(services.measured().cluster_ip(family), services::PORT),
        }
    }

    /// The counters of node1's agent that show which path the row took, in
    /// the xdplb column.
    fn counters(&self, row: Row, services: &Services) -> Result<Option<proof::Counters>> {
        if self.column != Column::Xdplb {
            return Ok(None);
        }
        let node = &self.cluster.nodes[0].name;
        let frontend = self.destination(row, services);
        proof::Counters::read(&self.bin, &self.cluster.run, node, frontend).map(Some)
    }

    fn measure(&self, row: Row, run: usize, services: &Services) -> Result<Sample> {
        let family = row.family;
        let dst = self.destination(row, services);
        let (role, base) = if row.traffic.north_south() {
            ("client", family.client())
        } else {
            (SRC_POD, family.pod_addr(&cluster::nodes()[0], POD_HOST))
        };
        let send_secs = format!("{:.1}", (WINDOW + SEND_EXTRA).as_secs_f64());
        let mut args = vec!["timeout".to_owned(), PROCESS_LIMIT.to_owned()];
        args.push(self.traffic.to_string_lossy().into_owned());
        if row.traffic.new_flows() {
            let first = FIRST_EXTRA_SOURCE + SOURCES_PER_RUN * run as u8;
            args.extend([
                "new-flows".into(),
                dst.to_string(),
                family::with_last_byte(base, first).to_string(),
                SOURCES_PER_RUN.to_string(),
                send_secs,
            ]);
        } else {
            args.extend([
                "flows".into(),
                dst.to_string(),
                FLOWS.to_string(),
                send_secs,
            ]);
        }
        let mut sender = Command::new("ip");
        sender.args(["netns", "exec", &self.cluster.run.ns(role)]);
        if row.traffic == Traffic::EastWestHooks {
            let cgroup = &self
                .pod_cgroup
                .as_ref()
                .context("the socket-hook row needs cgroup v2")?
                .0;
            // The shell moves itself into the pod's cgroup, then becomes
            // the sender there.
            sender = Command::new("sh");
            sender
                .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                .arg(cgroup.join("cgroup.procs"))
                .args(["ip", "netns", "exec", &self.cluster.run.ns(role)]);
        }
        sender.args(&args);
        let (mut sink, mut sink_out) = self.start_sink(family)?;
        let sent = command::stdout(&mut sender).and_then(|out| {
            out.trim()
                .parse::<u64>()
                .with_context(|| format!("sender printed {out:?}"))
        });
        let mut line = String::new();
        sink_out.read_line(&mut line)?;
        let status = sink.wait()?;
        let sent = sent?;
        ensure!(status.success(), "the sink failed ({status})");
        let fields: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("sink printed {line:?}"))?;
        let [counted, secs, received] = fields[..] else {
            bail!("sink printed {line:?}");
        };
        Ok(Sample {
            rate: if secs > 0.0 { counted / secs } else { 0.0 },
            sent,
            received: received as u64,
        })
    }

    /// Starts the sink in its pod and waits until it listens.
    fn start_sink(&self, family: Family) -> Result<(Child, BufReader<ChildStdout>)> {
        let bind = SocketAddr::new(family.unspecified(), services::TARGET_PORT);
        let mut sink = Command::new("ip")
            .args(["netns", "exec", &self.cluster.run.ns(SINK_POD)])
            .args(["timeout", PROCESS_LIMIT])
            .arg(&self.traffic)
            .args(["sink", &bind.to_string()])
            .arg(format!("{}", WINDOW.as_secs_f64()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the sink")?;
        let mut out = BufReader::new(sink.stdout.take().context("sink stdout")?);
        let mut ready = String::new();
        out.read_line(&mut ready)?;
        if ready.trim() != "ready" {
            let status = sink.wait()?;
            bail!("the sink did not start ({status})");
        }
        Ok((sink, out))
    }
}

/// The addresses of `family` new-flow senders use as sources, on the
/// sender's own interface so that replies would have somewhere to go: the
/// client's on its LAN, the pod's as further host addresses with node1
/// routing them to its veth. IPv6 ones skip duplicate address detection,
/// as the cluster's own do.
fn add_sources(cluster: &Cluster, family: Family) -> Result<()> {
    let last = FIRST_EXTRA_SOURCE + (SOURCES_PER_RUN * RUNS as u8 - 1);
    let extras = |base| (FIRST_EXTRA_SOURCE..=last).map(move |n| family::with_last_byte(base, n));
    let nodad = if family == Family::Ipv6 { " nodad" } else { "" };
    let lan_len = match family {
        Family::Ipv4 => 24,
        Family::Ipv6 => 64,
    };
    let client: String = extras(family.client())
        .map(|a| format!("addr add {a}/{lan_len} dev eth0{nodad}\n"))
        .collect();
    ip_batch(&cluster.run.ns("client"), &client)?;
    let host = family.host_len();
    let pod_base = family.pod_addr(&cluster.nodes[0], POD_HOST);
    let pod: String = extras(pod_base)
        .map(|a| format!("addr add {a}/{host} dev eth0{nodad}\n"))
        .collect();
    ip_batch(&cluster.run.ns(SRC_POD), &pod)?;
    let veth = cluster::pod_iface(SRC_POD);
    let routes: String = extras(pod_base)
        .map(|a| format!("route add {a}/{host} dev {veth}\n"))
        .collect();
    ip_batch(&cluster.run.ns(&cluster.nodes[0].name), &routes)
}

fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(commands.as_bytes())?;
    let status = child.wait()?;
    ensure!(status.success(), "ip -n {ns} -batch failed ({status})");
    Ok(())
}

/// Loads `rules` with `program args` on every node, as kube-proxy runs on
/// each. In parallel: the kernel takes about a minute of CPU time per node
/// to take in 10,000 Services' nftables chains.
fn load_rules(
    cluster: &Cluster,
    family: Family,
    program: &str,
    args: &[&str],
    rules: String,
) -> Result<()> {
    let file = cluster.run.dir.join(format!("{program}-{family}.rules"));
    fs::write(&file, rules)?;
    let started = Instant::now();
    let loads = cluster
        .nodes
        .iter()
        .map(|node| {
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", &cluster.run.ns(&node.name), program])
                .args(args);
            if args.is_empty() {
                command.stdin(File::open(&file)?);
            } else {
                command.arg(&file).stdin(Stdio::null());
            }
            Ok((node, command.stderr(Stdio::piped()).spawn()?))
        })
        .collect::<Result<Vec<_>>>()?;
    for (node, child) in loads {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{program} on {} failed ({}): {}",
            node.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    step(&format!(
        "{program} loaded {} Services' {family} rules on every node in {}",
        services::COUNT,
        seconds(started.elapsed())
    ));
    Ok(())
}

fn start_agents(cluster: &mut Cluster, bin: &Path, services: &Services) -> Result<()> {
    let nodes = cluster.nodes.clone();
    for node in &nodes {
        services.write_manifests(&cluster.run.manifests(&node.name), &nodes)?;
        apps::start_agent(cluster, &node.name, bin, &format!("agent-{}", node.name))?;
    }
    let started = Instant::now();
    for (node, pod) in nodes.iter().zip([SRC_POD, SINK_POD]) {
        let serves = apps::agent_serves(&cluster.run, &node.name, [pod]);
        wait_for(
            &format!("the agent on {}", node.name),
            AGENT_TIMEOUT,
            || cluster.check_processes(),
            serves,
        )?;
    }
    step(&format!(
        "agents synced {} Services in {}",
        services::COUNT,
        seconds(started.elapsed())
    ));
    let labels: Vec<String> = nodes.iter().map(|n| format!("agent-{}", n.name)).collect();
    let pids: Vec<u32> = labels.iter().filter_map(|l| cluster.pid(l)).collect();
    ensure!(pids.len() == labels.len(), "an agent is not running");
    let settled = Instant::now();
    wait_for(
        "the agents to go idle",
        AGENT_TIMEOUT,
        || cluster.check_processes(),
        || agents_idle(&pids),
    )?;
    step(&format!("agents idle after {}", seconds(settled.elapsed())));
    Ok(())
}

/// Whether the agents together used under 2% of a CPU over the last 0.5 s.
/// Ready is not idle: after its first sync an agent still builds its
/// metrics, health servers and caches for a few seconds, and a cell
/// measured meanwhile shares the CPUs with it (the first cells of a column
/// read up to 40% low).
fn agents_idle(pids: &[u32]) -> bool {
    let cpu_ticks = || -> Option<u64> {
        pids.iter()
            .map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // Fields after the parenthesised command name, which may
                // hold spaces: utime and stime are the 12th and 13th.
                let rest = &stat[stat.rfind(')')? + 2..];
                let mut fields = rest.split_whitespace().skip(11);
                let utime: u64 = fields.next()?.parse().ok()?;
                let stime: u64 = fields.next()?.parse().ok()?;
                Some(utime + stime)
            })
            .sum()
    };
    let window = Duration::from_millis(500);
    let Some(before) = cpu_ticks() else {
        return false;
    };
    std::thread::sleep(window);
    let Some(after) = cpu_ticks() else {
        return false;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (after - before) as f64 / hz < window.as_secs_f64() * 0.02
}

/// Fails unless exactly the column's proxy is in place on every node: no
/// XDP or tc program outside the xdplb column, no netfilter rules outside
/// the rule columns.
fn check_proxy(cluster: &Cluster, column: Column) -> Result<()> {
    for node in &cluster.nodes {
        let ns = cluster.run.ns(&node.name);
        let links = netns::exec(&ns, "ip", &["-d", "link", "show"])?;
        let ingress = netns::exec(
            &ns,
            "tc",
            &["filter", "show", "dev", NODE_LAN_IFACE, "ingress"],
        )?;
        // Debian 12's bpftool and tc do not list tcx links: the agent's pin
        // of one stands for it.
        let bpf = links.contains("xdp")
            || !ingress.trim().is_empty()
            || apps::link_pinned(&cluster.run.pin_path(&node.name), NODE_LAN_IFACE);
        // Tables rather than the ruleset: listing 10,000 Services' rules takes seconds.
        let tables = netns::exec(&ns, "nft", &["list", "tables"])?;
        let rules = !tables.trim().is_empty();
        ensure!(
            bpf == (column == Column::Xdplb),
            "{column}: BPF programs {} on {}",
            if bpf { "attached" } else { "missing" },
            node.name
        );
        ensure!(
            rules == matches!(column, Column::Iptables | Column::Nftables),
            "{column}: netfilter rules {} on {}",
            if rules { "present" } else { "missing" },
            node.name
        );
    }
    Ok(())
}

/// The directories of the debug agent and the optimised traffic program:
/// the sender must not be the bottleneck it measures.
struct Bins {
    dir: PathBuf,
    traffic: PathBuf,
}

fn build() -> Result<Bins> {
    let dir = prepare::build(&[])?;
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "xtask",
            "--bin",
            "bench-traffic",
        ])
        .current_dir(workspace_root()))?;
    Ok(Bins {
        dir,
        traffic: target_dir().join("release/bench-traffic"),
    })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or(workspace_root().join("target"), PathBuf::from)
}

/// iptables-restore and nft, from Debian when missing; returns their
/// versions.
fn ensure_netfilter_tools() -> Result<(String, String)> {
    let missing: Vec<&str> = [("iptables-restore", "iptables"), ("nft", "nftables")]
        .into_iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        if !Path::new("/etc/debian_version").exists() {
            bail!("{} missing; install them", missing.join(" and "));
        }
        step(&format!(
            "installing {} for the kube-proxy columns (apt-get install -y {})",
            missing.join(" and "),
            missing.join(" ")
        ));
        let install = || {
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        install()
            .or_else(|_| {
                step("apt-get update, then installing again");
                run(Command::new("apt-get").arg("update"))?;
                install()
            })
            .context("installing iptables and nftables")?;
    }
    let version = |program: &str| -> Result<String> {
        let path = find_program(program).with_context(|| format!("{program} still missing"))?;
        Ok(command::stdout(Command::new(path).arg("--version"))?
            .trim()
            .to_owned())
    };
    Ok((version("iptables")?, version("nft")?))
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
