//! What the LoadBalancer pools ask of the Kubernetes API: this node's
//! liveness lease, the other nodes' leases (which nodes may announce), and
//! the status writer. None of it exists with `--manifests`, where the
//! Nodes' Ready condition says which nodes announce and no status is
//! written.
use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;

use crate::{
    lb_status::{Change, StatusWriter},
    metrics::Metrics,
    source::node_leases::{self, NodeLease, NodeLeases},
};

pub struct LbApi {
    leases: NodeLeases,
    own: NodeLease,
    status: StatusWriter,
}

impl LbApi {
    /// Returns once the node leases are listed.
    pub async fn start(
        client: &kube::Client,
        namespace: &str,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        tracing::info!(namespace, "LoadBalancer leases and status writer");
        let leases = NodeLeases::start(client.clone(), namespace);
        leases.ready().await;
        Self {
            leases,
            own: NodeLease::start(client.clone(), namespace, node),
            status: StatusWriter::start(client.clone(), namespace, node, metrics),
        }
    }

    /// The nodes whose agent holds its lease now, or `last` while this
    /// agent cannot reach the API server (`node_leases::candidates`).
    pub fn candidates(&self, last: &BTreeSet<String>) -> BTreeSet<String> {
        let now = Timestamp::now();
        node_leases::candidates(self.leases.live(now), now, self.own.contact(), last)
    }

    /// What the last sync saw: whether this node is Ready, and the
    /// statuses to write.
    pub fn saw(&self, node_ready: bool, changes: Vec<Change>) {
        self.own.set_ready(node_ready);
        self.status.want(changes);
    }

    /// Releases both leases, so the other agents take over at once.
    pub async fn stop(self) {
        tokio::join!(self.own.stop(), self.status.stop());
    }
}
