//! Creates every topic and table a deployment needs. Idempotent: what exists
//! is left as it is, so running it twice changes nothing.
//!
//! Topics get their partition count and retention from [`TopicsConfig`];
//! `<ns>.subscriptions` and the schema registry's `_schemas` are compacted,
//! with one partition each. A subscriptions topic made earlier with more
//! partitions keeps them and works as before (the follower reads and asks
//! about every partition it has).
//! Tables are created on demand billing, with their indexes and TTL.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::Client as DynamoClient;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{TableStatus, TimeToLiveSpecification, TimeToLiveStatus};
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaConfig, TopicsConfig};
use crate::dynamo::{TTL_ATTRIBUTE, TableSpec, Tables};

/// Provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Kafka refused or could not be reached.
    #[error("Kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// Creating one topic failed.
    #[error("topic `{topic}` could not be created: {code}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// The admin client could not be built.
    #[error(transparent)]
    Client(#[from] crate::kafka::ClientError),
    /// DynamoDB refused or could not be reached.
    #[error("DynamoDB table `{table}`: {message}")]
    Dynamo {
        /// The table.
        table: String,
        /// What went wrong, with the SDK's error chain.
        message: String,
    },
}

/// The spec of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic-level configs (`retention.ms`, `cleanup.policy`).
    pub configs: BTreeMap<&'static str, String>,
}

/// Every topic of a deployment, including the registry's `schemas_topic`.
pub fn topic_specs(topics: &TopicsConfig, schemas_topic: &str) -> Vec<TopicSpec> {
    // With replicas to spare, an acknowledged write is on at least
    // `min_insync_replicas` of them (the producer uses acks=all).
    let durability = |mut configs: BTreeMap<&'static str, String>| {
        if topics.replication_factor > 1 {
            configs.insert("min.insync.replicas", topics.min_insync_replicas.to_string());
        }
        configs
    };
    let retention = |d: Duration| {
        durability(BTreeMap::from([
            ("cleanup.policy", "delete".to_owned()),
            ("retention.ms", d.as_millis().to_string()),
        ]))
    };
    let compacted = || durability(BTreeMap::from([("cleanup.policy", "compact".to_owned())]));
    let spec = |name: String, partitions: i32, configs| TopicSpec {
        name,
        partitions,
        configs,
    };
    let n = topics.partitions;
    let mut specs = vec![
        spec(topics.events(), n, retention(topics.events_retention)),
        spec(topics.events_invalid(), n, retention(topics.events_retention)),
        spec(topics.quarantine(), n, retention(topics.events_retention)),
        // One partition: a small table, not a stream. Every router reads
        // all of it and asks where it ends before routing fresh events
        // (`Follower::fresh_at`): one partition keeps that question to one
        // offset, and the changes in one order.
        spec(topics.subscriptions(), 1, compacted()),
        spec(topics.deliveries(), n, retention(topics.deliveries_retention)),
        spec(topics.dlq(), n, retention(topics.dlq_retention)),
        spec(topics.outcomes(), n, retention(topics.deliveries_retention)),
        // One partition: the registry's log must be totally ordered.
        spec(schemas_topic.to_owned(), 1, compacted()),
    ];
    for retry in topics.retries() {
        specs.push(spec(retry, n, retention(topics.deliveries_retention)));
    }
    specs
}

/// What a provisioning run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Topics created by this run.
    pub topics_created: Vec<String>,
    /// Topics that already existed.
    pub topics_existing: Vec<String>,
    /// Tables created by this run.
    pub tables_created: Vec<String>,
    /// Tables that already existed.
    pub tables_existing: Vec<String>,
    /// Tables whose TTL this run switched on.
    pub ttl_enabled: Vec<String>,
}

impl ProvisionReport {
    /// Whether the run changed anything.
    pub fn changed(&self) -> bool {
        !(self.topics_created.is_empty() && self.tables_created.is_empty() && self.ttl_enabled.is_empty())
    }
}

/// Creates the missing topics of `specs`.
pub async fn provision_topics(
    kafka: &KafkaConfig,
    specs: &[TopicSpec],
    replication_factor: i32,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let admin = std::sync::Arc::new(crate::kafka::admin(kafka, "provision")?);
    let existing = existing_topics(admin.clone()).await?;
    let missing: Vec<&TopicSpec> = specs.iter().filter(|s| !existing.contains(&s.name)).collect();
    report.topics_existing.extend(
        specs
            .iter()
            .filter(|s| existing.contains(&s.name))
            .map(|s| s.name.clone()),
    );
    if missing.is_empty() {
        return Ok(());
    }
    let max_message_bytes = kafka.max_record_bytes.to_string();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|spec| {
            spec.configs.iter().fold(
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(replication_factor))
                    // Every record a service produces fits (kafka.max_record_bytes).
                    .set("max.message.bytes", &max_message_bytes),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|source| ProvisionError::Kafka {
            context: "create topics".to_owned(),
            source,
        })?;
    for result in results {
        match result {
            Ok(topic) => report.topics_created.push(topic),
            // Another provisioner won the race: the topic is there.
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.topics_existing.push(topic),
            Err((topic, code)) => return Err(ProvisionError::Topic { topic, code }),
        }
    }
    Ok(())
}

