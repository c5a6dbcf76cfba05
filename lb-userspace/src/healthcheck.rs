//! kube-proxy's service health-check servers: for every Service with
//! externalTrafficPolicy Local and a `healthCheckNodePort`, an HTTP server on
//! that port that cloud load balancers probe, so they send traffic only to
//! nodes that have a ready endpoint of the Service (anything else would be
//! dropped here, since Local forbids forwarding to another node).
//!
//! Status, body and content headers are kube-proxy's byte for byte
//! (pkg/proxy/healthcheck/service_health.go): probes and tools written
//! against kube-proxy keep working. It answers on any path, as kube-proxy
//! does, to GET and HEAD, as every server on the HTTP edge (`crate::http`).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::ready,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use hyper::StatusCode;

use crate::{
    http::{self, Limits, Reply, Routes, Server},
    model::DesiredState,
};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ServiceName {
    namespace: String,
    name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether the proxy as a whole is healthy, asked at every request.
pub type ProxyHealthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// One health-check port.
struct Port {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    /// Dropping it closes the port at once.
    _server: Server,
}

/// The health-check servers of every Service that wants one.
pub struct HealthCheckServers {
    bind: IpAddr,
    proxy_healthy: ProxyHealthy,
    status: http::Status,
    servers: BTreeMap<ServiceName, Port>,
}

impl HealthCheckServers {
    /// Listens on every address of both families, as kube-proxy does
    /// without `--nodeport-addresses`: `[::]`, which takes IPv4 too
    /// (net.ipv6.bindv6only is 0 on every distribution), or `0.0.0.0` on a
    /// node without IPv6. Every port answers 503 while `proxy_healthy`
    /// says no, as kube-proxy's do, so load balancers move off a node
    /// whose data plane no longer follows the cluster. All ports report to
    /// the one `status`.
    pub fn new(proxy_healthy: ProxyHealthy, status: http::Status) -> Self {
        Self::with_bind_ip(any_address(), proxy_healthy, status)
    }

    pub fn with_bind_ip(bind: IpAddr, proxy_healthy: ProxyHealthy, status: http::Status) -> Self {
        Self {
            bind,
            proxy_healthy,
            status,
            servers: BTreeMap::new(),
        }
    }

    /// Opens ports of new Services, closes those of Services that went or
    /// changed port, and updates the endpoint counts. Must run inside a
    /// tokio runtime. A port that cannot be bound yet is served as soon as
    /// it can be.
    pub fn update(&mut self, desired: &DesiredState) {
        let wanted = wanted(desired);
        self.servers
            .retain(|name, s| wanted.get(name).is_some_and(|(port, _)| *port == s.port));
        for (name, (port, local)) in wanted {
            if let Some(server) = self.servers.get(&name) {
                server.local_endpoints.store(local, Ordering::Relaxed);
                continue;
            }
            let local_endpoints = Arc::new(AtomicUsize::new(local));
            let routes = Routes::new().any_path({
                let name = name.clone();
                let local = local_endpoints.clone();
                let healthy = self.proxy_healthy.clone();
                move || ready(response(&name, local.load(Ordering::Relaxed), healthy()))
            });
            let server = Server::start(
                format!("health check of {name}"),
                SocketAddr::new(self.bind, port),
                routes,
                Limits::PROBES,
                self.status.clone(),
            );
            tracing::info!(service = %name, port, "health-check port open");
            self.servers.insert(
                name,
                Port {
                    port,
                    local_endpoints,
                    _server: server,
                },
            );
        }
    }
}

/// The unspecified address of both families when this node can listen on
/// it, else IPv4's.
fn any_address() -> IpAddr {
    let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    match std::net::TcpListener::bind(SocketAddr::new(v6, 0)) {
        Ok(_) => v6,
        Err(e) => {
            tracing::info!("health-check ports on IPv4 only: no IPv6 listener ({e})");
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}

/// Health-check port and local endpoint count per Service. The count is
/// kube-proxy's: distinct addresses of ready endpoints on this node over
/// all the Service's ports (a pod serving 80 and 443 is one endpoint), so
/// it is taken from the backends rather than the per-port
/// `ServicePort::local_endpoints`. A dual-stack pod has an address of each
/// family, and counts once: the larger family's count is taken.
/// Terminating endpoints do not count: a node whose only endpoints are
/// draining must fail the check.
fn wanted(desired: &DesiredState) -> BTreeMap<ServiceName, (u16, usize)> {
    type Local = (BTreeSet<Ipv4Addr>, BTreeSet<Ipv6Addr>);
    let mut out: BTreeMap<ServiceName, (u16, Local)> = BTreeMap::new();
    for (id, sp) in &desired.services {
        let Some(port) = sp.health_check_node_port else {
            continue;
        };
        let name = ServiceName {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        };
        let (_, (v4, v6)) = out.entry(name).or_insert_with(|| (port, Local::default()));
        v4.extend(
            sp.external_backends
                .iter()
                .filter(|b| b.is_local && b.ready)
                .map(|b| b.addr),
        );
        v6.extend(
            sp.external_backends_v6
                .iter()
                .filter(|b| b.is_local && b.ready)
                .map(|b| b.addr),
        );
    }
    out.into_iter()
        .map(|(name, (port, (v4, v6)))| (name, (port, v4.len().max(v6.len()))))
        .collect()
}

fn response(name: &ServiceName, local: usize, proxy_healthy: bool) -> Reply {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    // kube-proxy prints a dedented Go template: tab-indented, no final newline.
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&name.namespace),
        quote(&name.name)
    );
    let status = if local != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::reply(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::{
        http::testing::{exchange, free_ports},
        model::{Backend, Proto, ServicePort, ServicePortId},
    };

    fn backend(last: u8, port: u16, local: bool, ready: bool) -> Backend {
        Backend {
            addr: Ipv4Addr::new(10, 0, 0, last),
            port,
            node_name: None,
            is_local: local,
            ready,
            serving: true,
            terminating: !ready,
        }
    }

    fn service(
        desired: &mut DesiredState,
        name: &str,
        port_name: &str,
        hc: Option<u16>,
        backends: Vec<Backend>,
    ) {
        desired.services.insert(
            ServicePortId {
                namespace: "shop".into(),
                name: name.into(),
                port_name: port_name.into(),
                protocol: Proto::Tcp,
            },
            ServicePort {
                external_policy_local: true,
                health_check_node_port: hc,
                external_backends: backends,
                ..ServicePort::default()
            },
        );
    }

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    async fn get(port: u16) -> std::io::Result<Answer> {
        get_at(IpAddr::V4(Ipv4Addr::LOCALHOST), port).await
    }

    async fn get_at(addr: IpAddr, port: u16) -> std::io::Result<Answer> {
        let raw = exchange(
            SocketAddr::new(addr, port),
            "GET /healthz HTTP/1.1\r\nHost: lb\r\nUser-Agent: probe\r\n\r\n",
        )
        .await?;
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        Ok(Answer {
            status,
            headers,
            body: body.to_string(),
        })
    }

    fn servers() -> HealthCheckServers {
        servers_with(Arc::new(|| true))
    }

    fn servers_with(proxy_healthy: ProxyHealthy) -> HealthCheckServers {
        HealthCheckServers::with_bind_ip(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            proxy_healthy,
            http::Status::default(),
        )
    }

    #[tokio::test]
    async fn local_endpoints_answer_200_with_kube_proxys_body_and_headers() {
        let [port] = free_ports();
        let mut desired = DesiredState::default();
        // Two ports of one Service: the pod 10.0.0.1 counts once, a
        // terminating pod and one on another node not at all.
        service(
            &mut desired,
            "web",
            "http",
            Some(port),
            vec![
                backend(1, 80, true, true),
                backend(2, 80, true, true),
                backend(3, 80, true, false),
                backend(4, 80, false, true),
            ],
        );
        service(
            &mut desired,
            "web",
            "https",
            Some(port),
            vec![backend(1, 443, true, true)],
        );
        let mut hc = servers();
        hc.update(&desired);
        let reply = get(port).await.unwrap();
        assert_eq!(reply.status, 200);
        let header = |name: &str| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("Content-Type"), Some("application/json"));
        assert_eq!(header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(
            reply.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(json["service"]["name"], "web");
    }

    /// Load balancers probe the node over either family: one port answers
    /// both, and IPv6 endpoints count; a dual-stack pod counts once.
    #[tokio::test]
    async fn ports_answer_on_both_families_and_count_ipv6_endpoints() {
        let [port] = free_ports();
        let mut desired = DesiredState::default();
        service(&mut desired, "web", "http", Some(port), Vec::new());
        let v6 = |last: u16, ready: bool| Backend {
            addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last),
            port: 80,
            node_name: None,
            is_local: true,
            ready,
            serving: true,
            terminating: !ready,
        };
        let id = desired.services.keys().next().unwrap().clone();
        let sp = desired.services.get_mut(&id).unwrap();
        sp.external_backends_v6 = vec![v6(1, true), v6(2, true), v6(3, false)];
        let mut hc = HealthCheckServers::new(Arc::new(|| true), http::Status::default());
        hc.update(&desired);
        for addr in [
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ] {
            let reply = get_at(addr, port).await.unwrap();
            assert_eq!(reply.status, 200, "over {addr}");
            assert!(
                reply.body.contains("\"localEndpoints\": 2"),
                "{}",
                reply.body
            );
        }
        let sp = desired.services.get_mut(&id).unwrap();
        sp.external_backends = vec![backend(1, 80, true, true)];
        sp.external_backends_v6.truncate(1);
        hc.update(&desired);
        let reply = get_at(IpAddr::V6(Ipv6Addr::LOCALHOST), port).await.unwrap();
        assert!(
            reply.body.contains("\"localEndpoints\": 1"),
            "{}",
            reply.body
        );
    }

    #[tokio::test]
    async fn no_local_endpoint_answers_503_and_counts_follow_updates() {
        let [port] = free_ports();
        let mut desired = DesiredState::default();
        service(
            &mut desired,
            "web",
            "",
            Some(port),
            vec![backend(4, 80, false, true), backend(3, 80, true, false)],
        );
        let mut hc = servers();
        hc.update(&desired);
        let reply = get(port).await.unwrap();
        assert_eq!(reply.status, 503);
        assert!(
            reply.body.contains("\"localEndpoints\": 0,"),
            "{}",
            reply.body
        );

        service(
            &mut desired,
            "web",
            "",
            Some(port),
            vec![backend(1, 80, true, true)],
        );
        hc.update(&desired);
        let reply = get(port).await.unwrap();
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains("\"localEndpoints\": 1,"),
            "{}",
            reply.body
        );
    }

    #[tokio::test]
    async fn unhealthy_proxy_fails_every_check() {
        let [port] = free_ports();
        let mut desired = DesiredState::default();
        service(
            &mut desired,
            "web",
            "",
            Some(port),
            vec![backend(1, 80, true, true)],
        );
        let healthy = Arc::new(AtomicBool::new(false));
        let mut hc = servers_with({
            let healthy = healthy.clone();
            Arc::new(move || healthy.load(Ordering::Relaxed))
        });
        hc.update(&desired);
        let reply = get(port).await.unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("\"serviceProxyHealthy\": false"));
        healthy.store(true, Ordering::Relaxed);
        assert_eq!(get(port).await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn removed_service_closes_its_port_and_a_moved_port_follows() {
        let [old, new, other] = free_ports();
        let mut desired = DesiredState::default();
        service(
            &mut desired,
            "web",
            "",
            Some(old),
            vec![backend(1, 80, true, true)],
        );
        service(
            &mut desired,
            "api",
            "",
            Some(other),
            vec![backend(2, 80, true, true)],
        );
        service(&mut desired, "internal", "", None, vec![]);
        let mut hc = servers();
        hc.update(&desired);
        assert_eq!(get(old).await.unwrap().status, 200);
        assert_eq!(get(other).await.unwrap().status, 200);

        // The port moves: the old one is closed by the time update returns.
        service(
            &mut desired,
            "web",
            "",
            Some(new),
            vec![backend(1, 80, true, true)],
        );
        hc.update(&desired);
        let refused = get(old).await.err().map(|e| e.kind());
        assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(get(new).await.unwrap().status, 200);

        // A Service that goes takes its port with it; the others stay.
        desired.services.retain(|id, _| id.name != "api");
        hc.update(&desired);
        let refused = get(other).await.err().map(|e| e.kind());
        assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(get(new).await.unwrap().status, 200);

        // The freed port can be taken over at once by another Service.
        service(
            &mut desired,
            "late",
            "",
            Some(other),
            vec![backend(3, 80, true, true)],
        );
        hc.update(&desired);
        let reply = get(other).await.unwrap();
        assert!(reply.body.contains("\"name\": \"late\""), "{}", reply.body);
    }

    #[tokio::test]
    async fn a_busy_port_is_served_once_freed() {
        let [port] = free_ports();
        let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let mut desired = DesiredState::default();
        service(
            &mut desired,
            "web",
            "",
            Some(port),
            vec![backend(1, 80, true, true)],
        );
        let mut hc = servers();
        hc.update(&desired);
        drop(squatter);
        let served = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match get(port).await {
                    Ok(reply) => break reply.status,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
        });
        assert_eq!(served.await.ok(), Some(200));
    }
}
