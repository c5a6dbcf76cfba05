//! A folder of Kubernetes manifests as the object source, for running
//! without an API server (tests, demos, a ConfigMap mounted as a volume).

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;
use tokio::sync::watch;

use crate::model::Problem;

/// Short enough that an edit shows up well within a second.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Every file is read again on every change: a bigger one is refused unread.
/// 10,000 Services with their EndpointSlices in one file take about 10 MiB.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Checked before parsing, because libyaml takes time quadratic in the
/// depth of flow collections (a 200 KB line of `[` took 20 s a sync) and
/// only reports its own limit after. No Kubernetes object nests near this.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Files and documents that did not load; everything else did.
    pub problems: Vec<Problem>,
    /// Well-formed objects of kinds the model does not use.
    pub ignored: usize,
}

/// Loads every manifest file directly in `dir`, in name order. Fails only
/// when the folder itself cannot be listed.
pub fn load_dir(dir: &Path) -> anyhow::Result<(Objects, LoadReport)> {
    let files = manifest_files(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut objects = Objects::default();
    let mut report = LoadReport::default();
    for path in files {
        let source = path.display().to_string();
        match read(&path) {
            Ok(text) => parse_str(&source, &text, is_json(&path), &mut objects, &mut report),
            Err(message) => report.problems.push(Problem {
                object: source,
                message,
            }),
        }
    }
    Ok((objects, report))
}

/// The folder as last seen, file by file, so a file that stops parsing
/// keeps contributing what it held before instead of taking its Services
/// off the data plane while someone is halfway through an edit.
#[derive(Default)]
pub struct Folder {
    last_good: std::collections::BTreeMap<PathBuf, Objects>,
}

impl Folder {
    /// Reloads `dir`; files that do not parse at all fall back to their last
    /// good contents (reported all the same), removed files are dropped.
    pub fn reload(&mut self, dir: &Path) -> anyhow::Result<(Objects, LoadReport)> {
        let files = manifest_files(dir).with_context(|| format!("listing {}", dir.display()))?;
        let mut report = LoadReport::default();
        let mut now = std::collections::BTreeMap::new();
        for path in files {
            let source = path.display().to_string();
            let mut objects = Objects::default();
            let mut file_report = LoadReport::default();
            let broken = match read(&path) {
                Ok(text) => {
                    parse_str(
                        &source,
                        &text,
                        is_json(&path),
                        &mut objects,
                        &mut file_report,
                    );
                    file_report.problems.iter().any(|p| {
                        ["invalid YAML", "invalid JSON", "refused"]
                            .iter()
                            .any(|prefix| p.message.starts_with(prefix))
                    })
                }
                Err(message) => {
                    file_report.problems.push(Problem {
                        object: source,
                        message,
                    });
                    true
                }
            };
            report.problems.append(&mut file_report.problems);
            report.ignored += file_report.ignored;
            let kept = match (broken, self.last_good.remove(&path)) {
                (true, Some(previous)) => previous,
                _ => objects,
            };
            now.insert(path, kept);
        }
        self.last_good = now;
        let mut merged = Objects::default();
        for objects in self.last_good.values() {
            merged.services.extend(objects.services.iter().cloned());
            merged.slices.extend(objects.slices.iter().cloned());
            merged.nodes.extend(objects.nodes.iter().cloned());
        }
        Ok((merged, report))
    }
}

/// Bumps the counter in `tx` whenever a manifest file in `dir` appears,
/// changes or disappears, until every receiver is gone. The first scan
/// always bumps it, so a change between the caller's initial `load_dir`
/// and this task's first look cannot be lost.
pub async fn watch_dir(dir: PathBuf, tx: watch::Sender<u64>) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    while !tx.is_closed() {
        ticker.tick().await;
        // A few stat calls; cheaper than handing them to a blocking thread.
        let now = Some(fingerprint(&dir));
        if now != last {
            tx.send_modify(|generation| *generation = generation.wrapping_add(1));
            last = now;
        }
    }
}

/// What a change to a manifest file changes: the inode catches an editor's
/// rename-over and a ConfigMap volume's symlink swap even when size and
/// (coarse) mtime stay equal. `None` while the folder cannot be listed.
type Fingerprint = Option<Vec<(OsString, u64, Option<SystemTime>, u64)>>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let files = manifest_files(dir).ok()?;
    Some(
        files
            .into_iter()
            .filter_map(|path| {
                // Gone between listing and stat: the next poll sees it gone.
                let meta = fs::metadata(&path).ok()?;
                Some((
                    path.file_name()?.to_owned(),
                    meta.ino(),
                    meta.modified().ok(),
                    meta.len(),
                ))
            })
            .collect(),
    )
}

