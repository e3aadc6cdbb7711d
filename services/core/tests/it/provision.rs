use std::time::Duration;

use aws_sdk_dynamodb::types::TimeToLiveStatus;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};

use crate::support::TestEnv;

#[tokio::test]
async fn provisioning_is_idempotent() {
    let env = TestEnv::new().await;
    let specs = triggers_core::provision::topic_specs(&env.common.topics, &env.schemas_topic());

    let first = env.provision().await;
    let mut created = first.topics_created.clone();
    created.sort();
    let mut expected: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    expected.sort();
    assert_eq!(created, expected, "first run creates every topic");
    assert_eq!(first.tables_created.len(), env.tables.specs().len(), "{first:?}");
    assert_eq!(first.ttl_enabled.len(), env.tables.specs().len(), "{first:?}");

    let second = env.provision().await;
    assert!(!second.changed(), "second run must change nothing: {second:?}");
    let mut existing = second.topics_existing.clone();
    existing.sort();
    assert_eq!(existing, expected);
    assert_eq!(second.tables_existing.len(), env.tables.specs().len());

    // The topics have the configured partitions.
    let admin = triggers_core::kafka::admin(&env.common.kafka, "test").unwrap();
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).unwrap();
    for spec in &specs {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == spec.name)
            .unwrap_or_else(|| panic!("topic {} missing", spec.name));
        assert_eq!(topic.partitions().len() as i32, spec.partitions, "{}", spec.name);
    }
    // The subscription table topic is compacted, when the broker reports configs.
    let subscriptions = env.common.topics.subscriptions();
    if let Ok(configs) = admin
        .describe_configs([&ResourceSpecifier::Topic(&subscriptions)], &AdminOptions::new())
        .await
        && let Some(Ok(resource)) = configs.first()
        && let Some(entry) = resource.get("cleanup.policy")
    {
        assert_eq!(entry.value.as_deref(), Some("compact"));
    }

    // Every table exists, is active and has its TTL on.
    for spec in env.tables.specs() {
        let ttl = env
            .dynamo
            .describe_time_to_live()
            .table_name(&spec.name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        let status = ttl
            .time_to_live_description()
            .and_then(|d| d.time_to_live_status())
            .cloned();
        assert_eq!(status, Some(TimeToLiveStatus::Enabled), "{}", spec.name);
        let table = env
            .dynamo
            .describe_table()
            .table_name(&spec.name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        let indexes = table
            .table()
            .map(|t| t.global_secondary_indexes().len())
            .unwrap_or_default();
        assert_eq!(indexes, spec.indexes.len(), "{}", spec.name);
    }
}
