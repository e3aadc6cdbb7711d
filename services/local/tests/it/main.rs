//! The local runner: the whole stack in-process against real Tansu and
//! DynamoDB Local, on free ports.

use std::collections::HashMap;

use triggers_core::dynamo::Tables;
use triggers_local::LocalOptions;
use triggers_stack::{assert_ops_endpoints, free_port};

/// A folder under the current directory, by a relative path, removed on drop.
struct RelativeDir(std::path::PathBuf);

impl RelativeDir {
    fn new() -> Self {
        let path = std::path::PathBuf::from(format!(".tmp-local-{}", triggers_core::ids::RequestId::new()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{e}"));
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
    let port = || free_port().unwrap_or_else(|e| panic!("{e}"));
    LocalOptions {
        kafka_port: port(),
        dynamodb_port: port(),
        registry_port: port(),
        gateway_port: port(),
        router_port: port(),
        persister_port: port(),
        deliverer_port: port(),
        receiver_port: port(),
        env: vec![("TRIGGERS_TELEMETRY__LOG_LEVEL".to_owned(), "warn".to_owned())],
        ..LocalOptions::new(data_dir)
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
    // A relative data folder, as `scripts/run-local` uses (`var/`).
    let dir = RelativeDir::new();
    assert!(dir.path().is_relative(), "{}", dir.path().display());
    let options = options(dir.path());
    let source = triggers_local::load_config(&options).unwrap_or_else(|e| panic!("{e}"));
    let stack = triggers_local::start(&options, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

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
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("demo key unknown"));
    assert_eq!(tenant.to_string(), stack.demo.tenant_id);
    let subscription_id = stack.demo.subscription_id.parse().unwrap_or_else(|e| panic!("{e}"));
    let subscription = triggers_core::subscription::get(&dynamo, &tables, &tenant, &subscription_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("demo subscription missing"));
    assert_eq!(subscription.target_url, stack.endpoints.demo_receiver_url);

    // The printed curl line works: the demo key ingests an event.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.endpoints.gateway_url))
        .bearer_auth(&api_key)
        .json(&serde_json::json!({"type": "order.created", "source": "demo", "data": {"order_id": 42}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 202);
    stack.stop().await;

    // A second start on the same data keeps the tenant, key and subscription.
    let options = LocalOptions {
        data_dir: dir.path().to_path_buf(),
        ..self::options(dir.path())
    };
    let source = triggers_local::load_config(&options).unwrap_or_else(|e| panic!("{e}"));
    let again = triggers_local::start(&options, &source)
        .await
        .unwrap_or_else(|e| panic!("second start: {e}"));
    assert_eq!(again.demo.api_key, api_key);
    assert_eq!(again.demo.tenant_id, tenant.to_string());
    assert_eq!(again.demo.subscription_id, subscription_id.to_string());
    let dynamo = triggers_core::dynamo::client(&again.common.dynamodb).await;
    let still = triggers_core::tenancy::tenant_of_key(&dynamo, &tables, &api_key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(still, Some(tenant));
    // The receiver moved to a new port: the subscription follows it.
    let moved = triggers_core::subscription::get(&dynamo, &tables, &tenant, &subscription_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("demo subscription missing after restart"));
    assert_eq!(moved.target_url, again.endpoints.demo_receiver_url);
    assert!(moved.revision > subscription.revision);
    again.stop().await;
}
