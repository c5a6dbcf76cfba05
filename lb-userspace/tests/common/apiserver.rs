//! A Kubernetes API server double speaking the real protocol over HTTP/1.1
//! on 127.0.0.1, for Services, EndpointSlices, Nodes and Leases: lists
//! carrying a resourceVersion, watch streams of newline-delimited JSON
//! events that resume from a resourceVersion, bookmarks, label and field
//! selectors, and 410 Gone for a compacted resourceVersion; GET of one
//! object, create (POST), update (PUT, 409 Conflict unless the
//! resourceVersion sent is the stored one) and JSON merge patch of a
//! status subresource. Tests steer it into the failures a real cluster
//! has: streams closed mid-way, expired watches, held lists, and the whole
//! server down.
//!
//! Like etcd, one revision counter covers every object, and the event log
//! behind it is kept until compacted. Lists ignore `limit` (the tests'
//! lists are far below kube's 500-object pages) and return no `continue`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Lease,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Service, Kind::EndpointSlice, Kind::Node, Kind::Lease];

    pub fn group(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::Lease => "coordination.k8s.io",
        }
    }

    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Lease => "leases",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Lease => "Lease",
        }
    }

    fn root(self) -> String {
        match self.group() {
            "" => "/api/v1".to_owned(),
            group => format!("/apis/{group}/v1"),
        }
    }

    fn of(object: &Value) -> Kind {
        let api_version = object["apiVersion"].as_str();
        let kind = object["kind"].as_str();
        Kind::ALL
            .into_iter()
            .find(|k| api_version == Some(k.api_version()) && kind == Some(k.name()))
            .unwrap_or_else(|| panic!("not a Service, EndpointSlice, Node or Lease: {object}"))
    }
}

/// What a request's path names: a collection (of one namespace or all) or
/// an object, possibly a subresource of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    Kind::ALL.into_iter().find_map(|kind| {
        let rest = path.strip_prefix(&kind.root())?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, parts) = match parts.as_slice() {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
            _ => (None, parts.as_slice()),
        };
        let (resource, name, subresource) = match parts {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(name.to_string()), None),
            [resource, name, sub] => (*resource, Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        (resource == kind.resource()).then_some(Route {
            kind,
            namespace,
            name,
            subresource,
        })
    })
}

/// How a watch from a compacted resourceVersion is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// As kube-apiserver does: a 200 stream with one ERROR event (code 410).
    Event,
    /// An HTTP 410 answer, as some proxies and API server implementations do.
    Http,
}

/// One request as the server understood it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The RBAC verb: list, watch, get, create, update, patch, or the
    /// HTTP method in lower case.
    pub verb: String,
    pub kind: Option<Kind>,
    /// The subresource, as "status" of services/status.
    pub subresource: Option<String>,
    pub path: String,
    /// Percent-decoded query parameters.
    pub query: BTreeMap<String, String>,
}

impl Logged {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The RBAC resource: "services", "services/status", ...
    pub fn resource(&self) -> Option<String> {
        let resource = self.kind?.resource();
        Some(match &self.subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        })
    }
}

pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
    kubeconfig: PathBuf,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped to drop every open connection at once.
    kill: watch::Sender<u64>,
    /// Kinds whose list requests wait until released.
    held: watch::Sender<BTreeSet<Kind>>,
}

struct State {
    revision: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    log: Vec<Change>,
    /// Watches may start from this revision or later; older ones are gone.
    oldest: u64,
    watches: Vec<OpenWatch>,
    gone: Gone,
    requests: Vec<Logged>,
}

struct Change {
    revision: u64,
    kind: Kind,
    /// The object before a modification, to tell selector transitions.
    prev: Option<Value>,
    object: Value,
    deleted: bool,
}

