//! The dev schema registry against a real Tansu, driven through
//! `schema_registry_converter` (the client the services use) and raw HTTP.

// A test crate: a panic is how a test fails (clippy.toml allows it in
// #[test] functions; this covers the helpers too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject_and_version, post_schema,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use triggers_core::CancellationToken;
use triggers_core::config::{CommonConfig, ConfigSource, TopicsConfig};
use triggers_core::provision::{ProvisionReport, TopicSpec, provision_topics};
use triggers_registry::{RegistryServerConfig, RunningRegistry};
use triggers_stack::TestStack;

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"}]}"#;
const V2_WITH_DEFAULT: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"total","type":"double","default":0.0}]}"#;
const V3_BREAKING: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"total","type":"double","default":0.0},{"name":"currency","type":"string"}]}"#;
const OTHER: &str =
    r#"{"type":"record","name":"Refund","namespace":"shop","fields":[{"name":"order","type":"string"}]}"#;

struct Env {
    common: CommonConfig,
    topic: String,
}

impl Env {
    async fn new() -> Self {
        let stack = TestStack::shared();
        let namespace = stack.namespace();
        let common = ConfigSource::from_parts(None, Vec::new())
            .map(|s| s.with_toml(&stack.config_toml(&namespace)))
            .and_then(|s| s.common())
            .unwrap();
        let topic = format!("{namespace}._schemas");
        let spec = triggers_core::provision::topic_specs(
            &TopicsConfig {
                replication_factor: 1,
                min_insync_replicas: 1,
                ..TopicsConfig::default()
            },
            &topic,
        )
        .into_iter()
        .filter(|s| s.name == topic)
        .collect::<Vec<TopicSpec>>();
        provision_topics(&common.kafka, &spec, 1, &mut ProvisionReport::default())
            .await
            .unwrap();
        Self { common, topic }
    }

    async fn start(&self, shutdown: &CancellationToken) -> RunningRegistry {
        let config = RegistryServerConfig {
            listen: "127.0.0.1:0".to_owned(),
            topic: self.topic.clone(),
            ..RegistryServerConfig::default()
        };
        triggers_registry::start(&self.common.kafka, &config, shutdown.clone())
            .await
            .expect("registry")
    }
}

fn settings(registry: &RunningRegistry) -> SrSettings {
    SrSettings::new_builder(registry.url()).no_proxy().build().unwrap()
}

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned())
}

