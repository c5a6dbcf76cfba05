//! kube-proxy's own series, so its dashboards and alerts work unchanged.
//!
//! Names, types, help texts, buckets and labels are those of Kubernetes
//! v1.34's pkg/proxy/metrics/metrics.go (where v1.33 added the `ip_family`
//! label), written from memory of that file; component-base's "[ALPHA] "
//! help prefix is left out. The agent programs IPv4 only, so every
//! per-family series has the one child `ip_family="IPv4"`.
//!
//! Left out, as nothing here does what they measure:
//! `sync_proxy_rules_iptables_*`, `iptables_ct_state_invalid_dropped_packets_total`,
//! `iptables_localhost_nodeports_accepted_packets_total` and the nftables
//! mode's series (there are no iptables or nftables rules: invalid and
//! refused packets are counted by reason in `xdplb_packets_total`).
use std::{
    fmt::Debug,
    sync::atomic::AtomicU64,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeMetric,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, linear_buckets, Histogram},
        TypedMetric,
    },
    registry::Registry,
};

use crate::{
    model::{Changes, DesiredState},
    sync::SyncReport,
};

const IPV4: [(&str, &str); 1] = [("ip_family", "IPv4")];

type FamilyLabel = [(&'static str, &'static str); 1];
type PolicyLabels = [(&'static str, &'static str); 2];
type CodeLabel = [(&'static str, u16); 1];

/// The series of one metric family labelled `ip_family`, and the handle of
/// its IPv4 child.
fn ipv4<M>(registry: &mut Registry, name: &str, help: &str, new: fn() -> M) -> M
where
    M: EncodeMetric + TypedMetric + Clone + Debug + Send + Sync + 'static,
{
    let family = Family::<FamilyLabel, M, fn() -> M>::new_with_constructor(new);
    let child = family.get_or_create(&IPV4).clone();
    registry.register(name, help, family);
    child
}

/// `SyncProxyRulesLatency` and its full and partial kin, and the conntrack
/// reconciler's: exponential from 1 ms, doubling, 15 buckets (to 16 s).
fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// `NetworkProgrammingLatency`: 0.25 s steps to 0.5 s, then 1 s to a
/// minute, 5 s to two, 30 s to five. component-base's `MergeBuckets` also
/// starts them with a 0 bucket, kept so `le` series match kube-proxy's one
/// for one.
fn network_programming_histogram() -> Histogram {
    Histogram::new(
        std::iter::once(0.0)
            .chain(linear_buckets(0.25, 0.25, 2))
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7)),
    )
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// kube-proxy's counts of its `/healthz` and `/livez` answers, by status
/// code. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    healthz: Family<CodeLabel, Counter>,
    livez: Family<CodeLabel, Counter>,
}

impl Probes {
    pub fn healthz(&self, code: u16) {
        self.healthz.get_or_create(&[("code", code)]).inc();
    }

    pub fn livez(&self, code: u16) {
        self.livez.get_or_create(&[("code", code)]).inc();
    }
}

pub(super) struct KubeProxy {
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    last_queued: Gauge<f64, AtomicU64>,
    network_programming: Histogram,
    service_changes_pending: Gauge,
    service_changes: Counter,
    endpoint_changes_pending: Gauge,
    endpoint_changes: Counter,
    no_local_endpoints: Family<PolicyLabels, Gauge>,
    conntrack_sync: Histogram,
    conntrack_deleted: Counter,
    pub probes: Probes,
}

impl KubeProxy {
    pub fn register(registry: &mut Registry) -> Self {
        let no_local_endpoints = Family::<PolicyLabels, Gauge>::default();
        // Both series exist from the start, so an alert on them has data
        // before the first sync.
        for policy in ["internal", "external"] {
            no_local_endpoints
                .get_or_create(&[("traffic_policy", policy), IPV4[0]])
                .set(0);
        }
        // kube-proxy's name ends in _total although it is a gauge; kept for
        // compatibility (prometheus-client only appends _total to counters).
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            no_local_endpoints.clone(),
        );
        let probes = Probes::default();
        registry.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            probes.healthz.clone(),
        );
        registry.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            probes.livez.clone(),
        );
        let r = registry;
        Self {
            sync: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                sync_histogram,
            ),
            sync_full: ipv4(
                r,
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                sync_histogram,
            ),
            sync_partial: ipv4(
                r,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                sync_histogram,
            ),
            last_sync: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                Gauge::default,
            ),
            last_queued: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                Gauge::default,
            ),
            network_programming: ipv4(
                r,
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                network_programming_histogram,
            ),
            service_changes_pending: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                Gauge::default,
            ),
            service_changes: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                Counter::default,
            ),
            endpoint_changes_pending: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                Gauge::default,
            ),
            endpoint_changes: ipv4(
                r,
                "kubeproxy_sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                Counter::default,
            ),
            conntrack_sync: ipv4(
                r,
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
                sync_histogram,
            ),
            conntrack_deleted: ipv4(
                r,
                "kubeproxy_conntrack_reconciler_deleted_entries",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                Counter::default,
            ),
            no_local_endpoints,
            probes,
        }
    }

    pub fn queued(&self) {
        self.last_queued.set(now_seconds());
    }

    pub fn pending(&self, changes: Changes) {
        self.service_changes_pending.set(changes.services as i64);
        self.endpoint_changes_pending.set(changes.endpoints as i64);
    }

    /// A successful sync: what was pending is applied.
    pub fn synced(
        &self,
        duration: Duration,
        report: &SyncReport,
        desired: &DesiredState,
        changes: Changes,
    ) {
        let seconds = duration.as_secs_f64();
        self.sync.observe(seconds);
        match report.full {
            true => self.sync_full.observe(seconds),
            false => self.sync_partial.observe(seconds),
        }
        self.last_sync.set(now_seconds());
        self.service_changes.inc_by(changes.services);
        self.endpoint_changes.inc_by(changes.endpoints);
        self.pending(Changes::default());
        let (internal, external) = no_local_endpoints(desired);
        for (policy, n) in [("internal", internal), ("external", external)] {
            self.no_local_endpoints
                .get_or_create(&[("traffic_policy", policy), IPV4[0]])
                .set(n);
        }
    }

    pub fn network_programming(&self, latency: Duration) {
        self.network_programming.observe(latency.as_secs_f64());
    }

    pub fn conntrack_reconciled(&self, duration: Duration, deleted_flows: u64) {
        self.conntrack_sync.observe(duration.as_secs_f64());
        self.conntrack_deleted.inc_by(deleted_flows);
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