async fn existing_topics(
    admin: std::sync::Arc<rdkafka::admin::AdminClient<crate::kafka::Context>>,
) -> Result<HashSet<String>, ProvisionError> {
    // Metadata calls block: keep them off the async workers.
    let names = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|metadata| metadata.topics().iter().map(|t| t.name().to_owned()).collect())
    })
    .await
    .map_err(|e| ProvisionError::Kafka {
        context: format!("fetch metadata: {e}"),
        source: KafkaError::Canceled,
    })?;
    names.map_err(|source| ProvisionError::Kafka {
        context: "fetch metadata".to_owned(),
        source,
    })
}

/// Creates the missing tables and switches on their TTL.
pub async fn provision_tables(
    client: &DynamoClient,
    tables: &Tables,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    for spec in tables.specs() {
        provision_table(client, &spec, report).await?;
    }
    Ok(())
}

fn dynamo_error<E: std::error::Error + 'static>(table: &str, error: E) -> ProvisionError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    ProvisionError::Dynamo {
        table: table.to_owned(),
        message,
    }
}

async fn provision_table(
    client: &DynamoClient,
    spec: &TableSpec,
    report: &mut ProvisionReport,
) -> Result<(), ProvisionError> {
    let exists = match client.describe_table().table_name(&spec.name).send().await {
        Ok(_) => true,
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => false,
        Err(e) => return Err(dynamo_error(&spec.name, e)),
    };
    if exists {
        report.tables_existing.push(spec.name.clone());
    } else {
        let request = spec.create_request(client).map_err(|e| dynamo_error(&spec.name, e))?;
        match request.send().await {
            Ok(_) => report.tables_created.push(spec.name.clone()),
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {
                report.tables_existing.push(spec.name.clone());
            }
            Err(e) => return Err(dynamo_error(&spec.name, e)),
        }
    }
    wait_active(client, &spec.name).await?;

    let ttl = client
        .describe_time_to_live()
        .table_name(&spec.name)
        .send()
        .await
        .map_err(|e| dynamo_error(&spec.name, e))?;
    let status = ttl.time_to_live_description().and_then(|d| d.time_to_live_status());
    if !matches!(status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)) {
        let specification = TimeToLiveSpecification::builder()
            .attribute_name(TTL_ATTRIBUTE)
            .enabled(true)
            .build()
            .map_err(|e| dynamo_error(&spec.name, e))?;
        client
            .update_time_to_live()
            .table_name(&spec.name)
            .time_to_live_specification(specification)
            .send()
            .await
            .map_err(|e| dynamo_error(&spec.name, e))?;
        report.ttl_enabled.push(spec.name.clone());
    }
    Ok(())
}

async fn wait_active(client: &DynamoClient, table: &str) -> Result<(), ProvisionError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let description = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| dynamo_error(table, e))?;
        let status = description.table().and_then(|t| t.table_status());
        if matches!(status, Some(TableStatus::Active)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ProvisionError::Dynamo {
                table: table.to_owned(),
                message: format!("still {status:?} after 120 s"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Provisions every topic and table of a deployment.
pub async fn provision_all(
    kafka: &KafkaConfig,
    topics: &TopicsConfig,
    schemas_topic: &str,
    dynamo: &DynamoClient,
    tables: &Tables,
) -> Result<ProvisionReport, ProvisionError> {
    let mut report = ProvisionReport::default();
    provision_topics(
        kafka,
        &topic_specs(topics, schemas_topic),
        topics.replication_factor,
        &mut report,
    )
    .await?;
    provision_tables(dynamo, tables, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigIssue, Validate};

    #[test]
    fn production_defaults_replicate_three_times_with_two_in_sync() {
        let topics = TopicsConfig::default();
        assert_eq!((topics.replication_factor, topics.min_insync_replicas), (3, 2));
        for spec in topic_specs(&topics, "_schemas") {
            assert_eq!(
                spec.configs.get("min.insync.replicas").map(String::as_str),
                Some("2"),
                "{}",
                spec.name
            );
        }
        // One local broker: nothing to ask of replicas that do not exist.
        let single = TopicsConfig {
            replication_factor: 1,
            min_insync_replicas: 1,
            ..TopicsConfig::default()
        };
        assert!(
            topic_specs(&single, "_schemas")
                .iter()
                .all(|spec| !spec.configs.contains_key("min.insync.replicas"))
        );
    }

    #[test]
    fn min_insync_replicas_may_not_exceed_the_replicas() {
        let topics = TopicsConfig {
            replication_factor: 1,
            ..TopicsConfig::default()
        };
        let mut issues: Vec<ConfigIssue> = Vec::new();
        topics.validate("topics", &mut issues);
        assert!(
            issues
                .iter()
                .any(|i| i.to_string().contains("topics.min_insync_replicas")),
            "{issues:?}"
        );
    }
}
