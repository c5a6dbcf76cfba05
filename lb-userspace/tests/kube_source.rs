//! The Kubernetes API source against an API server double: the real kube
//! client, through a kubeconfig, over HTTP on 127.0.0.1.

// Only the double: the rest of common/ is for the privileged tests.
#[path = "common/apiserver.rs"]
#[allow(dead_code)] // shared with other test binaries, which may use more of it
mod apiserver;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use apiserver::{ApiServer, Gone, Kind};
use lb_userspace::source::kube::{KubeSource, MIN_SYNC_INTERVAL, RBAC_RULES};
use lb_userspace::source::manifests::Objects;
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

const NODE: &str = "node-a";
/// Generous: the watcher's backoff after an outage reaches several seconds.
const WAIT: Duration = Duration::from_secs(20);
const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";

fn service(name: &str, port: u16, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port, "protocol": "TCP"}]},
    })
}

fn slice(name: &str, service: &str, addresses: &[&str], mut labels: Value) -> Value {
    labels["kubernetes.io/service-name"] = service.into();
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": 8080, "protocol": "TCP"}],
    })
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]},
    })
}

/// "namespace/name" of each object, per kind, in snapshot order.
fn names(objects: &Objects) -> (Vec<String>, Vec<String>, Vec<String>) {
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        )
    };
    (
        objects.services.iter().map(|s| name(&s.metadata)).collect(),
        objects.slices.iter().map(|s| name(&s.metadata)).collect(),
        objects.nodes.iter().map(|n| name(&n.metadata)).collect(),
    )
}

fn service_names(objects: &Objects) -> Vec<String> {
    names(objects).0
}

fn slice_names(objects: &Objects) -> Vec<String> {
    names(objects).1
}

fn port_of(objects: &Objects, name: &str) -> Option<i32> {
    let svc = objects
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))?;
    Some(svc.spec.as_ref()?.ports.as_ref()?.first()?.port)
}

fn addresses_of(objects: &Objects, name: &str) -> Vec<String> {
    objects
        .slices
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some(name))
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
        .collect()
}

async fn start(server: &ApiServer, proxy_name: Option<&str>) -> KubeSource {
    let client = KubeSource::connect(Some(server.kubeconfig()))
        .await
        .expect("client from the double's kubeconfig");
    KubeSource::start(client, NODE, proxy_name.map(str::to_owned))
}

async fn started(server: &ApiServer, proxy_name: Option<&str>) -> KubeSource {
    let mut source = start(server, proxy_name).await;
    timeout(WAIT, source.ready())
        .await
        .expect("initial lists complete");
    // The watches start after the lists; tests that break them need them.
    eventually("watches open", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.open_watches(k) == 1)
    })
    .await;
    source
}

/// Waits through changed() wakes until a snapshot passes `check`, so a
/// change that never wakes changed() fails the test.
async fn until(source: &mut KubeSource, what: &str, check: impl Fn(&Objects) -> bool) -> Objects {
    let deadline = Instant::now() + WAIT;
    loop {
        let snapshot = source.snapshot();
        if check(&snapshot) {
            return snapshot;
        }
        match timeout(deadline - Instant::now(), source.changed()).await {
            Ok(changed) => changed.expect("source alive"),
            Err(_) => panic!("{what}: not seen; last snapshot {:?}", names(&snapshot)),
        }
    }
}

/// Polls `check` until it holds, for state changed() does not announce.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: timed out");
        sleep(Duration::from_millis(20)).await;
    }
}

/// `future` is still pending after a while.
async fn stays_pending(future: impl Future) -> bool {
    timeout(Duration::from_millis(300), future).await.is_err()
}

fn populate(server: &ApiServer) {
    server.apply(service("web", 80, json!({})));
    server.apply(service("db", 5432, json!({"app": "db"})));
    let mut dns = service("dns", 53, json!({}));
    dns["metadata"]["namespace"] = "kube-system".into();
    server.apply(dns);
    server.apply(slice("web-1", "web", &["10.0.0.1", "10.0.0.2"], json!({})));
    server.apply(slice("db-1", "db", &["10.0.0.3"], json!({})));
    let mut dns_slice = slice("dns-1", "dns", &["10.0.0.4"], json!({}));
    dns_slice["metadata"]["namespace"] = "kube-system".into();
    server.apply(dns_slice);
    server.apply(node(NODE));
    server.apply(node("node-b"));
}

