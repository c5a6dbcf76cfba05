//! End-to-end tier for the agent on the Kubernetes API: the real
//! `xdplb agent`, without `--manifests`, runs inside a node namespace with
//! `--kubeconfig` pointing at the API server double (tests/common/
//! apiserver.rs), which listens inside that namespace too. `xdplb services`
//! and real connections from the client namespace show that the data plane
//! follows what the API says, through changes, broken watches and an API
//! server outage. Needs root; without it every test fails (never skips)
//! and says why.
// `common` re-exports the packet tests' provisioning helpers, unused here.
#[allow(unused_imports)]
mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread;
use std::time::{Duration, Instant};

use common::agent::{
    reply, Conn, Pod, COUNTER_NODE_PORT, COUNTER_PORT, COUNTER_VIP, POD_ADDRS, REDIS_PORT,
    REDIS_VIP, SPARE_PORT, TIMEOUT,
};
use common::apiserver::Kind;
use common::kube_agent::{
    cluster_ip_service, endpoint_slice, in_namespace, labelled, node_object, node_port_service,
    Frontends, KubeAgent, KubeCluster, HEADLESS_LABEL, PROXY_NAME_LABEL,
};

/// The agent promises changes within about a second (its debounce is
/// 100 ms); this leaves slack for a loaded machine without letting a slow
/// watcher pass.
const APPLY_BOUND: Duration = Duration::from_secs(2);
/// A new connection is answered by the expected pod within this.
const SERVE_BOUND: Duration = Duration::from_secs(2);
/// Reconnecting after an error waits out the watcher's backoff (kube-rs:
/// exponential from 0.8 s, jittered), which keeps growing through an outage.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// How long the API server stays down.
const OUTAGE: Duration = Duration::from_secs(4);
/// Enough connections that Maglev leaving a backend unused would be a bug.
const CONNECTIONS: usize = 20;

const SPARE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const SPARE_NODE_PORT: u16 = 31007;
const KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

fn fe(addr: Ipv4Addr, port: u16) -> String {
    format!("{addr}:{port}/TCP")
}

/// A NodePort's frontends: at the node's address, and at 127.0.0.1 for the
/// node's own processes (localhost NodePorts, on by default).
fn node_port_fes(node: Ipv4Addr, port: u16) -> [String; 2] {
    [fe(node, port), fe(Ipv4Addr::LOCALHOST, port)]
}

fn be(addr: Ipv4Addr, port: u16) -> String {
    format!("{addr}:{port}")
}

fn build() -> KubeCluster {
    KubeCluster::build().expect("building the cluster and the API server double")
}

/// Started and ready (/healthz 200).
fn ready_agent(kc: &KubeCluster) -> KubeAgent<'_> {
    let mut agent = kc.must("starting the agent", kc.start_agent());
    let took = kc.must("agent readiness", agent.wait_ready());
    eprintln!("agent ready after {took:?}");
    agent
}

/// Writes this node's Node, redis (ClusterIP, on the first pod) and the
/// counter app (NodePort, on both pods) into the double, as the API server
/// would hold them; the frontends they make.
fn seed(kc: &KubeCluster) -> Frontends {
    let node = kc.node();
    kc.api.apply(node_object(node));
    kc.api
        .apply(cluster_ip_service("redis", REDIS_VIP, REDIS_PORT));
    kc.api.apply(endpoint_slice(
        "redis-1",
        "redis",
        REDIS_PORT,
        &POD_ADDRS[..1],
    ));
    kc.api.apply(node_port_service(
        "counter-app",
        COUNTER_VIP,
        COUNTER_PORT,
        COUNTER_NODE_PORT,
    ));
    kc.api.apply(endpoint_slice(
        "counter-app-1",
        "counter-app",
        COUNTER_PORT,
        &POD_ADDRS,
    ));
    let both = POD_ADDRS.map(|a| be(a, COUNTER_PORT)).to_vec();
    let mut want = Frontends::from([
        (
            fe(REDIS_VIP, REDIS_PORT),
            vec![be(POD_ADDRS[0], REDIS_PORT)],
        ),
        (fe(COUNTER_VIP, COUNTER_PORT), both.clone()),
    ]);
    for np in node_port_fes(node.addr, COUNTER_NODE_PORT) {
        want.insert(np, both.clone());
    }
    want
}

