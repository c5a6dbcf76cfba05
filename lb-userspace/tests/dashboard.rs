//! The Grafana dashboard in deploy/ asks only for series the agent exports:
//! a renamed or removed series would otherwise leave a panel silently
//! empty. Every PromQL query in it is reduced to the metric names it reads,
//! and each must be one `/metrics` renders, from a `Metrics` that recorded
//! a sync and one reading of the maps.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::{names, Reason};
use lb_userspace::{
    datapath::{MapFill, MapSample, ServiceCounters},
    metrics::Metrics,
    model::{Changes, DesiredState, FamilyChanges},
    sync::SyncReport,
};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy_dir().join("grafana-dashboard.json")).unwrap();
    serde_json::from_str(&text).expect("grafana-dashboard.json is JSON")
}

/// Aggregation operators (they may take `by (...)` before their
/// parentheses, so they are not always followed by one) and PromQL's other
/// keywords: never metric names.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a list of label names in parentheses.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index after the string literal opening at `i`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index after the `close` matching the `open` at `i`, strings inside
/// included.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The metric names a PromQL expression reads: identifiers outside label
/// matchers, ranges, strings and grouping lists that are neither a
/// function call nor a keyword.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            // Numbers, durations (`offset 5m`) and Grafana's variables.
            c if c.is_ascii_digit() || c == '.' || c == '$' => {
                i += 1;
                while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_word(c) => {
                let start = i;
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().position(|c| !c.is_whitespace());
                let called = next.is_some_and(|n| chars[i + n] == '(');
                if GROUPING.contains(&word.as_str()) {
                    if let Some(n) = next.filter(|_| called) {
                        i = skip_group(&chars, i + n, '(', ')');
                    }
                } else if !called && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// A template variable's query: `label_values(metric, label)` reads
/// `metric`; `label_values(label)` reads none; others are PromQL.
fn variable_metric_names(query: &str) -> Vec<String> {
    match query.trim().strip_prefix("label_values(") {
        Some(args) => match args.split_once(',') {
            Some((metric, _)) => metric_names(metric),
            None => Vec::new(),
        },
        None => metric_names(query),
    }
}

/// Every query of the dashboard, by where it is, with its metric names.
fn queries(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, Vec<String>)>) {
        match v {
            Value::Object(o) => {
                let here = match o.get("title").or(o.get("name")) {
                    Some(Value::String(t)) => format!("{at}/{t}"),
                    _ => at.to_string(),
                };
                if let Some(Value::String(expr)) = o.get("expr") {
                    out.push((format!("{here}: {expr}"), metric_names(expr)));
                }
                for value in o.values() {
                    walk(value, &here, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], "", &mut out);
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let query = match &var["query"] {
            Value::Object(q) => q.get("query").and_then(Value::as_str),
            q => q.as_str(),
        };
        if var["type"] == "query" {
            let query = query.expect("a query variable has a query");
            out.push((
                format!("variable {}: {query}", var["name"]),
                variable_metric_names(query),
            ));
        }
    }
    out
}

/// The metric names a scrape offers: each family's, with a histogram's
/// `_bucket`, `_sum` and `_count`, and a counter's `_total` (the Prometheus
/// text format names counter families with it, OpenMetrics without).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                "counter" if !name.ends_with("_total") => &["_total"],
                _ => &[],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// What an agent serves after one sync, with every kind of map reading.
fn scrape() -> String {
    let metrics = Metrics::new();
    metrics.http_status("healthz");
    metrics.http_status("metrics");
    metrics.probes().healthz(200);
    metrics.probes().livez(200);
    metrics.record_queued();
    let one = FamilyChanges {
        services: 1,
        endpoints: 1,
    };
    let changes = Changes {
        ipv4: one,
        ipv6: one,
    };
    metrics.record_pending(changes);
    metrics.record_conntrack_reconcile(Duration::from_micros(50), [0, 0]);
    let report = SyncReport {
        full: true,
        ..SyncReport::default()
    };
    metrics.record_sync(
        Duration::from_millis(2),
        &report,
        &DesiredState::default(),
        0,
        changes,
    );
    metrics.observe_network_programming(Duration::from_millis(800));
    metrics.record_lb_pools(&[("192.168.1.240/28".to_string(), 1, 13)], 0);
    metrics.record_status_write(true);
    metrics.render_sample(MapSample {
        reasons: Reason::ALL.iter().map(|&r| (r, 1)).collect(),
        services: vec![ServiceCounters {
            name: "default/web:http/TCP".into(),
            packets: 1,
            bytes: 60,
        }],
        fill: vec![MapFill {
            map: names::CT_V4,
            entries: 1,
            capacity: 2,
        }],
        conntrack: [("TCP", 2)].into(),
    })
}

/// The dashboard's metric names that `exported` lacks, with the query
/// naming each.
fn missing(queries: &[(String, Vec<String>)], exported: &BTreeSet<String>) -> Vec<String> {
    queries
        .iter()
        .flat_map(|(at, names)| {
            names
                .iter()
                .filter(|n| !exported.contains(*n))
                .map(move |n| format!("{n} (in {at})"))
        })
        .collect()
}

#[test]
fn the_tokenizer_keeps_metric_names_only() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{instance=~"$instance", x="}"}[$__rate_interval])))"#,
            &["a_seconds_bucket"],
        ),
        (
            "time() - b_timestamp_seconds{job='x'} > bool 60",
            &["b_timestamp_seconds"],
        ),
        (
            "c - on (instance) group_left (node) d offset 5m or vector(0)",
            &["c", "d"],
        ),
        (
            "topk(10, sum without (pod) (increase(e_total[1h]))) / ignoring(le) f:recorded:rate5m",
            &["e_total", "f:recorded:rate5m"],
        ),
        ("1e3 * max(g)", &["g"]),
    ];
    for (expr, want) in cases {
        assert_eq!(metric_names(expr), *want, "{expr}");
    }
    assert_eq!(
        variable_metric_names("label_values(h_seconds, instance)"),
        ["h_seconds"]
    );
    assert!(variable_metric_names("label_values(instance)").is_empty());
}

