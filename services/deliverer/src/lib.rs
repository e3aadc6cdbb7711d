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
#![forbid(unsafe_code)]

pub mod batch;
pub mod lanes;
pub mod signature;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::Instrument;
use triggers_core::CancellationToken;
use triggers_core::codec::{AvroCodec, Contract};
use triggers_core::config::{CommonConfig, ConfigIssue, TopicsConfig, Validate, validate_listen};
use triggers_core::consume::{Handled, Limits, Slot};
use triggers_core::delivery::{Delivery, Outcome, OutcomeKind};
use triggers_core::dynamo::Tables;
use triggers_core::event::{now_ms, rfc3339};
use triggers_core::follower::Follower;
use triggers_core::ids::{BatchId, SubscriptionId};
use triggers_core::kafka::KafkaProducer;
use triggers_core::ops::{self, Readiness, RunningServer};
use triggers_core::quarantine::{Poison, Quarantine};
use triggers_core::subscription::{self, BatchSettings, Subscription, SubscriptionStatus};

use crate::batch::{Batcher, Member};
use crate::lanes::{Lanes, Slots, Turn};

/// The `[deliverer]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelivererConfig {
    /// Where the operations endpoints listen.
    pub listen: String,
    /// The consumer group of `<ns>.deliveries`; tiers use `<group>-retry-<tier>`.
    pub group_id: String,
    /// Deliveries in flight per consumer.
    pub max_in_flight: usize,
    /// Attempts in flight per subscription. A delivery that finds them all
    /// busy waits up to `park_after` for one, then waits on the first retry
    /// tier (`park_delay`) instead of holding a consumer slot.
    pub max_in_flight_per_subscription: usize,
    /// How long a delivery waits for a slot of its subscription before it is
    /// parked.
    #[serde(with = "humantime_serde")]
    pub park_after: Duration,
    /// How long a delivery waits when its subscription has no free slot.
    #[serde(with = "humantime_serde")]
    pub park_delay: Duration,
    /// The longest a webhook request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Networks webhooks may reach although private or loopback
    /// (`127.0.0.0/8` locally). Empty in production.
    pub allow_networks: Vec<String>,
    /// How long shutdown waits for attempts in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DelivererConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9104".to_owned(),
            group_id: "triggers-deliverer".to_owned(),
            max_in_flight: 256,
            max_in_flight_per_subscription: 128,
            park_after: Duration::from_millis(100),
            park_delay: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            allow_networks: Vec::new(),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl Validate for DelivererConfig {
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
        if !(1..=self.max_in_flight.max(1)).contains(&self.max_in_flight_per_subscription) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.max_in_flight_per_subscription"),
                "must be between 1 and max_in_flight",
            ));
        }
        if self.park_after > Duration::from_secs(10) {
            issues.push(ConfigIssue::new(format!("{prefix}.park_after"), "must be at most 10s"));
        }
        if self.park_delay < Duration::from_millis(10) || self.park_delay > Duration::from_secs(60) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.park_delay"),
                "must be between 10ms and 1m",
            ));
        }
        if self.request_timeout < Duration::from_millis(100) || self.request_timeout > Duration::from_secs(120) {
            issues.push(ConfigIssue::new(
                format!("{prefix}.request_timeout"),
                "must be between 100ms and 2m",
            ));
        }
        if let Err(e) = ssrf::AllowList::parse(&self.allow_networks) {
            issues.push(ConfigIssue::new(format!("{prefix}.allow_networks"), e));
        }
    }
}

/// The deliverer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DelivererError {
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

/// What one HTTP attempt gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The status, if the endpoint answered.
    pub status: Option<u16>,
    /// The start of the body (at most 4 KB).
    pub excerpt: Option<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// `Retry-After` in seconds, on 429 and 503.
    pub retry_after: Option<u64>,
    /// How long it took.
    pub latency_ms: i64,
}

/// Why a delivery does not go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Nothing to deliver to or nothing wanted (the subscription is gone,
    /// the event acknowledged or deleted): a `skipped` outcome.
    Skip(&'static str),
    /// The subscription is paused or disabled: the delivery is held as a
    /// dead letter, to be redriven once it is active again.
    Hold(&'static str),
}

/// How an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 410 Gone: disable the subscription.
    Gone,
    /// Anything else: retry later.
    Retry,
}

/// The `status_class` label of a response: `2xx` … `5xx`, or `none` when
/// the endpoint did not answer (timeout, connection refused, blocked).
fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// The verdict of an attempt.
pub fn verdict(result: &AttemptResult) -> Verdict {
    match result.status {
        Some(status) if (200..300).contains(&status) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        _ => Verdict::Retry,
    }
}

