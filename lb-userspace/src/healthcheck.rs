//! kube-proxy's service health-check servers: for every Service with
//! externalTrafficPolicy Local and a `healthCheckNodePort`, an HTTP server on
//! that port that cloud load balancers probe, so they send traffic only to
//! nodes that have a ready endpoint of the Service (anything else would be
//! dropped here, since Local forbids forwarding to another node).
//!
//! Status, headers and body are kube-proxy's byte for byte
//! (pkg/proxy/healthcheck/service_health.go): probes and tools written
//! against kube-proxy keep working, and it answers on any path, as it does.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::model::DesiredState;

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

/// One listening health-check port.
struct Server {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    /// A duplicate of the task's listening socket, kept to close it from here.
    listener: std::net::TcpListener,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Linux stops a socket listening as soon as it is shut down, so the
        // port is free before `update` returns: a Service taking the port
        // over in the same update can bind it, and a removed Service stops
        // answering at once. Aborting the task alone would release the port
        // only when the runtime next polls the task.
        // SAFETY: the descriptor is owned by `self.listener`, so still open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        self.task.abort();
    }
}

/// The health-check servers of every Service that wants one.
pub struct HealthCheckServers {
    bind: IpAddr,
    proxy_healthy: Arc<AtomicBool>,
    servers: BTreeMap<ServiceName, Server>,
}

impl Default for HealthCheckServers {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthCheckServers {
    /// Listens on every address, as kube-proxy does without `--nodeport-addresses`.
    pub fn new() -> Self {
        Self::with_bind_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    pub fn with_bind_ip(bind: IpAddr) -> Self {
        Self {
            bind,
            proxy_healthy: Arc::new(AtomicBool::new(true)),
            servers: BTreeMap::new(),
        }
    }

    /// kube-proxy answers 503 on every health-check port while the proxy
    /// itself is unhealthy, so load balancers move off a node whose data
    /// plane no longer follows the cluster.
    pub fn set_proxy_healthy(&self, healthy: bool) {
        self.proxy_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Opens ports of new Services, closes those of Services that went or
    /// changed port, and updates the endpoint counts. Must run inside a
    /// tokio runtime. A port that cannot be bound is logged and tried again
    /// on the next update, as kube-proxy does.
    pub fn update(&mut self, desired: &DesiredState) {
        let wanted = wanted(desired);
        self.servers
            .retain(|name, s| wanted.get(name).is_some_and(|(port, _)| *port == s.port));
        for (name, (port, local)) in wanted {
            if let Some(server) = self.servers.get(&name) {
                server.local_endpoints.store(local, Ordering::Relaxed);
                continue;
            }
            match self.start(&name, port, local) {
                Ok(server) => {
                    tracing::info!(service = %name, port, "health-check port open");
                    self.servers.insert(name, server);
                }
                Err(e) => tracing::warn!(
                    service = %name,
                    port,
                    "cannot open the health-check port: {e:#}"
                ),
            }
        }
    }

    fn start(&self, name: &ServiceName, port: u16, local: usize) -> Result<Server> {
        let std_listener = std::net::TcpListener::bind((self.bind, port))
            .with_context(|| format!("binding {}:{port}", self.bind))?;
        std_listener.set_nonblocking(true)?;
        let listener = std_listener.try_clone()?;
        let listener = TcpListener::from_std(listener)?;
        let local_endpoints = Arc::new(AtomicUsize::new(local));
        let task = tokio::spawn(accept_loop(
            listener,
            name.clone(),
            local_endpoints.clone(),
            self.proxy_healthy.clone(),
        ));
        Ok(Server {
            port,
            local_endpoints,
            listener: std_listener,
            task,
        })
    }
}

/// Health-check port and local endpoint count per Service. The count is
/// kube-proxy's: distinct addresses of ready endpoints on this node over
/// all the Service's ports (a pod serving 80 and 443 is one endpoint), so
/// it is taken from the backends rather than the per-port
/// `ServicePort::local_endpoints`. Terminating endpoints do not count: a
/// node whose only endpoints are draining must fail the check.
fn wanted(desired: &DesiredState) -> BTreeMap<ServiceName, (u16, usize)> {
    let mut out: BTreeMap<ServiceName, (u16, BTreeSet<Ipv4Addr>)> = BTreeMap::new();
    for (id, sp) in &desired.services {
        let Some(port) = sp.health_check_node_port else {
            continue;
        };
        let name = ServiceName {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        };
        out.entry(name)
            .or_insert_with(|| (port, BTreeSet::new()))
            .1
            .extend(
                sp.external_backends
                    .iter()
                    .filter(|b| b.is_local && b.ready)
                    .map(|b| b.addr),
            );
    }
    out.into_iter()
        .map(|(name, (port, addrs))| (name, (port, addrs.len())))
        .collect()
}

async fn accept_loop(
    listener: TcpListener,
    name: ServiceName,
    local_endpoints: Arc<AtomicUsize>,
    proxy_healthy: Arc<AtomicBool>,
) {
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            // Out of descriptors and the like must not close the port for
            // good; after `Server::drop` shut the socket down, the abort
            // that follows ends this loop.
            Err(e) => {
                tracing::debug!(service = %name, "health-check accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let name = name.clone();
        let local = local_endpoints.clone();
        let healthy = proxy_healthy.clone();
        tokio::spawn(async move {
            if read_request(&mut sock).await.is_none() {
                return;
            }
            let reply = response(
                &name,
                local.load(Ordering::Relaxed),
                healthy.load(Ordering::Relaxed),
            );
            let _ = sock.write_all(reply.as_bytes()).await;
        });
    }
}

fn response(name: &ServiceName, local: usize, proxy_healthy: bool) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    // kube-proxy prints a dedented Go template: tab-indented, no final newline.
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&name.namespace),
        quote(&name.name)
    );
    let status = if local != 0 && proxy_healthy {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    http_response(
        status,
        &[
            ("Content-Type", "application/json"),
            ("X-Content-Type-Options", "nosniff"),
        ],
        &body,
    )
}

/// Reads a request's head and returns its path; `None` when the client sent
/// nothing usable in time. The head is read to its end before answering:
/// closing a socket with unread request bytes makes the kernel send a reset,
/// which can destroy the answer before the client reads it.
pub(crate) async fn read_request(sock: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = sock.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1)?;
    Some(target.split('?').next().unwrap_or(target).to_string())
}

pub(crate) fn http_response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::model::{Backend, Proto, ServicePort, ServicePortId};

