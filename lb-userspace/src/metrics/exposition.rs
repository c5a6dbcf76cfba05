//! The Prometheus text kube-proxy serves: the recorded series, then one
//! reading of the maps.
use std::fmt;

use anyhow::Result;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::Metrics;
use crate::datapath::{MapSample, Maps};

impl Metrics {
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

/// Labels of a service port from its `SVC_NAMES` value
/// "namespace/name:port/PROTO" (`lb_common::svc_name`).
fn service_labels(raw: &str) -> [(&'static str, String); 4] {
    // An unreadable name keeps its text as the name, so its series stay
    // apart from every other.
    let (namespace, name, port, protocol) = match lb_common::SvcNameParts::parse(raw) {
        Some(p) => (p.namespace, p.name, p.port, p.protocol),
        None => ("", raw, "", ""),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing::{check_exposition, sample};

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
        // Names are no longer cut (160 bytes hold the longest); anything
        // unreadable keeps its text apart.
        assert_eq!(values("ns/name:metri"), ["", "ns/name:metri", "", ""]);
    }
}