/// When the next attempt after a failed one may run, and on which tier;
/// `None` when the tiers are exhausted (dead-letter). `position` is the
/// failed attempt's place in its round ([`Delivery::round_position`]): 0 for
/// the first attempt, whose retry goes to the first tier.
pub fn next_attempt(
    tiers: &[Duration],
    position: i32,
    retry_after: Option<u64>,
    now: i64,
    jitter: f64,
) -> Option<(usize, i64)> {
    let tier = usize::try_from(position).ok()?;
    let delay = tiers.get(tier)?;
    let jittered = delay.as_secs_f64() * (1.0 + jitter);
    let asked = retry_after.unwrap_or(0).min(MAX_RETRY_AFTER.as_secs()) as f64;
    let wait = jittered.max(asked);
    Some((tier, now.saturating_add((wait * 1000.0) as i64)))
}

/// The longest `Retry-After` honoured: an endpoint asking for more (by
/// mistake, or `3000000000`) is retried after an hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);
/// The jitter of retry delays, either way.
const MAX_JITTER: f64 = 0.1;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Deliveries of events younger than this skip the acknowledgement check on
/// their first attempt.
const FRESH_MS: i64 = 5_000;
/// The least `fetch.wait.max.ms` of the retry tiers' consumers.
const TIER_FETCH_WAIT: Duration = Duration::from_millis(250);

struct Deliverer {
    http: reqwest::Client,
    allow: ssrf::AllowList,
    follower: Follower,
    producer: KafkaProducer,
    codec: AvroCodec,
    topics: TopicsConfig,
    /// The retry tiers' topics, shortest first.
    retry_topics: Vec<String>,
    dynamo: aws_sdk_dynamodb::Client,
    tables: Tables,
    max_response_bytes: usize,
    lanes: Lanes,
    slots: Slots,
    batcher: Batcher,
    park_after: Duration,
    park_delay: Duration,
    /// Ends waits for the registry.
    shutdown: CancellationToken,
}

struct Out {
    topic: String,
    key: String,
    payload: Vec<u8>,
}

/// A record ready to produce, or why the attempt's records cannot be.
type Encoded = Result<Out, Handled>;

/// The webhook body of one event.
fn event_body(event: &triggers_core::event::Event) -> serde_json::Value {
    json!({
        "id": event.id.to_string(), "type": event.event_type, "source": event.source,
        "specversion": "1.0", "time": rfc3339(event.time), "subject": event.subject,
        "datacontenttype": event.datacontenttype, "data": event.data,
    })
}

fn elapsed_ms(started: std::time::Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// Sleeps until `at` (ms since the epoch); `false` if shutdown came first.
async fn sleep_until(at: i64, shutdown: &CancellationToken) -> bool {
    let wait = at - now_ms();
    if wait <= 0 {
        return true;
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())) => true,
    }
}

/// How long a delivery for a subscription this deliverer has not seen yet
/// waits for its follower to read the subscription topic to its end (the
/// router saw the subscription first).
const FOLLOWER_WAIT: Duration = Duration::from_secs(10);

impl Deliverer {
    /// The current version of a subscription.
    fn subscription(&self, id: &SubscriptionId) -> Option<Subscription> {
        self.follower.table.read().get(id).map(|c| c.subscription.clone())
    }

    /// A turn in the subscription's FIFO lane if the record is for an ordered
    /// subscription. Called as the record is read, so turns follow the log.
    fn turn(&self, message: &OwnedMessage) -> Option<Turn> {
        let id: SubscriptionId = std::str::from_utf8(message.key()?).ok()?.parse().ok()?;
        let ordered = self.follower.table.read().get(&id)?.subscription.ordered;
        ordered.then(|| self.lanes.enqueue(id))
    }

    /// The longest a record of `topic` may wait for its `not_before` in its
    /// handler (holding a consumer slot): its tier's delay and jitter; none
    /// on the main topic.
    fn allowance(&self, topic: &str) -> i64 {
        self.retry_topics
            .iter()
            .position(|t| t == topic)
            .and_then(|tier| self.topics.retry_tiers.get(tier))
            .map_or(0, |delay| millis(delay.mul_f64(1.0 + MAX_JITTER)))
    }