struct OpenWatch {
    kind: Kind,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                revision: 1,
                objects: BTreeMap::new(),
                log: Vec::new(),
                oldest: 1,
                watches: Vec::new(),
                gone: Gone::Event,
                requests: Vec::new(),
            }),
            kill: watch::channel(0).0,
            held: watch::channel(BTreeSet::new()).0,
        });
        let kubeconfig = std::env::temp_dir().join(format!(
            "xdplb-apiserver-{}-{}.kubeconfig",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&kubeconfig, kubeconfig_text(addr)).expect("write kubeconfig");
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        ApiServer {
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
            kubeconfig,
        }
    }

    /// A kubeconfig file whose current context points at this server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("API server state")
    }

    /// Creates or replaces an object (namespace "default" when unset) and
    /// returns its new resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = Kind::of(&object);
        let meta = object["metadata"]
            .as_object_mut()
            .expect("object without metadata");
        let name = meta["name"]
            .as_str()
            .expect("object without a name")
            .to_owned();
        let namespace = match kind {
            Kind::Node => String::new(),
            _ => meta
                .entry("namespace")
                .or_insert_with(|| "default".into())
                .as_str()
                .expect("namespace")
                .to_owned(),
        };
        self.state().store((kind, namespace, name), object)
    }

    /// An object as stored, `None` when there is none.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind == Kind::Node { "" } else { namespace };
        self.state()
            .objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Deletes an object; the namespace is ignored for Nodes.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> u64 {
        let namespace = if kind == Kind::Node { "" } else { namespace };
        let mut state = self.state();
        let mut object = state
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to delete"));
        state.revision += 1;
        let revision = state.revision;
        object["metadata"]["resourceVersion"] = revision.to_string().into();
        state.record(Change {
            revision,
            kind,
            prev: None,
            object,
            deleted: true,
        });
        revision
    }

    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    pub fn set_gone(&self, gone: Gone) {
        self.state().gone = gone;
    }

    /// Forgets the event log: watches from any earlier resourceVersion than
    /// the current one are refused with 410 Gone from now on.
    pub fn compact(&self) {
        let mut state = self.state();
        state.oldest = state.revision;
        state.log.clear();
    }

    /// Ends every open watch stream cleanly, as a watch timeout or an idle
    /// load balancer does; clients resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.state().watches.clear();
    }

    /// Compacts, then sends every open watch an ERROR event with code 410
    /// and closes it: what kube-apiserver does to a watch that fell too far
    /// behind.
    pub fn expire_watches(&self) {
        self.compact();
        let mut state = self.state();
        let message = format!("too old resource version (oldest is {})", state.oldest);
        let line = event_line("ERROR", &status_json(410, "Expired", &message));
        for watch in state.watches.drain(..) {
            let _ = watch.tx.send(line.clone());
        }
    }

    /// Sends a BOOKMARK with the current revision to every watch that asked
    /// for bookmarks.
    pub fn bookmark(&self) {
        let mut state = self.state();
        let revision = state.revision.to_string();
        state.watches.retain(|watch| {
            if !watch.bookmarks {
                return true;
            }
            let object = json!({
                "kind": watch.kind.name(),
                "apiVersion": watch.kind.api_version(),
                "metadata": {"resourceVersion": revision},
            });
            watch.tx.send(event_line("BOOKMARK", &object)).is_ok()
        });
    }

    /// Stops listening (new connections are refused) and drops every open
    /// connection mid-way, as a crashed or restarting API server does.
    pub fn down(&self) {
        if let Some(accept) = self.accept.lock().expect("accept task").take() {
            accept.abort();
        }
        self.shared.kill.send_modify(|epoch| *epoch += 1);
        self.close_watches();
    }

    /// Listens again on the same address.
    pub async fn up(&self) {
        // The aborted accept task may not have dropped its listener yet.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(err) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {}: {err}", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("rebinding {}: {err}", self.addr),
            }
        };
        let accept = tokio::spawn(accept_loop(listener, self.shared.clone()));
        *self.accept.lock().expect("accept task") = Some(accept);
    }

    /// Makes list requests for `kind` wait until [`ApiServer::release_lists`].
    pub fn hold_lists(&self, kind: Kind) {
        self.shared.held.send_modify(|held| {
            held.insert(kind);
        });
    }

    pub fn release_lists(&self, kind: Kind) {
        self.shared.held.send_modify(|held| {
            held.remove(&kind);
        });
    }

    /// Watch streams of `kind` open right now.
    pub fn open_watches(&self, kind: Kind) -> usize {
        let mut state = self.state();
        state.watches.retain(|watch| !watch.tx.is_closed());
        state.watches.iter().filter(|w| w.kind == kind).count()
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state().requests.clone()
    }

    /// How many requests of any verb on `kind` have arrived.
    pub fn count_all(&self, kind: Kind) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.kind == Some(kind))
            .count()
    }

    /// How many requests of `verb` on `kind` have arrived.
    pub fn count(&self, kind: Kind, verb: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.kind == Some(kind) && r.verb == verb)
            .count()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

