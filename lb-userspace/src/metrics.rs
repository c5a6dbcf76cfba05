//! Prometheus metrics on `--metrics-addr` (kube-proxy's port 10249), in the
//! Prometheus text format kube-proxy serves, under kube-proxy's names where
//! it has one so existing dashboards and alerts keep working.
//!
//! What the agent learns while syncing is recorded as it syncs. What the
//! data plane counts is read from the maps when scraped, in one pass over
//! each map, so a scrape costs one read of the maps and nothing runs between
//! scrapes.
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::{maps::IterableMap, Pod};
use lb_common::{names, Reason, PROTO_TCP, PROTO_UDP};
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, linear_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};
use tokio::{io::AsyncWriteExt, net::TcpListener};

use crate::{
    datapath::{Maps, RingSlots},
    healthcheck::{http_response, read_request},
    model::DesiredState,
    sync::{svc_name_str, SyncReport},
};

type PolicyLabel = [(&'static str, &'static str); 1];

/// The metrics the agent records as it syncs.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    network_programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    no_local_endpoints: Family<PolicyLabel, Gauge>,
    services: Gauge,
    frontends: Gauge,
    endpoints: Gauge,
    invalid: Gauge,
    invalid_skipped: Counter,
    refused: Gauge,
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
        let no_local_endpoints = Family::<PolicyLabel, Gauge>::default();
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

    /// Reads the maps once and renders everything.
    pub fn render(&self, maps: &Maps) -> Result<String> {
        Ok(self.render_sample(MapSample::read(maps)?))
    }

    /// Renders the recorded metrics and one reading of the maps.
    pub fn render_sample(&self, sample: MapSample) -> String {
        // A registry only takes metrics while mutable, so the map reading
        // gets one of its own for this scrape; the Prometheus text format
        // (unlike OpenMetrics) has no end marker, so the two concatenate.
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(sample));
        let mut out = String::new();
        for registry in [&self.registry, &scrape] {
            prometheus_text::encode(&mut out, registry).expect("writing to a String");
        }
        out
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

/// Packets and bytes of one service port, named as in `SVC_NAMES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCounters {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

impl MapFill {
    fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 / self.capacity as f64
        }
    }
}

/// One reading of the maps, made at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSample {
    pub reasons: Vec<(Reason, u64)>,
    pub services: Vec<ServiceCounters>,
    pub fill: Vec<MapFill>,
    /// Connection-tracking entries by protocol; a flow has two (forward, reply).
    pub conntrack: BTreeMap<&'static str, u64>,
}

fn capacity<K: Pod, V>(map: &impl IterableMap<K, V>) -> Result<u64> {
    Ok(map.map().info()?.max_entries().into())
}

fn protocol(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "other",
    }
}

impl MapSample {
    pub fn read(maps: &Maps) -> Result<Self> {
        let mut fill = Vec::new();

        let mut rings: BTreeMap<u32, u32> = BTreeMap::new();
        let mut frontends = 0;
        for entry in maps.frontends.iter() {
            let (_, fe) = entry.context("reading FRONTENDS_V4")?;
            frontends += 1;
            if fe.ring_size > 0 {
                rings.insert(fe.ring_offset, fe.ring_size);
            }
        }
        fill.push(MapFill {
            map: names::FRONTENDS_V4,
            entries: frontends,
            capacity: capacity(&maps.frontends)?,
        });

        // Backend ids in use are the members of the published rings: the
        // syncer gives every ring member an entry and zeroes it when it
        // leaves its last ring. Rings are memory-mapped, while walking the
        // BACKENDS_V4 array would cost a syscall per element (a million at
        // the default size, over a second per scrape).
        let backend_capacity = maps.backends.len() as usize;
        let mut in_use = vec![0u64; backend_capacity.div_ceil(64)];
        let mut slots = 0u64;
        for (&offset, &size) in &rings {
            slots += u64::from(size);
            for id in maps.slots.read(offset, size)? {
                if let Some(word) = in_use.get_mut(id as usize / 64) {
                    *word |= 1 << (id % 64);
                }
            }
        }
        fill.push(MapFill {
            map: names::BACKENDS_V4,
            entries: in_use.iter().map(|w| u64::from(w.count_ones())).sum(),
            capacity: backend_capacity as u64,
        });
        fill.push(MapFill {
            map: names::MAGLEV_SLOTS,
            entries: slots,
            capacity: maps.slots.len().into(),
        });

        // Walking a hash map that changes underneath restarts the walk when
        // the current key goes; capping at the capacity bounds the cost and
        // the overcount.
        let ct_capacity = capacity(&maps.ct)?;
        let mut conntrack = BTreeMap::new();
        let mut ct_entries = 0;
        for key in maps.ct.keys().take(ct_capacity as usize) {
            let key = key.context("reading CT_V4")?;
            *conntrack.entry(protocol(key.proto)).or_insert(0) += 1;
            ct_entries += 1;
        }
        fill.push(MapFill {
            map: names::CT_V4,
            entries: ct_entries,
            capacity: ct_capacity,
        });

        let affinity_capacity = capacity(&maps.affinity)?;
        let mut affinity = 0;
        for key in maps.affinity.keys().take(affinity_capacity as usize) {
            key.context("reading AFFINITY_V4")?;
            affinity += 1;
        }
        fill.push(MapFill {
            map: names::AFFINITY_V4,
            entries: affinity,
            capacity: affinity_capacity,
        });

        let mut addrs = 0;
        for key in maps.addrs.keys() {
            key.context("reading ADDRS_V4")?;
            addrs += 1;
        }
        fill.push(MapFill {
            map: names::ADDRS_V4,
            entries: addrs,
            capacity: capacity(&maps.addrs)?,
        });

        let mut services = Vec::new();
        for entry in maps.svc_names.iter() {
            let (svc_id, name) = entry.context("reading SVC_NAMES")?;
            let totals = maps.service_totals(svc_id)?;
            services.push(ServiceCounters {
                name: svc_name_str(&name),
                packets: totals.packets,
                bytes: totals.bytes,
            });
        }
        fill.push(MapFill {
            map: names::SVC_NAMES,
            entries: services.len() as u64,
            capacity: capacity(&maps.svc_names)?,
        });

        Ok(Self {
            reasons: maps.reason_totals()?,
            services,
            fill,
            conntrack,
        })
    }
}

