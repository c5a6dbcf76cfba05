//! In-cluster traffic: pods reaching ClusterIPs, as Services and their
//! endpoints change.
use super::*;

/// Kubernetes: "should serve a basic endpoint from pods". The Service
/// starts without pods; pods come and go, and the agents on both nodes
/// follow each change.
pub(super) fn basic_endpoint(bed: &mut Bed) -> Result<Verdict> {
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
pub(super) fn multiport_named(bed: &mut Bed) -> Result<Verdict> {
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
pub(super) fn source_ip(bed: &mut Bed) -> Result<Verdict> {
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
                    who.peer.ip() == client.addr,
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
pub(super) fn hairpin(bed: &mut Bed) -> Result<Verdict> {
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
                who.peer.ip() == seen_as,
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
pub(super) fn up_and_down(bed: &mut Bed) -> Result<Verdict> {
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
    let in_maps = |bed: &Bed, vip: SocketAddr, present: bool| -> Result<Duration> {
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

/// Kubernetes: "should be rejected when no endpoints exist" — refused,
/// not left to time out, over TCP (RST) and UDP (port unreachable), from
/// pods on both nodes and from outside through the NodePort.
pub(super) fn no_endpoints(bed: &mut Bed) -> Result<Verdict> {
    let tcp = bed.vip("empty", 0)?;
    let udp = bed.vip("empty", 1)?;
    let mut slowest = Duration::ZERO;
    let mut check = |bed: &Bed, client: &Client, target: SocketAddr, proto: Proto| -> Result<()> {
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
pub(super) fn affinity(bed: &mut Bed) -> Result<Verdict> {
    let clients = both_clients(bed)?;
    let outside = bed.outside();
    let web = bed.vip("web", 0)?;
    let answers = bed.ask_n(&clients[0], web, Proto::Tcp, SPREAD)?;
    answered_by("without affinity", &answers, &["web-1", "web-2"])?;
    let mut targets: Vec<(Client, SocketAddr)> = clients
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
pub(super) fn tcp_and_udp(bed: &mut Bed) -> Result<Verdict> {
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

/// The demo's counting: each counter pod increments a key in Redis through
/// the `redis` ClusterIP, from its own node's data plane. The seed's
/// counters name Redis by its hosts entry, the IPv4 ClusterIP; over IPv6 a
/// counter on each node is given Redis' IPv6 ClusterIP instead, as
/// Kubernetes' `REDIS_SERVICE_HOST` gives it to the clients of an
/// IPv6-first Service.
pub(super) fn redis_counting(bed: &mut Bed) -> Result<Verdict> {
    let counters = match bed.family {
        Family::V4 => bed
            .state
            .pods
            .iter()
            .filter(|p| p.app == App::Counter)
            .map(|p| p.name.clone())
            .collect(),
        Family::V6 => start_ipv6_counters(bed)?,
    };
    let result = count_through_redis(bed, &counters);
    if bed.family == Family::V6 {
        for pod in &counters {
            bed.remove_endpoints_of(pod)?;
            bed.cluster.remove_pod(pod)?;
        }
    }
    result
}

/// A counter on each node, configured as the seed's but with Redis' IPv6
/// ClusterIP for its host; their names.
fn start_ipv6_counters(bed: &mut Bed) -> Result<Vec<String>> {
    let redis = bed.vip("redis", 0)?.ip().to_string();
    let seed = bed
        .state
        .pods
        .iter()
        .find(|p| p.app == App::Counter)
        .context("the seed runs no counter")?;
    let mut env = seed.env.clone();
    let host = env
        .iter_mut()
        .find(|(k, _)| k == "REDIS_HOST")
        .context("the seed's counter has no REDIS_HOST")?;
    host.1 = redis;
    let mut names = Vec::new();
    for (n, node) in bed.node_names().iter().enumerate() {
        let name = format!("counter-ipv6-{}", n + 1);
        let mut pod = bed.state.place_pod(&name, node, App::Counter)?;
        pod.env = env.clone();
        // No Service selects them.
        pod.labels = [("app".to_string(), "counter-ipv6".to_string())].into();
        bed.add_pod(pod)?;
        names.push(name);
    }
    Ok(names)
}

fn count_through_redis(bed: &Bed, counters: &[String]) -> Result<Verdict> {
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
    ensure!(
        counters.len() >= 2,
        "there should be a counter on each node"
    );
    let mut last: Option<i64> = None;
    let mut rows = Vec::new();
    for _ in 0..3 {
        for pod in counters {
            let counter = bed.pod_client(pod)?;
            let node = counter.node.unwrap_or_default();
            let target = SocketAddr::new(counter.addr, COUNTER_PORT);
            let outcome = bed.run_in(&client, || traffic::get_any(target))??;
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
