//! The demo's cluster, built from network namespaces: two nodes on a shared
//! segment (a bridge inside a `lan` namespace), a router in front of them
//! with an external client behind it, and pods attached to their node by
//! veth pairs as a CNI would (a /24 pod CIDR per node, a route to each other
//! node's CIDR), in one of two [`PodLayout`]s.
//!
//! ```text
//! client 198.51.100.2 ── router ──┬── node1 192.168.50.11 ─ veth* ─ pods 10.244.1.0/24
//!   (LB IP 203.0.113.10 → node1)  └── node2 192.168.50.12 ─ veth* ─ pods 10.244.2.0/24
//! ```
//!
//! The nodes are configured as a distribution ships them ([`NodeProfile`]):
//! forwarding on, reverse-path filtering as the distribution sets it, no
//! `accept_local`, offloads as the kernel creates them. Nothing the product
//! would need beyond what a real node or the agent itself sets.
//!
//! Every address lives inside the namespaces; the root namespace only holds
//! the run's directory under `/run/xdplb-demo/<id>` (bpffs, manifests,
//! logs), the pods' hosts files under `/etc/netns` and, where cgroup v2 is
//! mounted, a cgroup per node (`<cgroup2>/xdplb-demo/<id>/<node>`) for the
//! node's own processes, with the pods' below it in `kubepods/<pod>` as the
//! kubelet places them: an agent's socket-level hooks act on a cgroup, not
//! a network namespace, so each node needs its own. The run's cgroup is
//! bind-mounted at `<run>/cgroup`, because `ip netns exec` mounts a fresh
//! /sys for its command, without /sys/fs/cgroup. Namespaces are named
//! `xdd-<id>-<role>`; a run records its owner process, so the next run can
//! tell a killed run's leftovers from a live or `--keep`-ed cluster.
//!
//! Not built on the `testbed` crate's `netns`: a kept cluster must
//! outlive its process, which that helper's leftover sweep would remove.
use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt,
    fs::{self, File},
    io,
    net::Ipv4Addr,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};

use super::control_plane::{Node, Pod};

const STATE_ROOT: &str = "/run/xdplb-demo";
const NETNS_DIR: &str = "/run/netns";
const NS_TAG: &str = "xdd";
/// Present in a run's directory once `--keep` handed the cluster to the user.
const KEPT_MARKER: &str = "kept";
const OWNER_FILE: &str = "owner";

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ROUTER_LAN_SIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The nodes' external interface, the one the agent is told about.
pub const NODE_LAN_IFACE: &str = "eth0";
/// The agents' LoadBalancer pool (`--lb-pool-range`): a free slice of the
/// nodes' LAN, which the router reaches by ARP over its connected /24, so
/// these addresses need no route: the node that announces one answers.
pub const LB_POOL: &str = "192.168.50.200-192.168.50.220";

/// How a CNI connects pods to their node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PodLayout {
    /// Calico's: the pod holds its /32 and a default route to a link-local
    /// gateway that the node's address-less veth answers ARP for
    /// (proxy_arp); the node routes each pod's /32 to its veth.
    #[default]
    Routed,
    /// flannel's (the CNI bridge plugin): the node-side veths are ports of
    /// a bridge `cni0` that holds the pod CIDR's gateway address; pods hold
    /// a /24 address with a default route to that gateway.
    Bridged,
}

impl fmt::Display for PodLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Routed => "routed",
            Self::Bridged => "bridged",
        })
    }
}

/// What a cluster's nodes look like: the settings a distribution and a CNI
/// choose, and where the pods' processes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeProfile {
    /// `net.ipv4.conf.{all,default}.rp_filter` on the nodes: 2 (loose) as
    /// systemd ships it for Debian, Ubuntu and most others, 1 (strict) as on
    /// RHEL, or 0.
    pub rp_filter: u8,
    pub pod_layout: PodLayout,
    /// Pods' processes in `<node cgroup>/kubepods/<pod>`, where the agent's
    /// socket-level hooks see them, as the kubelet places them; else in a
    /// cgroup outside the node's, so only the packet path serves them.
    pub pods_in_hook_cgroup: bool,
    /// The LAN side of each node's uplink runs an XDP program, so the
    /// uplink takes XDP frames as a NIC does and the agent serves it with
    /// XDP; otherwise a plain veth, served at tc.
    pub uplinks_take_xdp: bool,
}