impl State {
    /// Creates or replaces the object at `key` with a new resourceVersion
    /// (keeping its uid), and returns that version.
    fn store(&mut self, key: (Kind, String, String), mut object: Value) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let uid = match self.objects.get(&key) {
            Some(prev) => prev["metadata"]["uid"].clone(),
            None => format!("uid-{revision}").into(),
        };
        let meta = object["metadata"]
            .as_object_mut()
            .expect("object without metadata");
        meta.insert("resourceVersion".into(), revision.to_string().into());
        meta.insert("uid".into(), uid);
        let kind = key.0;
        let prev = self.objects.insert(key, object.clone());
        self.record(Change {
            revision,
            kind,
            prev,
            object,
            deleted: false,
        });
        revision
    }

    /// Logs a change and pushes it to every open watch it concerns.
    fn record(&mut self, change: Change) {
        self.watches.retain(|watch| {
            if watch.kind != change.kind {
                return true;
            }
            match watch.selector.event(&change) {
                Some((kind, object)) => watch.tx.send(event_line(kind, &object)).is_ok(),
                None => !watch.tx.is_closed(),
            }
        });
        self.log.push(change);
    }
}

fn kubeconfig_text(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: double
    cluster:
      server: http://{addr}
contexts:
  - name: double
    context:
      cluster: double
      user: double
current-context: double
users:
  - name: double
    user: {{}}
"
    )
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let mut kill = shared.kill.subscribe();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Dropping the connection closes the socket under the client,
            // whatever it was in the middle of.
            tokio::select! {
                _ = connection => {}
                _ = kill.changed() => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or(""));
    let route = route(&path);
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let item = route.as_ref().is_some_and(|r| r.name.is_some());
    let verb = match (request.method(), item) {
        (&Method::GET, false) if watch => "watch".to_owned(),
        (&Method::GET, false) => "list".to_owned(),
        (&Method::GET, true) => "get".to_owned(),
        (&Method::POST, false) => "create".to_owned(),
        (&Method::PUT, true) => "update".to_owned(),
        (&Method::PATCH, true) => "patch".to_owned(),
        (method, _) => method.as_str().to_lowercase(),
    };
    let logged = Logged {
        verb,
        kind: route.as_ref().map(|r| r.kind),
        subresource: route.as_ref().and_then(|r| r.subresource.clone()),
        path,
        query,
    };
    shared
        .state
        .lock()
        .expect("API server state")
        .requests
        .push(logged.clone());
    let Some(route) = route else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "not served by the double",
        );
    };
    if request.method() != Method::GET || item {
        let method = request.method().clone();
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string())
            }
        };
        let body: Value = match body.is_empty() {
            true => Value::Null,
            false => match serde_json::from_slice(&body) {
                Ok(body) => body,
                Err(e) => {
                    return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string())
                }
            },
        };
        let mut state = shared.state.lock().expect("API server state");
        return write(&mut state, &method, &route, body);
    }
    let kind = route.kind;
    let mut fields = logged.param("fieldSelector").unwrap_or("").to_owned();
    if let Some(namespace) = &route.namespace {
        fields = format!("{fields},metadata.namespace={namespace}");
    }
    let selector = match Selector::parse(logged.param("labelSelector").unwrap_or(""), &fields) {
        Ok(selector) => selector,
        Err(message) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if watch {
        let bookmarks = logged.param("allowWatchBookmarks") == Some("true");
        start_watch(
            shared,
            kind,
            selector,
            bookmarks,
            logged.param("resourceVersion"),
        )
    } else {
        // Closed when the server goes away, which drops this handler first.
        let _ = shared
            .held
            .subscribe()
            .wait_for(|held| !held.contains(&kind))
            .await;
        list(shared, kind, &selector)
    }
}

