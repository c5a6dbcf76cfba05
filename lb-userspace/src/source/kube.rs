//! The Kubernetes API as the object source: reflectors over Services,
//! EndpointSlices and this node's Node, selected the way kube-proxy selects
//! them, with the desired state always rebuilt from the stores.

use std::fmt::Debug;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::source::manifests::Objects;

/// kube-proxy's minSyncPeriod: the shortest time between two wakes of
/// [`KubeSource::changed`]. Long enough that a rollout's burst of
/// EndpointSlice updates costs a few syncs instead of one per update, short
/// enough not to matter next to endpoint readiness.
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Everything the agent asks of the API server cluster-wide, as
/// (apiGroup, resource, verbs): the ClusterRole in deploy/ must grant
/// exactly this. The reflectors only list and watch (they never GET a
/// single object); the one write is the LoadBalancer status writer's merge
/// patch of services/status (`crate::lb_status`).
pub const RBAC_RULES: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "services/status", &["patch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
];

/// What the agent asks in its own namespace (`--namespace`), as
/// [`RBAC_RULES`]: the Role in deploy/ must grant exactly this. Leases:
/// `crate::lease::LeaseLock` reads, creates and updates one (no delete: a
/// lease given up is released, not removed), and the node leases are
/// watched (`super::node_leases`).
pub const RBAC_NAMESPACED_RULES: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "list", "watch", "create", "update"],
)];

const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// Health of the three watches, for /healthz and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    pub services: WatchStatus,
    pub slices: WatchStatus,
    pub node: WatchStatus,
}

impl SourceStatus {
    /// Each watch with its resource name, for labelling metrics.
    pub fn watches(&self) -> [(&'static str, &WatchStatus); 3] {
        [
            ("services", &self.services),
            ("endpointslices", &self.slices),
            ("nodes", &self.node),
        ]
    }

    fn of(&mut self, watched: Watched) -> &mut WatchStatus {
        match watched {
            Watched::Services => &mut self.services,
            Watched::Slices => &mut self.slices,
            Watched::Node => &mut self.node,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// The last request to the API server succeeded and the stream has not
    /// failed since. Judged per request rather than per event because a
    /// quiet cluster sends no events to prove a re-established watch works.
    pub connected: bool,
    /// The initial list has completed; the store is complete from then on.
    pub listed: bool,
    /// When the store last changed: an object event or a completed (re)list.
    pub last_event: Option<SystemTime>,
    /// When the last (re)list completed.
    pub last_list: Option<SystemTime>,
    /// The most recent error, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    pub errors: u64,
}

#[derive(Clone, Copy, Debug)]
enum Watched {
    Services,
    Slices,
    Node,
}

impl Watched {
    fn resource(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::Slices => "endpointslices",
            Watched::Node => "nodes",
        }
    }
}

type SharedStatus = Arc<Mutex<SourceStatus>>;

/// A poisoned lock only means a panic elsewhere mid-update of plain fields;
/// the status is still worth reporting.
fn lock(status: &SharedStatus) -> MutexGuard<'_, SourceStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    /// Bumped by the reflector tasks after each change lands in a store.
    generation: watch::Receiver<u64>,
    /// The generation the last snapshot() saw; atomic so snapshot() can take
    /// `&self`.
    seen: AtomicU64,
    last_wake: Option<Instant>,
    status: SharedStatus,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// A client from `kubeconfig` when given, else from `KUBECONFIG`,
    /// `~/.kube/config` or the in-cluster service account. Does not contact
    /// the API server: an agent starting before it is reachable waits in
    /// [`KubeSource::ready`] instead of failing.
    pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer().await.context(
                "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster",
            )?,
        };
        kube::Client::try_from(config).context("building the Kubernetes client")
    }

    /// Starts the reflectors; must be called within a Tokio runtime. They
    /// stop when the source is dropped.
    pub fn start(
        client: kube::Client,
        node_name: &str,
        service_proxy_name: Option<String>,
    ) -> KubeSource {
        // kube-proxy puts one selector on both Services and EndpointSlices:
        // the EndpointSlice controller copies a Service's labels onto its
        // slices, so another proxy's slices carry its proxy-name label too.
        let proxy = match &service_proxy_name {
            Some(name) => format!("{LABEL_SERVICE_PROXY_NAME}={name}"),
            None => format!("!{LABEL_SERVICE_PROXY_NAME}"),
        };
        let labels = format!("{proxy},!{LABEL_HEADLESS}");
        let selected = watcher::Config::default().labels(&labels);
        let status = SharedStatus::default();
        let (tx, generation) = watch::channel(0);
        let (services, services_task) = spawn_reflector(
            &client,
            selected.clone(),
            Watched::Services,
            &status,
            tx.clone(),
        );
        let (slices, slices_task) =
            spawn_reflector(&client, selected, Watched::Slices, &status, tx.clone());
        let (nodes, nodes_task) = spawn_reflector(
            &client,
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            Watched::Node,
            &status,
            tx,
        );
        KubeSource {
            services,
            slices,
            nodes,
            generation,
            seen: AtomicU64::new(0),
            last_wake: None,
            status,
            tasks: vec![services_task, slices_task, nodes_task],
        }
    }

    /// Waits until every store has completed its initial list, however long
    /// the API server takes to answer.
    pub async fn ready(&mut self) {
        // The writers live as long as their tasks, which only end when this
        // source is dropped (impossible while borrowed) or on a panic.
        let failed = "a reflector task panicked";
        self.services.wait_until_ready().await.expect(failed);
        self.slices.wait_until_ready().await.expect(failed);
        self.nodes.wait_until_ready().await.expect(failed);
    }

    /// Resolves when a store changed since the last [`KubeSource::snapshot`]:
    /// at once if the previous wake was at least [`MIN_SYNC_INTERVAL`] ago,
    /// otherwise when it will have been, taking everything that arrived
    /// meanwhile along. Cancel-safe, so it can sit in a `select!`.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        let seen = self.seen.load(Ordering::Acquire);
        self.generation
            .wait_for(|generation| *generation != seen)
            .await
            .context("every reflector task has stopped")?;
        if let Some(last) = self.last_wake {
            tokio::time::sleep_until(last + MIN_SYNC_INTERVAL).await;
        }
        self.last_wake = Some(Instant::now());
        Ok(())
    }

    /// The objects in the stores, each list sorted by namespace and name so
    /// equal stores give equal snapshots.
    pub fn snapshot(&self) -> Objects {
        // Read before the stores: the tasks bump the generation after
        // writing, so a change racing with this read is seen here or wakes
        // the next changed(), never neither.
        let generation = *self.generation.borrow();
        self.seen.store(generation, Ordering::Release);
        Objects {
            services: sorted(&self.services),
            slices: sorted(&self.slices),
            nodes: sorted(&self.nodes),
        }
    }

    pub fn status(&self) -> SourceStatus {
        lock(&self.status).clone()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn sorted<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut objects: Vec<K> = store.state().iter().map(|o| K::clone(o)).collect();
    objects.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    objects
}

