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
//! The cluster is dual-stack: beside each IPv4 address every namespace
//! holds an IPv6 one from a ULA prefix (fd00::/8), which lives only inside
//! the run's namespaces.
//!
//! ```text
//! client fd00:51::2 ── router ──┬── node1 fd00:10::11 ─ veth* ─ pods fd00:244:1::/64
//!  (LB IP fd00:203::10 → node1) └── node2 fd00:10::12 ─ veth* ─ pods fd00:244:2::/64
//! ```
//!
//! Pods hold a /128 each with a default route to the link-local gateway
//! [`POD_GATEWAY6`], which the node side holds (each routed pod's veth, or
//! the bridge), as Calico does.
//!
//! The nodes are configured as a distribution ships them ([`NodeProfile`]):
//! forwarding on, reverse-path filtering as the distribution sets it, no
//! `accept_local`, offloads as the kernel creates them. Nothing the product
//! would need beyond what a real node or the agent itself sets.
//!
//! Every address lives inside the namespaces; the root namespace only holds
//! the run's directory ([`Run`]), the pods' hosts files under `/etc/netns`
//! and, where cgroup v2 is mounted, a cgroup per node for the agent's
//! socket-level hooks, with its pods' below it.
//!
//! Built from the by-name operations of [`crate::netns`] rather than a
//! [`crate::netns::Testbed`]: a kept cluster must outlive its process, which
//! that guard's drop and leftover sweep would remove.
mod cgroup;
mod process;
mod run;
mod topology;

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Child, Command},
};

use anyhow::{ensure, Result};

use crate::{
    control_plane::{Node, State},
    netns::{ip, route},
};
pub use run::{cleanup_leftovers, down, Run};
use run::{new_run, run, teardown, KEPT_MARKER};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const ROUTER_LAN_SIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The client's IPv6 address, on its own /64 with the router.
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x51, 0, 0, 0, 0, 0, 2);
const ROUTER_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x51, 0, 0, 0, 0, 0, 1);
/// The router on the LAN's /64, fd00:10::/64.
const ROUTER_LAN_SIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
/// The pods' IPv6 gateway: a link-local address the node side of each
/// pod's link holds, as Calico gives pods a link-local next hop.
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The nodes' external interface, the one the agent is told about.
pub const NODE_LAN_IFACE: &str = "eth0";
/// The agents' LoadBalancer pool (`--lb-pool-range`): a free slice of the
/// nodes' LAN, which the router reaches by ARP over its connected /24, so
/// these addresses need no route: the node that announces one answers.
pub const LB_POOL: &str = "192.168.50.200-192.168.50.220";
/// The agents' IPv6 pool: a slice of the LAN's fd00:10::/64, on-link for
/// the router, which finds the node announcing an address by NDP alone.
pub const LB_POOL6: &str = "fd00:10::200-fd00:10::220";

/// How a CNI connects pods to their node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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

/// The nodes the demo builds; node N is 192.168.50.(10+N) and
/// fd00:10::1N with pods in 10.244.N.0/24 and fd00:244:N::/64.
pub fn nodes() -> Vec<Node> {
    (1..=2)
        .map(|n| Node {
            name: format!("node{n}"),
            addr: Ipv4Addr::new(192, 168, 50, 10 + n),
            pod_net: Ipv4Addr::new(10, 244, n, 0),
            addr6: Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x10 + u16::from(n)),
            pod_net6: Ipv6Addr::new(0xfd00, 0x244, u16::from(n), 0, 0, 0, 0, 0),
        })
        .collect()
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

    /// [`Cluster::create`] with the namespaces of `state`'s pods and its
    /// LoadBalancer IPs routed.
    pub fn with_pods(nodes: Vec<Node>, profile: NodeProfile, state: &State) -> Result<Self> {
        let mut cluster = Self::create(nodes, profile)?;
        cluster.route_lb_ips(&state.lb_ips(), &state.lb_ips_v6())?;
        for pod in &state.pods {
            cluster.add_pod(pod, &state.hosts_file(pod))?;
        }
        Ok(cluster)
    }

    /// Agents pin on a bpffs of the root mount namespace: the one under
    /// /sys that `ip netns exec` shows is a private, empty mount that would
    /// vanish with the agent.
    fn mount_bpffs(&self) -> Result<()> {
        let bpffs = self.run.bpffs();
        fs::create_dir_all(&bpffs)?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))
    }

    /// Routes each LoadBalancer IP to the first node, as a provider's
    /// announcement (say MetalLB in L2 mode) would.
    fn route_lb_ips(&self, ips: &[Ipv4Addr], ips_v6: &[Ipv6Addr]) -> Result<()> {
        let router = self.run.ns("router");
        for ip in ips {
            route(&router, &format!("{ip}/32 via {}", self.nodes[0].addr))?;
        }
        for ip in ips_v6 {
            route(&router, &format!("{ip}/128 via {}", self.nodes[0].addr6))?;
        }
        Ok(())
    }

    /// Sets the MTU of `ifname` in the namespace of `role`.
    pub fn set_mtu(&self, role: &str, ifname: &str, mtu: u32) -> Result<()> {
        let ns = self.run.ns(role);
        ip(&["-n", &ns, "link", "set", ifname, "mtu", &mtu.to_string()]).map(drop)
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

/// The node side of a pod's veth: `veth` and the pod name's letters and
/// digits, within the 15 bytes an interface name may have.
pub fn pod_iface(pod: &str) -> String {
    let name: String = pod.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("veth{name}").chars().take(15).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_interfaces_fit_an_interface_name() {
        assert_eq!(pod_iface("counter-1"), "vethcounter1");
        assert_eq!(pod_iface("a-very-long-pod-name-7"), "vethaverylongpo");
    }
}