/// Regular files (or symlinks to them, as in a ConfigMap volume) with a
/// manifest extension, sorted by name. Dot files are skipped: they are
/// editor scratch files or a ConfigMap volume's `..data` internals.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if wanted && !name.starts_with('.') && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The file's text, or why it is not read.
fn read(path: &Path) -> Result<String, String> {
    let too_big = || {
        format!(
            "refused: larger than the limit of {} MiB",
            MAX_FILE_BYTES >> 20
        )
    };
    let file = fs::File::open(path).map_err(|err| format!("cannot read: {err}"))?;
    if file.metadata().is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
        return Err(too_big());
    }
    // Bounded as well: the file may grow after the check.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read: {err}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|err| format!("cannot read: {err}"))
}

/// Whether `text` nests collections deeper than `MAX_DEPTH`, from a
/// streaming parse that stops there. A file this parser cannot read is left
/// to serde_yaml, which reports it (and loads the documents before the
/// error) as before.
fn too_deep_yaml(text: &str) -> bool {
    use serde_saphyr::budget::BudgetBreach;
    use serde_saphyr::budget::{check_yaml_budget, Budget, EnforcingPolicy};
    use serde_saphyr::granit_parser::ErrorKind;
    // Depth is the one limit: a cluster's worth of Services in one file
    // (20,000 documents, millions of events) is no attack, and any other
    // budget would stop the scan before it saw the depth.
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_events = usize::MAX;
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    match check_yaml_budget(text, budget, EnforcingPolicy::AllContent) {
        Ok(report) => matches!(report.breached, Some(BudgetBreach::Depth { .. })),
        Err(err) => matches!(err.kind(), ErrorKind::RecursionLimitExceeded),
    }
}

/// JSON has no syntax but strings to hide a bracket in.
fn too_deep_json(text: &str) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "json")
}

/// Parses one file's text; `source` names it in problems.
pub(crate) fn parse_str(
    source: &str,
    text: &str,
    json: bool,
    objects: &mut Objects,
    report: &mut LoadReport,
) {
    let too_deep = if json { too_deep_json } else { too_deep_yaml };
    if too_deep(text) {
        report.problems.push(Problem {
            object: source.to_string(),
            message: format!("refused: collections nest deeper than the limit of {MAX_DEPTH}"),
        });
        return;
    }
    if json {
        // YAML parsers choke on some valid JSON (tabs), so JSON gets its own.
        match serde_json::from_str::<Value>(text) {
            Ok(value) => take(&format!("{source}#1"), value, objects, report),
            Err(err) => report.problems.push(Problem {
                object: source.to_string(),
                message: format!("invalid JSON: {err}"),
            }),
        }
        return;
    }
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let location = format!("{source}#{}", i + 1);
        match Value::deserialize(document) {
            Ok(value) => take(&location, value, objects, report),
            Err(err) => {
                report.problems.push(Problem {
                    object: location,
                    message: format!("invalid YAML, rest of file skipped: {err}"),
                });
                // libyaml cannot resume after a syntax error; serde_yaml's
                // iterator would hand out the same error forever.
                break;
            }
        }
    }
}

/// Sorts one document into `objects`; `location` is "file#document".
fn take(location: &str, value: Value, objects: &mut Objects, report: &mut LoadReport) {
    if value.is_null() {
        // An empty document, e.g. after a trailing `---`.
        return;
    }
    let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        report.problems.push(Problem {
            object: location.to_string(),
            message: "not a Kubernetes object (apiVersion or kind missing)".to_string(),
        });
        return;
    };
    let meta = |name: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let object = format!("{location} {kind} {}/{}", meta("namespace"), meta("name"));
    let problem = match (api_version.as_str(), kind.as_str()) {
        // `kubectl get -o yaml` of several objects wraps them in a List.
        ("v1", "List") => match value {
            Value::Mapping(mut map) => match map.remove("items") {
                None | Some(Value::Null) => None,
                Some(Value::Sequence(items)) => {
                    for (i, item) in items.into_iter().enumerate() {
                        take(&format!("{location}.items[{i}]"), item, objects, report);
                    }
                    None
                }
                Some(_) => Some("items is not a list".to_string()),
            },
            _ => None,
        },
        ("v1", "Service") => decode(value, &mut objects.services),
        ("discovery.k8s.io/v1", "EndpointSlice") => decode(value, &mut objects.slices),
        ("v1", "Node") => decode(value, &mut objects.nodes),
        _ => {
            tracing::debug!(%object, "ignoring manifest of an unused kind");
            report.ignored += 1;
            None
        }
    };
    if let Some(message) = problem {
        report.problems.push(Problem { object, message });
    }
}

