//! Keeps every event, every delivery attempt and every event's status in
//! DynamoDB (consumer group `triggers-persister`, reading `<ns>.events` and
//! `<ns>.outcomes`).
//!
//! Guarantee: at-least-once, idempotent effects. An offset is stored only
//! after DynamoDB confirmed the write it covers; writes are upserts and
//! status changes only move forward, so a replayed or reordered record never
//! regresses an event. Events of tenants that do not exist (erased) are not
//! stored. Large payloads are compressed and split across items.
//!
//! Writes are batched and coalesced per event ([`writer`]).
#![forbid(unsafe_code)]

pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use serde::{Deserialize, Serialize};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::{CommonConfig, ConfigIssue, Validate, validate_listen};
use triggers_core::consume::{Handled, Limits};
use triggers_core::delivery::Outcome;
use triggers_core::dynamo::Tables;
use triggers_core::event::Event;
use triggers_core::eventstore;
use triggers_core::ops::{self, Readiness, RunningServer};
use triggers_core::quarantine::{Poison, Quarantine};
use triggers_core::tenancy::TenantCache;

use crate::writer::{Record, Writer};

/// The `[persister]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersisterConfig {
    /// Where the operations endpoints listen.
    pub listen: String,
    /// The consumer group.
    pub group_id: String,
    /// Records being written at once (across batches).
    pub max_in_flight: usize,
    /// Records per batch at most.
    pub max_batch: usize,
    /// How long a batch gathers records before it is written.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// DynamoDB writes in flight at once.
    pub write_concurrency: usize,
    /// How long shutdown waits for writes in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the analytics counters are added to their table.
    #[serde(with = "humantime_serde")]
    pub analytics_flush: Duration,
}

impl Default for PersisterConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9103".to_owned(),
            group_id: "triggers-persister".to_owned(),
            max_in_flight: 1024,
            max_batch: 256,
            batch_wait: Duration::from_millis(10),
            write_concurrency: 64,
            shutdown_grace: Duration::from_secs(20),
            analytics_flush: Duration::from_secs(5),
        }
    }
}

