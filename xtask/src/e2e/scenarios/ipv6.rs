//! IPv6 on the dual-stack testbed (#14): the seed's counter app, whose
//! Services the control plane makes dual-stack, reached over IPv6 from
//! outside by its NodePort on both nodes' IPv6 addresses and by its IPv6
//! LoadBalancer IP, and from pods by its IPv6 ClusterIP; Redis by its IPv6
//! ClusterIP.
//!
//! None of these addresses is anyone's, or routed anywhere but to a node:
//! an answer from a counter pod means the entry node's data plane
//! translated the request and its reply. The packet counter `xdplb
//! services` shows for the Service on the entry node says it was that
//! node's (nothing else sends to these Services meanwhile).
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream},
};

use super::*;
use testbed::{cluster::CLIENT_ADDR6, control_plane, traffic};

/// The counter app's dual-stack Services (the seed's).
const NODE_PORT_SVC: &str = "counter-app";
const LB_SVC: &str = "counter-lb";

/// Kubernetes: "should be able to create a functioning NodePort service"
/// over IPv6 (dual-stack e2e). The counter NodePort on each node's IPv6
/// address from the client: one counter runs on each node, so every node
/// sends some connections to the other node's pod, which only answers
/// through the node if the node translated the client's address to its
/// own (source NAT), and some to its own pod.
pub(super) fn node_ports(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    let node_port = port(bed, NODE_PORT_SVC, "nodePort")?;
    let nodes: Vec<(String, Ipv6Addr)> = bed
        .cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.addr6))
        .collect();
    for (node, addr6) in nodes {
        let target = SocketAddr::V6(SocketAddrV6::new(addr6, node_port, 0, 0));
        let (local, remote) = counters_by_node(bed, &node);
        let seen = counted_through(bed, &outside, target, &node, &counters(bed))?;
        // The entry node's connection table: replies from the other node's
        // pod come back to the node's own address (source NAT), replies
        // from its own pod go to the client's.
        for (pods, to, what) in [
            (&remote, IpAddr::V6(addr6), "the node's address: source NAT"),
            (
                &local,
                IpAddr::V6(CLIENT_ADDR6),
                "the client's: no source NAT",
            ),
        ] {
            for pod in pods {
                let pod_ip = IpAddr::V6(bed.pod(pod)?.addr6);
                let replies = reply_destinations(bed, &node, pod_ip)?;
                ensure!(
                    replies.contains(&to),
                    "{node}'s connection table has no reply flow from {pod} ({pod_ip}) to {to} \
                     ({what}); reply flows from it go to {replies:?}"
                );
                if to == IpAddr::V6(CLIENT_ADDR6) {
                    ensure!(
                        !replies.contains(&IpAddr::V6(addr6)),
                        "{node} source-translated flows to its own pod {pod}"
                    );
                }
            }
        }
        note(format!(
            "{target} ({node}) from {}: answered by {} (its own; replies to the client) and {} \
             (the other node's; replies to {addr6}, source NAT); {seen}",
            CLIENT_ADDR6,
            local.join(", "),
            remote.join(", "),
        ));
    }
    Ok(Verdict::Pass)
}

/// Kubernetes: "should be able to create a functioning LoadBalancer
/// service" over IPv6: the counter-lb Service's IPv6 ingress IP, which the
/// router sends to node1 (the stand-in provider's way; an IPv6 pool
/// announced by NDP does not exist yet).
pub(super) fn load_balancer(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    let svc = bed.service(LB_SVC)?;
    let ip = control_plane::ingress_ips_v6(svc)
        .next()
        .with_context(|| format!("Service {LB_SVC} has no IPv6 ingress IP"))?;
    let target = SocketAddr::V6(SocketAddrV6::new(ip, port(bed, LB_SVC, "port")?, 0, 0));
    let entry = bed.node_names()[0].clone();
    let seen = counted_through(bed, &outside, target, &entry, &counters(bed))?;
    note(format!(
        "{target} from {CLIENT_ADDR6} (routed to {entry}) answered by both counters; {seen}"
    ));
    Ok(Verdict::Pass)
}

