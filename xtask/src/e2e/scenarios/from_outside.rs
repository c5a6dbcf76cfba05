//! Traffic from outside the cluster: NodePorts, LoadBalancer IPs, and
//! pool addresses announced by one node.
use super::*;

/// Kubernetes: "should be able to create a functioning NodePort service"
/// and "should preserve source IP with externalTrafficPolicy Local" (the
/// LoadBalancer tests' NodePort half).
pub(super) fn node_ports(bed: &mut Bed) -> Result<Verdict> {
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
                who.peer.ip() == outside.addr,
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

/// What traceroute sees through a NodePort and a ClusterIP: the node that
/// translates a datagram routes it, so a datagram whose TTL (hop limit)
/// runs out there is answered with time exceeded, as the node's kernel
/// answers it under kube-proxy. From outside (the router takes one hop)
/// it comes from the address the client sent to, the node's; from a pod,
/// from the ClusterIP it sent to.
pub(super) fn ttl_expiry(bed: &mut Bed) -> Result<Verdict> {
    let outside = bed.outside();
    let mut asked = Vec::new();
    for node in bed.node_names() {
        asked.push((outside.clone(), bed.node_port("np-cluster", 1, &node)?, 2));
    }
    for client in both_clients(bed)? {
        asked.push((client, bed.vip("dns", 1)?, 1));
    }
    for (client, target, hops) in asked {
        let attempt = bed.run_in(&client, || probe::ttl_expiry(target, hops))??;
        let from = attempt.result.with_context(|| {
            format!(
                "{client} -> {target}/udp from port {} with {hops} hops to live",
                attempt.source.port()
            )
        })?;
        ensure!(
            from == target.ip(),
            "{client} -> {target} with {hops} hops to live: time exceeded from {from}, not {}",
            target.ip()
        );
        note(format!(
            "{client} -> {target} with {hops} hops to live: time exceeded from {from}"
        ));
    }
    Ok(Verdict::Pass)
}

/// Kubernetes: "should be able to create a functioning LoadBalancer
/// service" (the router sends the LoadBalancer IP to node1).
pub(super) fn load_balancer(bed: &mut Bed) -> Result<Verdict> {
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
pub(super) fn lb_pool(bed: &mut Bed) -> Result<Verdict> {
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
            let node = &bed.node_names()[0];
            addr = Some(lb_pool::pool_address(
                &bed.bin,
                &bed.cluster.run,
                node,
                "default/lb-pool",
            )?);
            Ok(())
        },
    )?;
    let addr = addr.context("no address")?;
    let target = SocketAddr::new(addr.into(), 80);
    let frontend = format!("{target}/TCP");
    note(format!(
        "lb-pool got {addr} from {} ({})",
        cluster::LB_POOL,
        ms(took)
    ));
    let answers = bed.ask_n(&outside, target, Proto::Tcp, SPREAD)?;
    answered_by(&format!("{target}"), &answers, &["web-1", "web-2"])?;
    let names = bed.node_names();
    let macs = lb_pool::lan_macs(&bed.cluster.run, names.iter().map(String::as_str))?;
    let announcer = |bed: &Bed| lb_pool::announcer_seen_by_router(&bed.cluster.run, addr, &macs);
    let first = announcer(bed)?;
    listed_as_announced_by(bed, &frontend, &first, cluster::LB_POOL)?;
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

/// Whether `xdplb services` on every node lists `frontend` with `pool`
/// and `node` as the node that announces it, within [`APPLY_BOUND`]: the
/// node that answered first may be ahead of the others in applying it.
pub(super) fn listed_as_announced_by(
    bed: &Bed,
    frontend: &str,
    node: &str,
    pool: &str,
) -> Result<()> {
    within(
        &format!("every node lists {frontend} in {pool} announced by {node}"),
        APPLY_BOUND,
        || {
            for on in bed.node_names() {
                let rows = bed.frontends(&on)?;
                let row = rows
                    .iter()
                    .find(|r| r["frontend"] == frontend)
                    .with_context(|| format!("{on} lists no {frontend}"))?;
                ensure!(
                    row["lb_pool"] == pool && row["announced_by"] == node,
                    "xdplb services on {on}: {frontend} in pool {} announced by {}, expected {pool} and {node}",
                    row["lb_pool"],
                    row["announced_by"],
                );
            }
            Ok(())
        },
    )?;
    Ok(())
}
