//! The series the agent records as it syncs and serves.
use std::{
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, linear_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{http, model::DesiredState, sync::SyncReport};

type Label = [(&'static str, &'static str); 1];

/// The metrics the agent records as it syncs.
pub struct Metrics {
    pub(super) registry: Registry,
    sync_duration: Histogram,
    network_programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    no_local_endpoints: Family<Label, Gauge>,
    services: Gauge,
    frontends: Gauge,
    endpoints: Gauge,
    invalid: Gauge,
    invalid_skipped: Counter,
    refused: Gauge,
    http_binding: Family<Label, Gauge>,
    http_accept_errors: Family<Label, Counter>,
    http_over_cap: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// kube-proxy's buckets: 0.25 s steps to 0.5 s, then 1 s to a minute, 5 s
/// to two, 30 s to five. Its `merge` helper also starts them with a 0
/// bucket, kept so `le` series match kube-proxy's one for one.
fn network_programming_buckets() -> impl Iterator<Item = f64> {
    std::iter::once(0.0)
        .chain(linear_buckets(0.25, 0.25, 2))
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        let network_programming = Histogram::new(network_programming_buckets());
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            network_programming.clone(),
        );
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync.clone(),
        );
        let no_local_endpoints = Family::<Label, Gauge>::default();
        // Both series exist from the start, so an alert on them has data
        // before the first sync.
        for policy in ["internal", "external"] {
            no_local_endpoints
                .get_or_create(&[("traffic_policy", policy)])
                .set(0);
        }
        // kube-proxy's name ends in _total although it is a gauge; kept for
        // compatibility (prometheus-client only appends _total to counters).
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            no_local_endpoints.clone(),
        );
        let services = Gauge::default();
        registry.register(
            "xdplb_services_programmed",
            "Service ports programmed into the data plane",
            services.clone(),
        );
        let frontends = Gauge::default();
        registry.register(
            "xdplb_frontends_programmed",
            "Frontends (address, port, protocol) programmed into the data plane",
            frontends.clone(),
        );
        let endpoints = Gauge::default();
        registry.register(
            "xdplb_endpoints_programmed",
            "Distinct backend endpoints programmed into the data plane",
            endpoints.clone(),
        );
        let invalid = Gauge::default();
        registry.register(
            "xdplb_invalid_objects",
            "Objects skipped as invalid by the last sync",
            invalid.clone(),
        );
        let invalid_skipped = Counter::default();
        registry.register(
            "xdplb_invalid_objects_skipped",
            "Invalid objects skipped, counted at every sync that skipped them",
            invalid_skipped.clone(),
        );
        let refused = Gauge::default();
        registry.register(
            "xdplb_service_ports_refused",
            "Service ports the last sync refused because a map was full (logged with the map)",
            refused.clone(),
        );
        let http_binding = Family::<Label, Gauge>::default();
        registry.register(
            "xdplb_http_servers_binding",
            "HTTP servers (healthz, metrics, healthcheck ports) whose port is not bound yet; retried with backoff",
            http_binding.clone(),
        );
        let http_accept_errors = Family::<Label, Counter>::default();
        registry.register(
            "xdplb_http_accept_errors",
            "Failed accepts on the agent's HTTP servers (out of file descriptors and the like)",
            http_accept_errors.clone(),
        );
        let http_over_cap = Family::<Label, Counter>::default();
        registry.register(
            "xdplb_http_connections_over_cap",
            "Connections the agent's HTTP servers closed unserved, having as many open as they serve at once",
            http_over_cap.clone(),
        );
        Self {
            registry,
            refused,
            sync_duration,
            network_programming,
            last_sync,
            no_local_endpoints,
            services,
            frontends,
            endpoints,
            invalid,
            invalid_skipped,
            http_binding,
            http_accept_errors,
            http_over_cap,
        }
    }

    /// Where the HTTP servers of one kind report, as series labelled
    /// `server`; the series exist from this call on.
    pub fn http_status(&self, server: &'static str) -> http::Status {
        let label = [("server", server)];
        http::Status {
            binding: self.http_binding.get_or_create(&label).clone(),
            accept_errors: self.http_accept_errors.get_or_create(&label).clone(),
            over_cap: self.http_over_cap.get_or_create(&label).clone(),
        }
    }

    /// Records a successful sync: `duration` from the start of the rebuild
    /// to the last map write, `skipped` the objects left out as invalid.
    pub fn record_sync(
        &self,
        duration: Duration,
        report: &SyncReport,
        desired: &DesiredState,
        skipped: usize,
    ) {
        self.sync_duration.observe(duration.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
        self.services.set(report.services as i64);
        self.frontends.set(report.frontends as i64);
        self.endpoints.set(report.backends as i64);
        self.invalid.set(skipped as i64);
        self.refused.set(report.refused.len() as i64);
        self.invalid_skipped.inc_by(skipped as u64);
        let (internal, external) = no_local_endpoints(desired);
        self.no_local_endpoints
            .get_or_create(&[("traffic_policy", "internal")])
            .set(internal);
        self.no_local_endpoints
            .get_or_create(&[("traffic_policy", "external")])
            .set(external);
    }

    /// Records the time from an object's change to the maps carrying it.
    pub fn observe_network_programming(&self, latency: Duration) {
        self.network_programming.observe(latency.as_secs_f64());
    }
}