fn spawn_reflector<K>(
    client: &Client,
    config: watcher::Config,
    watched: Watched,
    status: &SharedStatus,
    generation: watch::Sender<u64>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let api = Api::<K>::all(recording_client(client, watched, status.clone()));
    let events = reflector::reflector(
        writer,
        relisting_watcher(api, config)
            // Half of a typical object, and never read.
            .modify(|object| object.managed_fields_mut().clear())
            .default_backoff(),
    );
    let status = status.clone();
    let task = tokio::spawn(async move {
        let mut events = pin!(events);
        while let Some(event) = events.next().await {
            let now = SystemTime::now();
            let mut status = lock(&status);
            let watch = status.of(watched);
            match event {
                // The store only changes at InitDone, when the relisted
                // objects replace the old ones in one swap.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(watcher::Event::InitDone) => {
                    watch.listed = true;
                    watch.last_list = Some(now);
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
                Err(err) => {
                    tracing::warn!(
                        resource = watched.resource(),
                        "watch failed, retrying with backoff; the last state stays programmed: {err}"
                    );
                    watch.connected = false;
                    watch.last_error = Some(err.to_string());
                    watch.errors += 1;
                    continue;
                }
            }
            watch.connected = true;
            watch.last_event = Some(now);
            drop(status);
            generation.send_modify(|g| *g = g.wrapping_add(1));
        }
    });
    (store, task)
}

/// A watcher that relists when the API server answers the watch request
/// itself with HTTP 410: kube's watcher would retry the same expired
/// resourceVersion forever (kube-rs#1042). API servers usually send 410 as
/// an event in a 200 stream, which the watcher handles, but proxies and
/// other implementations answer with the status code.
fn relisting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    type Events<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;
    stream::unfold(None::<Events<K>>, move |current| {
        let fresh = || watcher(api.clone(), config.clone()).boxed();
        let mut events = current.unwrap_or_else(fresh);
        async move {
            let event = events.next().await?;
            let expired = matches!(
                &event,
                Err(watcher::Error::WatchStartFailed(kube::Error::Api(status)))
                    if status.code == 410
            );
            // Returning the error first lets the backoff apply before the
            // new watcher's list.
            Some((event, (!expired).then_some(events)))
        }
    })
}

/// `client`, noting in `status` whether each request of one watch reached
/// the API server and got a success status.
fn recording_client(client: &Client, watched: Watched, status: SharedStatus) -> Client {
    let inner = client.clone();
    let service = tower::service_fn(move |request| {
        let inner = inner.clone();
        let status = status.clone();
        async move {
            let response = inner.send(request).await;
            let ok = matches!(&response, Ok(r) if r.status().is_success());
            let mut status = lock(&status);
            let watch = status.of(watched);
            if ok && !watch.connected && watch.errors > 0 {
                tracing::info!(resource = watched.resource(), "API server reachable again");
            }
            watch.connected = ok;
            response
        }
    });
    Client::new(service, client.default_namespace())
}
