//! The scenarios, after Kubernetes' Service e2e tests (test/e2e/network/
//! service.go). Each is bounded in time: every request has a timeout and
//! every wait for an agent to apply a change has [`APPLY_BOUND`].
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use super::{
    bed::{answered_by, within, Bed, Client},
    probe::{Proto, Who},
    service, web_port, Scenario, Verdict,
};
use crate::demo::{self, cluster, control_plane::App, traffic, COUNTER_PORT};

/// The agents apply a change within about a second (they poll their
/// manifests every 250 ms); this leaves room for a loaded machine.
const APPLY_BOUND: Duration = Duration::from_secs(3);
/// Connections enough that Maglev leaving a backend of two unused would be
/// a bug, not luck (2^-19).
const SPREAD: usize = 20;
/// "Refused at once".
const REFUSE_BOUND: Duration = Duration::from_secs(1);

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "basic endpoint: served from pods, followed as pods come and go",
            run: basic_endpoint,
        },
        Scenario {
            name: "multi-port Service with named target ports",
            run: multiport_named,
        },
        Scenario {
            name: "source pod IP preserved through a ClusterIP, same node and other node",
            run: source_ip,
        },
        Scenario {
            name: "hairpin: a pod reaches itself through its Service",
            run: hairpin,
        },
        Scenario {
            name: "Services up and down without disturbing others",
            run: up_and_down,
        },
        Scenario {
            name: "NodePort from outside on every node, externalTrafficPolicy Cluster and Local",
            run: node_ports,
        },
        Scenario {
            name: "LoadBalancer IP from outside",
            run: load_balancer,
        },
        Scenario {
            name: "no endpoints: connection refused at once",
            run: no_endpoints,
        },
        Scenario {
            name: "session affinity ClientIP holds a client to one backend",
            run: affinity,
        },
        Scenario {
            name: "TCP and UDP on the same port number",
            run: tcp_and_udp,
        },
        Scenario {
            name: "a long-lived connection survives an agent restart (kill -9)",
            run: agent_restart,
        },
        Scenario {
            name: "Redis traffic from the counter pods through the ClusterIP",
            run: redis_counting,
        },
        Scenario {
            name: "TCP transfer larger than the path MTU: PMTU discovery through the translation",
            run: path_mtu,
        },
        Scenario {
            name: "upload through a node uplink with a smaller MTU than the pods': PMTU about the frontend",
            run: uplink_mtu,
        },
        Scenario {
            name: "a process in a node's own network namespace reaches a ClusterIP",
            run: host_process,
        },
        Scenario {
            name: "LoadBalancer address from the pool, announced by one node, moving when it goes NotReady",
            run: lb_pool,
        },
    ]
}