impl Default for NodeProfile {
    fn default() -> Self {
        Self {
            rp_filter: 2,
            pod_layout: PodLayout::Routed,
            pods_in_hook_cgroup: true,
            uplinks_take_xdp: false,
        }
    }
}

impl fmt::Display for NodeProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rp_filter {}, {}, pods {} the hook cgroup, {} uplinks",
            self.rp_filter,
            self.pod_layout,
            if self.pods_in_hook_cgroup {
                "in"
            } else {
                "outside"
            },
            if self.uplinks_take_xdp { "XDP" } else { "tc" }
        )
    }
}

/// What a routed CNI gives pods as their gateway: an address no one holds,
/// which the node answers ARP for on the pod's veth (Calico's choice).
const ROUTED_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The bridge of the bridged layout, as the CNI bridge plugin names it.
const POD_BRIDGE: &str = "cni0";

/// The nodes the demo builds; node N is 192.168.50.(10+N) with pods in
/// 10.244.N.0/24.
pub fn nodes() -> Vec<Node> {
    (1..=2)
        .map(|n| Node {
            name: format!("node{n}"),
            addr: Ipv4Addr::new(192, 168, 50, 10 + n),
            pod_net: Ipv4Addr::new(10, 244, n, 0),
        })
        .collect()
}

/// One run's names and files.
pub struct Run {
    pub id: String,
    pub dir: PathBuf,
}

impl Run {
    pub fn ns(&self, role: &str) -> String {
        format!("{NS_TAG}-{}-{role}", self.id)
    }

    fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    pub fn pin_path(&self, node: &str) -> PathBuf {
        self.bpffs().join(node)
    }

    pub fn manifests(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("manifests")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The cgroup v2 directory of `node`'s own processes, if cgroup v2 is
    /// mounted, by a path that is the same inside `ip netns exec`.
    pub fn cgroup(&self, node: &str) -> Option<PathBuf> {
        cgroup2_root()?;
        Some(self.cgroups().join(node))
    }

    fn cgroups(&self) -> PathBuf {
        self.dir.join("cgroup")
    }

    /// The cgroup of `pod`'s processes, if cgroup v2 is mounted: below its
    /// node's, as the kubelet puts it, or outside every node's.
    fn pod_cgroup(&self, pod: &Pod, in_hook_cgroup: bool) -> Option<PathBuf> {
        let parent = if in_hook_cgroup {
            self.cgroup(&pod.node)?.join("kubepods")
        } else {
            cgroup2_root()?;
            self.cgroups().join("outside")
        };
        Some(parent.join(&pod.name))
    }

    fn log(&self, what: &str) -> PathBuf {
        self.logs().join(format!("{what}.log"))
    }
}

/// The running cluster; dropping it tears everything down unless it was
/// kept.
pub struct Cluster {
    pub run: Run,
    pub nodes: Vec<Node>,
    pub profile: NodeProfile,
    /// Each pod's cgroup, by pod name, where cgroup v2 is mounted.
    pod_cgroups: BTreeMap<String, PathBuf>,
    children: Vec<(String, Child)>,
    /// Set once the cluster is kept or removed; Drop then leaves it alone.
    released: bool,
}

impl Cluster {
    /// Records the run, mounts its bpffs and wires the namespaces.
    pub fn create(nodes: Vec<Node>, profile: NodeProfile) -> Result<Self> {
        ensure!(
            profile.rp_filter <= 2,
            "rp_filter {} is not one of 0, 1, 2",
            profile.rp_filter
        );
        let run = new_run()?;
        // From here on Drop cleans up whatever part got built.
        let cluster = Self {
            run,
            nodes,
            profile,
            pod_cgroups: BTreeMap::new(),
            children: Vec::new(),
            released: false,
        };
        cluster.mount_bpffs()?;
        cluster.make_cgroups()?;
        cluster.wire()?;
        Ok(cluster)
    }

