//! Settling an attempt: its outcome, and its follow-up record (the next
//! retry tier, the DLQ) produced together; 410 Gone disables the
//! subscription.

use rand::Rng;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use triggers_core::CancellationToken;
use triggers_core::codec::Contract;
use triggers_core::consume::Handled;
use triggers_core::delivery::{Delivery, Outcome, OutcomeKind};
use triggers_core::event::{now_ms, rfc3339};
use triggers_core::quarantine::Poison;
use triggers_core::subscription::{self, Subscription, SubscriptionStatus};

use crate::attempt::AttemptResult;
use crate::schedule::{MAX_JITTER, Verdict, next_attempt, status_class};
use crate::state::Deliverer;

pub(crate) struct Out {
    topic: String,
    key: String,
    payload: Vec<u8>,
}

/// A record ready to produce, or why the attempt's records cannot be.
pub(crate) type Encoded = Result<Out, Handled>;

impl Deliverer {
    pub(crate) fn outcome(
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
    pub(crate) async fn encode<T: Serialize>(
        &self,
        topic: &str,
        contract: Contract,
        key: String,
        value: &T,
    ) -> Encoded {
        let encoded = triggers_core::consume::retry_transient(
            "encode",
            &self.shutdown,
            triggers_core::codec::CodecError::is_retriable,
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
    pub(crate) async fn settle(
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

    /// Disables a subscription after 410 Gone.
    pub(crate) async fn disable(&self, seen: &Subscription) {
        let current = match subscription::get(&self.dynamo, &self.tables, &seen.tenant, &seen.id).await {
            Ok(Some(current)) => current,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a subscription to disable it");
                return;
            }
        };
        let mut disabled = current;
        disabled.status = SubscriptionStatus::Disabled;
        disabled.disabled_reason = Some(format!(
            "{} answered 410 Gone at {}",
            disabled.target_url,
            rfc3339(now_ms())
        ));
        let topic = self.topics.subscriptions();
        let topic = (&self.producer, &self.codec, topic.as_str());
        // Stored (and published now, or by the gateway's outbox sweep).
        let disabled = match subscription::save_change(&self.dynamo, &self.tables, topic, disabled).await {
            Ok(disabled) => disabled,
            Err(e) => {
                // A conflict means someone changed it first (deleted,
                // paused, re-enabled): their change stands.
                tracing::warn!(error = %e, "cannot disable a subscription");
                return;
            }
        };
        // Apply it here at once, so the next deliveries skip.
        self.follower.table.write().upsert(disabled);
        tracing::info!(subscription = %seen.id, "disabled after 410 Gone");
    }

    /// Produces the records and waits for Kafka: `Done`, `Stopped` on
    /// shutdown, `Poison` when one could not be encoded or Kafka can never
    /// take one (too large). Nothing is produced unless all were encoded.
    pub(crate) async fn produce(&self, records: Vec<Encoded>, shutdown: &CancellationToken) -> Handled {
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
