//! Delivers signed webhooks (consumer group `triggers-deliverer` on
//! `<ns>.deliveries`, and one group per retry tier on
//! `<ns>.deliveries.retry.<tier>`).
//!
//! Each delivery is POSTed to its subscription's `target_url` with the event
//! as JSON and Standard Webhooks headers (`webhook-id` = the event id). A 2xx
//! is `delivered`. 410 Gone disables the subscription at once (REST Hooks).
//! Any other failure (timeout, connection error, 5xx, 408, 429, other non-2xx)
//! goes to the next retry tier with a `not_before` time — at least the tier's
//! delay (with ±10% jitter) and at least what `Retry-After` asks on 429/503 —
//! and after the last tier to `<ns>.deliveries.dlq`, `dead_lettered`. Every
//! attempt writes an outcome. Acknowledged events (unless replayed), and
//! deliveries to deleted subscriptions, are skipped; deliveries to paused or
//! disabled subscriptions are held as dead letters (never counted as
//! delivered) for a redrive once the subscription is active again.
//! Outbound requests pass the SSRF guard.
//!
//! Flow control, per subscription:
//! - **Cap.** At most `max_in_flight_per_subscription` attempts at once. A
//!   delivery finding its subscription's slots busy for `park_after` is
//!   *parked*: put on the first retry tier for `park_delay`, not counted as
//!   an attempt, so it frees its consumer slot and one slow endpoint cannot
//!   starve the rest.
//! - **Ordered (FIFO).** Deliveries take turns in the order they were read
//!   (they are keyed by subscription, so that is the partition's order), and
//!   a failed attempt is retried in place on the same schedule: nothing later
//!   overtakes it. The price is head-of-line blocking for that subscription,
//!   and the partition's stored offset waits for it.
//! - **Batched.** Deliveries join the subscription's open batch, sent as one
//!   JSON array (one signature, `webhook-id` = a `bat_…` id) when it holds
//!   `max_events` or after `max_wait_ms`; each event gets its own outcome and,
//!   on failure, its own retry. Replays are sent alone (they are marked).
//!
//! Guarantee: at-least-once. An offset is stored only after the attempt's
//! outcome and its follow-up record (retry or DLQ) are acknowledged by Kafka;
//! a crash repeats attempts, with the same `webhook-id`, for receivers to
//! deduplicate.
//!
//! Modules, in the order a delivery meets them: [`config`]; `dispatch`
//! (consume, wait for `not_before`, check the subscription, then deliver
//! alone, in a FIFO [`lanes`] turn, or in a [`batch`]); [`attempt`] (the
//! signed request, [`signature`], through the [`ssrf`] guard); [`schedule`]
//! (the verdict and the next tier); `settle` (the outcome and the retry or
//! DLQ record, produced together; 410 disables); [`error`]. This file wires
//! them up in [`start`].
#![forbid(unsafe_code)]

pub mod attempt;
pub mod batch;
mod checks;
pub mod config;
mod dispatch;
pub mod error;
pub mod lanes;
pub mod schedule;
mod settle;
pub mod signature;
pub mod ssrf;
mod state;

use std::sync::Arc;
use std::time::Duration;

use triggers_core::CancellationToken;
use triggers_core::config::CommonConfig;
use triggers_core::ops::RunningServer;
use triggers_core::quarantine::Quarantine;
use triggers_core::service::{ConsumerService, ServiceError};

use crate::batch::Batcher;
use crate::lanes::{Lanes, Slots};

pub use crate::attempt::{AttemptResult, webhook_client};
pub use crate::config::DelivererConfig;
pub use crate::error::DelivererError;
pub use crate::schedule::{MAX_RETRY_AFTER, Verdict, next_attempt, verdict};
use crate::state::Deliverer;

/// How long start-up may take to read the subscription table.
const FOLLOWER_CATCH_UP: Duration = Duration::from_secs(120);

/// The least `fetch.wait.max.ms` of the retry tiers' consumers.
const TIER_FETCH_WAIT: Duration = Duration::from_millis(250);

/// Starts the deliverer: reads the subscription table to its end, then
/// delivers from `<ns>.deliveries` and every retry tier until `shutdown`.
pub async fn start(
    common: &CommonConfig,
    config: &DelivererConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, DelivererError> {
    let allow = ssrf::AllowList::parse(&config.allow_networks)
        .map_err(DelivererError::AllowList)?
        .restricted(config.only_allowed_networks);
    let http = webhook_client(config, &allow)?;
    let service = ConsumerService::connect(common, config.consumer()).await?;
    let follower = service.follow_subscriptions(&shutdown, FOLLOWER_CATCH_UP).await?;
    let deliverer = Arc::new(Deliverer {
        http,
        allow,
        follower,
        producer: triggers_core::kafka::producer(&common.kafka, "deliverer").map_err(ServiceError::from)?,
        codec: service.codec.clone(),
        topics: common.topics.clone(),
        retry_topics: common.topics.retries(),
        dynamo: service.dynamo.clone(),
        tables: service.tables.clone(),
        checks: checks::Checks::start(service.dynamo.clone(), service.tables.clone()),
        max_response_bytes: 4096,
        lanes: Lanes::default(),
        slots: Slots::new(config.max_in_flight_per_subscription),
        batcher: Batcher::default(),
        park_after: config.park_after,
        park_delay: config.park_delay,
        shutdown: shutdown.clone(),
    });
    // Retry tiers wait seconds at least: their fetches need not be quick,
    // which spares the broker most of the polling of eight consumers. Paced
    // (idle) tiers look for records every tenth of their delay (at most 10 s
    // apart), which keeps a retry's timing within a tenth.
    let tier_kafka = |tier: Duration| {
        let mut kafka = common.kafka.clone();
        kafka.fetch_wait_max = kafka.fetch_wait_max.max(TIER_FETCH_WAIT);
        if !kafka.idle_fetch_interval.is_zero() {
            kafka.idle_fetch_interval = kafka.idle_fetch_interval.max(tier / 10).min(Duration::from_secs(10));
        }
        kafka
    };
    let mut groups = vec![(
        config.group_id.clone(),
        common.topics.deliveries(),
        common.kafka.clone(),
    )];
    for (tier, topic) in common.topics.retry_tiers.iter().zip(common.topics.retries()) {
        groups.push((
            format!("{}-retry-{}", config.group_id, triggers_core::config::tier_name(*tier)),
            topic,
            tier_kafka(*tier),
        ));
    }
    let mut workers = Vec::new();
    for (group, topic, kafka) in groups {
        let consumer = service.consumer(&kafka, &group, &[&topic])?;
        let pacer = triggers_core::pacing::Pacer::new(&kafka);
        let limits = config.consumer().limits();
        let quarantine = Quarantine::new(deliverer.producer.clone(), common.topics.quarantine(), "deliverer");
        let (deliverer, shutdown) = (deliverer.clone(), shutdown.clone());
        workers.push(tokio::spawn(async move {
            triggers_core::consume::run(consumer, pacer, limits, quarantine, shutdown, move |message, slot| {
                let deliverer = deliverer.clone();
                let turn = deliverer.turn(&message);
                async move { deliverer.handle(message, turn, slot).await }
            })
            .await;
        }));
    }
    let producer = deliverer.producer.clone();
    let work = async move {
        for worker in workers {
            worker.await.map_err(std::io::Error::other)?;
        }
        let flushed =
            tokio::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)))
                .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("deliverer producer did not flush");
        }
        tracing::info!("deliverer stopped");
        Ok(())
    };
    Ok(service.serve(work)?)
}
