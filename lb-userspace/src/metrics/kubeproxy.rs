//! kube-proxy's own series, so its dashboards and alerts work unchanged.
//!
//! Names, types, help texts, buckets and labels are those of Kubernetes
//! v1.34's pkg/proxy/metrics/metrics.go (where v1.33 added the `ip_family`
//! label), written from memory of that file; component-base's "[ALPHA] "
//! help prefix is left out. Every per-family series has the child
//! `ip_family="IPv4"`, and `ip_family="IPv6"` from the first sync that
//! programs an IPv6 frontend on: as kube-proxy's, in single-stack IPv4 only
//! the first. kube-proxy syncs each family on its own; the agent syncs both
//! at once, so a sync's duration and time go to both families' series,
//! while changes, Services without local endpoints and deleted flows are
//! each family's own.
//!
//! Left out, as nothing here does what they measure:
//! `sync_proxy_rules_iptables_*`, `iptables_ct_state_invalid_dropped_packets_total`,
//! `iptables_localhost_nodeports_accepted_packets_total` and the nftables
//! mode's series (there are no iptables or nftables rules: invalid and
//! refused packets are counted by reason in `xdplb_packets_total`).
use std::{
    fmt::Debug,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
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
    model::{Changes, DesiredState, FamilyChanges, ServicePort},
    sync::SyncReport,
};

/// The `ip_family` label values, IPv4 then IPv6.
const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

