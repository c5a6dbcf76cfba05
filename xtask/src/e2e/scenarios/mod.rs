//! The scenarios, after Kubernetes' Service e2e tests (test/e2e/network/
//! service.go). Each is bounded in time: every request has a timeout and
//! every wait for an agent to apply a change has [`APPLY_BOUND`].
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use super::{
    bed::{answered_by, within, Bed, Client, Family},
    probe::{self, Proto, Who},
    service, web_port, Scenario, Verdict,
};
use crate::progress;
use testbed::{
    apps::{self, COUNTER_PORT},
    cluster,
    control_plane::App,
    lb_pool, netns, traffic,
};

mod from_outside;
mod host;
mod in_cluster;
mod ipv6;
mod lb_pool6;
mod path_mtu;
mod restart;
/// The agents apply a change within about a second (they poll their
/// manifests every 250 ms); this leaves room for a loaded machine.
const APPLY_BOUND: Duration = Duration::from_secs(3);
/// Connections enough that Maglev leaving a backend of two unused would be
/// a bug, not luck (2^-19).
const SPREAD: usize = 20;
/// "Refused at once".
const REFUSE_BOUND: Duration = Duration::from_secs(1);
/// The IPv4 scenarios that run again over IPv6 (issue #14), the same code
/// with the bed handing out IPv6 addresses: every one whose features the
/// IPv6 path has. Left out: the pool (17).
const IN_BOTH_FAMILIES: [usize; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

pub fn all() -> Vec<Scenario> {
    let mut all = vec![
        v4(
            "basic endpoint: served from pods, followed as pods come and go",
            in_cluster::basic_endpoint,
        ),
        v4(
            "multi-port Service with named target ports",
            in_cluster::multiport_named,
        ),
        v4(
            "source pod IP preserved through a ClusterIP, same node and other node",
            in_cluster::source_ip,
        ),
        v4(
            "hairpin: a pod reaches itself through its Service",
            in_cluster::hairpin,
        ),
        v4(
            "Services up and down without disturbing others",
            in_cluster::up_and_down,
        ),
        v4(
            "NodePort from outside on every node, externalTrafficPolicy Cluster and Local",
            from_outside::node_ports,
        ),
        v4(
            "LoadBalancer IP from outside",
            from_outside::load_balancer,
        ),
        v4(
            "no endpoints: connection refused at once",
            in_cluster::no_endpoints,
        ),
        v4(
            "session affinity ClientIP holds a client to one backend",
            in_cluster::affinity,
        ),
        v4(
            "TCP and UDP on the same port number",
            in_cluster::tcp_and_udp,
        ),
        v4(
            "a long-lived connection survives an agent restart (kill -9)",
            restart::agent_restart,
        ),
        v4(
            "Redis traffic from the counter pods through the ClusterIP",
            in_cluster::redis_counting,
        ),
        v4(
            "TCP transfer larger than the path MTU: PMTU discovery through the translation",
            path_mtu::path_mtu,
        ),
        v4(
            "upload through a node uplink with a smaller MTU than the pods': PMTU about the frontend",
            path_mtu::uplink_mtu,
        ),
        v4(
            "a process in a node's own network namespace reaches a ClusterIP (IPv4: and a NodePort on localhost)",
            host::host_process,
        ),
        v4(
            "a datagram whose TTL runs out at the translating node gets time exceeded (traceroute)",
            from_outside::ttl_expiry,
        ),
        v4(
            "LoadBalancer address from the pool, announced by one node, moving when it goes NotReady",
            from_outside::lb_pool,
        ),
        v6(
            "the counter's NodePort from outside on both nodes' IPv6 addresses (source NAT to the other node)",
            ipv6::node_ports,
        ),
        v6(
            "the counter's LoadBalancer IPv6 ingress IP from outside",
            ipv6::load_balancer,
        ),
        v6(
            "the counter's and Redis' IPv6 ClusterIPs from a pod on each node",
            ipv6::cluster_ip,
        ),
        v6(
            "LoadBalancer IPv6 address from the pool, announced by NDP from one node, moving when it goes NotReady",
            lb_pool6::lb_pool6,
        ),
    ];
    let twins: Vec<Scenario> = IN_BOTH_FAMILIES
        .iter()
        .map(|n| v6(all[n - 1].name, all[n - 1].run))
        .collect();
    all.extend(twins);
    all
}
fn v4(name: &'static str, run: fn(&mut Bed) -> Result<Verdict>) -> Scenario {
    Scenario {
        name,
        run,
        family: Family::V4,
    }
}
fn v6(name: &'static str, run: fn(&mut Bed) -> Result<Verdict>) -> Scenario {
    Scenario {
        family: Family::V6,
        ..v4(name, run)
    }
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
    target: SocketAddr,
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
fn refused_everywhere(bed: &Bed, clients: &[Client], target: SocketAddr) -> Result<Duration> {
    let (took, _) = within(&format!("{target} refused"), APPLY_BOUND, || {
        for client in clients {
            let took = bed.refused(client, target, Proto::Tcp)?;
            ensure!(took < REFUSE_BOUND, "refused only after {}", ms(took));
        }
        Ok(())
    })?;
    Ok(took)
}
