//! The consume-and-dispatch path: for each delivery record, wait for its
//! `not_before`, check its subscription (skip, hold or park), then deliver
//! it alone, in its subscription's FIFO lane, or in its open batch.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use tokio::sync::oneshot;
use triggers_core::CancellationToken;
use triggers_core::codec::Contract;
use triggers_core::consume::{Handled, Slot};
use triggers_core::delivery::{Delivery, OutcomeKind};
use triggers_core::event::now_ms;
use triggers_core::ids::{BatchId, SubscriptionId};
use triggers_core::quarantine::Poison;
use triggers_core::subscription::{BatchSettings, Subscription, SubscriptionStatus};

use crate::attempt::{event_body, json_text, unwritable};
use crate::batch::Member;
use crate::lanes::Turn;
use crate::schedule::{MAX_JITTER, Verdict, millis, verdict};
use crate::state::Deliverer;

/// Why a delivery does not go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Nothing to deliver to or nothing wanted (the subscription is gone,
    /// the event acknowledged or deleted): a `skipped` outcome.
    Skip(&'static str),
    /// The subscription is paused or disabled: the delivery is held as a
    /// dead letter, to be redriven once it is active again.
    Hold(&'static str),
}

/// Deliveries of events younger than this skip the acknowledgement check on
/// their first attempt.
pub(crate) const FRESH_MS: i64 = 5_000;

/// Sleeps until `at` (ms since the epoch); `false` if shutdown came first.
pub(crate) async fn sleep_until(at: i64, shutdown: &CancellationToken) -> bool {
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
    pub(crate) fn subscription(&self, id: &SubscriptionId) -> Option<Subscription> {
        self.follower.table.read().get(id).map(|c| c.subscription.clone())
    }

    /// A turn in the subscription's FIFO lane if the record is for an ordered
    /// subscription. Called as the record is read, so turns follow the log.
    pub(crate) fn turn(&self, message: &OwnedMessage) -> Option<Turn> {
        let id: SubscriptionId = std::str::from_utf8(message.key()?).ok()?.parse().ok()?;
        let ordered = self.follower.table.read().get(&id)?.subscription.ordered;
        ordered.then(|| self.lanes.enqueue(id))
    }

    /// The longest a record of `topic` may wait for its `not_before` in its
    /// handler (holding a consumer slot): its tier's delay and jitter; none
    /// on the main topic.
    pub(crate) fn allowance(&self, topic: &str) -> i64 {
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
    pub(crate) async fn defer(
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

    pub(crate) async fn handle(self: &Arc<Self>, message: OwnedMessage, turn: Option<Turn>, slot: Slot) -> Handled {
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
    pub(crate) fn active(&self, id: &SubscriptionId) -> Result<Subscription, Refusal> {
        match self.subscription(id) {
            None => Err(Refusal::Skip("the subscription no longer exists")),
            Some(s) if s.status == SubscriptionStatus::Paused => Err(Refusal::Hold("the subscription is paused")),
            Some(s) if s.status == SubscriptionStatus::Disabled => Err(Refusal::Hold("the subscription is disabled")),
            Some(s) => Ok(s),
        }
    }

    /// The subscription to deliver to, or why the delivery does not go out.
    pub(crate) async fn usable(&self, delivery: &Delivery) -> Result<Subscription, Refusal> {
        self.follower.knows(&delivery.subscription_id, FOLLOWER_WAIT).await;
        let subscription = self.active(&delivery.subscription_id)?;
        // A replay is an explicit request: it goes out even if acknowledged.
        // A first attempt of a fresh event skips the check (a DynamoDB read
        // per delivery): an acknowledgement racing the first webhook is
        // at-least-once anyway; retries and backlogged events are checked.
        let fresh = delivery.round_position() == 0 && now_ms() - delivery.event.received_at < FRESH_MS;
        if !delivery.replay && !fresh && self.stopped(delivery).await {
            return Err(Refusal::Skip("the event was acknowledged or deleted"));
        }
        Ok(subscription)
    }

    /// Whether the event was acknowledged or deleted. When DynamoDB cannot
    /// say, the delivery goes out: delivery is at-least-once, and a store
    /// outage must not stop webhooks. That choice is counted
    /// (`triggers_deliverer_unchecked_total`) and logged.
    async fn stopped(&self, delivery: &Delivery) -> bool {
        let checked = self.checks.stopped(delivery.tenant, delivery.event.id).await;
        match checked {
            Ok(stopped) => stopped,
            Err(e) => {
                metrics::counter!("triggers_deliverer_unchecked_total").increment(1);
                tracing::warn!(error = %e, event_id = %delivery.event.id, "cannot check for an acknowledgement; delivering");
                false
            }
        }
    }

    /// A delivery that does not go out: skipped (nothing left to deliver
    /// to, or nothing wanted), or held as a dead letter (the subscription
    /// is paused or disabled: the delivery waits in the DLQ, and a redrive
    /// after it is active again sends it). Never counted as delivered.
    pub(crate) async fn refuse(&self, delivery: &Delivery, refusal: Refusal, shutdown: &CancellationToken) -> Handled {
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
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        delivery: Delivery,
        traceparent: Option<Vec<u8>>,
        slot: &Slot,
    ) -> Handled {
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
    pub(crate) async fn park(&self, mut delivery: Delivery, shutdown: &CancellationToken) -> Handled {
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
    pub(crate) async fn deliver_in_order(
        &self,
        mut delivery: Delivery,
        traceparent: Option<Vec<u8>>,
        slot: &Slot,
    ) -> Handled {
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
    pub(crate) async fn join_batch(
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
    pub(crate) async fn send_batch(&self, id: SubscriptionId, members: Vec<Member>, shutdown: &CancellationToken) {
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
        let bodies: Vec<_> = members.iter().map(|m| event_body(&m.delivery.event)).collect();
        let batch = BatchId::new().to_string();
        let traceparent = members.first().and_then(|m| m.traceparent.clone());
        let result = match json_text(&bodies) {
            Ok(body) => {
                self.post(&subscription, &batch, body, false, traceparent.as_deref())
                    .await
            }
            Err(e) => unwritable(&e),
        };
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
}