type FamilyLabel = [(&'static str, &'static str); 1];
type PolicyLabels = [(&'static str, &'static str); 2];
type CodeLabel = [(&'static str, u16); 1];
type PerFamily<M> = Family<FamilyLabel, M, fn() -> M>;

/// Registers a metric family labelled `ip_family` whose IPv4 child exists
/// from the start.
fn per_family<M>(registry: &mut Registry, name: &str, help: &str, new: fn() -> M) -> PerFamily<M>
where
    M: EncodeMetric + TypedMetric + Clone + Debug + Send + Sync + 'static,
{
    let family = PerFamily::new_with_constructor(new);
    let _ = family.get_or_create(&[("ip_family", FAMILIES[0])]);
    registry.register(name, help, family.clone());
    family
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
    sync: PerFamily<Histogram>,
    sync_full: PerFamily<Histogram>,
    sync_partial: PerFamily<Histogram>,
    last_sync: PerFamily<Gauge<f64, AtomicU64>>,
    last_queued: PerFamily<Gauge<f64, AtomicU64>>,
    network_programming: PerFamily<Histogram>,
    service_changes_pending: PerFamily<Gauge>,
    service_changes: PerFamily<Counter>,
    endpoint_changes_pending: PerFamily<Gauge>,
    endpoint_changes: PerFamily<Counter>,
    no_local_endpoints: Family<PolicyLabels, Gauge>,
    conntrack_sync: PerFamily<Histogram>,
    conntrack_deleted: PerFamily<Counter>,
    /// Whether a sync has programmed an IPv6 frontend: IPv6 series exist
    /// from then on.
    ipv6: AtomicBool,
    pub probes: Probes,
}

impl KubeProxy {
    pub fn register(registry: &mut Registry) -> Self {
        let no_local_endpoints = Family::<PolicyLabels, Gauge>::default();
        // Both series exist from the start, so an alert on them has data
        // before the first sync.
        for policy in ["internal", "external"] {
            no_local_endpoints
                .get_or_create(&[("traffic_policy", policy), ("ip_family", FAMILIES[0])])
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
            sync: per_family(
                r,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                sync_histogram,
            ),
            sync_full: per_family(
                r,
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                sync_histogram,
            ),
            sync_partial: per_family(
                r,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                sync_histogram,
            ),
            last_sync: per_family(
                r,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                Gauge::default,
            ),
            last_queued: per_family(
                r,
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                Gauge::default,
            ),
            network_programming: per_family(
                r,
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                network_programming_histogram,
            ),
            service_changes_pending: per_family(
                r,
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                Gauge::default,
            ),
            service_changes: per_family(
                r,
                "kubeproxy_sync_proxy_rules_service_changes",
                "Cumulative proxy rules Service changes",
                Counter::default,
            ),
            endpoint_changes_pending: per_family(
                r,
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                Gauge::default,
            ),
            endpoint_changes: per_family(
                r,
                "kubeproxy_sync_proxy_rules_endpoint_changes",
                "Cumulative proxy rules Endpoint changes",
                Counter::default,
            ),
            conntrack_sync: per_family(
                r,
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
                sync_histogram,
            ),
            conntrack_deleted: per_family(
                r,
                "kubeproxy_conntrack_reconciler_deleted_entries",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                Counter::default,
            ),
            no_local_endpoints,
            ipv6: AtomicBool::new(false),
            probes,
        }
    }

    /// The `ip_family` labels of the families programmed so far.
    fn families(&self) -> impl Iterator<Item = FamilyLabel> {
        let n = if self.ipv6.load(Ordering::Relaxed) {
            2
        } else {
            1
        };
        FAMILIES[..n].iter().map(|f| [("ip_family", *f)])
    }

    pub fn queued(&self) {
        for f in self.families() {
            self.last_queued.get_or_create(&f).set(now_seconds());
        }
    }

    pub fn pending(&self, changes: Changes) {
        for (f, c) in self.families().zip([changes.ipv4, changes.ipv6]) {
            self.service_changes_pending
                .get_or_create(&f)
                .set(c.services as i64);
            self.endpoint_changes_pending
                .get_or_create(&f)
                .set(c.endpoints as i64);
        }
    }

    /// A successful sync: what was pending is applied.
    pub fn synced(
        &self,
        duration: Duration,
        report: &SyncReport,
        desired: &DesiredState,
        changes: Changes,
    ) {
        if desired
            .services
            .values()
            .any(|sp| !sp.frontends_v6.is_empty())
        {
            self.ipv6.store(true, Ordering::Relaxed);
        }
        let seconds = duration.as_secs_f64();
        let per_family = [
            (changes.ipv4, no_local_endpoints(desired, locality_v4)),
            (changes.ipv6, no_local_endpoints(desired, locality_v6)),
        ];
        for (f, (c, (internal, external))) in self.families().zip(per_family) {
            self.sync.get_or_create(&f).observe(seconds);
            match report.full {
                true => self.sync_full.get_or_create(&f).observe(seconds),
                false => self.sync_partial.get_or_create(&f).observe(seconds),
            }
            self.last_sync.get_or_create(&f).set(now_seconds());
            let FamilyChanges {
                services,
                endpoints,
            } = c;
            self.service_changes.get_or_create(&f).inc_by(services);
            self.endpoint_changes.get_or_create(&f).inc_by(endpoints);
            for (policy, n) in [("internal", internal), ("external", external)] {
                self.no_local_endpoints
                    .get_or_create(&[("traffic_policy", policy), f[0]])
                    .set(n);
            }
        }
        self.pending(Changes::default());
    }

    pub fn network_programming(&self, latency: Duration) {
        for f in self.families() {
            self.network_programming
                .get_or_create(&f)
                .observe(latency.as_secs_f64());
        }
    }

    /// `deleted_flows`: IPv4, IPv6.
    pub fn conntrack_reconciled(&self, duration: Duration, deleted_flows: [u64; 2]) {
        for (f, deleted) in self.families().zip(deleted_flows) {
            self.conntrack_sync
                .get_or_create(&f)
                .observe(duration.as_secs_f64());
            self.conntrack_deleted.get_or_create(&f).inc_by(deleted);
        }
    }
}

/// Service ports of one family whose Local policy leaves them without
/// endpoints, as kube-proxy counts them (internal, external); `locality`
/// gives a port's (has frontends, internal backends empty, external
/// backends empty) in the family. kube-proxy leaves out Services without
/// endpoints anywhere, which it rejects; the model does not keep the
/// cluster-wide set under a Local policy, and the data plane drops rather
/// than rejects these, so they are counted too.
fn no_local_endpoints(
    desired: &DesiredState,
    locality: fn(&ServicePort) -> (bool, bool, bool),
) -> (i64, i64) {
    let mut internal = 0;
    let mut external = 0;
    for sp in desired.services.values() {
        let (present, no_internal, no_external) = locality(sp);
        if present && sp.internal_policy_local && no_internal {
            internal += 1;
        }
        if present && sp.external_policy_local && no_external {
            external += 1;
        }
    }
    (internal, external)
}

fn locality_v4(sp: &ServicePort) -> (bool, bool, bool) {
    (
        !sp.frontends.is_empty(),
        sp.cluster_backends.is_empty(),
        sp.external_backends.is_empty(),
    )
}

fn locality_v6(sp: &ServicePort) -> (bool, bool, bool) {
    (
        !sp.frontends_v6.is_empty(),
        sp.cluster_backends_v6.is_empty(),
        sp.external_backends_v6.is_empty(),
    )
}