/// Service ports whose Local policy leaves them without endpoints, as
/// kube-proxy counts them (internal, external). kube-proxy leaves out
/// Services without endpoints anywhere, which it rejects; the model does not
/// keep the cluster-wide set under a Local policy, and the data plane drops
/// rather than rejects these, so they are counted too.
fn no_local_endpoints(desired: &DesiredState) -> (i64, i64) {
    let mut internal = 0;
    let mut external = 0;
    for sp in desired.services.values() {
        if sp.internal_policy_local && sp.cluster_backends.is_empty() {
            internal += 1;
        }
        if sp.external_policy_local && sp.external_backends.is_empty() {
            external += 1;
        }
    }
    (internal, external)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        datapath::MapSample,
        metrics::testing::check_exposition,
        model::{Backend, Proto, ServicePort, ServicePortId},
    };

    fn port(
        name: &str,
        internal_local: bool,
        external_local: bool,
    ) -> (ServicePortId, ServicePort) {
        (
            ServicePortId {
                namespace: "default".into(),
                name: name.into(),
                port_name: String::new(),
                protocol: Proto::Tcp,
            },
            ServicePort {
                internal_policy_local: internal_local,
                external_policy_local: external_local,
                ..ServicePort::default()
            },
        )
    }

    /// Every sample line belongs to a family declared by a TYPE line, and
    /// parses as `name{labels} value`.
    #[test]
    fn kube_proxy_names_types_and_sync_values() {
        let metrics = Metrics::new();
        let mut desired = DesiredState::default();
        let mut with_local = port("has-local", false, true);
        with_local.1.external_backends = vec![Backend {
            addr: Ipv4Addr::new(10, 0, 0, 1),
            port: 80,
            node_name: None,
            is_local: true,
            ready: true,
            serving: true,
            terminating: false,
        }];
        desired.services.extend([
            port("etp-local", false, true),
            port("itp-local", true, false),
            port("cluster", false, false),
            with_local,
        ]);
        let report = SyncReport {
            writes: 9,
            services: 4,
            frontends: 6,
            backends: 1,
            ..SyncReport::default()
        };
        metrics.record_sync(Duration::from_millis(3), &report, &desired, 2);
        metrics.record_sync(Duration::from_millis(3), &report, &desired, 1);
        metrics.observe_network_programming(Duration::from_millis(700));
        let text = metrics.render_sample(MapSample::default());
        check_exposition(&text);
        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            "kubeproxy_sync_proxy_rules_duration_seconds_count 2",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 2",
            "# TYPE kubeproxy_network_programming_duration_seconds histogram",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"1\"} 1",
            "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
            "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"} 1",
            "xdplb_services_programmed 4",
            "xdplb_frontends_programmed 6",
            "xdplb_endpoints_programmed 1",
            "xdplb_invalid_objects 1",
            "# TYPE xdplb_invalid_objects_skipped_total counter",
            "xdplb_invalid_objects_skipped_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let stamp = text
            .lines()
            .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_last_timestamp_seconds "))
            .unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!((now.as_secs_f64() - stamp.parse::<f64>().unwrap()).abs() < 60.0);
    }

    #[test]
    fn before_any_sync_both_traffic_policies_report_zero() {
        let text = Metrics::new().render_sample(MapSample::default());
        for policy in ["internal", "external"] {
            let line = format!(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{traffic_policy=\"{policy}\"}} 0"
            );
            assert!(text.contains(&line), "{text}");
        }
    }
}