fn note(text: impl AsRef<str>) {
    eprintln!("      {}", text.as_ref());
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn both_clients(bed: &Bed) -> Result<[Client; 2]> {
    Ok([bed.pod_client("client-1")?, bed.pod_client("client-2")?])
}

/// The probe pods on `node` whose `app` label is `app`.
fn pods_on(bed: &Bed, node: &str, app: &str) -> Vec<String> {
    bed.state
        .pods
        .iter()
        .filter(|p| p.node == node && p.labels.get("app").is_some_and(|a| a == app))
        .map(|p| p.name.clone())
        .collect()
}

/// How a change went: when the agents had applied it, and the requests
/// that failed outright (rather than reaching the old set of pods, or
/// being refused when there was none) while they applied it.
struct Change {
    took: Duration,
    failed: BTreeMap<String, usize>,
}

impl Change {
    fn describe(&self) -> String {
        let mut text = ms(self.took);
        if !self.failed.is_empty() {
            let failures: Vec<String> = self
                .failed
                .iter()
                .map(|(cause, n)| format!("{n} x {cause}"))
                .collect();
            text += &format!(
                " (requests that failed while it applied: {})",
                failures.join(", ")
            );
        }
        text
    }
}

/// Waits until every client's connections to `target` are answered by
/// exactly `want`. `from_none`: the Service had no endpoints before, so
/// refusals are the old state, not failures.
fn served_by(
    bed: &Bed,
    clients: &[Client],
    target: SocketAddrV4,
    want: &[&str],
    from_none: bool,
) -> Result<Change> {
    let mut failed = BTreeMap::new();
    let (took, _) = within(
        &format!("{target} answered by exactly {want:?}"),
        APPLY_BOUND,
        || {
            for client in clients {
                let answers = bed
                    .ask_n(client, target, Proto::Tcp, SPREAD)
                    .inspect_err(|e| {
                        let refused = e.chain().any(|c| {
                            c.downcast_ref::<std::io::Error>()
                                .is_some_and(|io| io.kind() == ErrorKind::ConnectionRefused)
                        });
                        if !(from_none && refused) {
                            *failed.entry(e.root_cause().to_string()).or_insert(0) += 1;
                        }
                    })?;
                answered_by(&format!("from {client}"), &answers, want)?;
            }
            Ok(())
        },
    )?;
    Ok(Change { took, failed })
}

fn refused_everywhere(bed: &Bed, clients: &[Client], target: SocketAddrV4) -> Result<Duration> {
    let (took, _) = within(&format!("{target} refused"), APPLY_BOUND, || {
        for client in clients {
            let took = bed.refused(client, target, Proto::Tcp)?;
            ensure!(took < REFUSE_BOUND, "refused only after {}", ms(took));
        }
        Ok(())
    })?;
    Ok(took)
}

/// Kubernetes: "should serve a basic endpoint from pods". The Service
/// starts without pods; pods come and go, and the agents on both nodes
/// follow each change.
fn basic_endpoint(bed: &mut Bed) -> Result<Verdict> {
    let clients = both_clients(bed)?;
    let vip = bed.vip("basic", 0)?;
    let took = refused_everywhere(bed, &clients, vip)?;
    note(format!(
        "no pods yet: {vip} refused from both nodes ({})",
        ms(took)
    ));

    bed.add_probe_pod("basic-1", "node1", &[("app", "basic")], &[])?;
    let took = served_by(bed, &clients, vip, &["basic-1"], true)?.describe();
    note(format!(
        "basic-1 started on node1: served from both nodes after {took}"
    ));

    bed.add_probe_pod("basic-2", "node2", &[("app", "basic")], &[])?;
    let took = served_by(bed, &clients, vip, &["basic-1", "basic-2"], false)?.describe();
    note(format!(
        "basic-2 started on node2: both pods answer after {took}"
    ));

    bed.remove_endpoints_of("basic-1")?;
    let took = served_by(bed, &clients, vip, &["basic-2"], false)?.describe();
    bed.cluster.remove_pod("basic-1")?;
    note(format!(
        "basic-1 deleted: only basic-2 answers after {took}"
    ));

    bed.remove_endpoints_of("basic-2")?;
    let took = refused_everywhere(bed, &clients, vip)?;
    bed.cluster.remove_pod("basic-2")?;
    note(format!("basic-2 deleted: refused again after {}", ms(took)));
    Ok(Verdict::Pass)
}

/// Kubernetes: "should serve multiport endpoints from pods", with target
/// ports given by name. The pods resolve `metrics` to different numbers,
/// and the EndpointSlices list their ports in the reverse of the Service's
/// order, so only matching by name finds each port's number.
fn multiport_named(bed: &mut Bed) -> Result<Verdict> {
    let http = bed.vip("multi", 0)?;
    let metrics = bed.vip("multi", 1)?;
    let want: BTreeMap<(&str, u16), u16> = [
        (("web-1", http.port()), 8080),
        (("web-2", http.port()), 8080),
        (("web-1", metrics.port()), 8081),
        (("web-2", metrics.port()), 8083),
    ]
    .into();
    for client in both_clients(bed)? {
        for target in [http, metrics] {
            let answers = bed.ask_n(&client, target, Proto::Tcp, SPREAD)?;
            answered_by(
                &format!("{client} -> {target}"),
                &answers,
                &["web-1", "web-2"],
            )?;
            for who in &answers {
                let expected = want[&(who.pod.as_str(), target.port())];
                ensure!(
                    who.port == expected,
                    "{client} -> {target} reached {} on port {}, expected {expected}",
                    who.pod,
                    who.port
                );
            }
        }
    }
    note(format!(
        "port {} (http) reached 8080 on both pods, port {} (metrics) 8081 on web-1 and 8083 on web-2, from both nodes",
        http.port(),
        metrics.port()
    ));
    Ok(Verdict::Pass)
}

/// Kubernetes: "should preserve source pod IP for traffic thru service
/// cluster IP".
fn source_ip(bed: &mut Bed) -> Result<Verdict> {
    for client in both_clients(bed)? {
        for (svc, pod) in [("web-node1", "web-1"), ("web-node2", "web-2")] {
            let vip = bed.vip(svc, 0)?;
            let server_node = bed.pod(pod)?.node.clone();
            for who in bed.ask_n(&client, vip, Proto::Tcp, 3)? {
                ensure!(
                    who.pod == pod,
                    "{client} -> {vip} answered by {who}, not {pod}"
                );
                ensure!(
                    *who.peer.ip() == client.addr,
                    "{client} -> {svc} {vip}: {pod} saw {}, not the client pod's address",
                    who.peer
                );
            }
            let place = if client.node.as_deref() == Some(server_node.as_str()) {
                "same node"
            } else {
                "other node"
            };
            note(format!(
                "{} -> {svc} {vip}: {pod} ({place}) saw {}",
                client.name, client.addr
            ));
        }
    }
    Ok(Verdict::Pass)
}

/// Kubernetes: "should allow pods to hairpin back to themselves through
/// services". The packet path source-NATs the hairpin flow to the node's
/// address, as kube-proxy masquerades it, so the pod sees its node, and its
/// reply comes back through the node to be translated. Socket-level
/// translation (pods in the hook cgroup) connects the pod straight to
/// itself, as Cilium's socket balancer does.
fn hairpin(bed: &mut Bed) -> Result<Verdict> {
    let by_socket = bed.host_hooks && bed.cluster.profile.pods_in_hook_cgroup;
    for (pod, svc) in [("web-1", "web-node1"), ("web-2", "web-node2")] {
        let client = bed.pod_client(pod)?;
        let node = client.node.clone().context("a pod has a node")?;
        let (seen_as, whose) = if by_socket {
            (client.addr, "its own")
        } else {
            (bed.node_addr(&node)?, "its node's")
        };
        let vip = bed.vip(svc, 0)?;
        for who in bed.ask_n(&client, vip, Proto::Tcp, 5)? {
            ensure!(who.pod == pod, "{pod} -> {vip} answered by {who}");
            ensure!(
                *who.peer.ip() == seen_as,
                "{pod} -> {vip}: the pod saw itself as {}, expected {whose} address {seen_as}",
                who.peer
            );
        }
        let mut conn = bed.open(&client, vip)?;
        for _ in 0..5 {
            conn.check()?;
        }
        note(format!(
            "{pod} -> {svc} {vip}: answered by itself, seen as {seen_as} ({whose} address, {node}); 6 exchanges on one connection"
        ));
    }
    Ok(Verdict::Pass)
}

/// Kubernetes: "should be able to up and down services". Three Services
/// come up, one goes down and comes back; the others and a long-lived
/// connection to a fourth are not disturbed.
fn up_and_down(bed: &mut Bed) -> Result<Verdict> {
    let names = ["updown-1", "updown-2", "updown-3"];
    let result = up_and_down_steps(bed, &names);
    for name in names {
        let _ = bed.state.remove_service(name);
    }
    bed.publish()?;
    result
}

fn up_and_down_steps(bed: &mut Bed, names: &[&str; 3]) -> Result<Verdict> {
    let clients = both_clients(bed)?;
    let web = bed.vip("web", 0)?;
    let mut conn = bed.open(&clients[0], web)?;
    // A request to a ClusterIP no data plane knows waits out its timeout,
    // so the nodes' maps tell when a change is applied.
    let in_maps = |bed: &Bed, vip: SocketAddrV4, present: bool| -> Result<Duration> {
        let frontend = format!("{vip}/TCP");
        let (took, _) = within(
            &format!("{frontend} listed = {present} on every node"),
            APPLY_BOUND,
            || {
                for node in bed.node_names() {
                    // Present means served: the Service's and its
                    // EndpointSlices' files change one after the other,
                    // so a frontend may be listed a moment before its
                    // backends.
                    let listed = bed.frontends(&node)?.iter().any(|r| {
                        r["frontend"] == frontend.as_str()
                            && (!present || r["backends"].as_array().is_some_and(|b| !b.is_empty()))
                    });
                    ensure!(listed == present, "{node} lists {frontend}: {listed}");
                }
                Ok(())
            },
        )?;
        Ok(took)
    };
    let up = |bed: &Bed, name: &str| in_maps(bed, bed.vip(name, 0)?, true);
    let serving = |bed: &Bed, name: &str| -> Result<()> {
        let vip = bed.vip(name, 0)?;
        for client in &clients {
            let answers = bed.ask_n(client, vip, Proto::Tcp, SPREAD)?;
            answered_by(
                &format!("{name} {vip} from {client}"),
                &answers,
                &["web-1", "web-2"],
            )?;
        }
        Ok(())
    };

    bed.state.add_services(
        names
            .iter()
            .map(|name| service(name, "ClusterIP", json!({ "app": "web" }), web_port())),
    )?;
    bed.publish()?;
    let mut slowest = Duration::ZERO;
    for name in names {
        slowest = slowest.max(up(bed, name)?);
    }
    for name in names {
        serving(bed, name)?;
    }
    conn.check()?;
    note(format!(
        "{names:?} in both nodes' data planes within {}, then served by both pods from both nodes",
        ms(slowest)
    ));

    let down_vip = bed.vip(names[1], 0)?;
    bed.state.remove_service(names[1])?;
    bed.publish()?;
    let took = in_maps(bed, down_vip, false)?;
    for client in &clients {
        if let Ok(who) = bed.ask(client, down_vip, Proto::Tcp) {
            bail!("{client} -> {down_vip} still answered by {who} after the nodes dropped it");
        }
    }
    for name in [names[0], names[2]] {
        serving(bed, name)?;
    }
    serving(bed, "web")?;
    conn.check()?;
    note(format!(
        "{} gone from both nodes' data planes after {} and not served; {} and {} and the connection to web undisturbed",
        names[1],
        ms(took),
        names[0],
        names[2]
    ));

    bed.state.add_services([service(
        names[1],
        "ClusterIP",
        json!({ "app": "web" }),
        web_port(),
    )])?;
    bed.publish()?;
    let took = up(bed, names[1])?;
    for name in names {
        serving(bed, name)?;
    }
    conn.check()?;
    note(format!(
        "{} up again at {} after {}; the connection to web {} -> {} held through {} exchanges",
        names[1],
        bed.vip(names[1], 0)?,
        ms(took),
        conn.source,
        conn.first.pod,
        conn.exchanges
    ));
    Ok(Verdict::Pass)
}

/// Kubernetes: "should be able to create a functioning NodePort service"
/// and "should preserve source IP with externalTrafficPolicy Local" (the
/// LoadBalancer tests' NodePort half).
fn node_ports(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    for node in bed.node_names() {
        let target = bed.node_port("np-cluster", 0, &node)?;
        let answers = bed.ask_n(&outside, target, Proto::Tcp, SPREAD)?;
        answered_by(
            &format!("Cluster policy, {target} on {node}"),
            &answers,
            &["web-1", "web-2"],
        )?;
        let seen: Vec<String> = answers
            .iter()
            .map(|w| format!("{} saw {}", w.pod, w.peer.ip()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        note(format!(
            "Cluster: {target} ({node}) reached both pods ({})",
            seen.join(", ")
        ));

        let target = bed.node_port("np-local", 0, &node)?;
        let local = pods_on(bed, &node, "web");
        let local: Vec<&str> = local.iter().map(String::as_str).collect();
        let answers = bed.ask_n(&outside, target, Proto::Tcp, SPREAD)?;
        answered_by(
            &format!("Local policy, {target} on {node}"),
            &answers,
            &local,
        )?;
        for who in &answers {
            ensure!(
                *who.peer.ip() == outside.addr,
                "Local policy, {target} on {node}: {} saw {}, not the client's address {}",
                who.pod,
                who.peer,
                outside.addr
            );
        }
        note(format!(
            "Local: {target} ({node}) reached only {} and it saw the client's address {}",
            local.join(", "),
            outside.addr
        ));
    }
    Ok(Verdict::Pass)
}

/// Kubernetes: "should be able to create a functioning LoadBalancer
/// service" (the router sends the LoadBalancer IP to node1).
fn load_balancer(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    let target = bed.lb_ip("lb-web", 0)?;
    let answers = bed.ask_n(&outside, target, Proto::Tcp, SPREAD)?;
    answered_by(&format!("{target}"), &answers, &["web-1", "web-2"])?;
    note(format!(
        "{target} from outside reached both pods over {SPREAD} connections"
    ));
    Ok(Verdict::Pass)
}

/// How long the announcement may take to move to another node when its
/// node goes NotReady: the agents apply the change within about a second
/// and the new announcer's gratuitous ARP updates the router at once; the
/// goal is 3 s, the bound leaves room for a loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// A LoadBalancer Service of class xdplb.io/l2, which the stand-in provider
/// leaves alone, gets an address from the agents' pool (`cluster::LB_POOL`)
/// with no route for it: exactly one node answers the router's ARP request.
/// Marked NotReady, that node gives the address up and the other takes it
/// over, and new connections from outside reach the pods through it.
fn lb_pool(bed: &mut Bed) -> Result<Verdict> {
    let result = lb_pool_steps(bed);
    for node in bed.node_names() {
        bed.state.set_node_ready(&node, true)?;
    }
    bed.publish()?;
    result
}

fn lb_pool_steps(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    let mut addr = None;
    let (took, _) = within(
        "Service lb-pool listed with a pool address",
        APPLY_BOUND,
        || {
            addr = Some(pool_address(bed)?);
            Ok(())
        },
    )?;
    let addr = addr.context("no address")?;
    let target = SocketAddrV4::new(addr, 80);
    let frontend = format!("{target}/TCP");
    note(format!(
        "lb-pool got {addr} from {} ({})",
        cluster::LB_POOL,
        ms(took)
    ));
    let answers = bed.ask_n(&outside, target, Proto::Tcp, SPREAD)?;
    answered_by(&format!("{target}"), &answers, &["web-1", "web-2"])?;
    let macs: BTreeMap<String, String> = bed
        .node_names()
        .into_iter()
        .map(|n| {
            let ns = bed.cluster.run.ns(&n);
            let path = format!("/sys/class/net/{}/address", cluster::NODE_LAN_IFACE);
            let mac = cluster::exec(&ns, "cat", &[&path])?.trim().to_string();
            Ok((n, mac))
        })
        .collect::<Result<_>>()?;
    let announcer = |bed: &Bed| -> Result<String> {
        let router = bed.cluster.run.ns("router");
        let text = cluster::exec(&router, "ip", &["neigh", "show", &addr.to_string()])?;
        let seen: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "lladdr").nth(1))
            .collect();
        let [mac] = seen[..] else {
            bail!("the router's neighbour table for {addr}: {text:?}, expected one MAC");
        };
        macs.iter()
            .find(|(_, m)| m.as_str() == mac)
            .map(|(n, _)| n.clone())
            .with_context(|| format!("the router has {mac} for {addr}, no node's MAC"))
    };
    let first = announcer(bed)?;
    listed_as_announced_by(bed, &frontend, &first)?;
    note(format!(
        "{target} from outside reached both pods over {SPREAD} connections; the router has {first}'s MAC {} for it",
        macs[&first]
    ));
    let other = bed
        .node_names()
        .into_iter()
        .find(|n| *n != first)
        .context("one node only")?;
    let before = bed.frontend_packets(&other, &frontend)?;
    bed.state.set_node_ready(&first, false)?;
    bed.publish()?;
    let (took, _) = within(
        &format!("{target} reached through {other}"),
        FAILOVER_BOUND,
        || {
            let now = announcer(bed)?;
            ensure!(now == other, "the router still has {now}'s MAC");
            bed.ask(&outside, target, Proto::Tcp)?;
            let after = bed.frontend_packets(&other, &frontend)?;
            ensure!(
                after > before,
                "{other} has counted no packet to {frontend}"
            );
            Ok(())
        },
    )?;
    note(format!(
        "{first} marked NotReady: {other} answers for {addr} and new connections go through it after {} (goal 3 s)",
        ms(took)
    ));
    Ok(Verdict::Pass)
}

/// Whether `xdplb services` on every node lists `frontend` with the pool
/// and `node` as the node that announces it.
fn listed_as_announced_by(bed: &Bed, frontend: &str, node: &str) -> Result<()> {
    for on in bed.node_names() {
        let rows = bed.frontends(&on)?;
        let row = rows
            .iter()
            .find(|r| r["frontend"] == frontend)
            .with_context(|| format!("{on} lists no {frontend}"))?;
        ensure!(
            row["lb_pool"] == cluster::LB_POOL && row["announced_by"] == node,
            "xdplb services on {on}: {frontend} in pool {} announced by {}, expected {} and {node}",
            row["lb_pool"],
            row["announced_by"],
            cluster::LB_POOL
        );
    }
    Ok(())
}

/// The address from the pool that `xdplb services` on the first node
/// lists for Service lb-pool.
fn pool_address(bed: &Bed) -> Result<Ipv4Addr> {
    let (first, last) = cluster::LB_POOL.split_once('-').context("LB_POOL")?;
    let (first, last): (Ipv4Addr, Ipv4Addr) = (first.parse()?, last.parse()?);
    let node = &bed.node_names()[0];
    bed.frontends(node)?
        .iter()
        .filter(|r| {
            r["service"]
                .as_str()
                .is_some_and(|s| s.starts_with("default/lb-pool:"))
        })
        .filter_map(|r| r["frontend"].as_str()?.split(':').next()?.parse().ok())
        .find(|a| (first..=last).contains(a))
        .with_context(|| {
            format!(
                "{node} lists no frontend of lb-pool in {}",
                cluster::LB_POOL
            )
        })
}

/// Kubernetes: "should be rejected when no endpoints exist" — refused,
/// not left to time out, over TCP (RST) and UDP (port unreachable), from
/// pods on both nodes and from outside through the NodePort.
fn no_endpoints(bed: &mut Bed) -> Result<Verdict> {
    let tcp = bed.vip("empty", 0)?;
    let udp = bed.vip("empty", 1)?;
    let mut slowest = Duration::ZERO;
    let mut check =
        |bed: &Bed, client: &Client, target: SocketAddrV4, proto: Proto| -> Result<()> {
            let took = bed.refused(client, target, proto)?;
            ensure!(
                took < REFUSE_BOUND,
                "{client} -> {target}/{proto} refused only after {}",
                ms(took)
            );
            slowest = slowest.max(took);
            Ok(())
        };
    for client in both_clients(bed)? {
        check(bed, &client, tcp, Proto::Tcp)?;
        check(bed, &client, udp, Proto::Udp)?;
    }
    note(format!(
        "ClusterIP {tcp}/tcp and {udp}/udp refused from pods on both nodes"
    ));
    let outside = bed.outside();
    for node in bed.node_names() {
        check(bed, &outside, bed.node_port("empty", 0, &node)?, Proto::Tcp)?;
        check(bed, &outside, bed.node_port("empty", 1, &node)?, Proto::Udp)?;
    }
    note(format!(
        "NodePorts refused from outside on both nodes; slowest refusal {}",
        ms(slowest)
    ));
    Ok(Verdict::Pass)
}

/// Kubernetes: "should have session affinity work for service with type
/// clusterIP" and "... for NodePort service". The same clients reach both
/// pods through a Service without affinity.
fn affinity(bed: &mut Bed) -> Result<Verdict> {
    let clients = both_clients(bed)?;
    let outside = bed.outside();
    let web = bed.vip("web", 0)?;
    let answers = bed.ask_n(&clients[0], web, Proto::Tcp, SPREAD)?;
    answered_by("without affinity", &answers, &["web-1", "web-2"])?;
    let mut targets: Vec<(Client, SocketAddrV4)> = clients
        .iter()
        .map(|c| Ok((c.clone(), bed.vip("sticky", 0)?)))
        .collect::<Result<_>>()?;
    for node in bed.node_names() {
        targets.push((outside.clone(), bed.node_port("sticky", 0, &node)?));
    }
    for (client, target) in targets {
        let answers = bed.ask_n(&client, target, Proto::Tcp, SPREAD)?;
        let first = &answers[0].pod;
        if let Some(other) = answers.iter().find(|w| w.pod != *first) {
            bail!(
                "{client} -> {target} with ClientIP affinity: {first} answered, then {}",
                other.pod
            );
        }
        note(format!(
            "{} -> {target}: all {SPREAD} connections to {first}",
            client.name
        ));
    }
    Ok(Verdict::Pass)
}

/// Kubernetes: "should serve a basic endpoint ... TCP and UDP on the same
/// port" (the DNS shape: port 53 over both). The target ports differ
/// (8053/TCP, 8054/UDP), so a protocol mix-up would not be answered.
fn tcp_and_udp(bed: &mut Bed) -> Result<Verdict> {
    let tcp = bed.vip("dns", 0)?;
    let udp = bed.vip("dns", 1)?;
    ensure!(tcp == udp, "the Service's two ports should share a number");
    for client in both_clients(bed)? {
        for (proto, port) in [(Proto::Tcp, 8053), (Proto::Udp, 8054)] {
            let answers = bed.ask_n(&client, tcp, proto, SPREAD)?;
            answered_by(
                &format!("{client} -> {tcp}/{proto}"),
                &answers,
                &["web-1", "web-2"],
            )?;
            if let Some(who) = answers
                .iter()
                .find(|w| w.proto != proto.to_string() || w.port != port)
            {
                bail!("{client} -> {tcp}/{proto} reached {who}, expected port {port}/{proto}");
            }
        }
        note(format!(
            "{}: {tcp}/tcp reached 8053/tcp and {udp}/udp 8054/udp, on both pods",
            client.name
        ));
    }
    Ok(Verdict::Pass)
}

/// The agent is killed with SIGKILL and restarted on the same pin path;
/// connections through node1 (from outside to a pod on the other node,
/// source-NATed; from a pod to pods on both nodes) keep working while it
/// is gone and after it is back.
fn agent_restart(bed: &mut Bed) -> Result<Verdict> {
    let node = "node1";
    let outside = bed.outside();
    let client = bed.pod_client("client-1")?;
    let nodeport = bed.node_port("np-node2", 0, node)?;
    let mut conns = vec![
        (
            "outside -> NodePort (SNAT to node2)",
            bed.open(&outside, nodeport)?,
        ),
        (
            "client-1 -> web-node2",
            bed.open(&client, bed.vip("web-node2", 0)?)?,
        ),
        (
            "client-1 -> web-node1",
            bed.open(&client, bed.vip("web-node1", 0)?)?,
        ),
    ];
    let check_all = |conns: &mut Vec<(&str, super::probe::Conn)>, when: &str| -> Result<()> {
        for (what, conn) in conns.iter_mut() {
            conn.check().with_context(|| format!("{what}, {when}"))?;
        }
        Ok(())
    };
    check_all(&mut conns, "before the restart")?;
    let label = bed.agents.get(node).context("no agent on node1")?.clone();
    bed.cluster.kill(&label)?;
    note(format!("killed {label} with SIGKILL"));
    check_all(&mut conns, "while the agent is gone")?;
    bed.ask(&outside, nodeport, Proto::Tcp)
        .context("a new connection while the agent is gone")?;
    let restarts = bed.agents.len();
    let label = format!("agent-{node}-restart-{restarts}");
    let t = Instant::now();
    demo::start_agent(&mut bed.cluster, node, &bed.bin, &label)?;
    bed.agents.insert(node.into(), label.clone());
    if let Err(err) = demo::wait_agent(&mut bed.cluster, &bed.state, node) {
        let without = match check_all(&mut conns, "with no agent running") {
            Ok(()) => "the data plane still serves the three connections with no agent".into(),
            Err(e) => format!("and the connections broke too: {e:#}"),
        };
        return Err(err.context(format!(
            "the agent restarted on {node}'s pin path did not come up; {without}"
        )));
    }
    note(format!(
        "restarted as {label} on the same pin path; healthy after {}",
        ms(t.elapsed())
    ));
    check_all(&mut conns, "after the restart")?;
    for (what, conn) in &conns {
        note(format!(
            "{what}: {} -> {} still answered by {} after {} exchanges",
            conn.source, conn.target, conn.first.pod, conn.exchanges
        ));
    }
    let answers = bed.ask_n(&outside, nodeport, Proto::Tcp, 5)?;
    answered_by("new connections after the restart", &answers, &["web-2"])?;
    Ok(Verdict::Pass)
}

/// The demo's counting: each counter pod increments a key in Redis through
/// the `redis` ClusterIP, from its own node's data plane.
fn redis_counting(bed: &mut Bed) -> Result<Verdict> {
    let client = bed.pod_client("client-1")?;
    let redis = bed.vip("redis", 0)?;
    let frontend = format!("{redis}/TCP");
    let nodes = bed.node_names();
    let packets = |bed: &Bed| -> Result<Vec<u64>> {
        nodes
            .iter()
            .map(|n| bed.frontend_packets(n, &frontend))
            .collect()
    };
    let before = packets(bed)?;
    let counters: Vec<(String, Ipv4Addr, String)> = bed
        .state
        .pods
        .iter()
        .filter(|p| p.app == App::Counter)
        .map(|p| (p.name.clone(), p.addr, p.node.clone()))
        .collect();
    ensure!(
        counters.len() >= 2,
        "the seed should run a counter on each node"
    );
    let mut last: Option<i64> = None;
    let mut rows = Vec::new();
    for _ in 0..3 {
        for (pod, addr, node) in &counters {
            let target = SocketAddrV4::new(*addr, COUNTER_PORT);
            let outcome = bed.run_in(&client, || traffic::get(target))??;
            let answer = outcome
                .answer
                .with_context(|| format!("GET http://{target}/ ({pod} on {node})"))?;
            ensure!(answer.pod == *pod, "{target} answered as {}", answer.pod);
            if let Some(last) = last {
                ensure!(
                    answer.count == last + 1,
                    "{pod} counted {}, expected {}: the counters do not share one Redis",
                    answer.count,
                    last + 1
                );
            }
            last = Some(answer.count);
            rows.push(format!("{pod} {}", answer.count));
        }
    }
    let after = packets(bed)?;
    for ((node, b), a) in nodes.iter().zip(&before).zip(&after) {
        ensure!(
            a > b,
            "the redis frontend {frontend} on {node} counted no packets ({b} before, {a} after): \
             its counter pod did not go through the ClusterIP"
        );
    }
    note(format!("counts: {}", rows.join(", ")));
    let growth: Vec<String> = nodes
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(n, (b, a))| format!("{n} +{}", a - b))
        .collect();
    note(format!("packets through {frontend}: {}", growth.join(", ")));
    Ok(Verdict::Pass)
}

