//! The series the agent records as it syncs and serves: kube-proxy's (in
//! `kubeproxy.rs`) and the agent's own `xdplb_*`.
use std::{fmt::Debug, time::Duration};

use prometheus_client::{
    encoding::EncodeMetric,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::kubeproxy::{KubeProxy, Probes};
use crate::{
    http,
    model::{Changes, DesiredState},
    sync::SyncReport,
};

type Label = [(&'static str, &'static str); 1];
type PoolLabels = [(&'static str, String); 2];

/// The metrics the agent records as it syncs.
pub struct Metrics {
    pub(super) registry: Registry,
    kube: KubeProxy,
    services: Gauge,
    frontends: Gauge,
    endpoints: Gauge,
    invalid: Gauge,
    invalid_skipped: Counter,
    refused: Gauge,
    http_binding: Family<Label, Gauge>,
    http_accept_errors: Family<Label, Counter>,
    http_over_cap: Family<Label, Counter>,
    lb_pool_addresses: Family<PoolLabels, Gauge>,
    lb_pool_exhausted: Counter,
    lb_announced: Gauge,
    lb_status_lease: Gauge,
    lb_status_writes: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `metric`, registered as `name`.
fn registered<M: EncodeMetric + Clone + Debug + Send + Sync + 'static>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let kube = KubeProxy::register(&mut registry);
        let r = &mut registry;
        let services = registered(
            r,
            "xdplb_services_programmed",
            "Service ports programmed into the data plane",
            Gauge::default(),
        );
        let frontends = registered(
            r,
            "xdplb_frontends_programmed",
            "Frontends (address, port, protocol) programmed into the data plane",
            Gauge::default(),
        );
        let endpoints = registered(
            r,
            "xdplb_endpoints_programmed",
            "Distinct backend endpoints programmed into the data plane",
            Gauge::default(),
        );
        let invalid = registered(
            r,
            "xdplb_invalid_objects",
            "Objects skipped as invalid by the last sync",
            Gauge::default(),
        );
        let invalid_skipped = registered(
            r,
            "xdplb_invalid_objects_skipped",
            "Invalid objects skipped, counted at every sync that skipped them",
            Counter::default(),
        );
        let refused = registered(
            r,
            "xdplb_service_ports_refused",
            "Service ports the last sync refused because a map was full (logged with the map)",
            Gauge::default(),
        );
        let http_binding = registered(
            r,
            "xdplb_http_servers_binding",
            "HTTP servers (healthz, metrics, healthcheck ports) whose port is not bound yet; retried with backoff",
            Family::default(),
        );
        let http_accept_errors = registered(
            r,
            "xdplb_http_accept_errors",
            "Failed accepts on the agent's HTTP servers (out of file descriptors and the like)",
            Family::default(),
        );
        let http_over_cap = registered(
            r,
            "xdplb_http_connections_over_cap",
            "Connections the agent's HTTP servers closed unserved, having as many open as they serve at once",
            Family::default(),
        );
        let lb_pool_addresses = registered(
            r,
            "xdplb_lb_pool_addresses",
            "Addresses of each LoadBalancer pool (--lb-pool, --lb-pool-range), used and free",
            Family::default(),
        );
        let lb_pool_exhausted = registered(
            r,
            "xdplb_lb_pool_exhausted",
            "LoadBalancer Services left without an address because every pool address was in use, counted at every sync that left them so",
            Counter::default(),
        );
        let lb_announced = registered(
            r,
            "xdplb_lb_addresses_announced",
            "LoadBalancer addresses this node answers ARP for",
            Gauge::default(),
        );
        let lb_status_lease = registered(
            r,
            "xdplb_lb_status_lease_held",
            "1 while this agent holds the lease that makes it the writer of LoadBalancer statuses",
            Gauge::default(),
        );
        let lb_status_writes = registered(
            r,
            "xdplb_lb_status_writes",
            "Patches of Services' status.loadBalancer.ingress, by result (ok, error)",
            Family::default(),
        );
        Self {
            registry,
            kube,
            services,
            frontends,
            endpoints,
            invalid,
            invalid_skipped,
            refused,
            http_binding,
            http_accept_errors,
            http_over_cap,
            lb_pool_addresses,
            lb_pool_exhausted,
            lb_announced,
            lb_status_lease,
            lb_status_writes,
        }
    }

    /// Records the pools' use after an allocation: `usage` is (pool, used,
    /// free) per pool, `exhausted` the Services that found no address.
    pub fn record_lb_pools(&self, usage: &[(String, u64, u64)], exhausted: usize) {
        for (pool, used, free) in usage {
            for (state, n) in [("used", used), ("free", free)] {
                self.lb_pool_addresses
                    .get_or_create(&[("pool", pool.clone()), ("state", state.to_string())])
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        self.lb_pool_exhausted.inc_by(exhausted as u64);
    }

    /// The number of LoadBalancer addresses this node announces.
    pub fn record_announced(&self, addresses: usize) {
        self.lb_announced.set(addresses as i64);
    }

    pub fn record_status_lease(&self, held: bool) {
        self.lb_status_lease.set(i64::from(held));
    }

    pub fn record_status_write(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.lb_status_writes
            .get_or_create(&[("result", result)])
            .inc();
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

    /// Where `/healthz` and `/livez` count their answers.
    pub fn probes(&self) -> Probes {
        self.kube.probes.clone()
    }

    /// A sync was asked for (a change arrived, or a failed sync is retried).
    pub fn record_queued(&self) {
        self.kube.queued();
    }

    /// `changes` from the last applied state wait for the sync under way.
    pub fn record_pending(&self, changes: Changes) {
        self.kube.pending(changes);
    }

    /// Records a successful sync of `changes`: `duration` from the start of
    /// the rebuild to the last map write, `skipped` the objects left out as
    /// invalid.
    pub fn record_sync(
        &self,
        duration: Duration,
        report: &SyncReport,
        desired: &DesiredState,
        skipped: usize,
        changes: Changes,
    ) {
        self.kube.synced(duration, report, desired, changes);
        self.services.set(report.services as i64);
        self.frontends.set(report.frontends as i64);
        self.endpoints.set(report.backends as i64);
        self.invalid.set(skipped as i64);
        self.refused.set(report.refused.len() as i64);
        self.invalid_skipped.inc_by(skipped as u64);
    }

    /// Records the time from a change in the cluster to the maps carrying it.
    pub fn observe_network_programming(&self, latency: Duration) {
        self.kube.network_programming(latency);
    }

    /// Records one pass of forgetting flows of removed backends, which
    /// deleted `deleted_flows` (IPv4, IPv6).
    pub fn record_conntrack_reconcile(&self, duration: Duration, deleted_flows: [u64; 2]) {
        self.kube.conntrack_reconciled(duration, deleted_flows);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        time::{SystemTime, UNIX_EPOCH},
    };

    use super::*;
    use crate::{
        datapath::MapSample,
        metrics::testing::check_exposition,
        model::{
            Backend, FamilyChanges, Frontend, FrontendKind, Proto, ServicePort, ServicePortId,
        },
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
                frontends: vec![Frontend {
                    addr: Ipv4Addr::new(10, 96, 0, 1),
                    port: 80,
                    kind: FrontendKind::ClusterIp,
                    on_node: false,
                }],
                internal_policy_local: internal_local,
                external_policy_local: external_local,
                ..ServicePort::default()
            },
        )
    }

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
            full: true,
            ..SyncReport::default()
        };
        let first = Changes {
            ipv4: FamilyChanges {
                services: 4,
                endpoints: 1,
            },
            ipv6: FamilyChanges::default(),
        };
        metrics.record_queued();
        metrics.record_pending(first);
        let pending = metrics.render_sample(MapSample::default());
        metrics.record_sync(Duration::from_millis(3), &report, &desired, 2, first);
        let partial = SyncReport {
            full: false,
            ..report.clone()
        };
        let second = Changes {
            ipv4: FamilyChanges {
                services: 0,
                endpoints: 2,
            },
            ipv6: FamilyChanges::default(),
        };
        metrics.record_sync(Duration::from_millis(3), &partial, &desired, 1, second);
        metrics.observe_network_programming(Duration::from_millis(700));
        metrics.record_conntrack_reconcile(Duration::from_micros(300), [5, 0]);
        metrics.probes().healthz(200);
        metrics.probes().healthz(503);
        metrics.probes().livez(200);
        let text = metrics.render_sample(MapSample::default());
        check_exposition(&text);
        for line in [
            "kubeproxy_sync_proxy_rules_service_changes_pending{ip_family=\"IPv4\"} 4",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending{ip_family=\"IPv4\"} 1",
        ] {
            assert!(
                pending.lines().any(|l| l == line),
                "no {line:?} in\n{pending}"
            );
        }
        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"} 2",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "# TYPE kubeproxy_network_programming_duration_seconds histogram",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.5\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"1\"} 1",
            "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"300\"} 1",
            "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
            "# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge",
            "# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter",
            "kubeproxy_sync_proxy_rules_service_changes_total{ip_family=\"IPv4\"} 4",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total{ip_family=\"IPv4\"} 3",
            "kubeproxy_sync_proxy_rules_service_changes_pending{ip_family=\"IPv4\"} 0",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending{ip_family=\"IPv4\"} 0",
            "# TYPE kubeproxy_sync_proxy_rules_no_local_endpoints_total gauge",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\",ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"} 1",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 5",
            "# TYPE kubeproxy_proxy_healthz_total counter",
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            "xdplb_services_programmed 4",
            "xdplb_frontends_programmed 6",
            "xdplb_endpoints_programmed 1",
            "xdplb_invalid_objects 1",
            "# TYPE xdplb_invalid_objects_skipped_total counter",
            "xdplb_invalid_objects_skipped_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        for series in [
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        ] {
            let prefix = format!("{series}{{ip_family=\"IPv4\"}} ");
            let stamp = text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap();
            assert!((now.as_secs_f64() - stamp.parse::<f64>().unwrap()).abs() < 60.0);
        }
    }

    /// IPv6 series appear with the first IPv6 frontend, as kube-proxy's in
    /// dual stack, each with its own family's counts.
    #[test]
    fn ipv6_series_follow_the_first_ipv6_frontend() {
        let metrics = Metrics::new();
        let mut desired = DesiredState::default();
        desired.services.extend([port("v4", false, true)]);
        let report = SyncReport::default();
        metrics.record_sync(
            Duration::from_millis(3),
            &report,
            &desired,
            0,
            Changes::default(),
        );
        let text = metrics.render_sample(MapSample::default());
        assert!(!text.contains("IPv6"), "single stack: IPv4 only\n{text}");

        let (id, mut v6) = port("v6", true, false);
        v6.frontends.clear();
        v6.frontends_v6 = vec![Frontend {
            addr: "fd00:96::1".parse().unwrap(),
            port: 80,
            kind: FrontendKind::ClusterIp,
            on_node: false,
        }];
        desired.services.insert(id, v6);
        let changes = Changes {
            ipv4: FamilyChanges::default(),
            ipv6: FamilyChanges {
                services: 1,
                endpoints: 0,
            },
        };
        metrics.record_sync(Duration::from_millis(3), &report, &desired, 0, changes);
        metrics.record_conntrack_reconcile(Duration::from_micros(300), [2, 7]);
        let text = metrics.render_sample(MapSample::default());
        check_exposition(&text);
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2",
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 1",
            "kubeproxy_sync_proxy_rules_service_changes_total{ip_family=\"IPv4\"} 0",
            "kubeproxy_sync_proxy_rules_service_changes_total{ip_family=\"IPv6\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\",ip_family=\"IPv4\"} 0",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\",ip_family=\"IPv6\"} 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv6\"} 0",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 2",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn before_any_sync_both_traffic_policies_report_zero() {
        let text = Metrics::new().render_sample(MapSample::default());
        for policy in ["internal", "external"] {
            let line = format!(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{traffic_policy=\"{policy}\",ip_family=\"IPv4\"}} 0"
            );
            assert!(text.contains(&line), "{text}");
        }
    }

    #[test]
    fn lb_pools_report_used_and_free_addresses_and_count_exhaustion() {
        let metrics = Metrics::new();
        let usage = [("192.168.50.200-192.168.50.202".to_string(), 3, 0)];
        metrics.record_lb_pools(&usage, 2);
        metrics.record_lb_pools(&usage, 1);
        metrics.record_announced(2);
        metrics.record_status_lease(true);
        metrics.record_status_write(true);
        metrics.record_status_write(false);
        metrics.record_status_write(true);
        let text = metrics.render_sample(MapSample::default());
        check_exposition(&text);
        for line in [
            "xdplb_lb_pool_addresses{pool=\"192.168.50.200-192.168.50.202\",state=\"used\"} 3",
            "xdplb_lb_pool_addresses{pool=\"192.168.50.200-192.168.50.202\",state=\"free\"} 0",
            "# TYPE xdplb_lb_pool_exhausted_total counter",
            "xdplb_lb_pool_exhausted_total 3",
            "xdplb_lb_addresses_announced 2",
            "xdplb_lb_status_lease_held 1",
            "xdplb_lb_status_writes_total{result=\"ok\"} 2",
            "xdplb_lb_status_writes_total{result=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