/// `Some(error)` when the document is not a valid object of its kind.
fn decode<T: DeserializeOwned>(value: Value, into: &mut Vec<T>) -> Option<String> {
    match serde_yaml::from_value(value) {
        Ok(object) => {
            into.push(object);
            None
        }
        Err(err) => Some(format!("invalid object: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("lb-manifests-{}-{test}-{n}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n    - port: 80\n")
    }

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-1
  labels:
    kubernetes.io/service-name: a
addressType: IPv4
endpoints:
  - addresses: [10.0.0.1]
";

    const NODE_JSON: &str = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Node\",\n\t\"metadata\": {\"name\": \"node-a\"}\n}\n";

    fn names(objects: &Objects) -> Vec<String> {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        let services = objects
            .services
            .iter()
            .map(|s| format!("Service {}", name(&s.metadata)));
        let slices = objects
            .slices
            .iter()
            .map(|s| format!("EndpointSlice {}", name(&s.metadata)));
        let nodes = objects
            .nodes
            .iter()
            .map(|n| format!("Node {}", name(&n.metadata)));
        services.chain(slices).chain(nodes).collect()
    }

    #[test]
    fn loads_each_kind_from_yaml_yml_and_json_in_name_order() {
        let dir = TempDir::new("kinds");
        dir.write("b.yml", &format!("{}---\n{SLICE}---\n", service("b")));
        dir.write("a.yaml", &service("a"));
        dir.write("c.json", NODE_JSON);
        dir.write("d.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n---\napiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata:\n  name: old\n");
        dir.write("notes.txt", &service("txt"));
        dir.write(".hidden.yaml", &service("hidden"));
        fs::create_dir(dir.0.join("sub.yaml")).unwrap();
        fs::write(dir.0.join("sub.yaml/e.yaml"), service("nested")).unwrap();
        let (objects, report) = load_dir(&dir.0).unwrap();
        assert_eq!(
            names(&objects),
            ["Service a", "Service b", "EndpointSlice a-1", "Node node-a"]
        );
        assert_eq!(report.problems, []);
        assert_eq!(report.ignored, 2, "Deployment and v1beta1 EndpointSlice");
    }

    #[test]
    fn unwraps_lists() {
        let dir = TempDir::new("list");
        dir.write(
            "all.yaml",
            "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: c}\n",
        );
        dir.write("empty.yaml", "apiVersion: v1\nkind: List\nitems: []\n");
        let (objects, report) = load_dir(&dir.0).unwrap();
        assert_eq!(names(&objects), ["Service a"]);
        assert_eq!((report.problems.len(), report.ignored), (0, 1));
    }

    #[test]
    fn bad_documents_and_files_are_reported_and_skipped() {
        let dir = TempDir::new("bad");
        // Document 2 is not a valid Service (port is a string); 1 and 3 load.
        dir.write(
            "a.yaml",
            &format!(
                "{}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: ns\nspec:\n  ports:\n    - port: eighty\n---\n{}",
                service("first"),
                service("third")
            ),
        );
        dir.write(
            "b.yaml",
            &format!(
                "{}---\napiVersion: v1\nkind: Service\nmetadata: [unclosed\n---\n{}",
                service("b"),
                service("lost")
            ),
        );
        dir.write("c.json", "{\"apiVersion\": \"v1\",");
        dir.write("d.yaml", "just: a mapping\n");
        dir.write("e.yaml", &service("last"));
        let (objects, report) = load_dir(&dir.0).unwrap();
        assert_eq!(
            names(&objects),
            [
                "Service first",
                "Service third",
                "Service b",
                "Service last"
            ]
        );
        let file = |name: &str| dir.0.join(name).display().to_string();
        let objects: Vec<&str> = report.problems.iter().map(|p| p.object.as_str()).collect();
        assert_eq!(
            objects,
            [
                format!("{}#2 Service ns/broken", file("a.yaml")),
                format!("{}#2", file("b.yaml")),
                file("c.json"),
                format!("{}#1", file("d.yaml")),
            ]
        );
        assert!(
            report.problems[0].message.starts_with("invalid object"),
            "{:?}",
            report.problems[0]
        );
        assert!(
            report.problems[1].message.starts_with("invalid YAML"),
            "{:?}",
            report.problems[1]
        );
        assert!(
            report.problems[2].message.starts_with("invalid JSON"),
            "{:?}",
            report.problems[2]
        );
        assert!(
            report.problems[3]
                .message
                .starts_with("not a Kubernetes object"),
            "{:?}",
            report.problems[3]
        );
    }

    /// A line of 100,000 `[` kept libyaml busy for 20 s a sync; such files,
    /// and oversized ones, are refused at once and keep their last good
    /// contents while every other file loads.
    #[test]
    fn deep_and_oversized_files_are_refused_at_once() {
        let dir = TempDir::new("hostile");
        dir.write("a.yaml", &service("a"));
        dir.write("deep.yaml", &service("deep"));
        dir.write("deep.json", NODE_JSON);
        dir.write("z.yaml", &service("z"));
        let mut folder = Folder::default();
        let (objects, _) = folder.reload(&dir.0).unwrap();
        assert_eq!(
            names(&objects),
            ["Service a", "Service deep", "Service z", "Node node-a"]
        );

        dir.write("deep.yaml", &format!("a: {}", "[".repeat(100_000)));
        dir.write(
            "deep.json",
            &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        );
        // Many documents are a big cluster, not a deep file.
        let many: String = (0..2_000)
            .map(|i| format!("---\n{}", service(&format!("s{i}"))))
            .collect();
        dir.write("many.yaml", &many);
        dir.write("huge.yaml", &service("huge"));
        // Sparse: past the limit without writing 64 MiB in a test.
        fs::OpenOptions::new()
            .write(true)
            .open(dir.0.join("huge.yaml"))
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let (objects, report) = folder.reload(&dir.0).unwrap();
        let loaded = names(&objects);
        assert_eq!(loaded.len(), 4 + 2_000, "every document of many.yaml loads");
        assert!(loaded.contains(&"Service s1999".to_string()));
        let file = |name: &str| dir.0.join(name).display().to_string();
        let problems: Vec<(String, &str)> = report
            .problems
            .iter()
            .map(|p| (p.object.clone(), p.message.as_str()))
            .collect();
        let deep = "refused: collections nest deeper than the limit of 64";
        assert_eq!(
            problems,
            [
                (file("deep.json"), deep),
                (file("deep.yaml"), deep),
                (
                    file("huge.yaml"),
                    "refused: larger than the limit of 64 MiB"
                ),
            ]
        );
    }

    #[test]
    fn missing_folder_is_an_error() {
        let dir = TempDir::new("missing");
        assert!(load_dir(&dir.0.join("nope")).is_err());
    }

    /// Waits up to one second (the promised latency) for the next bump.
    async fn bumped(rx: &mut watch::Receiver<u64>) -> bool {
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn watch_notices_new_changed_and_removed_files() {
        let dir = TempDir::new("watch");
        dir.write("a.yaml", &service("a"));
        let (tx, mut rx) = watch::channel(0);
        let task = tokio::spawn(watch_dir(dir.0.clone(), tx));
        assert!(bumped(&mut rx).await, "first scan");
        rx.mark_unchanged();

        dir.write("notes.txt", "not a manifest");
        assert!(!bumped(&mut rx).await, "non-manifest file");

        dir.write("b.yaml", &service("b"));
        assert!(bumped(&mut rx).await, "new file");
        rx.mark_unchanged();

        // Same length, replaced by rename as editors do.
        dir.write("a.tmp", &service("z"));
        fs::rename(dir.0.join("a.tmp"), dir.0.join("a.yaml")).unwrap();
        assert!(bumped(&mut rx).await, "changed file");
        rx.mark_unchanged();

        fs::remove_file(dir.0.join("b.yaml")).unwrap();
        assert!(bumped(&mut rx).await, "removed file");
        assert_eq!(*rx.borrow_and_update(), 4);

        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("watcher stops once nobody listens")
            .unwrap();
    }
}
