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

#[cfg(feature = "testkit")]
pub mod testing;

pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::{Deserialize, Serialize};
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::{CommonConfig, ConfigIssue, Validate};
use triggers_core::consume::{Handled, Slot};
use triggers_core::delivery::Outcome;
use triggers_core::event::Event;
use triggers_core::eventstore;
use triggers_core::ops::RunningServer;
use triggers_core::quarantine::{Poison, Quarantine};
use triggers_core::service::{ConsumerService, ConsumerSettings, ServiceError};
use triggers_core::tenancy::{StoreError, TenantCache};

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
    /// Create new events' items 25 to a call: a `BatchExecuteStatement` of
    /// PartiQL `INSERT`s (IAM action `dynamodb:PartiQLInsert`), each refused
    /// when its item exists, instead of one conditional `UpdateItem` per
    /// event. The same write units, a fraction of the calls. Off for a
    /// DynamoDB-compatible store without PartiQL.
    pub batch_creates: bool,
    /// How long an event that is not settled (delivered, dead-lettered,
    /// unmatched, acknowledged), and none of whose deliveries failed, waits
    /// for more of its records before it is written, so that its body and
    /// outcomes become one write. Zero: every
    /// batch is written at once.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// How far ahead (record time) of each other the `events` and
    /// `outcomes` topics are read when the persister is behind, so that an
    /// event's body and outcomes come while it is held
    /// ([`triggers_core::align`]).
    #[serde(with = "humantime_serde")]
    pub align_slack: Duration,
    /// The longest a partition of either topic waits for the other to
    /// catch up (a router far behind). Zero: the topics are read as they
    /// come.
    #[serde(with = "humantime_serde")]
    pub align_max_wait: Duration,
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
            batch_creates: true,
            hold: Duration::from_secs(1),
            align_slack: Duration::from_millis(100),
            align_max_wait: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(20),
            analytics_flush: Duration::from_secs(5),
        }
    }
}

impl PersisterConfig {
    /// The settings every consumer service has.
    pub fn consumer(&self) -> ConsumerSettings<'_> {
        ConsumerSettings {
            service: "persister",
            listen: &self.listen,
            group_id: &self.group_id,
            max_in_flight: self.max_in_flight,
            max_in_flight_limit: 10_000,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

impl Validate for PersisterConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        self.consumer().validate(prefix, issues);
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
        if self.hold > Duration::from_secs(10) {
            issues.push(ConfigIssue::new(format!("{prefix}.hold"), "must be at most 10s"));
        }
        if self.align_slack > Duration::from_secs(60) {
            issues.push(ConfigIssue::new(format!("{prefix}.align_slack"), "must be at most 1m"));
        }
        if self.align_max_wait > Duration::from_secs(300) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.align_max_wait"),
                "must be at most 5m",
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
    }
}

/// Events held per `max_in_flight` slot at most: at three records each,
/// well within the consumer's bound on records that only wait
/// ([`triggers_core::consume::WAITING_FACTOR`] per slot).
const MAX_HELD_PER_SLOT: usize = 4;