/// `xdplb services` right now is exactly `want`.
fn assert_frontends(kc: &KubeCluster, want: &Frontends, when: &str) {
    let frontends = kc.must("xdplb services", kc.frontends());
    assert_eq!(
        &frontends,
        want,
        "xdplb services {when}{}",
        kc.diagnostics()
    );
}

/// Waits until `xdplb services` is exactly `want`; how long that took.
fn wait_frontends(kc: &KubeCluster, what: &str, bound: Duration, want: &Frontends) -> Duration {
    let took = kc.must(what, kc.wait_frontends(what, bound, |f| f == want));
    eprintln!("{what}: in the maps after {took:?}");
    took
}

/// The pod of the node whose answer to `line` `answer` is.
fn served_by<'a>(pods: &'a [Pod; 2], answer: &str, line: &str) -> Option<&'a Pod> {
    pods.iter().find(|pod| answer == reply(pod, line))
}

/// One line over a new connection to `to`, answered by `pod`.
fn assert_served_by(kc: &KubeCluster, to: SocketAddrV4, pod: &Pod, when: &str) {
    let answer = kc.must(
        &format!("{to}, {when}"),
        kc.cluster.request(kc.node(), to, "hello"),
    );
    assert_eq!(answer, reply(pod, "hello"), "{to}, {when}");
}

/// `count` new connections to `to` are answered by the node's pods; which.
fn pods_serving(kc: &KubeCluster, to: SocketAddrV4, count: usize, when: &str) -> BTreeSet<String> {
    let node = kc.node();
    (0..count)
        .map(|i| {
            let line = format!("GET /{i}");
            let answer = kc.must(
                &format!("{to} connection {i}, {when}"),
                kc.cluster.request(node, to, &line),
            );
            served_by(&node.pods, &answer, &line)
                .unwrap_or_else(|| panic!("{to} connection {i}, {when}: answered {answer:?}"))
                .name
                .clone()
        })
        .collect()
}

/// Sends `line` over the established `conn`, which `pod` must answer.
fn exchange(kc: &KubeCluster, conn: &mut Conn, pod: &Pod, line: &str) {
    let answer = kc.must(
        &format!("established connection, {line}"),
        conn.exchange(line),
    );
    assert_eq!(answer, reply(pod, line), "established connection, {line}");
}

#[test]
fn initial_list_programs_every_service() {
    let kc = build();
    let node = kc.node();
    let [p1, p2] = &node.pods;
    let mut want = seed(&kc);
    // One more in another namespace, on the second pod.
    kc.api.apply(in_namespace(
        cluster_ip_service("spare", SPARE_VIP, SPARE_PORT),
        "kube-system",
    ));
    kc.api.apply(in_namespace(
        endpoint_slice("spare-1", "spare", SPARE_PORT, &[p2.addr]),
        "kube-system",
    ));
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p2.addr, SPARE_PORT)]);

    let _agent = ready_agent(&kc);
    // No waiting: the first sync, which /healthz 200 stands for, already
    // had every initial list.
    assert_frontends(&kc, &want, "once /healthz answers 200");
    for kind in KINDS {
        assert_eq!(
            kc.api.count(kind, "list"),
            1,
            "{kind:?} listed more than once{}",
            kc.diagnostics()
        );
    }

    let redis = SocketAddrV4::new(REDIS_VIP, REDIS_PORT);
    assert_served_by(&kc, redis, p1, "redis ClusterIP");
    let spare = SocketAddrV4::new(SPARE_VIP, SPARE_PORT);
    assert_served_by(&kc, spare, p2, "kube-system/spare ClusterIP");
    let all: BTreeSet<String> = node.pods.iter().map(|p| p.name.clone()).collect();
    let counter = SocketAddrV4::new(COUNTER_VIP, COUNTER_PORT);
    assert_eq!(
        pods_serving(&kc, counter, CONNECTIONS, "counter-app ClusterIP"),
        all,
        "{CONNECTIONS} counter-app ClusterIP connections did not reach both pods"
    );
    let node_port = SocketAddrV4::new(node.addr, COUNTER_NODE_PORT);
    assert_eq!(
        pods_serving(&kc, node_port, CONNECTIONS, "counter-app NodePort"),
        all,
        "{CONNECTIONS} counter-app NodePort connections did not reach both pods"
    );
}