/// GET of one object, create, update and the merge patch of a status.
fn write(state: &mut State, method: &Method, route: &Route, body: Value) -> Response<Body> {
    let namespace = route.namespace.clone().unwrap_or_default();
    let name = route.name.clone();
    let body_name = body["metadata"]["name"].as_str().map(str::to_owned);
    let Some(name) = name.or(body_name) else {
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "no name");
    };
    let key = (route.kind, namespace.clone(), name.clone());
    let stored = state.objects.get(&key).cloned();
    let not_found = || {
        let message = format!("{} {namespace}/{name} not found", route.kind.resource());
        status_response(StatusCode::NOT_FOUND, "NotFound", &message)
    };
    let with_kind = |mut object: Value| {
        object["kind"] = route.kind.name().into();
        object["apiVersion"] = route.kind.api_version().into();
        if !namespace.is_empty() {
            object["metadata"]["namespace"] = namespace.clone().into();
        }
        object
    };
    let stored_as = |state: &State| json_response(StatusCode::OK, &state.objects[&key]);
    match (method, route.name.is_some(), route.subresource.as_deref()) {
        (&Method::GET, true, None) => match stored {
            Some(object) => json_response(StatusCode::OK, &object),
            None => not_found(),
        },
        (&Method::POST, false, None) => {
            if stored.is_some() {
                let message = format!(
                    "{} {namespace}/{name} already exists",
                    route.kind.resource()
                );
                return status_response(StatusCode::CONFLICT, "AlreadyExists", &message);
            }
            state.store(key.clone(), with_kind(body));
            json_response(StatusCode::CREATED, &state.objects[&key])
        }
        (&Method::PUT, true, None) => {
            let Some(stored) = stored else {
                return not_found();
            };
            if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                let message = format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                    route.kind.resource()
                );
                return status_response(StatusCode::CONFLICT, "Conflict", &message);
            }
            state.store(key.clone(), with_kind(body));
            stored_as(state)
        }
        (&Method::PATCH, true, Some("status")) => {
            let Some(mut object) = stored else {
                return not_found();
            };
            merge_patch(&mut object["status"], &body["status"]);
            state.store(key.clone(), object);
            stored_as(state)
        }
        _ => status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not served by the double",
        ),
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, null removes a
/// key, anything else (lists included) replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn list(shared: &Shared, kind: Kind, selector: &Selector) -> Response<Body> {
    let state = shared.state.lock().expect("API server state");
    // List items carry no kind or apiVersion, as the real server's do.
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((k, _, _), object)| *k == kind && selector.matches(object))
        .map(|(_, object)| {
            let mut item = object.clone();
            let fields = item.as_object_mut().expect("object");
            fields.remove("kind");
            fields.remove("apiVersion");
            item
        })
        .collect();
    let body = json!({
        "kind": format!("{}List", kind.name()),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": state.revision.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

fn start_watch(
    shared: &Shared,
    kind: Kind,
    selector: Selector,
    bookmarks: bool,
    resource_version: Option<&str>,
) -> Response<Body> {
    let from = match resource_version {
        None | Some("" | "0") => None,
        Some(version) => match version.parse::<u64>() {
            Ok(version) => Some(version),
            Err(_) => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resourceVersion {version:?}"),
                )
            }
        },
    };
    let mut state = shared.state.lock().expect("API server state");
    let (tx, rx) = mpsc::unbounded_channel();
    match from {
        Some(version) if version < state.oldest => {
            let message = format!("too old resource version: {version} ({})", state.oldest);
            match state.gone {
                Gone::Http => {
                    return status_response(StatusCode::GONE, "Expired", &message);
                }
                Gone::Event => {
                    let _ = tx.send(event_line("ERROR", &status_json(410, "Expired", &message)));
                    // Dropping tx ends the stream after the one event.
                    return stream_response(rx);
                }
            }
        }
        // Without a version a watch starts with the current objects.
        None => {
            for ((k, _, _), object) in &state.objects {
                if *k == kind && selector.matches(object) {
                    let _ = tx.send(event_line("ADDED", object));
                }
            }
        }
        Some(version) => {
            for change in &state.log {
                if change.kind == kind && change.revision > version {
                    if let Some((event, object)) = selector.event(change) {
                        let _ = tx.send(event_line(event, &object));
                    }
                }
            }
        }
    }
    state.watches.push(OpenWatch {
        kind,
        selector,
        bookmarks,
        tx,
    });
    stream_response(rx)
}