/// Labels of a service port from its `SVC_NAMES` value
/// "namespace/name:port/PROTO". The value is cut at 127 bytes, so a long
/// name may lose its protocol or port: whatever is missing stays empty
/// rather than hiding the service's traffic.
fn service_labels(raw: &str) -> [(&'static str, String); 4] {
    let (namespace, rest) = raw.split_once('/').unwrap_or(("", raw));
    let (rest, protocol) = rest.rsplit_once('/').unwrap_or((rest, ""));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    [
        ("namespace", namespace.to_string()),
        ("name", name.to_string()),
        ("port", port.to_string()),
        ("protocol", protocol.to_string()),
    ]
}

fn counters<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (S, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn gauges<S: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (S, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

impl Collector for MapSample {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        counters(
            &mut encoder,
            "xdplb_packets",
            "Packets the XDP program saw, by the path they took or why they were dropped or rejected.",
            self.reasons.iter().map(|(r, n)| ([("reason", r.name())], *n)),
        )?;
        counters(
            &mut encoder,
            "xdplb_service_packets",
            "Packets translated to a backend of the service port.",
            self.services
                .iter()
                .map(|s| (service_labels(&s.name), s.packets)),
        )?;
        counters(
            &mut encoder,
            "xdplb_service_bytes",
            "Bytes translated to a backend of the service port.",
            self.services
                .iter()
                .map(|s| (service_labels(&s.name), s.bytes)),
        )?;
        gauges(
            &mut encoder,
            "xdplb_map_fill_ratio",
            "Entries in use over the map's capacity (for MAGLEV_SLOTS, slots of published rings).",
            self.fill.iter().map(|f| ([("map", f.map)], f.ratio())),
        )?;
        gauges(
            &mut encoder,
            "xdplb_conntrack_entries",
            "Connection-tracking entries; a translated flow has a forward and a reply entry.",
            self.conntrack.iter().map(|(p, n)| ([("protocol", *p)], *n)),
        )
    }
}

/// Serves `/metrics`; returns only when the maps or the address cannot be
/// opened. It opens its own handle on the maps pinned under `maps_dir`
/// (pinned maps can be opened any number of times), so scrapes never wait
/// on the agent's sync loop; the rings it reads through the agent's
/// mapping of them, `slots`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    maps_dir: PathBuf,
    slots: RingSlots,
) -> Result<()> {
    let maps = Mutex::new(Maps::from_pins_sharing(&maps_dir, slots)?);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // The lock only keeps two overlapping scrapes from walking the maps at
    // once; a scrape that panicked left nothing half-done in them.
    serve_on(listener, move || {
        metrics.render(&maps.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await
}

async fn serve_on(
    listener: TcpListener,
    render: impl Fn() -> Result<String> + Send + Sync + 'static,
) -> Result<()> {
    let render = Arc::new(render);
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            // Out of descriptors and the like pass; the server must not end.
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let Some(path) = read_request(&mut sock).await else {
                return;
            };
            let reply = if path == "/metrics" {
                // Walking the maps is a run of blocking syscalls.
                match tokio::task::spawn_blocking(move || render()).await {
                    Ok(Ok(text)) => http_response(
                        "200 OK",
                        &[("Content-Type", prometheus_text::CONTENT_TYPE)],
                        &text,
                    ),
                    Ok(Err(e)) => http_response(
                        "500 Internal Server Error",
                        &[("Content-Type", "text/plain; charset=utf-8")],
                        &format!("reading the maps: {e:#}\n"),
                    ),
                    Err(e) => http_response(
                        "500 Internal Server Error",
                        &[("Content-Type", "text/plain; charset=utf-8")],
                        &format!("{e}\n"),
                    ),
                }
            } else {
                http_response(
                    "404 Not Found",
                    &[("Content-Type", "text/plain; charset=utf-8")],
                    "only /metrics is served here\n",
                )
            };
            let _ = sock.write_all(reply.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::{io::AsyncReadExt, net::TcpStream};

    use super::*;
    use crate::model::{Backend, Proto, ServicePort, ServicePortId};

    fn sample() -> MapSample {
        MapSample {
            reasons: vec![(Reason::XlateNew, 7), (Reason::DropNoLocalBackend, 2)],
            services: vec![
                ServiceCounters {
                    name: "default/web:http/TCP".into(),
                    packets: 10,
                    bytes: 1500,
                },
                ServiceCounters {
                    name: "kube-system/kube-dns:dns/UDP".into(),
                    packets: 3,
                    bytes: 210,
                },
            ],
            fill: vec![
                MapFill {
                    map: names::CT_V4,
                    entries: 128,
                    capacity: 512,
                },
                MapFill {
                    map: names::BACKENDS_V4,
                    entries: 0,
                    capacity: 0,
                },
            ],
            conntrack: BTreeMap::from([("TCP", 100), ("UDP", 28)]),
        }
    }

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
    fn check_exposition(text: &str) {
        let mut families: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    !families.iter().any(|(n, _)| n == name),
                    "{name} declared twice"
                );
                families.push((name.to_string(), kind.to_string()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            let name = series.split('{').next().unwrap();
            let known = families.iter().any(|(family, kind)| {
                name == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(family)))
            });
            assert!(known, "{name} has no TYPE line");
        }
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

    #[test]
    fn map_readings_become_labelled_series() {
        let text = Metrics::new().render_sample(sample());
        check_exposition(&text);
        for line in [
            "# TYPE xdplb_packets_total counter",
            "xdplb_packets_total{reason=\"xlate_new_flow\"} 7",
            "xdplb_packets_total{reason=\"drop_no_local_backend\"} 2",
            "xdplb_service_packets_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\"} 10",
            "xdplb_service_bytes_total{namespace=\"default\",name=\"web\",port=\"http\",protocol=\"TCP\"} 1500",
            "xdplb_service_packets_total{namespace=\"kube-system\",name=\"kube-dns\",port=\"dns\",protocol=\"UDP\"} 3",
            "# TYPE xdplb_map_fill_ratio gauge",
            "xdplb_map_fill_ratio{map=\"CT_V4\"} 0.25",
            "xdplb_map_fill_ratio{map=\"BACKENDS_V4\"} 0.0",
            "xdplb_conntrack_entries{protocol=\"TCP\"} 100",
            "xdplb_conntrack_entries{protocol=\"UDP\"} 28",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn service_names_split_into_labels() {
        let values = |raw: &str| service_labels(raw).map(|(_, v)| v);
        assert_eq!(
            values("default/web:http/TCP"),
            ["default", "web", "http", "TCP"]
        );
        assert_eq!(values("default/web:/UDP"), ["default", "web", "", "UDP"]);
        // Cut at 127 bytes: the protocol (and part of the port) is gone.
        assert_eq!(values("ns/name:metri"), ["ns", "name", "metri", ""]);
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = String::new();
        sock.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn serves_metrics_in_prometheus_text_format() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let fails = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fail = fails.clone();
        tokio::spawn(serve_on(listener, move || {
            if fail.load(std::sync::atomic::Ordering::Relaxed) {
                anyhow::bail!("map gone");
            }
            Ok(metrics.render_sample(sample()))
        }));

        let reply = get(addr, "/metrics?x=1").await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("xdplb_packets_total{reason=\"xlate_new_flow\"} 7"));

        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404 "));
        fails.store(true, std::sync::atomic::Ordering::Relaxed);
        let reply = get(addr, "/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
        assert!(reply.ends_with("map gone\n"), "{reply}");
    }
}
