//! The LoadBalancer status writer and the node leases against the API
//! server double: the real kube client over HTTP, several agents' writers
//! and leases in one process, each fed what its agent's sync would find
//! (the Services as listed, allocated from the pools).

#[path = "common/apiserver.rs"]
#[allow(dead_code)] // shared with other test binaries, which may use more of it
mod apiserver;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, Kind};
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::Api;
use lb_userspace::lb_status::{Change, StatusWriter, LEASE};
use lb_userspace::metrics::Metrics;
use lb_userspace::model::lb_addrs::{allocate, status_changes, Pools};
use lb_userspace::model::ModelOptions;
use lb_userspace::source::kube::{KubeSource, RBAC_NAMESPACED_RULES, RBAC_RULES};
use lb_userspace::source::node_leases::{NodeLease, NodeLeases};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

const NAMESPACE: &str = "kube-system";
/// Generous: a killed holder's lease lapses after 15 s, and the next
/// renewal may come 5 s later.
const WAIT: Duration = Duration::from_secs(40);

fn lb_service(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}],
        },
    })
}

fn pools() -> Pools {
    Pools::parse(
        &[],
        &[
            "192.168.50.200-192.168.50.210".into(),
            "fd00:10::200-fd00:10::220".into(),
        ],
    )
    .unwrap()
}

async fn client(server: &ApiServer) -> kube::Client {
    KubeSource::connect(Some(server.kubeconfig()))
        .await
        .unwrap()
}

/// What an agent's sync finds to write, from the Services as they are now.
async fn changes(client: &kube::Client) -> Vec<Change> {
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let opts = ModelOptions::default();
    let alloc = allocate(&services, &pools(), &opts);
    status_changes(&services, &alloc, &pools(), &opts)
}

/// Feeds every writer what a sync finds, as agents resyncing on watch
/// events do, until `check` holds.
async fn syncing_until(
    what: &str,
    client: &kube::Client,
    writers: &[&StatusWriter],
    check: impl Fn() -> bool,
) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        let found = changes(client).await;
        for w in writers {
            w.want(found.clone());
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        sleep(Duration::from_millis(50)).await;
    }
}

fn holder(server: &ApiServer) -> Option<String> {
    let lease = server.get(Kind::Lease, NAMESPACE, LEASE)?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

fn ingress(server: &ApiServer, name: &str) -> Value {
    server.get(Kind::Service, "default", name).unwrap()["status"]["loadBalancer"]["ingress"].clone()
}

fn patches(server: &ApiServer) -> usize {
    server.count(Kind::Service, "patch")
}

/// A dual-stack Service gets an address of each family in one write, and
/// syncs after it find nothing more to write.
#[tokio::test]
async fn a_dual_stack_service_gets_both_families_written_once() {
    let server = ApiServer::start().await;
    let mut svc = lb_service("dual");
    svc["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00:96::10"]);
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    svc["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    server.apply(svc);
    let client = client(&server).await;
    let w = StatusWriter::start(
        client.clone(),
        NAMESPACE,
        "node-a",
        Arc::new(Metrics::new()),
    );
    syncing_until("the status is written", &client, &[&w], || {
        patches(&server) == 1
    })
    .await;
    let written = ingress(&server, "dual");
    let ips: Vec<&str> = written
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips.len(), 2, "{written}");
    assert!(ips[0].starts_with("192.168.50.2"), "{written}");
    assert!(ips[1].starts_with("fd00:10::2"), "{written}");
    assert!(written
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["ipMode"] == "VIP"));
    assert!(changes(&client).await.is_empty());
    for _ in 0..10 {
        w.want(changes(&client).await);
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(patches(&server), 1, "written once");
}