#[test]
fn adds_modifies_and_deletes_reach_the_maps() {
    let kc = build();
    let node = kc.node();
    let [p1, p2] = &node.pods;
    let seeded = seed(&kc);
    let _agent = ready_agent(&kc);
    assert_frontends(&kc, &seeded, "once /healthz answers 200");
    let spare = SocketAddrV4::new(SPARE_VIP, SPARE_PORT);
    let spare_node_port = SocketAddrV4::new(node.addr, SPARE_NODE_PORT);
    let mut latencies = Vec::new();

    // A new Service and its EndpointSlice.
    kc.api
        .apply(cluster_ip_service("spare", SPARE_VIP, SPARE_PORT));
    kc.api
        .apply(endpoint_slice("spare-1", "spare", SPARE_PORT, &[p1.addr]));
    let mut want = seeded.clone();
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p1.addr, SPARE_PORT)]);
    latencies.push(wait_frontends(&kc, "added Service", APPLY_BOUND, &want));
    kc.must(
        "added Service",
        kc.cluster.wait_served_by(node, spare, p1, SERVE_BOUND),
    );

    // The EndpointSlice's endpoint moves to the other pod.
    kc.api
        .apply(endpoint_slice("spare-1", "spare", SPARE_PORT, &[p2.addr]));
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p2.addr, SPARE_PORT)]);
    latencies.push(wait_frontends(
        &kc,
        "modified EndpointSlice",
        APPLY_BOUND,
        &want,
    ));
    kc.must(
        "moved endpoint",
        kc.cluster.wait_served_by(node, spare, p2, SERVE_BOUND),
    );
    for i in 0..5 {
        assert_served_by(
            &kc,
            spare,
            p2,
            &format!("new connection {i} after the move"),
        );
    }

    // The Service itself changes: it becomes a NodePort.
    kc.api.apply(node_port_service(
        "spare",
        SPARE_VIP,
        SPARE_PORT,
        SPARE_NODE_PORT,
    ));
    for np in node_port_fes(node.addr, SPARE_NODE_PORT) {
        want.insert(np, vec![be(p2.addr, SPARE_PORT)]);
    }
    latencies.push(wait_frontends(&kc, "modified Service", APPLY_BOUND, &want));
    kc.must(
        "new NodePort",
        kc.cluster
            .wait_served_by(node, spare_node_port, p2, SERVE_BOUND),
    );

    // The Service goes away (its slice stays, as it may for a moment in a
    // cluster): both frontends leave the maps, the others stay.
    kc.api.delete(Kind::Service, "default", "spare");
    latencies.push(wait_frontends(&kc, "deleted Service", APPLY_BOUND, &seeded));
    for to in [spare, spare_node_port] {
        kc.must(
            "deleted Service",
            kc.cluster.wait_unserved(node, to, SERVE_BOUND),
        );
    }
    assert_served_by(&kc, SocketAddrV4::new(REDIS_VIP, REDIS_PORT), p1, "redis");
    eprintln!("add, slice change, Service change, delete: {latencies:?}");

    // Every change came over the watches opened after the first lists.
    for kind in KINDS {
        assert_eq!(
            kc.api.count(kind, "list"),
            1,
            "{kind:?} relisted{}",
            kc.diagnostics()
        );
    }
}