const BULK_SIZE: usize = 200 * 1024;
const SMALL_MTU: u32 = 1280;
const MTU: u32 = 1500;

/// Issue 4: a transfer larger than the path MTU completes when a hop has a
/// smaller MTU. The router's link to the client drops to 1280 while every
/// other link stays at 1500: the pod sends 1500-byte packets, the router
/// answers each with ICMP fragmentation needed addressed to the translated
/// source (a node address or the LoadBalancer IP), and the node must
/// translate that back to the pod for it to lower its MSS.
fn path_mtu(bed: &mut Bed) -> Result<Verdict> {
    bed.cluster.set_mtu("router", "ext0", SMALL_MTU)?;
    let result = path_mtu_steps(bed);
    let restored = bed.cluster.set_mtu("router", "ext0", MTU);
    let verdict = result?;
    restored?;
    Ok(verdict)
}

fn path_mtu_steps(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    let node = "node1";
    let targets = [
        (
            "NodePort on node1, pod on node1",
            bed.node_port("np-node1", 0, node)?,
        ),
        (
            "NodePort on node1, pod on node2 (source NAT)",
            bed.node_port("np-node2", 0, node)?,
        ),
        ("LoadBalancer IP", bed.lb_ip("lb-web", 0)?),
    ];
    let web_pods: Vec<String> = bed
        .state
        .pods
        .iter()
        .filter(|p| p.labels.get("app").is_some_and(|a| a == "web"))
        .map(|p| bed.cluster.run.ns(&p.name))
        .collect();
    let router = bed.cluster.run.ns("router");
    for (what, target) in targets {
        // Forget what earlier transfers taught the pods about the path.
        for ns in &web_pods {
            cluster::exec(ns, "ip", &["route", "flush", "cache"])?;
        }
        let icmp_before = dest_unreachables_sent(&router)?;
        let xlate_before = bed
            .stats(node)?
            .get("xlate_icmp_error")
            .copied()
            .unwrap_or(0);
        let took = bed.bulk(&outside, target, BULK_SIZE).with_context(|| {
            format!("{what}: {BULK_SIZE} bytes over a path with a {SMALL_MTU}-byte hop")
        })?;
        let sent = dest_unreachables_sent(&router)? - icmp_before;
        let translated = bed
            .stats(node)?
            .get("xlate_icmp_error")
            .copied()
            .unwrap_or(0)
            - xlate_before;
        ensure!(
            sent > 0,
            "{what}: the router sent no ICMP fragmentation needed, so the transfer never \
             crossed the {SMALL_MTU}-byte hop with a larger packet and proved nothing"
        );
        note(format!(
            "{what} {target}: {} KB in {}; the router sent {sent} fragmentation-needed, {node} translated {translated} ICMP errors",
            BULK_SIZE / 1024,
            ms(took)
        ));
    }
    Ok(Verdict::Pass)
}