#[tokio::test]
async fn initial_list_yields_every_object() {
    let server = ApiServer::start().await;
    populate(&server);
    let source = started(&server, None).await;
    let snapshot = source.snapshot();
    assert_eq!(
        names(&snapshot),
        (
            vec![
                "default/db".into(),
                "default/web".into(),
                "kube-system/dns".into()
            ],
            vec![
                "default/db-1".into(),
                "default/web-1".into(),
                "kube-system/dns-1".into()
            ],
            vec![format!("/{NODE}")],
        )
    );
    assert_eq!(port_of(&snapshot, "db"), Some(5432));
    assert_eq!(addresses_of(&snapshot, "web-1"), ["10.0.0.1", "10.0.0.2"]);
    assert!(
        snapshot
            .services
            .iter()
            .all(|s| s.metadata.managed_fields.is_none()
                || s.metadata
                    .managed_fields
                    .as_ref()
                    .is_some_and(Vec::is_empty)),
        "managedFields are stripped"
    );

    for (resource, watch) in source.status().watches() {
        assert!(watch.listed && watch.connected, "{resource}: {watch:?}");
        assert!(
            watch.last_list.is_some() && watch.last_event.is_some(),
            "{resource}: {watch:?}"
        );
        assert_eq!(watch.errors, 0, "{resource}: {watch:?}");
    }

    // kube-proxy's selectors, on the wire.
    let selector = format!("!{PROXY_NAME},!{HEADLESS}");
    for request in server.requests() {
        match request.kind {
            Some(Kind::Node) => {
                assert_eq!(request.param("fieldSelector"), Some("metadata.name=node-a"));
                assert_eq!(request.param("labelSelector"), None);
            }
            _ => assert_eq!(request.param("labelSelector"), Some(selector.as_str())),
        }
    }
}

#[tokio::test]
async fn ready_waits_for_all_three_initial_lists() {
    let server = ApiServer::start().await;
    populate(&server);
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        server.hold_lists(kind);
    }
    let mut source = start(&server, None).await;
    {
        let mut ready = pin!(source.ready());
        eventually("all three lists requested", || {
            [Kind::Service, Kind::EndpointSlice, Kind::Node]
                .iter()
                .all(|&k| server.count(k, "list") == 1)
        })
        .await;
        assert!(stays_pending(&mut ready).await, "ready with no list done");
        server.release_lists(Kind::Service);
        assert!(stays_pending(&mut ready).await, "ready with Services only");
        server.release_lists(Kind::Node);
        assert!(
            stays_pending(&mut ready).await,
            "ready without EndpointSlices"
        );
        server.release_lists(Kind::EndpointSlice);
        timeout(WAIT, ready)
            .await
            .expect("ready once all three listed");
    }
    let (services, slices, nodes) = names(&source.snapshot());
    assert_eq!((services.len(), slices.len(), nodes.len()), (3, 3, 1));
}

#[tokio::test]
async fn adds_modifications_and_deletions_reach_the_snapshot() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;

    server.apply(service("api", 443, json!({})));
    server.apply(slice("api-1", "api", &["10.0.1.1"], json!({})));
    until(&mut source, "added Service and EndpointSlice", |o| {
        service_names(o).contains(&"default/api".into()) && addresses_of(o, "api-1") == ["10.0.1.1"]
    })
    .await;

    server.apply(service("web", 8080, json!({})));
    until(&mut source, "modified Service", |o| {
        port_of(o, "web") == Some(8080)
    })
    .await;
    server.apply(slice("web-1", "web", &["10.0.0.9"], json!({})));
    until(&mut source, "modified EndpointSlice", |o| {
        addresses_of(o, "web-1") == ["10.0.0.9"]
    })
    .await;

    server.delete(Kind::EndpointSlice, "default", "api-1");
    until(&mut source, "deleted EndpointSlice", |o| {
        !slice_names(o).contains(&"default/api-1".into())
    })
    .await;
    server.delete(Kind::Service, "default", "api");
    let snapshot = until(&mut source, "deleted Service", |o| {
        !service_names(o).contains(&"default/api".into())
    })
    .await;
    assert_eq!(service_names(&snapshot).len(), 3);
    assert_eq!(slice_names(&snapshot).len(), 3);
    // Every change came over the watches opened after the first list.
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        assert_eq!(server.count(kind, "list"), 1, "{kind:?} relisted");
    }
}