#[test]
fn agent_rides_out_closed_streams_410_and_an_api_server_outage() {
    let kc = build();
    let node = kc.node();
    let [p1, p2] = &node.pods;
    let mut want = seed(&kc);
    let agent = ready_agent(&kc);
    let redis = SocketAddrV4::new(REDIS_VIP, REDIS_PORT);
    let counter = SocketAddrV4::new(COUNTER_VIP, COUNTER_PORT);
    let mut conn = kc.must(
        "connecting to redis",
        kc.cluster.connect(node, redis, TIMEOUT),
    );
    exchange(&kc, &mut conn, p1, "before anything broke");
    kc.wait_api("every watch open", RECOVERY_BOUND, |api| {
        KINDS.iter().all(|&k| api.open_watches(k) == 1)
    });

    // The maps unchanged, the established connection and new ones served.
    let serving = |conn: &mut Conn, want: &Frontends, redis_pod: &Pod, when: &str| {
        assert_frontends(&kc, want, when);
        exchange(&kc, conn, p1, when);
        assert_served_by(&kc, redis, redis_pod, when);
        assert!(
            !pods_serving(&kc, counter, 1, when).is_empty(),
            "counter-app, {when}"
        );
    };

    // 1. Every watch stream ends cleanly, as on a watch timeout.
    kc.api.close_watches();
    serving(&mut conn, &want, p1, "right after the watch streams closed");
    kc.wait_api("every watch resumed", RECOVERY_BOUND, |_| {
        kc.all_kinds("watch", 2)
    });
    serving(&mut conn, &want, p1, "after the watches resumed");
    kc.api
        .apply(cluster_ip_service("spare", SPARE_VIP, SPARE_PORT));
    kc.api
        .apply(endpoint_slice("spare-1", "spare", SPARE_PORT, &[p1.addr]));
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p1.addr, SPARE_PORT)]);
    wait_frontends(&kc, "change after the watches resumed", APPLY_BOUND, &want);

    // 2. Every watch gets 410 Gone (an ERROR event) and must relist.
    kc.api.expire_watches();
    serving(&mut conn, &want, p1, "right after 410 Gone");
    kc.wait_api("every kind relisted", RECOVERY_BOUND, |_| {
        kc.all_kinds("list", 2)
    });
    serving(&mut conn, &want, p1, "after the relists");
    kc.api
        .apply(endpoint_slice("spare-1", "spare", SPARE_PORT, &[p2.addr]));
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p2.addr, SPARE_PORT)]);
    wait_frontends(&kc, "change after the relists", RECOVERY_BOUND, &want);

    // 3. The API server goes down, and the cluster moves on meanwhile:
    // redis moves to the other pod and spare is deleted.
    kc.api.down();
    kc.api
        .apply(endpoint_slice("redis-1", "redis", REDIS_PORT, &[p2.addr]));
    kc.api.delete(Kind::Service, "default", "spare");
    let down = Instant::now();
    let mut stale = Vec::new();
    while down.elapsed() < OUTAGE {
        serving(&mut conn, &want, p1, "while the API server is down");
        let (code, body) = kc.must("/healthz while down", agent.healthz());
        assert_eq!(
            code,
            200,
            "/healthz while the data plane serves the last state: {body}{}",
            kc.diagnostics()
        );
        stale = body["staleWatches"].as_array().cloned().unwrap_or_default();
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        stale.len(),
        3,
        "/healthz should name every watch as stale after {OUTAGE:?} down: {stale:?}{}",
        kc.diagnostics()
    );

    kc.must("bringing the API server back", kc.api_up());
    want.remove(&fe(SPARE_VIP, SPARE_PORT));
    want.insert(fe(REDIS_VIP, REDIS_PORT), vec![be(p2.addr, REDIS_PORT)]);
    wait_frontends(
        &kc,
        "changes made while the API server was down",
        RECOVERY_BOUND,
        &want,
    );
    kc.must(
        "redis on its new pod",
        kc.cluster.wait_served_by(node, redis, p2, SERVE_BOUND),
    );
    kc.must(
        "deleted spare",
        kc.cluster
            .wait_unserved(node, SocketAddrV4::new(SPARE_VIP, SPARE_PORT), SERVE_BOUND),
    );
    let start = Instant::now();
    loop {
        let (code, body) = kc.must("/healthz after the outage", agent.healthz());
        if code == 200 && body["staleWatches"].as_array().is_some_and(Vec::is_empty) {
            eprintln!(
                "/healthz without stale watches {:?} after the outage",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < RECOVERY_BOUND,
            "/healthz still reports stale watches: {code} {body}{}",
            kc.diagnostics()
        );
        thread::sleep(Duration::from_millis(100));
    }

    // And once reconnected, changes are prompt again.
    kc.api
        .apply(endpoint_slice("redis-1", "redis", REDIS_PORT, &[p1.addr]));
    want.insert(fe(REDIS_VIP, REDIS_PORT), vec![be(p1.addr, REDIS_PORT)]);
    wait_frontends(&kc, "change after the outage", APPLY_BOUND, &want);
}