const UPLOAD_SIZE: usize = 20 * 1024;

/// Issue 12: a pod on a node whose own uplink has the smaller MTU (1280,
/// pods 1500) uploads 20 kB to endpoints on the other node through a
/// ClusterIP, a NodePort and a LoadBalancer IP. The pod's 1500-byte
/// packets are too big for the uplink once translated: the node must tell
/// the pod about the packet the pod sent (to the frontend), or the pod's
/// socket ignores it and the upload stalls. On the socket path the pod
/// connects to the endpoint itself, and the kernel's own error is right.
fn uplink_mtu(bed: &mut Bed) -> Result<Verdict> {
    let node = "node1";
    let set = |bed: &Bed, mtu| -> Result<()> {
        bed.cluster.set_mtu(node, cluster::NODE_LAN_IFACE, mtu)?;
        bed.cluster.set_mtu("lan", node, mtu)
    };
    set(bed, SMALL_MTU)?;
    let result = uplink_mtu_steps(bed, node);
    let restored = set(bed, MTU);
    let verdict = result?;
    restored?;
    Ok(verdict)
}

fn uplink_mtu_steps(bed: &Bed, node: &str) -> Result<Verdict> {
    let client = bed.pod_client("client-1")?;
    let targets = [
        ("ClusterIP, pod on node2", bed.vip("web-node2", 0)?),
        (
            "NodePort on node1, pod on node2",
            bed.node_port("np-node2", 0, node)?,
        ),
        ("LoadBalancer IP", bed.lb_ip("lb-web", 0)?),
    ];
    let node_ns = bed.cluster.run.ns(node);
    // What earlier transfers taught either end about the path: a server
    // that learnt a 1280-byte path to the node's address advertises the
    // smaller MSS, and no packet too big is ever sent.
    let mut forget = vec![client.ns.clone()];
    forget.extend(
        bed.state
            .pods
            .iter()
            .filter(|p| p.labels.get("app").is_some_and(|a| a == "web"))
            .map(|p| bed.cluster.run.ns(&p.name)),
    );
    for (what, target) in targets {
        let mut crossed = false;
        // The LoadBalancer IP has a pod on each node: enough uploads that
        // one goes to node2, across the small hop.
        for _ in 0..8 {
            for ns in &forget {
                cluster::exec(ns, "ip", &["route", "flush", "cache"])?;
            }
            let ours = bed.stats(node)?.get("icmp_frag_needed_sent").copied();
            let kernels = dest_unreachables_sent(&node_ns)?;
            let pod = bed.upload(&client, target, UPLOAD_SIZE).with_context(|| {
                format!("{what}: {UPLOAD_SIZE} bytes up through a {SMALL_MTU}-byte uplink")
            })?;
            if pod != "web-2" {
                continue;
            }
            let ours = bed
                .stats(node)?
                .get("icmp_frag_needed_sent")
                .copied()
                .unwrap_or(0)
                - ours.unwrap_or(0);
            let kernels = dest_unreachables_sent(&node_ns)? - kernels;
            ensure!(
                ours + kernels > 0,
                "{what}: nobody sent fragmentation needed, so no packet too big for the uplink                  was sent and the upload proved nothing"
            );
            note(format!(
                "{what} {target}: {} KB uploaded to {pod}; {node} sent {ours} fragmentation-needed from the data plane, {kernels} from its kernel",
                UPLOAD_SIZE / 1024
            ));
            crossed = true;
            break;
        }
        ensure!(crossed, "{what}: no upload reached the pod on node2");
    }
    Ok(Verdict::Pass)
}

