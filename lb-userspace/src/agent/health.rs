//! kube-proxy's `/healthz` and `/livez` (pkg/proxy/healthcheck/proxy_health.go),
//! served on the HTTP edge.
//!
//! What is matched: the agent is healthy while no change it received waits
//! unapplied for `timeout` or longer (kube-proxy's `QueuedUpdate`, `Updated`
//! and `healthTimeout`, there twice the sync period). `/healthz` is that and
//! node eligibility, `/livez` that alone, so a node on its way out fails
//! readiness without its proxy being restarted. Both answer 200 or 503 with
//! kube-proxy's JSON fields, `lastUpdated` being the current time while
//! healthy (kube-proxy keeps older releases' meaning: "recent when
//! healthy") and the last successful sync otherwise. A failed sync does not
//! fail the checks by itself, as in kube-proxy: the change it left unapplied
//! does once it is late. Every answer is counted by status code in
//! `kubeproxy_proxy_healthz_total` and `kubeproxy_proxy_livez_total`.
//!
//! Node eligibility is kube-proxy's too (`model::node_eligible`): a Node
//! being deleted or tainted `ToBeDeletedByClusterAutoscaler` fails
//! `/healthz` only.
//!
//! The servers start before the agent's first sync: `/livez` answers 200
//! from then on, until a change has waited `timeout`; `/healthz` answers
//! 503 until the first sync is done and the programs are attached. What differs: `/healthz` adds the last sync
//! error, the API watches that are down and the refused Service ports.
use std::{
    future::{ready, Ready},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use hyper::StatusCode;

use crate::{
    http::{self, Reply, Routes},
    metrics::Probes,
};

/// kube-proxy's bound with its default 30 s sync period. The agent syncs
/// as changes arrive, in milliseconds, so a change that waits this long is
/// stuck behind a failing or hung sync, not a slow one.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Health {
    last_synced: Option<jiff::Timestamp>,
    /// When the oldest change not yet applied reached the agent.
    oldest_queued: Option<Instant>,
    failing: Option<String>,
    /// The API watchers that are not connected, while the data plane keeps
    /// serving the last state it was given.
    stale: Vec<String>,
    /// Service ports the last sync refused, each with the map that is full,
    /// and LoadBalancer Services left without a pool address: the node
    /// serves everything else, so it stays healthy.
    refused: Vec<String>,
    /// False while this node is being deleted (`model::node_eligible`).
    node_eligible: bool,
    /// True once the agent has attached its programs after its first
    /// sync: ready means serving, not merely synced.
    started: bool,
    /// How long a change may wait for a successful sync.
    pub timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            last_synced: None,
            oldest_queued: None,
            failing: None,
            stale: Vec::new(),
            refused: Vec::new(),
            node_eligible: true,
            started: false,
            timeout: TIMEOUT,
        }
    }
}

pub type Shared = Arc<Mutex<Health>>;

