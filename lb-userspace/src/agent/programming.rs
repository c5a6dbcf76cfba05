//! kube-proxy's network programming latency: from the change in the
//! cluster that an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`
//! names (the EndpointSlice controller sets it to when the Pod or Service
//! change that made it rewrite the slice happened) to the sync that put the
//! slice in the maps. Like kube-proxy's change tracker: each trigger time
//! counts once, when a sync after it succeeds; times from before the agent
//! started are left out (they would measure the agent's downtime); and the
//! API server's clock is trusted, so skew between it and the node's skews
//! the latency. Slices without the annotation (the manifests source) give
//! none.
use std::{collections::HashMap, time::Duration};

use k8s_openapi::api::discovery::v1::EndpointSlice;

const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

pub struct TriggerTimes {
    since: jiff::Timestamp,
    /// The trigger time each slice (namespace, name) last had.
    seen: HashMap<(String, String), jiff::Timestamp>,
    /// Trigger times seen but not yet applied by a successful sync.
    pending: Vec<jiff::Timestamp>,
}

impl TriggerTimes {
    pub fn new(since: jiff::Timestamp) -> Self {
        Self {
            since,
            seen: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Notes the trigger times of `slices`, the whole current set, that
    /// were not there at the last call.
    pub fn saw(&mut self, slices: &[EndpointSlice]) {
        let mut seen = HashMap::with_capacity(slices.len());
        for slice in slices {
            let meta = &slice.metadata;
            let Some(time) = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME))
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            else {
                continue;
            };
            let key = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            if time > self.since && self.seen.get(&key) != Some(&time) {
                self.pending.push(time);
            }
            seen.insert(key, time);
        }
        self.seen = seen;
    }

    /// A sync applied everything seen so far: the latency of each pending
    /// trigger time at `now`, a clock behind the API server's giving 0.
    pub fn applied(&mut self, now: jiff::Timestamp) -> Vec<Duration> {
        self.pending
            .drain(..)
            .map(|t| Duration::try_from(now.duration_since(t)).unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn slice(name: &str, trigger: Option<&str>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                annotations: trigger
                    .map(|t| BTreeMap::from([(TRIGGER_TIME.to_string(), t.to_string())])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        }
    }

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn each_new_trigger_time_after_the_start_counts_once_when_applied() {
        let mut times = TriggerTimes::new(at("2025-01-01T00:00:10Z"));
        times.saw(&[
            slice("before-start", Some("2025-01-01T00:00:05Z")),
            slice("web-1", Some("2025-01-01T00:00:20Z")),
            slice("no-annotation", None),
            slice("garbled", Some("yesterday")),
        ]);
        // The sync failed: seeing the same slices again adds nothing.
        times.saw(&[
            slice("before-start", Some("2025-01-01T00:00:05Z")),
            slice("web-1", Some("2025-01-01T00:00:20Z")),
        ]);
        assert_eq!(
            times.applied(at("2025-01-01T00:00:21.5Z")),
            [Duration::from_millis(1500)]
        );
        assert!(times.applied(at("2025-01-01T00:00:30Z")).is_empty());

        // web-1 rewritten, web-2 new, before-start rewritten after the start.
        times.saw(&[
            slice("before-start", Some("2025-01-01T00:00:31Z")),
            slice("web-1", Some("2025-01-01T00:00:32.250Z")),
            slice("web-2", Some("2025-01-01T00:00:33Z")),
        ]);
        let mut latencies = times.applied(at("2025-01-01T00:00:33.5Z"));
        latencies.sort();
        assert_eq!(
            latencies,
            [
                Duration::from_millis(500),
                Duration::from_millis(1250),
                Duration::from_millis(2500),
            ]
        );
        // A node clock behind the API server's.
        times.saw(&[slice("web-1", Some("2025-01-01T00:01:00Z"))]);
        assert_eq!(times.applied(at("2025-01-01T00:00:59Z")), [Duration::ZERO]);
    }
}
