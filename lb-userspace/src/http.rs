//! The agent's one HTTP edge. /healthz and /livez, /metrics and every
//! Service's health-check node port are served by [`Server`], so each gets
//! the same protections: probes restart the agent or move load balancers
//! off the node when a port stops answering, and all of these ports can be
//! reached by clients that connect and then idle, flood, or take every file
//! descriptor the process may have.
//!
//! - At most `max_connections` connections are served at once. One more is
//!   closed as soon as it is accepted rather than left in the kernel's
//!   backlog: the backlog is served first come, first served, so a request
//!   queued there would wait out the header timeout of every idle
//!   connection ahead of it and its prober would give up anyway. Closed at
//!   once, it fails fast and the backlog stays empty, so the first client
//!   after a flood is served at once, and the process holds at most
//!   `max_connections + 1` descriptors for a server.
//! - A client has `header_read_timeout` to send its request head and
//!   `connection_timeout` for the whole exchange; keep-alive is off, as
//!   every client here (probes, Prometheus) sends one request a connection
//!   or reconnects cheaply.
//! - An accept error (out of descriptors, say) is counted, logged at most
//!   once per [`LOG_EVERY`] and followed by a short pause; it never ends the
//!   server.
//! - A port that cannot be bound (another process has it, or a previous
//!   agent still does) is retried with backoff until it can, and counted
//!   meanwhile in [`Status::binding`].
//! - Only GET and HEAD; paths are matched exactly (a query is ignored) and
//!   others get 404.
use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

pub type Reply = Response<Full<Bytes>>;

type Handler = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// A repeating error is logged at most this often; the lines left out in
/// between are counted in the next one.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// The pause after a failed accept: long enough that a process out of
/// descriptors does not spin, short enough that a probe arriving as they
/// free up is hardly delayed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const BIND_RETRY_FIRST: Duration = Duration::from_millis(200);
const BIND_RETRY_MAX: Duration = Duration::from_secs(5);
/// Room for a request head; what the probes and scrapers send is a few
/// hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub connection_timeout: Duration,
}

impl Limits {
    /// /healthz, /livez and the health-check ports answer from memory in
    /// microseconds. Kubelet's probes allow 1 s by default and load
    /// balancers a few, so a client still silent after 2 s is not one of
    /// them; 64 at once is far more than the probers of a node.
    pub const PROBES: Limits = Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(2),
        connection_timeout: Duration::from_secs(10),
    };
    /// A scrape walks the maps, which takes up to a second or so on large
    /// ones, and two scrapes take turns; Prometheus gives up after 10 s by
    /// default.
    pub const METRICS: Limits = Limits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(2),
        connection_timeout: Duration::from_secs(30),
    };
}

/// What servers report of themselves. Clones share the numbers, so one
/// `Status` can stand for a kind of server (every health-check port).
#[derive(Clone, Default)]
pub struct Status {
    /// Servers whose port is not bound yet.
    pub binding: Gauge,
    pub accept_errors: Counter,
    /// Connections closed unserved because the server was at its cap.
    pub over_cap: Counter,
}

/// What a server answers, by path.
#[derive(Clone, Default)]
pub struct Routes {
    paths: Vec<(&'static str, Handler)>,
    any_path: Option<Handler>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get<F, Fut>(mut self, path: &'static str, handler: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.paths.push((path, boxed(handler)));
        self
    }

    /// Answers every path not routed otherwise, as kube-proxy's
    /// health-check ports do.
    pub fn any_path<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.any_path = Some(boxed(handler));
        self
    }

    async fn answer(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let handler = self
            .paths
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, h)| h)
            .or(self.any_path.as_ref());
        match handler {
            Some(h) => h().await,
            None => text(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    }
}

fn boxed<F, Fut>(handler: F) -> Handler
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    Arc::new(move || Box::pin(handler()))
}

/// A reply with `body`; nosniff keeps a browser from reading it as
/// anything but `content_type`.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body)
}

/// A server's listening socket as seen from its handle, so dropping the
/// handle can close it whether the task bound it yet or not.
#[derive(Default)]
struct Socket {
    closed: bool,
    /// A duplicate of the task's listening socket.
    listener: Option<std::net::TcpListener>,
    /// Counted in `Status::binding`.
    binding: bool,
}

