//! The metric catalog (`docs/metrics.md`) against what a running stack
//! exports: every family, its type and its labels must be listed there.

use std::collections::{BTreeMap, BTreeSet};

/// A metric family: its type and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The catalog's table: name → family.
pub fn catalog() -> BTreeMap<String, Family> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md"))
        .expect("docs/metrics.md");
    text.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let labels = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            (
                name,
                Family {
                    kind: cells[2].to_owned(),
                    labels,
                },
            )
        })
        .collect()
}

/// The families of a Prometheus text exposition.
pub fn exported(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                families.insert(
                    name.to_owned(),
                    Family {
                        kind: kind.to_owned(),
                        labels: BTreeSet::new(),
                    },
                );
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.split_whitespace().next().unwrap_or_default();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                families.contains_key(base).then_some(base)
            })
            .unwrap_or(name)
            .to_owned();
        let entry = families.entry(family).or_insert_with(|| Family {
            kind: "untyped".to_owned(),
            labels: BTreeSet::new(),
        });
        // Label values are quoted and may hold commas: take each name
        // before `="`.
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let key = key.trim_start_matches(',');
            if key != "le" && key != "quantile" {
                entry.labels.insert(key.to_owned());
            }
            let mut escaped = false;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            rest = &after[end.min(after.len())..];
        }
    }
    families
}

/// What `text` exports that the catalog does not describe.
pub fn undocumented(text: &str) -> Vec<String> {
    let catalog = catalog();
    let mut problems = Vec::new();
    for (name, family) in exported(text) {
        match catalog.get(&name) {
            None => problems.push(format!("{name} ({}) is not in docs/metrics.md", family.kind)),
            Some(listed) => {
                if listed.kind != family.kind {
                    problems.push(format!(
                        "{name} is a {}, docs/metrics.md says {}",
                        family.kind, listed.kind
                    ));
                }
                let extra: Vec<&String> = family.labels.difference(&listed.labels).collect();
                if !extra.is_empty() {
                    problems.push(format!("{name} has labels {extra:?} not in docs/metrics.md"));
                }
            }
        }
    }
    problems
}

#[test]
fn the_parser_reads_families_types_and_labels() {
    let text = "# TYPE a_total counter\na_total{x=\"1,y=2\",z=\"q\\\"\"} 3\n# TYPE h histogram\nh_bucket{le=\"0.1\",op=\"Put\"} 1\nh_sum{op=\"Put\"} 0.1\nh_count{op=\"Put\"} 1\n";
    let families = exported(text);
    assert_eq!(
        families["a_total"].labels,
        BTreeSet::from(["x".to_owned(), "z".to_owned()])
    );
    assert_eq!(families["h"].kind, "histogram");
    assert_eq!(families["h"].labels, BTreeSet::from(["op".to_owned()]));
    assert!(catalog().contains_key("triggers_delivery_e2e_seconds"));
    // What the catalog does not list, or lists otherwise, is reported.
    let problems = undocumented(
        "# TYPE nope_total counter\nnope_total 1\n# TYPE triggers_router_deliveries_total gauge\ntriggers_router_deliveries_total{tenant=\"t\"} 1\n",
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
}

/// Every query of every dashboard in `observability/grafana/`, with its
/// template variables filled in (all namespaces and instances, a 20 s rate
/// window), answers at least one series from `prometheus`. Retries for up to
/// 30 s while the scrapes come in.
pub async fn every_panel_answers(http: &reqwest::Client, prometheus: &str) {
    let mut queries = Vec::new();
    for (path, text) in dashboards() {
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let query = expr
                    .replace("$__rate_interval", "20s")
                    .replace("$namespace", ".*")
                    .replace("$instance", ".*");
                queries.push((format!("{} / {}", path.display(), panel["title"]), query));
            }
        }
    }
    assert!(queries.len() >= 30, "only {} panel queries found", queries.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut empty = queries.clone();
    while !empty.is_empty() {
        let mut still = Vec::new();
        for (panel, query) in empty {
            let answer = prometheus_api(
                http.get(format!("{prometheus}/api/v1/query"))
                    .query(&[("query", query.as_str())]),
            )
            .await;
            assert_eq!(answer["status"], "success", "{panel}: {query}: {answer}");
            if answer["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                still.push((panel, query));
            }
        }
        if !still.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "panels without data:\n{}",
                still
                    .iter()
                    .map(|(p, q)| format!("{p}: {q}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        empty = still;
    }
}

/// The JSON answer of a Prometheus HTTP API request (null if not JSON).
async fn prometheus_api(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap_or_default()
}

/// Every dashboard of `observability/grafana/`: its path and JSON text.
fn dashboards() -> Vec<(std::path::PathBuf, String)> {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../observability/grafana");
    std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{folder}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, text)
        })
        .collect()
}

/// Prometheus loaded every alert rule of `observability/prometheus/alerts.yml`.
pub async fn the_alert_rules_are_loaded(http: &reqwest::Client, prometheus: &str) {
    let answer = prometheus_api(http.get(format!("{prometheus}/api/v1/rules"))).await;
    let rules: Vec<String> = answer["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert!(rules.len() >= 8, "{answer}");
    assert!(rules.iter().any(|r| r == "TriggersEndToEndLatencyHigh"), "{rules:?}");
}

/// `promtool check rules` and `promtool test rules` on the alert rules and
/// their unit tests, and every metric the rules and dashboards name is in the
/// catalog.
#[test]
fn the_alert_rules_pass_promtool_and_use_catalog_metrics() {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../observability/prometheus");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(folder)
            .output()
            .expect("promtool (run scripts/bootstrap)");
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let catalog = catalog();
    let mut texts = vec![std::fs::read_to_string(format!("{folder}/alerts.yml")).unwrap_or_default()];
    texts.extend(dashboards().into_iter().map(|(_, text)| text));
    let mut unknown = BTreeSet::new();
    for text in &texts {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("triggers_") || word.starts_with("process_")) {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|b| catalog.contains_key(*b)))
                .unwrap_or(word);
            if !catalog.contains_key(base) {
                unknown.insert(base.to_owned());
            }
        }
    }
    assert!(unknown.is_empty(), "metrics not in docs/metrics.md: {unknown:?}");
}