#[tokio::test]
async fn rides_out_a_closed_stream() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;
    let listed_at = server.revision();

    server.close_watches();
    assert_eq!(service_names(&source.snapshot()).len(), 3);
    eventually("every watch resumed", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.count(k, "watch") == 2)
    })
    .await;
    // Resumed where it left off: no relist.
    for request in server.requests() {
        if request.verb == "watch" {
            assert_eq!(
                request.param("resourceVersion"),
                Some(&*listed_at.to_string())
            );
        }
    }
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        assert_eq!(server.count(kind, "list"), 1, "{kind:?} relisted");
    }

    server.apply(service("api", 443, json!({})));
    until(&mut source, "change after the stream closed", |o| {
        service_names(o).contains(&"default/api".into())
    })
    .await;
}

#[tokio::test]
async fn rides_out_a_410_gone_event_keeping_the_last_state_until_relisted() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;

    server.hold_lists(Kind::Service);
    server.expire_watches();
    // Missed by the watch: only the relist can tell.
    server.delete(Kind::Service, "default", "db");
    server.apply(service("api", 443, json!({})));
    eventually("Services relist requested", || {
        server.count(Kind::Service, "list") == 2
    })
    .await;
    let during = source.snapshot();
    assert!(
        service_names(&during).contains(&"default/db".into()),
        "old state kept while relisting: {:?}",
        names(&during)
    );
    assert_eq!(slice_names(&during).len(), 3);

    server.release_lists(Kind::Service);
    let snapshot = until(&mut source, "relisted Services", |o| {
        service_names(o) == ["default/api", "default/web", "kube-system/dns"]
    })
    .await;
    assert_eq!(slice_names(&snapshot).len(), 3);
    // Each watch backs off on its own jittered schedule.
    eventually("EndpointSlices relisted", || {
        server.count(Kind::EndpointSlice, "list") == 2
    })
    .await;

    let status = source.status();
    assert!(status.services.errors >= 1, "{status:?}");
    assert!(
        status
            .services
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("too old"),
        "{status:?}"
    );
    eventually("Services watch connected", || {
        source.status().services.connected
    })
    .await;

    server.apply(slice("api-1", "api", &["10.0.1.1"], json!({})));
    until(&mut source, "updates after the relist", |o| {
        addresses_of(o, "api-1") == ["10.0.1.1"]
    })
    .await;
}

#[tokio::test]
async fn relists_when_the_watch_request_itself_gets_http_410() {
    let server = ApiServer::start().await;
    populate(&server);
    server.set_gone(Gone::Http);
    let mut source = started(&server, None).await;

    // No await between these: the watches resume only after the compaction,
    // from a resourceVersion it expired.
    server.close_watches();
    server.apply(service("api", 443, json!({})));
    server.compact();

    until(&mut source, "Service added while no watch was open", |o| {
        service_names(o).contains(&"default/api".into())
    })
    .await;
    assert_eq!(server.count(Kind::Service, "list"), 2);
    server.apply(service("api", 8443, json!({})));
    until(&mut source, "updates after the relist", |o| {
        port_of(o, "api") == Some(8443)
    })
    .await;
}

#[tokio::test]
async fn rides_out_the_api_server_going_down() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;

    server.down();
    eventually("disconnection noticed", || {
        let status = source.status();
        status
            .watches()
            .iter()
            .all(|(_, w)| !w.connected && w.errors > 0 && w.last_error.is_some())
    })
    .await;
    // The cluster moves on while the agent cannot see it.
    server.apply(service("api", 443, json!({})));
    server.delete(Kind::EndpointSlice, "default", "web-1");
    sleep(Duration::from_millis(1500)).await;
    let during = source.snapshot();
    assert_eq!(service_names(&during).len(), 3, "{:?}", names(&during));
    assert_eq!(addresses_of(&during, "web-1"), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(names(&during).2, [format!("/{NODE}")]);

    server.up().await;
    until(&mut source, "changes made while down", |o| {
        service_names(o).contains(&"default/api".into())
            && !slice_names(o).contains(&"default/web-1".into())
    })
    .await;
    eventually("reconnected", || {
        source.status().watches().iter().all(|(_, w)| w.connected)
    })
    .await;
    // The event log survived the outage, so the watches resumed from it.
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        assert_eq!(server.count(kind, "list"), 1, "{kind:?} relisted");
    }
    server.apply(service("api", 8443, json!({})));
    until(&mut source, "updates after the outage", |o| {
        port_of(o, "api") == Some(8443)
    })
    .await;
}