/// The counter's IPv6 ClusterIP from a pod on each node (both counters
/// answer), and Redis' IPv6 ClusterIP (PING).
pub(super) fn cluster_ip(bed: &mut Bed) -> Result<Verdict> {
    let vip = |bed: &Bed, name: &str| -> Result<SocketAddr> {
        let ip = control_plane::cluster_ip_of_family(bed.service(name)?, true)
            .with_context(|| format!("Service {name} has no IPv6 ClusterIP"))?;
        Ok(SocketAddr::new(ip, port(bed, name, "port")?))
    };
    let counter = vip(bed, NODE_PORT_SVC)?;
    let redis = vip(bed, "redis")?;
    for client in both_clients(bed)? {
        let node = client.node.clone().context("a pod has a node")?;
        let seen = counted_through(bed, &client, counter, &node, &counters(bed))?;
        note(format!(
            "{counter} from {} ({}) answered by both counters; {seen}",
            client.name,
            bed.pod(&client.name)?.addr6
        ));
        let (took, errors) = within(&format!("{redis} answers PING"), APPLY_BOUND, || {
            let reply = bed.run_in(&client, || redis_ping(redis))??;
            ensure!(reply.starts_with("+PONG"), "{redis} answered {reply:?}");
            Ok(())
        })?;
        note(format!(
            "{redis} (Redis) from {}: +PONG{}",
            client.name,
            retried(took, &errors)
        ));
    }
    Ok(Verdict::Pass)
}

fn port(bed: &Bed, name: &str, field: &str) -> Result<u16> {
    bed.service(name)?["spec"]["ports"][0][field]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("Service {name} has no ports[0].{field}"))
}

/// The counter pods' names.
fn counters(bed: &Bed) -> Vec<String> {
    bed.state
        .pods
        .iter()
        .filter(|p| p.app == App::Counter)
        .map(|p| p.name.clone())
        .collect()
}

/// The counter pods on `node` and on the other nodes.
fn counters_by_node(bed: &Bed, node: &str) -> (Vec<String>, Vec<String>) {
    bed.state
        .pods
        .iter()
        .filter(|p| p.app == App::Counter)
        .map(|p| (p.node == node, p.name.clone()))
        .fold((Vec::new(), Vec::new()), |(mut l, mut r), (here, name)| {
            if here {
                l.push(name);
            } else {
                r.push(name);
            }
            (l, r)
        })
}

/// The destination addresses of the reply flows from `pod_ip` in `node`'s
/// connection table (`xdplb flows`).
fn reply_destinations(bed: &Bed, node: &str, pod_ip: IpAddr) -> Result<Vec<IpAddr>> {
    let pin = bed.cluster.run.pin_path(node);
    let text = apps::xdplb(
        &bed.bin,
        &[
            "flows",
            "-o",
            "json",
            "--addr",
            &pod_ip.to_string(),
            "--pin-path",
            apps::path_str(&pin)?,
        ],
    )?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&text).context("xdplb flows -o json")?;
    Ok(rows
        .iter()
        .filter(|r| r["direction"] == "reply")
        .filter(|r| {
            r["src"]
                .as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .is_some_and(|s| s.ip() == pod_ip)
        })
        .filter_map(|r| Some(r["dst"].as_str()?.parse::<SocketAddr>().ok()?.ip()))
        .collect())
}

/// [`SPREAD`] requests from `client` to `target`, all answered by the
/// counter app, together by exactly `want`; and the packet counter of the
/// frontend's Service on `entry` grew by at least a packet per request. Retried
/// within [`APPLY_BOUND`] as a whole; what went wrong before is told.
fn counted_through(
    bed: &Bed,
    client: &Client,
    target: SocketAddr,
    entry: &str,
    want: &[String],
) -> Result<String> {
    let frontend = format!("{target}/TCP");
    let mut growth = 0;
    let (took, errors) = within(
        &format!("{target} answered by the counters {want:?}"),
        APPLY_BOUND,
        || {
            let before = bed.frontend_packets(entry, &frontend)?;
            let mut pods = Vec::new();
            for _ in 0..SPREAD {
                let outcome = bed.run_in(client, || traffic::get_any(target))??;
                let answer = outcome.answer.with_context(|| {
                    format!(
                        "{client} -> {target} from port {} after {}",
                        outcome.source_port,
                        ms(outcome.latency)
                    )
                })?;
                pods.push(answer.pod);
            }
            pods.sort();
            pods.dedup();
            let mut want = want.to_vec();
            want.sort();
            ensure!(
                pods == want,
                "{SPREAD} answers came from {pods:?}, expected exactly {want:?}"
            );
            let after = bed.frontend_packets(entry, &frontend)?;
            growth = after.saturating_sub(before);
            ensure!(
                growth >= SPREAD as u64,
                "{entry} counted {growth} packets to {frontend} for {SPREAD} connections: \
                 its data plane did not translate them"
            );
            Ok(())
        },
    )?;
    Ok(format!(
        "{entry}'s packet counter of the Service behind {frontend} grew by {growth}{}",
        retried(took, &errors)
    ))
}

fn retried(took: Duration, errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(
            " (after {} of retries; before: {})",
            ms(took),
            errors.join("; ")
        )
    }
}

/// PING to Redis at `target`; its first reply line.
fn redis_ping(target: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, traffic::CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("reading {target}'s reply"))?;
    Ok(line)
}