/// A watch body: one chunk per event, ending when the sender is dropped.
struct EventStream(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(EventStream(rx).boxed())
        .expect("response")
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(status, &status_json(status.as_u16(), reason, message))
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The label and field selectors kube-proxy-like clients send.
struct Selector {
    labels: Vec<Requirement>,
    /// (field path, value) pairs that must all be equal.
    fields: Vec<(String, String)>,
}

enum Requirement {
    Exists(String),
    Absent(String),
    Equals(String, String),
    /// Also matches objects without the label, as in Kubernetes.
    NotEquals(String, String),
}

impl Selector {
    fn parse(labels: &str, fields: &str) -> Result<Selector, String> {
        let terms = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let labels = terms(labels)
            .into_iter()
            .map(|term| {
                if let Some(key) = term.strip_prefix('!') {
                    Requirement::Absent(key.to_owned())
                } else if let Some((key, value)) = term.split_once("!=") {
                    Requirement::NotEquals(key.to_owned(), value.to_owned())
                } else if let Some((key, value)) =
                    term.split_once("==").or_else(|| term.split_once('='))
                {
                    Requirement::Equals(key.to_owned(), value.to_owned())
                } else {
                    Requirement::Exists(term)
                }
            })
            .collect();
        let fields = terms(fields)
            .into_iter()
            .map(|term| match term.split_once('=') {
                Some((path @ ("metadata.name" | "metadata.namespace"), value)) => {
                    Ok((path.to_owned(), value.to_owned()))
                }
                _ => Err(format!("field selector {term:?} is not supported")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Selector { labels, fields })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let label = |key: &str| meta["labels"][key].as_str();
        let labels_ok = self.labels.iter().all(|req| match req {
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::Absent(key) => label(key).is_none(),
            Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
        });
        let fields_ok = self.fields.iter().all(|(path, value)| {
            let field = path.strip_prefix("metadata.").expect("checked in parse");
            meta[field].as_str().unwrap_or("") == value
        });
        labels_ok && fields_ok
    }

    /// The event a watcher with this selector gets for `change`, if any: a
    /// modification that moves an object into or out of the selection is
    /// an ADDED or a DELETED, as the real watch cache reports it.
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        if change.deleted {
            return self
                .matches(&change.object)
                .then(|| ("DELETED", change.object.clone()));
        }
        let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
        match (before, self.matches(&change.object)) {
            (false, true) => Some(("ADDED", change.object.clone())),
            (true, true) => Some(("MODIFIED", change.object.clone())),
            (true, false) => {
                let mut gone = change.prev.clone().expect("matched before");
                gone["metadata"]["resourceVersion"] = change.revision.to_string().into();
                Some(("DELETED", gone))
            }
            (false, false) => None,
        }
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