#[test]
fn objects_the_agent_must_skip_are_skipped() {
    let kc = build();
    let node = kc.node();
    let [p1, p2] = &node.pods;
    let vip = |last| Ipv4Addr::new(10, 96, 0, last);
    let (web, theirs, theirs_later, marker) = (vip(50), vip(51), vip(52), vip(53));
    let other_proxy = |object| labelled(object, PROXY_NAME_LABEL, "other");
    let headless = |object| labelled(object, HEADLESS_LABEL, "");

    kc.api.apply(node_object(node));
    kc.api.apply(cluster_ip_service("web", web, SPARE_PORT));
    kc.api
        .apply(endpoint_slice("web-1", "web", SPARE_PORT, &[p1.addr]));
    // Another proxy's Service, with a slice that would serve it.
    kc.api.apply(other_proxy(cluster_ip_service(
        "theirs", theirs, SPARE_PORT,
    )));
    kc.api
        .apply(endpoint_slice("theirs-1", "theirs", SPARE_PORT, &[p1.addr]));
    // A slice labelled headless naming web: its endpoint must not join web.
    kc.api.apply(headless(endpoint_slice(
        "web-headless",
        "web",
        SPARE_PORT,
        &[p2.addr],
    )));

    let _agent = ready_agent(&kc);
    let mut want = Frontends::from([(fe(web, SPARE_PORT), vec![be(p1.addr, SPARE_PORT)])]);
    assert_frontends(&kc, &want, "from the initial lists");
    for i in 0..5 {
        assert_served_by(
            &kc,
            SocketAddrV4::new(web, SPARE_PORT),
            p1,
            &format!("web, connection {i}"),
        );
    }
    assert!(
        kc.cluster
            .request(node, SocketAddrV4::new(theirs, SPARE_PORT), "hello")
            .is_err(),
        "another proxy's Service is served"
    );

    // The same over the watches, followed by a Service that is ours: once
    // it is in the maps, the skipped ones had their chance.
    kc.api.apply(other_proxy(cluster_ip_service(
        "theirs-later",
        theirs_later,
        SPARE_PORT,
    )));
    kc.api.apply(endpoint_slice(
        "theirs-later-1",
        "theirs-later",
        SPARE_PORT,
        &[p1.addr],
    ));
    kc.api.apply(headless(endpoint_slice(
        "web-headless-2",
        "web",
        SPARE_PORT,
        &[p2.addr],
    )));
    kc.api
        .apply(cluster_ip_service("marker", marker, SPARE_PORT));
    kc.api
        .apply(endpoint_slice("marker-1", "marker", SPARE_PORT, &[p2.addr]));
    want.insert(fe(marker, SPARE_PORT), vec![be(p2.addr, SPARE_PORT)]);
    wait_frontends(&kc, "marker after the skipped objects", APPLY_BOUND, &want);
    thread::sleep(Duration::from_millis(300));
    assert_frontends(&kc, &want, "a while after the skipped objects");

    // A programmed Service handed over to another proxy leaves the maps.
    kc.api
        .apply(other_proxy(cluster_ip_service("web", web, SPARE_PORT)));
    want.remove(&fe(web, SPARE_PORT));
    wait_frontends(&kc, "web handed to another proxy", APPLY_BOUND, &want);
    kc.must(
        "web handed to another proxy",
        kc.cluster
            .wait_unserved(node, SocketAddrV4::new(web, SPARE_PORT), SERVE_BOUND),
    );

    // Skipped by the API server, as kube-proxy has it skip them: the agent
    // asks only for its own objects.
    let selector = format!("!{PROXY_NAME_LABEL},!{HEADLESS_LABEL}");
    for request in kc.api.requests() {
        if matches!(request.kind, Some(Kind::Service | Kind::EndpointSlice)) {
            assert_eq!(
                request.param("labelSelector"),
                Some(selector.as_str()),
                "{request:?}"
            );
        }
    }
}