    /// Distinct ports free now, taken below the kernel's ephemeral range
    /// (32768 and up by default): a port the kernel handed out by
    /// `bind(0)` can be handed out again at once as the local port of
    /// some test's client connection, and the health-check server then
    /// cannot bind it. A process-wide counter keeps this process's tests
    /// apart; starting at an offset from the pid keeps parallel test
    /// processes apart.
    fn free_ports<const N: usize>() -> [u16; N] {
        use std::sync::atomic::AtomicU16;
        static NEXT: AtomicU16 = AtomicU16::new(0);
        const BASE: u16 = 20000;
        const SPAN: u16 = 12000;
        let start = (std::process::id() % u32::from(SPAN)) as u16;
        std::array::from_fn(|_| loop {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = BASE + (start.wrapping_add(step.wrapping_mul(7)) % SPAN);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break port;
            }
        })
    }

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

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    async fn get(port: u16) -> std::io::Result<Reply> {
        let mut sock = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nUser-Agent: probe\r\n\r\n")
            .await?;
        let mut raw = String::new();
        sock.read_to_string(&mut raw).await?;
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
        Ok(Reply {
            status,
            headers,
            body: body.to_string(),
        })
    }

    fn servers() -> HealthCheckServers {
        HealthCheckServers::with_bind_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
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
        let mut hc = servers();
        hc.update(&desired);
        hc.set_proxy_healthy(false);
        let reply = get(port).await.unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("\"serviceProxyHealthy\": false"));
        hc.set_proxy_healthy(true);
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
    async fn a_busy_port_is_retried_on_the_next_update() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
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
        assert!(hc.servers.is_empty());
        drop(squatter);
        hc.update(&desired);
        assert_eq!(get(port).await.unwrap().status, 200);
    }
}
