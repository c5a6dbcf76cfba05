//! Prometheus metrics on `--metrics-addr` (kube-proxy's port 10249), in the
//! Prometheus text format kube-proxy serves, under kube-proxy's names where
//! it has one so existing dashboards and alerts keep working.
//!
//! What the agent learns while syncing is recorded as it syncs
//! (`registry.rs`). What the data plane counts is read from the maps when
//! scraped ([`crate::datapath::MapSample`]), in one pass over each map, so a
//! scrape costs one read of the maps and nothing runs between scrapes;
//! `exposition.rs` renders both, and [`serve`] answers `/metrics` with them on
//! the HTTP edge.
mod exposition;
mod kubeproxy;
mod registry;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Result;
use hyper::StatusCode;
use prometheus_client::encoding::prometheus_text;

pub use kubeproxy::Probes;
pub use registry::Metrics;

use crate::{
    datapath::{Maps, SlotsView},
    http::{self, Limits, Routes, Server},
};

/// Serves `/metrics` until the returned server is dropped; fails only when
/// the maps cannot be opened. It opens its own handle on the maps pinned
/// under `maps_dir` (pinned maps can be opened any number of times), so
/// scrapes never wait on the agent's sync loop.
/// `slots` is the agent's own mapping of the ring array: the kernel maps
/// every page of it at mmap, so a second mapping would put its 128 MiB in
/// the agent's resident memory again.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    maps_dir: PathBuf,
    slots: SlotsView,
) -> Result<Server> {
    let maps = Mutex::new(Maps::reader_sharing(&maps_dir, slots)?);
    let status = metrics.http_status("metrics");
    // The lock only keeps two overlapping scrapes from walking the maps at
    // once; a scrape that panicked left nothing half-done in them.
    let routes =
        routes(move || metrics.render(&maps.lock().unwrap_or_else(PoisonError::into_inner)));
    Ok(Server::start(
        "metrics",
        addr,
        routes,
        Limits::METRICS,
        status,
    ))
}

fn routes(render: impl Fn() -> Result<String> + Send + Sync + 'static) -> Routes {
    let render = Arc::new(render);
    Routes::new().get("/metrics", move || {
        let render = render.clone();
        async move {
            // Walking the maps is a run of blocking syscalls.
            match tokio::task::spawn_blocking(move || render()).await {
                Ok(Ok(text)) => http::reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
                Ok(Err(e)) => http::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the maps: {e:#}\n"),
                ),
                Err(e) => http::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
    })
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use lb_common::{names, Reason};

    use crate::datapath::{MapFill, MapSample, ServiceCounters};

    pub fn sample() -> MapSample {
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

    /// Every sample line belongs to a family declared by a TYPE line, and
    /// parses as `name{labels} value`.
    pub fn check_exposition(text: &str) {
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
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{testing::sample, *};
    use crate::http::testing::exchange;

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_in_prometheus_text_format() {
        let metrics = Arc::new(Metrics::new());
        let status = metrics.http_status("metrics");
        let fails = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fail = fails.clone();
        let render = metrics.clone();
        let server = Server::start(
            "metrics",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            routes(move || {
                if fail.load(std::sync::atomic::Ordering::Relaxed) {
                    anyhow::bail!("map gone");
                }
                Ok(render.render_sample(sample()))
            }),
            Limits::METRICS,
            status.clone(),
        );
        let addr = server.local_addr().unwrap();
        status.accept_errors.inc();

        let reply = get(addr, "/metrics?x=1").await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("xdplb_packets_total{reason=\"xlate_new_flow\"} 7"));
        for line in [
            "xdplb_http_servers_binding{server=\"metrics\"} 0",
            "xdplb_http_accept_errors_total{server=\"metrics\"} 1",
            "xdplb_http_connections_over_cap_total{server=\"metrics\"} 0",
        ] {
            assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
        }

        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404 "));
        fails.store(true, std::sync::atomic::Ordering::Relaxed);
        let reply = get(addr, "/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
        assert!(reply.ends_with("map gone\n"), "{reply}");
    }
}
