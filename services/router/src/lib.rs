//! Routes every event on `<ns>.events` to the subscriptions that match it
//! (consumer group `triggers-router`): one `Delivery` per matching active
//! subscription on `<ns>.deliveries` (keyed by subscription, with a delivery
//! id derived from the event and the subscription, so routing an event again
//! produces the same ids), and a `routed` or `unmatched` outcome on
//! `<ns>.outcomes`.
//!
//! The subscriptions come from the compacted topic `<ns>.subscriptions`, read
//! to its end before the first event is routed and followed live after.
//!
//! Guarantee: at-least-once. An event's offset is stored only after Kafka
//! acknowledged every record it caused; a crash re-routes what was not
//! stored, with the same delivery ids. Records that cannot be decoded go to
//! `<ns>.events.invalid` and never stop the router.
#![forbid(unsafe_code)]

pub mod pipeline;

pub use triggers_core::subscription_table as table;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};
use triggers_core::CancellationToken;
use triggers_core::codec::AvroCodec;
use triggers_core::config::{CommonConfig, ConfigIssue, Validate, validate_listen};
use triggers_core::dynamo::Tables;
use triggers_core::ops::{self, Readiness, RunningServer};

/// The `[router]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Where the operations endpoints listen.
    pub listen: String,
    /// The consumer group.
    pub group_id: String,
    /// Events whose records may be awaited at once.
    pub max_in_flight: usize,
    /// Bytes of delivery and outcome records awaited at once (fan-out
    /// multiplies an event: one record per matching subscription).
    pub max_in_flight_bytes: usize,
    /// How long start-up may take to read the subscription table.
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
    /// How long shutdown waits for work in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9102".to_owned(),
            group_id: "triggers-router".to_owned(),
            max_in_flight: 2_000,
            max_in_flight_bytes: 256 * 1024 * 1024,
            catch_up_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl Validate for RouterConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if self.max_in_flight_bytes < 1024 * 1024 {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight_bytes"),
                "must be at least 1 MiB",
            ));
        }
        validate_listen(prefix, "listen", &self.listen, issues);
        if self.group_id.trim().is_empty() {
            issues.push(ConfigIssue::new(format!("{prefix}.group_id"), "must not be empty"));
        }
        if !(1..=100_000).contains(&self.max_in_flight) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight"),
                "must be between 1 and 100000",
            ));
        }
        if self.catch_up_timeout < Duration::from_secs(1) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.catch_up_timeout"),
                "must be at least 1s",
            ));
        }
        if self.shutdown_grace > Duration::from_secs(300) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.shutdown_grace"),
                "must be at most 5m",
            ));
        }
    }
}

/// The router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The operations server could not bind.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Kafka refused.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] triggers_core::kafka::ClientError),
    /// The codec could not be built.
    #[error(transparent)]
    Codec(#[from] triggers_core::codec::CodecError),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// Starts the router: reads the subscription table to its end, then routes
/// until `shutdown` is cancelled, drains, stores its offsets and stops.
pub async fn start(
    common: &CommonConfig,
    config: &RouterConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, RouterError> {
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let codec = AvroCodec::new(&common.schema_registry)?;
    let follower = triggers_core::follower::Follower::start(
        &common.kafka,
        &common.topics.subscriptions(),
        codec.clone(),
        "router",
        shutdown.clone(),
    )
    .await
    .map_err(|e| RouterError::Internal(e.to_string()))?;
    follower
        .caught_up(config.catch_up_timeout)
        .await
        .map_err(|e| RouterError::Internal(e.to_string()))?;
    tracing::info!(
        subscriptions = follower.table.read().len(),
        "subscription table caught up"
    );

    let consumer = triggers_core::kafka::consumer(
        &common.kafka,
        "router",
        &config.group_id,
        triggers_core::kafka::ConsumerLog::in_group("router", &config.group_id),
    )?;
    consumer.subscribe(&[&common.topics.events()])?;
    let pipeline = pipeline::Pipeline {
        consumer: Arc::new(consumer),
        producer: triggers_core::kafka::producer(&common.kafka, "router")?,
        codec,
        topics: common.topics.clone(),
        follower,
        tenants: triggers_core::tenancy::TenantCache::new(dynamo.clone(), tables),
        max_in_flight: config.max_in_flight,
        pacer: triggers_core::pacing::Pacer::new(&common.kafka),
        max_record_bytes: common.kafka.max_record_bytes,
        max_in_flight_bytes: config.max_in_flight_bytes,
    };
    let readiness = Readiness::new()
        .with("kafka", ops::kafka_probe(&common.kafka))
        .with("dynamodb", ops::dynamo_probe(&dynamo));
    let grace = config.shutdown_grace;
    let routing = async move {
        pipeline.run(shutdown, grace).await;
        Ok(())
    };
    let server = ops::serve_during(&config.listen, readiness, routing).map_err(|source| RouterError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %server.addr, "router listening");
    Ok(server)
}