    /// A delivery due in more than its topic's allowance (a long
    /// `Retry-After`) waits on the longest tier no longer than its wait, or,
    /// if that is its own tier, for one tier delay and then again on it; it
    /// is not an attempt. `None`: it may wait here.
    async fn defer(
        &self,
        message: &OwnedMessage,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> Option<Handled> {
        let wait = delivery.not_before - now_ms();
        let allowance = self.allowance(message.topic());
        if wait <= allowance || self.retry_topics.is_empty() {
            return None;
        }
        let tier = self
            .topics
            .retry_tiers
            .iter()
            .rposition(|delay| millis(*delay) <= wait)
            .unwrap_or(0);
        let topic = &self.retry_topics[tier];
        if topic == message.topic() && !sleep_until(now_ms() + allowance, shutdown).await {
            return Some(Handled::Stopped);
        }
        metrics::counter!("triggers_deliverer_deferred_total").increment(1);
        let key = delivery.subscription_id.to_string();
        let record = self.encode(topic, Contract::Delivery, key, delivery).await;
        Some(self.produce(vec![record], shutdown).await)
    }

    async fn handle(self: &Arc<Self>, message: OwnedMessage, turn: Option<Turn>, slot: Slot) -> Handled {
        let shutdown = slot.shutdown();
        let Some(payload) = message.payload() else {
            return Handled::Done;
        };
        let decoded = triggers_core::consume::retry("decode delivery", shutdown, || async {
            match self.codec.decode::<Delivery>(Contract::Delivery, payload).await {
                Ok(d) => Ok(Ok(d)),
                Err(e) if e.is_retriable() => Err(e),
                Err(e) => Ok(Err(Poison::new("undecodable", e.to_string()))),
            }
        })
        .await;
        let delivery = match decoded {
            None => return Handled::Stopped,
            Some(Err(poison)) => return Handled::Poison(poison),
            Some(Ok(delivery)) => delivery,
        };
        if let Some(deferred) = self.defer(&message, &delivery, shutdown).await {
            return deferred;
        }
        // Not before its time (at most the topic's allowance).
        if !sleep_until(delivery.not_before, shutdown).await {
            return Handled::Stopped;
        }
        let traceparent = triggers_core::kafka::trace_headers::traceparent(message.headers()).map(<[u8]>::to_vec);
        match turn {
            Some(mut turn) => {
                // Waiting for the lane holds no consumer slot: a blocked
                // ordered subscription stalls itself, not the consumer.
                slot.free();
                tokio::select! {
                    _ = shutdown.cancelled() => return Handled::Stopped,
                    _ = turn.wait() => {}
                }
                // The turn is held (and the lane waits) until this returns.
                self.deliver_in_order(delivery, traceparent, &slot).await
            }
            None => self.deliver(delivery, traceparent, &slot).await,
        }
    }

    /// The subscription `id` if it takes deliveries now, or why not.
    fn active(&self, id: &SubscriptionId) -> Result<Subscription, Refusal> {
        match self.subscription(id) {
            None => Err(Refusal::Skip("the subscription no longer exists")),
            Some(s) if s.status == SubscriptionStatus::Paused => Err(Refusal::Hold("the subscription is paused")),
            Some(s) if s.status == SubscriptionStatus::Disabled => Err(Refusal::Hold("the subscription is disabled")),
            Some(s) => Ok(s),
        }
    }

    /// The subscription to deliver to, or why the delivery does not go out.
    async fn usable(&self, delivery: &Delivery) -> Result<Subscription, Refusal> {
        self.follower.knows(&delivery.subscription_id, FOLLOWER_WAIT).await;
        let subscription = self.active(&delivery.subscription_id)?;
        // A replay is an explicit request: it goes out even if acknowledged.
        // A first attempt of a fresh event skips the check (a DynamoDB read
        // per delivery): an acknowledgement racing the first webhook is
        // at-least-once anyway; retries and backlogged events are checked.
        let fresh = delivery.round_position() == 0 && now_ms() - delivery.event.received_at < FRESH_MS;
        if !delivery.replay
            && !fresh
            && triggers_core::eventstore::deliveries_stopped(
                &self.dynamo,
                &self.tables,
                &delivery.tenant,
                &delivery.event.id,
            )
            .await
            .unwrap_or(false)
        {
            return Err(Refusal::Skip("the event was acknowledged or deleted"));
        }
        Ok(subscription)
    }

    /// A delivery that does not go out: skipped (nothing left to deliver
    /// to, or nothing wanted), or held as a dead letter (the subscription
    /// is paused or disabled: the delivery waits in the DLQ, and a redrive
    /// after it is active again sends it). Never counted as delivered.
    async fn refuse(&self, delivery: &Delivery, refusal: Refusal, shutdown: &CancellationToken) -> Handled {
        let outcomes = self.topics.outcomes();
        let event_key = delivery.event.id.to_string();
        let mut records = Vec::new();
        let outcome = match refusal {
            Refusal::Skip(reason) => {
                metrics::counter!("triggers_deliverer_skipped_total", "reason" => reason).increment(1);
                self.outcome(delivery, OutcomeKind::Skipped, None, Some(reason.to_owned()))
            }
            Refusal::Hold(reason) => {
                metrics::counter!("triggers_deliverer_held_total", "reason" => reason).increment(1);
                let mut held = delivery.clone();
                held.last_error = Some(reason.to_owned());
                held.last_status = None;
                let key = delivery.subscription_id.to_string();
                records.push(self.encode(&self.topics.dlq(), Contract::Delivery, key, &held).await);
                self.outcome(delivery, OutcomeKind::DeadLettered, None, Some(reason.to_owned()))
            }
        };
        records.push(self.encode(&outcomes, Contract::Outcome, event_key, &outcome).await);
        self.produce(records, shutdown).await
    }

    /// One delivery of an unordered subscription: alone, or into its batch.
    async fn deliver(self: &Arc<Self>, delivery: Delivery, traceparent: Option<Vec<u8>>, slot: &Slot) -> Handled {
        let shutdown = slot.shutdown();
        let subscription = match self.usable(&delivery).await {
            Ok(subscription) => subscription,
            Err(refusal) => return self.refuse(&delivery, refusal, shutdown).await,
        };
        if let Some(batch) = subscription.batch.filter(|_| !delivery.replay) {
            return self.join_batch(&subscription, batch, delivery, traceparent, slot).await;
        }
        // Without retry tiers there is nowhere to park: wait for a slot.
        let patience = (!self.topics.retry_tiers.is_empty()).then_some(self.park_after);
        let Some(permit) = self.slots.acquire_within(subscription.id, patience).await else {
            return self.park(delivery, shutdown).await;
        };
        let result = self.post_one(&subscription, &delivery, traceparent.as_deref()).await;
        drop(permit);
        let verdict = verdict(&result);
        if verdict == Verdict::Gone {
            self.disable(&subscription).await;
        }
        let (records, _) = self.settle(&delivery, &result, verdict, false).await;
        self.produce(records, shutdown).await
    }

    /// Its subscription has all its slots busy: the delivery waits on the
    /// first retry tier (not an attempt) instead of holding a consumer slot,
    /// so one slow endpoint cannot starve the others.
    async fn park(&self, mut delivery: Delivery, shutdown: &CancellationToken) -> Handled {
        metrics::counter!("triggers_deliverer_parked_total").increment(1);
        delivery.not_before = now_ms() + millis(self.park_delay);
        let Some(topic) = self.retry_topics.first().cloned() else {
            return Handled::Stopped;
        };
        let key = delivery.subscription_id.to_string();
        let record = self.encode(&topic, Contract::Delivery, key, &delivery).await;
        self.produce(vec![record], shutdown).await
    }

    /// One delivery of an ordered subscription: its retries happen in place
    /// (the lane waits), so a later event never overtakes an earlier one.
    async fn deliver_in_order(&self, mut delivery: Delivery, traceparent: Option<Vec<u8>>, slot: &Slot) -> Handled {
        let shutdown = slot.shutdown();
        loop {
            let subscription = match self.usable(&delivery).await {
                Ok(subscription) => subscription,
                Err(refusal) => return self.refuse(&delivery, refusal, shutdown).await,
            };
            let result = self.post_one(&subscription, &delivery, traceparent.as_deref()).await;
            let verdict = verdict(&result);
            if verdict == Verdict::Gone {
                self.disable(&subscription).await;
            }
            let (records, next) = self.settle(&delivery, &result, verdict, true).await;
            let produced = self.produce(records, shutdown).await;
            let Some(next) = next.filter(|_| produced == Handled::Done) else {
                return produced;
            };
            // Waiting for the retry holds no consumer slot either.
            slot.free();
            if !sleep_until(next.not_before, shutdown).await {
                return Handled::Stopped;
            }
            delivery = next;
        }
    }

    /// Adds a delivery to its subscription's open batch; resolves when the
    /// batch has been sent and this delivery's records are in Kafka.
    async fn join_batch(
        self: &Arc<Self>,
        subscription: &Subscription,
        settings: BatchSettings,
        delivery: Delivery,
        traceparent: Option<Vec<u8>>,
        slot: &Slot,
    ) -> Handled {
        let shutdown = slot.shutdown();
        let (done, finished) = oneshot::channel();
        let member = Member {
            delivery,
            traceparent,
            done,
        };
        let max_events = usize::try_from(settings.max_events).unwrap_or(1);
        let joined = self.batcher.join(subscription.id, member, max_events);
        if let Some(generation) = joined.opened {
            let (deliverer, shutdown, id) = (self.clone(), shutdown.clone(), subscription.id);
            let wait = Duration::from_millis(u64::try_from(settings.max_wait_ms).unwrap_or(0));
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(members) = deliverer.batcher.take(id, generation) {
                    deliverer.send_batch(id, members, &shutdown).await;
                }
            });
        }
        if let Some(members) = joined.full {
            let (deliverer, shutdown, id) = (self.clone(), shutdown.clone(), subscription.id);
            tokio::spawn(async move { deliverer.send_batch(id, members, &shutdown).await });
        }
        // Waiting for the batch to go holds no consumer slot (the batch's
        // request holds one of its subscription's).
        slot.free();
        finished.await.unwrap_or(Handled::Stopped)
    }

    /// Sends a batch as one webhook (a JSON array, one signature, a batch
    /// id as `webhook-id`); every member gets its own outcome.
    async fn send_batch(&self, id: SubscriptionId, members: Vec<Member>, shutdown: &CancellationToken) {
        self.follower.knows(&id, FOLLOWER_WAIT).await;
        let subscription = match self.active(&id) {
            Ok(subscription) => subscription,
            Err(refusal) => {
                for member in members {
                    let refused = self.refuse(&member.delivery, refusal, shutdown).await;
                    let _ = member.done.send(refused);
                }
                return;
            }
        };
        let permit = self.slots.acquire_within(id, None).await;
        let body = serde_json::Value::Array(members.iter().map(|m| event_body(&m.delivery.event)).collect());
        let batch = BatchId::new().to_string();
        let traceparent = members.first().and_then(|m| m.traceparent.clone());
        let result = self
            .post(&subscription, &batch, body.to_string(), false, traceparent.as_deref())
            .await;
        drop(permit);
        metrics::histogram!("triggers_deliverer_batch_size").record(members.len() as f64);
        let verdict = verdict(&result);
        if verdict == Verdict::Gone {
            self.disable(&subscription).await;
        }
        for member in members {
            let (records, _) = self.settle(&member.delivery, &result, verdict, false).await;
            let produced = self.produce(records, shutdown).await;
            let _ = member.done.send(produced);
        }
    }

    fn outcome(
        &self,
        delivery: &Delivery,
        kind: OutcomeKind,
        result: Option<&AttemptResult>,
        error: Option<String>,
    ) -> Outcome {
        Outcome {
            event_id: delivery.event.id,
            tenant: delivery.tenant,
            subscription_id: Some(delivery.subscription_id),
            delivery_id: Some(delivery.id),
            kind,
            attempt: delivery.attempt,
            at: now_ms(),
            http_status: result.and_then(|r| r.status).map(i32::from),
            latency_ms: result.map(|r| r.latency_ms),
            error: error.or_else(|| result.and_then(|r| r.error.clone())),
            response_excerpt: result.and_then(|r| r.excerpt.clone()),
            subscriptions: Vec::new(),
            next_attempt_at: None,
        }
    }

    /// A record to produce. A registry outage is waited out (until
    /// shutdown: `Stopped`); a value that can never be encoded is `Poison`.
    /// Either way nothing of the attempt is produced ([`Deliverer::produce`]),
    /// so no record is ever dropped silently.
    async fn encode<T: Serialize>(&self, topic: &str, contract: Contract, key: String, value: &T) -> Encoded {
        let encoded = triggers_core::consume::retry_transient(
            "encode",
            &self.shutdown,
            |e: &triggers_core::codec::CodecError| !e.is_retriable(),
            || self.codec.encode(topic, contract, value),
        )
        .await;
        match encoded {
            Some(Ok(payload)) => Ok(Out {
                topic: topic.to_owned(),
                key,
                payload,
            }),
            Some(Err(e)) => Err(Handled::Poison(Poison::new("unencodable", format!("{topic}: {e}")))),
            None => Err(Handled::Stopped),
        }
    }

    /// The records an attempt leads to: its outcome, and on failure the next
    /// attempt on its retry tier or the DLQ record. With `in_place` the next
    /// attempt is returned instead of produced (ordered subscriptions).
    async fn settle(
        &self,
        delivery: &Delivery,
        result: &AttemptResult,
        verdict: Verdict,
        in_place: bool,
    ) -> (Vec<Encoded>, Option<Delivery>) {
        let outcomes = self.topics.outcomes();
        let event_key = delivery.event.id.to_string();
        let mut records = Vec::new();
        metrics::counter!("triggers_deliverer_responses_total", "status_class" => status_class(result.status))
            .increment(1);
        metrics::histogram!("triggers_deliverer_attempt_duration_seconds")
            .record(result.latency_ms.max(0) as f64 / 1000.0);
        let mut next_due = None;
        let (kind, error, next) = match verdict {
            Verdict::Delivered => {
                metrics::counter!("triggers_deliverer_attempts_total", "result" => "delivered").increment(1);
                // Acceptance to 2xx, for the deliveries of the event's
                // first round (replays and redrives start a new one).
                if !delivery.replay && delivery.first_attempt <= 1 {
                    let e2e = (now_ms() - delivery.event.received_at).max(0);
                    metrics::histogram!("triggers_delivery_e2e_seconds").record(e2e as f64 / 1000.0);
                }
                (OutcomeKind::Delivered, None, None)
            }
            Verdict::Gone => {
                metrics::counter!("triggers_deliverer_attempts_total", "result" => "gone").increment(1);
                (
                    OutcomeKind::Disabled,
                    Some("410 Gone: subscription disabled".to_owned()),
                    None,
                )
            }
            Verdict::Retry => {
                let jitter = rand::rng().random_range(-MAX_JITTER..MAX_JITTER);
                let error = result
                    .error
                    .clone()
                    .or_else(|| result.status.map(|s| format!("HTTP {s}")))
                    .unwrap_or_else(|| "failed".to_owned());
                let mut next = delivery.clone();
                next.last_error = Some(error.clone());
                next.last_status = result.status.map(i32::from);
                let key = delivery.subscription_id.to_string();
                match next_attempt(
                    &self.topics.retry_tiers,
                    delivery.round_position(),
                    result.retry_after,
                    now_ms(),
                    jitter,
                ) {
                    Some((tier, not_before)) => {
                        metrics::counter!("triggers_deliverer_attempts_total", "result" => "retrying").increment(1);
                        next.attempt += 1;
                        next.not_before = not_before;
                        next_due = Some(not_before);
                        if in_place {
                            (OutcomeKind::Retrying, Some(error), Some(next))
                        } else {
                            let topic = self.topics.retries()[tier].clone();
                            records.push(self.encode(&topic, Contract::Delivery, key, &next).await);
                            (OutcomeKind::Retrying, Some(error), None)
                        }
                    }
                    None => {
                        metrics::counter!("triggers_deliverer_attempts_total", "result" => "dead_lettered")
                            .increment(1);
                        records.push(self.encode(&self.topics.dlq(), Contract::Delivery, key, &next).await);
                        (OutcomeKind::DeadLettered, Some(error), None)
                    }
                }
            }
        };
        let mut outcome = self.outcome(delivery, kind, Some(result), error);
        if kind == OutcomeKind::Retrying {
            outcome.next_attempt_at = next_due;
        }
        records.push(self.encode(&outcomes, Contract::Outcome, event_key, &outcome).await);
        (records, next)
    }

    /// The webhook request of one delivery.
    async fn post_one(
        &self,
        subscription: &Subscription,
        delivery: &Delivery,
        traceparent: Option<&[u8]>,
    ) -> AttemptResult {
        let body = event_body(&delivery.event).to_string();
        self.post(
            subscription,
            &delivery.event.id.to_string(),
            body,
            delivery.replay,
            traceparent,
        )
        .await
    }

    /// A signed webhook request with `webhook-id` = `id`.
    async fn post(
        &self,
        subscription: &Subscription,
        id: &str,
        body: String,
        replay: bool,
        traceparent: Option<&[u8]>,
    ) -> AttemptResult {
        let started = std::time::Instant::now();
        let failed = |error: String| AttemptResult {
            status: None,
            excerpt: None,
            error: Some(error),
            retry_after: None,
            latency_ms: elapsed_ms(started),
        };
        let url = match url::Url::parse(&subscription.target_url) {
            Ok(url) => url,
            Err(e) => return failed(format!("invalid target_url: {e}")),
        };
        if !ssrf::literal_ip_permitted(&url, &self.allow) {
            return failed(format!(
                "blocked by the SSRF guard: {} is not an allowed address",
                url.host_str().unwrap_or("")
            ));
        }
        // The HTTP client span; the webhook carries its context, so the
        // receiver joins the event's trace. In a trace that is not sampled
        // (no process span above) and untraced, the record's traceparent.
        let unsampled = traceparent.is_some_and(triggers_core::kafka::trace_headers::unsampled);
        let span = if unsampled {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "webhook",
                otel.name = "POST",
                otel.kind = "client",
                http.request.method = "POST",
                server.address = %url.host_str().unwrap_or_default(),
                http.response.status_code = tracing::field::Empty,
                triggers.service = "deliverer",
            )
        };
        let mut trace_fields = triggers_core::kafka::trace_headers::fields_of(&span);
        if trace_fields.is_empty()
            && let Some(traceparent) = traceparent.and_then(|t| std::str::from_utf8(t).ok())
        {
            trace_fields.push(("traceparent".to_owned(), traceparent.to_owned()));
        }
        let timestamp = now_ms() / 1000;
        let signature = match signature::header(subscription.signing_secrets(now_ms()), id, timestamp, body.as_bytes())
        {
            Ok(signature) => signature,
            Err(e) => return failed(e.to_string()),
        };
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("user-agent", concat!("Triggers/", env!("CARGO_PKG_VERSION")));
        for (name, value) in &trace_fields {
            request = request.header(name.as_str(), value.as_str());
        }
        if replay {
            request = request.header("triggers-replay", "true");
        }
        let response = match request.body(body).send().instrument(span.clone()).await {
            Ok(response) => response,
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    message.push_str(": ");
                    message.push_str(&inner.to_string());
                    source = inner.source();
                }
                return failed(message);
            }
        };
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        let retry_after = (status == 429 || status == 503)
            .then(|| {
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            })
            .flatten();
        let excerpt = read_at_most(response, self.max_response_bytes).await;
        AttemptResult {
            status: Some(status),
            excerpt: (!excerpt.is_empty()).then_some(excerpt),
            error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
            retry_after,
            latency_ms: elapsed_ms(started),
        }
    }

    /// Disables a subscription after 410 Gone.
    async fn disable(&self, seen: &Subscription) {
        let current = match subscription::get(&self.dynamo, &self.tables, &seen.tenant, &seen.id).await {
            Ok(Some(current)) => current,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a subscription to disable it");
                return;
            }
        };
        let mut disabled = current.clone();
        disabled.status = SubscriptionStatus::Disabled;
        disabled.disabled_reason = Some(format!(
            "{} answered 410 Gone at {}",
            current.target_url,
            rfc3339(now_ms())
        ));
        disabled.revision = current.revision + 1;
        disabled.updated_at = now_ms();
        if let Err(e) = subscription::update(&self.dynamo, &self.tables, &disabled, current.revision).await {
            tracing::warn!(error = %e, "cannot disable a subscription");
            return;
        }
        if let Err(e) =
            subscription::publish(&self.producer, &self.codec, &self.topics.subscriptions(), &disabled).await
        {
            tracing::warn!(error = %e, "cannot publish a disabled subscription");
        }
        // Apply it here at once, so the next deliveries skip.
        self.follower.table.write().upsert(disabled);
        tracing::info!(subscription = %seen.id, "disabled after 410 Gone");
    }

    /// Produces the records and waits for Kafka: `Done`, `Stopped` on
    /// shutdown, `Poison` when one could not be encoded or Kafka can never
    /// take one (too large). Nothing is produced unless all were encoded.
    async fn produce(&self, records: Vec<Encoded>, shutdown: &CancellationToken) -> Handled {
        let records = match records.into_iter().collect::<Result<Vec<Out>, Handled>>() {
            Ok(records) => records,
            Err(handled) => return handled,
        };
        for record in &records {
            let sent = triggers_core::consume::retry("produce", shutdown, || async {
                let sent = self
                    .producer
                    .send(
                        FutureRecord::to(&record.topic)
                            .key(&record.key)
                            .payload(&record.payload),
                        rdkafka::util::Timeout::Never,
                    )
                    .await;
                match sent {
                    Ok(_) => Ok(None),
                    Err((e, _)) => match triggers_core::kafka::permanent_produce_error(&e) {
                        Some(reason) => Ok(Some(Poison::new(reason, format!("{}: {e}", record.topic)))),
                        None => Err(e),
                    },
                }
            })
            .await;
            match sent {
                None => return Handled::Stopped,
                Some(Some(poison)) => return Handled::Poison(poison),
                Some(None) => {}
            }
        }
        Handled::Done
    }
}

