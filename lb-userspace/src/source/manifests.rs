//! A folder of Kubernetes manifests as the object source, for running
//! without an API server (tests, demos, a ConfigMap mounted as a volume).

use std::ffi::OsString;
use std::fs;
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
        match fs::read_to_string(&path) {
            Ok(text) => parse_str(&source, &text, is_json(&path), &mut objects, &mut report),
            Err(err) => report.problems.push(Problem {
                object: source,
                message: format!("cannot read: {err}"),
            }),
        }
    }
    Ok((objects, report))
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
                Some((path.file_name()?.to_owned(), meta.ino(), meta.modified().ok(), meta.len()))
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
        let wanted = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
        if wanted && !name.starts_with('.') && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
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
            Err(err) => report.problems.push(Problem {
                object: location,
                message: format!("invalid YAML: {err}"),
            }),
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