    fn make_cgroups(&self) -> Result<()> {
        let Some(cgroup) = run_cgroup(&self.run.id) else {
            return Ok(());
        };
        for node in &self.nodes {
            let dir = cgroup.join(&node.name);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        let at = self.run.cgroups();
        fs::create_dir_all(&at)?;
        run(Command::new("mount").arg("--bind").arg(&cgroup).arg(&at))
    }

    /// Agents pin on a bpffs of the root mount namespace: the one under
    /// /sys that `ip netns exec` shows is a private, empty mount that would
    /// vanish with the agent.
    fn mount_bpffs(&self) -> Result<()> {
        let bpffs = self.run.bpffs();
        fs::create_dir_all(&bpffs)?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))
    }

    fn wire(&self) -> Result<()> {
        let ns = |role: &str| self.run.ns(role);
        let (lan, router, client) = (ns("lan"), ns("router"), ns("client"));
        for name in [&lan, &router, &client] {
            add_ns(name)?;
        }
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        up(&lan, "br0")?;
        // Not a node, and unlike a distribution's default: the router has
        // no route to the pod CIDRs, and it forwards the pods' untranslated
        // replies too, so what the client makes of them is visible rather
        // than hidden by its reverse-path filter.
        sysctls(
            &router,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        veth(&client, "eth0", &router, "ext0")?;
        addr(&client, "eth0", CLIENT_ADDR, 24)?;
        addr(&router, "ext0", ROUTER_CLIENT_SIDE, 24)?;
        route(&client, &format!("default via {ROUTER_CLIENT_SIDE}"))?;
        self.lan_port(&router, "lan0", "router", ROUTER_LAN_SIDE)?;

        let rp_filter = self.profile.rp_filter;
        for node in &self.nodes {
            let node_ns = ns(&node.name);
            add_ns(&node_ns)?;
            // Before any link exists, so every interface inherits `default`;
            // the effective value is the larger of `all` and the
            // interface's own.
            sysctls(
                &node_ns,
                &[
                    "net.ipv4.ip_forward=1",
                    &format!("net.ipv4.conf.all.rp_filter={rp_filter}"),
                    &format!("net.ipv4.conf.default.rp_filter={rp_filter}"),
                ],
            )?;
            self.lan_port(&node_ns, NODE_LAN_IFACE, &node.name, node.addr)?;
            if self.profile.uplinks_take_xdp {
                let pin = self.run.bpffs().join(format!("lan-xdp-{}", node.name));
                super::xdp_pass::attach(&lan, &node.name, &pin)?;
            }
            route(&node_ns, &format!("default via {ROUTER_LAN_SIDE}"))?;
            for other in self.nodes.iter().filter(|o| o.name != node.name) {
                route(
                    &node_ns,
                    &format!("{}/24 via {}", other.pod_net, other.addr),
                )?;
            }
            if self.profile.pod_layout == PodLayout::Bridged {
                // An address of its own, set at creation: a bridge otherwise
                // takes its lowest port's, which changes as pods come and go
                // and leaves the pods' neighbour entries for the gateway
                // stale.
                let [_, _, n, _] = node.pod_net.octets();
                let mac = format!("02:00:0a:f4:{n:02x}:01");
                ip(&[
                    "-n", &node_ns, "link", "add", POD_BRIDGE, "address", &mac, "type", "bridge",
                ])?;
                addr(&node_ns, POD_BRIDGE, pod_gateway(node), 24)?;
                up(&node_ns, POD_BRIDGE)?;
            }
        }
        Ok(())
    }

    /// Plugs `ifname` of `ns` into the LAN bridge with address `addr`/24.
    fn lan_port(&self, ns: &str, ifname: &str, port: &str, addr_: Ipv4Addr) -> Result<()> {
        let lan = self.run.ns("lan");
        veth(ns, ifname, &lan, port)?;
        ip(&["-n", &lan, "link", "set", port, "master", "br0", "up"])?;
        addr(ns, ifname, addr_, 24)
    }

    /// Routes each LoadBalancer IP to the first node, as a provider's
    /// announcement (say MetalLB in L2 mode) would.
    pub fn route_lb_ips(&self, ips: &[Ipv4Addr]) -> Result<()> {
        let router = self.run.ns("router");
        for ip in ips {
            route(&router, &format!("{ip}/32 via {}", self.nodes[0].addr))?;
        }
        Ok(())
    }

    /// The pod's namespace and its veth to the node, in the profile's
    /// layout. The node end is named `veth*` so the agent finds it as a pod
    /// interface.
    pub fn add_pod(&mut self, pod: &Pod, hosts: &str) -> Result<()> {
        let ns = self.run.ns(&pod.name);
        let node_ns = self.run.ns(&pod.node);
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .context("pod on an unknown node")?;
        let host_if = pod_iface(&pod.name);
        add_ns(&ns)?;
        write_hosts(&ns, hosts)?;
        if let Some(cgroup) = self.run.pod_cgroup(pod, self.profile.pods_in_hook_cgroup) {
            fs::create_dir_all(&cgroup)
                .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
            self.pod_cgroups.insert(pod.name.clone(), cgroup);
        }
        veth(&ns, "eth0", &node_ns, &host_if)?;
        match self.profile.pod_layout {
            PodLayout::Routed => {
                addr(&ns, "eth0", pod.addr, 32)?;
                route(
                    &ns,
                    &format!("default via {ROUTED_GATEWAY} dev eth0 onlink"),
                )?;
                // As Calico's CNI plugin sets them on the pod's interface:
                // the node answers the pod's ARP for the gateway, and at
                // once rather than after proxy ARP's random delay.
                sysctls(
                    &node_ns,
                    &[
                        &format!("net.ipv4.conf.{host_if}.proxy_arp=1"),
                        &format!("net.ipv4.neigh.{host_if}.proxy_delay=0"),
                    ],
                )?;
                route(&node_ns, &format!("{}/32 dev {host_if}", pod.addr))
            }
            PodLayout::Bridged => {
                addr(&ns, "eth0", pod.addr, 24)?;
                route(&ns, &format!("default via {}", pod_gateway(node)))?;
                ip(&[
                    "-n", &node_ns, "link", "set", &host_if, "master", POD_BRIDGE,
                ])?;
                // flannel's bridge configuration turns hairpin mode on, so a
                // frame may leave by the port it came in on.
                ip(&[
                    "-n",
                    &node_ns,
                    "link",
                    "set",
                    &host_if,
                    "type",
                    "bridge_slave",
                    "hairpin",
                    "on",
                ])
            }
        }
    }

    /// Deletes a pod's namespace, and with it the veth to its node, after
    /// stopping the program [`Cluster::spawn`] started there under the
    /// pod's name.
    pub fn remove_pod(&mut self, pod: &str) -> Result<()> {
        if self.children.iter().any(|(label, _)| label == pod) {
            self.kill(pod)?;
        }
        let ns = self.run.ns(pod);
        ip(&["netns", "del", &ns])?;
        remove_dir(&Path::new("/etc/netns").join(ns))?;
        match self.pod_cgroups.remove(pod) {
            Some(cgroup) => rmdir_cgroup(&cgroup),
            None => Ok(()),
        }
    }

    /// Runs `f` with this whole process in `pod`'s cgroup, then moves it
    /// back. A socket belongs to the cgroup of the process that opens it,
    /// and the agent's socket-level hooks act by that cgroup: what `f`
    /// opens for the pod must look like the pod's own.
    pub fn as_pod<T>(&self, pod: &str, f: impl FnOnce() -> T) -> Result<T> {
        let Some(cgroup) = self.pod_cgroups.get(pod) else {
            return Ok(f());
        };
        let home = own_cgroup()?;
        move_self(cgroup)?;
        let out = f();
        move_self(&home)?;
        Ok(out)
    }

    /// Sets the MTU of `ifname` in the namespace of `role`.
    pub fn set_mtu(&self, role: &str, ifname: &str, mtu: u32) -> Result<()> {
        let ns = self.run.ns(role);
        ip(&["-n", &ns, "link", "set", ifname, "mtu", &mtu.to_string()])
    }

    /// Starts `program` as `pod`'s process, in its namespace and cgroup,
    /// logging to `<pod>.log`. It runs in its own process group: Ctrl-C is
    /// for the demo, which then tears it down, and a kept cluster's
    /// processes outlive the terminal's job.
    pub fn spawn(
        &mut self,
        pod: &Pod,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.run.ns(&pod.name)])
            .arg(program);
        if let Some(cgroup) = self.pod_cgroups.get(&pod.name) {
            join_cgroup(&mut command, cgroup)?;
        }
        self.start(command, &pod.name, args, env)
    }

    /// Starts `program` as a process of `node` itself: in the node's
    /// namespace and cgroup. Otherwise as [`Cluster::spawn`].
    pub fn spawn_on_node(
        &mut self,
        node: &str,
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let command = self.node_command(node, program)?;
        self.start(command, label, args, env)
    }

    /// A command that runs `program` as a process of `node`: in its network
    /// namespace and, where there is one, its cgroup.
    pub fn node_command(&self, node: &str, program: &Path) -> Result<Command> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.run.ns(node)])
            .arg(program);
        if let Some(cgroup) = self.run.cgroup(node) {
            join_cgroup(&mut command, &cgroup)?;
        }
        Ok(command)
    }

    fn start(
        &mut self,
        mut command: Command,
        label: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let log_path = self.run.log(label);
        fs::create_dir_all(log_path.parent().expect("logs dir"))?;
        let log = File::create(&log_path)?;
        let child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.children.push((label.to_owned(), child));
        Ok(())
    }

    /// The pid of the process started as `label`, while it runs.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, child)| child.id())
    }

    /// Kills the process started as `label` with SIGKILL and waits for it.
    pub fn kill(&mut self, label: &str) -> Result<()> {
        let index = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .with_context(|| format!("no process {label}"))?;
        let (_, mut child) = self.children.remove(index);
        // `ip netns exec` execs the program: this is its pid.
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Fails, with the end of its log, if a started process has exited.
    pub fn check_processes(&mut self) -> Result<()> {
        for (label, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let log = fs::read_to_string(self.run.log(label)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{label} exited ({status}); the end of {}:\n{}",
                    self.run.log(label).display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// Leaves the cluster up after this process exits, until `--down`.
    pub fn keep(mut self) -> Result<()> {
        fs::write(self.run.dir.join(KEPT_MARKER), "")?;
        self.released = true;
        Ok(())
    }

    /// Tears the cluster down, reporting what went wrong.
    pub fn remove(mut self) -> Result<()> {
        self.released = true;
        let result = teardown(&self.run.id);
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        result
    }
}

/// The teardown of a cluster dropped on an error or Ctrl-C.
impl Drop for Cluster {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(err) = teardown(&self.run.id) {
            eprintln!("demo: teardown of run {}: {err:#}", self.run.id);
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// Removes the clusters of runs whose process is gone without `--keep`;
/// returns their ids.
pub fn cleanup_leftovers() -> Result<Vec<String>> {
    remove_runs(|kept| !kept)
}

/// Removes kept clusters as well as leftovers; returns their ids. Runs still
/// in progress are left alone.
pub fn down() -> Result<Vec<String>> {
    remove_runs(|_| true)
}

fn remove_runs(remove_if_kept: impl Fn(bool) -> bool) -> Result<Vec<String>> {
    let mut ids: Vec<String> = list(Path::new(STATE_ROOT))?;
    // A namespace whose run directory is gone belongs to a dead run too.
    ids.extend(list(Path::new(NETNS_DIR))?.iter().filter_map(|name| {
        let (id, _) = name
            .strip_prefix(NS_TAG)?
            .strip_prefix('-')?
            .split_once('-')?;
        Some(id.to_owned())
    }));
    if let Some(cgroups) = cgroup2_root() {
        let parent = cgroups.join(STATE_CGROUP);
        // Runs are the directories; the rest are the cgroup's own files.
        ids.extend(
            list(&parent)?
                .into_iter()
                .filter(|name| parent.join(name).is_dir()),
        );
    }
    ids.sort();
    ids.dedup();
    let mut removed = Vec::new();
    for id in ids {
        let dir = Path::new(STATE_ROOT).join(&id);
        if owner_alive(&dir) || !remove_if_kept(dir.join(KEPT_MARKER).exists()) {
            continue;
        }
        teardown(&id)?;
        removed.push(id);
    }
    Ok(removed)
}

/// Kills every process in the run's namespaces, deletes them, unmounts the
/// bpffs (which drops the pinned maps and XDP links) and removes the files.
fn teardown(id: &str) -> Result<()> {
    let prefix = format!("{NS_TAG}-{id}-");
    let namespaces: Vec<String> = list(Path::new(NETNS_DIR))?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let pids = |ns: &str| -> Vec<i32> {
        output(Command::new("ip").args(["netns", "pids", ns]))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    for ns in &namespaces {
        for pid in pids(ns) {
            // SAFETY: plain syscall; the pid was just listed as inside a
            // namespace of this run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // A namespace lives on while a process is inside it.
    let deadline = SystemTime::now() + Duration::from_secs(5);
    while namespaces.iter().any(|ns| !pids(ns).is_empty()) && SystemTime::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    for ns in &namespaces {
        ip(&["netns", "del", ns])?;
        remove_dir(&Path::new("/etc/netns").join(ns))?;
    }
    let dir = Path::new(STATE_ROOT).join(id);
    if let Some(cgroup) = run_cgroup(id) {
        remove_cgroup(&cgroup, &dir.join("cgroup"))?;
    }
    let bpffs = dir.join("bpffs");
    if is_mountpoint(&bpffs)? {
        run(Command::new("umount").arg(&bpffs))?;
    }
    remove_dir(&dir)
}

/// Creates the run's directory first, so a run killed at any later point
/// is recognised by the next one.
fn new_run() -> Result<Run> {
    let pid = std::process::id();
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let id = format!("{}{}", base36(u64::from(pid)), base36(secs % 36u64.pow(3)));
    let dir = Path::new(STATE_ROOT).join(&id);
    ensure!(!dir.exists(), "{} exists already", dir.display());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = start_time(pid).context("reading this process's start time")?;
    fs::write(dir.join(OWNER_FILE), format!("{pid} {started}\n"))?;
    Ok(Run { id, dir })
}

/// Whether the process that created the run still runs; the start time
/// tells it from a later process given the same pid.
fn owner_alive(dir: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
        return false;
    };
    let mut fields = owner.split_whitespace();
    let (Some(pid), Some(started)) = (fields.next(), fields.next()) else {
        return false;
    };
    pid.parse()
        .ok()
        .and_then(start_time)
        .is_some_and(|now| now.to_string() == started)
}

/// Field 22 of /proc/<pid>/stat, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may hold spaces; it ends at the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Where runs keep their nodes' cgroups, under the cgroup v2 root.
const STATE_CGROUP: &str = "xdplb-demo";

/// The mount point of cgroup v2, if it is mounted.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn run_cgroup(id: &str) -> Option<PathBuf> {
    Some(cgroup2_root()?.join(STATE_CGROUP).join(id))
}

/// Removes a run's cgroup and every cgroup below it (nodes', pods') and
/// its bind mount `mounted`; then the parent if no other run uses it.
fn remove_cgroup(dir: &Path, mounted: &Path) -> Result<()> {
    remove_cgroups_below(dir)?;
    // Before the run's directory goes: removing it through a mounted
    // cgroup would reach into the cgroup's files.
    if is_mountpoint(mounted)? {
        run(Command::new("umount").arg(mounted))?;
    }
    rmdir_cgroup(dir)?;
    if let Some(parent) = dir.parent() {
        // Fails while another run's cgroup is in it.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Removes the cgroups below `dir`, deepest first: rmdir takes only a
/// cgroup without children.
fn remove_cgroups_below(dir: &Path) -> Result<()> {
    for name in list(dir)? {
        let path = dir.join(name);
        if path.is_dir() {
            remove_cgroups_below(&path)?;
            rmdir_cgroup(&path)?;
        }
    }
    Ok(())
}

/// Removes one cgroup, once its processes are gone.
fn rmdir_cgroup(dir: &Path) -> Result<()> {
    // A process killed a moment ago may still be leaving.
    let deadline = SystemTime::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if SystemTime::now() >= deadline => {
                return Err(err).with_context(|| format!("removing cgroup {}", dir.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
            Ok(()) => return Ok(()),
        }
    }
}

/// This process's cgroup v2 directory.
fn own_cgroup() -> Result<PathBuf> {
    let root = cgroup2_root().context("cgroup v2 is not mounted")?;
    let cgroups = fs::read_to_string("/proc/self/cgroup")?;
    let path = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .context("/proc/self/cgroup has no cgroup v2 line")?;
    Ok(root.join(path.trim_start_matches('/')))
}

/// Moves this process, all its threads, into `cgroup`.
fn move_self(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", cgroup.display()))
}

/// Makes `command` move itself into `cgroup` before it executes its
/// program, so the program and everything it starts belong to it.
fn join_cgroup(command: &mut Command, cgroup: &Path) -> Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let join = move || -> io::Result<()> {
        // Only async-signal-safe calls between fork and exec.
        // SAFETY: a NUL-terminated path and a one-byte buffer; the
        // descriptor is closed before returning.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
        Ok(())
    };
    // SAFETY: `join` makes only async-signal-safe calls and allocates nothing.
    unsafe { command.pre_exec(join) };
    Ok(())
}

/// The node side of a pod's veth: `veth` and the pod name's letters and
/// digits, within the 15 bytes an interface name may have.
pub fn pod_iface(pod: &str) -> String {
    let name: String = pod.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("veth{name}").chars().take(15).collect()
}

/// The address pods of `node` route through in the bridged layout: the
/// first of its pod CIDR, on `cni0`.
fn pod_gateway(node: &Node) -> Ipv4Addr {
    let [a, b, c, _] = node.pod_net.octets();
    Ipv4Addr::new(a, b, c, 1)
}

/// `ip netns exec` mounts `/etc/netns/<ns>/hosts` over `/etc/hosts` for the
/// commands it runs: the pods resolve Service names the way CoreDNS would
/// answer them, without a DNS server.
fn write_hosts(ns: &str, hosts: &str) -> Result<()> {
    let dir = Path::new("/etc/netns").join(ns);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("hosts"), hosts)?;
    Ok(())
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`;
/// sockets it opens stay in `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new(NETNS_DIR).join(ns);
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).with_context(|| format!("opening {path:?}"))?;
                // SAFETY: a valid fd; only this thread's namespace changes.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context(format!("setns {path:?}"));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `cmd` in `ns` and returns its stdout and stderr; fails on a non-zero exit.
pub fn exec(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, cmd]).args(args);
    output(&mut command)
}

fn add_ns(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    up(name, "lo")
}

fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    ip(&[
        "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
    ])?;
    up(ns_a, if_a)?;
    up(ns_b, if_b)
}

fn addr(ns: &str, ifname: &str, addr: Ipv4Addr, len: u8) -> Result<()> {
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/{len}"),
        "dev",
        ifname,
    ])
}

fn up(ns: &str, ifname: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", ifname, "up"])
}

fn route(ns: &str, spec: &str) -> Result<()> {
    let mut args = vec!["-n", ns, "route", "add"];
    args.extend(spec.split_whitespace());
    ip(&args)
}

fn sysctls(ns: &str, assignments: &[&str]) -> Result<()> {
    let mut args = vec!["-qw"];
    args.extend(assignments);
    exec(ns, "sysctl", &args).map(drop)
}

fn ip(args: &[&str]) -> Result<()> {
    output(Command::new("ip").args(args)).map(drop)
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn run(command: &mut Command) -> Result<()> {
    output(command).map(drop)
}

fn list(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        entries => entries
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect(),
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn is_mountpoint(path: &Path) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let path = path.to_string_lossy();
    Ok(mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path.as_ref())))
}

fn base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).expect("digit below radix"));
        n /= 36;
        if n == 0 {
            return digits.iter().rev().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_interfaces_fit_an_interface_name() {
        assert_eq!(pod_iface("counter-1"), "vethcounter1");
        assert_eq!(pod_iface("a-very-long-pod-name-7"), "vethaverylongpo");
    }

    #[test]
    fn this_process_is_its_own_live_owner() {
        let dir = std::env::temp_dir().join(format!("xdd-owner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        fs::write(
            dir.join(OWNER_FILE),
            format!("{pid} {}", start_time(pid).unwrap()),
        )
        .unwrap();
        assert!(owner_alive(&dir));
        fs::write(dir.join(OWNER_FILE), format!("{pid} 1")).unwrap();
        assert!(!owner_alive(&dir), "same pid, other start time");
        fs::remove_dir_all(&dir).unwrap();
    }
}
