//! `/healthz` with kube-proxy's semantics and JSON shape: 503 until the first
//! full sync, 200 while syncs succeed. Hand-written on a TcpListener because
//! it answers one fixed GET; a server framework would be most of the binary's
//! dependency tree for it.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
};

#[derive(Default)]
pub struct Health {
    last_synced: Option<jiff::Timestamp>,
    failing: Option<String>,
    /// The API watchers that are not connected, while the data plane keeps
    /// serving the last state it was given.
    stale: Vec<String>,
    /// Service ports the last sync refused, each with the map that is full:
    /// the node serves every other Service, so it stays healthy.
    refused: Vec<String>,
}

pub type Shared = Arc<Mutex<Health>>;

impl Health {
    pub fn synced(&mut self) {
        self.last_synced = Some(jiff::Timestamp::now());
        self.failing = None;
    }

    pub fn refused(&mut self, refused: Vec<String>) {
        self.refused = refused;
    }

    pub fn failed(&mut self, why: String) {
        self.failing = Some(why);
    }

    pub fn source(&mut self, status: &crate::source::kube::SourceStatus) {
        self.stale = status
            .watches()
            .iter()
            .filter(|(_, w)| !w.connected)
            .map(|(name, w)| match &w.last_error {
                Some(e) => format!("{name}: {e}"),
                None => format!("{name}: disconnected"),
            })
            .collect();
    }

    fn response(&self) -> (u16, String) {
        let now = jiff::Timestamp::now();
        let last = self.last_synced.map(|t| t.to_string()).unwrap_or_default();
        let ok = self.last_synced.is_some() && self.failing.is_none();
        let body = serde_json::json!({
            "lastUpdated": last,
            "currentTime": now.to_string(),
            "nodeEligible": true,
            "error": self.failing,
            "staleWatches": self.stale,
            "refused": self.refused,
        });
        (if ok { 200 } else { 503 }, body.to_string())
    }
}

/// Requests served at once; connections past it are closed unread, so idle
/// clients cannot use up the process's file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of file descriptors, say) or bind.
const RETRY: Duration = Duration::from_millis(200);

/// Serves until the process ends: a failed bind is retried and reported,
/// and a failed accept never stops the server, as a probe that finds the
/// port closed restarts the agent.
pub async fn serve(addr: SocketAddr, health: Shared) -> Result<()> {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(%addr, "healthz: cannot bind, retrying: {e}");
                tokio::time::sleep(RETRY * 5).await;
            }
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::warn!(%addr, "healthz accept: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(READ_TIMEOUT, sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = if path == "/healthz" || path == "/livez" {
                health.lock().expect("health lock").response()
            } else {
                (404, "{}".to_string())
            };
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let reply = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(READ_TIMEOUT, sock.write_all(reply.as_bytes())).await;
        });
    }
}