async fn read_at_most(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The HTTP client of webhook requests: every address through the SSRF
/// guard, no redirects followed, and no proxy from the environment
/// (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`): a proxy would resolve and
/// connect on the guard's behalf, so the guard would check nothing.
pub fn webhook_client(config: &DelivererConfig, allow: &ssrf::AllowList) -> Result<reqwest::Client, DelivererError> {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(ssrf::GuardedResolver::new(allow.clone())))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(config.max_in_flight_per_subscription)
        .build()
        .map_err(|e| DelivererError::Internal(e.to_string()))
}

/// Starts the deliverer: reads the subscription table to its end, then
/// delivers from `<ns>.deliveries` and every retry tier until `shutdown`.
pub async fn start(
    common: &CommonConfig,
    config: &DelivererConfig,
    shutdown: CancellationToken,
) -> Result<RunningServer, DelivererError> {
    let allow = ssrf::AllowList::parse(&config.allow_networks).map_err(DelivererError::Internal)?;
    let http = webhook_client(config, &allow)?;
    let dynamo = triggers_core::dynamo::client(&common.dynamodb).await;
    let tables = Tables::new(&common.dynamodb.table_prefix);
    let codec = AvroCodec::new(&common.schema_registry)?;
    let follower = Follower::start(
        &common.kafka,
        &common.topics.subscriptions(),
        codec.clone(),
        "deliverer",
        shutdown.clone(),
    )
    .await
    .map_err(|e| DelivererError::Internal(e.to_string()))?;
    follower
        .caught_up(Duration::from_secs(120))
        .await
        .map_err(|e| DelivererError::Internal(e.to_string()))?;
    let deliverer = Arc::new(Deliverer {
        http,
        allow,
        follower,
        producer: triggers_core::kafka::producer(&common.kafka, "deliverer")?,
        codec,
        topics: common.topics.clone(),
        retry_topics: common.topics.retries(),
        dynamo: dynamo.clone(),
        tables,
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
        let consumer = triggers_core::kafka::consumer(
            &kafka,
            "deliverer",
            &group,
            triggers_core::kafka::ConsumerLog::in_group("deliverer", &group),
        )?;
        consumer.subscribe(&[&topic])?;
        let pacer = triggers_core::pacing::Pacer::new(&kafka);
        let limits = Limits::new(config.max_in_flight, config.shutdown_grace);
        let quarantine = Quarantine::new(deliverer.producer.clone(), common.topics.quarantine(), "deliverer");
        let (deliverer, shutdown) = (deliverer.clone(), shutdown.clone());
        workers.push(tokio::spawn(async move {
            triggers_core::consume::run(&consumer, pacer, limits, quarantine, shutdown, move |message, slot| {
                let deliverer = deliverer.clone();
                let turn = deliverer.turn(&message);
                async move { deliverer.handle(message, turn, slot).await }
            })
            .await;
        }));
    }
    let readiness = Readiness::new()
        .with("kafka", ops::kafka_probe(&common.kafka))
        .with("dynamodb", ops::dynamo_probe(&dynamo));
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
    let server = ops::serve_during(&config.listen, readiness, work).map_err(|source| DelivererError::Bind {
        listen: config.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %server.addr, "deliverer listening");
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Option<u16>) -> AttemptResult {
        AttemptResult {
            status,
            excerpt: None,
            error: None,
            retry_after: None,
            latency_ms: 1,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&result(Some(200))), Verdict::Delivered);
        assert_eq!(verdict(&result(Some(204))), Verdict::Delivered);
        assert_eq!(verdict(&result(Some(410))), Verdict::Gone);
        for status in [
            Some(301),
            Some(400),
            Some(404),
            Some(408),
            Some(429),
            Some(500),
            Some(503),
            None,
        ] {
            assert_eq!(verdict(&result(status)), Verdict::Retry, "{status:?}");
        }
    }

    #[test]
    fn the_retry_schedule_follows_the_tiers_and_retry_after() {
        let tiers: Vec<Duration> = [5, 30, 120].into_iter().map(Duration::from_secs).collect();
        assert_eq!(next_attempt(&tiers, 0, None, 0, 0.0), Some((0, 5_000)));
        assert_eq!(next_attempt(&tiers, 1, None, 0, 0.0), Some((1, 30_000)));
        assert_eq!(next_attempt(&tiers, 2, None, 1_000, 0.0), Some((2, 121_000)));
        assert_eq!(next_attempt(&tiers, 3, None, 0, 0.0), None);
        assert_eq!(next_attempt(&tiers, -1, None, 0, 0.0), None);
        // Retry-After wins when longer; jitter moves the delay by at most its share.
        assert_eq!(next_attempt(&tiers, 0, Some(60), 0, 0.0), Some((0, 60_000)));
        assert_eq!(next_attempt(&tiers, 0, Some(2), 0, 0.0), Some((0, 5_000)));
        assert_eq!(next_attempt(&tiers, 0, None, 0, 0.1), Some((0, 5_500)));
    }

    #[test]
    fn a_huge_retry_after_is_capped_and_never_overflows() {
        let tiers: Vec<Duration> = [5, 30].into_iter().map(Duration::from_secs).collect();
        let hour = i64::try_from(MAX_RETRY_AFTER.as_millis()).unwrap_or(i64::MAX);
        assert_eq!(next_attempt(&tiers, 0, Some(3_000_000_000), 0, 0.0), Some((0, hour)));
        assert_eq!(
            next_attempt(&tiers, 1, Some(u64::MAX), 1_000, 0.0),
            Some((1, 1_000 + hour))
        );
        assert_eq!(
            next_attempt(&tiers, 0, Some(u64::MAX), i64::MAX - 10, 0.0),
            Some((0, i64::MAX))
        );
    }

    #[test]
    fn a_replay_starts_a_new_round_of_the_schedule() {
        let tiers: Vec<Duration> = [5, 30].into_iter().map(Duration::from_secs).collect();
        let event =
            triggers_core::event::Event::new(triggers_core::ids::TenantId::new(), "t", "s", serde_json::Value::Null);
        // Three attempts before (the round was exhausted): the replay is attempt 4,
        // and its retry goes to the first tier again.
        let replay = Delivery::again(event, SubscriptionId::new(), 3, true);
        assert_eq!((replay.attempt, replay.round_position()), (4, 0));
        assert_eq!(
            next_attempt(&tiers, replay.round_position(), None, 0, 0.0),
            Some((0, 5_000))
        );
    }
}