impl Validate for PersisterConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        validate_listen(prefix, "listen", &self.listen, issues);
        if self.group_id.trim().is_empty() {
            issues.push(ConfigIssue::new(format!("{prefix}.group_id"), "must not be empty"));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight"),
                "must be between 1 and 10000",
            ));
        }
        if !(1..=5_000).contains(&self.max_batch) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_batch"),
                "must be between 1 and 5000",
            ));
        }
        if !(1..=1_000).contains(&self.write_concurrency) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.write_concurrency"),
                "must be between 1 and 1000",
            ));
        }
        if self.batch_wait > Duration::from_secs(1) {
            issues.push(ConfigIssue::new(format!("{prefix}.batch_wait"), "must be at most 1s"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.analytics_flush) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.analytics_flush"),
                "must be between 100ms and 5m",
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

/// The persister could not start.
#[derive(Debug, thiserror::Error)]
pub enum PersisterError {
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
}

struct Persister {
    writer: Writer,
    codec: AvroCodec,
    tenants: TenantCache,
    events_topic: String,
    default_retention: Duration,
}

impl Persister {
    /// Decodes a record: `Err(Stopped)` on shutdown, `Err(Poison)` when it
    /// never will decode, else the value. Registry outages are waited out.
    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        contract: Contract,
        message: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> Result<T, Handled> {
        let payload = message.payload().unwrap_or_default();
        let decoded = triggers_core::consume::retry("decode", shutdown, || async {
            match self.codec.decode::<T>(contract, payload).await {
                Ok(value) => Ok(Ok(value)),
                Err(e) if e.is_retriable() => Err(e),
                Err(e) => Ok(Err(Handled::Poison(Poison::new("undecodable", e.to_string())))),
            }
        })
        .await;
        decoded.unwrap_or(Err(Handled::Stopped))
    }

    /// Writes one record's effect.
    async fn handle(&self, message: OwnedMessage, shutdown: &CancellationToken) -> Handled {
        if message.payload().is_none() {
            return Handled::Done;
        }
        let (record, counter) = if message.topic() == self.events_topic {
            let event = match self.decode::<Event>(Contract::Event, &message, shutdown).await {
                Ok(event) => event,
                Err(handled) => return handled,
            };
            let Some(expires_at) = self.expiry(&event.tenant, event.received_at, shutdown).await else {
                return Handled::Stopped;
            };
            let Some(expires_at) = expires_at else {
                return Handled::Done;
            };
            (
                Record::Event(Box::new(event), expires_at),
                "triggers_persister_events_total",
            )
        } else {
            let outcome = match self.decode::<Outcome>(Contract::Outcome, &message, shutdown).await {
                Ok(outcome) => outcome,
                Err(handled) => return handled,
            };
            let Some(expires_at) = self.expiry(&outcome.tenant, outcome.at, shutdown).await else {
                return Handled::Stopped;
            };
            let Some(expires_at) = expires_at else {
                return Handled::Done;
            };
            (
                Record::Outcome(Box::new(outcome), expires_at),
                "triggers_persister_outcomes_total",
            )
        };
        let handled = self.writer.write(record).await;
        if handled == Handled::Done {
            metrics::counter!(counter).increment(1);
        }
        handled
    }

    /// `None` on shutdown; `Some(None)` when the tenant does not exist (its
    /// records are not stored); else the expiry of items received at `at`.
    async fn expiry(
        &self,
        tenant: &triggers_core::ids::TenantId,
        at: i64,
        shutdown: &CancellationToken,
    ) -> Option<Option<i64>> {
        let tenant = triggers_core::consume::retry("tenant lookup", shutdown, || self.tenants.get(tenant)).await?;
        let Some(tenant) = tenant else {
            metrics::counter!("triggers_persister_skipped_total", "reason" => "unknown_tenant").increment(1);
            return Some(None);
        };
        let retention = tenant.retention_days.map_or(self.default_retention, |days| {
            Duration::from_secs(u64::from(days) * 86_400)
        });
        Some(Some(eventstore::expiry(at, retention)))
    }
}

/// Starts the persister; it runs until `shutdown` is cancelled, then
/// finishes its writes in flight, stores and commits its offsets.
pub async fn start(
    common: &CommonConfig,
    config: &PersisterConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, PersisterError> {
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let tally = triggers_core::analytics::Tally::start(
        dynamo.clone(),
        tables.analytics.clone(),
        config.analytics_flush,
        shutdown.clone(),
    );
    let writer = Writer::start(
        dynamo.clone(),
        tables.clone(),
        tally.clone(),
        config.max_batch,
        config.batch_wait,
        config.write_concurrency,
        shutdown.clone(),
    );
    let persister = Arc::new(Persister {
        writer,
        codec: AvroCodec::new(&common.schema_registry)?,
        tenants: TenantCache::new(dynamo.clone(), tables),
        events_topic: common.topics.events(),
        default_retention: common.dynamodb.retention,
    });
    let consumer = triggers_core::kafka::consumer(
        &common.kafka,
        "persister",
        &config.group_id,
        triggers_core::kafka::ConsumerLog::in_group("persister", &config.group_id),
    )?;
    consumer.subscribe(&[&common.topics.events(), &common.topics.outcomes()])?;
    let readiness = Readiness::new()
        .with("kafka", ops::kafka_probe(&common.kafka))
        .with("dynamodb", ops::dynamo_probe(&dynamo));
    let limits = Limits::new(config.max_in_flight, config.shutdown_grace);
    let pacer = triggers_core::pacing::Pacer::new(&common.kafka);
    let quarantine = Quarantine::lazy(&common.kafka, common.topics.quarantine(), "persister");
    let work = async move {
        triggers_core::consume::run(&consumer, pacer, limits, quarantine, shutdown, move |message, slot| {
            let persister = persister.clone();
            async move { persister.handle(message, slot.shutdown()).await }
        })
        .await;
        // Every write has settled: count what is left.
        tally.close().await;
        tracing::info!("persister stopped");
        Ok(())
    };
    let server = ops::serve_during(&config.listen, readiness, work).map_err(|source| PersisterError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %server.addr, "persister listening");
    Ok(server)
}