/// The persister could not start.
pub type PersisterError = ServiceError;

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

    /// Writes one record's effect; the record gives up its consumer `slot`
    /// while the writer holds it.
    async fn handle(&self, message: OwnedMessage, slot: Slot) -> Handled {
        let shutdown = slot.shutdown();
        if message.payload().is_none() {
            return Handled::Done;
        }
        let (record, counter) = if message.topic() == self.events_topic {
            let event = match self.decode::<Event>(Contract::Event, &message, shutdown).await {
                Ok(event) => event,
                Err(handled) => return handled,
            };
            let expires_at = match self.expiry(&event.tenant, event.received_at, shutdown).await {
                Ok(expires_at) => expires_at,
                Err(handled) => return handled,
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
            let expires_at = match self.expiry(&outcome.tenant, outcome.at, shutdown).await {
                Ok(expires_at) => expires_at,
                Err(handled) => return handled,
            };
            (
                Record::Outcome(Box::new(outcome), expires_at),
                "triggers_persister_outcomes_total",
            )
        };
        let handled = self.writer.write(record, slot).await;
        if handled == Handled::Done {
            metrics::counter!(counter).increment(1);
        }
        handled
    }

    /// The expiry of the items of a record received at `at`, from its
    /// tenant's retention. Otherwise what became of the record:
    /// `Err(Done)` when the tenant does not exist (its records are not
    /// stored), `Err(Stopped)` on shutdown, `Err(Poison)` when the lookup
    /// can never succeed. Store outages are waited out.
    async fn expiry(
        &self,
        tenant: &triggers_core::ids::TenantId,
        at: i64,
        shutdown: &CancellationToken,
    ) -> Result<i64, Handled> {
        let looked_up =
            triggers_core::consume::retry_transient("tenant lookup", shutdown, StoreError::is_retriable, || {
                self.tenants.get(tenant)
            })
            .await;
        let tenant = match looked_up {
            None => return Err(Handled::Stopped),
            Some(Err(e)) => return Err(Handled::Poison(Poison::new("tenant_lookup_failed", e.to_string()))),
            Some(Ok(None)) => {
                metrics::counter!("triggers_persister_skipped_total", "reason" => "unknown_tenant").increment(1);
                return Err(Handled::Done);
            }
            Some(Ok(Some(tenant))) => tenant,
        };
        let retention = tenant.retention_days.map_or(self.default_retention, |days| {
            Duration::from_secs(u64::from(days) * 86_400)
        });
        Ok(eventstore::expiry(at, retention))
    }
}

/// Starts the persister; it runs until `shutdown` is cancelled, then
/// finishes its writes in flight, stores and commits its offsets.
pub async fn start(
    common: &CommonConfig,
    config: &PersisterConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, PersisterError> {
    let service = ConsumerService::connect(common, config.consumer()).await?;
    let tally = triggers_core::analytics::Tally::start(
        service.dynamo.clone(),
        service.tables.analytics.clone(),
        config.analytics_flush,
        shutdown.clone(),
    );
    let items = triggers_core::dynamo::ItemClient::new(&common.dynamodb, &service.dynamo).await?;
    let writer = Writer::start(
        writer::Clients {
            sdk: service.dynamo.clone(),
            items,
        },
        service.tables.clone(),
        tally.clone(),
        writer::Batching {
            max_batch: config.max_batch,
            batch_wait: config.batch_wait,
            batch_creates: config.batch_creates,
            writes_in_flight: config.write_concurrency,
            hold: config.hold,
            // Held records stay in flight for the consumer but free their
            // slots (the outcomes that settle them must still come in):
            // they count against its bound on waiting records,
            // `max_in_flight` × WAITING_FACTOR. An event holds two or
            // three records.
            max_held: config.max_in_flight.saturating_mul(MAX_HELD_PER_SLOT).max(1),
        },
        shutdown.clone(),
    );
    let persister = Arc::new(Persister {
        writer,
        codec: service.codec.clone(),
        tenants: TenantCache::new(service.dynamo.clone(), service.tables.clone()),
        events_topic: common.topics.events(),
        default_retention: common.dynamodb.retention,
    });
    let consumer = service.group_consumer(&[&common.topics.events(), &common.topics.outcomes()])?;
    let mut limits = config.consumer().limits();
    if !config.align_max_wait.is_zero() {
        limits = limits.aligned(triggers_core::align::Align {
            topics: [common.topics.events(), common.topics.outcomes()],
            slack: config.align_slack,
            // A topic quiet this long is at its end (or stopped).
            quiet: Duration::from_secs(1),
            max_wait: config.align_max_wait,
        });
    }
    let pacer = triggers_core::pacing::Pacer::new(&common.kafka);
    let quarantine = Quarantine::lazy(&common.kafka, common.topics.quarantine(), "persister");
    let work = async move {
        triggers_core::consume::run(consumer, pacer, limits, quarantine, shutdown, move |message, slot| {
            let persister = persister.clone();
            async move { persister.handle(message, slot).await }
        })
        .await;
        // Every write has settled: count what is left.
        tally.close().await;
        tracing::info!("persister stopped");
        Ok(())
    };
    service.serve(work)
}