#[test]
fn every_series_the_dashboard_reads_is_exported() {
    let queries = queries(&dashboard());
    assert!(queries.len() > 20, "{queries:#?}");
    for (at, names) in &queries {
        assert!(!names.is_empty(), "no metric name found in {at}");
    }
    let exported = exported(&scrape());
    let absent = missing(&queries, &exported);
    assert!(
        absent.is_empty(),
        "the dashboard reads series the agent does not export:\n{}\nexported:\n{exported:#?}",
        absent.join("\n")
    );

    // The check itself: a series nobody exports is caught.
    let bogus = [(
        "panel".to_string(),
        metric_names("sum(rate(xdplb_bogus_total[5m]))"),
    )];
    assert_eq!(missing(&bogus, &exported), ["xdplb_bogus_total (in panel)"]);
}

/// The drop panels select reasons by name: each alternative of a `reason`
/// regex must still name one.
#[test]
fn reason_selectors_name_reasons_that_exist() {
    let mut selectors = 0;
    for (at, _) in queries(&dashboard()) {
        for op in ["reason=~\"", "reason!~\""] {
            for part in at.split(op).skip(1) {
                let regex = part.split('"').next().unwrap();
                for alt in regex.split('|') {
                    let found = Reason::ALL.iter().any(|r| match alt.strip_suffix(".*") {
                        Some(prefix) => r.name().starts_with(prefix),
                        None => r.name() == alt,
                    });
                    assert!(found, "no reason matches {alt:?} in {at}");
                }
                selectors += 1;
            }
        }
    }
    assert!(selectors >= 2, "{selectors}");
}

#[test]
fn the_kustomization_ships_the_dashboard_to_grafanas_sidecar() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let kustomization: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let generators = kustomization["configMapGenerator"]
        .as_sequence()
        .expect("configMapGenerator");
    let dashboard = generators
        .iter()
        .find(|g| {
            g["files"]
                .as_sequence()
                .is_some_and(|f| f.iter().any(|f| f == "grafana-dashboard.json"))
        })
        .expect("a ConfigMap of grafana-dashboard.json");
    assert_eq!(dashboard["options"]["labels"]["grafana_dashboard"], "1");
}