#[tokio::test]
async fn skips_headless_and_other_proxies_objects() {
    let server = ApiServer::start().await;
    server.apply(service("web", 80, json!({})));
    server.apply(service("theirs", 80, json!({PROXY_NAME: "other-proxy"})));
    server.apply(service("marked-headless", 80, json!({HEADLESS: ""})));
    server.apply(slice("web-1", "web", &["10.0.0.1"], json!({})));
    server.apply(slice(
        "theirs-1",
        "theirs",
        &["10.0.0.2"],
        json!({PROXY_NAME: "other-proxy"}),
    ));
    server.apply(slice(
        "headless-1",
        "headless",
        &["10.0.0.3"],
        json!({HEADLESS: ""}),
    ));
    server.apply(node(NODE));
    server.apply(node("node-b"));
    let mut source = started(&server, None).await;
    assert_eq!(
        names(&source.snapshot()),
        (
            vec!["default/web".into()],
            vec!["default/web-1".into()],
            vec![format!("/{NODE}")]
        )
    );

    // Skipped ones arriving over the watch, each followed by a marker that
    // is not: once the marker shows, the skipped one had its chance.
    server.apply(slice(
        "headless-2",
        "headless",
        &["10.0.0.4"],
        json!({HEADLESS: ""}),
    ));
    server.apply(service("theirs-2", 80, json!({PROXY_NAME: "other-proxy"})));
    server.apply(node("node-c"));
    server.apply(slice("marker-1", "marker", &["10.0.0.5"], json!({})));
    server.apply(service("marker", 80, json!({})));
    let node_version = server.apply(node(NODE)).to_string();
    let snapshot = until(&mut source, "markers", |o| {
        service_names(o).contains(&"default/marker".into())
            && slice_names(o).contains(&"default/marker-1".into())
            && o.nodes[0].metadata.resource_version.as_ref() == Some(&node_version)
    })
    .await;
    assert_eq!(
        names(&snapshot),
        (
            vec!["default/marker".into(), "default/web".into()],
            vec!["default/marker-1".into(), "default/web-1".into()],
            vec![format!("/{NODE}")]
        )
    );

    // Labelled away and back: the selection change arrives as a deletion
    // and an addition.
    server.apply(service("web", 80, json!({PROXY_NAME: "other-proxy"})));
    server.apply(slice("web-1", "web", &["10.0.0.1"], json!({HEADLESS: ""})));
    until(&mut source, "web handed to another proxy", |o| {
        !service_names(o).contains(&"default/web".into())
            && !slice_names(o).contains(&"default/web-1".into())
    })
    .await;
    server.apply(service("web", 80, json!({})));
    server.apply(slice("web-1", "web", &["10.0.0.1"], json!({})));
    until(&mut source, "web back", |o| {
        service_names(o).contains(&"default/web".into())
            && slice_names(o).contains(&"default/web-1".into())
    })
    .await;
}

#[tokio::test]
async fn service_proxy_name_selects_only_its_own_objects() {
    let server = ApiServer::start().await;
    server.apply(service("mine", 80, json!({PROXY_NAME: "xdplb"})));
    server.apply(service("default-proxy", 80, json!({})));
    server.apply(service("theirs", 80, json!({PROXY_NAME: "other-proxy"})));
    server.apply(slice(
        "mine-1",
        "mine",
        &["10.0.0.1"],
        json!({PROXY_NAME: "xdplb"}),
    ));
    server.apply(slice(
        "mine-headless",
        "mine",
        &["10.0.0.1"],
        json!({PROXY_NAME: "xdplb", HEADLESS: ""}),
    ));
    server.apply(slice(
        "default-proxy-1",
        "default-proxy",
        &["10.0.0.2"],
        json!({}),
    ));
    let source = started(&server, Some("xdplb")).await;
    let (services, slices, _) = names(&source.snapshot());
    assert_eq!(services, ["default/mine"]);
    assert_eq!(slices, ["default/mine-1"]);
    let selector = format!("{PROXY_NAME}=xdplb,!{HEADLESS}");
    let requests = server.requests();
    let selectors: BTreeSet<_> = requests
        .iter()
        .filter(|r| r.kind != Some(Kind::Node))
        .map(|r| r.param("labelSelector"))
        .collect();
    assert_eq!(selectors, BTreeSet::from([Some(selector.as_str())]));
}