pub fn lock(health: &Shared) -> MutexGuard<'_, Health> {
    health.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Health {
    /// A change reached the agent and is not applied yet.
    pub fn queued(&mut self) {
        self.oldest_queued.get_or_insert_with(Instant::now);
    }

    /// Everything received so far is applied.
    pub fn synced(&mut self) {
        self.last_synced = Some(jiff::Timestamp::now());
        self.oldest_queued = None;
        self.failing = None;
    }

    pub fn refused(&mut self, refused: Vec<String>) {
        self.refused = refused;
    }

    /// The programs are attached: the node serves what it synced.
    pub fn started(&mut self) {
        self.started = true;
    }

    pub fn node_eligible(&mut self, eligible: bool) {
        self.node_eligible = eligible;
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

    /// kube-proxy's `IsHealthy`, which its health-check node ports report
    /// as `serviceProxyHealthy`.
    pub fn healthy(&self) -> bool {
        self.started && self.last_synced.is_some() && self.live()
    }

    /// kube-proxy's liveness: no change has waited `timeout` for a sync.
    /// It holds during start-up, before the first sync, which can take a
    /// while at 10,000 Services, until the first change is late too.
    fn live(&self) -> bool {
        self.oldest_queued
            .is_none_or(|queued| queued.elapsed() < self.timeout)
    }

    /// The answer's code and fields, for `/healthz` when `ready` is asked
    /// (synced as well as live), for `/livez` otherwise.
    fn fields(&self, ready: bool) -> (StatusCode, serde_json::Map<String, serde_json::Value>) {
        let now = jiff::Timestamp::now();
        let healthy = if ready { self.healthy() } else { self.live() };
        let last = match (healthy, self.last_synced) {
            (true, _) => now.to_string(),
            (false, Some(t)) => t.to_string(),
            (false, None) => String::new(),
        };
        let mut fields = serde_json::Map::new();
        fields.insert("lastUpdated".into(), last.into());
        fields.insert("currentTime".into(), now.to_string().into());
        let code = match healthy {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        (code, fields)
    }

    fn healthz(&self) -> Reply {
        let (mut code, mut fields) = self.fields(true);
        if !self.node_eligible {
            code = StatusCode::SERVICE_UNAVAILABLE;
        }
        fields.insert("nodeEligible".into(), self.node_eligible.into());
        fields.insert("error".into(), self.failing.clone().into());
        fields.insert("staleWatches".into(), self.stale.clone().into());
        fields.insert("refused".into(), self.refused.clone().into());
        json(code, fields)
    }

    fn livez(&self) -> Reply {
        let (code, fields) = self.fields(false);
        json(code, fields)
    }
}

fn json(code: StatusCode, fields: serde_json::Map<String, serde_json::Value>) -> Reply {
    http::reply(
        code,
        "application/json",
        serde_json::Value::Object(fields).to_string(),
    )
}

/// The two checks, each answer counted by status code in `probes`.
pub fn routes(health: &Shared, probes: &Probes) -> Routes {
    let answer = |f: fn(&Health) -> Reply, count: fn(&Probes, u16)| {
        let health = health.clone();
        let probes = probes.clone();
        move || -> Ready<Reply> {
            let reply = f(&lock(&health));
            count(&probes, reply.status().as_u16());
            ready(reply)
        }
    };
    Routes::new()
        .get("/healthz", answer(Health::healthz, Probes::healthz))
        .get("/livez", answer(Health::livez, Probes::livez))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::{
        datapath::MapSample,
        http::{testing::exchange, Limits, Server, Status},
        metrics::Metrics,
    };

    impl Health {
        fn synced_and_started(&mut self) {
            self.synced();
            self.started();
        }
    }

    /// Status code and JSON body of GET `path`.
    async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let reply = exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n"))
            .await
            .unwrap();
        let code = reply.split(' ').nth(1).unwrap().parse().unwrap();
        let (_, body) = reply.split_once("\r\n\r\n").unwrap();
        (code, serde_json::from_str(body).unwrap())
    }

    fn serve(health: &Shared) -> (Server, SocketAddr) {
        serve_counted(health, &Probes::default())
    }

    fn serve_counted(health: &Shared, probes: &Probes) -> (Server, SocketAddr) {
        let server = Server::start(
            "healthz",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            routes(health, probes),
            Limits::PROBES,
            Status::default(),
        );
        let addr = server.local_addr().unwrap();
        (server, addr)
    }

    const BOUND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_change_left_unapplied_past_the_bound_fails_healthz_and_livez() {
        let health: Shared = Arc::default();
        lock(&health).timeout = BOUND;
        lock(&health).synced_and_started();
        let (_server, addr) = serve(&health);
        for path in ["/healthz", "/livez"] {
            assert_eq!(get(addr, path).await.0, 200, "{path}");
        }

        // A change arrives and its sync fails: healthy until it is late.
        lock(&health).queued();
        lock(&health).failed("map full".into());
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["error"], "map full");
        // A later change does not restart the clock.
        tokio::time::sleep(BOUND / 2).await;
        lock(&health).queued();
        tokio::time::sleep(BOUND / 2 + Duration::from_millis(50)).await;
        for path in ["/healthz", "/livez"] {
            let (code, body) = get(addr, path).await;
            assert_eq!(code, 503, "{path}: {body}");
            // The last successful sync, a bound and more ago.
            let time = |k: &str| {
                body[k]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .unwrap()
            };
            let age = time("currentTime").duration_since(time("lastUpdated"));
            assert!(
                age.as_millis() >= BOUND.as_millis() as i128,
                "{path}: {body}"
            );
        }

        lock(&health).synced_and_started();
        for path in ["/healthz", "/livez"] {
            let (code, body) = get(addr, path).await;
            assert_eq!(code, 200, "{path}: {body}");
            assert_eq!(body["lastUpdated"], body["currentTime"], "{path}: {body}");
        }
    }

    /// Start-up: alive while the first sync runs, not once the changes it
    /// carries are late.
    #[tokio::test]
    async fn livez_holds_during_start_up_until_the_first_changes_are_late() {
        let health: Shared = Arc::default();
        lock(&health).timeout = BOUND;
        let (_server, addr) = serve(&health);
        lock(&health).queued();
        assert_eq!(get(addr, "/livez").await.0, 200);
        assert_eq!(get(addr, "/healthz").await.0, 503);
        tokio::time::sleep(BOUND + Duration::from_millis(50)).await;
        let (code, body) = get(addr, "/livez").await;
        assert_eq!((code, &body["lastUpdated"]), (503, &"".into()), "{body}");
        lock(&health).synced();
        assert_eq!(get(addr, "/livez").await.0, 200);
        assert_eq!(
            get(addr, "/healthz").await.0,
            503,
            "synced, programs not attached yet"
        );
        lock(&health).started();
        assert_eq!(get(addr, "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn healthz_and_livez_carry_kube_proxys_fields() {
        let health: Shared = Arc::default();
        let (_server, addr) = serve(&health);
        // Before the first sync: not ready, but alive.
        assert_eq!(get(addr, "/healthz").await.0, 503);
        assert_eq!(get(addr, "/livez").await.0, 200);
        lock(&health).synced_and_started();

        let (_, healthz) = get(addr, "/healthz").await;
        assert_eq!(healthz["nodeEligible"], true);
        assert!(healthz["staleWatches"].is_array(), "{healthz}");

        // A node on its way out fails readiness, not liveness.
        lock(&health).node_eligible(false);
        let (code, healthz) = get(addr, "/healthz").await;
        assert_eq!((code, &healthz["nodeEligible"]), (503, &false.into()));
        assert_eq!(get(addr, "/livez").await.0, 200);
        lock(&health).node_eligible(true);
        let (_, livez) = get(addr, "/livez").await;
        let mut keys: Vec<&String> = livez.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["currentTime", "lastUpdated"], "{livez}");
        let now: jiff::Timestamp = livez["currentTime"].as_str().unwrap().parse().unwrap();
        assert!((jiff::Timestamp::now() - now).get_seconds().abs() < 60);
    }

    #[tokio::test]
    async fn answers_are_counted_by_code_as_kube_proxys() {
        let metrics = Metrics::new();
        let health: Shared = Arc::default();
        let (_server, addr) = serve_counted(&health, &metrics.probes());
        get(addr, "/healthz").await;
        lock(&health).synced_and_started();
        get(addr, "/healthz").await;
        get(addr, "/livez").await;
        get(addr, "/livez").await;
        let text = metrics.render_sample(MapSample::default());
        for line in [
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
