//! The cluster's namespaces and links: the LAN, router and client, the
//! nodes as their profile sets them up, and the pods as their layout wires
//! them.
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};

use super::{
    cgroup::rmdir_cgroup, pod_iface, run::remove_dir, Cluster, PodLayout, CLIENT_ADDR,
    CLIENT_ADDR6, NODE_LAN_IFACE, POD_BRIDGE, POD_GATEWAY6, ROUTED_GATEWAY, ROUTER_CLIENT_SIDE,
    ROUTER_CLIENT_SIDE6, ROUTER_LAN_SIDE, ROUTER_LAN_SIDE6,
};
use crate::{
    control_plane::{Node, Pod},
    netns::{add_ns, addr, in_netns, ip, route, sysctls, up, veth},
};

impl Cluster {
    pub(super) fn wire(&self) -> Result<()> {
        let ns = |role: &str| self.run.ns(role);
        let (lan, router, client) = (ns("lan"), ns("router"), ns("client"));
        for name in [&lan, &router, &client] {
            add_ns(name)?;
        }
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        up(&lan, "br0")?;
        // The LAN stands for a switch, which runs no netfilter; with the
        // kernel's default every frame it bridged went through the IPv4
        // and IPv6 hooks, a per-packet cost of the LAN that no cluster
        // pays and that every column of the benchmark carried.
        sysctls(
            &lan,
            &[
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
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
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        veth_up(&client, "eth0", &router, "ext0")?;
        addr_v4(&client, "eth0", CLIENT_ADDR, 24)?;
        addr_v4(&router, "ext0", ROUTER_CLIENT_SIDE, 24)?;
        addr_v6(&client, "eth0", CLIENT_ADDR6, 64)?;
        addr_v6(&router, "ext0", ROUTER_CLIENT_SIDE6, 64)?;
        route(&client, &format!("default via {ROUTER_CLIENT_SIDE}"))?;
        route(&client, &format!("default via {ROUTER_CLIENT_SIDE6}"))?;
        self.lan_port(&router, "lan0", "router", ROUTER_LAN_SIDE, ROUTER_LAN_SIDE6)?;

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
                    // As a CNI with IPv6 sets it; IPv6 has no rp_filter.
                    "net.ipv6.conf.all.forwarding=1",
                ],
            )?;
            self.lan_port(&node_ns, NODE_LAN_IFACE, &node.name, node.addr, node.addr6)?;
            if self.profile.uplinks_take_xdp {
                let pin = self.run.bpffs().join(format!("lan-xdp-{}", node.name));
                attach_xdp_pass(&lan, &node.name, &pin)?;
            }
            route(&node_ns, &format!("default via {ROUTER_LAN_SIDE}"))?;
            route(&node_ns, &format!("default via {ROUTER_LAN_SIDE6}"))?;
            for other in self.nodes.iter().filter(|o| o.name != node.name) {
                route(
                    &node_ns,
                    &format!("{}/24 via {}", other.pod_net, other.addr),
                )?;
                route(
                    &node_ns,
                    &format!("{}/64 via {}", other.pod_net6, other.addr6),
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
                addr_v4(&node_ns, POD_BRIDGE, pod_gateway(node), 24)?;
                // The pods' IPv6 gateway, and the IPv6 pod CIDR on the
                // bridge so the node reaches its pods' /128s by neighbour
                // discovery there.
                addr_v6(&node_ns, POD_BRIDGE, POD_GATEWAY6, 64)?;
                addr_v6(&node_ns, POD_BRIDGE, pod_gateway6(node), 64)?;
                up(&node_ns, POD_BRIDGE)?;
            }
        }
        Ok(())
    }

    /// Plugs `ifname` of `ns` into the LAN bridge with addresses `addr`/24
    /// and `addr6`/64.
    fn lan_port(
        &self,
        ns: &str,
        ifname: &str,
        port: &str,
        addr_: Ipv4Addr,
        addr6: Ipv6Addr,
    ) -> Result<()> {
        let lan = self.run.ns("lan");
        veth_up(ns, ifname, &lan, port)?;
        ip(&["-n", &lan, "link", "set", port, "master", "br0", "up"])?;
        addr_v4(ns, ifname, addr_, 24)?;
        addr_v6(ns, ifname, addr6, 64)
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
        veth_up(&ns, "eth0", &node_ns, &host_if)?;
        match self.profile.pod_layout {
            PodLayout::Routed => {
                addr_v4(&ns, "eth0", pod.addr, 32)?;
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
                route(&node_ns, &format!("{}/32 dev {host_if}", pod.addr))?;
                // IPv6: the pod's /128, its default route to a link-local
                // gateway that the node's veth holds (no proxy NDP needed),
                // and the node's route of the /128 to the veth.
                addr_v6(&node_ns, &host_if, POD_GATEWAY6, 64)?;
                self.pod_v6(&ns, pod)?;
                route(&node_ns, &format!("{}/128 dev {host_if}", pod.addr6))
            }
            PodLayout::Bridged => {
                addr_v4(&ns, "eth0", pod.addr, 24)?;
                route(&ns, &format!("default via {}", pod_gateway(node)))?;
                self.pod_v6(&ns, pod)?;
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
                .map(drop)
            }
        }
    }

    /// The pod's side of IPv6: its /128 and a default route to
    /// [`POD_GATEWAY6`].
    fn pod_v6(&self, ns: &str, pod: &Pod) -> Result<()> {
        addr_v6(ns, "eth0", pod.addr6, 128)?;
        route(ns, &format!("default via {POD_GATEWAY6} dev eth0"))
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
}

/// The address pods of `node` route through in the bridged layout: the
/// first of its pod CIDR, on `cni0`.
fn pod_gateway(node: &Node) -> Ipv4Addr {
    let [a, b, c, _] = node.pod_net.octets();
    Ipv4Addr::new(a, b, c, 1)
}

/// The node's own address in its IPv6 pod CIDR, on `cni0` in the bridged
/// layout: the first of it.
fn pod_gateway6(node: &Node) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(node.pod_net6) | 1)
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

/// Makes the LAN side of a node's uplink take XDP frames, as a NIC does:
/// an XDP_PASS program on `ifname` of `ns`, its link pinned at `pin` so it
/// goes with the interface rather than with this process.
fn attach_xdp_pass(ns: &str, ifname: &str, pin: &Path) -> Result<()> {
    in_netns(ns, || crate::xdp_pass::attach(ifname)?.pin(pin))?
        .with_context(|| format!("attaching an XDP program to {ifname} in {ns}"))
}

/// Creates a veth pair between `ns_a` and `ns_b` with both ends up.
fn veth_up(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    veth(ns_a, if_a, ns_b, if_b)?;
    up(ns_a, if_a)?;
    up(ns_b, if_b)
}

fn addr_v4(ns: &str, ifname: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
    addr(ns, ifname, &format!("{ip}/{prefix_len}"))
}

/// Adds an IPv6 address without duplicate address detection (`nodad`, as
/// CNIs add theirs), so it is usable at once.
fn addr_v6(ns: &str, ifname: &str, ip: Ipv6Addr, prefix_len: u8) -> Result<()> {
    addr(ns, ifname, &format!("{ip}/{prefix_len}"))
}