#[tokio::test]
async fn schemas_register_and_read_back_through_the_converter() {
    let env = Env::new().await;
    let shutdown = CancellationToken::new();
    let registry = env.start(&shutdown).await;
    let sr = settings(&registry);

    let first = post_schema(&sr, "orders-value".to_owned(), avro(V1)).await.unwrap();
    let again = post_schema(&sr, "orders-value".to_owned(), avro(V1)).await.unwrap();
    assert_eq!(first.id, again.id, "same schema, same id");

    let second = post_schema(&sr, "orders-value".to_owned(), avro(V2_WITH_DEFAULT))
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
    // The same schema under another subject keeps its id.
    let shared = post_schema(&sr, "archive-value".to_owned(), avro(V1)).await.unwrap();
    assert_eq!(shared.id, first.id);

    let by_id = get_schema_by_id(second.id, &sr).await.unwrap();
    assert_eq!(by_id.schema, V2_WITH_DEFAULT);
    let latest = get_schema_by_subject_and_version(&sr, "orders-value", None)
        .await
        .unwrap();
    assert_eq!((latest.id, latest.version), (second.id, Some(2)));
    let v1 = get_schema_by_subject_and_version(&sr, "orders-value", Some(1))
        .await
        .unwrap();
    assert_eq!((v1.id, v1.schema.as_str()), (first.id, V1));
    let mut subjects = get_all_subjects(&sr).await.unwrap();
    subjects.sort();
    assert_eq!(subjects, ["archive-value", "orders-value"]);
    let versions = get_all_versions(&sr, "orders-value".to_owned()).await.unwrap();
    assert_eq!(versions, [1, 2]);

    // Unknown things answer Confluent's 404 codes.
    let client = reqwest::Client::new();
    for (path, code) in [
        ("/schemas/ids/999", 40403),
        ("/subjects/nope/versions", 40401),
        ("/subjects/orders-value/versions/9", 40402),
    ] {
        let response = client.get(format!("{}{path}", registry.url())).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error_code"], code, "{path}: {body}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn an_incompatible_avro_change_is_refused_with_409() {
    let env = Env::new().await;
    let shutdown = CancellationToken::new();
    let registry = env.start(&shutdown).await;
    let sr = settings(&registry);
    post_schema(&sr, "orders-value".to_owned(), avro(V1)).await.unwrap();
    post_schema(&sr, "orders-value".to_owned(), avro(V2_WITH_DEFAULT))
        .await
        .unwrap();

    // A new field without a default cannot read existing data: BACKWARD refuses it.
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/subjects/orders-value/versions", registry.url()))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({"schema": V3_BREAKING}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 409);
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("incompatible")),
        "{body}"
    );
    // The converter surfaces it as an error too, and nothing was registered.
    assert!(
        post_schema(&sr, "orders-value".to_owned(), avro(V3_BREAKING))
            .await
            .is_err()
    );
    let versions = get_all_versions(&sr, "orders-value".to_owned()).await.unwrap();
    assert_eq!(versions, [1, 2]);

    // The compatibility endpoint agrees.
    let check = |schema: &'static str| {
        let client = client.clone();
        let url = format!("{}/compatibility/subjects/orders-value/versions/latest", registry.url());
        async move {
            let body: serde_json::Value = client
                .post(url)
                .body(serde_json::json!({"schema": schema}).to_string())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["is_compatible"].as_bool()
        }
    };
    assert_eq!(check(V3_BREAKING).await, Some(false));
    assert_eq!(check(V2_WITH_DEFAULT).await, Some(true));

    // With the subject set to NONE, the change goes in.
    let response = client
        .put(format!("{}/config/orders-value", registry.url()))
        .body(r#"{"compatibility": "NONE"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    post_schema(&sr, "orders-value".to_owned(), avro(V3_BREAKING))
        .await
        .unwrap();

    // Malformed schemas are 422 with 42201, never a 500.
    let response = client
        .post(format!("{}/subjects/x-value/versions", registry.url()))
        .body(r#"{"schema": "{\"type\": \"record\"}"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    shutdown.cancel();
}

#[tokio::test]
async fn a_restart_keeps_schemas_and_instances_agree() {
    let env = Env::new().await;
    let first_run = CancellationToken::new();
    let registry = env.start(&first_run).await;
    let sr = settings(&registry);
    let v1 = post_schema(&sr, "orders-value".to_owned(), avro(V1)).await.unwrap();
    let other = post_schema(&sr, "refunds-value".to_owned(), avro(OTHER)).await.unwrap();
    first_run.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(15), registry.task).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "registry did not stop cleanly: {stopped:?}"
    );

    // A new instance reads the log and knows everything.
    let second_run = CancellationToken::new();
    let a = env.start(&second_run).await;
    let b = env.start(&second_run).await;
    let (sa, sb) = (settings(&a), settings(&b));
    assert_eq!(
        get_schema_by_id(v1.id, &sa).await.map(|s| s.schema).ok().as_deref(),
        Some(V1)
    );
    assert_eq!(
        get_schema_by_id(other.id, &sa).await.map(|s| s.schema).ok().as_deref(),
        Some(OTHER)
    );

    // Two instances registering different schemas at once never hand out
    // the same id twice, and both end with the same view.
    let schemas: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"type":"record","name":"T{i}","fields":[{{"name":"f","type":"int"}}]}}"#))
        .collect();
    let registrations = schemas.iter().enumerate().map(|(i, schema)| {
        let sr = if i % 2 == 0 { sa.clone() } else { sb.clone() };
        let schema = schema.clone();
        async move { post_schema(&sr, format!("t{i}-value"), avro(&schema)).await }
    });
    let results = futures::future::join_all(registrations).await;
    let mut ids: Vec<u32> = results.into_iter().map(|r| r.unwrap().id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), schemas.len(), "distinct schemas got distinct ids");
    assert!(!ids.contains(&v1.id) && !ids.contains(&other.id));
    for (i, schema) in schemas.iter().enumerate() {
        // Each instance sees the other's registration once it has read it
        // from the log: both converge, within a few seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (from_a, from_b) = loop {
            let from_a = get_schema_by_subject_and_version(&sa, &format!("t{i}-value"), None).await;
            let from_b = get_schema_by_subject_and_version(&sb, &format!("t{i}-value"), None).await;
            match (from_a, from_b) {
                (Ok(a), Ok(b)) => break (a, b),
                other if tokio::time::Instant::now() >= deadline => panic!("t{i}: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert_eq!(from_a.id, from_b.id, "t{i}");
        assert_eq!(&from_a.schema, schema);
    }
    second_run.cancel();
}