#[tokio::test]
async fn a_burst_of_changes_wakes_changed_a_few_times() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;
    source.snapshot();
    assert!(
        timeout(MIN_SYNC_INTERVAL * 3, source.changed())
            .await
            .is_err(),
        "no wake without a change"
    );

    // A lone change after a quiet spell is not held back.
    let sent = Instant::now();
    server.apply(service("api", 443, json!({})));
    timeout(WAIT, source.changed())
        .await
        .expect("wake")
        .unwrap();
    let latency = sent.elapsed();
    assert!(latency < MIN_SYNC_INTERVAL, "lone change took {latency:?}");
    assert!(service_names(&source.snapshot()).contains(&"default/api".into()));

    // 50 changes spread over a few tenths of a second, as in a rollout.
    let burst = async {
        let started = Instant::now();
        for i in 0..50 {
            server.apply(slice("web-1", "web", &[&format!("10.0.1.{i}")], json!({})));
            sleep(Duration::from_millis(4)).await;
        }
        started.elapsed()
    };
    let wakes = async {
        let mut wakes = vec![Instant::now()];
        loop {
            timeout(WAIT, source.changed())
                .await
                .expect("wake")
                .unwrap();
            wakes.push(Instant::now());
            if addresses_of(&source.snapshot(), "web-1") == ["10.0.1.49"] {
                return wakes;
            }
        }
    };
    let (took, wakes) = tokio::join!(burst, wakes);
    let gaps: Vec<Duration> = wakes.windows(2).map(|w| w[1] - w[0]).collect();
    // One wake per interval the burst spans, plus the ends; a slow machine
    // stretches the burst, not the bound.
    let bound = (took.as_secs_f64() / MIN_SYNC_INTERVAL.as_secs_f64()) as usize + 2;
    assert!(
        gaps.len() <= bound,
        "{} wakes for 50 changes over {took:?}: {gaps:?}",
        gaps.len()
    );
    assert!(
        gaps.iter().skip(1).all(|gap| *gap >= MIN_SYNC_INTERVAL),
        "wakes closer than {MIN_SYNC_INTERVAL:?}: {gaps:?}"
    );
    assert!(
        timeout(MIN_SYNC_INTERVAL * 3, source.changed())
            .await
            .is_err(),
        "a wake after the last change was taken"
    );
}

#[tokio::test]
async fn bookmarks_let_watches_resume_after_compaction() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;
    // Services move the revision on; the other watches see none of it.
    for port in 1..=5 {
        server.apply(service("web", port, json!({})));
    }
    until(&mut source, "web updates", |o| port_of(o, "web") == Some(5)).await;
    server.bookmark();
    let bookmarked = server.revision();
    // Each stream delivers its bookmark before it ends.
    server.compact();
    server.close_watches();
    eventually("every watch resumed", || {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .all(|&k| server.count(k, "watch") == 2)
    })
    .await;
    let resumed: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.verb == "watch")
        .skip(3)
        .collect();
    for request in &resumed {
        assert_eq!(request.param("allowWatchBookmarks"), Some("true"));
        assert_eq!(
            request.param("resourceVersion"),
            Some(&*bookmarked.to_string()),
            "{request:?}"
        );
    }
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        assert_eq!(server.count(kind, "list"), 1, "{kind:?} relisted");
    }
    server.apply(slice("web-1", "web", &["10.0.0.7"], json!({})));
    until(&mut source, "updates after resuming", |o| {
        addresses_of(o, "web-1") == ["10.0.0.7"]
    })
    .await;
}

/// The verbs the source really uses, through lists, watches, resumes and a
/// relist, are exactly the reads RBAC_RULES declares for deploy/ (its
/// write is the status writer's, tests/lb_status.rs).
#[tokio::test]
async fn requests_are_exactly_the_rbac_rules() {
    let server = ApiServer::start().await;
    populate(&server);
    let mut source = started(&server, None).await;
    server.close_watches();
    server.apply(service("api", 443, json!({})));
    until(&mut source, "resumed", |o| service_names(o).len() == 4).await;
    server.expire_watches();
    server.apply(service("api", 8443, json!({})));
    until(&mut source, "relisted", |o| port_of(o, "api") == Some(8443)).await;

    let used: BTreeSet<(String, String, String)> = server
        .requests()
        .into_iter()
        .map(|r| {
            let kind = r
                .kind
                .unwrap_or_else(|| panic!("outside the three resources: {r:?}"));
            (
                kind.group().to_owned(),
                r.resource().expect("a kind"),
                r.verb,
            )
        })
        .collect();
    let declared: BTreeSet<(String, String, String)> = RBAC_RULES
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(|verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .filter(|(_, _, verb)| ["list", "watch"].contains(&verb.as_str()))
        .collect();
    assert_eq!(used, declared);
}