#[test]
fn requests_are_read_only() {
    let kc = build();
    let node = kc.node();
    let [p1, p2] = &node.pods;
    let mut want = seed(&kc);
    let _agent = ready_agent(&kc);

    // Some of everything the agent may react to: changes, a resumed watch,
    // a relist.
    kc.api
        .apply(cluster_ip_service("spare", SPARE_VIP, SPARE_PORT));
    kc.api
        .apply(endpoint_slice("spare-1", "spare", SPARE_PORT, &[p1.addr]));
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p1.addr, SPARE_PORT)]);
    wait_frontends(&kc, "added Service", APPLY_BOUND, &want);
    kc.api.close_watches();
    kc.wait_api("every watch resumed", RECOVERY_BOUND, |_| {
        kc.all_kinds("watch", 2)
    });
    kc.api.expire_watches();
    kc.wait_api("every kind relisted", RECOVERY_BOUND, |_| {
        kc.all_kinds("list", 2)
    });
    kc.api
        .apply(endpoint_slice("spare-1", "spare", SPARE_PORT, &[p2.addr]));
    kc.api.delete(Kind::Service, "default", "counter-app");
    want.insert(fe(SPARE_VIP, SPARE_PORT), vec![be(p2.addr, SPARE_PORT)]);
    want.remove(&fe(COUNTER_VIP, COUNTER_PORT));
    for np in node_port_fes(node.addr, COUNTER_NODE_PORT) {
        want.remove(&np);
    }
    wait_frontends(&kc, "changes after the relist", RECOVERY_BOUND, &want);
    // Time for anything the agent would write after a sync.
    thread::sleep(Duration::from_secs(1));

    let requests = kc.api.requests();
    let others: Vec<_> = requests
        .iter()
        .filter(|r| r.kind.is_none() || !matches!(r.verb.as_str(), "list" | "watch"))
        .collect();
    assert!(
        others.is_empty(),
        "requests other than GET list/watch of Services, EndpointSlices and Nodes: {others:#?}"
    );
    let used: BTreeSet<(Kind, &str)> = requests
        .iter()
        .filter_map(|r| Some((r.kind?, r.verb.as_str())))
        .collect();
    let expected: BTreeSet<(Kind, &str)> = KINDS
        .into_iter()
        .flat_map(|kind| [(kind, "list"), (kind, "watch")])
        .collect();
    assert_eq!(used, expected, "{requests:#?}");
}

const POOL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);

/// The node announcing `addr`, as the agent wrote it in `LB_ADDRS_V4`.
fn announcer_of(kc: &KubeCluster, addr: Ipv4Addr) -> Option<String> {
    let maps = kc
        .node()
        .pin_path
        .join(format!("v{}", lb_common::LAYOUT_VERSION))
        .join("maps");
    let maps = lb_userspace::datapath::Maps::from_pins(&maps).ok()?;
    let info = maps
        .lb_addrs()
        .get(&lb_common::addr::to_map(addr), 0)
        .ok()?;
    Some(info.node().to_string()).filter(|n| !n.is_empty())
}

