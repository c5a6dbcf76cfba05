//! Writing LoadBalancer Services' `status.loadBalancer.ingress`: one agent
//! of the cluster, the holder of the Lease [`LEASE`] in the agents'
//! namespace, patches the Services whose status differs from their
//! allocation (`model::lb_addrs::status_changes`). Every agent computes
//! the same changes; only the holder sends them.
//!
//! The patch is a JSON merge patch of the whole ingress list: merge patch
//! replaces a list whole, which is what a recomputed list wants, and it
//! needs no field manager. Server-side apply would make this agent the
//! owner of a list that other controllers write (ingress is an atomic
//! list), forcing conflicts with `force` and gaining nothing.
use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::{self, LeaseLock};
use crate::metrics::Metrics;
use crate::model::lb_addrs::ServiceKey;

/// The Lease whose holder writes the statuses.
pub const LEASE: &str = "xdplb-lb-status";

/// A Service's status ingress as it should be.
pub type Change = (ServiceKey, Vec<LoadBalancerIngress>);

/// Of `pending`, the changes not yet sent, given `sent` (what the last
/// patches of each Service sent). Until the agent's watch shows a patch,
/// its change stays pending at every sync; it goes out once. A Service no
/// longer pending is forgotten, so a later difference (someone rewrote the
/// status) is sent again.
pub fn unsent(
    pending: &[Change],
    sent: &mut BTreeMap<ServiceKey, Vec<LoadBalancerIngress>>,
) -> Vec<Change> {
    sent.retain(|key, _| pending.iter().any(|(k, _)| k == key));
    pending
        .iter()
        .filter(|(key, ingress)| sent.get(key) != Some(ingress))
        .cloned()
        .collect()
}

/// The merge patch that sets a Service's ingress list; an empty one
/// removes the field.
pub fn patch_body(ingress: &[LoadBalancerIngress]) -> serde_json::Value {
    let ingress = match ingress {
        [] => serde_json::Value::Null,
        list => serde_json::to_value(list).expect("ingress serialises"),
    };
    serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

/// The status writer: contends for [`LEASE`] and, while holding it,
/// patches what [`StatusWriter::want`] last said.
pub struct StatusWriter {
    want: watch::Sender<Vec<Change>>,
    lock: LeaseLock,
    task: JoinHandle<()>,
}

impl StatusWriter {
    /// Starts contending as `identity` (the node's name: an agent
    /// restarted on its node renews the lease it held); must be called
    /// within a Tokio runtime.
    pub fn start(
        client: kube::Client,
        namespace: &str,
        identity: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lock = LeaseLock::new(client.clone(), namespace, LEASE, identity, None);
        let (want, rx) = watch::channel(Vec::new());
        let task = tokio::spawn(run(lock.clone(), client, rx, metrics));
        Self { want, lock, task }
    }

    /// The changes the last sync found; they replace any earlier ones.
    pub fn want(&self, changes: Vec<Change>) {
        self.want.send_if_modified(|w| {
            let modified = *w != changes;
            *w = changes;
            modified
        });
    }

    /// Stops writing and releases the lease.
    pub async fn stop(self) {
        self.task.abort();
        self.lock.release_on_exit().await;
    }
}

/// Dropped without [`StatusWriter::stop`], as a killed agent: the lease lapses.
impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    lock: LeaseLock,
    client: kube::Client,
    mut want: watch::Receiver<Vec<Change>>,
    metrics: Arc<Metrics>,
) {
    let mut ticks = tokio::time::interval(lease::RENEW_EVERY);
    // After a slow attempt, the next waits its full period rather than
    // following at once.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut holding = false;
    let mut sent = BTreeMap::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let held = lock.try_hold(Timestamp::now()).await.unwrap_or_else(|e| {
                    tracing::warn!("cannot renew the status lease: {e}");
                    false
                });
                if held != holding {
                    tracing::info!(held, "LoadBalancer status writer lease");
                    // A new term starts from what the watch shows.
                    sent.clear();
                }
                holding = held;
                metrics.record_status_lease(held);
            }
            changed = want.changed() => if changed.is_err() { return },
        }
        if !holding {
            continue;
        }
        let pending = want.borrow_and_update().clone();
        for ((ns, name), ingress) in unsent(&pending, &mut sent) {
            let api = Api::<Service>::namespaced(client.clone(), &ns);
            let patch = Patch::Merge(patch_body(&ingress));
            match api
                .patch_status(&name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    tracing::info!(service = %format!("{ns}/{name}"), ?ingress, "wrote LoadBalancer status");
                    metrics.record_status_write(true);
                    sent.insert((ns, name), ingress);
                }
                // Retried at the next renewal.
                Err(e) => {
                    tracing::warn!(service = %format!("{ns}/{name}"), "cannot write LoadBalancer status: {e}");
                    metrics.record_status_write(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(ip: &str) -> Vec<LoadBalancerIngress> {
        vec![LoadBalancerIngress {
            ip: Some(ip.into()),
            ip_mode: Some("VIP".into()),
            ..Default::default()
        }]
    }

    fn key(name: &str) -> ServiceKey {
        ("default".into(), name.into())
    }

    #[test]
    fn a_change_goes_out_once_until_the_status_shows_it() {
        let mut sent = BTreeMap::new();
        let pending = vec![(key("a"), ingress("192.168.50.200"))];
        assert_eq!(unsent(&pending, &mut sent), pending);
        sent.insert(key("a"), ingress("192.168.50.200"));
        assert!(unsent(&pending, &mut sent).is_empty(), "not seen yet");
        let moved = vec![(key("a"), ingress("192.168.50.201"))];
        assert_eq!(unsent(&moved, &mut sent), moved, "a different status");
        assert!(unsent(&[], &mut sent).is_empty());
        assert!(sent.is_empty(), "seen: forgotten");
        assert_eq!(unsent(&pending, &mut sent), pending, "rewritten by someone");
    }

    #[test]
    fn the_patch_replaces_the_list_or_removes_it() {
        assert_eq!(
            patch_body(&ingress("192.168.50.200")),
            serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.168.50.200", "ipMode": "VIP"}]}}})
        );
        assert_eq!(
            patch_body(&[]),
            serde_json::json!({"status": {"loadBalancer": {"ingress": null}}})
        );
    }
}
