//! Which agents are alive to announce LoadBalancer addresses, with the
//! Kubernetes API: each agent holds a Lease named after its node in its
//! own namespace ([`NodeLease`]), renewed while its Node is Ready and
//! released when it stops, and every agent watches them all
//! ([`NodeLeases`]). A node whose agent died, hung or lost the API stops
//! announcing within the lease's duration, and one that shuts down hands
//! its addresses over as soon as the others see the release, where the
//! Node's Ready condition would take the node controller's 40 s grace.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::{self, LeaseLock};

/// The label on node leases, whose value is the node's name: the watch
/// selects on it, so the namespace's other leases wake nobody.
pub const LABEL: &str = "xdplb.io/node";

pub fn lease_name(node: &str) -> String {
    format!("xdplb-node-{node}")
}

/// The nodes whose lease is held at `now`: a node's lease held by its own
/// name, not expired and not released.
pub fn live_nodes<'a>(
    leases: impl IntoIterator<Item = &'a Lease>,
    now: Timestamp,
) -> BTreeSet<String> {
    leases
        .into_iter()
        .filter_map(|l| {
            let node = l.metadata.labels.as_ref()?.get(LABEL)?;
            let holder = lease::holder(l.spec.as_ref()?, now)?;
            (holder == node).then(|| node.clone())
        })
        .collect()
}

/// The nodes that may announce at `now`: the live ones, unless this agent
/// has not reached the API server for a lease's duration (since
/// `contact`). Then every lease lapses in its view, its own included,
/// because it cannot see the renewals, not because the agents died: it
/// keeps `last`, as the data plane keeps serving through an API outage,
/// rather than have every node stop answering ARP at once.
pub fn candidates(
    live: BTreeSet<String>,
    now: Timestamp,
    contact: Timestamp,
    last: &BTreeSet<String>,
) -> BTreeSet<String> {
    let lost = contact
        .checked_add(lease::DURATION)
        .is_ok_and(|until| now >= until);
    if lost {
        last.clone()
    } else {
        live
    }
}

/// The node leases of one namespace, as a reflector keeps them.
pub struct NodeLeases {
    store: Store<Lease>,
    task: JoinHandle<()>,
}

impl NodeLeases {
    /// Starts the reflector; must be called within a Tokio runtime.
    pub fn start(client: kube::Client, namespace: &str) -> Self {
        let (store, writer) = reflector::store();
        let api = Api::<Lease>::namespaced(client, namespace);
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(LABEL)).default_backoff(),
        );
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                if let Err(e) = event {
                    tracing::warn!("node lease watch failed, retrying with backoff: {e}");
                }
            }
        });
        Self { store, task }
    }

    /// Waits for the first list, so a (re)starting agent does not take
    /// every node for dead.
    pub async fn ready(&self) {
        // The writer lives as long as the task, which ends only on drop.
        let _ = self.store.wait_until_ready().await;
    }

    /// The nodes alive at `now`.
    pub fn live(&self, now: Timestamp) -> BTreeSet<String> {
        live_nodes(self.store.state().iter().map(|l| &**l), now)
    }
}

impl Drop for NodeLeases {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A poisoned lock only means a panic elsewhere mid-assignment of a
/// timestamp, which is still worth reading.
fn lock_contact(contact: &Mutex<Timestamp>) -> MutexGuard<'_, Timestamp> {
    contact.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This node's lease, renewed every [`lease::RENEW_EVERY`] while the node
/// is Ready.
pub struct NodeLease {
    ready: watch::Sender<bool>,
    lock: LeaseLock,
    task: JoinHandle<()>,
    /// When a renewal or release last got through.
    contact: Arc<Mutex<Timestamp>>,
}

impl NodeLease {
    pub fn start(client: kube::Client, namespace: &str, node: &str) -> Self {
        let labels = BTreeMap::from([(LABEL.to_string(), node.to_string())]);
        let lock = LeaseLock::new(client, namespace, &lease_name(node), node, Some(labels));
        let (ready, mut ready_rx) = watch::channel(false);
        // Started once the leases are listed: in touch until told otherwise.
        let contact = Arc::new(Mutex::new(Timestamp::now()));
        let task = tokio::spawn({
            let lock = lock.clone();
            let contact = contact.clone();
            async move {
                let first = tokio::time::Instant::now() + lease::RENEW_EVERY;
                let mut ticks = tokio::time::interval_at(first, lease::RENEW_EVERY);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // A node the node controller calls NotReady answers no
                    // ARP: its agent may well run, its pods may not.
                    let result = if *ready_rx.borrow_and_update() {
                        lock.try_hold(Timestamp::now()).await.map(drop)
                    } else {
                        lock.release().await
                    };
                    match result {
                        Ok(()) => *lock_contact(&contact) = Timestamp::now(),
                        Err(e) => tracing::warn!("cannot renew this node's lease: {e}"),
                    }
                    tokio::select! {
                        _ = ticks.tick() => {}
                        changed = ready_rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        });
        Self {
            ready,
            lock,
            task,
            contact,
        }
    }

    /// When a renewal or release last got through to the API server.
    pub fn contact(&self) -> Timestamp {
        *lock_contact(&self.contact)
    }

    /// Whether this node's Node is Ready, as the agent last saw it.
    pub fn set_ready(&self, ready: bool) {
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// Stops renewing and releases the lease.
    pub async fn stop(self) {
        self.task.abort();
        self.lock.release_on_exit().await;
    }
}

/// Dropped without [`NodeLease::stop`], as a killed agent: the lease lapses.
impl Drop for NodeLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{next_spec, released, Step};

    fn lease(label: &str, holder: &str, renewed: i64) -> Lease {
        let at = Timestamp::from_second(1_800_000_000 + renewed).unwrap();
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(lease_name(label)),
                labels: Some(BTreeMap::from([(LABEL.to_string(), label.to_string())])),
                ..Default::default()
            },
            spec: next_spec(None, &Step::Create, holder, at),
        }
    }

    #[test]
    fn an_agent_cut_off_from_the_api_keeps_its_last_candidates() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let last = BTreeSet::from(["node1".to_string(), "node2".to_string()]);
        let live = BTreeSet::from(["node1".to_string()]);
        assert_eq!(candidates(live.clone(), at(20), at(10), &last), live);
        assert_eq!(candidates(BTreeSet::new(), at(25), at(10), &last), last);
    }

    #[test]
    fn live_nodes_hold_a_fresh_lease_of_their_own() {
        let now = Timestamp::from_second(1_800_000_020).unwrap();
        let mut gone = lease("node4", "node4", 15);
        gone.spec = gone.spec.as_ref().map(released);
        let leases = [
            lease("node1", "node1", 10),
            lease("node2", "node2", 5),
            lease("node3", "node1", 15),
            gone,
        ];
        assert_eq!(
            live_nodes(&leases, now),
            BTreeSet::from(["node1".to_string()]),
            "node2's is stale, node3's held by another, node4's released"
        );
    }
}