fn wait_announcer(kc: &KubeCluster, want: &str, bound: Duration) {
    let start = Instant::now();
    while announcer_of(kc, POOL_ADDR).as_deref() != Some(want) {
        if start.elapsed() > bound {
            panic!(
                "{POOL_ADDR} not announced by {want} within {bound:?} (by {:?}){}",
                announcer_of(kc, POOL_ADDR),
                kc.diagnostics()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Another agent's node lease, renewed now.
fn node_lease(node: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": format!("xdplb-node-{node}"),
            "namespace": "kube-system",
            "labels": {"xdplb.io/node": node},
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": 15,
            "renewTime": jiff::Timestamp::now().to_string(),
        },
    })
}

/// With a pool, the agent writes the Service's status once as the holder
/// of the status lease (a restart rewrites nothing), and the nodes that
/// announce are those whose agents renew their node lease: another node's
/// lease makes it a candidate, and going stale takes it out again. SIGTERM
/// releases the leases.
#[test]
fn lb_pool_status_is_written_once_and_announcers_follow_node_leases() {
    let kc = build();
    let node = kc.node();
    let mut ready = node_object(node);
    ready["status"]["conditions"] = serde_json::json!([{"type": "Ready", "status": "True"}]);
    kc.api.apply(ready);
    let mut web = node_port_service("web", SPARE_VIP, SPARE_PORT, SPARE_NODE_PORT);
    web["spec"]["type"] = "LoadBalancer".into();
    kc.api.apply(web);
    kc.api.apply(endpoint_slice(
        "web-1",
        "web",
        SPARE_PORT,
        &[node.pods[0].addr],
    ));
    let range = format!("{POOL_ADDR}-{POOL_ADDR}");
    let args = ["--lb-pool-range", &range, "--namespace", "kube-system"];
    let mut agent = kc.must("starting the agent", kc.start_agent_with(&args));
    kc.must("agent readiness", agent.wait_ready());

    let written = |api: &common::apiserver::ApiServer| {
        api.get(Kind::Service, "default", "web").unwrap()["status"]["loadBalancer"]["ingress"]
            == serde_json::json!([{"ip": POOL_ADDR.to_string(), "ipMode": "VIP"}])
    };
    kc.wait_api("the status written", RECOVERY_BOUND, written);
    wait_announcer(&kc, &node.name, RECOVERY_BOUND);

    // A node that wins the address's rendezvous over this one.
    let other = (1..)
        .map(|i| format!("other-{i}"))
        .find(|o| {
            let both = [node.name.clone(), o.clone()];
            lb_userspace::model::lb_addrs::announcer(POOL_ADDR, &both) == Some(o)
        })
        .unwrap();
    kc.api.apply(node_lease(&other));
    wait_announcer(&kc, &other, RECOVERY_BOUND);
    // Its agent renews no more: once the lease lapses, this node announces.
    wait_announcer(&kc, &node.name, RECOVERY_BOUND);

    // A restarted agent finds the status as it wants it.
    drop(agent);
    let mut agent = kc.must("restarting the agent", kc.start_agent_with(&args));
    kc.must("agent readiness", agent.wait_ready());
    let tries = kc.api.count_all(Kind::Lease);
    kc.wait_api(
        "the leases renewed after the restart",
        RECOVERY_BOUND,
        |api| api.count_all(Kind::Lease) >= tries + 4,
    );
    assert_eq!(
        kc.api.count(Kind::Service, "patch"),
        1,
        "{}",
        kc.diagnostics()
    );
    assert!(written(&kc.api));

    // SIGTERM: the agent releases both leases on its way out, so the other
    // agents take over at once.
    kc.must("SIGTERM", agent.terminate(RECOVERY_BOUND));
    for lease in ["xdplb-lb-status", &format!("xdplb-node-{}", node.name)] {
        let lease = kc.api.get(Kind::Lease, "kube-system", lease).unwrap();
        assert_eq!(
            lease["spec"]["holderIdentity"],
            serde_json::Value::Null,
            "{lease}"
        );
    }
}