/// Icmp OutDestUnreachs of the namespace `ns`.
fn dest_unreachables_sent(ns: &str) -> Result<u64> {
    let snmp = cluster::exec(ns, "cat", &["/proc/net/snmp"])?;
    let icmp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let [names, values] = icmp.as_slice() else {
        bail!("no Icmp lines in {ns}'s /proc/net/snmp");
    };
    let column = names
        .split_whitespace()
        .position(|n| n == "OutDestUnreachs")
        .context("no OutDestUnreachs in /proc/net/snmp")?;
    values
        .split_whitespace()
        .nth(column)
        .and_then(|v| v.parse().ok())
        .context("unreadable OutDestUnreachs")
}

/// The node client's bound: 16 requests of at most 2 s each would be 32 s;
/// a working path answers them in milliseconds.
const HOST_CLIENT_BOUND: Duration = Duration::from_secs(10);

/// Issue 4: processes of the node itself (hostNetwork pods, node agents)
/// reach ClusterIPs. XDP never sees their packets, so this needs the
/// agent's cgroup socket hooks, on the node's own cgroup (`--cgroup-path`).
fn host_process(bed: &mut Bed) -> Result<Verdict> {
    let result = host_process_steps(bed);
    if bed.host_hooks {
        return result;
    }
    Ok(Verdict::NotYetSupported(match result {
        Ok(_) => "`xdplb agent --help` lists no --cgroup-path, yet the scenario passed".into(),
        Err(err) => format!(
            "`xdplb agent --help` lists no --cgroup-path (expected to fail; it did: {err:#})"
        ),
    }))
}

