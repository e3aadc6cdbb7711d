//! The local runner: the whole stack in-process against real Tansu and
//! DynamoDB Local, on free ports.

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use triggers_core::dynamo::Tables;
use triggers_local::LocalOptions;
use triggers_stack::{assert_ops_endpoints, free_port};

mod chart;
mod metrics;

/// A folder under the current directory, by a relative path, removed on drop.
struct RelativeDir(std::path::PathBuf);

impl RelativeDir {
    fn new() -> Self {
        let path = std::path::PathBuf::from(format!(".tmp-local-{}", triggers_core::ids::RequestId::new()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for RelativeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(data_dir: &std::path::Path) -> LocalOptions {
    LocalOptions {
        prometheus_port: Some(free_port().unwrap()),
        ..LocalOptions::on_free_ports(data_dir).unwrap()
    }
}

/// Every WARN and ERROR event of the process, formatted, with its level.
#[derive(Clone, Default)]
struct Complaints(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Complaints {
    /// Installs a subscriber that logs at INFO like the runner and keeps
    /// every WARN and ERROR line (services, librdkafka through `tracing`).
    fn install() -> Self {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let complaints = Self::default();
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(tracing_subscriber::fmt::layer().compact().with_test_writer())
            .with(complaints.clone())
            .init();
        complaints
    }

    fn at(&self, level: tracing::Level) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, line)| line.clone())
            .collect()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Complaints {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level <= tracing::Level::WARN {
            let mut fields = Fields(event.metadata().target().to_owned());
            event.record(&mut fields);
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push((level, fields.0));
        }
    }
}

fn read_env_file(path: &std::path::Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stack_starts_answers_and_keeps_its_data_across_restarts() {
    let complaints = Complaints::install();
    // A relative data folder, as `scripts/run-local` uses (`var/`).
    let dir = RelativeDir::new();
    assert!(dir.path().is_relative(), "{}", dir.path().display());
    let options = options(dir.path());
    let source = triggers_local::load_config(&options).unwrap();
    let stack = triggers_local::start(&options, &source).await.unwrap();

    // Every service started in-process answers /healthz, /readyz and /metrics.
    assert_ops_endpoints(&stack.endpoints.gateway_url).await;
    assert_ops_endpoints(&stack.endpoints.registry_url).await;
    for (name, url) in &stack.endpoints.ops_urls {
        eprintln!("checking {name}");
        assert_ops_endpoints(url).await;
    }

    // local.env names every endpoint and the demo credentials.
    let env = read_env_file(&dir.path().join("local.env"));
    for name in [
        "TRIGGERS_GATEWAY_URL",
        "TRIGGERS_ADMIN_TOKEN",
        "TRIGGERS_DEMO_API_KEY",
        "TRIGGERS_KAFKA_BOOTSTRAP",
        "TRIGGERS_REGISTRY_URL",
        "TRIGGERS_DYNAMODB_ENDPOINT",
        "TRIGGERS_DEMO_RECEIVER_URL",
    ] {
        assert!(
            env.get(name).is_some_and(|v| !v.is_empty()),
            "{name} missing from local.env: {env:?}"
        );
    }
    assert_eq!(env["TRIGGERS_GATEWAY_URL"], stack.endpoints.gateway_url);
    assert_eq!(
        env["TRIGGERS_KAFKA_BOOTSTRAP"],
        format!("127.0.0.1:{}", options.kafka_port)
    );
    let api_key = env["TRIGGERS_DEMO_API_KEY"].clone();
    assert!(api_key.starts_with("tk_"));

    // The demo key resolves to the demo tenant, which has the subscription.
    let dynamo = triggers_core::dynamo::client(&stack.common.dynamodb).await;
    let tables = Tables::new(&stack.common.dynamodb.table_prefix);
    let tenant = triggers_core::tenancy::tenant_of_key(&dynamo, &tables, &api_key)
        .await
        .unwrap()
        .expect("demo key unknown");
    assert_eq!(tenant.to_string(), stack.demo.tenant_id);
    let subscription_id = stack.demo.subscription_id.parse().unwrap();
    let subscription = triggers_core::subscription::get(&dynamo, &tables, &tenant, &subscription_id)
        .await
        .unwrap()
        .expect("demo subscription missing");
    assert_eq!(subscription.target_url, stack.endpoints.demo_receiver_url);

    // The printed curl line works: the demo key ingests an event.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.endpoints.gateway_url))
        .bearer_auth(&api_key)
        .json(&serde_json::json!({"type": "order.created", "source": "demo", "data": {"order_id": 42}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let event_id = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .expect("no event id")
        .to_owned();

    // ... and the demo receiver gets it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack.received.count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo receiver got no webhook for {event_id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The metrics the dashboards and alerts use are exported, and nothing
    // is exported that the catalog does not describe.
    let metrics_url = format!("{}/metrics", stack.endpoints.ops_urls[0].1);
    let required = [
        "triggers_http_requests_total",
        "triggers_http_request_duration_seconds",
        "triggers_gateway_produce_duration_seconds",
        "triggers_delivery_e2e_seconds",
        "triggers_deliverer_attempts_total",
        "triggers_deliverer_responses_total",
        "triggers_records_handled_total",
        "triggers_dynamodb_request_duration_seconds",
        "triggers_dynamodb_capacity_units",
        "triggers_consumer_lag_records",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        let families = metrics::exported(&text);
        let missing: Vec<&str> = required.into_iter().filter(|m| !families.contains_key(*m)).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "not exported: {missing:?}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let undocumented = metrics::undocumented(&text);
    assert!(undocumented.is_empty(), "{}", undocumented.join("\n"));

    // A short load, then every dashboard panel's query, run by the real
    // Prometheus the runner started, returns at least one series.
    let prometheus = stack.endpoints.prometheus_url.clone().expect("no Prometheus");
    let http = reqwest::Client::new();
    for i in 0..20 {
        let response = http
            .post(format!("{}/v1/events", stack.endpoints.gateway_url))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({"type": "order.created", "source": "load", "data": {"i": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack.received.count() < 21 {
        assert!(std::time::Instant::now() < deadline, "the load was not delivered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    metrics::every_panel_answers(&http, &prometheus).await;
    metrics::the_alert_rules_are_loaded(&http, &prometheus).await;
    stack.stop().await;

    // A healthy start, an event delivered and a clean stop: nothing a user
    // would read as an error.
    let errors = complaints.at(tracing::Level::ERROR);
    assert!(
        errors.is_empty(),
        "a healthy run logged ERROR lines:\n{}",
        errors.join("\n")
    );
    for warning in complaints.at(tracing::Level::WARN) {
        eprintln!("WARN during a healthy run: {warning}");
    }

    // A second start on the same data keeps the tenant, key and subscription.
    let options = LocalOptions {
        data_dir: dir.path().to_path_buf(),
        ..self::options(dir.path())
    };
    let source = triggers_local::load_config(&options).unwrap();
    let again = triggers_local::start(&options, &source).await.expect("second start");
    assert_eq!(again.demo.api_key, api_key);
    assert_eq!(again.demo.tenant_id, tenant.to_string());
    assert_eq!(again.demo.subscription_id, subscription_id.to_string());
    let dynamo = triggers_core::dynamo::client(&again.common.dynamodb).await;
    let still = triggers_core::tenancy::tenant_of_key(&dynamo, &tables, &api_key)
        .await
        .unwrap();
    assert_eq!(still, Some(tenant));
    // The receiver moved to a new port: the subscription follows it.
    let moved = triggers_core::subscription::get(&dynamo, &tables, &tenant, &subscription_id)
        .await
        .unwrap()
        .expect("demo subscription missing after restart");
    assert_eq!(moved.target_url, again.endpoints.demo_receiver_url);
    assert!(moved.revision > subscription.revision);
    again.stop().await;

    // The restart on kept data was just as quiet.
    let errors = complaints.at(tracing::Level::ERROR);
    assert!(
        errors.is_empty(),
        "a restart logged ERROR lines:\n{}",
        errors.join("\n")
    );
}