/// A running server; dropping it closes its port at once.
pub struct Server {
    socket: Arc<Mutex<Socket>>,
    status: Status,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `routes` on `addr` until dropped. The first bind is tried
    /// before this returns, so a free port is served from then on; a busy
    /// one is retried in the background. Must be called inside a tokio
    /// runtime.
    pub fn start(
        name: impl Into<Arc<str>>,
        addr: SocketAddr,
        routes: Routes,
        limits: Limits,
        status: Status,
    ) -> Self {
        let name = name.into();
        let socket = Arc::new(Mutex::new(Socket::default()));
        let first = match bind(&socket, addr) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(server = %name, %addr, "cannot bind, retrying: {e}");
                lock(&socket).binding = true;
                status.binding.inc();
                None
            }
        };
        let task = tokio::spawn({
            let socket = socket.clone();
            let status = status.clone();
            async move {
                let listener = match first {
                    Some(l) => l,
                    None => match bind_with_backoff(&name, &socket, addr, &status).await {
                        Some(l) => l,
                        None => return,
                    },
                };
                accept_loop(&name, listener, Arc::new(routes), limits, &status).await;
            }
        });
        Self {
            socket,
            status,
            task,
        }
    }

    /// Where it listens; `None` while its port is not bound yet.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.socket)
            .listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut socket = lock(&self.socket);
        socket.closed = true;
        if std::mem::take(&mut socket.binding) {
            self.status.binding.dec();
        }
        // Linux stops a socket listening as soon as it is shut down, so the
        // port is free when the handle is gone: a server started next on
        // the same port can bind it, and this one stops answering at once.
        // Aborting the task alone would release the port only when the
        // runtime next polls it.
        if let Some(listener) = &socket.listener {
            // SAFETY: the descriptor is owned by `listener`, so still open.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.task.abort();
    }
}

fn lock(socket: &Mutex<Socket>) -> std::sync::MutexGuard<'_, Socket> {
    socket.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds `addr` and keeps a duplicate in `socket`; `None` when the handle
/// was dropped meanwhile.
fn bind(socket: &Mutex<Socket>, addr: SocketAddr) -> io::Result<Option<TcpListener>> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let mut socket = lock(socket);
    if socket.closed {
        return Ok(None);
    }
    socket.listener = Some(listener.try_clone()?);
    TcpListener::from_std(listener).map(Some)
}

async fn bind_with_backoff(
    name: &str,
    socket: &Mutex<Socket>,
    addr: SocketAddr,
    status: &Status,
) -> Option<TcpListener> {
    let mut pause = BIND_RETRY_FIRST;
    let mut throttle = Throttle::started();
    let mut attempts = 1u64;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BIND_RETRY_MAX);
        attempts += 1;
        match bind(socket, addr) {
            Ok(listener) => {
                let mut socket = lock(socket);
                if std::mem::take(&mut socket.binding) {
                    status.binding.dec();
                }
                if listener.is_some() {
                    tracing::info!(server = %name, %addr, attempts, "bound at last");
                }
                return listener;
            }
            Err(e) => {
                if let Some(left_out) = throttle.pass() {
                    tracing::warn!(server = %name, %addr, left_out, "still cannot bind: {e}");
                }
            }
        }
    }
}

async fn accept_loop(
    name: &str,
    listener: TcpListener,
    routes: Arc<Routes>,
    limits: Limits,
    status: &Status,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut throttle = Throttle::default();
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                status.accept_errors.inc();
                if let Some(left_out) = throttle.pass() {
                    tracing::warn!(server = %name, left_out, "accept failed, pausing: {e}");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            status.over_cap.inc();
            continue;
        };
        tokio::spawn(serve_connection(sock, slot, routes.clone(), limits));
    }
}

