//! `cargo xtask bench --testbed`: UDP datagrams per second delivered to a
//! pod on the demo's two-node namespace cluster, with no proxy, with
//! kube-proxy's iptables and nftables rules for 10,000 Services, and with
//! xdplb serving the same Services.
//!
//! Every column gets a fresh cluster, so no column inherits another's rules,
//! programs or connection tracking. The nodes are set up as a systemd host
//! leaves them (loose reverse-path filter, no accept_local), whatever the
//! demo's defaults; pods keep the demo's routed layout. A sender pod `src`
//! on node1 and a sink pod on node2; the client behind the router.
mod report;
mod services;

use std::{
    fmt,
    fs::{self, File},
    io::{BufRead, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
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
    cluster::{self, Cluster, NodeProfile, CLIENT_ADDR, NODE_LAN_IFACE},
    command,
    control_plane::{App, Pod},
    netns,
};
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
const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const SRC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    EastWestHooks,
    EastWestFlows,
    EastWestNewFlow,
    NorthSouthFlows,
    NorthSouthNewFlow,
}

impl Row {
    pub const ALL: [Row; 5] = [
        Row::EastWestHooks,
        Row::EastWestFlows,
        Row::EastWestNewFlow,
        Row::NorthSouthFlows,
        Row::NorthSouthNewFlow,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Row::EastWestHooks => "east-west, pods under the socket hooks, 64 connected flows",
            Row::EastWestFlows => "east-west, per-packet pod path, 64 flows, 10k Services",
            Row::EastWestNewFlow => "east-west, per-packet, a new flow per packet, 10k Services",
            Row::NorthSouthFlows => {
                "north-south to a NodePort, endpoint on the other node, 64 flows, 10k Services"
            }
            Row::NorthSouthNewFlow => "north-south, a new flow per packet, 10k Services",
        }
    }

    pub fn short(self) -> [&'static str; 2] {
        match self {
            Row::EastWestHooks => ["east-west", "socket hooks"],
            Row::EastWestFlows => ["east-west", "64 flows"],
            Row::EastWestNewFlow => ["east-west", "new flow/packet"],
            Row::NorthSouthFlows => ["north-south", "64 flows"],
            Row::NorthSouthNewFlow => ["north-south", "new flow/packet"],
        }
    }

    /// Only a proxy with socket hooks has a hooks path to measure.
    fn applies(self, column: Column) -> bool {
        self != Row::EastWestHooks || matches!(column, Column::NoProxy | Column::Xdplb)
    }

    fn north_south(self) -> bool {
        matches!(self, Row::NorthSouthFlows | Row::NorthSouthNewFlow)
    }

    fn new_flows(self) -> bool {
        matches!(self, Row::EastWestNewFlow | Row::NorthSouthNewFlow)
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

/// Every cell, or only those of `columns` and `rows` (from 1) where given:
/// a partial table for working on one path.
pub fn run_cmd(columns: &[Column], rows: &[usize]) -> Result<()> {
    let started = Instant::now();
    let load_before = load_average();
    prepare::preflight()?;
    progress::catch_interrupts();
    let tools = ensure_netfilter_tools()?;
    ebpf::build()?;
    let bin = build()?;
    prepare::remove_leftovers()?;
    let nodes = cluster::nodes();
    let services = Services::new(SINK_ADDR, &nodes[1].name);
    let mut results = Results { cells: Vec::new() };
    let picked = |i: usize| rows.is_empty() || rows.contains(&(i + 1));
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
        for (_, row) in Row::ALL
            .into_iter()
            .enumerate()
            .filter(|&(i, r)| picked(i) && r.applies(column))
        {
            let mut samples = Vec::new();
            for run in 0..RUNS {
                check_interrupt()?;
                let sample = bed.measure(row, run, &services)?;
                eprintln!(
                    "      {column:<9} {:<78} run {}: {:>10}  (sent {}, received {})",
                    row.title(),
                    run + 1,
                    report::rate(sample.rate),
                    sample.sent,
                    sample.received
                );
                samples.push(sample);
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
        netns::exec(
            &cluster.run.ns("router"),
            "ip",
            &[
                "route",
                "add",
                "10.244.0.0/16",
                "via",
                &nodes[0].addr.to_string(),
            ],
        )?;
        for (name, node, addr) in [
            (SRC_POD, &nodes[0], SRC_ADDR),
            (SINK_POD, &nodes[1], SINK_ADDR),
        ] {
            let pod = Pod {
                name: name.into(),
                node: node.name.clone(),
                addr,
                // Same host number in the node's IPv6 pod CIDR; the bench
                // sends IPv4 only.
                addr6: std::net::Ipv6Addr::from(
                    u128::from(node.pod_net6) | u128::from(addr.octets()[3]),
                ),
                app: App::Probe,
                env: Vec::new(),
                labels: Default::default(),
                named_ports: Default::default(),
            };
            cluster.add_pod(&pod, &format!("127.0.0.1\tlocalhost\n{addr}\t{name}\n"))?;
        }
        add_sources(&cluster)?;
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
            Column::Iptables => load_rules(&cluster, "iptables-restore", &[], services.iptables())?,
            Column::Nftables => load_rules(&cluster, "nft", &["-f"], services.nftables())?,
            Column::Xdplb => start_agents(&mut cluster, &bin.dir, services)?,
        }
        check_proxy(&cluster, column)?;
        Ok(Self {
            pod_cgroup,
            cluster,
            column,
            traffic: bin.traffic.clone(),
        })
    }

    fn remove(mut self) -> Result<()> {
        drop(self.pod_cgroup.take());
        self.cluster.remove()
    }

    fn measure(&self, row: Row, run: usize, services: &Services) -> Result<Sample> {
        let svc = services.measured();
        let dst = match (self.column, row.north_south()) {
            (Column::NoProxy, _) => SocketAddrV4::new(SINK_ADDR, services::TARGET_PORT),
            (_, true) => SocketAddrV4::new(cluster::nodes()[0].addr, services::NODE_PORT),
            (_, false) => SocketAddrV4::new(svc.cluster_ip, services::PORT),
        };
        let (role, base) = if row.north_south() {
            ("client", CLIENT_ADDR)
        } else {
            (SRC_POD, SRC_ADDR)
        };
        let send_secs = format!("{:.1}", (WINDOW + SEND_EXTRA).as_secs_f64());
        let mut args = vec!["timeout".to_owned(), PROCESS_LIMIT.to_owned()];
        args.push(self.traffic.to_string_lossy().into_owned());
        if row.new_flows() {
            let [a, b, c, _] = base.octets();
            let first = FIRST_EXTRA_SOURCE + SOURCES_PER_RUN * run as u8;
            args.extend([
                "new-flows".into(),
                dst.to_string(),
                Ipv4Addr::new(a, b, c, first).to_string(),
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
        if row == Row::EastWestHooks {
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
        let (mut sink, mut sink_out) = self.start_sink()?;
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
    fn start_sink(&self) -> Result<(Child, BufReader<ChildStdout>)> {
        let mut sink = Command::new("ip")
            .args(["netns", "exec", &self.cluster.run.ns(SINK_POD)])
            .args(["timeout", PROCESS_LIMIT])
            .arg(&self.traffic)
            .args(["sink", &services::TARGET_PORT.to_string()])
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

/// The addresses new-flow senders use as sources, on the sender's own
/// interface so that replies would have somewhere to go: the client's on
/// its LAN, the pod's as further /32s with node1 routing them to its veth.
fn add_sources(cluster: &Cluster) -> Result<()> {
    let last = FIRST_EXTRA_SOURCE + (SOURCES_PER_RUN * RUNS as u8 - 1);
    let extra = |prefix: [u8; 3], len: u8| -> String {
        (FIRST_EXTRA_SOURCE..=last)
            .map(|d| {
                let [a, b, c] = prefix;
                format!("addr add {a}.{b}.{c}.{d}/{len} dev eth0\n")
            })
            .collect()
    };
    let [a, b, c, _] = CLIENT_ADDR.octets();
    ip_batch(&cluster.run.ns("client"), &extra([a, b, c], 24))?;
    let [a, b, c, _] = SRC_ADDR.octets();
    ip_batch(&cluster.run.ns(SRC_POD), &extra([a, b, c], 32))?;
    let veth = cluster::pod_iface(SRC_POD);
    let routes: String = (FIRST_EXTRA_SOURCE..=last)
        .map(|d| format!("route add {a}.{b}.{c}.{d}/32 dev {veth}\n"))
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
fn load_rules(cluster: &Cluster, program: &str, args: &[&str], rules: String) -> Result<()> {
    let file = cluster.run.dir.join(format!("{program}.rules"));
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
        "{program} loaded {} Services' rules on every node in {}",
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