fn host_process_steps(bed: &mut Bed) -> Result<Verdict> {
    let web = bed.vip("web", 0)?;
    let dns = bed.vip("dns", 1)?;
    for node in bed.node_names() {
        let cgroup = bed
            .cluster
            .run
            .cgroup(&node)
            .context("cgroup v2 is not mounted: the nodes have no cgroups of their own")?;
        let tcp = node_client(bed, &node, Proto::Tcp, web, 16)?;
        answered_by(
            &format!("{node} (its own namespace) -> {web}"),
            &tcp,
            &["web-1", "web-2"],
        )?;
        let udp = node_client(bed, &node, Proto::Udp, dns, 4)?;
        for (who, from) in &udp {
            ensure!(
                who.port == 8054 && *from == dns,
                "{node} -> {dns}/udp: {who}, the reply came from {from} rather than the ClusterIP"
            );
        }
        let peers: std::collections::BTreeSet<String> = tcp
            .iter()
            .map(|w| format!("{} saw {}", w.pod, w.peer.ip()))
            .collect();
        note(format!(
            "{node} (cgroup {}): {web} reached both pods ({}); {dns}/udp answered from the ClusterIP",
            cgroup.display(),
            peers.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(Verdict::Pass)
}

/// Runs `e2e-probe who` as a process of `node`: its namespace and cgroup.
fn node_client<T: NodeAnswer>(
    bed: &Bed,
    node: &str,
    proto: Proto,
    target: SocketAddrV4,
    count: usize,
) -> Result<Vec<T>> {
    let mut command = bed.cluster.node_command(node, &bed.bin.join("e2e-probe"))?;
    command
        .args([
            "who",
            &proto.to_string(),
            &target.to_string(),
            &count.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (ok, stdout, stderr) = run_bounded(command, HOST_CLIENT_BOUND)?;
    let answers: Vec<Result<T>> = stdout.lines().map(T::parse).collect();
    if !ok || answers.iter().any(Result::is_err) {
        let explain = bed.explain(
            node,
            SocketAddrV4::new(bed.node_addr(node)?, 40000),
            target,
            proto,
        );
        bail!(
            "{node} -> {target}/{proto} from the node's own namespace and cgroup:\n{}{}\n      \
             xdplb explain on {node}: {}",
            indent(&stdout),
            indent(&stderr),
            explain.trim()
        );
    }
    answers.into_iter().collect()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("        {l}\n")).collect()
}

/// An answer line of `e2e-probe who`.
trait NodeAnswer: Sized {
    fn parse(line: &str) -> Result<Self>;
}

impl NodeAnswer for Who {
    fn parse(line: &str) -> Result<Self> {
        Who::parse(line)
    }
}

/// A UDP answer and the source address the socket layer reported.
impl NodeAnswer for (Who, SocketAddrV4) {
    fn parse(line: &str) -> Result<Self> {
        let from = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("from="))
            .with_context(|| format!("no from= in {line:?}"))?
            .parse()?;
        Ok((Who::parse(line)?, from))
    }
}

/// Runs `command`, killing it after `bound`; returns whether it succeeded
/// and its output.
fn run_bounded(mut command: Command, bound: Duration) -> Result<(bool, String, String)> {
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (stdout, mut stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if status.is_none() {
        stderr += &format!("(killed after {} s)\n", bound.as_secs());
    }
    Ok((status.is_some_and(|s| s.success()), stdout, stderr))
}