#[tokio::test]
async fn the_lease_holder_writes_each_status_once_and_its_successor_keeps_it() {
    let server = ApiServer::start().await;
    server.apply(lb_service("web"));
    let client = client(&server).await;
    let metrics = || Arc::new(Metrics::new());

    let a = StatusWriter::start(client.clone(), NAMESPACE, "node-a", metrics());
    syncing_until("a writes the status", &client, &[&a], || {
        patches(&server) == 1
    })
    .await;
    assert_eq!(holder(&server).as_deref(), Some("node-a"));
    let written = ingress(&server, "web");
    let addr = written[0]["ip"].as_str().unwrap().to_owned();
    assert!(addr.starts_with("192.168.50.2"), "{written}");
    assert_eq!(written, json!([{"ip": addr, "ipMode": "VIP"}]));

    // A second agent follows; both keep syncing, nothing is rewritten.
    let tries = server.count_all(Kind::Lease);
    let b = StatusWriter::start(client.clone(), NAMESPACE, "node-b", metrics());
    syncing_until(
        "both have tried the lease again",
        &client,
        &[&a, &b],
        || server.count_all(Kind::Lease) >= tries + 4,
    )
    .await;
    assert!(changes(&client).await.is_empty());

    // The holder is killed (no release): b takes over once it lapses, and
    // finds nothing to write.
    drop(a);
    syncing_until("b takes the lease over", &client, &[&b], || {
        holder(&server).as_deref() == Some("node-b")
    })
    .await;
    // a restarts: it follows, and its sync finds nothing to write either.
    let a = StatusWriter::start(client.clone(), NAMESPACE, "node-a", metrics());
    let tries = server.count_all(Kind::Lease);
    syncing_until("a has tried the lease again", &client, &[&a, &b], || {
        server.count_all(Kind::Lease) >= tries + 4
    })
    .await;
    assert_eq!(patches(&server), 1, "{:#?}", server.requests());
    assert_eq!(ingress(&server, "web"), written);
    assert_eq!(holder(&server).as_deref(), Some("node-b"));

    // The Service leaves the pools: its address goes from the status.
    let mut node_port = lb_service("web");
    node_port["spec"]["type"] = "NodePort".into();
    node_port["status"] = server.get(Kind::Service, "default", "web").unwrap()["status"].clone();
    server.apply(node_port);
    syncing_until("b clears the status", &client, &[&a, &b], || {
        ingress(&server, "web").is_null()
    })
    .await;
    assert_eq!(patches(&server), 2);
    b.stop().await;
    assert_eq!(holder(&server), None, "released");
}

#[tokio::test]
async fn node_leases_name_the_nodes_alive_and_a_stopped_one_leaves_at_once() {
    let server = ApiServer::start().await;
    let client = client(&server).await;
    let leases = NodeLeases::start(client.clone(), NAMESPACE);
    leases.ready().await;
    let a = NodeLease::start(client.clone(), NAMESPACE, "node-a");
    let b = NodeLease::start(client.clone(), NAMESPACE, "node-b");
    let live = |want: &[&str]| {
        let want: BTreeSet<String> = want.iter().map(|n| n.to_string()).collect();
        leases.live(jiff::Timestamp::now()) == want
    };
    until("no node is Ready yet", || live(&[])).await;
    a.set_ready(true);
    b.set_ready(true);
    until("both alive", || live(&["node-a", "node-b"])).await;
    // A node the node controller calls NotReady leaves the candidates.
    b.set_ready(false);
    until("b released", || live(&["node-a"])).await;
    b.set_ready(true);
    until("b back", || live(&["node-a", "node-b"])).await;
    // SIGTERM: the agent releases its lease on the way out.
    a.stop().await;
    until("a released", || live(&["node-b"])).await;

    // Together with a status write, the requests are exactly what the
    // Role (leases) and the ClusterRole's write (services/status) grant.
    server.apply(lb_service("web"));
    let writer = StatusWriter::start(
        client.clone(),
        NAMESPACE,
        "node-b",
        Arc::new(Metrics::new()),
    );
    syncing_until("the status is written", &client, &[&writer], || {
        patches(&server) == 1
    })
    .await;
    let used: BTreeSet<(String, String, String)> = server
        .requests()
        .into_iter()
        .filter(|r| r.kind == Some(Kind::Lease) || r.verb == "patch")
        .map(|r| {
            let kind = r.kind.expect("a kind");
            (kind.group().to_owned(), r.resource().unwrap(), r.verb)
        })
        .collect();
    let declared: BTreeSet<(String, String, String)> = RBAC_NAMESPACED_RULES
        .iter()
        .chain(
            RBAC_RULES
                .iter()
                .filter(|(_, r, _)| *r == "services/status"),
        )
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect();
    assert_eq!(used, declared);
}