async fn serve_connection(
    sock: TcpStream,
    _slot: OwnedSemaphorePermit,
    routes: Arc<Routes>,
    limits: Limits,
) {
    let service = service_fn(move |req| {
        let routes = routes.clone();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        async move { Ok::<_, Infallible>(routes.answer(&method, &path).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(false)
        // As Go's net/http writes them, so replies read as kube-proxy's do.
        .title_case_headers(true)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(sock), service);
    // Whatever ends it early (a reset, a malformed or late head, the
    // timeout) is the client's doing, and the connection is gone.
    let _ = tokio::time::timeout(limits.connection_timeout, conn).await;
}

#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    left_out: u64,
}

impl Throttle {
    /// For an error already logged.
    fn started() -> Self {
        Self {
            last: Some(Instant::now()),
            left_out: 0,
        }
    }

    /// `Some(lines left out since the last one)` when this one is to be
    /// logged.
    fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < LOG_EVERY) {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::{net::SocketAddr, sync::atomic::Ordering};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    /// Distinct ports free now, taken below the kernel's ephemeral range
    /// (32768 and up by default): a port the kernel handed out by
    /// `bind(0)` can be handed out again at once as the local port of
    /// some test's client connection, and a server then cannot bind it.
    /// A process-wide counter keeps this process's tests apart; starting
    /// at an offset from the pid keeps parallel test processes apart.
    pub fn free_ports<const N: usize>() -> [u16; N] {
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

    /// Sends `request` over a new connection and reads until the server
    /// closes it.
    pub async fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
        let mut sock = TcpStream::connect(addr).await?;
        sock.write_all(request.as_bytes()).await?;
        let mut reply = String::new();
        sock.read_to_string(&mut reply).await?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::{pending, ready},
        net::Ipv4Addr,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        time::timeout,
    };

    use super::{testing::*, *};

    fn hello() -> Routes {
        Routes::new()
            .get("/hello", || ready(text(StatusCode::OK, "hello\n")))
            .get("/stuck", pending)
    }

    fn start(routes: Routes, limits: Limits) -> (Server, SocketAddr, Status) {
        let status = Status::default();
        let server = Server::start(
            "test",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            routes,
            limits,
            status.clone(),
        );
        let addr = server.local_addr().expect("bound");
        (server, addr, status)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n"))
            .await
            .unwrap()
    }

    /// Waits up to `bound` for the server to close `sock` without a word.
    async fn closed_within(sock: &mut TcpStream, bound: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            timeout(bound, sock.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn routes_by_path_get_and_head_only() {
        let (_server, addr, _) = start(hello(), Limits::PROBES);
        let reply = get(addr, "/hello?probe=1").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\r\nContent-Length: 6\r\n"), "{reply}");
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nhello\n"), "{reply}");

        let head = exchange(addr, "HEAD /hello HTTP/1.1\r\nHost: node\r\n\r\n")
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a body in answer to HEAD: {head}"
        );

        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404 "));
        assert!(get(addr, "/hello/").await.starts_with("HTTP/1.1 404 "));
        let post = exchange(
            addr,
            "POST /hello HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
    }

    #[tokio::test]
    async fn idle_connections_past_the_cap_are_closed_and_time_out() {
        let limits = Limits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(1),
            connection_timeout: Duration::from_secs(60),
        };
        let (_server, addr, status) = start(hello(), limits);
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections + 2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // The two past the cap are closed as soon as they are accepted,
        // the others when their head is a header timeout late.
        let started = Instant::now();
        for sock in idle.iter_mut().rev().take(2) {
            assert!(closed_within(sock, Duration::from_millis(900)).await);
        }
        assert_eq!(status.over_cap.get(), 2);
        for sock in &mut idle[..limits.max_connections] {
            assert!(closed_within(sock, Duration::from_secs(10)).await);
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        // The idle ones still open on this side hold no slot.
        assert!(get(addr, "/hello").await.starts_with("HTTP/1.1 200 "));
        assert_eq!(status.over_cap.get(), 2);
    }

    #[tokio::test]
    async fn a_head_sent_byte_by_byte_gets_the_header_timeout_in_all() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(1),
            ..Limits::PROBES
        };
        let (_server, addr, _) = start(hello(), limits);
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        for byte in b"GET /hello HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if sock.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(started.elapsed() < Duration::from_secs(5), "still open");
        }
        assert!(started.elapsed() >= limits.header_read_timeout);
    }

    #[tokio::test]
    async fn a_connection_ends_at_the_connection_timeout() {
        let limits = Limits {
            connection_timeout: Duration::from_secs(1),
            ..Limits::PROBES
        };
        let (_server, addr, _) = start(hello(), limits);
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"GET /stuck HTTP/1.1\r\nHost: node\r\n\r\n")
            .await
            .unwrap();
        assert!(closed_within(&mut sock, Duration::from_secs(10)).await);
        // The slot it held is free again.
        assert!(get(addr, "/hello").await.starts_with("HTTP/1.1 200 "));
    }

    #[tokio::test]
    async fn a_busy_port_is_served_once_freed() {
        let [port] = free_ports();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let squatter = std::net::TcpListener::bind(addr).unwrap();
        let status = Status::default();
        let server = Server::start("test", addr, hello(), Limits::PROBES, status.clone());
        assert_eq!(server.local_addr(), None);
        assert_eq!(status.binding.get(), 1);

        drop(squatter);
        let bound = timeout(Duration::from_secs(10), async {
            while server.local_addr().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(
            bound.await.is_ok(),
            "not bound 10 s after the port was freed"
        );
        assert_eq!(status.binding.get(), 0);
        assert!(get(addr, "/hello").await.starts_with("HTTP/1.1 200 "));

        drop(server);
        let refused = TcpStream::connect(addr).await.err().map(|e| e.kind());
        assert_eq!(refused, Some(io::ErrorKind::ConnectionRefused));
    }

    #[tokio::test]
    async fn a_server_dropped_while_binding_is_no_longer_counted() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let status = Status::default();
        let addr = squatter.local_addr().unwrap();
        let server = Server::start("test", addr, hello(), Limits::PROBES, status.clone());
        assert_eq!(status.binding.get(), 1);
        drop(server);
        assert_eq!(status.binding.get(), 0);
    }
}
